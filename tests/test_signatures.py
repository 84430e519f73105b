"""Crash signatures: new titles told from known ones, alerted once, counted per guest, bounded."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from panicd.alerts import Alert, AlertKind
from panicd.cli import main
from panicd.metrics import Metrics
from panicd.records import GuestRecord, IncidentRecord, TriageResult
from panicd.signatures import CrashSignatures, NewSignatureBudget
from panicd.store import FILE_NAME, IncidentQueries, IncidentStore, connect
from panicd.triage.title import signature_of


class RecordingAlerter:
    def __init__(self) -> None:
        self.sent: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.sent.append(alert)

    def of(self, kind: AlertKind) -> list[Alert]:
        return [a for a in self.sent if a.kind is kind]


def guest(name: str) -> GuestRecord:
    return GuestRecord(name=name, socket=f"/run/qemu/{name}.qmp")


def report(title: str) -> TriageResult:
    kind, _, frame = title.rpartition(" in ")
    return TriageResult(title=title, signature=signature_of(title), crash_kind=kind, blamed_frame=frame)


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_title_is_new_once_then_counted_with_its_guests_and_first_sighting(tmp_path: Path) -> None:
    store = IncidentStore(tmp_path)
    await store.open()
    alerter, metrics = RecordingAlerter(), Metrics()
    signatures = CrashSignatures(store, alerter, metrics)
    gpf = report("general protection fault in tipc_subscrb_delete")

    first = await signatures.sight(guest("web-01"), "i1", gpf, 1000.0, "/d/web-01/1.elf")
    second = await signatures.sight(guest("web-02"), "i2", gpf, 2000.0, "/d/web-02/2.elf")
    third = await signatures.sight(guest("web-02"), "i3", gpf, 3000.0, None)
    other = await signatures.sight(guest("web-02"), "i4", report("WARNING in f"), 3500.0, None)

    assert first is not None and second is not None and third is not None and other is not None
    assert (first.new, first.count, first.guests, first.first_seen) == (True, 1, 1, 1000.0)
    assert (second.new, second.count, second.guests, second.first_seen) == (False, 2, 2, 1000.0)
    assert (third.new, third.count, third.guests) == (False, 3, 2)
    assert other.new
    new = alerter.of(AlertKind.NEW_CRASH_SIGNATURE)
    assert [a.fields["CRASH_TITLE"] for a in new] == [gpf.title, "WARNING in f"]
    assert new[0].fields["CRASH_SIGNATURE"] == gpf.signature
    assert new[0].fields["DUMP_PATH"] == "/d/web-01/1.elf"
    assert new[0].message == (f"Guest web-01: new crash signature: {gpf.title}; dump /d/web-01/1.elf")
    assert AlertKind.NEW_CRASH_SIGNATURE.priority == 2
    assert metric(metrics, "panicd_incidents_total", signature_new="true") == 2
    assert metric(metrics, "panicd_incidents_total", signature_new="false") == 2
    await store.close()


async def test_an_incident_sighted_again_counts_and_alerts_once(tmp_path: Path) -> None:
    """A dump announced a second time (panicd died during triage) is the same sighting."""
    store = IncidentStore(tmp_path)
    await store.open()
    alerter, metrics = RecordingAlerter(), Metrics()
    signatures = CrashSignatures(store, alerter, metrics)
    crash = report("kernel BUG in panicd_crash_bug")
    once = await signatures.sight(guest("g"), "i1", crash, 10.0, "/d/1.elf")
    again = await signatures.sight(guest("g"), "i1", crash, 10.0, "/d/1.elf")
    assert once is not None and again is not None
    assert (again.new, again.count) == (True, 1)
    assert len(alerter.of(AlertKind.NEW_CRASH_SIGNATURE)) == 1
    assert metric(metrics, "panicd_incidents_total", signature_new="true") == 1
    await store.close()


async def test_the_sighting_goes_into_the_incident_record_and_outlives_a_restart(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = IncidentStore(tmp_path)
    await store.open()
    record = IncidentRecord(id="i1", guest=guest("g"), kind="panic", detection="event", seen_at=5.0)
    await store.create(record)
    await CrashSignatures(store, RecordingAlerter(), Metrics()).sight(
        guest("g"), "i1", report("WARNING in f"), 5.0, None)
    await store.close()

    reopened = IncidentStore(tmp_path)
    await reopened.open()
    alerter = RecordingAlerter()
    again = await CrashSignatures(reopened, alerter, Metrics()).sight(
        guest("h"), "i2", report("WARNING in f"), 6.0, None)
    assert again is not None and not again.new and again.count == 2
    assert alerter.of(AlertKind.NEW_CRASH_SIGNATURE) == []
    stored = reopened.last_incident("g")
    assert stored is not None and stored.crash is not None
    assert (stored.crash.title, stored.crash.new, stored.crash.source) == ("WARNING in f", True, "dump")
    await reopened.close()
    capsys.readouterr()
    assert main(["incidents", "show", "i1", "--state-dir", str(tmp_path)]) == 0
    shown = {label.strip(): value for label, value in
             (line.rsplit("  ", 1) for line in capsys.readouterr().out.splitlines() if "  " in line)}
    assert shown["crash title"].strip() == "WARNING in f"
    assert shown["crash first seen"].strip() == "1970-01-01T00:00:05Z"


async def test_past_the_hourly_limit_new_titles_are_recorded_and_counted_not_alerted(tmp_path: Path) -> None:
    store = IncidentStore(tmp_path)
    await store.open()
    alerter, metrics = RecordingAlerter(), Metrics()
    signatures = CrashSignatures(store, alerter, metrics, alerts_per_hour=3)
    sightings = [await signatures.sight(guest("hostile"), f"i{n}", report(f"WARNING in made_up_{n}"),
                                        float(n), None) for n in range(10)]
    # Another guest has a budget of its own.
    await signatures.sight(guest("quiet"), "q1", report("WARNING in real_bug"), 11.0, None)

    alerted = [a.fields["CRASH_TITLE"] for a in alerter.of(AlertKind.NEW_CRASH_SIGNATURE)]
    assert alerted == ["WARNING in made_up_0", "WARNING in made_up_1", "WARNING in made_up_2",
                       "WARNING in real_bug"]
    assert all(s is not None and s.new for s in sightings)
    assert [s.alerted for s in sightings if s is not None] == [True] * 3 + [False] * 7
    withheld = [s.not_alerted_because for s in sightings if s is not None]
    assert withheld[:3] == [None] * 3
    assert all("new_signature_alerts_per_hour" in (why or "") for why in withheld[3:])
    assert metric(metrics, "panicd_new_signature_alerts_suppressed_total") == 7
    assert metric(metrics, "panicd_incidents_total", signature_new="true") == 11
    await store.close()


def test_the_budget_refills_an_hour_after_each_alert() -> None:
    budget = NewSignatureBudget(2)
    assert budget.allow("g", now=0) and budget.allow("g", now=10)
    assert not budget.allow("g", now=3599)
    assert budget.allow("g", now=3600.5)
    assert not budget.allow("g", now=3601)
    assert NewSignatureBudget(0).allow("g", now=0) is False


async def test_while_the_store_cannot_be_read_no_title_is_alerted_as_new(tmp_path: Path) -> None:
    """Known titles are in the store: without it, "new" would be a guess (and a false page)."""
    state = tmp_path / "state"
    state.write_text("not a directory")  # the store cannot be created under it
    store = IncidentStore(state, on_failure=lambda _what, _why: None)
    await store.open()
    alerter = RecordingAlerter()
    signatures = CrashSignatures(store, alerter, Metrics())
    first = await signatures.sight(guest("g"), "i1", report("WARNING in f"), 1.0, None)
    second = await signatures.sight(guest("h"), "i2", report("WARNING in f"), 2.0, None)
    assert first is not None and second is not None
    assert (second.count, second.guests) == (2, 2)  # this run's sightings still count
    assert not first.alerted and "cannot be read" in (first.not_alerted_because or "")
    assert alerter.of(AlertKind.NEW_CRASH_SIGNATURE) == []
    await store.close()


async def test_a_title_whose_alert_a_hostile_guest_spent_is_alerted_on_its_next_sighting(
        tmp_path: Path) -> None:
    store = IncidentStore(tmp_path)
    await store.open()
    alerter = RecordingAlerter()
    signatures = CrashSignatures(store, alerter, Metrics(), alerts_per_hour=1)
    bug = report("KASAN: use-after-free Read in tcp_close")
    await signatures.sight(guest("hostile"), "h1", report("WARNING in junk"), 1.0, None)
    hidden = await signatures.sight(guest("hostile"), "h2", bug, 2.0, None)
    real = await signatures.sight(guest("trusted"), "t1", bug, 3.0, "/d/t1.elf")
    later = await signatures.sight(guest("other"), "o1", bug, 4.0, None)
    assert hidden is not None and real is not None and later is not None
    assert (hidden.new, hidden.alerted) == (True, False)
    assert (real.new, real.alerted, real.count, real.not_alerted_because) == (False, True, 2, None)
    assert (later.alerted, later.not_alerted_because) == (False, None)  # alerted once, by t1
    sent = [a.fields["CRASH_TITLE"] for a in alerter.of(AlertKind.NEW_CRASH_SIGNATURE)]
    assert sent == ["WARNING in junk", bug.title]
    (alert,) = [a for a in alerter.of(AlertKind.NEW_CRASH_SIGNATURE) if a.fields["INCIDENT_ID"] == "t1"]
    assert alert.fields["SIGNATURE_COUNT"] == "2"
    await store.close()


async def test_incidents_by_signature_lists_one_line_per_title(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = IncidentStore(tmp_path)
    await store.open()
    signatures = CrashSignatures(store, RecordingAlerter(), Metrics())
    now = time.time()
    await signatures.sight(guest("web-01"), "i1", report("WARNING in f"), now - 300, "/d/web-01/a.elf")
    await signatures.sight(guest("web-02"), "i2", report("WARNING in f"), now - 200, "/d/web-02/b.elf")
    await signatures.sight(guest("web-02"), "i3", report("WARNING in f"), now - 100, None)
    # A hostile title: escaped in the table, exact in JSON.
    await signatures.sight(guest("evil"), "i4", report("BUG: \x1b[31mred in g"), now - 50, None)
    await store.close()
    capsys.readouterr()  # the daemon side's log lines

    assert main(["incidents", "--state-dir", str(tmp_path), "--by-signature"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["SIGNATURE", "COUNT", "GUESTS"]
    assert "\x1b" not in "\n".join(lines)
    assert "BUG: \\x1b[31mred in g" in lines[1]
    assert lines[2].split()[:3] == [signature_of("WARNING in f"), "3", "2"]
    assert lines[2].split("  ")[-1].strip() == "/d/web-02/b.elf"
    assert "WARNING in f" in lines[2]

    assert main(["incidents", "--state-dir", str(tmp_path), "--by-signature", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["title"] for s in listed] == ["BUG: \x1b[31mred in g", "WARNING in f"]
    warning = listed[1]
    assert (warning["count"], warning["guests"], warning["newest_dump"], warning["newest_incident"]) \
        == (3, 2, "/d/web-02/b.elf", "i3")
    assert warning["first_seen"] == pytest.approx(now - 300)

    assert main(["incidents", "--state-dir", str(tmp_path), "--by-signature", "--json",
                 "--guest", "web-01"]) == 0
    (only,) = json.loads(capsys.readouterr().out)
    assert (only["count"], only["guests"]) == (1, 1)


def test_both_signature_new_series_are_exported_from_the_start() -> None:
    registry = Metrics().registry
    for new in ("true", "false"):
        assert registry.get_sample_value("panicd_incidents_total", {"signature_new": new}) == 0.0


async def test_a_title_is_on_disk_before_its_new_signature_alert_goes_out(tmp_path: Path) -> None:
    """Whoever NEW_CRASH_SIGNATURE sends to `panicd incidents` finds the title there."""
    store = IncidentStore(tmp_path)
    await store.open()
    record = IncidentRecord(id="i1", guest=guest("g"), kind="panic", detection="event", seen_at=5.0)
    await store.create(record)
    on_disk_at_alert: list[str | None] = []

    class ReadingAlerter(RecordingAlerter):
        def send(self, alert: Alert) -> None:
            super().send(alert)
            db = connect(tmp_path / FILE_NAME, read_only=True)
            try:
                stored = IncidentQueries(db).incident("i1")
            finally:
                db.close()
            assert stored is not None
            on_disk_at_alert.append(stored.crash.title if stored.crash else None)

    await CrashSignatures(store, ReadingAlerter(), Metrics()).sight(
        guest("g"), "i1", report("WARNING in f"), 5.0, None)
    await store.close()
    assert on_disk_at_alert == ["WARNING in f"]
