"""The responder: steps in order, failures alerted, later steps still run."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from panicd import alerts
from panicd.actions import StepContext
from panicd.alerts import Alert, AlertKind
from panicd.config import parse
from panicd.dumps import DumpSlots, DumpStore
from panicd.errors import DumpFailed, StepFailed
from panicd.events import Detection, DumpCompletedData, GuestIdentity, Incident, IncidentKind
from panicd.qmp import QmpSession
from panicd.records import PowerStepDetail, StepDetail
from panicd.respond import PanicResponder, planned_steps

GUEST = GuestIdentity(name="web-01", socket="/run/qemu/web-01.qmp", uuid="u-1")


class RecordingAlerter:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)


class NoGuest:
    identity = GUEST

    def session(self) -> QmpSession:
        raise AssertionError("no QMP in these tests")

    def expect_dump_completed(self) -> asyncio.Future[DumpCompletedData]:
        raise AssertionError("no QMP in these tests")


def incident(action: str = "pause") -> Incident:
    return Incident(
        kind=IncidentKind.PANIC,
        guest=GUEST,
        detection=Detection.EVENT,
        action=action,
        raw_event={"event": "GUEST_PANICKED", "data": {"action": action}},
    )


def responder(tmp_path: Path, config: str, steps: dict[str, Any]) -> tuple[PanicResponder, RecordingAlerter]:
    alerts = RecordingAlerter()
    cfg = parse(config)
    return (
        PanicResponder(
            policy_for=cfg.policy_for,
            dumps=DumpStore(tmp_path),
            dump_slots=DumpSlots(1),
            alerter=alerts,
            steps=steps,
        ),
        alerts,
    )


async def test_a_failed_step_is_alerted_and_the_next_still_runs(tmp_path: Path) -> None:
    ran: list[str] = []

    async def failing_dump(ctx: StepContext) -> StepDetail:
        ran.append("dump")
        raise DumpFailed(ctx.guest.identity.name, "disk full", command={"execute": "dump-guest-memory"})

    async def failing_pause(ctx: StepContext) -> StepDetail:
        ran.append("pause")
        raise StepFailed(ctx.guest.identity.name, "pause", "no", command={"execute": "stop"},
                         reply={"error": {"class": "GenericError", "desc": "no"}})

    async def restart(ctx: StepContext) -> StepDetail:
        ran.append("restart")
        return PowerStepDetail(status="running")

    r, alerts = responder(tmp_path, '[[policy]]\non_panic = ["dump", "pause", "restart"]\n',
                          {"dump": failing_dump, "pause": failing_pause, "restart": restart})
    outcomes = await r.handle(incident(), NoGuest())
    assert ran == ["dump", "pause", "restart"]
    assert [o.ok for o in outcomes] == [False, False, True]
    assert [a.kind for a in alerts.alerts] == [AlertKind.DUMP_FAILED, AlertKind.STEP_FAILED]
    fields = alerts.alerts[1].journal_fields()
    assert fields["STEP"] == "pause"
    assert fields["QMP_COMMAND"] == "stop"
    assert "GenericError" in fields["QMP_REPLY"]


async def test_a_crashing_step_costs_only_itself(tmp_path: Path) -> None:
    async def buggy(ctx: StepContext) -> StepDetail:
        raise KeyError("oops")

    async def fine(ctx: StepContext) -> StepDetail:
        return PowerStepDetail(status="paused", skipped="crash loop: left paused")

    r, alerts = responder(tmp_path, '[[policy]]\non_panic = ["pause", "restart"]\n',
                          {"pause": buggy, "restart": fine})
    outcomes = await r.handle(incident(), NoGuest())
    assert [o.ok for o in outcomes] == [False, True]
    assert alerts.alerts[0].kind is AlertKind.STEP_FAILED
    assert "internal error" in alerts.alerts[0].message
    # A step's skip reason is the result's `skipped`; its detail goes in the field of its kind.
    assert outcomes[1].skipped == "crash loop: left paused"
    assert outcomes[1].power == PowerStepDetail(status="paused")
    assert (outcomes[1].dump, outcomes[1].hook) == (None, None)


async def test_when_qemu_powers_off_only_hooks_run(tmp_path: Path) -> None:
    out = tmp_path / "hook.out"
    config = (
        '[[policy]]\non_panic = ["dump", "exec", "restart"]\n'
        f'exec = {{ command = ["{sys.executable}", "-c", '
        f'"import os; open(\'{out}\', \'w\').write(os.environ[\'PANICD_EVENT\'])"] }}\n'
    )
    from panicd.actions import registry

    r, alerts = responder(tmp_path, config, registry())
    outcomes = await r.handle(incident("poweroff"), NoGuest())
    assert [(o.name, o.ok) for o in outcomes] == [("dump", False), ("exec", True), ("restart", False)]
    assert outcomes[0].skipped
    assert json.loads(out.read_text())["data"]["action"] == "poweroff"
    assert alerts.alerts == []


def test_poweroff_panic_alert_says_how_to_make_it_dumpable() -> None:
    cfg = parse("")
    alert = alerts.panic(incident("poweroff"), planned_steps(incident("poweroff"), cfg.policy_for("web-01")))
    assert alert.kind is AlertKind.PANIC
    assert alert.kind.priority == 2
    assert "-action panic=pause" in alert.message
    assert alert.journal_fields()["PANIC_ACTION"] == "poweroff"


async def test_exec_gets_the_incident_in_its_environment_and_times_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    out = tmp_path / "env.json"
    script = (
        "import json, os; json.dump({k: v for k, v in os.environ.items() "
        f"if k.startswith('PANICD_') or k == 'NOTIFY_SOCKET'}}, open('{out}', 'w'))"
    )
    config = (
        '[[policy]]\non_panic = ["exec"]\n'
        f'exec = {{ command = ["{sys.executable}", "-c", "{script}"] }}\n'
        '[[policy]]\nmatch = "never"\non_panic = []\n'
    )
    from panicd.actions import registry

    r, alerts = responder(tmp_path, config, registry())
    await r.handle(incident(), NoGuest())
    env = json.loads(out.read_text())
    assert env["PANICD_GUEST"] == "web-01"
    assert env["PANICD_UUID"] == "u-1"
    assert env["PANICD_KIND"] == "panic"
    assert env["PANICD_DUMP"] == ""
    assert "NOTIFY_SOCKET" not in env  # a hook cannot speak for panicd to systemd
    assert json.loads(env["PANICD_EVENT"])["event"] == "GUEST_PANICKED"

    slow = '[[policy]]\non_panic = ["exec"]\nexec = { command = ["sleep", "30"], timeout = 0.3 }\n'
    r, alerts = responder(tmp_path, slow, registry())
    outcomes = await asyncio.wait_for(r.handle(incident(), NoGuest()), 5)
    assert not outcomes[0].ok
    assert "timed out" in alerts.alerts[0].message


async def test_a_hook_that_leaves_a_child_behind_is_done_when_it_exits(tmp_path: Path) -> None:
    from panicd.actions import registry

    config = ('[[policy]]\non_panic = ["exec"]\n'
              'exec = { command = ["sh", "-c", "sleep 30 & echo started"], timeout = 10 }\n')
    r, alerts = responder(tmp_path, config, registry())
    outcomes = await asyncio.wait_for(r.handle(incident(), NoGuest()), 5)
    assert outcomes[0].ok, outcomes[0].error
    assert outcomes[0].hook is not None
    assert outcomes[0].hook.stdout == "started\n"
    assert alerts.alerts == []
