"""panicd's memory while hostile peers flood its `[discovery] listen` socket.

    .venv/bin/python benchmarks/listen_flood.py [--peers 20 60] [--megabytes 100]

For each peer count: a real `panicd run` (a child process) listens; a real QEMU dials in and is
identified; then the peers connect at once, each sending one `--megabytes` line with no newline
(stopping when panicd closes it), while the QEMU guest panics. Reported, from the panicd
child's /proc/PID/status: VmRSS when idle, VmHWM (the peak) after the flood, VmRSS once the
flood is over and the panic handled; and whether the panic was handled (dump completed).
Raw results go to benchmarks/results/listen_flood.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from panicd.demo import ensure_journald  # noqa: E402 - after the path set-up
from tests.daemon_process import (  # noqa: E402
    PanicdProcess,
    completed_dumps,
    daemon_section,
    unique,
)
from tests.listen_flood import MIB, flood, memory_mib  # noqa: E402
from tests.qemu_harness import QemuGuest  # noqa: E402


async def one_run(peers: int, megabytes: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pd-") as tmp_name:
        tmp = Path(tmp_name)
        listen = tmp / "qmp.sock"
        guest = QemuGuest(tmp / "q", name=unique("flooded"), extra_args=[
            "-chardev", f"socket,id=panicd,path={listen},reconnect=1",
            "-mon", "chardev=panicd,mode=control"])
        daemon = PanicdProcess(tmp, daemon_section(tmp) + f'[discovery]\nlisten = "{listen}"\n'
                               'allowed_uids = [0]\n[[policy]]\non_panic = ["dump", "pause"]\n')
        try:
            await guest.start()
            daemon.start()
            assert daemon.proc is not None
            await daemon.wait_event("qmp.connected", guest=guest.name, timeout=20)
            idle_rss, _ = memory_mib(daemon.proc.pid)
            began = time.monotonic()
            flooding = asyncio.ensure_future(flood(listen, peers, megabytes * MIB))
            await guest.panic()
            await completed_dumps(tmp, guest.name)
            handled = time.monotonic() - began
            results = await flooding
            flood_seconds = time.monotonic() - began
            await asyncio.sleep(1)  # what stays, not what is still being freed
            after_rss, peak = memory_mib(daemon.proc.pid)
            return {
                "peers": peers, "megabytes_per_peer": megabytes,
                "idle_rss_mib": round(idle_rss, 1), "peak_rss_mib": round(peak, 1),
                "after_rss_mib": round(after_rss, 1),
                "panic_handled_seconds": round(handled, 2),
                "flood_seconds": round(flood_seconds, 2),
                "peers_cut_off": sum(r.outcome == "cut_off" for r in results),
                "peers_stalled": sum(r.outcome == "stalled" for r in results),
                "mib_sent_per_peer_max": round(max(r.sent for r in results) / MIB, 1),
                "peers_dropped_events": len(daemon.events("qmp.unreachable")),
            }
        finally:
            await daemon.stop()
            await guest.stop()


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", type=int, nargs="+", default=[20, 60])
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "listen_flood.json")
    args = parser.parse_args(argv)
    ensure_journald()
    runs = []
    for peers in args.peers:
        run = await one_run(peers, args.megabytes)
        print(json.dumps(run), flush=True)
        runs.append(run)
    args.out.write_text(json.dumps(runs, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
