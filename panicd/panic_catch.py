"""An incident waiting for the panic its own NMI causes.

The `nmi` step injects an NMI into a hung guest; a Linux guest booted with
`unknown_nmi_panic=1` then panics. That GUEST_PANICKED belongs to the incident that injected
the NMI (its `wait_panic` step waits for it, its next steps dump the panicked guest): it must
not become an incident of its own, whose on_panic steps would dump and pause the guest behind
the first incident's back.

    nmi step ──> open(incident)        the same incident asking again gets the same future
    GUEST_PANICKED ──> take(...)       resolves it: the detector hands the panic over
    incident done ──> release(...)     (the worker); a RESET or a new connection: drop()

The catch stays open after `wait_panic` gives up, until the incident is done: a guest slow to
panic on its NMI would otherwise raise a panic incident queued behind this one, whose dump and
pause would then hit the guest this incident had restarted meanwhile. A RESET closes it (the
guest that took the NMI is gone: what panics after it is a new panic), as does a new
connection (a panic on another connection's QEMU would be a guess).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from panicd.events import CaughtPanic, PanickedData


class PanicCatch:
    """At most one incident per guest waits for its NMI's panic: one incident runs at a time."""

    def __init__(self) -> None:
        self._open: tuple[str, asyncio.Future[CaughtPanic]] | None = None

    def open(self, incident_id: str) -> asyncio.Future[CaughtPanic]:
        """The future the guest's next GUEST_PANICKED resolves, for `incident_id`."""
        if self._open is not None:
            owner, caught = self._open
            if owner == incident_id and not caught.cancelled():
                return caught
            self.drop()
        caught = asyncio.get_running_loop().create_future()
        self._open = (incident_id, caught)
        return caught

    def take(self, data: PanickedData, raw: dict[str, Any]) -> tuple[str, CaughtPanic] | None:
        """This GUEST_PANICKED, for the incident waiting for it: (its id, the panic); None
        when no incident waits (the panic is an incident of its own)."""
        if self._open is None or self._open[1].done():
            return None
        owner, caught = self._open
        panic = CaughtPanic(data=data, raw_event=raw, received_at=time.time())
        caught.set_result(panic)
        return owner, panic

    def release(self, incident_id: str) -> None:
        """Incident `incident_id` is done: its catch, if still open, closes."""
        if self._open is not None and self._open[0] == incident_id:
            self.drop()

    def drop(self) -> None:
        """Close the catch, whoever holds it (a RESET, a new connection)."""
        if self._open is not None:
            self._open[1].cancel()  # no-op once resolved
            self._open = None
