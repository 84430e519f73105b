"""The incident worker: done only once the steps reached the guest; never resumed twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

from panicd.actions import StepContext
from panicd.errors import StepFailed
from panicd.incident_worker import IncidentWorker
from panicd.qmp import QmpCommandError
from panicd.records import IncidentRecord, IncidentState, PowerStepDetail, StepDetail
from panicd.store import IncidentStore
from tests.test_respond import NoGuest, incident, responder


async def test_an_incident_left_open_by_a_lost_connection_is_done_once_resumed(
    tmp_path: Path,
) -> None:
    calls = 0

    async def restart(ctx: StepContext) -> StepDetail:
        nonlocal calls
        calls += 1
        if calls == 1:  # the connection is gone under the step: it did not run
            gone = QmpCommandError({"execute": "system_reset"}, "guest not connected",
                                   kind=QmpCommandError.DISCONNECTED)
            raise StepFailed(ctx.guest.identity.name, "restart", "not connected") from gone
        return PowerStepDetail(status="running")

    r, _ = responder(tmp_path, '[[policy]]\non_panic = ["restart"]', {"restart": restart})
    store = IncidentStore(None)
    worker = IncidentWorker(r, store, NoGuest(), lambda: None)
    seen = incident()
    record = IncidentRecord.of(seen, "inst")
    task = asyncio.create_task(worker.run())
    try:
        worker.submit(seen, record, None)
        while worker.holds(record.id):
            await asyncio.sleep(0.01)
        assert record.state is IncidentState.OPEN  # left open: resumed on the next connection
        worker.submit(seen, record, None)  # the resumed run
        while worker.holds(record.id):
            await asyncio.sleep(0.01)
        assert [(s.name, s.ok) for s in record.steps] == [("restart", False), ("restart", True)]
        assert record.state is IncidentState.DONE
    finally:
        task.cancel()
