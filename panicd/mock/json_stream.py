"""QMP input framing the way QEMU frames it: a JSON streamer, not a line reader.

QEMU (qobject/json-lexer.c, json-streamer.c, json-parser.c) never reads lines. It lexes the
byte stream into tokens, counts braces and brackets, and hands the tokens to the parser each
time the counts balance again. A client can see the consequences, and the mock copies them
(each was checked against QEMU 7.2):

- several messages may arrive in one write and one message may span many; no newline needed;
- a bare scalar at top level (``1``, ``"x"``) is a complete message, which the dispatcher then
  refuses with "QMP input must be a JSON object";
- a lexical error (a stray byte, a control character inside a string) is reported as
  ``JSON parse error, stray '<token so far>'``; the lexer then skips input up to a byte that
  may start a new message: ``{ } [ ]``, an ASCII control character other than TAB, or the
  impossible UTF-8 bytes 0xFE and 0xFF (which is why clients send ``\\n`` or 0xFF to resync);
- a syntax error in a balanced message is ``JSON parse error, <reason>`` with QEMU's reasons:
  "expecting value", "invalid keyword 'not'", "missing : in object pair", and so on;
- QEMU extensions are accepted: single-quoted strings.

    >>> s = JsonStreamer()
    >>> s.feed(b'{"execute": "stop"}{"exec')
    [{'execute': 'stop'}]
    >>> s.feed(b'ute": }\\n')
    [JsonError(desc='JSON parse error, expecting value')]

Deliberate difference: Python's recursion limit makes nesting deeper than about 450 levels
fail with QEMU's "JSON nesting depth limit exceeded" rather than at QEMU's 1024.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# json-streamer.c limits one message's size, token count and nesting.
MAX_TOKEN_SIZE = 64 << 20
MAX_TOKEN_COUNT = 2 << 20
MAX_NESTING = 1 << 10


@dataclass(frozen=True, slots=True)
class JsonError:
    """A message that could not be parsed; `desc` is QEMU's GenericError text."""

    desc: str


class _Tok(enum.Enum):
    LCURLY = "{"
    RCURLY = "}"
    LSQUARE = "["
    RSQUARE = "]"
    COLON = ":"
    COMMA = ","
    INTEGER = "integer"
    FLOAT = "float"
    KEYWORD = "keyword"
    STRING = "string"


_STRUCTURAL = {ord(t.value): t for t in (_Tok.LCURLY, _Tok.RCURLY, _Tok.LSQUARE, _Tok.RSQUARE,
                                          _Tok.COLON, _Tok.COMMA)}
_WHITESPACE = frozenset(b" \t\r\n")
_DIGITS = frozenset(b"0123456789")
_LOWER = frozenset(range(ord("a"), ord("z") + 1))


def _ends_recovery(c: int) -> bool:
    # json-lexer.c IN_RECOVERY: structural brackets, control characters but TAB, 0xFE, 0xFF.
    return c in b"{}[]" or (c < 0x20 and c != 0x09) or c >= 0xFE


class _State(enum.Enum):
    START = enum.auto()
    RECOVERY = enum.auto()
    STRING = enum.auto()
    STRING_ESCAPE = enum.auto()
    KEYWORD = enum.auto()
    MINUS = enum.auto()  # "-": a digit must follow
    ZERO = enum.auto()  # "0" or "-0": no more digits may follow
    INT = enum.auto()
    DOT = enum.auto()  # "1.": a digit must follow
    FRAC = enum.auto()
    EXP = enum.auto()  # "1e": a sign or digit must follow
    EXP_SIGN = enum.auto()  # "1e+": a digit must follow
    EXP_DIGITS = enum.auto()


def _number_class(c: int) -> str:
    if c == 0x30:
        return "0"
    if c in _DIGITS:
        return "1"
    return {0x2E: ".", 0x65: "e", 0x45: "e", 0x2B: "+", 0x2D: "+"}.get(c, "")


# json-lexer.c's number states: class of the next byte -> next state (None: a lexical error).
_NUMBER_MOVES: dict[_State, dict[str, _State | None]] = {
    _State.MINUS: {"0": _State.ZERO, "1": _State.INT},
    _State.ZERO: {"0": None, "1": None, ".": _State.DOT, "e": _State.EXP},  # "01" is an error
    _State.INT: {"0": _State.INT, "1": _State.INT, ".": _State.DOT, "e": _State.EXP},
    _State.DOT: {"0": _State.FRAC, "1": _State.FRAC},
    _State.FRAC: {"0": _State.FRAC, "1": _State.FRAC, "e": _State.EXP},
    _State.EXP: {"0": _State.EXP_DIGITS, "1": _State.EXP_DIGITS, "+": _State.EXP_SIGN},
    _State.EXP_SIGN: {"0": _State.EXP_DIGITS, "1": _State.EXP_DIGITS},
    _State.EXP_DIGITS: {"0": _State.EXP_DIGITS, "1": _State.EXP_DIGITS},
}
# The states where a number may end, and what it then is.
_NUMBER_ENDS = {_State.ZERO: _Tok.INTEGER, _State.INT: _Tok.INTEGER,
                _State.FRAC: _Tok.FLOAT, _State.EXP_DIGITS: _Tok.FLOAT}


class JsonStreamer:
    """Feed bytes in, get complete messages (or `JsonError`s) out, in order."""

    def __init__(self) -> None:
        self._state = _State.START
        self._token = bytearray()
        self._quote = 0
        self._tokens: list[tuple[_Tok, bytes]] = []
        self._braces = 0
        self._brackets = 0
        self._size = 0
        self._out: list[object] = []

    def feed(self, data: bytes) -> list[object]:
        """Consume `data`; return every message it completed: a parsed value or a JsonError."""
        for c in data:
            self._char(c)
        out, self._out = self._out, []
        return out

    # -- lexer -------------------------------------------------------------------------------

    def _char(self, c: int) -> None:  # noqa: PLR0912 - one branch per lexer state reads best
        state = self._state
        if state is _State.RECOVERY:
            if not _ends_recovery(c):
                return
            self._state = state = _State.START
        if state is _State.START:
            self._start(c)
        elif state is _State.STRING:
            self._token.append(c)
            if c == self._quote:
                self._emit(_Tok.STRING)
            elif c == 0x5C:
                self._state = _State.STRING_ESCAPE
            elif c < 0x20 or c >= 0xFE:
                self._error()
        elif state is _State.STRING_ESCAPE:
            # Escapes are validated by the parser, as in QEMU since 2.12.
            self._token.append(c)
            if 0x20 <= c < 0xFE:
                self._state = _State.STRING
            else:
                self._error()
        elif state is _State.KEYWORD:
            if c in _LOWER:
                self._token.append(c)
            else:
                self._emit(_Tok.KEYWORD)
                self._start(c)
        else:
            self._number(c)

    def _start(self, c: int) -> None:
        self._token.clear()
        if c in _WHITESPACE:
            return
        self._token.append(c)
        if c in _STRUCTURAL:
            self._emit(_STRUCTURAL[c])
        elif c in (0x22, 0x27):
            self._quote = c
            self._state = _State.STRING
        elif c in _LOWER:
            self._state = _State.KEYWORD
        elif c == 0x2D:
            self._state = _State.MINUS
        elif c == 0x30:
            self._state = _State.ZERO
        elif c in _DIGITS:
            self._state = _State.INT
        else:
            self._error()

    def _number(self, c: int) -> None:
        state = self._state
        moves = _NUMBER_MOVES[state]
        kind = _number_class(c)
        if kind in moves:
            nxt = moves[kind]
            self._token.append(c)
            if nxt is None:
                self._error()
            else:
                self._state = nxt
        elif state in _NUMBER_ENDS:
            # A complete number ends where the next token starts (QEMU's LOOKAHEAD).
            self._emit(_NUMBER_ENDS[state])
            self._start(c)
        else:
            self._token.append(c)
            self._error()

    def _error(self) -> None:
        text = bytes(self._token).decode("utf-8", "replace")
        self._token.clear()
        self._reset()
        self._out.append(JsonError(f"JSON parse error, stray '{text}'"))
        self._state = _State.RECOVERY

    # -- streamer ----------------------------------------------------------------------------

    def _emit(self, kind: _Tok) -> None:
        self._state = _State.START
        text = bytes(self._token)
        self._token.clear()
        self._tokens.append((kind, text))
        self._size += len(text)
        if kind is _Tok.LCURLY:
            self._braces += 1
        elif kind is _Tok.RCURLY:
            self._braces -= 1
        elif kind is _Tok.LSQUARE:
            self._brackets += 1
        elif kind is _Tok.RSQUARE:
            self._brackets -= 1
        if self._braces < 0 or self._brackets < 0 or self._braces == self._brackets == 0:
            tokens = self._tokens
            self._reset()
            self._out.append(_parse(tokens))
        elif self._size > MAX_TOKEN_SIZE:
            self._limit("JSON token size limit exceeded")
        elif len(self._tokens) > MAX_TOKEN_COUNT:
            self._limit("JSON token count limit exceeded")
        elif self._braces + self._brackets > MAX_NESTING:
            self._limit("JSON nesting depth limit exceeded")

    def _limit(self, desc: str) -> None:
        self._reset()
        self._out.append(JsonError(desc))

    def _reset(self) -> None:
        self._tokens = []
        self._braces = self._brackets = self._size = 0


# -- parser (json-parser.c): the first error wins ----------------------------------------------


class _SyntaxError(Exception):
    pass


class _Parser:
    def __init__(self, tokens: list[tuple[_Tok, bytes]]) -> None:
        self._tokens = tokens
        self._pos = 0

    def pop(self) -> tuple[_Tok, bytes]:
        if self._pos >= len(self._tokens):
            raise _SyntaxError("premature EOI")
        tok = self._tokens[self._pos]
        self._pos += 1
        return tok

    def value(self) -> object:
        kind, text = self.pop()
        if kind is _Tok.LCURLY:
            return self.obj()
        if kind is _Tok.LSQUARE:
            return self.array()
        if kind is _Tok.INTEGER:
            return int(text)
        if kind is _Tok.FLOAT:
            return float(text)
        if kind is _Tok.STRING:
            return _unquote(text)
        if kind is _Tok.KEYWORD:
            keywords: dict[bytes, object] = {b"true": True, b"false": False, b"null": None}
            if text in keywords:
                return keywords[text]
            raise _SyntaxError(f"invalid keyword '{text.decode()}'")
        raise _SyntaxError("expecting value")

    def obj(self) -> dict[str, object]:
        result: dict[str, object] = {}
        if self._peek() is _Tok.RCURLY:
            self.pop()
            return result
        while True:
            key = self.value()
            if not isinstance(key, str):
                raise _SyntaxError("key is not a string in object")
            if self.pop()[0] is not _Tok.COLON:
                raise _SyntaxError("missing : in object pair")
            value = self.value()
            if key in result:
                raise _SyntaxError("duplicate key")
            result[key] = value
            kind = self.pop()[0]
            if kind is _Tok.RCURLY:
                return result
            if kind is not _Tok.COMMA:
                raise _SyntaxError("expected separator in dict")

    def array(self) -> list[object]:
        result: list[object] = []
        if self._peek() is _Tok.RSQUARE:
            self.pop()
            return result
        while True:
            result.append(self.value())
            kind = self.pop()[0]
            if kind is _Tok.RSQUARE:
                return result
            if kind is not _Tok.COMMA:
                raise _SyntaxError("expected separator in list")

    def _peek(self) -> _Tok | None:
        return self._tokens[self._pos][0] if self._pos < len(self._tokens) else None


def _parse(tokens: list[tuple[_Tok, bytes]]) -> object:
    try:
        return _Parser(tokens).value()
    except _SyntaxError as exc:
        return JsonError(f"JSON parse error, {exc}")
    except RecursionError:
        return JsonError("JSON nesting depth limit exceeded")


_ESCAPES = {ord("b"): "\b", ord("f"): "\f", ord("n"): "\n", ord("r"): "\r", ord("t"): "\t",
            ord("/"): "/", ord("\\"): "\\", ord("'"): "'", ord('"'): '"'}


def _unquote(token: bytes) -> str:
    body, out, i = token[1:-1], [], 0
    while i < len(body):
        j = body.find(b"\\", i)
        run = body[i:] if j < 0 else body[i:j]
        try:
            out.append(run.decode("utf-8"))
        except UnicodeDecodeError:
            raise _SyntaxError("invalid UTF-8 sequence in string") from None
        if j < 0:
            break
        esc = body[j + 1]
        if esc in _ESCAPES:
            out.append(_ESCAPES[esc])
            i = j + 2
            continue
        if esc != ord("u"):
            raise _SyntaxError("invalid escape sequence in string")
        code, i = _hex4(body, j + 2), j + 6
        if 0xD800 <= code < 0xDC00 and body[i:i + 2] == b"\\u":
            low = _hex4(body, i + 2)
            if 0xDC00 <= low < 0xE000:
                code, i = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00), i + 6
        if 0xD800 <= code < 0xE000:
            written = body[j:j + 6].decode()
            raise _SyntaxError(f"{written} is not a valid Unicode character")
        out.append(chr(code))
    return "".join(out)


_HEX = frozenset(b"0123456789abcdefABCDEF")


def _hex4(body: bytes, at: int) -> int:
    digits = body[at:at + 4]
    if len(digits) == 4 and all(d in _HEX for d in digits):
        return int(digits, 16)
    raise _SyntaxError("invalid hex escape sequence in string")
