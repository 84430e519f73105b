"""The power steps against a mock guest held in QEMU 7.2's moment after a dump of a running
guest: DUMP_COMPLETED sent, the guest still in save-vm until QEMU's dump thread resumes it.

In-process, over a real QMP session: the steps' bound on that moment is shortened here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from panicd.actions import StepContext, power
from panicd.config import parse
from panicd.dumps import DumpSlots, DumpStore
from panicd.errors import StepFailed
from panicd.events import CaughtPanic, Detection, DumpCompletedData, GuestIdentity, Incident, IncidentKind
from panicd.evidence import Evidence
from panicd.metrics import Metrics
from panicd.mock import MockGuest
from panicd.mock.dump import DumpStatus
from panicd.mock.machine import RunState
from panicd.qmp import QmpSession

GUEST = GuestIdentity(name="g", socket="/unused")


class Alerts:
    def send(self, alert: object) -> None:
        pass


class Handle:
    identity = GUEST

    def __init__(self, session: QmpSession) -> None:
        self._session = session

    def session(self) -> QmpSession:
        return self._session

    def expect_dump_completed(self) -> asyncio.Future[DumpCompletedData]:
        raise AssertionError("no dump here")

    def catch_panic(self, incident_id: str) -> asyncio.Future[CaughtPanic]:
        raise AssertionError("no panic here")


@pytest.fixture
async def held(short_tmp: Path) -> AsyncIterator[tuple[MockGuest, StepContext]]:
    """A running guest that QEMU stopped for a dump now ended, and has not resumed yet."""
    guest = MockGuest(name="g", memory_bytes=8 * 2**20)
    await guest.start(short_tmp / "g.qmp")
    session = await QmpSession.open(short_tmp / "g.qmp", name="g", on_event=lambda _: None,
                                    connect_timeout=5, command_timeout=5)
    guest.machine.vm_stop(RunState.SAVE_VM)
    guest.dumper.status = DumpStatus.COMPLETED
    ctx = StepContext(
        incident=Incident(kind=IncidentKind.PANIC, guest=GUEST, detection=Detection.EVENT,
                          action="run"),
        policy=parse("").policy_for("g"), guest=Handle(session), dumps=DumpStore(short_tmp),
        dump_slots=DumpSlots(1), alerter=Alerts(),
        evidence=Evidence(dumps=DumpStore(short_tmp), alerter=Alerts(),
                          metrics=Metrics()))
    yield guest, ctx
    await session.close()
    await guest.stop()


@pytest.mark.parametrize("step", [power.pause, power.restart])
async def test_a_step_waits_for_qemus_resume_after_the_dump(
        held: tuple[MockGuest, StepContext], step: object) -> None:
    guest, ctx = held
    asyncio.get_running_loop().call_later(0.3, guest.machine.vm_start)  # QEMU's own resume
    detail = await step(ctx)  # type: ignore[operator]
    assert guest.machine.exit_status is None  # a reset in save-vm aborts QEMU 7.2
    expected = "paused" if step is power.pause else "running"
    assert guest.machine.runstate == expected
    # What the guest was in when the step acted on it: running again after the dump.
    assert detail.status_before == "running"


@pytest.mark.parametrize(("step", "spared"), [(power.pause, "stopping it now would be undone"),
                                              (power.restart, "would abort QEMU")])
async def test_a_guest_that_stays_in_save_vm_fails_the_step_and_is_left_alone(
        held: tuple[MockGuest, StepContext], step: object, spared: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    guest, ctx = held
    monkeypatch.setattr(power, "SAVE_VM_RESUME_SECONDS", 0.3)
    with pytest.raises(StepFailed, match=spared):
        await step(ctx)  # type: ignore[operator]
    assert guest.machine.exit_status is None
    assert guest.machine.runstate == "save-vm"
    assert ("system_reset" not in [c[1] for c in guest.received_commands])
