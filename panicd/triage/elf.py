"""QEMU's ELF core dumps: guest-physical memory in PT_LOAD segments, and notes.

QEMU 7.2 splits low RAM into several PT_LOAD entries once firmware has run, adds one for the
BIOS ROM near 4 GiB, and (with no guest OS) may write e_machine EM_386: none of that is
checked. Reads go through mmap and touch only the pages asked for.
"""

from __future__ import annotations

import bisect
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from panicd.triage import TriageError

PT_LOAD = 1
PT_NOTE = 4
MAX_SEGMENTS = 4096
MAX_NOTES = 4096


@dataclass(frozen=True)
class Segment:
    paddr: int
    offset: int
    size: int


@dataclass(frozen=True)
class Note:
    name: str
    type: int
    desc: bytes


class PhysicalMemory:
    """Read guest-physical memory; a protocol shared by the ELF and kdump readers."""

    def read(self, paddr: int, size: int) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def notes(self) -> list[Note]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class ElfCore(PhysicalMemory):
    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")
        try:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:  # an empty file
            self._file.close()
            raise TriageError(f"{path}: empty file") from exc
        try:
            self._segments, self._note_ranges = self._parse()
        except (struct.error, IndexError) as exc:
            self.close()
            raise TriageError(f"{path}: not a readable ELF core: {exc}") from exc
        except BaseException:
            self.close()
            raise
        self._starts = [s.paddr for s in self._segments]

    def close(self) -> None:
        self._map.close()
        self._file.close()

    def _bytes(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > len(self._map):
            raise TriageError(f"read past the end of the file ({offset}+{size})")
        return self._map[offset:offset + size]

    def _parse(self) -> tuple[list[Segment], list[tuple[int, int]]]:
        ident = self._bytes(0, 16)
        if ident[:4] != b"\x7fELF":
            raise TriageError("not an ELF file")
        if ident[4] != 2 or ident[5] != 1:
            raise TriageError("not a little-endian 64-bit ELF file")
        (e_type, _machine, _version, _entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize,
         e_phnum) = struct.unpack_from("<HHIQQQIHHH", self._bytes(16, 42))
        if e_type != 4:
            raise TriageError(f"not a core file (e_type {e_type})")
        if e_phentsize < 56 or e_phnum > MAX_SEGMENTS:
            raise TriageError(f"implausible program headers ({e_phnum} of {e_phentsize} bytes)")
        segments, notes = [], []
        for i in range(e_phnum):
            p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, _memsz, _align = struct.unpack(
                "<IIQQQQQQ", self._bytes(e_phoff + i * e_phentsize, 56))
            if p_offset + p_filesz > len(self._map):
                p_filesz = max(0, len(self._map) - p_offset)  # a truncated dump: keep what is there
            if p_type == PT_LOAD and p_filesz:
                segments.append(Segment(p_paddr, p_offset, p_filesz))
            elif p_type == PT_NOTE:
                notes.append((p_offset, p_filesz))
        segments.sort(key=lambda s: s.paddr)
        return segments, notes

    def read(self, paddr: int, size: int) -> bytes:
        """`size` bytes of guest-physical memory at `paddr`, across segments; TriageError if
        any of it is not in the dump."""
        out = bytearray()
        while size > 0:
            i = bisect.bisect_right(self._starts, paddr) - 1
            if i < 0:
                raise TriageError(f"physical address {paddr:#x} is not in the dump")
            seg = self._segments[i]
            inside = paddr - seg.paddr
            if inside >= seg.size:
                raise TriageError(f"physical address {paddr:#x} is not in the dump")
            n = min(size, seg.size - inside)
            out += self._bytes(seg.offset + inside, n)
            paddr += n
            size -= n
        return bytes(out)

    def notes(self) -> list[Note]:
        found: list[Note] = []
        for offset, size in self._note_ranges:
            found += parse_notes(self._bytes(offset, size))
        return found


def parse_notes(data: bytes) -> list[Note]:
    """ELF notes: (namesz, descsz, type, name padded to 4, desc padded to 4)..."""
    notes: list[Note] = []
    pos = 0
    while pos + 12 <= len(data) and len(notes) < MAX_NOTES:
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        pos += 12
        name_end = pos + namesz
        desc_start = pos + ((namesz + 3) & ~3)
        desc_end = desc_start + descsz
        if desc_end > len(data):
            break
        name = data[pos:name_end].rstrip(b"\0").decode("ascii", "replace")
        notes.append(Note(name, ntype, data[desc_start:desc_end]))
        pos = desc_start + ((descsz + 3) & ~3)
    return notes
