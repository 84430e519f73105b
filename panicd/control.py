"""The control socket: `panicd status` asks the running daemon how its guests are, and
`panicd guest NAME ACTION` acts on one (guest_actions.py).

Protocol: a client connects to the unix socket, sends one JSON object on one line, and gets
one JSON object back on one line (two for a guest action it waits for), then the connection
closes.

    -> {"command": "status"}
    <- {"ok": true, "daemon": {...}, "guests": [{...}, ...]}
    -> {"command": "guest", "guest": NAME, "action": ACTION, "format": F, "wait": SECONDS}
    <- {"ok": true, "incident": ID, "steps": [...]}        at once (or ok false, refused)
    <- {"ok": true, "done": true, "outcome": ..., "steps": [{...}, ...]}  when they have run
    -> anything else
    <- {"ok": false, "error": "why"}

The socket is mode 0600 (0660 with `control_group`), so only root (and that group) may ask;
acting on a guest also needs the caller's uid (SO_PEERCRED) to be root's or listed in
`control_allowed_uids`. A request is capped in size and time: a client that sends garbage,
nothing, or a gigabyte gets an error reply or is dropped, and the daemon carries on. A caller
waiting for a guest action's steps holds none of the `MAX_CLIENTS` turns meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import grp
import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from panicd.listen import peer_credentials
from panicd.table import cell, human_size, render
from panicd.text import printable

log = structlog.get_logger("panicd.control")

MAX_REQUEST_BYTES = 4096
REQUEST_TIMEOUT = 5.0
MAX_CLIENTS = 16

#: A reply, and how to get the second one when there is one (a guest action's outcome).
Answer = tuple[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]] | None]


@dataclass(frozen=True)
class Peer:
    """Who is at the other end of a control connection, as the kernel says (SO_PEERCRED)."""

    pid: int
    uid: int


GuestActionHandler = Callable[[dict[str, Any], Peer | None], Awaitable[Answer]]


class ControlServer:
    def __init__(self, path: Path, status: Callable[[], dict[str, Any]], group: str | None = None,
                 guest_action: GuestActionHandler | None = None) -> None:
        self.path = path
        self._status = status
        self._group = group
        self._guest_action = guest_action
        self._slots = asyncio.Semaphore(MAX_CLIENTS)

    async def serve(self) -> None:
        """Serve until cancelled; the socket file is removed on the way out.

        A control socket that cannot be made costs `panicd status`, never the guests: it is
        logged and panicd goes on watching them.
        """
        try:
            server = await self._listen()
        except (OSError, KeyError) as exc:
            log.error("control.unavailable", path=str(self.path), error=str(exc))  # noqa: TRY400
            return
        log.info("control.listening", path=str(self.path))
        try:
            async with server:
                await server.serve_forever()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _listen(self) -> asyncio.Server:
        # The group is looked up first: an unknown one must leave no socket behind, rather
        # than one that is served but refuses the group `panicd check-config` was told of.
        gid = grp.getgrnam(self._group).gr_gid if self._group is not None else None
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        server = await asyncio.start_unix_server(self._client, path=str(self.path),
                                                 limit=MAX_REQUEST_BYTES)
        try:
            if gid is not None:
                os.chown(self.path, -1, gid)
            self.path.chmod(0o600 if gid is None else 0o660)
        except OSError:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            raise
        return server

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self._slots.locked():
                await self._reply(writer, {"ok": False, "error": "busy: too many clients"})
                return
            async with self._slots:
                reply, then = await self._answer(reader, _peer(writer))
                await self._reply(writer, reply)
            if then is not None:
                # Outside the turns: a caller waiting for a dump must not keep `status` out.
                await self._reply(writer, await then())
        except (ConnectionError, TimeoutError) as exc:
            log.debug("control.client_gone", error=str(exc))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1)

    async def _answer(self, reader: asyncio.StreamReader, peer: Peer | None) -> Answer:
        request = await self._request(reader)
        if isinstance(request, str):
            return {"ok": False, "error": request}, None
        command = request.get("command")
        if command == "status":
            return {"ok": True, **self._status()}, None
        if command == "guest" and self._guest_action is not None:
            try:
                return await self._guest_action(request, peer)
            except Exception:
                # A bug here costs this request, never the socket or the daemon.
                log.exception("control.guest_action_failed")
                return {"ok": False, "error": "internal error (see panicd's log)"}, None
        log.info("control.bad_request", command=str(command)[:64])
        known = "status, guest" if self._guest_action is not None else "status"
        return {"ok": False, "error": f"unknown command {str(command)[:64]!r}; known: {known}"}, None

    @staticmethod
    async def _request(reader: asyncio.StreamReader) -> dict[str, Any] | str:
        """The client's request, or what is wrong with it."""
        try:
            line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
        except TimeoutError:
            return f"no request within {REQUEST_TIMEOUT:g} s"
        except (asyncio.LimitOverrunError, ValueError):
            return f"request longer than {MAX_REQUEST_BYTES} bytes"
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return "not a JSON object on one line"
        return request if isinstance(request, dict) else "not a JSON object on one line"

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        writer.write(json.dumps(reply, default=str).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)


def _peer(writer: asyncio.StreamWriter) -> Peer | None:
    try:
        pid, uid = peer_credentials(writer.get_extra_info("socket"))
    except (OSError, TypeError) as exc:
        log.warning("control.no_credentials", error=str(exc))
        return None
    return Peer(pid=pid, uid=uid)


class ControlConnection:
    """One conversation with the daemon (blocking; for the CLI): send, then read each reply.

    OSError when the daemon cannot be reached or a reply is not in time; ValueError when a
    reply is not a JSON object (or the daemon closed without one)."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(str(path))
        except OSError:
            self._sock.close()
            raise
        self._timeout = timeout
        self._buffer = b""

    def __enter__(self) -> ControlConnection:
        return self

    def __exit__(self, *_: object) -> None:
        self._sock.close()

    def send(self, message: dict[str, Any]) -> None:
        self._sock.sendall(json.dumps(message).encode() + b"\n")

    def receive(self, timeout: float | None = None) -> dict[str, Any]:
        """The next reply line, waited for up to `timeout` (the connection's by default)."""
        self._sock.settimeout(timeout if timeout is not None else self._timeout)
        while b"\n" not in self._buffer:
            chunk = self._sock.recv(65536)
            if not chunk:
                break
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise ValueError("the daemon's reply is not a JSON object")  # noqa: TRY004 - bad data, not a bad call
        return reply


def request(path: Path, command: str = "status", timeout: float = 5.0) -> dict[str, Any]:
    """Ask the daemon (blocking; for the CLI)."""
    with ControlConnection(path, timeout) as connection:
        connection.send({"command": command})
        return connection.receive()


COLUMNS = ("NAME", "SOCKET", "CONNECTION", "RUNSTATE", "LAST PANIC", "LAST DUMP", "RESTARTS",
           "LAST INCIDENT")


def _dump_cell(dump: object) -> str:
    if not isinstance(dump, dict) or not dump:
        return "-"
    if dump.get("result") != "completed":
        return cell(f"{dump.get('result')}: {dump.get('error') or ''}".strip())
    size = dump.get("bytes")
    size_text = human_size(size) if isinstance(size, int) else "size unknown"
    return cell(f"{dump.get('path')} ({size_text}, completed)")


def _incident_cell(incident: object) -> str:
    """The guest's last incident in the store: `ID outcome` (`panicd incidents show ID`)."""
    if not isinstance(incident, dict) or not incident.get("id"):
        return "-"
    return cell(f"{incident['id']} {incident.get('outcome') or '?'}")


def _utc(when: object) -> object:
    """An ISO time as the other commands show times (`2026-11-26T17:40:52Z`); else as it is."""
    if not isinstance(when, str):
        return when
    try:
        return dt.datetime.fromisoformat(when).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return when


def format_table(status: dict[str, Any]) -> str:
    """The status reply as a table, one line per guest whatever the names hold."""
    guests = status.get("guests")
    rows = [
        (
            cell(g.get("name")), cell(g.get("socket")), cell(g.get("connection")),
            cell(g.get("runstate")), cell(_utc(g.get("last_panic"))), _dump_cell(g.get("last_dump")),
            cell(g.get("restarts", 0)), _incident_cell(g.get("last_incident")),
        )
        for g in (guests if isinstance(guests, list) else [])
        if isinstance(g, dict)
    ]
    lines = render(COLUMNS, rows)
    daemon = status.get("daemon")
    summary = daemon.get("summary") if isinstance(daemon, dict) else None
    if summary:
        lines.append(f"\n{cell(summary)}")
    return "\n".join(lines)


def print_guest_outcome(outcome: dict[str, Any], incident: str) -> int:
    """`panicd guest`'s table of the incident's steps; 0 when every one was ok, else 1."""
    if not outcome.get("done"):
        print(printable(f"incident {incident}: {outcome.get('error')}; see panicd incidents "
                        f"show {incident}"), file=sys.stderr)
        return 1
    steps = [s for s in outcome.get("steps") or [] if isinstance(s, dict)]
    rows = [(cell(s.get("name")), "ok" if s.get("ok") else "failed",
             f"{s.get('seconds', 0):.2f} s", cell(step_summary(s))) for s in steps]
    print("\n".join(render(("STEP", "RESULT", "TOOK", "DETAIL"), rows)))
    result = printable(str(outcome.get("outcome")))
    print(f"incident {incident}: {result} (panicd incidents show {incident})")
    return 0 if outcome.get("outcome") == "ok" else 1


def step_summary(step: dict[str, Any]) -> str:
    """What a step did, in a few words: its error, its dump, the guest's runstate after it."""
    if not step.get("ok"):
        return f"{step.get('error')}"
    parts = [f"skipped: {step['skipped']}"] if step.get("skipped") else []
    dump = step.get("dump")
    if isinstance(dump, dict) and dump.get("path"):
        size = dump.get("bytes")
        parts.append(f"{dump['path']} ({human_size(size) if isinstance(size, int) else '?'}, "
                     f"{dump.get('format')}, {dump.get('result')})")
        if dump.get("format_fallback"):
            parts.append(f"not the format asked for: {dump['format_fallback']}")
    power = step.get("power")
    if isinstance(power, dict) and power.get("status"):
        parts.append(f"guest {power['status']}")
    return "; ".join(parts) or "-"
