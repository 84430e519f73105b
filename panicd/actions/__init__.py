"""Policy steps: one module per kind of action, one interface for all.

A step is an async function taking a `StepContext` and returning a small dict of what it did
(logged with the step's `step.done` event). It raises `StepFailed` (or `DumpFailed`) with the
command sent and QEMU's reply when it fails; the responder alerts and goes on to the next step.

    dump                              dump.py   dump-guest-memory into a file panicd opens
    pause, resume, restart, poweroff  power.py  stop / cont / system_reset+cont / quit
    exec                              hook.py   the operator's command, event in its environment
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from panicd.alerts import Alerter
from panicd.config import Policy, RestartLimit
from panicd.dumps import DumpSlots, DumpStore
from panicd.events import DumpCompletedData, GuestIdentity, Incident
from panicd.metrics import Metrics
from panicd.qmp import QmpSession


class GuestHandle(Protocol):
    """What a step may ask of the guest's monitor."""

    @property
    def identity(self) -> GuestIdentity: ...

    def session(self) -> QmpSession:
        """The live QMP session; raises StepFailed-compatible QmpCommandError when disconnected."""
        ...

    def expect_dump_completed(self) -> asyncio.Future[DumpCompletedData]:
        """A future resolved by the next DUMP_COMPLETED event of this guest."""
        ...


class RestartBudget:
    """When one guest was restarted by panicd lately: the crash-loop guard's memory."""

    def __init__(self) -> None:
        self._times: list[float] = []

    def allow(self, limit: RestartLimit | None, now: float) -> bool:
        """Whether one more restart fits `limit`; recent ones are counted, old ones forgotten."""
        if limit is None:
            return True
        self._times = [t for t in self._times if now - t < limit.within]
        return len(self._times) < limit.max

    def spent(self, now: float) -> None:
        self._times.append(now)


@dataclass
class StepContext:
    incident: Incident
    policy: Policy
    guest: GuestHandle
    dumps: DumpStore
    #: Host-wide limit on dumps running at once (max_concurrent_dumps).
    dump_slots: DumpSlots
    alerter: Alerter
    #: This guest's restarts, for the crash-loop guard (policy `restart`).
    restarts: RestartBudget = field(default_factory=RestartBudget)
    metrics: Metrics = field(default_factory=Metrics)
    #: Set by a successful `dump` step, for later steps (exec's PANICD_DUMP).
    dump_path: Path | None = None
    notes: dict[str, Any] = field(default_factory=dict)


Step = Callable[[StepContext], Awaitable[dict[str, Any]]]


def registry() -> dict[str, Step]:
    """Every step by its config name."""
    from panicd.actions import dump, hook, power  # noqa: PLC0415 - they import this module

    return {
        "dump": dump.dump,
        "pause": power.pause,
        "resume": power.resume,
        "restart": power.restart,
        "poweroff": power.poweroff,
        "exec": hook.run_hook,
    }
