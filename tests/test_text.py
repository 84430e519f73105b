"""`printable`: what reaches an operator's terminal from guest names and config files."""

from __future__ import annotations

import pytest

from panicd.text import journal_text, printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("web-01", "web-01"),
        ("naïve 名前 ✓", "naïve 名前 ✓"),               # printable Unicode stays as it is
        ("a\nb\r\tc", "a\\nb\\r\\tc"),                 # no fake table rows
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),  # no colours, no cursor moves
        ("\x9b2J", "\\x9b2J"),                         # the one-byte C1 CSI
        ("\x00\x7f", "\\x00\\x7f"),
        ("abc\u202edcba", "abc\\u202edcba"),           # a bidi override reorders what follows
        ("line\u2028sep", "line\\u2028sep"),
        ("bad\udcffbyte", "bad\\udcffbyte"),           # surrogateescape'd bytes: print() refuses
        ("back\\slash", "back\\\\slash"),              # so an escape is never ambiguous
    ],
)
def test_control_characters_are_written_as_escapes(raw: str, shown: str) -> None:
    assert printable(raw) == shown
    assert printable(raw).encode("utf-8")  # always printable, even from undecodable bytes


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("line one\nline two\twith a tab", "line one\nline two\twith a tab"),  # a kernel log
        ("back\\slash", "back\\slash"),
        ("evil \x9b31mRED", "evil \\x9b31mRED"),   # journald would store this as a blob
        ("\x1b[2Jcleared\r", "\\x1b[2Jcleared\\r"),
        ("abc\u202edcba", "abc\\u202edcba"),
    ],
)
def test_journal_text_escapes_what_would_make_a_field_binary(raw: str, kept: str) -> None:
    assert journal_text(raw) == kept
