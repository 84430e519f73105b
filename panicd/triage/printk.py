"""The lockless printk ring buffer (Linux >= 5.10), read from a dump.

Everything about its layout comes from VMCOREINFO: SYMBOL(prb) is a pointer to the
`struct printk_ringbuffer`; its desc_ring holds `1 << count_bits` descriptors and infos, and
the ids from tail_id to head_id; its text_data_ring is `1 << size_bits` bytes at `data`. A
descriptor's state_var has the state in its top 2 bits (1 committed, 2 finalized: readable)
and the id in the low 62; its text_blk_lpos begin/next, taken modulo the ring size, locate
the block: an 8-byte id, then the text (a block that wraps starts again at offset 0).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from panicd.triage import TriageError
from panicd.triage.memory import KernelMemory
from panicd.triage.vmcoreinfo import Vmcoreinfo

MAX_RECORDS = 1 << 17
MAX_RING_BYTES = 64 << 20
MAX_TEXT = 4096
ID_MASK = (1 << 62) - 1
READABLE = (1, 2)  # desc_committed, desc_finalized


@dataclass(frozen=True)
class Record:
    ts_nsec: int
    text: str

    @property
    def seconds(self) -> float:
        return self.ts_nsec / 1e9

    def __str__(self) -> str:
        return f"[{self.seconds:12.6f}] {self.text}"


def read_log(mem: KernelMemory, info: Vmcoreinfo) -> list[Record]:
    if not info.has("SYMBOL(prb)"):
        raise TriageError("VMCOREINFO has no SYMBOL(prb): a kernel older than 5.10 "
                          "(its log_buf layout is not read yet)")
    counter = info.offset("atomic_long_t.counter")
    prb = mem.u64(info.symbol("prb"))
    desc_ring = prb + info.offset("printk_ringbuffer.desc_ring")
    count_bits = mem.u32(desc_ring + info.offset("prb_desc_ring.count_bits"))
    if not 0 < count_bits <= 24:
        raise TriageError(f"implausible printk descriptor count (2^{count_bits})")
    descs = mem.u64(desc_ring + info.offset("prb_desc_ring.descs"))
    infos = mem.u64(desc_ring + info.offset("prb_desc_ring.infos"))
    head = mem.u64(desc_ring + info.offset("prb_desc_ring.head_id") + counter) & ID_MASK
    tail = mem.u64(desc_ring + info.offset("prb_desc_ring.tail_id") + counter) & ID_MASK

    data_ring = prb + info.offset("printk_ringbuffer.text_data_ring")
    size_bits = mem.u32(data_ring + info.offset("prb_data_ring.size_bits"))
    if not 0 < size_bits <= 26 or (1 << size_bits) > MAX_RING_BYTES:
        raise TriageError(f"implausible printk text ring size (2^{size_bits})")
    ring_size = 1 << size_bits
    data = mem.read(mem.u64(data_ring + info.offset("prb_data_ring.data")), ring_size)

    desc_size = info.size("prb_desc")
    state_off = info.offset("prb_desc.state_var") + counter
    lpos_off = info.offset("prb_desc.text_blk_lpos")
    begin_off = lpos_off + info.offset("prb_data_blk_lpos.begin")
    next_off = lpos_off + info.offset("prb_data_blk_lpos.next")
    info_size = info.size("printk_info")
    ts_off = info.offset("printk_info.ts_nsec")
    len_off = info.offset("printk_info.text_len")

    count = 1 << count_bits
    records: list[Record] = []
    total = min((head - tail) & ID_MASK, count - 1, MAX_RECORDS - 1) + 1
    for step in range(total):
        rid = (tail + step) & ID_MASK
        index = rid & (count - 1)
        try:
            desc = mem.read(descs + index * desc_size, desc_size)
            (state_var,) = struct.unpack_from("<Q", desc, state_off)
            if state_var >> 62 not in READABLE or state_var & ID_MASK != rid:
                continue
            (begin,) = struct.unpack_from("<Q", desc, begin_off)
            (nxt,) = struct.unpack_from("<Q", desc, next_off)
            rec = mem.read(infos + index * info_size, info_size)
            (ts_nsec,) = struct.unpack_from("<Q", rec, ts_off)
            (text_len,) = struct.unpack_from("<H", rec, len_off)
        except (TriageError, struct.error):
            continue
        text = _block_text(data, begin, nxt, ring_size, min(text_len, MAX_TEXT))
        if text is not None:
            records.append(Record(ts_nsec, text))
    return records


def _block_text(data: bytes, begin: int, nxt: int, size: int, text_len: int) -> str | None:
    if begin & 1 or nxt - begin > size or nxt <= begin:  # a data-less or bogus block
        return None
    start, end = begin % size, nxt % size
    if end <= start:  # it wrapped: the whole block was written from offset 0
        start = 0
    block = data[start:end] if end else data[start:]
    if len(block) < 8:
        return None
    return block[8:8 + text_len].decode("utf-8", "replace")
