"""One QMP connection to one QEMU, as panicd needs it.

`QmpSession` wraps a fresh `qemu.qmp.QMPClient` per connection and fixes the traps listed in
QEMU-FACTS.md:

- qemu.qmp keeps every event in an unbounded queue and an unbounded history on each listener,
  including the default one that cannot be removed. A session lives for months, so events
  bypass listeners here: each one is handed to a callback as it is read, and nothing is kept.
- A listener never reports EOF; `closed()` watches the client's runstate instead.
- A second client on a busy monitor gets no greeting and hangs: connecting has a timeout.
- qemu.qmp reads every connection with a 10 MiB line buffer (`readbuflen`), so any peer could
  make panicd hold 10 MiB and more before a byte of it is understood. A peer is read with
  `GREETING_READ_LIMIT` until it has greeted and negotiated as a QMP server, then with
  `SESSION_READ_LIMIT`; a longer line ends the connection.
- Every command has a timeout, and every failure comes back as `QmpCommandError`, carrying
  the command sent and what QEMU replied (or why nothing came back).

Reconnecting is the owner's job (`monitor.GuestMonitor`), as in qemu.qmp itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from qemu.qmp import ConnectError, ExecuteError, QMPClient, QMPError, Runstate
from qemu.qmp.message import Message

from panicd.errors import GuestUnreachable, PanicdError

_log = structlog.get_logger("panicd.qmp")

EventCallback = Callable[[dict[str, Any]], None]

#: Longest line read from a peer before it has greeted: QEMU's greeting is under 1 KiB (its
#: version, package string and capabilities), and so is the reply to qmp_capabilities. (What
#: a peer costs is still at least one socket read, up to 256 KiB in asyncio.)
GREETING_READ_LIMIT = 64 * 1024
#: Longest line read once the peer has greeted as QMP. What QEMU sends panicd is small (replies
#: to query-status/-name/-uuid/-dump/-memory-size-summary/-dump-guest-memory-capability, and
#: events, whose strings are ids and names from the command line); the longest it could
#: legitimately be is a -name or device id at Linux's 128 KiB argument limit, each byte
#: escaped as \\u00XX: 768 KiB. A longer line ends the connection.
SESSION_READ_LIMIT = 1024 * 1024


class QmpCommandError(PanicdError):
    """A QMP command failed: QEMU said no, did not answer in time, or the connection went away."""

    #: QEMU answered with an error (the reply is in `reply`).
    REFUSED = "refused"
    #: No answer within the command timeout.
    TIMEOUT = "timeout"
    #: The connection is gone (or was never there).
    DISCONNECTED = "disconnected"

    def __init__(
        self, command: dict[str, Any], reason: str, *, kind: str, reply: object = None
    ) -> None:
        super().__init__(f"{command['execute']}: {reason}")
        self.command = command
        self.reason = reason
        self.kind = kind
        self.reply = reply

    @property
    def error_class(self) -> str | None:
        if isinstance(self.reply, dict):
            error = self.reply.get("error")
            if isinstance(error, dict):
                cls = error.get("class")
                return cls if isinstance(cls, str) else None
        return None


class _EventTapClient(QMPClient):
    """A QMPClient that hands each event to a callback and stores none of them."""

    def __init__(self, name: str, on_event: EventCallback) -> None:
        super().__init__(name, readbuflen=GREETING_READ_LIMIT)
        self._on_event = on_event

    def raise_read_limit(self, limit: int) -> None:
        """Read lines of up to `limit` bytes from now on (the connection is open)."""
        # qemu.qmp hands `readbuflen` to the StreamReader once, when it opens the stream, and
        # has no way to change it. asyncio reads StreamReader._limit afresh in every readline
        # (and for its read-pause threshold, 2 x limit), so the next line gets the new limit.
        if self._reader is not None:
            self._reader._limit = limit  # type: ignore[attr-defined]

    async def _event_dispatch(self, msg: Message) -> None:
        # Replaces qemu.qmp's listener fan-out, whose queues and histories grow without bound.
        try:
            self._on_event(dict(msg))
        except Exception:
            # A bug in handling one event must not end the connection (and so miss the next).
            _log.exception("qmp.event_handler_failed", qmp_event=str(msg.get("event"))[:128])


def _peer_pid(client: QMPClient) -> int | None:
    """The pid of the QEMU on the other end of a unix socket (SO_PEERCRED)."""
    writer = getattr(client, "_writer", None)
    if writer is None:
        return None
    sock = writer.transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, _uid, _gid = struct.unpack("3i", creds)
    return pid or None


class QmpSession:
    """A connected QMP monitor. Create with `QmpSession.open`; one session per connection."""

    def __init__(self, client: QMPClient, *, command_timeout: float) -> None:
        self._client = client
        self._command_timeout = command_timeout
        self.peer_pid = _peer_pid(client)

    @classmethod
    async def open(
        cls,
        address: Path | socket.socket,
        *,
        name: str,
        on_event: EventCallback,
        connect_timeout: float,
        command_timeout: float,
    ) -> QmpSession:
        """Connect, read the greeting and negotiate capabilities, within `connect_timeout`."""
        client = _EventTapClient(name, on_event)
        target: str | socket.socket = str(address) if isinstance(address, Path) else address
        try:
            async with asyncio.timeout(connect_timeout):
                await client.connect(target)
        except TimeoutError as exc:
            await _quietly_disconnect(client)
            raise GuestUnreachable(
                name,
                f"no QMP greeting within {connect_timeout:g} s "
                "(is another client holding this monitor? QEMU serves one at a time)",
            ) from exc
        except ConnectError as exc:
            if type(exc.exc) is ValueError:
                # StreamReader's line limit was exceeded (asyncio raises a plain ValueError;
                # undecodable bytes raise UnicodeDecodeError, a subclass, reported below).
                raise GuestUnreachable(
                    name, f"sent a line longer than the {GREETING_READ_LIMIT}-byte limit before "
                    "greeting as QMP (QEMU's greeting is under 1 KiB)") from exc
            raise GuestUnreachable(name, f"cannot connect to {target}: {exc.exc}") from exc
        except (QMPError, OSError) as exc:
            await _quietly_disconnect(client)
            raise GuestUnreachable(name, f"cannot connect to {target}: {exc}") from exc
        # It greeted and negotiated as QMP: from here on, what a QEMU may send.
        client.raise_read_limit(SESSION_READ_LIMIT)
        return cls(client, command_timeout=command_timeout)

    @property
    def greeting_version(self) -> str | None:
        greeting = self._client.greeting
        if greeting is None:
            return None
        try:
            qemu: Any = greeting.QMP.version["qemu"]
            return f"{int(qemu['major'])}.{int(qemu['minor'])}.{int(qemu['micro'])}"
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def command_timeout(self) -> float:
        """Seconds `execute` waits for a reply unless told otherwise (`command_timeout`)."""
        return self._command_timeout

    @property
    def connected(self) -> bool:
        return self._client.runstate == Runstate.RUNNING

    async def execute(
        self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Run a command and return its "return" value; raise QmpCommandError on any failure."""
        sent: dict[str, Any] = {"execute": command}
        if arguments:
            sent["arguments"] = arguments
        try:
            async with asyncio.timeout(timeout or self._command_timeout):
                return await self._client.execute(command, arguments)
        except ExecuteError as exc:
            raise QmpCommandError(
                sent, str(exc), kind=QmpCommandError.REFUSED, reply=dict(exc.received)
            ) from exc
        except TimeoutError as exc:
            raise QmpCommandError(sent, "no reply in time", kind=QmpCommandError.TIMEOUT) from exc
        except (QMPError, OSError) as exc:
            raise QmpCommandError(
                sent, f"connection lost ({type(exc).__name__}: {exc})",
                kind=QmpCommandError.DISCONNECTED,
            ) from exc

    def send_fd(self, fd: int) -> None:
        """Pass `fd` to QEMU with SCM_RIGHTS; name it next with the `getfd` command."""
        try:
            self._client.send_fd_scm(fd)
        except (QMPError, OSError) as exc:
            raise QmpCommandError(
                {"execute": "send_fd_scm"}, f"cannot pass fd: {exc}",
                kind=QmpCommandError.DISCONNECTED,
            ) from exc

    async def closed(self) -> None:
        """Return when the connection has ended, for whatever reason."""
        while self._client.runstate == Runstate.RUNNING:
            await self._client.runstate_changed()

    async def close(self) -> None:
        await _quietly_disconnect(self._client)


async def _quietly_disconnect(client: QMPClient) -> None:
    # disconnect() re-raises whatever ended the reader (EOF, a protocol error): the caller has
    # already learned that through closed(), so it is only logged by qemu.qmp here. A wedged
    # peer must not hold up panicd's shutdown: 5 s, then the client is abandoned.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):
            await client.disconnect()
