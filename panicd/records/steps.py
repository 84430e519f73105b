"""A policy step, as it ran: one `StepResult` per step of an incident.

A step (actions/) returns a `StepDetail` of what it did; the responder (respond.py) wraps it,
with whether the step was ok, when it started, how long it took and, when QEMU is what failed,
the command sent and QEMU's reply, in a `StepResult`, which the incident keeps in its `steps`.

    StepResult    name, ok, started_at, seconds, error, command, reply, skipped, guest_gone
    ├── dump:       DumpStepDetail        the file: path, format, bytes, result
    ├── power:      PowerStepDetail       pause, resume, restart, poweroff: the runstates
    ├── hook:       HookStepDetail        exec: the command's returncode and output
    ├── nmi:        NmiStepDetail         the runstate found, and whether it was resumed
    ├── wait_panic: WaitPanicStepDetail   the GUEST_PANICKED it was handed, or none
    └── detail      what a record of an earlier panicd held that fits none of these (shown only)

At most one detail field is set: the one named by the detail's `field_name`. A step stored by
an earlier panicd, with a `detail` dict, loads into these fields (`_from_legacy_detail`).

The GUEST_PANICKED an `nmi` or `wait_panic` step caught (`CaughtPanicRecord`) is kept once, in
the incident's `caught_panic` (detection.py's `catch_panic`), not in the step. `jsonable` makes
what QEMU sent or was sent (a command, a reply, an event) fit a record's JSON fields.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar, Literal

from pydantic import Field, JsonValue, ValidationError, model_validator

from panicd.records.base import _Record
from panicd.records.evidence import DumpSummary


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
    #: Why `format` is not the one asked for (QEMU lacks or refused that one), when it is not.
    format_fallback: str | None = None
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
            return DumpSummary(path=self.dump.path, format=self.dump.format,
                               format_fallback=self.dump.format_fallback, bytes=self.dump.bytes,
                               seconds=self.dump.seconds, result=self.dump.result, error=self.error)
        return DumpSummary(result="skipped" if self.skipped else "completed" if self.ok else "failed",
                           error=self.error)


def jsonable(value: Any) -> JsonValue:
    """A step's detail or QEMU's reply made JSON-safe (paths and such as strings)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)
