"""`panicd run` end to end against built-in mock guests: fast, and for what QEMU cannot be
made to do (a failing or slow dump, a duplicate event, garbage on the wire).

Each test gives its guests unique names, so the journal entries it reads are its own.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import stat
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from panicd.alerts import AlertKind
from panicd.mock import MockGuest
from tests.daemon_process import (
    PanicdProcess,
    completed_dumps,
    daemon_section,
    dumps_of,
    metadata,
    unique,
    wait_for,
)
from tests.journal import Journald

Start = Callable[[str], PanicdProcess]


@pytest.fixture
async def mocks(short_tmp: Path) -> AsyncIterator[Callable[..., Any]]:
    guests: list[MockGuest] = []

    async def make(name: str, **kwargs: Any) -> MockGuest:
        guest = MockGuest(name=name, memory_bytes=kwargs.pop("memory_bytes", 8 * 2**20), **kwargs)
        await guest.start(short_tmp / f"{len(guests)}.qmp")
        guests.append(guest)
        return guest

    yield make
    for guest in guests:
        await guest.stop()


def config(tmp: Path, sockets: int, policy: str = 'on_panic = ["dump", "restart"]', daemon: str = "") -> str:
    guests = "".join(f'[[guest]]\nsocket = "{tmp}/{i}.qmp"\n' for i in range(sockets))
    return f"{daemon_section(tmp, daemon)}{guests}[[policy]]\n{policy}\n"


async def test_panic_is_dumped_restarted_and_alerted(
    short_tmp: Path, mocks: Any, panicd: Start, journal: Journald
) -> None:
    name = unique("web")
    guest = await mocks(name, uuid=str(uuid.uuid4()))
    daemon = panicd(config(short_tmp, 1, 'on_panic = ["dump", "restart"]\n'
                                         'dump = { format = "kdump-zlib" }'))
    await daemon.wait_event("qmp.connected", guest=name)
    assert guest.machine.panic_action == "pause"  # taken over on connect

    guest.port.write(1)
    (dump,) = await completed_dumps(short_tmp, name)
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert dump.read_bytes()[:12] == b"makedumpfile"
    meta = metadata(dump)
    assert meta["guest"]["name"] == name
    assert meta["guest"]["uuid"] == guest.uuid
    assert meta["event"]["event"] == "GUEST_PANICKED"
    assert meta["dump"]["format"] == "kdump-zlib"
    assert meta["dump"]["size_bytes"] == dump.stat().st_size

    await wait_for(lambda: guest.machine.runstate == "running", what="restart")
    commands = [c[1] for c in guest.received_commands]
    assert commands.index("system_reset") > commands.index("dump-guest-memory")

    (panic,) = await journal.find(MESSAGE_ID=AlertKind.PANIC.message_id, GUEST_NAME=name)
    assert panic["PRIORITY"] == "2"
    assert panic["SYSLOG_IDENTIFIER"] == "panicd"
    assert panic["PANIC_ACTION"] == "pause"
    assert panic["GUEST_UUID"] == guest.uuid
    assert panic["QMP_SOCKET"] == str(short_tmp / "0.qmp")
    (done,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id, GUEST_NAME=name)
    assert done["DUMP_PATH"] == str(dump)
    assert await daemon.stop() == 0


async def test_failed_dump_is_removed_alerted_and_next_steps_run(
    short_tmp: Path, mocks: Any, panicd: Start, journal: Journald
) -> None:
    name = unique("full")
    guest = await mocks(name)
    guest.fail_next_dump = "No space left on device"
    daemon = panicd(config(short_tmp, 1))
    await daemon.wait_event("qmp.connected", guest=name)
    guest.port.write(1)
    (failed,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_FAILED.message_id, GUEST_NAME=name)
    assert "No space left on device" in failed["MESSAGE"]
    assert failed["PRIORITY"] == "3"
    await wait_for(lambda: guest.machine.runstate == "running", what="restart after failed dump")
    assert list((short_tmp / "dumps" / name).iterdir()) == []


async def test_a_timed_out_dump_is_kept_and_finished_when_qemu_completes_it(
    short_tmp: Path, mocks: Any, panicd: Start, journal: Journald
) -> None:
    name = unique("slow")
    guest = await mocks(name, dump_bytes_per_second=4 * 1024 * 1024)  # 8 MiB: 2 s
    daemon = panicd(config(short_tmp, 1, 'on_panic = ["dump", "pause"]\ndump = { timeout = 0.5 }'))
    await daemon.wait_event("qmp.connected", guest=name)
    guest.port.write(1)
    (failed,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_FAILED.message_id, GUEST_NAME=name)
    assert "timed out after 0.5 s" in failed["MESSAGE"]
    # QEMU cannot cancel a dump: the file stays, and once QEMU has written it, it is finished
    # as every dump is (its record completed, a DUMP_COMPLETED alert), only late.
    (dump,) = await completed_dumps(short_tmp, name, timeout=15)
    (written,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id, GUEST_NAME=name)
    assert written["DUMP_PATH"] == str(dump)
    assert guest.machine.runstate == "guest-panicked"


async def test_restart_waits_until_qemu_has_finished_a_timed_out_dump(
    short_tmp: Path, mocks: Any, panicd: Start, journal: Journald
) -> None:
    name = unique("busy")
    guest = await mocks(name, dump_bytes_per_second=4 * 1024 * 1024)  # 8 MiB: 2 s
    daemon = panicd(config(short_tmp, 1, 'on_panic = ["dump", "restart"]\ndump = { timeout = 0.5 }'))
    await daemon.wait_event("qmp.connected", guest=name)
    guest.port.write(1)
    (failed,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_FAILED.message_id, GUEST_NAME=name)
    assert "timed out after 0.5 s" in failed["MESSAGE"]
    # QEMU 7.2 aborts on system_reset during a dump (the mock copies it): restart waits for
    # the dump QEMU cannot cancel, then resets the guest.
    await daemon.wait_event("step.waiting_for_dump", guest=name, step="restart")
    await daemon.wait_event("step.done", guest=name, step="restart", timeout=15)
    assert guest.machine.runstate == "running"
    assert not await journal.find(timeout=0.5, MESSAGE_ID=AlertKind.STEP_FAILED.message_id,
                                  GUEST_NAME=name)


async def test_a_duplicate_panic_event_is_handled_once(
    short_tmp: Path, mocks: Any, panicd: Start
) -> None:
    name = unique("dup")
    guest = await mocks(name)
    daemon = panicd(config(short_tmp, 1, 'on_panic = ["dump", "pause"]'))
    await daemon.wait_event("qmp.connected", guest=name)
    guest.port.write(1)
    # QEMU < 6.0 follows GUEST_PANICKED {pause} with a second one, {poweroff}.
    await guest.emit_event("GUEST_PANICKED", {"action": "poweroff"})
    await daemon.wait_event("panic.duplicate", action="poweroff")
    await completed_dumps(short_tmp, name)
    await daemon.wait_event("incident.handled")
    assert len(dumps_of(short_tmp, name)) == 1
    assert len(daemon.events("panic.detected")) == 1


async def test_garbage_from_one_guest_never_disturbs_another(
    short_tmp: Path, mocks: Any, panicd: Start
) -> None:
    noisy_name, calm_name = unique("noisy"), unique("calm")
    noisy = await mocks(noisy_name)
    calm = await mocks(calm_name)
    daemon = panicd(config(short_tmp, 2))
    await daemon.wait_event("qmp.connected", guest=noisy_name)
    await daemon.wait_event("qmp.connected", guest=calm_name)

    await noisy.emit_event("GUEST_PANICKED", {"action": 42, "info": "not an object"})
    await noisy.send_raw(b'{"event": "STOP", "timestamp": "yesterday"}\n')
    await noisy.send_raw(b"\xff\xfe this is not JSON }}}\n")
    calm.port.write(1)
    await completed_dumps(short_tmp, calm_name)
    # The noisy guest's connection was dropped and made again; panicd is still up.
    await daemon.wait_event("qmp.connected", guest=noisy_name, count=2)
    noisy.port.write(1)
    await completed_dumps(short_tmp, noisy_name)
    assert await daemon.stop() == 0


async def test_dumps_queue_behind_the_host_wide_limit(
    short_tmp: Path, mocks: Any, panicd: Start
) -> None:
    names = [unique(f"storm{i}") for i in range(3)]
    guests = [await mocks(n, dump_bytes_per_second=16 * 1024 * 1024) for n in names]  # 0.5 s each
    daemon = panicd(config(short_tmp, 3, 'on_panic = ["dump", "pause"]',
                           daemon="max_concurrent_dumps = 1"))
    for n in names:
        await daemon.wait_event("qmp.connected", guest=n)
    for g in guests:
        g.port.write(1)
    dumps = [(await completed_dumps(short_tmp, n))[0] for n in names]
    spans = sorted(
        (m["dump"]["started_at"], m["dump"]["duration_seconds"], m["dump"]["waited_for_slot_seconds"])
        for m in map(metadata, dumps)
    )
    waits = [w for _, _, w in spans]
    assert sum(1 for w in waits if w > 0.3) == 2, spans  # two of three waited their turn
    assert all(g.machine.runstate == "guest-panicked" for g in guests)


async def test_unavailable_format_falls_back_to_elf(short_tmp: Path, mocks: Any, panicd: Start) -> None:
    name = unique("lzo")
    guest = await mocks(name)
    daemon = panicd(config(short_tmp, 1, 'on_panic = ["dump"]\ndump = { format = "kdump-lzo" }'))
    await daemon.wait_event("qmp.connected", guest=name)
    guest.port.write(1)
    (dump,) = await completed_dumps(short_tmp, name)
    assert dump.read_bytes()[:4] == b"\x7fELF"
    assert metadata(dump)["dump"]["requested_format"] == "kdump-lzo"
    assert metadata(dump)["dump"]["format"] == "elf"
    assert daemon.events("dump.format_unavailable")


async def test_without_take_over_a_poweroff_panic_is_alerted_with_the_fix(
    short_tmp: Path, mocks: Any, panicd: Start, journal: Journald
) -> None:
    name = unique("off")
    guest = await mocks(name)  # QEMU's default panic action: shutdown
    daemon = panicd(config(short_tmp, 1, daemon="take_over_panic_action = false"))
    await daemon.wait_event("qmp.connected", guest=name)
    guest.port.write(1)
    (panic,) = await journal.find(MESSAGE_ID=AlertKind.PANIC.message_id, GUEST_NAME=name)
    assert panic["PANIC_ACTION"] == "poweroff"
    assert "-action panic=pause" in panic["MESSAGE"]
    await daemon.wait_event("step.skipped", step="dump")
    assert dumps_of(short_tmp, name) == []


async def test_crash_loaded_alerts_and_leaves_the_guest_running(
    short_tmp: Path, mocks: Any, panicd: Start, journal: Journald
) -> None:
    name = unique("kdump")
    guest = await mocks(name)
    daemon = panicd(config(short_tmp, 1))
    await daemon.wait_event("qmp.connected", guest=name)
    guest.port.write(2)
    (entry,) = await journal.find(MESSAGE_ID=AlertKind.CRASH_LOADED.message_id, GUEST_NAME=name)
    assert entry["PRIORITY"] == "4"
    await daemon.wait_event("incident.handled", kind="crash-loaded")
    assert guest.machine.runstate == "running"
    assert dumps_of(short_tmp, name) == []


async def test_panic_while_panicd_was_down_is_handled_once(
    short_tmp: Path, mocks: Any, panicd: Start, journal: Journald
) -> None:
    name = unique("missed")
    guest = await mocks(name, panic_action="pause")
    guest.port.write(1)
    assert guest.machine.runstate == "guest-panicked"

    first = panicd(config(short_tmp, 1, 'on_panic = ["dump", "pause"]'))
    await completed_dumps(short_tmp, name)
    (panic,) = await journal.find(MESSAGE_ID=AlertKind.PANIC.message_id, GUEST_NAME=name)
    assert panic["PANIC_DETECTION"] == "on-connect"
    await first.wait_event("incident.handled")
    assert await first.stop() == 0

    # panicd comes back: the guest is still paused in guest-panicked, but it is the same panic.
    second = panicd(config(short_tmp, 1, 'on_panic = ["dump", "pause"]'))
    await second.wait_event("panic.already_handled")
    assert len(dumps_of(short_tmp, name)) == 1
    assert await second.stop() == 0


async def test_a_hostile_guest_name_stays_inside_the_dump_dir(
    short_tmp: Path, mocks: Any, panicd: Start
) -> None:
    name = "../../etc/x" + uuid.uuid4().hex[:6]
    guest = await mocks(name)
    daemon = panicd(config(short_tmp, 1))
    await daemon.wait_event("qmp.connected", guest=name)
    guest.port.write(1)
    (dump,) = await completed_dumps(short_tmp, name)
    assert dump.parent.parent == short_tmp / "dumps"
    assert dump.parent.name.startswith("_._.._etc_x")
    assert metadata(dump)["guest"]["name"] == name
    assert not (short_tmp.parent / "etc").exists()


async def test_invalid_config_is_refused_with_the_reason(short_tmp: Path, panicd: Start) -> None:
    daemon = panicd('[[guest]]\nsocket = "/run/x.qmp"\n[[policy]]\non_panic = ["reboot"]\n')
    assert daemon.proc is not None
    assert daemon.proc.wait(30) == 1
    assert "policy[0].on_panic[0]" in daemon.log_path.read_text()


async def test_a_dump_survives_a_dropped_qmp_connection(
    short_tmp: Path, mocks: Any, panicd: Start, journal: Journald
) -> None:
    name = unique("drop")
    guest = await mocks(name, dump_bytes_per_second=4 * 2**20)  # 8 MiB: 2 s
    daemon = panicd(config(short_tmp, 1, 'on_panic = ["dump", "pause"]'))
    await daemon.wait_event("qmp.connected", guest=name)
    guest.port.write(1)
    await daemon.wait_event("dump.started")
    await guest.send_raw(b"\xff not JSON at all }}}\n")  # panicd drops this connection
    await daemon.wait_event("dump.detached")
    await daemon.wait_event("dump.orphan_completed", timeout=20)
    (dump,) = await completed_dumps(short_tmp, name)
    assert dump.stat().st_size > 8 * 2**20
    (alert,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id, GUEST_NAME=name)
    assert alert["DUMP_PATH"] == str(dump)
    assert not await journal.find(timeout=0.5, MESSAGE_ID=AlertKind.DUMP_FAILED.message_id,
                                  GUEST_NAME=name)


async def test_a_panic_whose_steps_were_interrupted_is_handled_again(
    short_tmp: Path, mocks: Any, panicd: Start
) -> None:
    name = unique("cut")
    guest = await mocks(name)
    policy = 'on_panic = ["exec", "restart"]\nexec = { command = ["sleep", "60"], timeout = 120 }'
    first = panicd(config(short_tmp, 1, policy))
    await first.wait_event("qmp.connected", guest=name)
    guest.port.write(1)
    await first.wait_event("step.started", step="exec")
    assert await first.stop() == 0  # before the restart step ran
    assert guest.machine.runstate == "guest-panicked"

    quick = 'on_panic = ["exec", "restart"]\nexec = { command = ["true"] }'
    second = panicd(config(short_tmp, 1, quick))
    await second.wait_event("panic.resumed", guest=name)
    await second.wait_event("incident.handled", guest=name)
    await wait_for(lambda: guest.machine.runstate == "running", what="the restart, at last")
    assert await second.stop() == 0

    third = panicd(config(short_tmp, 1, quick))  # now it is done: left alone (and running)
    await third.wait_event("qmp.connected", guest=name)
    assert not third.events("panic.resumed")
    assert not third.events("panic.found_on_connect")


async def test_a_dump_that_would_not_fit_is_skipped_and_alerted(
    short_tmp: Path, mocks: Any, panicd: Start, journal: Journald
) -> None:
    name = unique("nospace")
    guest = await mocks(name)
    # Whatever other processes free meanwhile, an 8 MiB dump never fits above this reserve.
    reserve = shutil.disk_usage(short_tmp).total
    daemon = panicd(config(short_tmp, 1, daemon=f"min_free_bytes = {reserve}"))
    await daemon.wait_event("qmp.connected", guest=name)
    guest.port.write(1)
    (failed,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_FAILED.message_id, GUEST_NAME=name)
    assert "not enough space" in failed["MESSAGE"]
    assert "8388608 bytes" in failed["MESSAGE"]  # the guest's RAM, from query-memory-size-summary
    await wait_for(lambda: guest.machine.runstate == "running", what="restart after the skip")
    assert dumps_of(short_tmp, name) == []
    assert "dump-guest-memory" not in [c[1] for c in guest.received_commands]


async def test_retention_keeps_the_newest_dumps_of_a_guest(
    short_tmp: Path, mocks: Any, panicd: Start
) -> None:
    name = unique("kept")
    guest = await mocks(name)
    daemon = panicd(config(short_tmp, 1, daemon="retention = { max_per_guest = 2 }"))
    await daemon.wait_event("qmp.connected", guest=name)
    for n in range(1, 4):
        guest.port.write(1)
        await daemon.wait_event("incident.handled", guest=name, count=n)
        await wait_for(lambda: guest.machine.runstate == "running", what="restart")
    await daemon.wait_event("retention.removed")
    kept = dumps_of(short_tmp, name)
    assert len(kept) == 2
    assert all(metadata(d)["dump"]["result"] == "completed" for d in kept)


async def test_a_crash_loop_is_left_paused_and_alerted(
    short_tmp: Path, mocks: Any, panicd: Start, journal: Journald
) -> None:
    name = unique("loop")
    guest = await mocks(name)
    policy = 'on_panic = ["restart"]\nrestart = { max = 2, within = 3600 }'
    daemon = panicd(config(short_tmp, 1, policy))
    await daemon.wait_event("qmp.connected", guest=name)
    for n in (1, 2):
        guest.port.write(1)
        await daemon.wait_event("incident.handled", guest=name, count=n)
        await wait_for(lambda: guest.machine.runstate == "running", what=f"restart {n}")
    guest.port.write(1)  # the third panic within the hour
    (loop,) = await journal.find(MESSAGE_ID=AlertKind.CRASH_LOOP.message_id, GUEST_NAME=name)
    assert loop["PRIORITY"] == "2"
    assert loop["RESTARTS"] == "2"
    assert "crash loop" in loop["MESSAGE"]
    await daemon.wait_event("incident.handled", guest=name, count=3)
    assert guest.machine.runstate == "guest-panicked"
    assert [c[1] for c in guest.received_commands].count("system_reset") == 2


async def test_metrics_count_panics_dumps_restarts_and_guests(
    short_tmp: Path, mocks: Any, panicd: Start
) -> None:
    name = unique("metric")
    guest = await mocks(name)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = panicd(config(short_tmp, 2, daemon=f'metrics_listen = "127.0.0.1:{port}"'))
    await daemon.wait_event("qmp.connected", guest=name)
    await daemon.wait_event("metrics.listening")
    guest.port.write(1)
    await daemon.wait_event("incident.handled", guest=name)

    def scrape(path: str = "/metrics") -> tuple[int, str]:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    status, text = await asyncio.to_thread(scrape)
    assert status == 200
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line and not line.startswith("#")}
    assert values["panicd_panics_total"] == 1
    assert values['panicd_dumps_total{result="completed"}'] == 1
    assert values["panicd_restarts_total"] == 1
    assert values["panicd_dump_bytes_total"] > 8 * 2**20
    assert values["panicd_dump_duration_seconds_count"] == 1
    assert values['panicd_guests{state="connected"}'] == 1
    assert values['panicd_guests{state="connecting"}'] + values['panicd_guests{state="disconnected"}'] == 1
    assert (await asyncio.to_thread(scrape, "/other"))[0] == 404


async def test_a_panic_storm_loses_nothing(
    short_tmp: Path, mocks: Any, panicd: Start, journal: Journald
) -> None:
    names = [unique(f"storm{i:02d}") for i in range(30)]
    guests = [await mocks(n) for n in names]
    daemon = panicd(config(short_tmp, len(guests), 'on_panic = ["dump", "pause"]',
                           daemon="max_concurrent_dumps = 2"))
    await daemon.wait_event("qmp.connected", count=len(guests))
    for guest in guests:
        guest.port.write(1)
    # Every guest is alerted at once (before any dump could have finished)...
    for name in names:
        await journal.find(MESSAGE_ID=AlertKind.PANIC.message_id, GUEST_NAME=name)
    # ...and every one is dumped, two at a time.
    dumps = [(await completed_dumps(short_tmp, n))[0] for n in names]
    assert len({d.parent for d in dumps}) == len(names)
    assert all(g.machine.runstate == "guest-panicked" for g in guests)
    waited = sorted(metadata(d)["dump"]["waited_for_slot_seconds"] for d in dumps)
    assert waited[-1] > 0  # the limit made some wait


async def test_a_pause_right_after_a_dump_of_a_running_guest_leaves_it_paused(
    short_tmp: Path, mocks: Any, panicd: Start
) -> None:
    """QEMU resumes a guest it stopped for a dump only after DUMP_COMPLETED (mock/dump.py:
    `resume_delay` widens that moment): a `stop` sent in it would be undone."""
    name = unique("pause-after-dump")
    guest = await mocks(name)
    guest.dumper.resume_delay = 0.5
    daemon = panicd(config(short_tmp, 1, 'panic_action = "none"\non_panic = ["dump", "pause"]'))
    await daemon.wait_event("qmp.connected", guest=name)
    guest.port.write(1)  # {action: run}: the guest runs on, the dump stops it for a moment
    await daemon.wait_event("incident.handled", guest=name)
    await asyncio.sleep(guest.dumper.resume_delay + 0.2)  # past QEMU's own resume
    assert guest.machine.runstate == "paused"


async def test_a_restart_right_after_a_dump_of_a_running_guest_does_not_abort_qemu(
    short_tmp: Path, mocks: Any, panicd: Start
) -> None:
    """A reset while QEMU 7.2 still shows save-vm aborts it ("invalid runstate transition
    save-vm -> prelaunch"), as the mock does; panicd waits for QEMU's own resume first."""
    name = unique("restart-after-dump")
    guest = await mocks(name)
    guest.dumper.resume_delay = 0.5
    daemon = panicd(config(short_tmp, 1, 'panic_action = "none"\non_panic = ["dump", "restart"]'))
    await daemon.wait_event("qmp.connected", guest=name)
    guest.port.write(1)
    await daemon.wait_event("incident.handled", guest=name)
    assert guest.machine.exit_status is None, daemon.tail()
    assert guest.machine.runstate == "running"
    assert daemon.events("step.done", step="restart")
    assert not daemon.events("step.failed")
