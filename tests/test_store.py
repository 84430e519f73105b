"""The incident store: history kept across restarts, a broken file replaced, never a crash."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest

from panicd.events import Detection, GuestIdentity, Incident, IncidentKind
from panicd.records import (
    DumpSummary,
    IncidentRecord,
    IncidentState,
    PowerStepDetail,
    StepResult,
)
from panicd.store import FILE_NAME, SCHEMA_VERSION, IncidentQueries, IncidentStore, connect


def record(guest: str = "web-01", instance: str | None = "/run/q.qmp|42|1000",
           seen_at: float | None = None) -> IncidentRecord:
    incident = Incident(kind=IncidentKind.PANIC, guest=GuestIdentity(name=guest, socket="/run/q.qmp"),
                        detection=Detection.EVENT, action="pause",
                        **({"received_at": seen_at} if seen_at is not None else {}))
    return IncidentRecord.of(incident, instance)


def restart_step(at: dt.datetime) -> StepResult:
    return StepResult(name="restart", ok=True, started_at=at, seconds=0.01,
                      power=PowerStepDetail(status="running"))


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


async def test_steps_stored_with_an_earlier_panicds_detail_dict_load_as_typed_fields(
    tmp_path: Path,
) -> None:
    # What panicd wrote before steps were typed: everything a step did in one `detail` dict,
    # `skipped` True or a reason, `guest_gone` a key. Such a database must keep loading.
    at = dt.datetime.now(dt.UTC)
    legacy_steps = [
        ("dump", True, None, {"skipped": "dump already made for this panic",
                              "path": "/dumps/web-01/1.elf", "result": "running"}),
        ("restart", True, None, {"skipped": "crash loop: left paused",
                                 "status_before": "guest-panicked", "status": "guest-panicked"}),
        ("restart", True, None, {"status": "running"}),
        ("exec", True, None, {"returncode": 0, "stdout": "hello\n", "stderr": ""}),
        ("poweroff", False, "QEMU is powering the guest off", {"skipped": True}),
        ("pause", False, "not connected", {"guest_gone": True}),
        ("resume", True, None, {"status": 7, "unknown": "kept as it was"}),
        ("resume", True, None, {"status": "running", "unknown": "kept beside it"}),
    ]
    store = IncidentStore(tmp_path)
    await store.open()
    stored = record(seen_at=at.timestamp())
    await store.create(stored)
    await store.close()
    document = json.loads(stored.model_dump_json())
    document["steps"] = [{"name": name, "ok": ok, "started_at": at.isoformat(), "seconds": 0.1,
                          "error": error, "command": None, "reply": None, "detail": detail}
                         for name, ok, error, detail in legacy_steps]
    with sqlite3.connect(tmp_path / FILE_NAME) as db:
        db.execute("UPDATE incidents SET record = ? WHERE id = ?", (json.dumps(document), stored.id))
    db.close()

    db = connect(tmp_path / FILE_NAME, read_only=True)
    queries = IncidentQueries(db)
    (loaded,) = queries.incidents(guest="web-01")
    dump, crash_loop, restart, hook, poweroff, pause, resume, resumed = loaded.steps
    assert dump.skipped == "dump already made for this panic"
    assert dump.dump is not None and (dump.dump.path, dump.dump.result) == ("/dumps/web-01/1.elf",
                                                                           "running")
    assert crash_loop.skipped == "crash loop: left paused"
    assert crash_loop.power == PowerStepDetail(status_before="guest-panicked",
                                               status="guest-panicked")
    assert restart.skipped is None and restart.power == PowerStepDetail(status="running")
    assert hook.hook is not None and hook.hook.stdout == "hello\n"
    assert poweroff.skipped == "QEMU is powering the guest off"
    assert pause.guest_gone and pause.power is None
    # A detail that fits no model is kept whole (shown by `panicd incidents show`), not lost.
    assert resume.power is None and resume.detail == {"status": 7, "unknown": "kept as it was"}
    assert resumed.power == PowerStepDetail(status="running")
    assert resumed.detail == {"unknown": "kept beside it"}
    assert all(step.detail is None for step in loaded.steps[:-2])
    # Only the restart that ran counts for the crash-loop budget.
    assert queries.restarts("web-01", at.timestamp() - 1) == [at.timestamp()]
    (listed,) = queries.listing(guest="web-01")
    assert listed.steps == ("dump:skipped restart:skipped restart:ok exec:ok poweroff:skipped "
                            "pause:failed resume:ok resume:ok")
    assert listed.dump_step == dump
    db.close()


async def test_a_skipped_step_is_listed_as_skipped(tmp_path: Path) -> None:
    at = dt.datetime.now(dt.UTC)
    store = IncidentStore(tmp_path)
    await store.open()
    held = record(seen_at=at.timestamp())
    await store.create(held)
    held.steps.append(StepResult(name="restart", ok=True, started_at=at, seconds=0.01,
                                 skipped="crash loop: left paused",
                                 power=PowerStepDetail(status_before="guest-panicked",
                                                       status="guest-panicked")))
    store.save(held)
    await store.close()
    db = connect(tmp_path / FILE_NAME, read_only=True)
    queries = IncidentQueries(db)
    assert [listed.steps for listed in queries.listing()] == ["restart:skipped"]
    assert queries.restarts("web-01", at.timestamp() - 1) == []
    db.close()


async def test_a_store_that_cannot_be_opened_now_is_kept_and_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not damage (a full disk, an I/O error, a lock held elsewhere): the file and its history
    # are kept, never moved aside; incidents wait in memory until it opens.
    import panicd.store.incident_store as store_module
    import panicd.store.schema as schema_module

    monkeypatch.setattr(schema_module, "BUSY_TIMEOUT_SECONDS", 0.1)
    monkeypatch.setattr(store_module, "REOPEN_SECONDS", 0.0)
    path = tmp_path / FILE_NAME
    first = IncidentStore(tmp_path)
    await first.open()
    old = record(guest="old")
    await first.create(old)
    await first.close()
    blocker = sqlite3.connect(path, timeout=0, isolation_level=None)
    # In WAL mode only an exclusive locking mode keeps other connections out altogether.
    blocker.execute("PRAGMA locking_mode = EXCLUSIVE")
    blocker.execute("BEGIN EXCLUSIVE")
    blocker.execute("DELETE FROM incidents WHERE id = 'none'")

    failures = Failures()
    store = IncidentStore(tmp_path, on_failure=failures)
    await store.open()
    assert [what for what, _ in failures.seen] == ["open"]
    assert "the file is kept" in failures.seen[0][1]
    assert not list(tmp_path.glob(f"{FILE_NAME}.broken-*"))
    new = record(guest="new")
    await store.create(new)  # still locked: kept in memory
    assert store.last_incident("new") is new

    blocker.execute("ROLLBACK")
    blocker.close()  # the lock goes with the connection
    store.save(new)
    await store.flush()
    await store.close()
    db = connect(path, read_only=True)
    assert {r.guest.name for r in IncidentQueries(db).incidents()} == {"old", "new"}
    db.close()


async def test_incidents_kept_in_memory_are_bounded_and_open_ones_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import panicd.store.incident_store as store_module

    monkeypatch.setattr(store_module, "UNSAVED_LIMIT", 5)
    store = IncidentStore(None)  # a store that never opens: everything waits in memory
    await store.open()
    still_open = record(guest="open", seen_at=1.0)
    await store.create(still_open)
    for i in range(10):
        done = record(guest=f"g{i}", seen_at=10.0 + i)
        done.state = IncidentState.DONE
        await store.create(done)
    assert len(store._unsaved) == 5
    assert still_open.id in store._unsaved  # an open one is what a restart would resume
    assert {r.guest.name for r, _ in store._unsaved.values()} == {"open", "g6", "g7", "g8", "g9"}
    await store.close()
