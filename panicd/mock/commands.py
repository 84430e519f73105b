"""The QMP commands the mock guest answers: those a panic handler uses, with QEMU 7.2's replies.

Replies and refusals were taken from a real QEMU 7.2 (Debian 12's build): key order, error
texts, and the order of the checks in dump-guest-memory (qmp_dump_guest_memory() in
dump/dump.c), which matters when a request has several faults::

    There is a dump in process, please wait.
    kdump-compressed format doesn't support paging or filter    (any format but elf)
    Parameter 'length' is missing / Parameter 'begin' is missing
    kdump-lzo is not available now                              (Debian builds lack lzo, snappy)
    File descriptor named 'NAME' has not been found             (protocol fd:NAME)
    Could not open 'PATH': No such file or directory            (protocol file:PATH)
    Invalid parameter 'protocol'

`inject-nmi` replies {} in every runstate (running, paused, guest-panicked, prelaunch, save-vm)
and takes no arguments ("Parameter 'cpu' is unexpected"); what the NMI does is machine.py's.

A named fd serves one dump: dump-guest-memory takes it off the monitor's list (a later
closefd says "File descriptor named 'NAME' not found"). file: outputs are created with mode
0400 and truncated, as QEMU does.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from panicd.mock.dump import Dumper, DumpRequest
from panicd.mock.machine import ACTIONS, Machine
from panicd.mock.qapi import Param, QmpError
from panicd.mock.qmp_server import Command, QmpSession

# What Debian 12's QEMU 7.2 offers (no lzo, no snappy); query-dump-guest-memory-capability.
DUMP_FORMATS = ("elf", "kdump-zlib", "win-dmp")
_ALL_DUMP_FORMATS = ("elf", "kdump-zlib", "kdump-lzo", "kdump-snappy", "win-dmp")


@dataclass(frozen=True, slots=True)
class Identity:
    """What the guest says about itself over QMP."""

    name: str | None
    uuid: str | None
    memory_bytes: int
    qemu_version: tuple[int, int, int]
    package: str

    def version(self) -> dict[str, Any]:
        major, minor, micro = self.qemu_version
        return {"qemu": {"micro": micro, "minor": minor, "major": major}, "package": self.package}


def build_commands(identity: Identity, machine: Machine, dumper: Dumper,
                   dump_formats: tuple[str, ...] = DUMP_FORMATS) -> dict[str, Command]:
    """The command table of one guest; every monitor of the guest shares it."""

    async def query_status(_s: QmpSession, _a: dict[str, Any]) -> object:
        return {"status": str(machine.runstate), "singlestep": False, "running": machine.running}

    async def query_name(_s: QmpSession, _a: dict[str, Any]) -> object:
        return {} if identity.name is None else {"name": identity.name}

    async def query_uuid(_s: QmpSession, _a: dict[str, Any]) -> object:
        return {"UUID": identity.uuid or "00000000-0000-0000-0000-000000000000"}

    async def query_version(_s: QmpSession, _a: dict[str, Any]) -> object:
        return identity.version()

    async def query_memory(_s: QmpSession, _a: dict[str, Any]) -> object:
        return {"base-memory": identity.memory_bytes, "plugged-memory": 0}

    async def query_dump_caps(_s: QmpSession, _a: dict[str, Any]) -> object:
        return {"formats": list(dump_formats)}

    async def query_dump(_s: QmpSession, _a: dict[str, Any]) -> object:
        return dumper.query()

    async def set_action(_s: QmpSession, args: dict[str, Any]) -> object:
        machine.set_actions(args)
        return {}

    def simple(action: Callable[[], None]) -> Callable[[QmpSession, dict[str, Any]],
                                                       Awaitable[object]]:
        async def handler(_s: QmpSession, _a: dict[str, Any]) -> object:
            action()
            return {}
        return handler

    async def getfd(session: QmpSession, args: dict[str, Any]) -> object:
        fd = session.take_fd()
        old = session.monitor.fds.pop(args["fdname"], None)
        if old is not None:  # QEMU replaces a name that is already taken
            os.close(old)
        session.monitor.fds[args["fdname"]] = fd
        return {}

    async def closefd(session: QmpSession, args: dict[str, Any]) -> object:
        fd = session.monitor.fds.pop(args["fdname"], None)
        if fd is None:
            raise QmpError(f"File descriptor named '{args['fdname']}' not found")
        os.close(fd)
        return {}

    async def dump_guest_memory(session: QmpSession, args: dict[str, Any]) -> object:
        fmt = args.get("format", "elf")
        if dumper.active:
            raise QmpError("There is a dump in process, please wait.")
        if "format" in args and fmt != "elf" and (
            args["paging"] or "begin" in args or "length" in args
        ):
            raise QmpError("kdump-compressed format doesn't support paging or filter")
        if "begin" in args and "length" not in args:
            raise QmpError("Parameter 'length' is missing")
        if "length" in args and "begin" not in args:
            raise QmpError("Parameter 'begin' is missing")
        if fmt not in dump_formats:
            raise QmpError(f"{fmt} is not available now")
        fd = _open_output(session, args["protocol"])
        await dumper.dump(DumpRequest(fd, fmt, args.get("begin"), args.get("length"),
                                      args.get("detach", False)))
        return {}

    commands = [
        Command("query-status", (), query_status),
        Command("query-name", (), query_name),
        Command("query-uuid", (), query_uuid),
        Command("query-version", (), query_version),
        Command("query-memory-size-summary", (), query_memory),
        Command("query-dump-guest-memory-capability", (), query_dump_caps),
        Command("query-dump", (), query_dump),
        Command("set-action", tuple(Param(kind, "enum", optional=True, values=values)
                                    for kind, values in ACTIONS.items()), set_action),
        Command("stop", (), simple(machine.stop)),
        Command("cont", (), simple(machine.cont)),
        Command("system_reset", (), simple(machine.system_reset)),
        Command("system_powerdown", (), simple(machine.system_powerdown)),
        Command("quit", (), simple(machine.quit)),
        Command("inject-nmi", (), simple(machine.inject_nmi)),
        Command("getfd", (Param("fdname", "str"),), getfd),
        Command("closefd", (Param("fdname", "str"),), closefd),
        Command("dump-guest-memory", (
            Param("paging", "bool"),
            Param("protocol", "str"),
            Param("detach", "bool", optional=True),
            Param("begin", "int", optional=True),
            Param("length", "int", optional=True),
            Param("format", "enum", optional=True, values=_ALL_DUMP_FORMATS),
        ), dump_guest_memory),
    ]
    return {command.name: command for command in commands}


def _open_output(session: QmpSession, protocol: str) -> int:
    if protocol.startswith("fd:"):
        name = protocol[3:]
        fd = session.monitor.fds.pop(name, None)
        if fd is None:
            raise QmpError(f"File descriptor named '{name}' has not been found")
        return fd
    if protocol.startswith("file:"):
        path = protocol[5:]
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o400)
        except OSError as exc:
            raise QmpError(f"Could not open '{path}': {os.strerror(exc.errno or 0)}") from None
    raise QmpError("Invalid parameter 'protocol'")
