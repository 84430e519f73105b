"""The built-in mock guest: a pretend QEMU 7.2 with a pvpanic device, spoken to over QMP.

Users try a panicd config on it (``panicd mock-guest --qmp PATH``); tests use it for speed
and for what a real QEMU cannot be made to do (a slow or failing dump, garbage on the wire).
It is trusted only where tests/test_contract.py shows it behaves like the real QEMU.

The pipeline inside, one module each:

    pvpanic.py      the I/O port the guest kernel writes its panic to
    machine.py      runstates and actions: what QEMU does on panic, stop, cont, reset, quit, NMI
    dump.py         dump-guest-memory's one dump slot; core_files.py: the ELF and kdump files
    qmp_server.py   QMP on a unix stream (json_stream.py frames input, qapi.py checks it)
    commands.py     the commands, with QEMU's replies and refusals
    qtest.py        a qtest-compatible control socket (``outb 0x505 0x1``)
    hyperv.py       a Windows guest's bugcheck, as Hyper-V crash information (hv-crash)
    guest.py        `MockGuest`, which ties them together
    cli.py          ``panicd mock-guest``
"""

from panicd.mock.guest import MockGuest
from panicd.mock.machine import RunState

__all__ = ["MockGuest", "RunState"]
