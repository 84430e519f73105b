"""From a raw console log to the kernel's own lines, as printk records read out of a dump give them.

A serial console file, `dmesg`, `journalctl -k`, a pstore file and syzkaller's logs all decorate
the kernel's text: console timestamps `[   12.345678]`, caller ids `[ T1234]` / `[    C0]`
(CONFIG_PRINTK_CALLER, in their own bracket or in the timestamp's), syslog prefixes
(`Nov 26 12:00:00 host kernel: `, journalctl's other `short-*` forms), `dmesg`'s `-x` and
`--time-format iso` prefixes, `<4>` loglevels, `\\r` from serial lines and ANSI colour.
The crash-title rules are written against the bare records, so every source is stripped here
to the same text and a crash gets the same title from a dump and from its console log.

The guest wrote every byte: the text is decoded with replacement, control and format
characters (C0, C1, bidi overrides, zero-width ones, line separators) are dropped, and both the
line count and each line's length are capped. Every pattern here is anchored and has no nested
quantifiers, so a hostile line costs linear time.
"""

from __future__ import annotations

import re

MAX_LINES = 20_000       # a crash report is at most a few hundred lines; keep the last ones
MAX_LINE_CHARS = 512     # printk's own limit is 1024 bytes; frames and headers are far shorter

_ANSI = re.compile(r"\x1b(?:\[[0-9;?]{0,32}[ -/]{0,4}[@-~]|[@-Z\\-_])")
# Characters that print nothing of their own or steer a terminal: C0 and C1 controls (U+009B is
# an 8-bit CSI to some terminals), Unicode format characters (category Cf: bidi overrides such as
# U+202E, zero-width spaces, the BOM, tag characters) and the line and paragraph separators
# (U+2028, U+2029). Generated from unicodedata (Cc, Cf, Zl, Zp; Unicode 14);
# tests/test_crash_titles.py checks it still covers every such character. Titles turn them into
# a space (title.py); console lines drop them, as they drop C0 controls.
INVISIBLE = (
    "\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e"
    "\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd"
    "\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001"
    "\U000e0020-\U000e007f")
_CONTROL = re.compile("[" + INVISIBLE + "]")
# A journal or syslog line's prefix, up to its `kernel: ` identifier:
#   `Nov 26 12:00:00 host kernel: `               journalctl's default (-o short)
#   `Nov 26 12:00:00.123456 host kernel: `        -o short-precise
#   `2026-11-26T12:00:00+0000 host kernel: `      -o short-iso (and -iso-precise)
#   `Thu 2026-11-26 12:00:00 UTC host kernel: `   -o short-full
#   `[ 1234.567890] host kernel: `                -o short-monotonic
#   `1764158400.123456 host kernel: `             -o short-unix
_SYSLOG = re.compile(
    r"^(?:[A-Z][a-z]{2} [ 0-3]?\d \d\d:\d\d:\d\d(?:\.\d{1,9})?"
    r"|\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?"
    r"|[A-Z][a-z]{2} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{1,9})? [\w+-]{1,32}"
    r"|\[ {0,16}\d{1,12}\.\d{1,9}\]"
    r"|\d{1,12}\.\d{1,9})"
    r" \S{1,255} kernel: ")
# `dmesg -x` (--decode): `kern  :emerg : `, the facility and level, each padded; a timestamp
# may follow (unless -t).
_DMESG_DECODED = re.compile(r"^[a-z]{2,8}\d? {0,6}:[a-z]{3,6} {0,6}: ")
_LOGLEVEL = re.compile(r"^<\d{1,3}>")
# `[   12.345678]`, `[   12.345678][ T1234]`, `[   12.345678] [    C0]`, `[   12.345678 T1234]`,
# `[ T1234]` alone; dmesg's `-T` form `[Thu Nov 26 12:00:00 2026]` and its
# `--time-format iso` form `2026-11-26T12:00:00,123456+00:00` too.
_STAMP = re.compile(
    r"^\[ {0,16}\d{1,12}\.\d{1,9}(?:[ ,] {0,8}[TC]\d{1,9})?\]"
    r"(?: ?\[ {0,16}[TC]\d{1,9}\])?"
    r"|^\[ {0,16}[TC]\d{1,9}\]"
    r"|^\[[A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-3]?\d \d\d:\d\d:\d\d \d{4}\]"
    r"|^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[.,]\d{1,9}[+-]\d\d:?\d\d(?= )")


def kernel_line(raw: str) -> str:
    """One console line -> the kernel's text of it (one leading space kept off the prefix)."""
    line = raw[:MAX_LINE_CHARS * 2]
    if "\x1b" in line:
        line = _ANSI.sub("", line)
    line = line.replace("\t", " ")
    if not line.isprintable():   # every INVISIBLE character is non-printable: skip the common case
        line = _CONTROL.sub("", line)
    for prefix in (_SYSLOG, _DMESG_DECODED, _LOGLEVEL):
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
