"""Text from guests and config files, made safe to print on an operator's terminal.

Guest names come from QEMU's `-name` (query-name), socket paths and keys from config files
and discovery: anyone who can start a guest or write a config can put a newline (a fake
table row) or `ESC [` (a terminal control sequence) in them. Every human-readable output
(`panicd status`, `panicd check-config`, `panicd incidents`) passes such text through
`printable`; JSON output keeps it exact (JSON escapes control characters itself).
"""

from __future__ import annotations

import unicodedata

#: Unicode categories never printed as themselves: controls (C0, DEL, C1 such as the
#: one-byte CSI U+009B), format characters (bidi overrides that reorder what follows), line
#: and paragraph separators, and lone surrogates (undecodable bytes, which print() refuses).
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def printable(text: str) -> str:
    r"""`text` with every control character written as a Python-style escape.

    `"web\n\x1b[31m"` becomes `web\n\x1b[31m` (literally: backslash, n, ...), so the result is
    one line that a terminal shows as it is. A backslash is doubled, so an escaped name never
    looks like one that was typed with backslashes.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape(char) for char in text)


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    if unicodedata.category(char) not in _ESCAPED_CATEGORIES:
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def journal_text(text: str) -> str:
    r"""`text` fit for a journal field: control and format characters escaped as `printable`
    does, but newlines and tabs kept (a kernel log is many lines) and backslashes as they are.

    journald stores a field holding any other control character as binary, and `journalctl`
    then shows `[46B blob data]` instead of the alert's text: a guest that prints a C1 control
    or a bidi override in its kernel log must not hide the alert about its crash.
    """
    if all(c.isprintable() or c in "\n\t" for c in text):
        return text
    return "".join(c if c.isprintable() or c in "\n\t" else _escape(c) for c in text)


def journal_line(text: str) -> str:
    r"""`text` as an alert's MESSAGE: `journal_text`, and on one line (newlines and tabs
    escaped too), so that a guest's name or report can never make `journalctl` show a line
    that looks like an entry of its own."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)
