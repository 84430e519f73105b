"""Alerts: structured journald entries with fixed MESSAGE_IDs, all built here.

An alert is what an operator (or a log shipper matching on MESSAGE_ID) acts on; panicd's
ordinary log lines are for following what it does. Every alert carries
SYSLOG_IDENTIFIER=panicd, its kind's MESSAGE_ID (explained in systemd/panicd.catalog, shown by
`journalctl -x`), and GUEST_NAME, GUEST_UUID, QMP_SOCKET, plus the kind's own fields
(PANIC_ACTION, DUMP_PATH, STEP, ...), and INCIDENT_ID when it is about an incident, so that a
journal entry leads to its record (`panicd incidents show ID`). The MESSAGE_IDs never change:
they are public. Each kind is built by one function below (`panic`, `dump_completed`, ...),
so its text and fields are the same wherever it is sent from.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import structlog

from panicd import journal
from panicd.bugcheck import BugCheck
from panicd.bugcheck import decode as decode_bugcheck
from panicd.errors import DumpFailed, StepFailed
from panicd.events import Detection, GuestIdentity, Incident, IncidentKind
from panicd.journal import JournalWriter
from panicd.records import CrashSighting, DumpRecord, GuestRecord, IncidentRecord, TriageResult
from panicd.text import journal_line, journal_text, printable

log = structlog.get_logger("panicd.alerts")


class AlertKind(Enum):
    """Each kind: (MESSAGE_ID, syslog PRIORITY)."""

    PANIC = ("079e6d4b8354425b802f1a81c3453411", 2)  # crit
    CRASH_LOADED = ("892c9b221d974ff4a61aaf9336f08654", 4)  # warning
    DUMP_COMPLETED = ("6cd00ab14a7041128cbae65a9b0fb139", 5)  # notice
    DUMP_FAILED = ("46e9d6ac440246b1a32dffc7fe49e096", 3)  # err
    STEP_FAILED = ("f693c22abd834ff3bb00443b5707bcb5", 3)  # err
    CRASH_LOOP = ("6a93dc80b886487ab0b28bad7da4eb11", 2)  # crit: restarts stopped, guest paused
    CONFIG_REJECTED = ("02cdfd2d24e449eda40bfd9e0bca15b9", 3)  # err: a reload kept the old config
    STORE_FAILED = ("1fdf9a4dcbbf4490bce3d44528aeff4f", 3)  # err: incident store replaced or unwritable
    NEW_CRASH_SIGNATURE = ("01d1e4d3cb5747b4ac8d402e56a114f6", 2)  # crit: a crash never seen here
    WATCHDOG = ("3ae472753c3e43d080781675949b4fc6", 2)  # crit: a guest's watchdog fired (hung)
    GUEST_ACTION = ("ecf0b6f473de4f4c991caea7c0bb0658", 5)  # notice: an operator's action, audited

    @property
    def message_id(self) -> str:
        return self.value[0]

    @property
    def priority(self) -> int:
        return self.value[1]


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    message: str
    #: The guest it is about; None for an alert about panicd itself (a rejected config).
    guest: GuestIdentity | None
    fields: dict[str, str] = field(default_factory=dict)

    def journal_fields(self) -> dict[str, str]:
        out = {
            "MESSAGE_ID": self.kind.message_id,
            "PRIORITY": str(self.kind.priority),
            "SYSLOG_IDENTIFIER": "panicd",
        }
        if self.guest is not None:
            out["GUEST_NAME"] = self.guest.name
            out["GUEST_UUID"] = self.guest.uuid or ""
            out["QMP_SOCKET"] = self.guest.socket
            if self.guest.qemu_pid is not None:
                out["QEMU_PID"] = str(self.guest.qemu_pid)
        # The guest's fields above stay exact, for matching (`journalctl GUEST_NAME=...`);
        # every text that may hold what a guest wrote (its kernel log, a crash title, QEMU's
        # reply) is escaped, or journald would store it as a blob nobody sees.
        out.update({key: journal_text(value) for key, value in self.fields.items()})
        out["MESSAGE"] = journal_line(self.message)
        return out


TAKE_OVER_HINT = (
    "QEMU's panic action is 'shutdown' (its default), so the guest is gone and cannot be "
    "dumped. Start QEMU with '-action panic=pause' (QEMU >= 6.0; '-no-shutdown' before), or set "
    "take_over_panic_action = true in panicd's [daemon] section."
)


def panic(incident: Incident, steps: list[str]) -> Alert:
    """An incident seen, and the steps it will take: PANIC, CRASH_LOADED, WATCHDOG, or
    GUEST_ACTION (a manual one, audited with the caller's uid)."""
    guest = incident.guest
    plan = ", ".join(steps) if steps else "nothing (alert only)"
    fields = {
        "PANIC_ACTION": incident.action or "pause",
        "PANIC_DETECTION": incident.detection.value,
        "POLICY_STEPS": " ".join(steps),
        "INCIDENT_ID": incident.id,
    }
    if incident.info is not None:
        fields["PANIC_INFO"] = incident.info.model_dump_json()
    bugcheck = decode_bugcheck(incident.info)
    if bugcheck is not None:
        fields.update(bugcheck_fields(bugcheck))
    if incident.kind is IncidentKind.WATCHDOG:
        return Alert(
            AlertKind.WATCHDOG,
            f"Guest {guest.name} hung: its watchdog fired (QEMU action: {incident.action}); "
            f"steps: {plan}",
            guest,
            fields,
        )
    if incident.kind is IncidentKind.MANUAL:
        # The control socket sends its own (with the caller's pid and the action's name):
        # this is for a manual incident alerted from anywhere else.
        return guest_action(guest, guest.name, " ".join(steps), uid=incident.requested_by,
                            pid=None, refused=None, incident_id=incident.id, steps=steps)
    if incident.kind is IncidentKind.CRASH_LOADED:
        return Alert(
            AlertKind.CRASH_LOADED,
            f"Guest {guest.name} panicked and its own crash kernel (kdump) took over; steps: {plan}",
            guest,
            fields,
        )
    if incident.qemu_exiting:
        text = f"Guest {guest.name} panicked and QEMU is powering it off: no dump possible. "
        text += TAKE_OVER_HINT
    elif incident.detection is Detection.ON_CONNECT:
        text = f"Guest {guest.name} panicked while panicd was not connected; steps: {plan}"
    elif bugcheck is not None:
        # A Windows guest: its bugcheck is what an operator knows the crash by.
        text = (f"Guest {guest.name} crashed: {bugcheck.describe()} (QEMU action: "
                f"{incident.action}); steps: {plan}")
    else:
        text = f"Guest {guest.name} panicked (QEMU action: {incident.action}); steps: {plan}"
    return Alert(AlertKind.PANIC, text, guest, fields)


def bugcheck_fields(bugcheck: BugCheck) -> dict[str, str]:
    """A Windows bugcheck's alert fields: BUGCHECK_CODE (`0x0000007E`), BUGCHECK_NAME (absent
    for a code panicd's table lacks), BUGCHECK_PARAMETERS (four, space-separated)."""
    fields = {"BUGCHECK_CODE": bugcheck.code_text, "BUGCHECK_PARAMETERS": bugcheck.parameters_text}
    if bugcheck.name:
        fields["BUGCHECK_NAME"] = bugcheck.name
    return fields


def guest_action(guest: GuestIdentity | None, guest_name: str, action: str, *, uid: int | None,
                 pid: int | None, refused: str | None, incident_id: str | None = None,
                 steps: Sequence[str] = ()) -> Alert:
    """GUEST_ACTION: an operator's `panicd guest NAME ACTION`, audited with who asked (the
    control socket peer's uid and pid, SO_PEERCRED): accepted (an incident, its steps), or
    refused and why (`refused`). `guest` is None when no guest of that name is known, or the
    caller may not act on guests: `guest_name` is then only the caller's text, and is escaped
    (`printable`: a newline in it would forge a journal line of its own), as is `action`."""
    action = printable(action)
    fields = {"REQUESTED_ACTION": action, "OUTCOME": "refused" if refused else "accepted",
              "CALLER_UID": "" if uid is None else str(uid),
              "CALLER_PID": "" if pid is None else str(pid), "POLICY_STEPS": " ".join(steps)}
    if guest is None:
        guest_name = printable(guest_name)
        fields["GUEST_NAME"] = guest_name  # the name asked for, for matching all the same
    who = f"uid {uid}" + (f" (pid {pid})" if pid is not None else "")
    if refused:
        fields["REASON"] = refused
        text = f"Guest {guest_name}: {who} asked panicd to {action}: refused: {refused}"
    else:
        plan = ", ".join(steps) if steps else "nothing"
        text = f"Guest {guest_name}: {who} asked panicd to {action}: accepted; steps: {plan}"
    if incident_id is not None:
        fields["INCIDENT_ID"] = incident_id
        text += f" (incident {incident_id})"
    return Alert(AlertKind.GUEST_ACTION, text, guest, fields)


def guest_action_refusals_unaudited(uid: int | None, count: int, limit: int,
                                    window: float) -> Alert:
    """GUEST_ACTION (OUTCOME unaudited): how many of a caller's refused requests within one
    window went without an entry of their own, past the first `limit` (guest_actions.py)."""
    who = "a caller panicd could not name" if uid is None else f"uid {uid}"
    return Alert(
        AlertKind.GUEST_ACTION,
        f"{who}: {count} more refused panicd guest requests within {window:g} s were not "
        f"audited one by one (at most {limit} are, per caller and {window:g} s)",
        None,
        {"OUTCOME": "unaudited", "CALLER_UID": "" if uid is None else str(uid),
         "UNAUDITED_REQUESTS": str(count), "WITHIN_SECONDS": f"{window:g}"},
    )


def step_failed(guest: GuestIdentity, incident_id: str | None, exc: StepFailed) -> Alert:
    """DUMP_FAILED for the dump step, STEP_FAILED for any other: what was sent, what came back."""
    fields = {"STEP": exc.step, "ERROR": exc.reason}
    if exc.command is not None:
        fields["QMP_COMMAND"] = str(exc.command.get("execute", ""))
    if exc.reply is not None:
        fields["QMP_REPLY"] = str(exc.reply)[:2000]
    if incident_id is not None:
        fields["INCIDENT_ID"] = incident_id
    if isinstance(exc, DumpFailed):
        return Alert(AlertKind.DUMP_FAILED, f"Guest {guest.name}: memory dump failed: {exc.reason}",
                     guest, fields)
    return Alert(AlertKind.STEP_FAILED, f"Guest {guest.name}: step {exc.step!r} failed: {exc.reason}",
                 guest, fields)


def orphan_failed(guest: GuestIdentity, incident_id: str | None, dump_path: str, why: str) -> Alert:
    """DUMP_FAILED for a dump left to QEMU while panicd was away, that did not make it."""
    failure = DumpFailed(guest.name, f"interrupted while panicd was away; {why}")
    alert = step_failed(guest, incident_id, failure)
    alert.fields.update(ERROR=why, DUMP_PATH=dump_path)
    return alert


def dump_completed(record: DumpRecord, not_recorded: dict[str, str],
                   crash: CrashSighting | None = None) -> Alert:
    """DUMP_COMPLETED: the crash title, the dump, what triage read, what could not be recorded."""
    dump, triage = record.dump, record.triage or TriageResult(error="triage did not run")
    size = f"{dump.size_bytes} bytes" if dump.size_bytes is not None else "size unknown"
    seconds = dump.duration_seconds
    took = f", {seconds:.1f} s" if seconds is not None else ""
    away = " (finished while panicd was away)" if dump.completed_while_panicd_was_away else ""
    # The title leads: it is what tells an operator whether this is yesterday's bug.
    lead = f"{crash.title} ({_novelty(crash)}); " if crash is not None else ""
    text = (f"Guest {record.guest.name}: {lead}memory dump written to {dump.path} ({size}, "
            f"{dump.format}{took}){away}")
    if dump.format_fallback:
        text += f"; {dump.format_fallback}"
    if triage.panic_reason:
        text += f"; Kernel panic - not syncing: {triage.panic_reason}"
    text += "".join(f"; {why}" for why in not_recorded.values())
    fields = {"DUMP_PATH": dump.path, "DUMP_FORMAT": dump.format,
              "DUMP_BYTES": str(dump.size_bytes or 0),
              "DUMP_SECONDS": f"{seconds:.3f}" if seconds is not None else "",
              **triage.journal_fields(), **not_recorded}
    if dump.format_fallback:
        fields["DUMP_REQUESTED_FORMAT"] = dump.requested_format or ""
        fields["DUMP_FORMAT_FALLBACK"] = dump.format_fallback
    if crash is not None:
        fields.update(crash_fields(crash))
    if record.incident.id is not None:
        fields["INCIDENT_ID"] = record.incident.id
    return Alert(AlertKind.DUMP_COMPLETED, text, _identity(record.guest), fields)


def new_crash_signature(guest: GuestRecord, incident_id: str | None, crash: CrashSighting,
                        dump: str | None) -> Alert:
    """NEW_CRASH_SIGNATURE: a crash title this host has never seen (a new bug, likely)."""
    where = f"; dump {dump}" if dump else ""
    fields = crash_fields(crash)
    if dump:
        fields["DUMP_PATH"] = dump
    if incident_id is not None:
        fields["INCIDENT_ID"] = incident_id
    return Alert(AlertKind.NEW_CRASH_SIGNATURE,
                 f"Guest {guest.name}: new crash signature: {crash.title}{where}",
                 _identity(guest), fields)


def crash_fields(crash: CrashSighting) -> dict[str, str]:
    """The fields every alert about a titled crash carries."""
    return {"CRASH_TITLE": crash.title, "CRASH_SIGNATURE": crash.signature,
            "CRASH_TITLE_SOURCE": crash.source,
            "SIGNATURE_NEW": "true" if crash.new else "false",
            "SIGNATURE_COUNT": str(crash.count), "SIGNATURE_GUESTS": str(crash.guests),
            "SIGNATURE_FIRST_SEEN": _utc(crash.first_seen)}


def _novelty(crash: CrashSighting) -> str:
    if crash.new:
        return "new"
    times = "once before" if crash.count == 2 else f"{crash.count - 1} times before"
    guests = "1 guest" if crash.guests == 1 else f"{crash.guests} guests"
    return f"seen {times}, on {guests}, since {_utc(crash.first_seen)}"


def _utc(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def crash_loop(guest: GuestIdentity, incident_id: str, restarts: int, within: float) -> Alert:
    """CRASH_LOOP: the restart budget is spent; the guest is left paused for a person."""
    return Alert(
        AlertKind.CRASH_LOOP,
        # "crashed": the restarts may follow panics and watchdogs alike (on_watchdog restarts).
        f"Guest {guest.name} is in a crash loop: it crashed again after {restarts} restarts "
        f"within {within:g} s; left paused instead of restarted. Look at its dumps "
        f"(panicd incidents --guest {guest.name}), then resume it with "
        f"'panicd guest {guest.name} resume' (or restart it: 'panicd guest {guest.name} restart')",
        guest,
        {"RESTARTS": str(restarts), "WITHIN_SECONDS": f"{within:g}", "INCIDENT_ID": incident_id,
         "REBOOTED_BY": "panicd"},
    )


def self_reboot_loop(record: IncidentRecord, crashes: int, within: float) -> Alert:
    """CRASH_LOOP for a guest that reboots itself (guest_crash_loop.py): its crash kernel, or
    Windows after its MEMORY.DMP, brings it back each time; panicd restarted nothing, and does
    nothing to the guest."""
    name = record.guest.name
    return Alert(
        AlertKind.CRASH_LOOP,
        f"Guest {name} is in a crash loop: it crashed {crashes} times within {within:g} s, "
        f"rebooting itself each time (panicd did not restart it, and has left it running). "
        f"Look at its incidents (panicd incidents --guest {name}); "
        f"'panicd guest {name} poweroff' stops it",
        _identity(record.guest),
        {"CRASHES": str(crashes), "WITHIN_SECONDS": f"{within:g}", "INCIDENT_ID": record.id,
         "REBOOTED_BY": "guest"},
    )


def config_rejected(path: str, error: str) -> Alert:
    """CONFIG_REJECTED: a reload was refused; the configuration in force stays."""
    return Alert(AlertKind.CONFIG_REJECTED,
                 f"panicd kept its configuration: {path} is invalid: {error}", None,
                 {"CONFIG_FILE": path, "ERROR": error})


def store_failed(path: str, operation: str, why: str) -> Alert:
    """STORE_FAILED: the incident store was replaced or could not be written."""
    return Alert(AlertKind.STORE_FAILED,
                 f"panicd's incident store failed ({operation}): {why}; guests are still watched",
                 None, {"STORE_PATH": path, "STORE_OPERATION": operation, "ERROR": why})


def _identity(guest: GuestRecord) -> GuestIdentity:
    return GuestIdentity(name=guest.name, socket=guest.socket, uuid=guest.uuid,
                         qemu_version=guest.qemu_version, qemu_pid=guest.qemu_pid)


class Alerter(Protocol):
    def send(self, alert: Alert) -> None: ...


class JournalAlerter:
    """Sends alerts to journald through the process's JournalWriter: never blocks, never raises.

    `send` only queues (see panicd/journal.py): a stalled or absent journald costs the alert
    some delay, never the caller's next step. An alert the queue cannot hold is counted and
    said on stderr there.
    """

    def __init__(self, writer: JournalWriter | None = None) -> None:
        self._writer = writer

    def send(self, alert: Alert) -> None:
        try:
            fields = alert.journal_fields()
            writer = self._writer or journal.writer()
            queued = writer.submit("alert", alert.message, fields)
        except Exception:
            # Alerting is never worth a guest's next step: whatever went wrong is logged here.
            log.exception("alert.failed", kind=alert.kind.name, message=alert.message)
            return
        if queued:
            log.info("alert.queued", kind=alert.kind.name, message=alert.message)
        else:
            log.error("alert.dropped", kind=alert.kind.name, message=alert.message,
                      journal_fields=fields)
