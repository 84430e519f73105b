"""Alerts: structured journald entries with fixed MESSAGE_IDs.

An alert is what an operator (or a log shipper matching on MESSAGE_ID) acts on; panicd's
ordinary log lines are for following what it does. Every alert carries
SYSLOG_IDENTIFIER=panicd, its kind's MESSAGE_ID (explained in systemd/panicd.catalog, shown by
`journalctl -x`), and GUEST_NAME, GUEST_UUID, QMP_SOCKET, plus the kind's own fields
(PANIC_ACTION, DUMP_PATH, STEP, ...). The MESSAGE_IDs never change: they are public.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import structlog

from panicd import journal
from panicd.events import GuestIdentity
from panicd.journal import JournalWriter

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
        out.update(self.fields)
        return out


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
