"""The incident record: one typed account of a panic, from the event to the evidence.

An incident is created when panicd detects a panic (or a crash-loaded report), is made durable
in the store (store/) before its first step changes the guest, gains one `StepResult` per
policy step as the steps run, and is `done` once they all have. It is what `panicd incidents`
lists, what `panicd status` shows as a guest's last incident, what the crash-loop budget counts
restarts from, and what a restarted panicd resumes an interrupted panic from.

    IncidentRecord                   incident.py
    ├── id, guest (GuestRecord: base.py), instance (the QEMU process), kind, detection, action,
    │   seen_at
    ├── state: open ──(every step has run)──> done
    ├── steps: [StepResult]          steps.py      name, ok, started_at, seconds, error, command,
    │                                              reply, skipped, guest_gone, and what it did:
    │                                              dump | power | hook | nmi | wait_panic
    ├── dump: DumpSummary | None     evidence.py   path, format, bytes, seconds, result,
    │                                              panic_reason (all of it: `<dump>.json`)
    ├── console: ConsoleMark | None  evidence.py   the guest's console log, and how far it went
    │                                              at the panic
    ├── crash: CrashSighting | None  evidence.py   the crash title and signature, from the dump,
    │                                              the console log or the bugcheck, and whether
    │                                              this host had seen it before
    ├── bugcheck: BugCheck | None    bugcheck.py   a Windows guest's bugcheck: code, name, four
    │                                (panicd's)    parameters
    ├── caught_panic                 steps.py      the GUEST_PANICKED its nmi (or wait_panic)
    │                                              step caught
    ├── rebooted_itself, crash_loop  the guest reset itself after it (counted for CRASH_LOOP)
    └── crash_loaded_at, same_crash_as   one crash the guest reported twice in one boot

The modules, each importing only those above it:

    base.py      the strict base every record shares; GuestRecord (an incident's, a dump's guest)
    evidence.py  `<dump>.json` (DumpRecord: DumpIncident, DumpInfo, TriageResult), DumpSummary,
                 ConsoleMark, CrashSighting; MAX_TITLE and TitleSource
    steps.py     StepResult, one StepDetail per kind of step, CaughtPanicRecord; jsonable
    incident.py  IncidentRecord and IncidentState; qemu_instance

Models are pydantic: they are validated where they enter (a row read back from the store, a
step's outcome), and passed as models inside panicd, never as dicts read by key.
"""

from panicd.records.base import GuestRecord
from panicd.records.evidence import (
    MAX_TITLE,
    ConsoleMark,
    CrashSighting,
    DumpIncident,
    DumpInfo,
    DumpRecord,
    DumpSummary,
    TitleSource,
    TriageResult,
)
from panicd.records.incident import IncidentRecord, IncidentState, qemu_instance
from panicd.records.steps import (
    CaughtPanicRecord,
    DumpStepDetail,
    HookStepDetail,
    NmiStepDetail,
    PowerStepDetail,
    StepDetail,
    StepResult,
    WaitPanicStepDetail,
    jsonable,
)

__all__ = [
    "MAX_TITLE",
    "CaughtPanicRecord",
    "ConsoleMark",
    "CrashSighting",
    "DumpIncident",
    "DumpInfo",
    "DumpRecord",
    "DumpStepDetail",
    "DumpSummary",
    "GuestRecord",
    "HookStepDetail",
    "IncidentRecord",
    "IncidentState",
    "NmiStepDetail",
    "PowerStepDetail",
    "StepDetail",
    "StepResult",
    "TitleSource",
    "TriageResult",
    "WaitPanicStepDetail",
    "jsonable",
    "qemu_instance",
]
