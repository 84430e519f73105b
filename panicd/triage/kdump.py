"""QEMU's kdump-* dumps: makedumpfile's flattened format around a diskdump ("KDUMP") file.

Flattened: a 4096-byte header ("makedumpfile", type, version: big-endian), then records of
(offset, size: big-endian int64) + data, each saying where its bytes go in the real file, up
to an offset of -1. The records are indexed, never copied: a read of the reassembled file
finds its record(s) by bisection.

Reassembled (QEMU's dump/dump.c, guest-endian): a disk_dump_header (464 bytes: after the
utsname, an 8-aligned struct timeval, then status at 424 and block_size at 428) ("KDUMP   ", ...,
block_size, sub_hdr_size, bitmap_blocks, max_mapnr), a kdump_sub_header (phys_base, the
offset and size of the ELF notes, VMCOREINFO among them, max_mapnr_64), two page bitmaps
(pages present; pages dumped), then one 24-byte page descriptor (offset, size, flags) per
dumped page, in page order. A page is found by counting dumped pages before it (prefix sums
over the bitmap) and decompressed on demand (zlib; lzo and snappy are refused by name).
"""

from __future__ import annotations

import bisect
import mmap
import struct
import zlib
from functools import lru_cache
from pathlib import Path

from panicd.triage import TriageError
from panicd.triage.elf import Note, PhysicalMemory, parse_notes

FLAT_HEADER = 4096
END = -1
MAX_RECORDS = 1 << 24
COMPRESSED_ZLIB = 0x1
PAGE_DESC = struct.Struct("<qIIQ")


class FlattenedKdump(PhysicalMemory):
    def __init__(self, path: Path) -> None:
        self._file = path.open("rb")
        try:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError as exc:
            self._file.close()
            raise TriageError(f"{path}: empty file") from exc
        try:
            self._index()
            self._header()
        except (struct.error, IndexError, ValueError, OverflowError) as exc:
            self.close()
            raise TriageError(f"{path}: not a readable kdump dump: {exc}") from exc
        except BaseException:
            self.close()
            raise
        self.page = lru_cache(maxsize=256)(self._page)

    def close(self) -> None:
        self._map.close()
        self._file.close()

    # -- the flattened layer ----------------------------------------------------------------

    def _index(self) -> None:
        if self._map[:12] != b"makedumpfile":
            raise TriageError("not a makedumpfile flattened file")
        records: list[tuple[int, int, int]] = []
        pos = FLAT_HEADER
        while pos + 16 <= len(self._map) and len(records) < MAX_RECORDS:
            offset, size = struct.unpack_from(">qq", self._map, pos)
            pos += 16
            if offset == END:
                break
            if offset < 0 or size < 0 or pos + size > len(self._map):
                break  # a truncated or damaged tail: keep what came before
            records.append((offset, size, pos))
            pos += size
        records.sort()
        self._records = records
        self._starts = [r[0] for r in records]

    def _read(self, offset: int, size: int) -> bytes:
        """Bytes of the reassembled diskdump file."""
        out = bytearray()
        while size > 0:
            i = bisect.bisect_right(self._starts, offset) - 1
            if i < 0:
                raise TriageError(f"offset {offset} is not in the dump")
            start, length, pos = self._records[i]
            inside = offset - start
            if inside >= length:
                raise TriageError(f"offset {offset} is not in the dump")
            n = min(size, length - inside)
            out += self._map[pos + inside:pos + inside + n]
            offset += n
            size -= n
        return bytes(out)

    # -- the diskdump layer ------------------------------------------------------------------

    def _header(self) -> None:
        head = self._read(0, 464)
        if head[:8] != b"KDUMP   ":
            raise TriageError("no KDUMP header inside the flattened file")
        (self.block_size, sub_hdr_size, bitmap_blocks, max_mapnr) = struct.unpack_from(
            "<IIII", head, 428)
        if self.block_size not in (4096, 8192, 16384, 65536) or not 0 < bitmap_blocks < 1 << 24:
            raise TriageError(f"implausible kdump header (block {self.block_size})")
        sub = self._read(self.block_size, 104)
        (self.phys_base,) = struct.unpack_from("<Q", sub, 0)
        note_offset, note_size = struct.unpack_from("<QQ", sub, 48)
        (max_mapnr_64,) = struct.unpack_from("<Q", sub, 96)
        self.max_mapnr = max_mapnr_64 or max_mapnr
        self._note_range = (note_offset, min(note_size, 1 << 20))
        bitmap_at = (1 + sub_hdr_size) * self.block_size
        half = bitmap_blocks * self.block_size // 2
        dumped = self._read(bitmap_at + half, half)
        self._dumped = dumped
        # Prefix counts per 8-byte word: descriptor index = pages dumped before this one.
        counts = [0]
        for (word,) in struct.iter_unpack("<Q", dumped[: len(dumped) // 8 * 8]):
            counts.append(counts[-1] + word.bit_count())
        self._counts = counts
        self._descs_at = (1 + sub_hdr_size + bitmap_blocks) * self.block_size

    def notes(self) -> list[Note]:
        offset, size = self._note_range
        try:
            return parse_notes(self._read(offset, size))
        except TriageError:
            return []

    def _page(self, pfn: int) -> bytes:
        word, bit = divmod(pfn, 64)
        if pfn >= self.max_mapnr or word >= len(self._counts) - 1:
            raise TriageError(f"page {pfn:#x} is beyond the dump")
        (value,) = struct.unpack_from("<Q", self._dumped, word * 8)
        if not value >> bit & 1:
            raise TriageError(f"page {pfn:#x} was not dumped")
        index = self._counts[word] + (value & ((1 << bit) - 1)).bit_count()
        offset, size, flags, _ = PAGE_DESC.unpack(self._read(self._descs_at + index * 24, 24))
        if size > self.block_size * 2 or size <= 0:
            raise TriageError(f"page {pfn:#x}: implausible size {size}")
        data = self._read(offset, size)
        if flags & COMPRESSED_ZLIB:
            inflater = zlib.decompressobj()
            try:
                data = inflater.decompress(data, self.block_size)
            except zlib.error as exc:
                raise TriageError(f"page {pfn:#x}: {exc}") from exc
        elif flags:
            raise TriageError(f"page {pfn:#x}: compression {flags:#x} (lzo/snappy) is not read")
        if len(data) != self.block_size:
            raise TriageError(f"page {pfn:#x}: {len(data)} bytes, not {self.block_size}")
        return data

    def read(self, paddr: int, size: int) -> bytes:
        out = bytearray()
        while size > 0:
            pfn, inside = divmod(paddr, self.block_size)
            n = min(size, self.block_size - inside)
            out += self.page(pfn)[inside:inside + n]
            paddr += n
            size -= n
        return bytes(out)
