"""The server side of QMP, on any connected unix stream: what a QEMU monitor does on the wire.

A `QmpMonitor` is what one ``-qmp unix:PATH,server=on,wait=off`` (or one
``-chardev socket,path=PATH,reconnect=N -mon mode=control``) is in QEMU. QEMU 7.2 behaviour
it copies, each checked on the real one:

- One client at a time. While a client is connected QEMU accepts no other: a second client's
  connect() succeeds (the kernel queues it) but it gets no greeting until the first leaves.
  The monitor does the same by accepting the next connection only when a session ends.
- Each session starts with the greeting, then only ``qmp_capabilities`` is accepted
  ("Expecting capabilities negotiation with 'qmp_capabilities'"); events reach a session only
  once it has negotiated.
- Input is a JSON stream (see `json_stream`), replies are CRLF-terminated and echo "id".
- File descriptors arrive with SCM_RIGHTS on any byte (qemu.qmp's ``send_fd_scm`` sends one
  b" "). Like QEMU's socket chardev, the fds of one recvmsg() replace any not yet claimed, and
  ``getfd`` claims the first and closes the others. Named fds belong to the monitor, not to
  the session, and outlive it.

asyncio streams cannot receive fds, so a session reads its socket itself: recvmsg() when the
event loop reports it readable. Writes are non-blocking with a buffer flushed when writable,
so events can be sent synchronously from anywhere. A session costs one task; a listening
monitor one more. Nothing polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panicd.mock.json_stream import JsonError, JsonStreamer
from panicd.mock.qapi import (
    Param,
    QmpError,
    check_arguments,
    encode,
    error_message,
    event_message,
    request_id_of,
    return_message,
)

_RECV_BYTES = 4096
_MAX_FDS = 16  # more in one message are closed by the kernel (MSG_CTRUNC); QEMU takes 16 too

Handler = Callable[["QmpSession", dict[str, Any]], Awaitable[object]]
Recorder = Callable[[str, str, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class Command:
    """A QMP command: its QAPI arguments and what it does."""

    name: str
    params: tuple[Param, ...]
    handler: Handler


_CAPABILITIES = Param("enable", "enum-list", optional=True, values=("oob",))


class QmpMonitor:
    """One QMP monitor: a listening socket or a dialling one, at most one session at a time."""

    def __init__(self, label: str, greeting: Mapping[str, Any], commands: Mapping[str, Command],
                 record: Recorder) -> None:
        self.label = label
        self.fds: dict[str, int] = {}
        self.session: QmpSession | None = None
        self.greeting = dict(greeting)
        self.commands = commands
        self.record = record
        self._listener: socket.socket | None = None
        self._path: Path | None = None
        self._task: asyncio.Task[None] | None = None

    async def listen(self, path: str | os.PathLike[str]) -> None:
        """Serve on a unix socket at `path`, replacing a stale one as QEMU does."""
        self._path = Path(path)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind(str(self._path))
            sock.listen(16)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        self._task = asyncio.create_task(self._accept_loop(sock), name=f"mock-qmp:{self.label}")

    def dial(self, path: str | os.PathLike[str], reconnect_seconds: float) -> None:
        """Connect out to `path` and serve there; after the peer closes, reconnect."""
        self._task = asyncio.create_task(self._dial_loop(str(path), reconnect_seconds),
                                         name=f"mock-qmp-dial:{self.label}")

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(listener)
            # Serving before accepting again is what keeps a second client waiting greetless.
            await self._serve(conn)

    async def _dial_loop(self, path: str, reconnect_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, path)
            except OSError:
                sock.close()
            else:
                await self._serve(sock)
            # QEMU's reconnect=N: the next attempt N seconds after a failure or a hang-up.
            await asyncio.sleep(reconnect_seconds)

    async def _serve(self, sock: socket.socket) -> None:
        session = QmpSession(self, sock)
        self.session = session
        try:
            await session.run()
        finally:
            self.session = None
            session.close()

    def send_event(self, name: str, data: Mapping[str, Any] | None) -> None:
        session = self.session
        if session is not None and session.negotiated:
            session.write(encode(event_message(name, data)))

    async def close(self, *, remove_socket: bool = True) -> None:
        """Stop serving: the session is flushed and closed, the socket file removed."""
        if self.session is not None:
            self.session.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if remove_socket and self._path is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._path.unlink()
        for fd in self.fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


class QmpSession:
    """One client connection on a monitor, from greeting to hang-up."""

    def __init__(self, monitor: QmpMonitor, sock: socket.socket) -> None:
        self.monitor = monitor
        self.negotiated = False
        self.oob = False
        self.pending_fds: list[int] = []
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._out = bytearray()
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._streamer = JsonStreamer()

    async def run(self) -> None:
        """Greet, then read and answer requests until the peer hangs up or `close()`."""
        self.write(encode(self.monitor.greeting))
        while not self._closed:
            data = await self._receive()
            if not data:
                return
            for item in self._streamer.feed(data):
                await self._handle(item)
                if self._closed:
                    return

    def write(self, data: bytes) -> None:
        """Queue `data` for the peer without blocking; a gone peer just ends the session."""
        if self._closed:
            return
        if self._out:
            self._out += data
            return
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self.close()
            return
        if sent < len(data):
            self._out += data[sent:]
            self._loop.add_writer(self._fd, self._flush)

    def take_fd(self) -> int:
        """getfd's half of SCM_RIGHTS: the first fd received, the others closed."""
        if not self.pending_fds:
            raise QmpError("No file descriptor supplied via SCM_RIGHTS")
        fd, *rest = self.pending_fds
        self.pending_fds = []
        _close_all(rest)
        return fd

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._out:  # one last try, so a QEMU-style "reply, then exit" reaches the peer
            with contextlib.suppress(OSError):
                self._sock.send(self._out)
        self._loop.remove_writer(self._fd)
        self._loop.remove_reader(self._fd)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        _close_all(self.pending_fds)
        self.pending_fds = []
        self._sock.close()

    # -- reading --------------------------------------------------------------------------------

    async def _receive(self) -> bytes:
        while not self._closed:
            try:
                data, fds, _flags, _addr = socket.recv_fds(
                    self._sock, _RECV_BYTES, _MAX_FDS, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                await self._readable()
                continue
            except OSError:  # ECONNRESET and friends: a hang-up
                return b""
            if fds:
                _close_all(self.pending_fds)
                self.pending_fds = list(fds)
            return data
        return b""

    async def _readable(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        self._loop.add_reader(self._fd, _resolve, waiter)
        try:
            await waiter
        finally:
            if not self._closed:
                self._loop.remove_reader(self._fd)

    def _flush(self) -> None:
        try:
            sent = self._sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._out.clear()
            self.close()
            return
        del self._out[:sent]
        if not self._out:
            self._loop.remove_writer(self._fd)

    # -- dispatching (monitor/qmp.c, qapi/qmp-dispatch.c) --------------------------------------

    async def _handle(self, item: object) -> None:
        if isinstance(item, JsonError):
            self.write(encode(error_message(QmpError(item.desc))))
            return
        if not isinstance(item, dict):
            self.write(encode(error_message(QmpError("QMP input must be a JSON object"))))
            return
        request_id = request_id_of(item)
        try:
            result = await self._dispatch(item)
        except QmpError as exc:
            self.write(encode(error_message(exc, request_id)))
        else:
            self.write(encode(return_message(result, request_id)))

    async def _dispatch(self, request: dict[str, Any]) -> object:
        name, arguments, oob = _check_request(request, allow_oob=self.oob)
        self.monitor.record(self.monitor.label, name, arguments)
        if name == "qmp_capabilities":
            checked = check_arguments((_CAPABILITIES,), arguments)
            if self.negotiated:
                raise QmpError("Capabilities negotiation is already complete, command ignored",
                               "CommandNotFound")
            self.negotiated = True
            self.oob = "oob" in checked.get("enable", [])
            return {}
        if not self.negotiated:
            raise QmpError("Expecting capabilities negotiation with 'qmp_capabilities'",
                           "CommandNotFound")
        command = self.monitor.commands.get(name)
        if command is None:
            raise QmpError(f"The command {name} has not been found", "CommandNotFound")
        if oob:  # none of the mock's commands is allow-oob, like all of these in QEMU
            raise QmpError(f"The command {name} does not support OOB")
        return await command.handler(self, check_arguments(command.params, arguments))


def _check_request(request: dict[str, Any], *, allow_oob: bool) -> tuple[str, dict[str, Any], bool]:
    """qmp_dispatch_check_obj(): the request envelope, member by member."""
    seen: str | None = None
    for key, value in request.items():
        if key == "execute" or (key == "exec-oob" and allow_oob):
            if not isinstance(value, str):
                raise QmpError(f"QMP input member '{key}' must be a string")
            if seen is not None:
                raise QmpError(f"QMP input member '{key}' clashes with '{seen}'")
            seen = key
        elif key == "arguments":
            if not isinstance(value, dict):
                raise QmpError("QMP input member 'arguments' must be an object")
        elif key != "id":
            raise QmpError(f"QMP input member '{key}' is unexpected")
    if seen is None:
        raise QmpError("QMP input lacks member 'execute'")
    return request[seen], request.get("arguments", {}), seen == "exec-oob"


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
