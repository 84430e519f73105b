"""What the mock's dumps contain: an ELF64 core and a flattened kdump, built like QEMU's.

Both are described as a stream of `Data` (bytes to write), `Ram` (guest RAM: counted as dump
progress; in an ELF core also that many zero bytes of file, written as a hole when the file
can seek) and nothing else, so the dump job can write them at any rate without holding more
than a small piece in memory. The mock's guest RAM is all zeros.

ELF (dump/dump.c, paging=false): ELF64 little-endian ET_CORE, EM_X86_64; program headers: one
PT_NOTE, then one PT_LOAD per RAM block (p_paddr = guest-physical address, p_vaddr 0). The note
segment holds, per vCPU, a "CORE" NT_PRSTATUS note and a "QEMU" note (QEMUCPUState, 440 bytes),
then the guest's "VMCOREINFO" note when it has one. (QEMU 7.2 itself writes e_machine EM_386
while the CPU is not in long mode, and e_ehsize 8: readers should not insist on either.)

kdump (dump/dump.c, makedumpfile's flattened format, which is what QEMU writes to an fd): a
4096-byte header starting ``makedumpfile\\0\\0\\0\\0``, then big-endian (offset, size) records
each followed by `size` bytes meant for `offset` of the real kdump file, ending with (-1, -1).
The real file: block 0 the disk_dump_header ("KDUMP   ", version 6), block 1 the
kdump_sub_header followed by the ELF notes, then two page bitmaps (present, dumped), then one
24-byte page descriptor per dumped page, then page data. Like QEMU, every all-zero page points
at a single zlib-compressed zero page.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

PAGE = 4096
EM_X86_64 = 62
ET_CORE = 4
PT_LOAD = 1
PT_NOTE = 4
NT_PRSTATUS = 1
_PRSTATUS_SIZE = 336  # struct elf_prstatus on x86-64
_PRSTATUS_PID = 32
_QEMU_CPU_STATE_SIZE = 440  # QEMUCPUState in target/i386/arch_dump.c
DUMP_DH_COMPRESSED_ZLIB = 0x1
_SUB_HEADER = 104  # kdump_sub_header (64-bit); the disk_dump_header is 464
_DESC = struct.Struct("<qIIQ")  # page_desc_t: offset, size, flags, page_flags
_DESCS_PER_RECORD = 4096


@dataclass(frozen=True, slots=True)
class Data:
    data: bytes


@dataclass(frozen=True, slots=True)
class Ram:
    size: int
    in_file: bool  # ELF: zeros in the file; kdump: progress only


Segment = Data | Ram
Block = tuple[int, int]  # guest-physical start, size


def ram_blocks(memory_bytes: int) -> list[Block]:
    """Guest RAM as QEMU's pc machine lays it out: above 3.5 GiB, 3 GiB low and the rest at 4 GiB."""
    if memory_bytes < 0xE000_0000:
        return [(0, memory_bytes)]
    low = 0xC000_0000
    return [(0, low), (1 << 32, memory_bytes - low)]


def clip(blocks: list[Block], begin: int, length: int) -> list[Block]:
    """The parts of `blocks` inside [begin, begin + length): dump-guest-memory's filter."""
    end = begin + length
    clipped = []
    for start, size in blocks:
        lo, hi = max(start, begin), min(start + size, end)
        if lo < hi:
            clipped.append((lo, hi - lo))
    return clipped


def _note(name: bytes, kind: int, desc: bytes) -> bytes:
    name += b"\0"
    return (struct.pack("<III", len(name), len(desc), kind)
            + name.ljust(_align(len(name), 4), b"\0") + desc.ljust(_align(len(desc), 4), b"\0"))


def elf_notes(vmcoreinfo: str | None, cpus: int = 1) -> tuple[bytes, int]:
    """The PT_NOTE contents; and where the VMCOREINFO desc starts in it (-1 if none)."""
    notes = b""
    for cpu in range(cpus):
        prstatus = bytearray(_PRSTATUS_SIZE)
        struct.pack_into("<I", prstatus, _PRSTATUS_PID, cpu + 1)  # QEMU: pid = cpu index + 1
        notes += _note(b"CORE", NT_PRSTATUS, bytes(prstatus))
    for _ in range(cpus):
        state = struct.pack("<II", 1, _QEMU_CPU_STATE_SIZE).ljust(_QEMU_CPU_STATE_SIZE, b"\0")
        notes += _note(b"QEMU", 0, state)
    vmcoreinfo_at = -1
    if vmcoreinfo is not None:
        vmcoreinfo_at = len(notes) + 12 + _align(len(b"VMCOREINFO\0"), 4)
        notes += _note(b"VMCOREINFO", 0, vmcoreinfo.encode())
    return notes, vmcoreinfo_at


def elf_core(blocks: list[Block], vmcoreinfo: str | None = None) -> Iterator[Segment]:
    notes, _ = elf_notes(vmcoreinfo)
    phnum = 1 + len(blocks)
    notes_at = 64 + 56 * phnum
    data_at = _align(notes_at + len(notes), PAGE)  # page-aligned RAM: holes stay holes
    ehdr = struct.pack("<4sBBBBB7xHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, ET_CORE, EM_X86_64,
                       1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    phdrs = struct.pack("<IIQQQQQQ", PT_NOTE, 0, notes_at, 0, 0, len(notes), len(notes), 0)
    offset = data_at
    for start, size in blocks:
        phdrs += struct.pack("<IIQQQQQQ", PT_LOAD, 0, offset, 0, start, size, size, 0)
        offset += size
    yield Data((ehdr + phdrs + notes).ljust(data_at, b"\0"))
    for _, size in blocks:
        yield Ram(size, in_file=True)


# -- kdump, flattened -----------------------------------------------------------------------------

def _record(offset: int, data: bytes) -> bytes:
    return struct.pack(">qq", offset, len(data)) + data


def kdump_flat(blocks: list[Block], vmcoreinfo: str | None = None) -> Iterator[Segment]:
    notes, vmcoreinfo_at = elf_notes(vmcoreinfo)
    max_mapnr = max(start + size for start, size in blocks) // PAGE
    pfns = [(start // PAGE, (start + size) // PAGE) for start, size in blocks]
    dumpable = sum(hi - lo for lo, hi in pfns)
    sub_hdr_blocks = -(-(_SUB_HEADER + len(notes)) // PAGE)
    bitmap_len = _align(-(-max_mapnr // 8), PAGE)
    bitmap_blocks = 2 * bitmap_len // PAGE
    bitmap_at = (1 + sub_hdr_blocks) * PAGE
    descs_at = bitmap_at + bitmap_len * 2
    zero_page_at = descs_at + _DESC.size * dumpable

    yield Data(b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1).ljust(PAGE - 16, b"\0"))

    utsname = bytearray(6 * 65)
    utsname[4 * 65:4 * 65 + 6] = b"x86_64"  # the only field QEMU fills (ELF_MACHINE_UNAME)
    header = (b"KDUMP   " + struct.pack("<I", 6) + bytes(utsname) + bytes(6) + bytes(16)
              + struct.pack("<10I", DUMP_DH_COMPRESSED_ZLIB, PAGE, sub_hdr_blocks, bitmap_blocks,
                            min(max_mapnr, 0xFFFF_FFFF), 0, 0, 0, 0, 1))
    notes_at = PAGE + _SUB_HEADER
    sub_header = struct.pack(
        "<QIIQQQQQQQQQQQ",
        0, 1, 0, 0, 0,  # phys_base, dump_level 1 (QEMU's DUMP_LEVEL), split, start/end pfn
        notes_at + vmcoreinfo_at if vmcoreinfo is not None else 0,
        len(vmcoreinfo.encode()) if vmcoreinfo is not None else 0,
        notes_at, len(notes), 0, 0, 0, max_mapnr, max_mapnr)
    bitmap = bytearray(bitmap_len)
    for lo, hi in pfns:
        _set_bits(bitmap, lo, hi)
    yield Data(_record(0, header) + _record(PAGE, sub_header) + _record(notes_at, notes)
               + _record(bitmap_at, bytes(bitmap)) + _record(bitmap_at + bitmap_len, bytes(bitmap)))

    yield Ram(sum(size for _, size in blocks), in_file=False)

    zero_page = zlib.compress(bytes(PAGE), 1)  # QEMU: compress2(..., Z_BEST_SPEED)
    desc = _DESC.pack(zero_page_at, len(zero_page), DUMP_DH_COMPRESSED_ZLIB, 0)
    for first in range(0, dumpable, _DESCS_PER_RECORD):
        count = min(_DESCS_PER_RECORD, dumpable - first)
        yield Data(_record(descs_at + first * _DESC.size, desc * count))
    yield Data(_record(zero_page_at, zero_page) + struct.pack(">qq", -1, -1))


def _set_bits(bitmap: bytearray, lo: int, hi: int) -> None:
    """Set bits lo..hi-1, least significant bit first within each byte (makedumpfile's order)."""
    while lo < hi and lo % 8:
        bitmap[lo // 8] |= 1 << (lo % 8)
        lo += 1
    full = (hi - lo) // 8
    bitmap[lo // 8:lo // 8 + full] = b"\xff" * full
    lo += full * 8
    while lo < hi:
        bitmap[lo // 8] |= 1 << (lo % 8)
        lo += 1


def _align(n: int, to: int) -> int:
    return -(-n // to) * to
