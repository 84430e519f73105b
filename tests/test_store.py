"""The incident store: history kept across restarts, a broken file replaced, never a crash."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest

from panicd.events import Detection, GuestIdentity, Incident, IncidentKind
from panicd.records import DumpSummary, IncidentRecord, IncidentState, StepResult
from panicd.store import FILE_NAME, SCHEMA_VERSION, IncidentQueries, IncidentStore, connect


def record(guest: str = "web-01", instance: str | None = "/run/q.qmp|42|1000",
           seen_at: float | None = None) -> IncidentRecord:
    incident = Incident(kind=IncidentKind.PANIC, guest=GuestIdentity(name=guest, socket="/run/q.qmp"),
                        detection=Detection.EVENT, action="pause",
                        **({"received_at": seen_at} if seen_at is not None else {}))
    return IncidentRecord.of(incident, instance)


def restart_step(at: dt.datetime) -> StepResult:
    return StepResult(name="restart", ok=True, started_at=at, seconds=0.01,
                      detail={"status": "running"})


class Failures:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, what: str, why: str) -> None:
        self.seen.append((what, why))


async def test_an_incident_and_its_steps_outlive_the_store(tmp_path: Path) -> None:
    store = IncidentStore(tmp_path)
    await store.open()
    first = record()
    await store.create(first)
    first.steps.append(restart_step(dt.datetime.now(dt.UTC)))
    first.state = IncidentState.DONE
    store.save(first)
    await store.close()

    again = IncidentStore(tmp_path)
    await again.open()
    latest = again.latest_for_instance(first.instance)
    assert latest is not None and latest.id == first.id
    assert latest.state is IncidentState.DONE
    assert [s.name for s in latest.steps] == ["restart"]
    assert again.last_incident("web-01") == latest
    await again.close()
    db = connect(tmp_path / FILE_NAME, read_only=True)
    assert [r.id for r in IncidentQueries(db).incidents(guest="web-01")] == [first.id]
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


async def test_restarts_are_counted_across_incidents_and_restarts_of_the_store(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    store = IncidentStore(tmp_path)
    await store.open()
    for minutes_ago in (90, 30, 5):
        past = record(seen_at=(now - dt.timedelta(minutes=minutes_ago)).timestamp())
        past.steps.append(restart_step(now - dt.timedelta(minutes=minutes_ago)))
        await store.create(past)
    await store.close()
    again = IncidentStore(tmp_path)
    await again.open()
    assert len(await again.restarts("web-01", (now - dt.timedelta(hours=1)).timestamp())) == 2
    assert await again.restarts("db-01", 0) == []
    await again.close()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "newer schema"])
async def test_a_broken_store_is_moved_aside_and_replaced(tmp_path: Path, damage: str) -> None:
    path = tmp_path / FILE_NAME
    if damage == "garbage":
        path.write_bytes(b"this is not a database" * 100)
    else:
        store = IncidentStore(tmp_path)
        await store.open()
        for i in range(200):
            await store.create(record(guest=f"g{i}"))
        await store.close()
        if damage == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        else:
            with sqlite3.connect(path) as db:
                db.execute("PRAGMA user_version = 99")
    failures = Failures()
    store = IncidentStore(tmp_path, on_failure=failures)
    await store.open()
    assert [what for what, _ in failures.seen] == ["open"]
    assert "moved aside" in failures.seen[0][1]
    aside = [p for p in tmp_path.glob(f"{FILE_NAME}.broken-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1
    fresh = record()
    await store.create(fresh)  # and it works from here on
    await store.close()
    db = connect(path, read_only=True)
    assert [r.id for r in IncidentQueries(db).incidents()] == [fresh.id]
    db.close()


async def test_the_ledger_of_earlier_versions_is_imported_once(tmp_path: Path) -> None:
    ledger = tmp_path / "handled-panics.json"
    ledger.write_text(json.dumps({
        "/run/a.qmp|10|500": {"state": "pending", "at": 1_700_000_000.0},
        "/run/b.qmp|11|501": {"state": "done", "at": 1_700_000_100.0},
        "junk": "not an entry",
    }))
    store = IncidentStore(tmp_path)
    await store.open()
    pending = store.latest_for_instance("/run/a.qmp|10|500")
    done = store.latest_for_instance("/run/b.qmp|11|501")
    assert pending is not None and pending.state is IncidentState.OPEN
    assert done is not None and done.state is IncidentState.DONE
    await store.close()
    assert not ledger.exists() and (tmp_path / "handled-panics.json.imported").exists()
    again = IncidentStore(tmp_path)
    await again.open()
    db = connect(tmp_path / FILE_NAME, read_only=True)
    assert len(IncidentQueries(db).incidents()) == 2
    db.close()
    await again.close()


async def test_a_write_that_fails_is_alerted_once_and_kept_for_the_next(tmp_path: Path) -> None:
    failures = Failures()
    store = IncidentStore(tmp_path, on_failure=failures)
    await store.open()
    first, second = record(guest="a"), record(guest="b")
    db = store._db
    assert db is not None
    # Another writer holds the database (a stuck process, a full disk acts alike: no write).
    blocker = sqlite3.connect(tmp_path / FILE_NAME, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    db.execute("PRAGMA busy_timeout = 0")
    await store.create(first)
    await store.create(second)
    assert [what for what, _ in failures.seen] == ["write"]  # once, not per write
    assert store.last_incident("a") is not None  # the event path still knows
    blocker.execute("ROLLBACK")
    blocker.close()
    store.save(second)
    await store.flush()
    await store.close()
    db2 = connect(tmp_path / FILE_NAME, read_only=True)
    assert {r.guest.name for r in IncidentQueries(db2).incidents()} == {"a", "b"}
    db2.close()


async def test_without_a_state_dir_incidents_live_in_memory(tmp_path: Path) -> None:
    store = IncidentStore(None)
    await store.open()
    incident = record()
    await store.create(incident)
    assert store.latest_for_instance(incident.instance) == incident
    await store.close()
    assert not list(tmp_path.iterdir())


async def test_old_incidents_whose_dumps_are_gone_are_pruned(tmp_path: Path) -> None:
    day = 86400.0
    now = dt.datetime.now(dt.UTC).timestamp()
    kept_dump = tmp_path / "kept.elf"
    kept_dump.write_bytes(b"\x7fELF")
    store = IncidentStore(tmp_path)
    await store.open()
    old_gone, old_kept, old_open, recent = (record(guest=g, seen_at=now - d * day)
                                            for g, d in (("gone", 100), ("kept", 100),
                                                         ("open", 100), ("recent", 1)))
    old_gone.dump = DumpSummary(path=str(tmp_path / "removed.elf"), result="completed")
    old_kept.dump = DumpSummary(path=str(kept_dump), result="completed")
    for r in (old_gone, old_kept, recent):
        r.state = IncidentState.DONE
    for r in (old_gone, old_kept, old_open, recent):
        await store.create(r)
    assert await store.prune(90) == 1
    await store.close()
    db = connect(tmp_path / FILE_NAME, read_only=True)
    assert {r.guest.name for r in IncidentQueries(db).incidents()} == {"kept", "open", "recent"}
    db.close()
