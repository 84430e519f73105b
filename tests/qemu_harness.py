"""Guests under test: a real QEMU 7.2 or the built-in mock, driven through one interface.

Both kinds are built the same way, so a test written once runs against each:

- the guest's QMP socket `qmp_path` (the one panicd, or the test, talks to);
- a second QMP monitor, `inspect`, on which the harness reads query-status and collects every
  event, so a test can assert what QEMU did while the first monitor is busy;
- a qtest socket through which `panic(bits)` writes the pvpanic port (``outb 0x505 BITS``),
  exactly as a guest kernel would.

A real QEMU runs as ``qemu-system-x86_64 -machine pc -display none -nodefaults -m 64
-device pvpanic -qtest ... -qmp ... -qmp ...`` (no guest OS: qtest is the guest). It must be
installed: the harness fails, never skips, when it is not. Unix socket paths must stay under
108 bytes, so guests live in a short directory under /tmp.

The `guest_factory` fixture is parametrized over ["mock", "qemu"] and tears down every guest
it made (no stray QEMU processes survive a test).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from panicd.mock import MockGuest

QEMU = "qemu-system-x86_64"
Event = tuple[str, Any]  # (event name, data or None)


class GuestUnderTest:
    """What a contract test can do with a guest, whatever it is."""

    kind = "?"

    def __init__(self, directory: Path, *, name: str = "guest", panic_action: str | None = None,
                 uuid: str | None = None, memory_mib: int = 64) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.name = name
        self.panic_action = panic_action
        self.uuid = uuid
        self.memory_mib = memory_mib
        self.qmp_path = directory / f"{name}.qmp"
        self.inspect_path = directory / "inspect.qmp"
        self.qtest_path = directory / "qtest.sock"
        self.inspect = QMPClient(f"inspect-{name}")
        self.events: list[Event] = []
        self._cursor = 0
        self._new_event = asyncio.Condition()
        self._collector: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._launch()
        await self.inspect.connect(str(self.inspect_path))
        self._collector = asyncio.create_task(self._collect(), name=f"events-{self.name}")

    async def _launch(self) -> None:
        raise NotImplementedError

    async def _collect(self) -> None:
        async for event in self.inspect.events:
            async with self._new_event:
                self.events.append((str(event["event"]), event.get("data")))
                self._new_event.notify_all()

    # -- the guest's side -------------------------------------------------------------------------

    async def qtest(self, line: str) -> str:
        """Send one qtest line; return the reply line ('' if the guest exited first)."""
        reader, writer = await asyncio.open_unix_connection(str(self.qtest_path))
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            reply = await asyncio.wait_for(reader.readline(), 5)
            return reply.decode().strip()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def panic(self, bits: int = 1) -> str:
        """The guest writes `bits` to the pvpanic port."""
        return await self.qtest(f"outb 0x505 {bits:#x}")

    async def read_port(self) -> int:
        reply = await self.qtest("inb 0x505")
        assert reply.startswith("OK "), reply
        return int(reply.split()[1], 16)

    # -- the host's side --------------------------------------------------------------------------

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a command on the inspect monitor."""
        return await asyncio.wait_for(self.inspect.execute(command, arguments), 10)

    async def status(self) -> str:
        reply = await self.execute("query-status")
        return str(reply["status"])

    async def events_until(self, name: str, timeout: float = 5.0) -> list[Event]:
        """The events since the last call, up to and including the first one called `name`."""
        async with asyncio.timeout(timeout), self._new_event:
            while True:
                names = [n for n, _ in self.events[self._cursor:]]
                if name in names:
                    end = self._cursor + names.index(name) + 1
                    got, self._cursor = self.events[self._cursor:end], end
                    return got
                await self._new_event.wait()

    async def events_for(self, seconds: float) -> list[Event]:
        """Every event that arrives in the next `seconds` (to show that nothing happens)."""
        await asyncio.sleep(seconds)
        got, self._cursor = self.events[self._cursor:], len(self.events)
        return got

    async def wait_exited(self, timeout: float = 5.0) -> int:
        raise NotImplementedError

    async def kill(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        """Tear everything down; safe to call twice and after the guest exited."""
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
            self._collector = None
        with contextlib.suppress(Exception):
            await self.inspect.disconnect()
        await self.kill()


class QemuGuest(GuestUnderTest):
    """A real qemu-system-x86_64 with a pvpanic device and no guest OS."""

    kind = "qemu"

    def __init__(self, directory: Path, *, extra_args: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(directory, **kwargs)
        self.extra_args = list(extra_args)
        self.proc: asyncio.subprocess.Process | None = None
        self.log_path = directory / "qemu.log"

    def argv(self) -> list[str]:
        argv = [
            QEMU, "-machine", "pc", "-display", "none", "-nodefaults", "-m", str(self.memory_mib),
            "-device", "pvpanic",
            "-qtest", f"unix:{self.qtest_path},server=on,wait=off", "-qtest-log", "/dev/null",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-qmp", f"unix:{self.inspect_path},server=on,wait=off",
            "-name", self.name,
        ]
        if self.panic_action is not None:
            argv += ["-action", f"panic={self.panic_action}"]
        if self.uuid is not None:
            argv += ["-uuid", self.uuid]
        return argv + self.extra_args

    async def _launch(self) -> None:
        if shutil.which(QEMU) is None:
            pytest.fail(f"{QEMU} is not installed: the contract test needs it "
                        "(apt-get install --no-install-recommends qemu-system-x86)")
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv(), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=log)
        async with asyncio.timeout(10):
            while not all(p.exists() for p in (self.qmp_path, self.inspect_path,
                                               self.qtest_path)):
                if self.proc.returncode is not None:
                    pytest.fail(f"QEMU exited at start: {self.log_path.read_text()}")
                await asyncio.sleep(0.01)

    async def wait_exited(self, timeout: float = 5.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


class MockGuestUnderTest(GuestUnderTest):
    """The built-in mock, in this process, wired exactly like the QEMU one."""

    kind = "mock"

    def __init__(self, directory: Path, **kwargs: Any) -> None:
        self.mock_options = {k: kwargs.pop(k) for k in list(kwargs)
                             if k not in ("name", "panic_action", "uuid", "memory_mib")}
        super().__init__(directory, **kwargs)
        self.guest = MockGuest(
            self.name, uuid=self.uuid, memory_bytes=self.memory_mib * 2**20,
            panic_action=self.panic_action or "shutdown", **self.mock_options)

    async def _launch(self) -> None:
        await self.guest.start(self.qmp_path)
        await self.guest.add_monitor(self.inspect_path)
        await self.guest.start_qtest(self.qtest_path)

    async def wait_exited(self, timeout: float = 5.0) -> int:
        return await asyncio.wait_for(self.guest.wait_exited(), timeout)

    async def kill(self) -> None:
        await self.guest.stop()


GuestFactory = Callable[..., Awaitable[GuestUnderTest]]


@pytest.fixture(params=["mock", "qemu"])
async def guest_factory(request: pytest.FixtureRequest) -> AsyncIterator[GuestFactory]:
    """``await guest_factory(name=..., panic_action=..., uuid=..., memory_mib=...)``: a started
    guest of this test's kind; all are torn down at the end of the test."""
    made: list[GuestUnderTest] = []
    root = Path(tempfile.mkdtemp(prefix="pd-", dir="/tmp"))
    kind: str = request.param

    async def make(**kwargs: Any) -> GuestUnderTest:
        directory = root / f"g{len(made)}"
        guest: GuestUnderTest = (MockGuestUnderTest(directory, **kwargs) if kind == "mock"
                                 else QemuGuest(directory, **kwargs))
        made.append(guest)
        await guest.start()
        return guest

    try:
        yield make
    finally:
        for guest in made:
            await guest.stop()
        shutil.rmtree(root, ignore_errors=True)


Qemus = Callable[..., Awaitable[QemuGuest]]


@pytest.fixture
async def qemus(short_tmp: Path) -> AsyncIterator[Qemus]:
    """``await qemus(name, **kwargs)``: a started real QEMU guest (whatever the test's kind), in
    this test's short directory; each is let run again (SIGCONT) and torn down at the end."""
    started: list[QemuGuest] = []

    async def start(name: str, **kwargs: Any) -> QemuGuest:
        guest = QemuGuest(short_tmp / f"g{len(started)}", name=name, **kwargs)
        started.append(guest)
        await guest.start()
        return guest

    yield start
    for guest in started:
        if guest.proc is not None and guest.proc.returncode is None:
            os.kill(guest.proc.pid, signal.SIGCONT)  # a stopped QEMU would hang the QMP goodbye
        await guest.stop()


async def connect(path: Path | str, name: str = "test") -> QMPClient:
    """A negotiated qemu.qmp client on `path` (give up after 5 s: a busy monitor never greets)."""
    client = QMPClient(name)
    await asyncio.wait_for(client.connect(os.fspath(path)), 5)
    return client


async def disconnect(client: QMPClient) -> None:
    """qemu.qmp's disconnect() re-raises whatever ended the connection: ignore it here."""
    with contextlib.suppress(Exception):
        await client.disconnect()
