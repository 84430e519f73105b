"""How fast triage reads the kernel log out of a large dump, and with how much memory.

    .venv/bin/python benchmarks/triage.py [--memory-mib 4096]

Boots the tests' real Linux guest (Debian's kernel, crashing at once) with `--memory-mib` of
RAM under TCG, dumps it as elf and kdump-zlib, and times `panicd triage --json` on each dump
in a child process: wall time, and the child's peak RSS (the dump is mmap'd; only the pages
read are touched). Results: benchmarks/results/triage.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.linux_guest import crash_and_dump  # needs the path above

RESULTS = Path(__file__).resolve().parent / "results"


# The child reports its own peak RSS (RUSAGE_CHILDREN would include the QEMU run before it)
# and times the read alone, without the interpreter's start-up.
CHILD = """
import json, resource, sys, time
from pathlib import Path
from panicd.triage.report import triage
t0 = time.perf_counter()
report = triage(Path(sys.argv[1]))
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "records": report.records, "panic_reason": report.panic_reason}))
"""


def time_triage(dump: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, str(dump)], capture_output=True, check=True)
    wall = time.perf_counter() - t0
    child = json.loads(out.stdout)
    return {"dump_bytes": dump.stat().st_size, "read_seconds": round(child["seconds"], 3),
            "seconds_including_python_start": round(wall, 3),
            "peak_rss_mib": round(child["rss_kib"] / 1024, 1),
            "records": child["records"], "panic_reason": child["panic_reason"]}


def python_start() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "panicd", "--version"], capture_output=True, check=True)
    return time.perf_counter() - t0


def baseline_rss() -> float:
    out = subprocess.run([sys.executable, "-c", "import resource, panicd.triage.report; "
                          "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                         capture_output=True, check=True, text=True)
    return round(int(out.stdout) / 1024, 1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-mib", type=int, default=4096)
    args = parser.parse_args()
    results: dict[str, Any] = {"guest_ram_mib": args.memory_mib,
                               "python_and_panicd_start_seconds": round(python_start(), 3),
                               "python_baseline_rss_mib": baseline_rss()}
    with tempfile.TemporaryDirectory(prefix="pdt-", dir="/var/tmp") as tmp:
        dumps = await crash_and_dump(Path(tmp), memory_mib=args.memory_mib)
        for fmt, dump in dumps.items():
            results[fmt] = time_triage(dump)
            print(fmt, results[fmt], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "triage.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
