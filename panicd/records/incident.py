"""The incident record: one typed account of a panic, from the event to the evidence.

An incident is created when panicd detects a panic (or a crash-loaded report), is made durable
in the store (store.py) before its first step changes the guest, gains one `StepResult` per
policy step as the steps run, and is `done` once they all have. It is what `panicd incidents`
lists, what `panicd status` shows as a guest's last incident, what the crash-loop budget counts
restarts from, and what a restarted panicd resumes an interrupted panic from.

    IncidentRecord
    ├── id, guest (GuestRecord), instance (the QEMU process), kind, detection, action, seen_at
    ├── state: open ──(every step has run)──> done
    ├── steps: [StepResult]         name, ok, started_at, seconds, error, command, reply,
    │                               skipped, guest_gone, and what it did: dump | power | hook
    │                               | nmi | wait_panic
    ├── dump: DumpSummary | None    path, format, bytes, seconds, result, panic_reason
    ├── console: ConsoleMark | None the guest's console log, and how far it went at the panic
    ├── crash: CrashSighting | None the crash title and signature, from the dump, the console
    │                               log or the bugcheck, and whether this host had seen it before
    ├── bugcheck: BugCheck | None   a Windows guest's bugcheck: code, name, four parameters
    ├── rebooted_itself, crash_loop the guest reset itself after it (counted for CRASH_LOOP)
    └── crash_loaded_at, same_crash_as   one crash the guest reported twice in one boot

Models are pydantic: they are validated where they enter (a row read back from the store, a
step's outcome), and passed as models inside panicd, never as dicts read by key.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, model_validator

from panicd.bugcheck import BugCheck, decode
from panicd.events import Detection, GuestIdentity, Incident, IncidentKind

#: Crash titles are capped (triage/title.py cuts them at 120 characters); the models refuse
#: longer ones, so that a hostile report cannot grow the store.
MAX_TITLE = 200
#: Where a crash title came from: the dump's kernel log, the console log, or (a Windows guest)
#: the bugcheck QEMU reported with the panic (bugcheck.py).
TitleSource = Literal["dump", "console_log", "bugcheck"]


class IncidentState(StrEnum):
    #: Seen; its steps have not all run (panicd may have stopped half way: it is resumed).
    OPEN = "open"
    #: Every step of its policy has run (whatever each one's outcome).
    DONE = "done"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GuestRecord(_Record):
    name: str
    socket: str
    uuid: str | None = None
    qemu_version: str | None = None
    qemu_pid: int | None = None

    @classmethod
    def of(cls, identity: GuestIdentity) -> GuestRecord:
        return cls(**identity.as_dict())


class StepDetail(_Record):
    """What a step reports it did (its `step.done` fields): one model per kind of step."""

    #: The `StepResult` field that holds this kind of detail.
    field_name: ClassVar[str]
    #: Why the step did not do its job (still ok: it did what the situation allowed). Set by
    #: the step, moved to `StepResult.skipped` by the responder: never stored here.
    skipped: str | None = Field(default=None, exclude=True)


class DumpStepDetail(StepDetail):
    """The `dump` step's file: written (completed), or left for QEMU to finish (running)."""

    field_name: ClassVar[str] = "dump"
    path: str
    format: str | None = None
    bytes: int | None = None
    seconds: float | None = None
    #: completed: the file is whole; running: QEMU may still be writing it (orphans.py settles it).
    result: Literal["completed", "running"] = "completed"
    #: What could not be recorded of a completed dump (alert fields: a full disk, say).
    not_recorded: dict[str, str] = Field(default_factory=dict)


class PowerStepDetail(StepDetail):
    """A power step's (pause, resume, restart, poweroff) view of the guest's runstate."""

    field_name: ClassVar[str] = "power"
    status_before: str | None = None
    #: The runstate after the step; None for poweroff (QEMU is gone).
    status: str | None = None


class HookStepDetail(StepDetail):
    """The `exec` step's command, as it exited (the head of each output stream)."""

    field_name: ClassVar[str] = "hook"
    returncode: int
    stdout: str = ""
    stderr: str = ""


class NmiStepDetail(StepDetail):
    """The `nmi` step: the runstate it found, and whether it let a stopped guest run to take
    the NMI (QEMU queues it on the stopped vCPUs: actions/nmi.py)."""

    field_name: ClassVar[str] = "nmi"
    status_before: str | None = None
    resumed: bool = False
    status: str | None = None


class WaitPanicStepDetail(StepDetail):
    """The `wait_panic` step: the GUEST_PANICKED it was handed (its action, info and when),
    or none within the policy's timeout (`skipped` then says so)."""

    field_name: ClassVar[str] = "wait_panic"
    waited_seconds: float
    #: QEMU's panic action as the caught GUEST_PANICKED reported it; None: no panic came.
    panic_action: str | None = None
    panic_info: dict[str, JsonValue] | None = None
    panicked_at: dt.datetime | None = None


class CaughtPanicRecord(_Record):
    """The GUEST_PANICKED an incident's own `nmi` (or `wait_panic`) step caught: handed to that
    incident, not raised as one of its own, whenever it came before the incident was done."""

    action: str
    info: dict[str, JsonValue] | None = None
    panicked_at: dt.datetime
    #: It came after this run's `wait_panic` step had given up on it (a slow guest): the steps
    #: after that one ran on a guest that then panicked.
    late: bool = False


#: Which detail model a (legacy) step's `detail` dict is, by step name.
_DETAIL_OF_STEP: dict[str, type[StepDetail]] = {
    "dump": DumpStepDetail, "exec": HookStepDetail,
    **dict.fromkeys(("pause", "resume", "restart", "poweroff"), PowerStepDetail),
}


class StepResult(_Record):
    """One policy step of one incident, as it ran."""

    name: str
    ok: bool
    started_at: dt.datetime
    seconds: float
    #: Why it failed, for an operator.
    error: str | None = None
    #: The QMP command sent and QEMU's reply, when QEMU is what failed.
    command: dict[str, JsonValue] | None = None
    reply: JsonValue = None
    #: Why the step was skipped (QEMU powering the guest off, a crash loop, a dump already made).
    skipped: str | None = None
    #: It failed because the guest's connection was gone: it did not run at all, and the
    #: incident stays open to be resumed.
    guest_gone: bool = False
    #: What the step did, by kind of step (at most one is set).
    dump: DumpStepDetail | None = None
    power: PowerStepDetail | None = None
    hook: HookStepDetail | None = None
    nmi: NmiStepDetail | None = None
    wait_panic: WaitPanicStepDetail | None = None
    #: A record stored before these fields existed, whose `detail` did not fit them: kept as is,
    #: to be shown, never read by key. Left out of the JSON when there is none.
    detail: dict[str, JsonValue] | None = Field(default=None, exclude_if=lambda v: v is None)

    @model_validator(mode="before")
    @classmethod
    def _from_legacy_detail(cls, data: Any) -> Any:
        """A stored step of an earlier panicd: its `detail` dict into the typed fields."""
        if not isinstance(data, dict) or not isinstance(data.get("detail"), dict):
            return data
        data = dict(data)
        detail = dict(data.pop("detail"))
        skipped = detail.pop("skipped", None)
        if skipped:
            # `True` once meant "QEMU is powering the guest off", said in `error`.
            data.setdefault("skipped", skipped if isinstance(skipped, str)
                            else str(data.get("error") or "skipped"))
        data.setdefault("guest_gone", bool(detail.pop("guest_gone", False)))
        model = _DETAIL_OF_STEP.get(str(data.get("name")))
        known = {k: v for k, v in detail.items() if model is not None and k in model.model_fields}
        if model is not None and known and model.field_name not in data:
            try:
                data[model.field_name] = model.model_validate(known)
            except ValidationError:
                known = {}  # of another shape: all of it is kept in `detail`, as it was
        # What fits no field is kept, not lost.
        rest = {k: v for k, v in detail.items() if k not in known}
        if rest:
            data["detail"] = rest
        return data

    def dump_summary(self) -> DumpSummary:
        """The dump this (`dump`) step reports: its file and result, or why there is none."""
        if self.dump is not None:
            return DumpSummary(path=self.dump.path, format=self.dump.format, bytes=self.dump.bytes,
                               seconds=self.dump.seconds, result=self.dump.result, error=self.error)
        return DumpSummary(result="skipped" if self.skipped else "completed" if self.ok else "failed",
                           error=self.error)


class TriageResult(BaseModel):
    """What triage read out of a dump (triage/report.py), or why it could not (`error`).

    It comes from a child process reading guest-written memory: validated here, and every
    field optional, so that a strange report costs its fields, never the dump's record.
    """

    model_config = ConfigDict(extra="ignore")
    kernel_release: str | None = None
    panic_line: str | None = None
    panic_reason: str | None = None
    first_problem: str | None = None
    call_trace: list[str] = Field(default_factory=list)
    last_lines: list[str] = Field(default_factory=list)
    records: int = 0
    #: The crash title (triage/title.py) and its signature; None when the log holds no crash.
    title: str | None = Field(default=None, max_length=MAX_TITLE)
    signature: str | None = Field(default=None, max_length=64)
    #: The title's bug class ("WARNING", "KASAN: use-after-free Read") and blamed function.
    crash_kind: str | None = Field(default=None, max_length=MAX_TITLE)
    blamed_frame: str | None = Field(default=None, max_length=MAX_TITLE)
    #: The report looked garbled (lines of another CPU mixed in, no stack where one belongs).
    title_corrupted: bool = False
    #: Which log the title (and the rest of this report) was read from.
    source: TitleSource = "dump"
    #: Why the dump gave no title, when the console log gave it instead.
    dump_error: str | None = None
    error: str | None = None

    def journal_fields(self) -> dict[str, str]:
        """The dump alert's fields for what triage found (or why it found nothing)."""
        if self.error is not None:
            return {"TRIAGE_ERROR": self.error}
        fields = {"KERNEL_RELEASE": self.kernel_release or "", "KERNEL_LOG": "\n".join(self.last_lines)}
        if self.panic_reason:
            fields["PANIC_REASON"] = self.panic_reason
        if self.first_problem:
            fields["FIRST_PROBLEM"] = self.first_problem
        if self.dump_error:
            fields["DUMP_TRIAGE_ERROR"] = self.dump_error
        return fields


class ConsoleMark(_Record):
    """A guest's console log (`console_log`), and its size when the panic was seen: the crash
    is read from the bytes before `offset`, so that the boot a restart starts does not hide it."""

    path: str
    offset: int | None = None


class CrashSighting(_Record):
    """An incident's crash title, and what this host knew of it when it was seen.

    `count`, `guests` and `first_seen` count this incident in: a title seen for the first time
    has count 1, one guest, `new` true.
    """

    title: str = Field(max_length=MAX_TITLE)
    signature: str
    kind: str | None = None
    frame: str | None = None
    corrupted: bool = False
    #: dump, or console_log (the dump was missing, failed, or had no VMCOREINFO).
    source: TitleSource
    new: bool
    #: NEW_CRASH_SIGNATURE went out for this incident (once per title: for its first sighting,
    #: or the first after it whose alert could go out).
    alerted: bool = False
    #: Why this never-alerted title's alert was withheld (the guest's hourly budget was spent,
    #: the store could not be read); None once the title has been alerted.
    not_alerted_because: str | None = None
    count: int = 1
    guests: int = 1
    first_seen: float


class DumpInfo(BaseModel):
    """The `dump` part of `<dump>.json`."""

    model_config = ConfigDict(extra="allow")
    path: str
    format: str
    requested_format: str | None = None
    #: Why `format` is not `requested_format` (this QEMU lacks it, or refused it: win-dmp of
    #: a guest that is not Windows); None when it is the one asked for.
    format_fallback: str | None = None
    paging: bool = False
    started_at: dt.datetime
    waited_for_slot_seconds: float = 0.0
    #: running (QEMU may be writing), then completed.
    result: str = "running"
    size_bytes: int | None = None
    guest_bytes: int | None = None
    duration_seconds: float | None = None
    #: QEMU finished it while panicd was stopped or disconnected (settled on reconnect).
    completed_while_panicd_was_away: bool | None = None


class DumpIncident(BaseModel):
    """The `incident` part of `<dump>.json`: which incident the dump is the evidence of."""

    model_config = ConfigDict(extra="allow")
    id: str | None = None
    kind: str
    detection: str
    action: str | None = None
    received_at: dt.datetime
    #: The guest's console log, for a title when the dump gives none.
    console: ConsoleMark | None = None
    #: A Windows guest's bugcheck: its title when neither the dump nor a console log gives one.
    bugcheck: BugCheck | None = None


class DumpRecord(BaseModel):
    """`<dump>.json`, beside every dump: what is known of it, written before QEMU is asked
    (result "running") and again once it is finished (completed, triage, announced)."""

    model_config = ConfigDict(extra="allow")
    panicd_version: str | None = None
    guest: GuestRecord
    incident: DumpIncident
    event: dict[str, JsonValue] | None = None
    dump: DumpInfo
    triage: TriageResult | None = None
    #: Triage ran (or gave up) and DUMP_COMPLETED went out: nothing left to do for this dump.
    announced: bool = False


class DumpSummary(_Record):
    """The incident's dump, as `panicd incidents` shows it (the whole record is `<dump>.json`)."""

    path: str | None = None
    format: str | None = None
    bytes: int | None = None
    seconds: float | None = None
    result: str
    #: Why the dump failed (a dump that failed).
    error: str | None = None
    panic_reason: str | None = None
    #: Why triage read nothing out of a dump that was written (no VMCOREINFO, say).
    triage_error: str | None = None


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


def jsonable(value: Any) -> JsonValue:
    """A step's detail or QEMU's reply made JSON-safe (paths and such as strings)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)
