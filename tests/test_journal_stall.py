"""A stalled or vanished journald costs panicd nothing but delay (real QEMU, real journald).

journald is made to misbehave without touching the machine's own: a journald of the test's
own runs in a journal namespace (`systemd-journald NAMESPACE`, socket under
/run/systemd/journal.NAMESPACE/), and the `panicd run` under test sees that socket at the usual
place through a private mount namespace (`unshare --mount` + a bind mount), exactly as it
would see the host's journald. Then:

- stalled: the journald is SIGSTOPped and its receive queue filled (net.unix.max_dgram_qlen
  datagrams), so a blocking send would sleep in the kernel;
- gone: the journald is SIGKILLed; its socket file stays, and sending gets ECONNREFUSED.

What an operator would check: the guest's dump on disk, the guest running again (restarted),
`panicd status` answering, and, once journald is back, the alerts in the journal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from panicd import control
from panicd.alerts import AlertKind
from tests.daemon_process import PanicdProcess, completed_dumps, daemon_section, unique, wait_for
from tests.qemu_harness import QemuGuest, Qemus

JOURNALD = "/usr/lib/systemd/systemd-journald"
Start = Callable[..., PanicdProcess]


class NamespaceJournald:
    """A journald of the test's own, in the journal namespace `name`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.directory = Path(f"/run/systemd/journal.{name}")
        self.socket = self.directory / "socket"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([JOURNALD, self.name], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self._answers():
            assert self.proc.poll() is None, f"journald for namespace {self.name} exited"
            assert time.monotonic() < deadline, "journald did not come up within 10 s"
            time.sleep(0.05)

    def _answers(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            try:
                probe.sendto(b"MESSAGE=panicd test: namespace check\n", str(self.socket))
            except OSError:
                return False
        return True

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(10)

    def fill_queue(self) -> int:
        """Send datagrams until the stopped journald's receive queue is full; how many."""
        sent = 0
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as filler:
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while sent < 10_000:
                    filler.sendto(b"MESSAGE=panicd test: filler\n", str(self.socket))
                    sent += 1
        return sent

    def entries(self, **match: str) -> list[dict[str, Any]]:
        args = ["journalctl", f"--namespace={self.name}", "--no-pager", "-o", "json", "--all"]
        out = subprocess.run(args + [f"{k}={v}" for k, v in match.items()],
                             capture_output=True, check=False, timeout=30)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    async def find(self, timeout: float = 20.0, **match: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while not (found := await asyncio.to_thread(self.entries, **match)):
            if time.monotonic() > deadline:
                return []
            await asyncio.sleep(0.2)
        return found

    def wrapper(self) -> list[str]:
        """A command line prefix: run the rest with this journald at the usual socket path."""
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                f'mount --bind "{self.directory}" /run/systemd/journal && exec "$@"', "sh"]

    def remove(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)
        machine_id = Path("/etc/machine-id").read_text().strip()
        for base in ("/var/log/journal", "/run/log/journal"):
            shutil.rmtree(f"{base}/{machine_id}.{self.name}", ignore_errors=True)


@pytest.fixture
def own_journald() -> Iterator[NamespaceJournald]:
    if not Path(JOURNALD).exists():
        pytest.fail(f"{JOURNALD} is missing: install systemd (./run test does)")
    journald = NamespaceJournald(f"panicd-{uuid.uuid4().hex[:8]}")
    journald.start()
    try:
        yield journald
    finally:
        journald.remove()


@pytest.fixture
async def qemu_guest(qemus: Qemus) -> QemuGuest:
    return await qemus(unique("web"))


def _status(path: Path) -> dict[str, Any]:
    return control.request(path, timeout=5.0)


async def wait_connected(tmp: Path, name: str, timeout: float = 20.0) -> None:
    """Through `panicd status`, as an operator would (the log may be in the journal)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            reply = await asyncio.to_thread(_status, tmp / "control.sock")
            if any(g["name"] == name and g["connection"] == "connected" for g in reply["guests"]):
                return
        assert time.monotonic() < deadline, f"{name} not connected within {timeout} s"
        await asyncio.sleep(0.1)


async def wait_running(guest: QemuGuest, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (status := await guest.status()) != "running":
        assert time.monotonic() < deadline, f"{guest.name} is {status!r}, not restarted"
        await asyncio.sleep(0.05)


async def test_a_stalled_journald_does_not_stop_the_dump_the_restart_or_status(
    own_journald: NamespaceJournald, qemu_guest: QemuGuest, short_tmp: Path, panicd: Start
) -> None:
    name = qemu_guest.name
    # Logs go to the journal too (log_format = journal): the worst case, every line stalls.
    panicd(f'{daemon_section(short_tmp)}[[guest]]\nsocket = "{qemu_guest.qmp_path}"\n'
           '[[policy]]\non_panic = ["dump", "restart"]\n',
           log_format="journal", wrapper=own_journald.wrapper())
    await wait_connected(short_tmp, name)

    own_journald.signal(signal.SIGSTOP)
    assert own_journald.fill_queue() > 0  # from here a blocking send would sleep in the kernel

    assert await qemu_guest.panic() == "OK"
    (dump,) = await completed_dumps(short_tmp, name, timeout=30)
    await wait_running(qemu_guest)

    def restarted() -> dict[str, Any] | None:
        reply = _status(short_tmp / "control.sock")
        (shown,) = [g for g in reply["guests"] if g["name"] == name]
        return shown if shown["restarts"] == 1 else None

    # `panicd status` answers while journald is stalled, and shows the restart once recorded.
    shown = await wait_for(restarted, what="panicd status showing the restart")
    assert shown["last_dump"]["path"] == str(dump)

    own_journald.signal(signal.SIGCONT)
    panic = await own_journald.find(GUEST_NAME=name, MESSAGE_ID=AlertKind.PANIC.message_id)
    done = await own_journald.find(GUEST_NAME=name,
                                   MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id)
    assert len(panic) == 1 and len(done) == 1
    assert done[0]["DUMP_PATH"] == str(dump)
    # The log lines written meanwhile arrive too (journal log format: EVENT= fields).
    assert await own_journald.find(EVENT="step.done", GUEST_NAME=name)


async def test_with_journald_gone_a_failed_dump_is_alerted_later_and_the_restart_still_runs(
    own_journald: NamespaceJournald, qemu_guest: QemuGuest, short_tmp: Path, panicd: Start
) -> None:
    name = qemu_guest.name
    # The disk guard refuses the dump: a DUMP_FAILED alert, which carries an ERROR field.
    daemon = panicd(f'{daemon_section(short_tmp, "min_free_bytes = 1000000000000000")}'
                    f'[[guest]]\nsocket = "{qemu_guest.qmp_path}"\n'
                    '[[policy]]\non_panic = ["dump", "restart"]\n',
                    wrapper=own_journald.wrapper())
    await daemon.wait_event("qmp.connected", guest=name)
    own_journald.signal(signal.SIGKILL)  # its socket file stays: sending gets ECONNREFUSED
    assert own_journald.socket.exists()

    assert await qemu_guest.panic() == "OK"
    await wait_running(qemu_guest)
    (failed,) = await daemon.wait_event("step.failed", step="dump")
    assert "not enough space" in failed["error"]
    await daemon.wait_event("incident.handled", guest=name)
    assert not daemon.events("incident.crashed") and not daemon.events("step.crashed")
    assert "journal.unavailable" in daemon.log_path.read_text()

    own_journald.start()  # journald is back: what was held is delivered
    alert = await own_journald.find(GUEST_NAME=name, MESSAGE_ID=AlertKind.DUMP_FAILED.message_id)
    assert len(alert) == 1
    assert "not enough space" in alert[0]["ERROR"]
    assert await own_journald.find(GUEST_NAME=name, MESSAGE_ID=AlertKind.PANIC.message_id)
