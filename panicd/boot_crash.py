"""One crash, reported more than once in a boot: kept as one incident.

A guest can tell QEMU about the same crash several ways, and QEMU passes each one on:

    Windows, hv-crash + virtio-win pvpanic, crash dump enabled
        GUEST_PANICKED {info: hyper-v}   the Hyper-V crash MSRs (the bugcheck)
        GUEST_CRASHLOADED                the pvpanic driver, as the dump begins
    Windows, hv-crash + pvpanic, no crash dump
        GUEST_PANICKED                   pvpanic's own report, no information
        GUEST_PANICKED {info: hyper-v}   the crash MSRs

virtio-win's pvpanic sends CRASHLOADED when a crash dump is enabled, else PANICKED; with QEMU's
panic action none ({action: run}) the guest runs on and every report arrives. `BootCrash` keeps
the first crash incident seen on this QMP connection since the guest last reset, and says what a
later report of it is:

    the other kind, after it, or a panic bringing the bugcheck the first panic lacked
        ──> folded into it: `crash_loaded_at`, or its bugcheck added; but a panic QEMU did not
            let run on (it paused the guest) needs its steps: an incident, `same_crash_as` the
            first, counted once with it
    the same kind, latched (a duplicate the detector drops) ──> its bugcheck added, if any
    a panic an NMI step caught ──> the crash of its (watchdog or manual) incident
    RESET, a new connection ──> forgotten: a crash found on connect may be of an earlier boot

A bugcheck added is sighted as the incident's crash title (signatures.py), once.
"""

from __future__ import annotations

import datetime as dt

import structlog

from panicd.bugcheck import decode
from panicd.events import Detection, Incident, IncidentKind, PanickedData
from panicd.records import IncidentRecord
from panicd.respond import PanicResponder
from panicd.store import IncidentStore

log = structlog.get_logger("panicd.monitor")

_CRASHES = (IncidentKind.PANIC, IncidentKind.CRASH_LOADED)


class BootCrash:
    """The guest's crash of this boot (as this connection saw it), and its later reports."""

    def __init__(self, *, store: IncidentStore, responder: PanicResponder,
                 latched: set[IncidentKind]) -> None:
        self.store = store
        self.responder = responder
        #: The detector's latch (shared): a report folded here latches its kind there.
        self._latched = latched
        self.record: IncidentRecord | None = None

    def forget(self) -> None:
        """RESET, or a new connection: whatever crashes next is a new crash."""
        self.record = None

    def raised(self, incident: Incident, record: IncidentRecord) -> None:
        """An incident was raised: the first crash seen on this connection is this boot's."""
        if (self.record is None and incident.kind in _CRASHES
                and incident.detection is Detection.EVENT):
            self.record = record

    def caught(self, record: IncidentRecord) -> None:
        """An NMI step's incident caught the guest's panic: that is this boot's crash."""
        if self.record is None:
            self.record = record

    def reported_again(self, kind: IncidentKind, data: PanickedData) -> bool:
        """A crash event that is no duplicate of its own kind: True when it is this boot's
        crash reported again and needs no incident of its own (see the module's docstring);
        `same_crash_as` names the crash when it needs one all the same."""
        first = self.record
        if first is None or not self._again(first, kind, data):
            return False
        if kind is IncidentKind.PANIC and data.action != "run":
            return False  # QEMU paused the guest (or powered it off): it needs its steps
        self._latched.add(kind)
        if kind is IncidentKind.CRASH_LOADED:
            first.crash_loaded_at = dt.datetime.now(dt.UTC)
        else:
            self._add_bugcheck(first, data)
        self.store.save(first)
        log.warning("crash.reported_again", incident=first.id, qmp_event=kind.value,
                    action=data.action)
        return True

    def same_crash_as(self, kind: IncidentKind, data: PanickedData) -> str | None:
        """The incident a new incident of `kind` is the same crash as, if any."""
        first = self.record
        return first.id if first is not None and self._again(first, kind, data) else None

    @staticmethod
    def _again(first: IncidentRecord, kind: IncidentKind, data: PanickedData) -> bool:
        """Whether this report is `first`'s crash again: a report of the other kind, or a
        panic bringing the bugcheck a first panic lacked (pvpanic's own report came first; under
        panicd's pause the crash MSRs' arrives only once the guest was resumed)."""
        if first.kind is not kind:
            return True
        return (kind is IncidentKind.PANIC and first.bugcheck is None
                and decode(data.info) is not None)

    def duplicate(self, kind: IncidentKind, data: PanickedData) -> None:
        """A report the detector drops as a duplicate of its kind: its bugcheck, if the crash's
        incident lacked one (pvpanic's PANICKED, then the crash MSRs' with the bugcheck)."""
        first = self.record
        if first is not None and first.kind is kind and self._add_bugcheck(first, data):
            self.store.save(first)

    def _add_bugcheck(self, first: IncidentRecord, data: PanickedData) -> bool:
        """Into `first`'s record, and sighted as its crash title (once: the detector's
        `_after_crash` sights only the bugcheck of the incident's own event)."""
        bugcheck = decode(data.info)
        if first.bugcheck is not None or bugcheck is None:
            return False
        first.bugcheck = bugcheck
        log.info("crash.bugcheck_added", incident=first.id, bugcheck=bugcheck.title)
        self.responder.spawn(self.responder.signatures.sight_bugcheck(
            first.guest, first.id, bugcheck, first.seen_at), f"bugcheck:{first.id}")
        return True
