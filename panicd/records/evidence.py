"""The evidence of a crash: the record beside each dump, and what was read out of it.

Every dump has a `<dump>.json` beside it (`DumpRecord`), written by the dump step before QEMU
is asked (result "running") and again by evidence.py once the dump is finished. Its models
allow fields they do not know, so that a record written by another panicd still loads.

    <dump>.json: DumpRecord
    ├── guest: GuestRecord (base.py)
    ├── incident: DumpIncident       id, kind, detection, action, received_at, which incident
    │                                the dump is the evidence of; console: ConsoleMark, bugcheck
    ├── event                        QEMU's event, as it came
    ├── dump: DumpInfo               path, format (and why not the one asked for), started_at,
    │                                result: running ──(QEMU wrote it)──> completed
    ├── triage: TriageResult | None  read out of the dump (or the console log, or the bugcheck)
    │                                in a child process: the crash title and signature
    └── announced                    DUMP_COMPLETED went out: nothing left to do

The incident's record (incident.py) keeps less of it: a `DumpSummary` (what `panicd incidents`
shows), the `ConsoleMark` it read the console log up to, and the `CrashSighting` of its title
(signatures.py: seen on this host before, or new).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from panicd.bugcheck import BugCheck
from panicd.records.base import GuestRecord, _Record

#: Crash titles are capped (triage/title.py cuts them at 120 characters); the models refuse
#: longer ones, so that a hostile report cannot grow the store.
MAX_TITLE = 200
#: Where a crash title came from: the dump's kernel log, the console log, or (a Windows guest)
#: the bugcheck QEMU reported with the panic (bugcheck.py).
TitleSource = Literal["dump", "console_log", "bugcheck"]


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
    #: The dump is a crash's evidence, so its title is a sighting (signatures.py). Not so an
    #: operator's dump of a guest no new crash stopped: its kernel log may hold the crash
    #: already counted (a guest left paused after its panic), or an old WARNING.
    reports_crash: bool = True


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
    #: Why `format` is not the one asked for (QEMU lacks or refused that one), when it is not.
    format_fallback: str | None = None
    bytes: int | None = None
    seconds: float | None = None
    result: str
    #: Why the dump failed (a dump that failed).
    error: str | None = None
    panic_reason: str | None = None
    #: Why triage read nothing out of a dump that was written (no VMCOREINFO, say).
    triage_error: str | None = None
