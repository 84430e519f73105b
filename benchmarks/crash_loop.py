"""A crash-looping real Linux guest: how soon panicd has it running again (issue 9's target).

    .venv/bin/python benchmarks/crash_loop.py [--cycles 10] [--tree PATH --label NAME]

Boots the tests' real Linux guest (Debian's kernel under TCG, 256 MiB, -device pvpanic
-device vmcoreinfo; its /init crashes the kernel with sysrq) and a real `panicd run` with
`on_panic = ["dump", "restart"]`, elf dumps. The guest panics at boot, is dumped and reset,
boots again and panics again: a crash loop. The first cycle warms caches and is not counted.
Per cycle:

- qemu_dump_seconds: QEMU's dump time as panicd reports it, the dump's `duration_seconds` in
  `<dump>.json` (DUMP_SECONDS in the alert): from just before the incident's durable write
  and getfd to panicd's handling of DUMP_COMPLETED;
- qemu_write_seconds: QEMU's reply to dump-guest-memory (panicd's `dump.started`) to
  DUMP_COMPLETED's own timestamp, read on a second QMP monitor: QEMU's dump thread alone,
  nothing of panicd's (the stricter yardstick; the targets are checked against both);
- dump_step_seconds: what panicd's dump step took (`step.done` for step dump);
- panic_to_dump_step_seconds: GUEST_PANICKED's timestamp to `step.started` for step dump;
- panic_to_running_seconds: GUEST_PANICKED's timestamp to the RESUME after the reset, both
  read on the second monitor (QEMU's own clock);
- restart_step_seconds: `step.done` for step restart;
- dump_step_minus_qemu_dump_seconds, running_minus_qemu_dump_seconds: what panicd adds, per
  cycle (their p99 is panicd's, where the p99s above follow QEMU's own slowest dump);
- and where the time between panic and running goes: the dump step's start to QEMU dumping
  (queries, dump turn, file, `<dump>.json`, durable incident, getfd, dump-guest-memory),
  DUMP_COMPLETED to the dump step's end (the record, retention), the dump step's end to
  QEMU's RESET, and RESET to RESUME.

Targets (issue 9): dump step p50 within 5% of QEMU's dump time p50; panic -> running p50
within 50 ms of QEMU's dump time p50.

`--tree PATH` runs panicd from another checkout (e.g. `git worktree add /tmp/before de6e07b`);
its figures go under `--label` in benchmarks/results/crash_loop.json, beside the others.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from panicd.demo import ensure_journald  # noqa: E402 - after the path above, like tests'
from tests.linux_guest import qemu_args  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
QEMU = "qemu-system-x86_64"
GUEST = "crashloop"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def qmp_time(event: dict[str, Any]) -> float:
    stamp = event["timestamp"]
    return float(stamp["seconds"]) + float(stamp["microseconds"]) / 1e6


def log_time(entry: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(entry["timestamp"]).timestamp()


class Inspector:
    """A second QMP monitor on the guest: every event, with QEMU's timestamps."""

    def __init__(self) -> None:
        self.client = QMPClient("inspect")
        self.events: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self, path: Path) -> None:
        await self.client.connect(str(path))
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for event in self.client.events:
            self.events.append(dict(event))

    def times(self, name: str) -> list[float]:
        return [qmp_time(e) for e in self.events if e["event"] == name]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.client.disconnect()


class PanicdRun:
    """`panicd run` from `tree` (its panicd package first on the path), JSON log to a file."""

    def __init__(self, work: Path, tree: Path, guest_socket: Path) -> None:
        self.log = work / "panicd.log"
        config = work / "panicd.toml"
        config.write_text(
            f'[daemon]\ndump_dir = "{work}/dumps"\nstate_dir = "{work}/state"\n'
            f'control_socket = "{work}/control.sock"\nmin_free_bytes = 0\n\n'
            f'[[guest]]\nsocket = "{guest_socket}"\n\n'
            '[[policy]]\non_panic = ["dump", "restart"]\ndump = { format = "elf" }\n')
        self.out = self.log.open("wb")
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "panicd", "run", "-c", str(config), "--log-format", "json"],
            stdout=self.out, stderr=self.out, env=env, cwd=tree)

    def entries(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if f'"{name}"' not in line:
                continue
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("event") == name and all(entry.get(k) == v for k, v in fields.items()):
                    out.append(entry)
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.out.close()


def first_after(times: list[float], t: float) -> float | None:
    return next((x for x in sorted(times) if x >= t), None)


def cycles_of(inspector: Inspector, panicd: PanicdRun, work: Path) -> list[dict[str, float]]:
    panics = inspector.times("GUEST_PANICKED")
    resumes = inspector.times("RESUME")
    completions = inspector.times("DUMP_COMPLETED")
    dump_started = [log_time(e) for e in panicd.entries("step.started", step="dump")]
    dump_done_entries = panicd.entries("step.done", step="dump")
    dump_done = [float(e["took"]) for e in dump_done_entries]
    dump_done_at = [log_time(e) for e in dump_done_entries]
    resets = inspector.times("RESET")
    restart_done = [float(e["took"]) for e in panicd.entries("step.done", step="restart")]
    qemu_began = [log_time(e) for e in panicd.entries("dump.started")]
    metas = [json.loads(p.read_text()) for p in (work / "dumps").glob("*/*.json")]
    metas = sorted((m for m in metas if m["dump"]["result"] == "completed"),
                   key=lambda m: m["dump"]["started_at"])
    cycles = []
    for i, panic in enumerate(panics):
        resumed = first_after(resumes, panic)
        completed = first_after(completions, panic)
        reset = first_after(resets, panic)
        if (resumed is None or completed is None or reset is None or i >= len(metas) or i >= len(dump_done)
                or i >= len(restart_done) or i >= len(qemu_began)):
            break
        qemu_dump = float(metas[i]["dump"]["duration_seconds"])
        cycles.append({
            "qemu_dump_seconds": qemu_dump,
            "qemu_write_seconds": round(completed - qemu_began[i], 3),
            "dump_step_seconds": dump_done[i],
            "panic_to_dump_step_seconds": round(dump_started[i] - panic, 3),
            "panic_to_running_seconds": round(resumed - panic, 3),
            "restart_step_seconds": restart_done[i],
            # What panicd adds, cycle by cycle (its p99 is not the p99s' difference):
            "dump_step_minus_qemu_dump_seconds": round(dump_done[i] - qemu_dump, 3),
            "running_minus_qemu_dump_seconds": round(resumed - panic - qemu_dump, 3),
            # Where the time between the panic and the guest running again goes:
            "dump_step_start_to_qemu_dumping_seconds": round(qemu_began[i] - dump_started[i], 3),
            "qemu_completed_to_dump_step_done_seconds": round(dump_done_at[i] - completed, 3),
            "dump_step_done_to_reset_seconds": round(reset - dump_done_at[i], 3),
            "reset_to_running_seconds": round(resumed - reset, 3),
        })
    return cycles


def summarize(cycles: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"cycles": len(cycles)}
    for key in cycles[0]:
        values = [c[key] for c in cycles]
        out[key] = {"p50": round(percentile(values, 50), 3), "p99": round(percentile(values, 99), 3)}
    step = out["dump_step_seconds"]["p50"]
    running = out["panic_to_running_seconds"]["p50"]
    for yardstick in ("qemu_dump_seconds", "qemu_write_seconds"):
        qemu = out[yardstick]["p50"]
        out[f"vs_{yardstick}"] = {
            "dump_step_over_qemu_percent_p50": round((step / qemu - 1) * 100, 1),
            "running_after_qemu_dump_ms_p50": round((running - qemu) * 1000, 1),
            "target_dump_step_within_5_percent": step <= qemu * 1.05,
            "target_running_within_50_ms": running <= qemu + 0.05,
        }
    out["samples"] = cycles
    return out


async def crash_loop(work: Path, tree: Path, cycles: int, warmup: int) -> dict[str, Any]:
    qmp, inspect = work / "g.qmp", work / "inspect.qmp"
    qemu = subprocess.Popen(
        [QEMU, *qemu_args(work, memory_mib=256), "-name", GUEST, "-action", "panic=pause",
         "-qmp", f"unix:{qmp},server=on,wait=off", "-qmp", f"unix:{inspect},server=on,wait=off"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    inspector = Inspector()
    panicd = None
    try:
        deadline = time.monotonic() + 10
        while not (qmp.exists() and inspect.exists()):
            if time.monotonic() > deadline or qemu.poll() is not None:
                raise RuntimeError("QEMU did not start")
            await asyncio.sleep(0.05)
        await inspector.start(inspect)
        panicd = PanicdRun(work, tree, qmp)
        want = warmup + cycles
        # About 5 s of boot per cycle under TCG, plus the dump: a generous bound.
        deadline = time.monotonic() + 60 + 30 * want
        while len(panicd.entries("step.done", step="restart")) < want:
            if time.monotonic() > deadline or panicd.proc.poll() is not None:
                raise RuntimeError(f"{len(panicd.entries('step.done', step='restart'))}/{want} "
                                   f"cycles; see {panicd.log}")
            await asyncio.sleep(0.5)
        await asyncio.sleep(1)  # the last RESUME and DUMP_COMPLETED reach the inspector
        measured = cycles_of(inspector, panicd, work)[warmup:want]
        if len(measured) < cycles:
            raise RuntimeError(f"only {len(measured)} complete cycles; see {panicd.log}")
        return summarize(measured)
    finally:
        if panicd is not None:
            panicd.stop()
        await inspector.stop()
        qemu.kill()
        qemu.wait()


def brief(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "samples"}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout whose panicd runs")
    parser.add_argument("--label", default="current", help="key of these figures in the results")
    args = parser.parse_args()
    ensure_journald()
    tree = args.tree.resolve()
    with tempfile.TemporaryDirectory(prefix="pdc-") as tmp:
        summary = await crash_loop(Path(tmp), tree, args.cycles, args.warmup)
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "panicd"],
                           capture_output=True, text=True, check=False).stdout.strip()
    summary = {"date": dt.datetime.now(dt.UTC).isoformat(), "tree": str(tree),
               "commit": commit + ("+uncommitted" if dirty else ""), "guest_ram_mib": 256,
               "format": "elf", "policy": ["dump", "restart"], **summary}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "crash_loop.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[args.label] = summary
    path.write_text(json.dumps(results, indent=1))
    print(json.dumps({args.label: brief(summary)}, indent=1))
    print(f"written: {path}")


if __name__ == "__main__":
    asyncio.run(main())
