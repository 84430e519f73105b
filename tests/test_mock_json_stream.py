"""The mock frames QMP input like QEMU's JSON streamer (each expectation seen on QEMU 7.2)."""

from __future__ import annotations

import pytest

from panicd.mock.json_stream import JsonError, JsonStreamer


def feed(*chunks: bytes) -> list[object]:
    streamer = JsonStreamer()
    out: list[object] = []
    for chunk in chunks:
        out += streamer.feed(chunk)
    return out


def test_messages_need_no_newline_and_may_share_or_span_writes() -> None:
    assert feed(b'{"execute": "stop"}{"execute": "cont"}') == [{"execute": "stop"},
                                                              {"execute": "cont"}]
    assert feed(b'{"exec', b'ute": "st', b'op"}') == [{"execute": "stop"}]


def test_a_top_level_scalar_is_a_complete_message() -> None:
    assert feed(b'"x" 1\n[1] ') == ["x", 1, [1]]


@pytest.mark.parametrize(("data", "desc"), [
    (b'{"execute": }', "JSON parse error, expecting value"),
    (b"{]", "JSON parse error, expecting value"),
    (b'{"a":1,}', "JSON parse error, expecting value"),
    (b"[1 2]", "JSON parse error, expected separator in list"),
    (b'{"a" 1}', "JSON parse error, missing : in object pair"),
    (b"{1:2}", "JSON parse error, key is not a string in object"),
    (b'{"a":1,"a":2}', "JSON parse error, duplicate key"),
    (b'"\\q"', "JSON parse error, invalid escape sequence in string"),
    (b'"\\ud800"', "JSON parse error, \\ud800 is not a valid Unicode character"),
    (b"01 ", "JSON parse error, stray '01'"),
    (b"1.e5 ", "JSON parse error, stray '1.e'"),
    (b'"\x01"', "JSON parse error, stray '\"\x01'"),
])
def test_syntax_errors_get_qemus_messages(data: bytes, desc: str) -> None:
    assert feed(data) == [JsonError(desc)]


def test_bare_words_are_invalid_keywords_one_by_one() -> None:
    assert feed(b"not json\n") == [JsonError("JSON parse error, invalid keyword 'not'"),
                                   JsonError("JSON parse error, invalid keyword 'json'")]


def test_after_a_lexical_error_input_is_skipped_up_to_a_structural_byte() -> None:
    # The newline inside the string is the error; "x" is skipped; "{" starts afresh.
    assert feed(b'{"foo', b"}", b"[1]\n", b'"x"', b'{"execute": "stop"}') == [
        JsonError("JSON parse error, stray '\"foo}[1]\n'"), {"execute": "stop"}]
    assert feed(b'\xff{"execute": "stop"}') == [JsonError("JSON parse error, stray '\ufffd'"),
                                                 {"execute": "stop"}]


def test_qemu_extensions_and_escapes_are_understood() -> None:
    assert feed(b"{'a': 'b\\'c', \"u\": \"\\u00e9\\ud83d\\ude00\\u0000\", \"n\": -1.5e3}") == [
        {"a": "b'c", "u": "\u00e9\U0001f600\x00", "n": -1500.0}]


def test_nesting_beyond_the_limit_is_refused_not_crashed() -> None:
    out = feed(b"[" * 2000)
    assert out == [JsonError("JSON nesting depth limit exceeded")]
