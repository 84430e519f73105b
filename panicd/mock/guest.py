"""`MockGuest`: a pretend QEMU with a pvpanic device, in-process and cheap.

It ties the parts together the way a QEMU process does: one `Machine` (runstate, actions), one
pvpanic port feeding it, one dump slot, and any number of QMP monitors that all see the same
events::

    guest = MockGuest(name="web-01", panic_action="pause")
    await guest.start("/run/web-01.qmp")        # like -qmp unix:/run/web-01.qmp,server=on,wait=off
    await guest.connect_out("/run/panicd.sock") # like -chardev socket,reconnect=1 -mon mode=control
    guest.port.write(1)                         # the guest kernel panics
    assert guest.machine.runstate == "guest-panicked"
    await guest.stop()

When QEMU would exit (quit; a panic with action shutdown or exit-failure) every connection is
closed after the last event, the socket files are removed, and `wait_exited()` returns the exit
status QEMU would have (1 for exit-failure). `kill()` is the SIGKILL variant: connections drop
without a word and the socket files stay behind, stale, as they do after a real crash.

The guest OS it pretends to run does nothing on an NMI (like a qtest QEMU) unless
`nmi_panics=True`: then, like Linux booted with ``unknown_nmi_panic=1``, an `inject-nmi` panics it.

Hooks for hostile-peer tests: `send_raw()` puts any bytes on the wire, `emit_event()` any
event, `fail_next_dump` fails the next dump; `received_commands` records every request.

Everything runs on the caller's event loop: a guest costs a listening task per monitor and a
task per connection, no threads, no polling, so a thousand of them fit in one test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from panicd.mock.commands import DUMP_FORMATS, Identity, build_commands
from panicd.mock.console import SerialConsole
from panicd.mock.core_files import ram_blocks
from panicd.mock.dump import Dumper
from panicd.mock.hyperv import crash_info
from panicd.mock.machine import Machine
from panicd.mock.pvpanic import PvPanicPort
from panicd.mock.qmp_server import QmpMonitor
from panicd.mock.qtest import QtestServer

EventListener = Callable[[str, Mapping[str, Any] | None], None]


class MockGuest:
    """A mock QEMU 7.2 guest with a pvpanic device, served over QMP."""

    def __init__(
        self,
        name: str | None = None,
        *,
        uuid: str | None = None,
        memory_bytes: int = 16 * 2**20,
        qemu_version: tuple[int, int, int] = (7, 2, 0),
        panic_action: str = "shutdown",
        dump_bytes_per_second: float | None = None,
        package: str = "panicd-mock",
        reconnect_seconds: float = 1.0,
        dump_formats: tuple[str, ...] = DUMP_FORMATS,
        vmcoreinfo: str | None = None,
        obeys_powerdown: bool = False,
        console_log: Path | None = None,
        nmi_panics: bool = False,
    ) -> None:
        self.name = name
        self.uuid = uuid
        self.memory_bytes = memory_bytes
        self.qemu_version = qemu_version
        self.reconnect_seconds = reconnect_seconds
        self.received_commands: list[tuple[str, str, dict[str, Any]]] = []
        self.event_listeners: list[EventListener] = []
        #: nmi_panics: like a Linux guest booted with unknown_nmi_panic=1, an NMI (`inject-nmi`)
        #: panics it: at once when it runs, else when it next runs (machine.py).
        self.machine = Machine(self._broadcast, self._on_exit, panic_action=panic_action,
                               obeys_powerdown=obeys_powerdown, nmi_panics=nmi_panics)
        #: Like -serial file:PATH: a panic prints a kernel crash report there (mock/console.py).
        #: An NMI's panic prints none: Linux prints from NMI context only once it runs on, and
        #: under panic=pause the console showed nothing of it (seen, Debian's 6.1).
        console = SerialConsole(console_log, name) if console_log is not None else None
        self.port = PvPanicPort(self.machine, qemu_version, console)
        if console is not None:
            self.event_listeners.append(
                lambda event, _: console.booted() if event == "RESET" else None)
        self.dumper = Dumper(self.machine, self._broadcast, ram_blocks(memory_bytes),
                             bytes_per_second=dump_bytes_per_second, vmcoreinfo=vmcoreinfo)
        identity = Identity(name, uuid, memory_bytes, qemu_version, package)
        self._greeting = {"QMP": {"version": identity.version(), "capabilities": ["oob"]}}
        self._commands = build_commands(identity, self.machine, self.dumper, dump_formats)
        self.monitors: list[QmpMonitor] = []
        self._qtest: QtestServer | None = None
        self._exited = asyncio.Event()
        self._exit_status: int | None = None
        self._teardown: asyncio.Task[None] | None = None
        self._stopped = False

    # -- starting -------------------------------------------------------------------------------

    async def start(self, qmp_path: str | os.PathLike[str]) -> None:
        """Serve QMP on a unix socket, like ``-qmp unix:PATH,server=on,wait=off``."""
        await self.add_monitor(qmp_path)

    async def add_monitor(self, path: str | os.PathLike[str], label: str | None = None) -> None:
        """One more independent QMP monitor socket; events go to every monitor."""
        monitor = self._monitor(label or os.fspath(path))
        await monitor.listen(path)

    async def connect_out(self, path: str | os.PathLike[str], label: str | None = None) -> None:
        """Dial out to a listening socket and serve QMP there, reconnecting after hang-ups
        every `reconnect_seconds`, like ``-chardev socket,path=PATH,reconnect=N``."""
        self._monitor(label or os.fspath(path)).dial(path, self.reconnect_seconds)

    async def start_qtest(self, path: str | os.PathLike[str]) -> None:
        """A qtest-style control socket: ``outb 0x505 0x1`` panics the guest."""
        self._qtest = QtestServer(self.port)
        await self._qtest.start(path)

    def _monitor(self, label: str) -> QmpMonitor:
        if self._stopped:
            raise RuntimeError("the mock guest has stopped")
        monitor = QmpMonitor(label, self._greeting, self._commands, self._record)
        self.monitors.append(monitor)
        return monitor

    # -- properties tests look at ---------------------------------------------------------------

    @property
    def fail_next_dump(self) -> str | None:
        """Set to an error text: the next dump fails halfway with exactly that error."""
        return self.dumper.fail_next

    @fail_next_dump.setter
    def fail_next_dump(self, error: str | None) -> None:
        self.dumper.fail_next = error

    @property
    def exit_status(self) -> int | None:
        return self._exit_status

    async def wait_exited(self) -> int:
        """Wait until the guest has exited (or was stopped); return QEMU's exit status."""
        await self._exited.wait()
        return self._exit_status if self._exit_status is not None else 0

    # -- what the guest OS does, beyond the pvpanic port -----------------------------------------

    def bugcheck(self, code: int, parameters: tuple[int, int, int, int] = (0, 0, 0, 0)) -> None:
        """A Windows guest with `-cpu ...,hv-crash` bugchecks: GUEST_PANICKED with its Hyper-V
        crash information (mock/hyperv.py), then QEMU's panic action, as for any panic."""
        self.machine.guest_panicked(crash_info(code, parameters))

    def reboots_itself(self) -> None:
        """The running guest resets itself (a kernel's panic=N, kdump's reboot, Windows once
        its MEMORY.DMP is written): RESET {guest: true, reason: guest-reset}. A stopped guest
        runs no code, so it cannot."""
        if self.machine.running:
            self.machine.system_reset("guest-reset")

    # -- hooks for tests ------------------------------------------------------------------------

    async def emit_event(self, name: str, data: Mapping[str, Any] | None = None) -> None:
        """Send any event, well-formed or not, to every negotiated client."""
        self._broadcast(name, data)

    async def send_raw(self, data: bytes, monitor: str | None = None) -> int:
        """Write raw bytes to the connected clients (of monitor `monitor`, by label, if given);
        return how many clients got them."""
        sent = 0
        for m in self.monitors:
            if m.session is not None and (monitor is None or m.label == monitor):
                m.session.write(data)
                sent += 1
        return sent

    # -- stopping -------------------------------------------------------------------------------

    async def terminate(self) -> int:
        """What SIGTERM does to QEMU: SHUTDOWN {reason: host-signal} to the clients, then exit."""
        self.machine.host_signal()
        return await self.wait_exited()

    async def stop(self) -> None:
        """Close everything quietly (no events), remove the sockets. Idempotent."""
        if self._exit_status is None:
            self._exit_status = 0
        if self.machine.exit_status is None:
            self.machine.exit_status = self._exit_status  # later port writes do nothing
        await self._close(remove_sockets=True)

    async def kill(self) -> None:
        """Die like QEMU on SIGKILL: connections drop, socket files are left behind."""
        if self._exit_status is None:
            self._exit_status = -9
        if self.machine.exit_status is None:
            self.machine.exit_status = self._exit_status
        await self._close(remove_sockets=False)

    async def _close(self, *, remove_sockets: bool) -> None:
        if self._stopped:
            if self._teardown is not None and self._teardown is not asyncio.current_task():
                with contextlib.suppress(asyncio.CancelledError):
                    await self._teardown
            return
        self._stopped = True
        await self.dumper.cancel()
        for monitor in self.monitors:
            await monitor.close(remove_socket=remove_sockets)
        if self._qtest is not None:
            await self._qtest.close()
        self._exited.set()

    def _on_exit(self, status: int) -> None:
        # Called from inside a command or a port write: the reply (or the qtest "OK") must
        # still go out before the connections close, so the teardown runs as its own task.
        self._exit_status = status
        if self._teardown is None:
            self._teardown = asyncio.get_running_loop().create_task(
                self._close(remove_sockets=True), name=f"mock-exit:{self.name}")

    def _broadcast(self, name: str, data: Mapping[str, Any] | None) -> None:
        for listener in self.event_listeners:
            listener(name, data)
        for monitor in self.monitors:
            monitor.send_event(name, data)

    def _record(self, label: str, command: str, arguments: dict[str, Any]) -> None:
        self.received_commands.append((label, command, arguments))
