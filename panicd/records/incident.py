"""The incident record: one panic's account, from the event to the evidence, and its state.

An incident is created `open` when panicd detects a panic (or a crash-loaded report), made
durable in the store before its first step changes the guest, and is `done` once every step
of its policy has run (whatever each one's outcome):

    open ──(every step has run)──> done

A panicd stopped half way leaves it open, and the next one resumes it. `instance` names the QEMU
process that reported it (`qemu_instance`): a recycled pid does not match it, and a guest its
orchestrator restarted is a new instance.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from pathlib import Path

from pydantic import Field, JsonValue

from panicd.bugcheck import BugCheck, decode
from panicd.events import Detection, Incident, IncidentKind
from panicd.records.base import GuestRecord, _Record
from panicd.records.evidence import ConsoleMark, CrashSighting, DumpSummary
from panicd.records.steps import CaughtPanicRecord, StepResult


class IncidentState(StrEnum):
    #: Seen; its steps have not all run (panicd may have stopped half way: it is resumed).
    OPEN = "open"
    #: Every step of its policy has run (whatever each one's outcome).
    DONE = "done"


class IncidentRecord(_Record):
    id: str
    guest: GuestRecord
    #: The QEMU process that reported it (socket, pid, pid start time); None when unknown.
    instance: str | None = None
    kind: IncidentKind
    detection: Detection
    #: QEMU's panic action as reported (pause, poweroff, run); None when found on connect.
    action: str | None = None
    #: When panicd first saw it (seconds since the epoch).
    seen_at: float
    state: IncidentState = IncidentState.OPEN
    #: The guest ran again since (RESUME or RESET): a guest-panicked one now is a new panic.
    cleared: bool = False
    steps: list[StepResult] = Field(default_factory=list)
    dump: DumpSummary | None = None
    event: dict[str, JsonValue] | None = None
    #: The guest's console log, marked when the incident's steps began (`console_log`).
    console: ConsoleMark | None = None
    #: The crash's title and signature (from the dump's triage, else the console log).
    crash: CrashSighting | None = None
    #: A manual incident's steps as the operator asked them, and who asked (uid).
    requested_steps: list[str] | None = None
    requested_by: int | None = None
    #: A Windows guest's bugcheck, decoded from the event's Hyper-V crash information.
    bugcheck: BugCheck | None = None
    #: The panic this incident's NMI caused (detection.IncidentDetector.catch_panic).
    caught_panic: CaughtPanicRecord | None = None
    #: The guest reset itself after this crash (RESET {guest: true}), panicd did not.
    rebooted_itself: bool = False
    #: This crash raised CRASH_LOOP for a guest that reboots itself: how many crashes, this one
    #: included, the guest had had within the policy's `restart.within`.
    crash_loop: int | None = None
    #: The guest's own crash dump began for this panic, in the same boot (GUEST_CRASHLOADED
    #: after GUEST_PANICKED: Windows with hv-crash and the pvpanic driver reports one bugcheck
    #: both ways). One crash, one incident: the later report is kept here.
    crash_loaded_at: dt.datetime | None = None
    #: This panic is the crash an earlier incident of the same boot reported as crash-loaded
    #: (the other order): handled, since it stopped the guest, but counted once, with that one.
    same_crash_as: str | None = None

    @classmethod
    def of(cls, incident: Incident, instance: str | None) -> IncidentRecord:
        return cls(id=incident.id, guest=GuestRecord.of(incident.guest), instance=instance,
                   kind=incident.kind, detection=incident.detection, action=incident.action,
                   seen_at=incident.received_at, event=incident.raw_event,
                   requested_steps=(list(incident.requested_steps)
                                    if incident.requested_steps is not None else None),
                   requested_by=incident.requested_by, bugcheck=decode(incident.info))

    @property
    def outcome(self) -> str:
        """One word for `panicd status`: open, ok, or failed (some step failed)."""
        if self.state is IncidentState.OPEN:
            return "open"
        return "ok" if all(step.ok for step in self.steps) else "failed"

    @property
    def reboots_itself(self) -> bool:
        """A crash the guest came back from by itself, not by a panicd restart: its crash
        kernel took over (crash-loaded), QEMU let it run on (panic action none: a Windows
        guest writes MEMORY.DMP and reboots), or it reset itself afterwards."""
        if self.restarts():
            return False
        if self.kind is IncidentKind.CRASH_LOADED:
            return True
        return self.kind is IncidentKind.PANIC and (self.action == "run" or self.rebooted_itself)

    def restarts(self) -> list[float]:
        """When panicd restarted the guest for this incident (epoch seconds), for the budget."""
        return [step.started_at.timestamp() for step in self.steps
                if step.name == "restart" and step.ok and not step.skipped]


def qemu_instance(socket: str, pid: int | None) -> str | None:
    """A key for one run of one QEMU: its socket, pid and the pid's start time; None if unknown.

    A panic belongs to the QEMU process that reported it: a recycled pid does not match (its
    start time differs), and a guest restarted by its orchestrator is a new instance.
    """
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # Field 22 (starttime) counts from after the parenthesised command name.
        start = stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{socket}|{pid}|{start}"
