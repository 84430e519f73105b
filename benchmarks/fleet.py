"""panicd at fleet scale: the figures in the README's "Performance" section.

    .venv/bin/python benchmarks/fleet.py [--guests 1000] [--idle 60] [--events 1000000]

Runs a real `panicd run` (a separate process) against built-in mock guests served from this
process, and against real QEMUs, and measures:

1. connect: time for panicd to connect N mock guests; its RSS; its CPU over `--idle` s idle.
2. single: latency from the pvpanic write to panicd's first QMP command for that panic, for
   single panics among the N connected guests (p50, p99), and the same for a minimal
   hand-written qemu.qmp listener on one guest, measured in the same run (the baseline).
3. storm: 200 guests panic together: per-guest first-command latency, and the time until
   every one of them was stopped (QEMU's own pause) and alerted (panicd's alert.queued).
4. qemu-storm: 20 real QEMUs (qtest + pvpanic) panic together with dumps behind
   max_concurrent_dumps = 2: the most dumps seen running at once, and each dump's wait.
5. soak: `--events` QMP events from mock guests: panicd's RSS at the start and the end.

Raw results go to benchmarks/results/fleet.json and a plot to benchmarks/results/fleet.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from panicd.demo import ensure_journald
from panicd.mock import MockGuest

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
QEMU = "qemu-system-x86_64"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Panicd:
    def __init__(self, work: Path, config: str) -> None:
        self.log = work / f"panicd-{time.monotonic_ns()}.log"
        cfg = work / "panicd.toml"
        cfg.write_text(config)
        self.out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "panicd", "run", "-c", str(cfg), "--log-format", "json"],
            stdout=self.out, stderr=self.out)

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if f'"{name}"' in line:
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return [e for e in out if e.get("event") == name]

    async def wait(self, name: str, count: int, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(name)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{name}: {len(found)}/{count} after {timeout} s")
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.out.close()


def config(work: Path, sockets: list[Path], policy: str, extra: str = "") -> str:
    guests = "".join(f'[[guest]]\nsocket = "{s}"\n' for s in sockets)
    return (f'[daemon]\ndump_dir = "{work}/dumps"\nstate_dir = "{work}/state"\n'
            f'control_socket = "{work}/control.sock"\nmin_free_bytes = 0\n{extra}\n'
            f"{guests}[[policy]]\n{policy}\n")


class Fleet:
    """N mock guests in this process; records when each sees its first command after a panic."""

    def __init__(self, work: Path, n: int) -> None:
        self.work = work
        self.guests = [MockGuest(name=f"g{i:04d}", memory_bytes=1 << 20, panic_action="pause")
                       for i in range(n)]
        self.panicked_at: dict[int, float] = {}
        self.first_command: dict[int, float] = {}
        for i, guest in enumerate(self.guests):
            original = guest._record

            def record(label: str, command: str, arguments: dict[str, Any], i: int = i,
                       original: Any = original) -> None:
                if i in self.panicked_at and i not in self.first_command:
                    self.first_command[i] = time.perf_counter()
                original(label, command, arguments)

            guest._record = record  # type: ignore[method-assign]

    def sockets(self) -> list[Path]:
        return [self.work / f"{g.name}.qmp" for g in self.guests]

    async def start(self) -> None:
        for guest, path in zip(self.guests, self.sockets(), strict=True):
            await guest.start(path)

    def panic(self, i: int) -> None:
        self.panicked_at[i] = time.perf_counter()
        self.guests[i].port.write(1)

    def latency_ms(self, i: int) -> float | None:
        if i not in self.first_command:
            return None
        return (self.first_command[i] - self.panicked_at[i]) * 1000

    async def stop(self) -> None:
        for guest in self.guests:
            await guest.stop()


async def wait_latencies(fleet: Fleet, ids: list[int], timeout: float = 30) -> list[float]:
    deadline = time.monotonic() + timeout
    while any(fleet.latency_ms(i) is None for i in ids) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return [lat for i in ids if (lat := fleet.latency_ms(i)) is not None]


async def baseline(work: Path, trials: int) -> list[float]:
    """A minimal hand-written qemu.qmp listener, in its own process as panicd is."""
    fleet = Fleet(work, 1)
    await fleet.start()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "minimal_listener.py"), str(fleet.sockets()[0]),
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    await proc.stdout.readline()  # "ready"
    out = []
    try:
        for _ in range(trials):
            fleet.panicked_at.clear()
            fleet.first_command.clear()
            fleet.panic(0)
            out += await wait_latencies(fleet, [0])
            while fleet.guests[0].machine.runstate != "running":  # its cont
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.02)
    finally:
        proc.kill()
        await proc.wait()
        await fleet.stop()
    return out


async def fleet_run(work: Path, n: int, idle: float, results: dict[str, Any]) -> None:
    fleet = Fleet(work, n)
    await fleet.start()
    t0 = time.monotonic()
    panicd = Panicd(work, config(work, fleet.sockets(), 'on_panic = ["pause"]'))
    try:
        await panicd.wait("qmp.connected", n, timeout=300)
        connect_s = time.monotonic() - t0
        await asyncio.sleep(2)
        rss = rss_mib(panicd.proc.pid)
        cpu0 = cpu_seconds(panicd.proc.pid)
        await asyncio.sleep(idle)
        idle_cpu = (cpu_seconds(panicd.proc.pid) - cpu0) / idle * 100
        results["connect"] = {"guests": n, "seconds_to_connect_all": round(connect_s, 2),
                              "rss_mib": round(rss, 1), "idle_seconds": idle,
                              "idle_cpu_percent_of_a_core": round(idle_cpu, 3)}
        print("connect:", results["connect"], flush=True)

        singles: list[float] = []
        order = list(range(n))
        random.Random(1).shuffle(order)
        singles_n = min(100, n // 2)
        for i in order[:singles_n]:
            fleet.panic(i)
            singles += await wait_latencies(fleet, [i])
            await asyncio.sleep(0.02)
        results["single"] = {"trials": len(singles), "p50_ms": round(percentile(singles, 50), 3),
                             "p99_ms": round(percentile(singles, 99), 3), "samples_ms": singles}

        storm_ids = order[singles_n:singles_n + 200]
        alerted_before = len(panicd.events("alert.queued"))
        wall0 = time.time()
        for i in storm_ids:
            fleet.panic(i)
        stopped = all(fleet.guests[i].machine.runstate == "guest-panicked" for i in storm_ids)
        storm = await wait_latencies(fleet, storm_ids)
        alerts = await panicd.wait("alert.queued", alerted_before + len(storm_ids), timeout=30)
        last_alert = max(dt.datetime.fromisoformat(a["timestamp"]).timestamp()
                         for a in alerts[alerted_before:])
        results["storm"] = {"guests": len(storm_ids), "all_stopped": stopped,
                            "p50_ms": round(percentile(storm, 50), 3),
                            "p99_ms": round(percentile(storm, 99), 3),
                            "max_ms": round(max(storm), 3),
                            "all_alerted_within_s": round(last_alert - wall0, 3),
                            "samples_ms": storm}
        print("single:", {k: v for k, v in results["single"].items() if k != "samples_ms"})
        print("storm:", {k: v for k, v in results["storm"].items() if k != "samples_ms"})
    finally:
        panicd.stop()
        await fleet.stop()
    base = await baseline(work, 100)
    results["baseline"] = {"trials": len(base), "p50_ms": round(percentile(base, 50), 3),
                           "p99_ms": round(percentile(base, 99), 3), "samples_ms": base}
    results["overhead_ratio_p50"] = round(results["single"]["p50_ms"] / results["baseline"]["p50_ms"], 2)
    print("baseline:", {k: v for k, v in results["baseline"].items() if k != "samples_ms"},
          "ratio", results["overhead_ratio_p50"], flush=True)


async def qemu_storm(work: Path, n: int, results: dict[str, Any]) -> None:
    procs, sockets, qtests = [], [], []
    for i in range(n):
        qmp, qtest = work / f"q{i}.qmp", work / f"q{i}.qtest"
        procs.append(subprocess.Popen(
            [QEMU, "-machine", "pc", "-display", "none", "-nodefaults", "-m", "256",
             "-name", f"qemu-{i:02d}", "-device", "pvpanic",
             "-qtest", f"unix:{qtest},server=on,wait=off", "-qtest-log", "/dev/null",
             "-qmp", f"unix:{qmp},server=on,wait=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        sockets.append(qmp)
        qtests.append(qtest)
    panicd = None
    try:
        while not all(q.exists() for q in qtests):
            await asyncio.sleep(0.05)
        panicd = Panicd(work, config(work, sockets, 'on_panic = ["dump", "pause"]',
                                     "max_concurrent_dumps = 2"))
        await panicd.wait("qmp.connected", n, timeout=60)
        t0 = time.time()
        for qtest in qtests:
            reader, writer = await asyncio.open_unix_connection(str(qtest))
            writer.write(b"outb 0x505 0x1\n")
            await reader.readline()
            writer.close()
        metas: list[dict[str, Any]] = []
        while len(metas) < n:
            await asyncio.sleep(0.2)
            metas = [json.loads(p.read_text()) for p in (work / "dumps").glob("*/*.json")]
            metas = [m for m in metas if m["dump"]["result"] == "completed"]
        spans = []
        for m in metas:
            start = dt.datetime.fromisoformat(m["dump"]["started_at"]).timestamp()
            spans.append((start, start + m["dump"]["duration_seconds"]))
        most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
        results["qemu_storm"] = {
            "guests": n, "guest_ram_mib": 256, "max_concurrent_dumps": 2,
            "most_dumps_running_at_once": most,
            "all_dumped_within_s": round(max(e for _, e in spans) - t0, 2),
            "waited_for_slot_s": sorted(m["dump"]["waited_for_slot_seconds"] for m in metas),
            "dump_seconds": sorted(m["dump"]["duration_seconds"] for m in metas),
        }
        print("qemu storm:", {k: v for k, v in results["qemu_storm"].items()
                              if not isinstance(v, list)}, flush=True)
    finally:
        if panicd:
            panicd.stop()
        for p in procs:
            p.kill()
            p.wait()


async def soak(work: Path, events: int, results: dict[str, Any]) -> None:
    n = 50
    fleet = Fleet(work, n)
    await fleet.start()
    panicd = Panicd(work, config(work, fleet.sockets(), 'on_panic = ["pause"]'))
    try:
        await panicd.wait("qmp.connected", n, timeout=60)
        await asyncio.sleep(1)
        start_rss = rss_mib(panicd.proc.pid)
        samples = [(0, start_rss)]
        sent = 0
        t0 = time.monotonic()
        while sent < events:
            batch = min(10_000, events - sent)
            for k in range(batch):
                # RTC_CHANGE, as a guest setting its clock would make QEMU send.
                await fleet.guests[k % n].emit_event("RTC_CHANGE", {"offset": k, "qom-path": "/machine/rtc"})
            sent += batch
            if sent % 100_000 == 0:
                samples.append((sent, rss_mib(panicd.proc.pid)))
        # Measure once panicd has read everything: when its CPU time stops moving.
        busy = cpu_seconds(panicd.proc.pid)
        while True:
            await asyncio.sleep(1)
            now = cpu_seconds(panicd.proc.pid)
            if now - busy < 0.02:
                break
            busy = now
        end_rss = rss_mib(panicd.proc.pid)
        samples.append((sent, end_rss))
        results["soak"] = {"events": sent, "guests": n,
                           "seconds_until_panicd_idle": round(time.monotonic() - t0, 1),
                           "panicd_cpu_seconds": round(cpu_seconds(panicd.proc.pid), 1),
                           "rss_start_mib": round(start_rss, 1), "rss_end_mib": round(end_rss, 1),
                           "rss_samples": samples}
        print("soak:", {k: v for k, v in results["soak"].items() if k != "rss_samples"}, flush=True)
    finally:
        panicd.stop()
        await fleet.stop()


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    ax.hist([results["single"]["samples_ms"], results["baseline"]["samples_ms"]], bins=40,
            label=[f"panicd, 1 of {results['connect']['guests']} guests",
                   "minimal qemu.qmp listener (own process)"])
    ax.set_xlabel("pvpanic write -> first QMP command (ms)")
    ax.set_title("Single panic latency")
    ax.legend()
    ax = axes[1]
    ax.hist(results["storm"]["samples_ms"], bins=40)
    ax.set_xlabel("pvpanic write -> first QMP command (ms)")
    ax.set_title(f"Storm: {results['storm']['guests']} guests at once")
    ax = axes[2]
    xs, ys = zip(*results["soak"]["rss_samples"], strict=True)
    ax.plot([x / 1000 for x in xs], ys, marker="o")
    ax.set_ylim(0, max(ys) * 1.3)
    ax.set_xlabel("events (thousands)")
    ax.set_ylabel("panicd RSS (MiB)")
    ax.set_title("Soak: RSS while events stream in")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--qemus", type=int, default=20)
    args = parser.parse_args()
    ensure_journald()
    results: dict[str, Any] = {"date": dt.datetime.now(dt.UTC).isoformat(), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="pdb-") as tmp:
        for part in ("fleet", "qemu", "soak"):
            (Path(tmp) / part).mkdir()
        await fleet_run(Path(tmp) / "fleet", args.guests, args.idle, results)
        await qemu_storm(Path(tmp) / "qemu", args.qemus, results)
        await soak(Path(tmp) / "soak", args.events, results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fleet.json").write_text(json.dumps(results, indent=1))
    plot(results, RESULTS / "fleet.png")
    print(f"written: {RESULTS / 'fleet.json'}, {RESULTS / 'fleet.png'}")


if __name__ == "__main__":
    asyncio.run(main())
