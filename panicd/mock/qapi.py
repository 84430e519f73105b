"""QAPI as a QMP client sees it: argument checking, error replies, and the wire encoding.

QEMU checks a command's arguments with its QObject input visitor before the command runs, in
the order the schema declares them, and only then complains about extra ones. Its messages are
part of the protocol as far as clients are concerned (checked on QEMU 7.2)::

    Parameter 'fdname' is missing
    Invalid parameter type for 'paging', expected: boolean
    Parameter 'panic' does not accept value 'bogus'
    Parameter 'foo' is unexpected

Every error a command returns is a `QmpError`: an error class (almost always GenericError;
CommandNotFound for unknown commands) and a human-readable description.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["str", "bool", "int", "enum", "enum-list"]

# What QEMU's visitor names each kind in "expected: ..." messages.
_EXPECTED = {"str": "string", "bool": "boolean", "int": "integer", "enum": "string",
             "enum-list": "array"}


class QmpError(Exception):
    """A failed command: becomes ``{"error": {"class": ..., "desc": ...}}`` on the wire."""

    def __init__(self, desc: str, error_class: str = "GenericError") -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class


@dataclass(frozen=True, slots=True)
class Param:
    """One command argument as the QAPI schema declares it."""

    name: str
    kind: Kind
    optional: bool = False
    values: tuple[str, ...] = ()  # the enum's members, for enum kinds


def check_arguments(params: Sequence[Param], args: Mapping[str, Any]) -> dict[str, Any]:
    """Validate `args` against `params` like QEMU's input visitor; return the known ones."""
    checked: dict[str, Any] = {}
    for param in params:
        if param.name not in args:
            if not param.optional:
                raise QmpError(f"Parameter '{param.name}' is missing")
            continue
        checked[param.name] = _check_value(param, args[param.name])
    for name in args:
        if name not in checked:
            raise QmpError(f"Parameter '{name}' is unexpected")
    return checked


def _check_value(param: Param, value: Any) -> Any:
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        # JSON true is not an integer to QEMU, but it is to Python.
        "int": isinstance(value, int) and not isinstance(value, bool),
        "enum": isinstance(value, str),
        "enum-list": isinstance(value, list),
    }[param.kind]
    if not ok:
        raise QmpError(f"Invalid parameter type for '{param.name}', expected: "
                       f"{_EXPECTED[param.kind]}")
    if param.kind == "enum" and value not in param.values:
        raise QmpError(f"Parameter '{param.name}' does not accept value '{value}'")
    if param.kind == "enum-list":
        for item in value:
            # QEMU 7.2 really names list members 'null' in these two messages.
            if not isinstance(item, str):
                raise QmpError("Invalid parameter type for 'null', expected: string")
            if item not in param.values:
                raise QmpError(f"Parameter 'null' does not accept value '{item}'")
    return value


# -- the wire -------------------------------------------------------------------------------------

_MISSING: Any = object()


# An escape \uxxxx made by json.dumps: preceded by an even number of backslashes.
_U_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u([0-9a-f]{4})")


def encode(message: Mapping[str, Any]) -> bytes:
    """One QMP message as QEMU writes it: ``", "`` and ``": "`` separators, CRLF-terminated,
    and (qobject/qjson.c) non-ASCII and DEL escaped as \\uXXXX in upper case."""
    text = json.dumps(message).replace("\x7f", "\\u007F")
    text = _U_ESCAPE.sub(lambda m: m.group(1) + "\\u" + m.group(2).upper(), text)
    return text.encode() + b"\r\n"


def return_message(value: object, request_id: object = _MISSING) -> dict[str, Any]:
    # Key order as QEMU 7.2 prints it: "return" before "id", but "id" before "error".
    message: dict[str, Any] = {"return": value}
    if request_id is not _MISSING:
        message["id"] = request_id
    return message


def error_message(error: QmpError, request_id: object = _MISSING) -> dict[str, Any]:
    message: dict[str, Any] = {}
    if request_id is not _MISSING:
        message["id"] = request_id
    message["error"] = {"class": error.error_class, "desc": error.desc}
    return message


def event_message(name: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """An event: QEMU omits "data" for events that have no members (STOP, RESUME)."""
    now = time.time()
    seconds = int(now)
    message: dict[str, Any] = {
        "timestamp": {"seconds": seconds, "microseconds": int((now - seconds) * 1_000_000)},
        "event": name,
    }
    if data is not None:
        message["data"] = dict(data)
    return message


def request_id_of(request: Mapping[str, Any]) -> object:
    """The request's "id", echoed back verbatim (null included), or the missing marker."""
    return request.get("id", _MISSING)
