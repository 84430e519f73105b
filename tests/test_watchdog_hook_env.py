"""What an `exec` hook is told when no QMP event started its incident, on a real QEMU.

A watchdog that fired while panicd was away is found on connect (QEMU's runstate `watchdog`):
its hook sees PANICD_KIND=watchdog and a PANICD_EVENT named WATCHDOG (not GUEST_PANICKED). An
operator's `panicd guest NAME run-policy` is a manual incident, which no QMP event started:
PANICD_EVENT says so (`"event": null`, who asked, the steps asked for).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_process import PanicdProcess, unique
from tests.qemu_harness import Qemus
from tests.test_dump_faults import config as guests_config
from tests.test_guest_actions import guest_cli
from tests.test_watchdog_e2e import ARM_IB700_2S, config, ib700_guest

Start = Callable[[str], PanicdProcess]
_KEYS = ("PANICD_KIND", "PANICD_EVENT", "PANICD_GUEST", "PANICD_DUMP")


def recording_hook(out: Path) -> str:
    """A policy's `exec` that writes the PANICD_* environment it was given to `out`."""
    script = (f"import json, os; open({str(out)!r}, 'w').write(json.dumps("
              f"{{k: os.environ.get(k) for k in {_KEYS!r}}}))")
    return f"exec = {{ command = [{json.dumps(sys.executable)}, \"-c\", {json.dumps(script)}] }}\n"


async def recorded(out: Path) -> dict[str, Any]:
    for _ in range(200):
        if out.exists() and out.stat().st_size:
            env: dict[str, Any] = json.loads(out.read_text())
            return env
        await asyncio.sleep(0.05)
    raise AssertionError(f"the hook wrote nothing to {out}")


async def test_a_watchdog_found_on_connect_is_told_to_the_hook_as_a_watchdog(
        qemus: Qemus, short_tmp: Path, panicd: Start) -> None:
    guest = await ib700_guest(qemus, "hook-hung")
    await guest.execute("set-action", {"watchdog": "pause"})
    await guest.qtest(ARM_IB700_2S)
    await guest.events_until("WATCHDOG")
    out = short_tmp / "env.json"

    panicd(config(short_tmp, guest, f'on_watchdog = ["exec"]\n{recording_hook(out)}'))
    env = await recorded(out)

    assert env["PANICD_KIND"] == "watchdog"
    assert json.loads(env["PANICD_EVENT"]) == {
        "event": "WATCHDOG", "data": {"action": "pause"}, "detected": "on-connect"}
    assert env["PANICD_GUEST"] == guest.name


async def test_a_manual_incident_tells_the_hook_no_qmp_event_started_it(
        qemus: Qemus, short_tmp: Path, panicd: Start,
        capsys: pytest.CaptureFixture[str]) -> None:
    guest = await qemus(unique("hook-manual"))
    out = short_tmp / "env.json"
    daemon = panicd(guests_config(short_tmp, [guest], f'on_panic = ["exec"]\n{recording_hook(out)}'))
    await daemon.wait_event("qmp.connected", guest=guest.name)

    code, stdout, stderr = await guest_cli(capsys, short_tmp, guest.name, "run-policy")
    assert code == 0, (stdout, stderr, daemon.tail())
    env = await recorded(out)

    assert env["PANICD_KIND"] == "manual"
    assert json.loads(env["PANICD_EVENT"]) == {
        "event": None, "detected": "requested", "requested_by": 0, "requested_steps": ["exec"]}
    assert env["PANICD_DUMP"] == ""
