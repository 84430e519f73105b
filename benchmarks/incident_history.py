"""panicd with a long history: 10,000 past incidents of 1000 guests in the incident store.

    .venv/bin/python benchmarks/incident_history.py [--incidents 10000] [--guests 1000]

1. Builds the store with panicd.store.IncidentStore: realistic records (a dump step with its
   dump, a restart or pause, some failed steps with QEMU's command and reply, some
   crash-loaded reports), spread over the last 90 days (`history_days`' default).
2. Times `panicd incidents` (the table, --json, --guest NAME, show ID), each a fresh process as
   an operator runs it, median of 3 wall times including Python's start-up. Target: under 1 s.
3. Runs a real `panicd run` with 1000 mock guests (fleet.py's Fleet) on an empty store and on
   the full one: its RSS once all are connected (README's fleet figure: 81 MiB, empty).

Results: benchmarks/results/incident_history.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fleet import Fleet, Panicd, config, rss_mib  # benchmarks/ is this script's sys.path[0]

from panicd.demo import ensure_journald
from panicd.events import Detection, IncidentKind, new_incident_id
from panicd.records import (
    DumpSummary,
    GuestRecord,
    IncidentRecord,
    IncidentState,
    StepResult,
)
from panicd.store import FILE_NAME, IncidentStore

RESULTS = Path(__file__).resolve().parent / "results"
REASONS = ["sysrq triggered crash", "Fatal exception", "Fatal exception in interrupt",
           "Attempted to kill init! exitcode=0x00000009", "softlockup: hung tasks",
           "Out of memory and no killable processes..."]


def record(rng: random.Random, work: Path, guest: int, seen_at: float) -> IncidentRecord:
    """One past incident of guest `guest`, as a daemon with dump + restart would leave it."""
    name = f"g{guest:04d}"
    socket = str(work / f"{name}.qmp")
    pid = 10_000 + guest * 7 + rng.randrange(5)
    kind = IncidentKind.CRASH_LOADED if rng.random() < 0.05 else IncidentKind.PANIC
    started = dt.datetime.fromtimestamp(seen_at + 0.002, dt.UTC)
    event = {"event": "GUEST_PANICKED", "data": {"action": "pause"},
             "timestamp": {"seconds": int(seen_at), "microseconds": rng.randrange(1_000_000)}}
    rec = IncidentRecord(
        id=new_incident_id(seen_at), kind=kind, action="pause", seen_at=seen_at,
        guest=GuestRecord(name=name, socket=socket, uuid=f"{guest:08x}-0000-4000-8000-000000000000",
                          qemu_version="7.2.19", qemu_pid=pid),
        instance=f"{socket}|{pid}|{rng.randrange(10**9)}",
        detection=rng.choices([Detection.EVENT, Detection.ON_CONNECT, Detection.RESUMED],
                              [0.95, 0.04, 0.01])[0],
        state=IncidentState.DONE, cleared=True, event=event)
    if kind is IncidentKind.CRASH_LOADED:
        return rec
    seconds = round(rng.uniform(0.25, 3.0), 3)
    path = f"/var/lib/panicd/dumps/{name}/{name}-{started:%Y%m%dT%H%M%S}.elf"
    if rng.random() < 0.03:  # a failed dump: QEMU's refusal on record
        rec.steps.append(StepResult(
            name="dump", ok=False, started_at=started, seconds=0.004,
            error="There is a dump in process, please wait.",
            command={"execute": "dump-guest-memory",
                     "arguments": {"paging": False, "protocol": "fd:panicd-dump-3", "detach": True}},
            reply={"error": {"class": "GenericError", "desc": "There is a dump in process, please wait."}}))
        rec.dump = DumpSummary(result="failed", error="There is a dump in process, please wait.")
    else:
        size = 268_435_456 + rng.randrange(4096)
        rec.steps.append(StepResult(
            name="dump", ok=True, started_at=started, seconds=seconds,
            detail={"path": path, "format": "elf", "bytes": size, "seconds": seconds}))
        rec.dump = DumpSummary(path=path, format="elf", bytes=size, seconds=seconds,
                               result="completed", panic_reason=rng.choice(REASONS))
    then = started + dt.timedelta(seconds=seconds)
    last = "restart" if rng.random() < 0.9 else "pause"
    rec.steps.append(StepResult(name=last, ok=True, started_at=then, seconds=0.012,
                                detail={"runstate": "running" if last == "restart" else "paused"}))
    return rec


async def build_store(state_dir: Path, work: Path, incidents: int, guests: int) -> dict[str, Any]:
    rng = random.Random(9)
    now = time.time()
    records = [record(rng, work, rng.randrange(guests), now - rng.uniform(60, 90 * 86400))
               for _ in range(incidents)]
    t0 = time.perf_counter()
    store = IncidentStore(state_dir)
    await store.open()
    for rec in records:
        store.create(rec)
    await store.close()
    db = state_dir / FILE_NAME
    return {"incidents": incidents, "guests": guests, "build_seconds": round(time.perf_counter() - t0, 2),
            "store_bytes": sum(p.stat().st_size for p in state_dir.glob(f"{FILE_NAME}*")),
            "db_file": str(db), "a_guest": records[0].guest.name, "an_id": records[0].id}


def time_cli(args: list[str], runs: int = 3) -> dict[str, Any]:
    walls, out = [], b""
    for _ in range(runs):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "panicd", *args], capture_output=True,
                             check=True).stdout
        walls.append(time.perf_counter() - t0)
    return {"median_seconds": round(statistics.median(walls), 3), "max_seconds": round(max(walls), 3),
            "output_bytes": len(out), "output_lines": out.count(b"\n"), "under_1_s": max(walls) < 1}


def python_start() -> float:
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "panicd", "--version"], capture_output=True, check=True)
        walls.append(time.perf_counter() - t0)
    return round(statistics.median(walls), 3)


async def fleet_rss(work: Path, guests: int) -> dict[str, Any]:
    """A real `panicd run` with `guests` mock guests whose store is `work`/state."""
    fleet = Fleet(work, guests)
    await fleet.start()
    t0 = time.monotonic()
    panicd = Panicd(work, config(work, fleet.sockets(), 'on_panic = ["pause"]'))
    try:
        await panicd.wait("qmp.connected", guests, timeout=300)
        connect_s = time.monotonic() - t0
        await asyncio.sleep(2)
        return {"guests": guests, "seconds_to_connect_all": round(connect_s, 2),
                "rss_mib": round(rss_mib(panicd.proc.pid), 1)}
    finally:
        panicd.stop()
        await fleet.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=10_000)
    parser.add_argument("--guests", type=int, default=1000)
    args = parser.parse_args()
    ensure_journald()
    results: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat()}
    with tempfile.TemporaryDirectory(prefix="pdh-") as tmp:
        full, empty = Path(tmp) / "full", Path(tmp) / "empty"
        full.mkdir()
        empty.mkdir()
        store = await build_store(full / "state", full, args.incidents, args.guests)
        results["store"] = {k: v for k, v in store.items() if k not in ("db_file", "an_id")}
        print("store:", results["store"], flush=True)
        state = ["--state-dir", str(full / "state")]
        results["python_and_panicd_start_seconds"] = python_start()
        results["cli"] = {
            "incidents (table)": time_cli(["incidents", *state]),
            "incidents --json": time_cli(["incidents", *state, "--json"]),
            "incidents --guest NAME": time_cli(["incidents", *state, "--guest", store["a_guest"]]),
            "incidents --guest NAME --json": time_cli(["incidents", *state, "--guest",
                                                       store["a_guest"], "--json"]),
            "incidents show ID": time_cli(["incidents", *state, "show", store["an_id"]]),
        }
        for what, figures in results["cli"].items():
            print(f"{what}: {figures}", flush=True)
        results["run_empty_store"] = await fleet_rss(empty, args.guests)
        print("panicd run, empty store:", results["run_empty_store"], flush=True)
        results["run_full_store"] = await fleet_rss(full, args.guests)
        print(f"panicd run, {args.incidents} incidents:", results["run_full_store"], flush=True)
    results["rss_added_by_history_mib"] = round(
        results["run_full_store"]["rss_mib"] - results["run_empty_store"]["rss_mib"], 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "incident_history.json").write_text(json.dumps(results, indent=1))
    print(f"written: {RESULTS / 'incident_history.json'}")


if __name__ == "__main__":
    asyncio.run(main())
