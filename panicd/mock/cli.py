"""``panicd mock-guest``: run the built-in mock guest, to try a panicd config without a VM.

The guest serves QMP like ``qemu-system-x86_64 -qmp unix:PATH,server=on,wait=off`` (QEMU 7.2,
with a pvpanic device) and logs one line per QMP event to stderr. Make it panic:

  kill -USR1 PID                          the guest kernel panics (pvpanic PANICKED)
  kill -USR2 PID                          it loads its crash kernel (pvpanic CRASH_LOADED)
  --bugcheck 0x7E                         its panics are Windows bugchecks with that code
                                          (Hyper-V crash information, as -cpu ...,hv-crash)
  --panic-after 5                         it panics 5 s after start
  --nmi-panics                            an NMI (QMP inject-nmi, panicd's `nmi` step) panics
                                          it, as Linux booted with unknown_nmi_panic=1; a
                                          stopped guest panics once it runs again
  --qtest PATH, then:
    echo 'outb 0x505 0x1' | socat - UNIX-CONNECT:PATH     panic (0x2: crash-loaded)
    echo 'inb 0x505' | socat - UNIX-CONNECT:PATH          OK 0x0003: the supported bits

As with QEMU, the default panic action is shutdown: the guest exits on panic unless panicd
(or --panic-action pause) changes it. Exits 0 on SIGTERM/SIGINT or when the guest exits
(1 when it exits with --panic-action exit-failure, as QEMU does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from panicd.mock.guest import MockGuest
from panicd.mock.machine import ACTIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The mock-guest options, on a parser (or subparser) the caller made."""
    parser.description = __doc__
    parser.add_argument("--qmp", action="append", required=True, type=Path, metavar="PATH",
                        help="serve QMP on this unix socket (repeat for more monitors)")
    parser.add_argument("--name", help="the guest name (query-name), like -name")
    parser.add_argument("--uuid", help="the guest UUID (query-uuid), like -uuid")
    parser.add_argument("--memory", type=int, default=16, metavar="MIB",
                        help="guest RAM in MiB: the size of an ELF dump (default 16)")
    parser.add_argument("--panic-action", choices=ACTIONS["panic"], default="shutdown",
                        help="like -action panic=...; default shutdown, like QEMU")
    parser.add_argument("--panic-after", type=float, metavar="SECONDS",
                        help="panic this many seconds after start")
    parser.add_argument("--crash-loaded-after", type=float, metavar="SECONDS",
                        help="report crash-loaded this many seconds after start")
    parser.add_argument("--qtest", type=Path, metavar="PATH",
                        help="a qtest-style control socket (outb 0x505 0x1 panics)")
    parser.add_argument("--connect", action="append", default=[], type=Path, metavar="PATH",
                        help="also dial out to this listening socket and serve QMP there, "
                             "like -chardev socket,path=PATH,reconnect=1 -mon mode=control")
    parser.add_argument("--dump-mib-per-second", type=float, metavar="MIB",
                        help="write dumps this slowly (default: as fast as possible)")
    parser.add_argument("--bugcheck", type=lambda text: int(text, 0), metavar="CODE",
                        help="panic as a Windows guest with hv-crash does: GUEST_PANICKED with "
                             "Hyper-V crash information, bugcheck CODE (e.g. 0x7E)")
    parser.add_argument("--nmi-panics", action="store_true",
                        help="act as a Linux guest booted with unknown_nmi_panic=1: an NMI "
                             "(inject-nmi) panics it, or, injected while it is stopped, "
                             "when it next runs")
    parser.add_argument("--console-log", type=Path, metavar="PATH",
                        help="like -serial file:PATH: a panic first prints a Linux crash report "
                             "there (for trying console_log and crash titles)")


def run(args: argparse.Namespace) -> int:
    """Run the mock guest until it exits or a signal stops it; return the exit status."""
    return asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    rate = args.dump_mib_per_second
    guest = MockGuest(
        args.name, uuid=args.uuid, memory_bytes=args.memory * 2**20,
        panic_action=args.panic_action,
        dump_bytes_per_second=rate * 2**20 if rate else None,
        console_log=args.console_log, nmi_panics=args.nmi_panics,
    )
    label = args.name or "mock-guest"
    guest.event_listeners.append(lambda name, data: _log(label, name, data))
    for path in args.qmp:
        await guest.add_monitor(path)
    for path in args.connect:
        await guest.connect_out(path)
    if args.qtest:
        await guest.start_qtest(args.qtest)

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def panic() -> None:
        if args.bugcheck is not None:
            guest.bugcheck(args.bugcheck)
        else:
            guest.port.write(1)

    loop.add_signal_handler(signal.SIGUSR1, panic)
    loop.add_signal_handler(signal.SIGUSR2, guest.port.write, 2)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    if args.panic_after is not None:
        loop.call_later(args.panic_after, panic)
    if args.crash_loaded_after is not None:
        loop.call_later(args.crash_loaded_after, guest.port.write, 2)
    sockets = " ".join(str(p) for p in args.qmp)
    print(f"{_now()} {label}: serving QMP on {sockets}; panic action {args.panic_action}",
          file=sys.stderr, flush=True)

    exited = asyncio.create_task(guest.wait_exited(), name="mock-guest-exited")
    stop = asyncio.create_task(stopping.wait(), name="mock-guest-signal")
    await asyncio.wait({exited, stop}, return_when=asyncio.FIRST_COMPLETED)
    if stop.done() and not exited.done():
        await guest.terminate()  # SHUTDOWN {reason: host-signal}, as QEMU sends on SIGTERM
    stop.cancel()
    status = await exited
    await guest.stop()
    print(f"{_now()} {label}: exited with status {status}", file=sys.stderr, flush=True)
    return status


def _log(label: str, name: str, data: Mapping[str, Any] | None) -> None:
    text = "" if data is None else " " + json.dumps(data)
    print(f"{_now()} {label}: {name}{text}", file=sys.stderr, flush=True)


def _now() -> str:
    return time.strftime("%H:%M:%S")
