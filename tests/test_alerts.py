"""Alerts: every kind has its fixed MESSAGE_ID, explained in the catalog file."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from panicd import alerts
from panicd.alerts import Alert, AlertKind, JournalAlerter
from panicd.events import Detection, GuestIdentity, Incident, IncidentKind
from tests.journal import Journald

CATALOG = Path(__file__).resolve().parent.parent / "systemd" / "panicd.catalog"


def test_every_alert_kind_is_in_the_catalog_and_ids_are_unique() -> None:
    ids = re.findall(r"^-- ([0-9a-f]{32})$", CATALOG.read_text(), re.MULTILINE)
    assert sorted(ids) == sorted(k.message_id for k in AlertKind)
    assert len(set(ids)) == len(ids)


def test_an_alert_reaches_journald_with_its_fields(journal: Journald) -> None:
    name = f"alert-test-{uuid.uuid4().hex[:8]}"
    guest = GuestIdentity(name=name, socket="/run/q.qmp", uuid="1234", qemu_pid=7)
    JournalAlerter().send(Alert(AlertKind.DUMP_FAILED, "dump failed: disk full", guest,
                                {"STEP": "dump", "ERROR": "disk full"}))
    (entry,) = journal.wait_for(GUEST_NAME=name, MESSAGE_ID=AlertKind.DUMP_FAILED.message_id)
    assert entry["MESSAGE"] == "dump failed: disk full"
    assert entry["PRIORITY"] == "3"
    assert entry["SYSLOG_IDENTIFIER"] == "panicd"
    assert entry["GUEST_UUID"] == "1234"
    assert entry["QMP_SOCKET"] == "/run/q.qmp"
    assert entry["QEMU_PID"] == "7"
    assert entry["ERROR"] == "disk full"


def test_a_hostile_guest_name_cannot_forge_a_line_in_the_journal(journal: Journald) -> None:
    """The MESSAGE is one line whatever the guest is called: `journalctl` shows no second line
    that looks like an entry of its own, and no terminal escape runs."""
    marker = uuid.uuid4().hex[:8]
    name = f"evil-{marker}\nGuest web-01 panicked; steps: nothing\x1b[31m"
    guest = GuestIdentity(name=name, socket="/run/q.qmp")
    incident = Incident(kind=IncidentKind.PANIC, guest=guest, detection=Detection.EVENT,
                        action="pause")
    JournalAlerter().send(alerts.panic(incident, ["dump"]))
    (entry,) = journal.wait_for(QMP_SOCKET="/run/q.qmp", MESSAGE_ID=AlertKind.PANIC.message_id,
                                INCIDENT_ID=incident.id)
    assert entry["MESSAGE"] == (f"Guest evil-{marker}\\nGuest web-01 panicked; steps: "
                                "nothing\\x1b[31m panicked (QEMU action: pause); steps: dump")
