"""Rust v0 symbol names (`_RNv...`) -> the path a person reads (`<crate::Type>::method`).

A Rust kernel module's frames and panics carry v0-mangled symbols
(https://doc.rust-lang.org/rustc/symbol-mangling/v0.html). Crash titles name functions, so a
mangled frame is demangled to the form syzkaller and rustc print: crate hashes dropped,
inherent impls as `<Type>`, trait impls as `<Type as Trait>`, nested items joined with `::`.

Only the subset kernel symbols use is understood: crate roots, nested paths, inherent and
trait impls, back-references, basic types. Anything else (generic arguments, punycode, closures'
types, ...) returns None and the caller keeps the mangled name. The guest wrote the symbol:
the input is capped, back-references may only point backwards, and the nesting depth is bounded,
so no symbol can loop or recurse without end.
"""

from __future__ import annotations

import re

MAX_SYMBOL = 400
MAX_DEPTH = 32
_BASIC_TYPES = {
    "a": "i8", "b": "bool", "c": "char", "d": "f64", "e": "str", "f": "f32", "h": "u8", "i": "isize",
    "j": "usize", "l": "i32", "m": "u32", "n": "i128", "o": "u128", "s": "i16", "t": "u16", "u": "()",
    "v": "...", "x": "i64", "y": "u64", "z": "!", "p": "_",
}
_BASE62 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


class _Unsupported(Exception):
    """The symbol uses a part of the grammar not handled here, or is malformed."""


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        char = self.peek()
        if not char:
            raise _Unsupported("truncated")
        self.pos += 1
        return char

    def base62(self) -> int:
        """`_` is 0; digits then `_` are their base-62 value plus one."""
        if self.peek() == "_":
            self.pos += 1
            return 0
        value = 0
        digits = 0
        while (char := self.take()) != "_":
            index = _BASE62.find(char)
            digits += 1
            if index < 0 or digits > 16:  # a crate hash is 64 bits: at most 11 digits
                raise _Unsupported("bad base-62 number")
            value = value * 62 + index
        return value + 1

    def skip_disambiguator(self) -> None:
        if self.peek() == "s":
            self.pos += 1
            self.base62()

    def identifier(self) -> str:
        self.skip_disambiguator()
        if self.peek() == "u":
            raise _Unsupported("punycode")
        start = self.pos
        while self.peek().isdigit():
            self.pos += 1
        if start == self.pos:
            raise _Unsupported("identifier without a length")
        length = int(self.text[start:self.pos])
        if self.peek() == "_":
            self.pos += 1
        name = self.text[self.pos:self.pos + length]
        if len(name) != length:
            raise _Unsupported("identifier past the end")
        self.pos += length
        return name

    def backref(self, parse: str) -> str:
        start = self.pos - 1
        target = self.base62()
        if target >= start:
            raise _Unsupported("back-reference that does not point backwards")
        saved = self.pos
        self.pos = target
        result = self.type_() if parse == "type" else self.path()
        self.pos = saved
        return result

    def path(self) -> str:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Unsupported("too deep")
        try:
            tag = self.take()
            if tag == "C":
                return self.identifier()
            if tag == "N":
                self.take()  # the namespace: `v` value, `t` type, upper case for closures & co.
                parent = self.path()
                name = self.identifier()
                return f"{parent}::{name}" if name else parent
            if tag == "M":
                self.skip_disambiguator()
                self.path()  # the impl's own path (where it is written): not printed
                return f"<{self.type_()}>"
            if tag == "X":
                self.skip_disambiguator()
                self.path()
                self_type = self.type_()
                return f"<{self_type} as {self.path()}>"
            if tag == "Y":
                self_type = self.type_()
                return f"<{self_type} as {self.path()}>"
            if tag == "B":
                return self.backref("path")
            raise _Unsupported(f"path tag {tag!r}")
        finally:
            self.depth -= 1

    def type_(self) -> str:
        char = self.peek()
        if char in _BASIC_TYPES:
            self.pos += 1
            return _BASIC_TYPES[char]
        if char == "B":
            self.pos += 1
            return self.backref("type")
        return self.path()


def demangle(symbol: str) -> str | None:
    """`_RNvMs3_NtCs..._11rust_binder7processNtB5_7Process10update_ref` ->
    `<rust_binder::process::Process>::update_ref`; None when not a v0 symbol this understands."""
    if not symbol.startswith("_R") or len(symbol) > MAX_SYMBOL:
        return None
    body = symbol[2:]
    start = 0
    while start < len(body) and body[start].isdigit():  # an optional encoding version
        start += 1
    parser = _Parser(body)
    parser.pos = start
    try:
        return parser.path()
    except (_Unsupported, RecursionError, ValueError):
        return None


def demangle_itanium(symbol: str) -> str | None:
    """An Itanium-mangled name (`_Z...`, Rust's legacy mangling and C++'s) -> its path:
    `_ZN4core9panicking5panic17h0123456789abcdefE` -> `core::panicking::panic` (the hash that
    legacy Rust appends dropped), `_Z8fakeNameiii` -> `fakeName` (a function's parameter types
    dropped, as a title names functions). None when the name is not a plain or nested name."""
    if not symbol.startswith("_Z") or len(symbol) > MAX_SYMBOL:
        return None
    nested = symbol.startswith("_ZN")
    pos = 3 if nested else 2
    parts: list[str] = []
    while pos < len(symbol) and symbol[pos].isdigit() and len(parts) < MAX_DEPTH:
        end = pos
        while end < len(symbol) and end - pos < 3 and symbol[end].isdigit():
            end += 1
        length = int(symbol[pos:end])
        if length == 0 or end + length > len(symbol):
            return None
        parts.append(symbol[end:end + length])
        pos = end + length
        if not nested:
            break
    if not parts or (nested and symbol[pos:pos + 1] != "E"):
        return None
    if len(parts) > 1 and _LEGACY_HASH.fullmatch(parts[-1]):
        parts.pop()
    return "::".join(parts)


_LEGACY_HASH = re.compile(r"h[0-9a-f]{16}")
