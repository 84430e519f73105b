"""The pvpanic device's I/O port, as QEMU's hw/misc/pvpanic.c implements it.

A guest kernel's pvpanic driver reads the port to learn which events the device knows, and
writes one event bit when it panics::

    bit 0 (1)  PANICKED       the host should act (QEMU runs its panic action)
    bit 1 (2)  CRASH_LOADED   the guest handles its own crash (kdump); record it only
    bit 2 (4)  SHUTDOWN       QEMU >= 9.1 only: a plain guest power-off (GUEST_PVSHUTDOWN)

Reading returns 0x3 on QEMU 7.2 (0x7 from 9.1). On a write QEMU handles the first bit it knows,
in that order, and ignores the rest: 0x3 is a panic, never a crash-loaded; 0x4 does nothing on
7.2; unknown bits are ignored. All of this was checked with qtest on QEMU 7.2.
"""

from __future__ import annotations

from panicd.mock.console import SerialConsole
from panicd.mock.machine import Machine

ISA_PORT = 0x505  # the ISA device's default `ioport` property

PANICKED = 1 << 0
CRASH_LOADED = 1 << 1
SHUTDOWN = 1 << 2


class PvPanicPort:
    """The one-byte port; `write` feeds the machine exactly as QEMU's handle_event() does."""

    def __init__(self, machine: Machine, qemu_version: tuple[int, int, int] = (7, 2, 0),
                 console: SerialConsole | None = None) -> None:
        self._machine = machine
        #: Where the guest's kernel prints its crash report before it writes the port.
        self.console = console
        self.supported = PANICKED | CRASH_LOADED
        if qemu_version >= (9, 1, 0):
            self.supported |= SHUTDOWN

    def read(self) -> int:
        """What `inb 0x505` returns: the event bits this device knows."""
        return self.supported

    def write(self, value: int) -> None:
        """What `outb 0x505 VALUE` does. Only the low byte reaches a one-byte port."""
        event = value & 0xFF
        if event & PANICKED:
            if self.console is not None:
                self.console.kernel_panicked()
            self._machine.guest_panicked()
        elif event & CRASH_LOADED:
            self._machine.guest_crashloaded()
        elif event & self.supported & SHUTDOWN:
            self._machine.guest_pvshutdown()
