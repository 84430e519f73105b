"""From a raw console log to the kernel's own lines, as printk records read out of a dump give them.

A serial console file, `dmesg`, `journalctl -k`, a pstore file and syzkaller's logs all decorate
the kernel's text: console timestamps `[   12.345678]`, caller ids `[ T1234]` / `[    C0]`
(CONFIG_PRINTK_CALLER, in their own bracket or in the timestamp's), syslog prefixes
(`Nov 26 12:00:00 host kernel: `), `<4>` loglevels, `\\r` from serial lines and ANSI colour.
The crash-title rules are written against the bare records, so every source is stripped here
to the same text and a crash gets the same title from a dump and from its console log.

The guest wrote every byte: the text is decoded with replacement, control characters are
dropped, and both the line count and each line's length are capped. Every pattern here is
anchored and has no nested quantifiers, so a hostile line costs linear time.
"""

from __future__ import annotations

import re

MAX_LINES = 20_000       # a crash report is at most a few hundred lines; keep the last ones
MAX_LINE_CHARS = 512     # printk's own limit is 1024 bytes; frames and headers are far shorter

_ANSI = re.compile(r"\x1b(?:\[[0-9;?]{0,32}[ -/]{0,4}[@-~]|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# `Nov 26 12:00:00 host kernel: ` (journalctl's default), `2026-11-26T12:00:00+0000 host kernel: `
# (short-iso) and `kernel: ` alone.
_SYSLOG = re.compile(
    r"^(?:[A-Z][a-z]{2} [ 0-3]?\d \d\d:\d\d:\d\d"
    r"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?)"
    r" \S{1,255} kernel: ")
_LOGLEVEL = re.compile(r"^<\d{1,3}>")
# `[   12.345678]`, `[   12.345678][ T1234]`, `[   12.345678] [    C0]`, `[   12.345678 T1234]`,
# `[ T1234]` alone; dmesg's `-T` form `[Thu Nov 26 12:00:00 2026]` too.
_STAMP = re.compile(
    r"^\[ {0,16}\d{1,12}\.\d{1,9}(?:[ ,] {0,8}[TC]\d{1,9})?\]"
    r"(?: ?\[ {0,16}[TC]\d{1,9}\])?"
    r"|^\[ {0,16}[TC]\d{1,9}\]"
    r"|^\[[A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-3]?\d \d\d:\d\d:\d\d \d{4}\]")


def kernel_line(raw: str) -> str:
    """One console line -> the kernel's text of it (one leading space kept off the prefix)."""
    line = raw[:MAX_LINE_CHARS * 2]
    if "\x1b" in line:
        line = _ANSI.sub("", line)
    line = _CONTROL.sub("", line.replace("\t", " "))
    for prefix in (_SYSLOG, _LOGLEVEL):
        match = prefix.match(line)
        if match:
            line = line[match.end():]
    match = _STAMP.match(line)
    if match:
        line = line[match.end():]
        # The console puts one space between the prefix and the record's text; indentation
        # beyond it (` ? foo+0x1/0x2`, `  <IRQ>`) belongs to the record.
        if line.startswith(" "):
            line = line[1:]
        match = _LOGLEVEL.match(line)
        if match:
            line = line[match.end():]
    return line[:MAX_LINE_CHARS].rstrip()


def kernel_lines(text: str | bytes) -> list[str]:
    """A console log (str or bytes, any source) -> its kernel lines, capped, without prefixes."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    # Keep the tail of an endless log: the crash that ended the guest is at the end.
    raw = text.split("\n")
    if len(raw) > MAX_LINES:
        raw = raw[-MAX_LINES:]
    return [kernel_line(line.replace("\r", "")) for line in raw]
