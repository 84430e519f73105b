"""`panicd guest NAME ACTION` against real QEMU 7.2, a real `panicd run` and a real journald.

Each action as root through the CLI (`main`, in this process: uid 0): dump (with --format over
the policy's), resume, restart, poweroff, run-policy, nmi; each is an incident of kind manual
in the store, audited by a GUEST_ACTION alert naming the caller's uid and pid. Refused, with
exit status 2, an audit entry, and nothing done: a uid not allowed (a child run with
`setpriv --reuid`), an unknown or unconnected guest, a resume of a running guest, a dump
asked while one of the guest's is being written (a big guest frozen mid-dump). An allowed
non-root uid is accepted. A manual dump of a guest panicd left paused after its panic is not
taken, by a restarted panicd, for a panic it missed; but a manual nmi of a running guest does
not hide a panic (or a watchdog) that came while panicd was away. Twelve dumps asked at the
same moment make one dump, the others refused. A caller flooding panicd with refused requests
gets ten audit entries a minute (and one summary), and a newline in the guest name it sends
is escaped in the journal.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from panicd import control
from panicd.alerts import AlertKind, JournalAlerter
from panicd.cli import main
from panicd.events import Detection, IncidentKind
from panicd.guest_actions import REFUSED_AUDITS_PER_WINDOW, RefusalAudits
from panicd.metrics import Metrics
from panicd.records import IncidentState
from tests.daemon_process import (
    PanicdProcess,
    completed_dumps,
    dumps_of,
    metadata,
    unique,
    wait_for,
)
from tests.journal import Journald
from tests.qemu_harness import QemuGuest, Qemus
from tests.test_dump_faults import (
    big_guest_frozen_mid_dump,
    config,
    freeze,
    thaw,
    wait_for_status,
)
from tests.test_incident_store_e2e import incidents_of, wait_for_incidents
from tests.test_watchdog_e2e import ARM_IB700_2S

Start = Callable[..., PanicdProcess]
ROOT = Path(__file__).resolve().parent.parent
GUEST_ACTION = AlertKind.GUEST_ACTION.message_id
DUMP_COMPLETED = AlertKind.DUMP_COMPLETED.message_id
NOBODY = 65534


async def guest_cli(capsys: pytest.CaptureFixture[str], tmp: Path,
                    *args: str) -> tuple[int, str, str]:
    """`panicd guest ARGS` as root (this process), on the test's daemon."""
    code = await asyncio.to_thread(main, ["guest", *args, "--socket", str(tmp / "control.sock")])
    out = capsys.readouterr()
    return code, out.out, out.err


def guest_cli_as(uid: int, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`panicd guest ARGS` in a child running as `uid` (and gid), with no other groups."""
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable,
         "-m", "panicd", "guest", *args, "--socket", str(tmp / "control.sock")],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)


async def started(tmp: Path, panicd: Start, guests: list[QemuGuest], policy: str = "",
                  daemon: str = "") -> PanicdProcess:
    process = panicd(config(tmp, guests, policy or 'on_panic = ["dump", "pause"]', daemon))
    for guest in guests:
        await process.wait_event("qmp.connected", guest=guest.name)
    return process


async def runstate_seen_by_panicd(tmp: Path, guest: QemuGuest, runstate: str) -> None:
    """Wait until `panicd status` shows the guest in `runstate` (its STOP or RESUME read)."""
    def seen() -> bool:
        guests = control.request(tmp / "control.sock")["guests"]
        return any(g["name"] == guest.name and g["runstate"] == runstate for g in guests)

    await wait_for(seen, timeout=10, what=f"panicd to see {guest.name} {runstate}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def scrape(port: int, sample: str) -> float:
    """One sample's value on panicd's /metrics, as Prometheus reads it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.split(" ")[0] == sample:
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {sample} on /metrics")


async def audits(journal: Journald, guest: str, count: int = 1) -> list[dict[str, Any]]:
    entries = await journal.find(count=count, MESSAGE_ID=GUEST_ACTION, GUEST_NAME=guest)
    assert len(entries) == count, entries
    return entries


async def the_manual_incident(tmp: Path, guest: str) -> Any:
    """The guest's one incident, once the store has it done (its writes are batched)."""
    (record,) = await wait_for_incidents(tmp, guest)
    assert (record.kind, record.detection) == (IncidentKind.MANUAL, Detection.REQUESTED)
    return record


async def test_dump_as_root_in_the_format_asked_is_an_incident_with_its_file_and_alerts(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus,
    capsys: pytest.CaptureFixture[str],
) -> None:
    guest = await qemus(unique("dump"))
    # The policy says elf: --format must win for this incident only.
    daemon = await started(short_tmp, panicd, [guest], 'dump = { format = "elf" }')

    code, out, err = await guest_cli(capsys, short_tmp, guest.name, "dump",
                                     "--format", "kdump-zlib")

    assert code == 0, (out, err, daemon.tail())
    (dump,) = await completed_dumps(short_tmp, guest.name)
    assert dump.read_bytes()[:12] == b"makedumpfile"  # QEMU's flattened kdump format
    record = await the_manual_incident(short_tmp, guest.name)
    assert (record.requested_steps, record.requested_by) == (["dump"], 0)
    assert record.state is IncidentState.DONE and record.outcome == "ok"
    assert metadata(dump)["incident"] == {**metadata(dump)["incident"], "id": record.id,
                                          "kind": "manual", "detection": "requested"}
    assert metadata(dump)["dump"]["format"] == "kdump-zlib"
    lines = out.splitlines()
    assert lines[0] == (f"{guest.name} dump: accepted: incident {record.id} (steps: dump)")
    assert lines[2].split()[:3] == ["dump", "ok", lines[2].split()[2]]
    assert f"{dump} (" in lines[2]
    assert lines[-1] == f"incident {record.id}: ok (panicd incidents show {record.id})"
    (audit,) = await audits(journal, guest.name)
    assert {k: audit[k] for k in ("OUTCOME", "CALLER_UID", "CALLER_PID", "REQUESTED_ACTION",
                                  "INCIDENT_ID", "POLICY_STEPS")} == {
        "OUTCOME": "accepted", "CALLER_UID": "0", "CALLER_PID": str(os.getpid()),
        "REQUESTED_ACTION": "dump", "INCIDENT_ID": record.id, "POLICY_STEPS": "dump"}
    (completed,) = await journal.find(MESSAGE_ID=DUMP_COMPLETED, GUEST_NAME=guest.name)
    assert (completed["INCIDENT_ID"], completed["DUMP_FORMAT"]) == (record.id, "kdump-zlib")
    # QEMU stops a running guest for its dump and lets it run again after.
    assert await guest.status() == "running"


async def test_resume_runs_a_paused_guest_and_a_running_one_is_refused(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus,
    capsys: pytest.CaptureFixture[str],
) -> None:
    guest = await qemus(unique("resume"))
    daemon = await started(short_tmp, panicd, [guest])
    await guest.execute("stop")
    await runstate_seen_by_panicd(short_tmp, guest, "paused")

    code, out, err = await guest_cli(capsys, short_tmp, guest.name, "resume")

    assert code == 0, (out, err, daemon.tail())
    assert await guest.status() == "running"
    record = await the_manual_incident(short_tmp, guest.name)
    assert [(s.name, s.ok, s.power.status if s.power else None) for s in record.steps] == [
        ("resume", True, "running")]
    await runstate_seen_by_panicd(short_tmp, guest, "running")

    code, out, err = await guest_cli(capsys, short_tmp, guest.name, "resume")

    assert (code, out) == (2, "")
    assert err == (f"panicd guest: {guest.name} resume: refused: guest '{guest.name}' is "
                   "already running: nothing to resume\n")
    assert len(incidents_of(short_tmp, guest.name)) == 1
    accepted, refused = await audits(journal, guest.name, count=2)
    assert (accepted["OUTCOME"], refused["OUTCOME"]) == ("accepted", "refused")
    assert refused["REASON"] == f"guest '{guest.name}' is already running: nothing to resume"
    assert "INCIDENT_ID" not in refused


async def test_restart_resets_the_guest_and_it_runs(
    short_tmp: Path, panicd: Start, qemus: Qemus, capsys: pytest.CaptureFixture[str],
) -> None:
    guest = await qemus(unique("restart"))
    daemon = await started(short_tmp, panicd, [guest])

    code, out, err = await guest_cli(capsys, short_tmp, guest.name, "restart")

    assert code == 0, (out, err, daemon.tail())
    assert [name for name, _ in await guest.events_until("RESET")][-1] == "RESET"
    assert await guest.status() == "running"
    record = await the_manual_incident(short_tmp, guest.name)
    assert [(s.name, s.ok) for s in record.steps] == [("restart", True)]


async def test_poweroff_without_waiting_makes_qemu_exit(
    short_tmp: Path, panicd: Start, qemus: Qemus, capsys: pytest.CaptureFixture[str],
) -> None:
    guest = await qemus(unique("poweroff"))
    daemon = await started(short_tmp, panicd, [guest])

    code, out, err = await guest_cli(capsys, short_tmp, guest.name, "poweroff", "--no-wait")

    assert code == 0, (out, err, daemon.tail())
    assert await guest.wait_exited(timeout=15) == 0
    (record,) = await wait_for_incidents(short_tmp, guest.name)
    assert out.splitlines() == [
        f"{guest.name} poweroff: accepted: incident {record.id} (steps: poweroff)",
        f"follow it with: panicd incidents show {record.id}"]
    assert [(s.name, s.ok) for s in record.steps] == [("poweroff", True)]


async def test_run_policy_runs_the_on_panic_steps_of_a_running_guest(
    short_tmp: Path, panicd: Start, qemus: Qemus, capsys: pytest.CaptureFixture[str],
) -> None:
    guest = await qemus(unique("policy"))
    daemon = await started(short_tmp, panicd, [guest], 'on_panic = ["dump", "pause"]')

    code, out, err = await guest_cli(capsys, short_tmp, guest.name, "run-policy")

    assert code == 0, (out, err, daemon.tail())
    (dump,) = await completed_dumps(short_tmp, guest.name)
    assert metadata(dump)["dump"]["format"] == "elf"
    assert await guest.status() == "paused"
    record = await the_manual_incident(short_tmp, guest.name)
    assert record.requested_steps == ["dump", "pause"]
    assert [(s.name, s.ok) for s in record.steps] == [("dump", True), ("pause", True)]


async def test_a_dump_asked_while_one_is_written_is_refused_and_nothing_is_done(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus,
    capsys: pytest.CaptureFixture[str],
) -> None:
    guest, daemon = await big_guest_frozen_mid_dump(
        short_tmp, panicd, qemus, "busy", policy='on_panic = ["dump", "pause"]',
        daemon="min_free_bytes = 0")
    (panic,) = incidents_of(short_tmp, guest.name)

    # Bounded, so that a dump wrongly queued behind the frozen one fails fast.
    code, out, err = await guest_cli(capsys, short_tmp, guest.name, "dump", "--timeout", "5")

    assert (code, out) == (2, ""), daemon.tail()
    started_at = err.split("started ")[1].split(")")[0]
    assert err == (f"panicd guest: {guest.name} dump: refused: a dump of {guest.name} is running "
                   f"(incident {panic.id}, started {started_at}): QEMU writes one dump at a "
                   f"time; see panicd incidents show {panic.id}\n")
    (audit,) = await audits(journal, guest.name)
    assert (audit["OUTCOME"], audit["CALLER_UID"]) == ("refused", "0")
    thaw(guest)
    await completed_dumps(short_tmp, guest.name, timeout=60)
    assert [r.id for r in await wait_for_incidents(short_tmp, guest.name)] == [panic.id]
    assert len(dumps_of(short_tmp, guest.name)) == 1


async def test_a_uid_not_allowed_is_refused_and_audited_and_an_allowed_one_is_accepted(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus,
) -> None:
    guest = await qemus(unique("uid"))
    allowed = NOBODY - 1
    daemon = await started(short_tmp, panicd, [guest],
                           daemon=f"control_allowed_uids = [{allowed}]")
    # Anyone may reach the socket here: the uid check, not the file mode, is under test.
    (short_tmp / "control.sock").chmod(0o666)
    short_tmp.chmod(0o755)
    await guest.execute("stop")
    await runstate_seen_by_panicd(short_tmp, guest, "paused")

    refused = guest_cli_as(NOBODY, short_tmp, guest.name, "resume")

    assert (refused.returncode, refused.stdout) == (2, ""), daemon.tail()
    assert refused.stderr == (f"panicd guest: {guest.name} resume: refused: uid {NOBODY} may not "
                              "act on guests: only root and the uids in [daemon] "
                              "control_allowed_uids may\n")
    (audit,) = await audits(journal, guest.name)
    assert {k: audit[k] for k in ("OUTCOME", "CALLER_UID", "REQUESTED_ACTION")} == {
        "OUTCOME": "refused", "CALLER_UID": str(NOBODY), "REQUESTED_ACTION": "resume"}
    assert int(audit["CALLER_PID"]) > 0
    # Nothing done: the guest is still paused, and no incident was made.
    assert await guest.status() == "paused"
    assert incidents_of(short_tmp, guest.name) == []

    accepted = guest_cli_as(allowed, short_tmp, guest.name, "resume")

    assert accepted.returncode == 0, (accepted.stdout, accepted.stderr, daemon.tail())
    assert await guest.status() == "running"
    assert (await the_manual_incident(short_tmp, guest.name)).requested_by == allowed
    audit = (await audits(journal, guest.name, count=2))[1]
    assert (audit["OUTCOME"], audit["CALLER_UID"]) == ("accepted", str(allowed))


async def test_an_unknown_or_unconnected_guest_is_refused_with_the_known_names(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus,
    capsys: pytest.CaptureFixture[str],
) -> None:
    guest = await qemus(unique("known"))
    absent = unique("absent")
    process = panicd(config(short_tmp, [guest], 'on_panic = ["dump"]')
                     + f'[[guest]]\nsocket = "{short_tmp}/absent.qmp"\nname = "{absent}"\n')
    await process.wait_event("qmp.connected", guest=guest.name)
    nosuch = unique("nosuch")

    code, out, err = await guest_cli(capsys, short_tmp, nosuch, "restart")

    assert (code, out) == (2, "")
    known = ", ".join(sorted([guest.name, absent]))
    assert err == (f"panicd guest: {nosuch} restart: refused: no guest named '{nosuch}'; "
                   f"known: {known}\n")
    (audit,) = await audits(journal, nosuch)
    assert audit["OUTCOME"] == "refused" and "QMP_SOCKET" not in audit

    hostile = f"{unique('nope')}\n\x1b[31m"  # escaped once, where it is shown
    code, out, err = await guest_cli(capsys, short_tmp, hostile, "resume")
    shown = hostile.replace("\n", "\\n").replace("\x1b", "\\x1b")
    assert f"refused: no guest named '{shown}'; known: " in err

    code, out, err = await guest_cli(capsys, short_tmp, absent, "dump")

    assert (code, out) == (2, "")
    assert f"refused: guest '{absent}' is not connected (" in err
    await audits(journal, absent)

    # A request no CLI would send: refused, audited, and the daemon serves the next one.
    with control.ControlConnection(short_tmp / "control.sock") as connection:
        connection.send({"command": "guest", "guest": guest.name, "action": "explode",
                         "wait": -1})
        reply = connection.receive()
    assert reply["refused"] and reply["error"].startswith("bad request: action: Input should be")
    (audit,) = await audits(journal, guest.name)
    assert (audit["OUTCOME"], audit["REQUESTED_ACTION"]) == ("refused", "explode")
    assert control.request(short_tmp / "control.sock")["ok"]


async def test_a_manual_dump_of_a_panicked_guest_is_not_taken_for_a_missed_panic(
    short_tmp: Path, panicd: Start, qemus: Qemus, capsys: pytest.CaptureFixture[str],
) -> None:
    """Panicked, dumped and left paused by its policy, then dumped by hand: a panicd started
    again finds the guest still guest-panicked, and must not handle that panic a second time."""
    guest = await qemus(unique("again"))
    first = await started(short_tmp, panicd, [guest], 'on_panic = ["dump", "pause"]')
    await guest.panic()
    await completed_dumps(short_tmp, guest.name)
    await wait_for_incidents(short_tmp, guest.name)
    code, _, err = await guest_cli(capsys, short_tmp, guest.name, "dump")
    assert code == 0, err
    await completed_dumps(short_tmp, guest.name, count=2)
    assert await first.stop() == 0

    again = panicd(first.config_path.read_text())
    await again.wait_event("panic.already_handled", guest=guest.name, by="operator")

    assert [r.kind for r in incidents_of(short_tmp, guest.name)] == [IncidentKind.MANUAL,
                                                                     IncidentKind.PANIC]
    assert len(dumps_of(short_tmp, guest.name)) == 2
    assert not again.events("panic.found_on_connect")
    assert await guest.status() == "guest-panicked"


async def test_nmi_is_injected_into_the_guest(
    short_tmp: Path, panicd: Start, qemus: Qemus, capsys: pytest.CaptureFixture[str],
) -> None:
    """The nmi step is another engineer's (actions/nmi.py): QEMU accepts inject-nmi."""
    guest = await qemus(unique("nmi"))
    daemon = await started(short_tmp, panicd, [guest])

    code, out, err = await guest_cli(capsys, short_tmp, guest.name, "nmi")

    assert code == 0, (out, err, daemon.tail())
    record = await the_manual_incident(short_tmp, guest.name)
    assert [(s.name, s.ok, s.error) for s in record.steps] == [("nmi", True, None)]
    assert daemon.events("step.done", step="nmi")  # QEMU accepted inject-nmi
    assert await guest.status() == "running"


async def test_the_crash_loop_advice_works_and_a_manual_restart_is_not_held_to_the_budget(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus,
    capsys: pytest.CaptureFixture[str],
) -> None:
    guest = await qemus(unique("loop"))
    daemon = await started(short_tmp, panicd, [guest],
                           'on_panic = ["restart"]\nrestart = { max = 1, within = 3600 }')
    await guest.panic()
    await wait_for_incidents(short_tmp, guest.name)
    await wait_for_status(guest, "running")
    await guest.panic()  # the second within the hour: the budget is spent
    (loop,) = await journal.find(MESSAGE_ID=AlertKind.CRASH_LOOP.message_id, GUEST_NAME=guest.name)
    assert f"resume it with 'panicd guest {guest.name} resume'" in loop["MESSAGE"]
    assert "QMP" not in loop["MESSAGE"]
    await wait_for_incidents(short_tmp, guest.name, count=2)
    await runstate_seen_by_panicd(short_tmp, guest, "guest-panicked")

    # What the alert says to do, done: the guest runs again.
    code, out, err = await guest_cli(capsys, short_tmp, guest.name, "resume")
    assert code == 0, (out, err, daemon.tail())
    assert await guest.status() == "running"

    await guest.panic()  # still within the hour: left paused again
    await wait_for_incidents(short_tmp, guest.name, count=4)
    await runstate_seen_by_panicd(short_tmp, guest, "guest-panicked")
    code, out, err = await guest_cli(capsys, short_tmp, guest.name, "restart")

    # A person asked: restarted, not "crash loop: left paused".
    assert code == 0, (out, err, daemon.tail())
    assert await guest.status() == "running"
    manual = (await wait_for_incidents(short_tmp, guest.name, count=5))[0]
    assert [(s.name, s.ok, s.skipped) for s in manual.steps] == [("restart", True, None)]


async def manual_nmi_then_away(short_tmp: Path, panicd: Start, guest: QemuGuest,
                               capsys: pytest.CaptureFixture[str], policy: str) -> PanicdProcess:
    """`panicd guest NAME nmi` on a running guest (QEMU takes the NMI and the guest runs on:
    no STOP, no RESUME), then panicd stopped: what happens next, it does not see."""
    first = await started(short_tmp, panicd, [guest], policy)
    code, out, err = await guest_cli(capsys, short_tmp, guest.name, "nmi")
    assert code == 0, (out, err, first.tail())
    await the_manual_incident(short_tmp, guest.name)
    assert await guest.status() == "running"
    assert await first.stop() == 0
    return first


async def test_a_panic_while_panicd_was_away_after_a_manual_nmi_is_found_dumped_and_alerted(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The manual incident is the guest's latest, and the guest never ran again after it in
    QEMU's eyes (no RESUME): it must not pass for what stopped the guest."""
    guest = await qemus(unique("away"))
    first = await manual_nmi_then_away(short_tmp, panicd, guest, capsys,
                                       'on_panic = ["dump", "pause"]')
    await guest.panic()
    await wait_for_status(guest, "guest-panicked")

    again = panicd(first.config_path.read_text())
    await again.wait_event("panic.found_on_connect", guest=guest.name)

    (dump,) = await completed_dumps(short_tmp, guest.name)
    panic, manual = await wait_for_incidents(short_tmp, guest.name, count=2)
    assert (manual.kind, panic.kind, panic.detection) == (IncidentKind.MANUAL, IncidentKind.PANIC,
                                                          Detection.ON_CONNECT)
    assert metadata(dump)["incident"]["id"] == panic.id
    (alert,) = await journal.find(MESSAGE_ID=AlertKind.PANIC.message_id, GUEST_NAME=guest.name)
    assert (alert["INCIDENT_ID"], alert["PANIC_DETECTION"]) == (panic.id, "on-connect")
    assert "panicked while panicd was not connected" in alert["MESSAGE"]
    assert not again.events("panic.already_handled")
    assert await guest.status() == "guest-panicked"  # the policy's pause


async def test_a_watchdog_that_fired_while_panicd_was_away_after_a_manual_nmi_is_found(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus,
    capsys: pytest.CaptureFixture[str],
) -> None:
    guest = await qemus(unique("awaywd"), extra_args=["-device", "ib700"])
    first = await manual_nmi_then_away(short_tmp, panicd, guest, capsys,
                                       'on_watchdog = ["dump"]')
    # panicd's `set-action watchdog=pause` (made on connect) outlives its connection.
    assert await guest.qtest(ARM_IB700_2S) == "OK"
    await wait_for_status(guest, "watchdog")

    again = panicd(first.config_path.read_text())
    await again.wait_event("watchdog.found_on_connect", guest=guest.name)

    (dump,) = await completed_dumps(short_tmp, guest.name)
    hang, _ = await wait_for_incidents(short_tmp, guest.name, count=2)
    assert (hang.kind, hang.detection) == (IncidentKind.WATCHDOG, Detection.ON_CONNECT)
    assert metadata(dump)["incident"]["id"] == hang.id
    (alert,) = await journal.find(MESSAGE_ID=AlertKind.WATCHDOG.message_id,
                                  GUEST_NAME=guest.name)
    assert alert["INCIDENT_ID"] == hang.id
    assert not again.events("watchdog.already_handled")


def dump_requests_at_once(path: Path, name: str, count: int) -> list[dict[str, Any]]:
    """`count` dump requests, each on its own connection, sent at the same moment."""
    connections = [control.ControlConnection(path) for _ in range(count)]
    start = threading.Barrier(count)
    replies: list[dict[str, Any]] = []

    def ask(connection: control.ControlConnection) -> None:
        with connection:
            start.wait()
            connection.send({"command": "guest", "guest": name, "action": "dump", "wait": 0})
            replies.append(connection.receive())

    threads = [threading.Thread(target=ask, args=(c,)) for c in connections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return replies


async def test_dumps_asked_at_the_same_moment_make_one_dump_and_the_others_are_refused(
    short_tmp: Path, panicd: Start, qemus: Qemus,
) -> None:
    guest = await qemus(unique("burst"))
    daemon = await started(short_tmp, panicd, [guest])
    # Rounds: requests that are decided apart (the threads scheduled one by one) show nothing,
    # and which round has them come together is up to the scheduler.
    for round_ in range(1, 5):
        # QEMU frozen: the dump accepted cannot finish while the others are decided, so each
        # of them must be refused, however the threads are scheduled.
        freeze(guest)
        try:
            replies = await asyncio.to_thread(dump_requests_at_once, short_tmp / "control.sock",
                                              guest.name, 12)
        finally:
            thaw(guest)

        assert len(replies) == 12, daemon.tail()
        (accepted,) = [r for r in replies if r["ok"]]
        refused = [r["error"] for r in replies if not r["ok"]]
        assert len(refused) == 11
        assert all(e.startswith(f"a dump of {guest.name} is running (incident "
                                f"{accepted['incident']},") for e in refused), refused
        records = await wait_for_incidents(short_tmp, guest.name, count=round_)
        assert records[0].id == accepted["incident"]
        dumps = await completed_dumps(short_tmp, guest.name, count=round_)
        assert metadata(dumps[-1])["incident"]["id"] == accepted["incident"]
    assert len(dumps_of(short_tmp, guest.name)) == 4


#: The flooding caller: as fast as it can, one refused request per connection.
FLOOD = """
import json, socket, sys
path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
refused = 0
for _ in range(count):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(json.dumps({"command": "guest", "guest": name, "action": "resume"}).encode()
                  + b"\\n")
        refused += json.loads(s.makefile().readline()).get("refused") is True
print(refused)
"""


async def test_a_flood_of_refused_requests_is_audited_ten_times_and_a_forged_line_escaped(
    short_tmp: Path, panicd: Start, journal: Journald, qemus: Qemus,
) -> None:
    guest = await qemus(unique("flooded"))
    port = free_port()
    daemon = await started(short_tmp, panicd, [guest],
                           daemon=f'metrics_listen = "127.0.0.1:{port}"')
    await daemon.wait_event("metrics.listening")
    (short_tmp / "control.sock").chmod(0o666)
    short_tmp.chmod(0o755)
    # A name that, written as it is, would print a line of its own in `journalctl`.
    forged = f"{unique('flood')}\nGuest web-01 panicked; steps: nothing"
    escaped = forged.replace("\n", "\\n")
    flood = 300

    flooder = await asyncio.to_thread(
        subprocess.run, ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                         sys.executable, "-c", FLOOD, str(short_tmp / "control.sock"), forged,
                         str(flood)],
        capture_output=True, text=True, timeout=120, check=False)
    assert flooder.stdout.strip() == str(flood), (flooder.stderr, daemon.tail())
    # One more, from another uid (its own allowance): the journal has every entry of the flood
    # once it has this one (panicd's journal writer keeps their order).
    with control.ControlConnection(short_tmp / "control.sock") as root:
        root.send({"command": "guest", "guest": forged, "action": "resume"})
        assert root.receive()["refused"]
    entries = await journal.find(count=REFUSED_AUDITS_PER_WINDOW + 1, MESSAGE_ID=GUEST_ACTION,
                                 GUEST_NAME=escaped)
    assert entries[-1]["CALLER_UID"] == "0", daemon.tail()
    entries = journal.entries(MESSAGE_ID=GUEST_ACTION, GUEST_NAME=escaped)

    assert [e["CALLER_UID"] for e in entries] == [str(NOBODY)] * REFUSED_AUDITS_PER_WINDOW + ["0"]
    assert all("\n" not in e["MESSAGE"] for e in entries)
    assert entries[0]["MESSAGE"].startswith(f"Guest {escaped}: uid {NOBODY} (pid ")
    assert entries[0]["REQUESTED_ACTION"] == "resume"
    unaudited = await asyncio.to_thread(scrape, port, "panicd_guest_action_refusals_unaudited_total")
    assert unaudited == flood - REFUSED_AUDITS_PER_WINDOW
    assert control.request(short_tmp / "control.sock")["ok"]  # and the daemon serves on

    # Stopped within the minute: what it did not audit one by one is still said, once.
    assert daemon.proc is not None
    pid = str(daemon.proc.pid)
    assert await daemon.stop() == 0
    (summary,) = await journal.find(MESSAGE_ID=GUEST_ACTION, _PID=pid, OUTCOME="unaudited")
    assert (summary["CALLER_UID"], summary["UNAUDITED_REQUESTS"]) == (
        str(NOBODY), str(flood - REFUSED_AUDITS_PER_WINDOW))


async def test_refusals_past_the_allowance_are_summed_up_in_one_entry_when_the_window_ends(
    journal: Journald,
) -> None:
    """RefusalAudits as the daemon uses it, with a short window (the daemon's is a minute),
    sending to the real journald."""
    uid = 4_000_000_000 + int(time.time() * 1000) % 100_000_000  # no earlier run's entries
    metrics = Metrics()
    audits = RefusalAudits(JournalAlerter(), metrics.guest_action_refusals_unaudited,
                           limit=2, window=0.5)

    assert [audits.admit(uid) for _ in range(7)] == [True, True] + [False] * 5
    assert audits.admit(None)  # a caller of its own

    (summary,) = await journal.find(MESSAGE_ID=GUEST_ACTION, CALLER_UID=str(uid))
    assert (summary["OUTCOME"], summary["UNAUDITED_REQUESTS"], summary["WITHIN_SECONDS"]) == (
        "unaudited", "5", "0.5")
    assert summary["MESSAGE"] == (f"uid {uid}: 5 more refused panicd guest requests within "
                                  "0.5 s were not audited one by one (at most 2 are, per "
                                  "caller and 0.5 s)")
    assert metrics.registry.get_sample_value("panicd_guest_action_refusals_unaudited_total") == 5
    assert audits.admit(uid)  # a new window: audited again
