"""`panicd demo`: the quick start. Guests panic; panicd dumps, acts and alerts; you see it all.

It runs, in one process and a work directory of its own:
- two built-in mock guests (`demo-web-01` will panic, `demo-db-01` stays healthy),
- a real QEMU guest (`demo-qemu-01`, qtest + pvpanic, no OS needed) when qemu-system-x86_64
  is installed,
- panicd itself, on a generated config (policy: dump, then restart; the mock guests' serial
  console files, where they print a Linux crash report, as their `console_log`),
then injects a panic into each panicking guest through its pvpanic port, waits for the dumps,
and prints the dump files, their metadata, the guests' runstates and the journal alerts.
When no journald is running (a container), it starts one, as the test suite does.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from panicd import incidents_view, journal, logs
from panicd.config import parse
from panicd.daemon import Daemon
from panicd.mock import MockGuest
from panicd.signatures import SignatureQueries
from panicd.store import FILE_NAME, IncidentQueries, connect

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
JOURNALD = Path("/usr/lib/systemd/systemd-journald")
QEMU = "qemu-system-x86_64"

CONFIG = """\
[daemon]
dump_dir = "dumps"
state_dir = "state"
control_socket = "control.sock"
max_concurrent_dumps = 2
take_over_panic_action = true
reconnect_max_seconds = 2
log_format = "console"

# The mock guests print a Linux crash report on their serial console when they panic; their
# dumps hold no kernel log, so their crash titles come from there.
[[guest]]
socket = "demo-web-01.qmp"
console_log = "{work}/demo-web-01.serial"

[[guest]]
socket = "demo-db-01.qmp"
console_log = "{work}/demo-db-01.serial"
{qemu_guest}
[[policy]]
match = "demo-*"
on_panic = ["dump", "restart"]
dump = {{ format = "kdump-zlib", timeout = 120 }}
"""


def journald_answers() -> bool:
    """Whether a journald reads JOURNAL_SOCKET (a socket file left by a journald that is gone
    refuses the connection)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as probe:
        try:
            probe.connect(str(JOURNAL_SOCKET))
        except OSError:
            return False
    return True


def ensure_journald() -> subprocess.Popen[bytes] | None:
    """Start systemd-journald when this machine has none; return the process we started."""
    if journald_answers():
        return None
    if not JOURNALD.exists() or os.geteuid() != 0:
        return None
    proc = subprocess.Popen([str(JOURNALD)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not journald_answers() and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc


class _Qemu:
    """A real QEMU with a pvpanic device and no guest OS: panics are injected over qtest."""

    def __init__(self, work: Path, name: str) -> None:
        self.qmp = work / f"{name}.qmp"
        self.qtest = work / f"{name}.qtest"
        self.proc = subprocess.Popen(
            [QEMU, "-machine", "pc", "-display", "none", "-nodefaults", "-m", "128",
             "-name", name, "-device", "pvpanic",
             "-qtest", f"unix:{self.qtest},server=on,wait=off", "-qtest-log", "/dev/null",
             "-qmp", f"unix:{self.qmp},server=on,wait=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    async def ready(self) -> None:
        async with asyncio.timeout(10):
            while not (self.qmp.exists() and self.qtest.exists()):
                await asyncio.sleep(0.05)

    async def panic(self) -> None:
        reader, writer = await asyncio.open_unix_connection(str(self.qtest))
        writer.write(b"outb 0x505 0x1\n")  # pvpanic PANICKED, exactly what the guest driver writes
        await writer.drain()
        await reader.readline()
        writer.close()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def _banner(text: str) -> None:
    print(f"\n\033[1m=== {text}\033[0m" if sys.stdout.isatty() else f"\n=== {text}", flush=True)


async def _wait_for_dumps(dump_dir: Path, count: int, timeout: float) -> list[Path]:
    deadline = time.monotonic() + timeout
    while True:
        done = [
            p for p in sorted(dump_dir.glob("*/*.json"))
            if json.loads(p.read_text()).get("dump", {}).get("result") == "completed"
        ]
        if len(done) >= count or time.monotonic() > deadline:
            return done
        await asyncio.sleep(0.2)


async def _wait_for_announced(metadata_files: list[Path], timeout: float) -> None:
    """Until triage has read each dump (its title is in) and DUMP_COMPLETED has gone out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(
            json.loads(p.read_text()).get("announced") for p in metadata_files):
        await asyncio.sleep(0.2)


async def _demo(work: Path, use_qemu: bool) -> int:
    qemu = _Qemu(work, "demo-qemu-01") if use_qemu and shutil.which(QEMU) else None
    if use_qemu and qemu is None:
        print(f"({QEMU} not found: mock guests only. `./run setup` installs it.)")
    qemu_guest = f'\n[[guest]]\nsocket = "{qemu.qmp}"\n' if qemu else ""
    (work / "panicd.toml").write_text(CONFIG.format(qemu_guest=qemu_guest, work=work))
    config = parse((work / "panicd.toml").read_text(), base=work, source="panicd.toml")

    web = MockGuest(name="demo-web-01", memory_bytes=32 * 2**20,
                    console_log=work / "demo-web-01.serial")
    db = MockGuest(name="demo-db-01", memory_bytes=32 * 2**20,
                   console_log=work / "demo-db-01.serial")
    await web.start(work / "demo-web-01.qmp")
    await db.start(work / "demo-db-01.qmp")
    if qemu:
        await qemu.ready()
    daemon = Daemon(config)
    task = asyncio.create_task(daemon.run(), name="panicd")
    try:
        async with asyncio.timeout(15):
            while not daemon.monitors or any(
                m.state != "connected" for m in daemon.monitors.values()
            ):
                await asyncio.sleep(0.05)
        _banner("All guests connected; injecting panics (pvpanic port 0x505 <- 0x1)")
        web.port.write(1)
        if qemu:
            await qemu.panic()
        expected = 2 if qemu else 1
        dumps = await _wait_for_dumps(config.daemon.dump_dir, expected, timeout=60)
        await _wait_for_announced(dumps, timeout=30)
        await asyncio.sleep(0.5)  # let the restart step finish
        await daemon.store.flush()
        _show(work, config.daemon.dump_dir, dumps, daemon)
        return 0 if len(dumps) == expected else 1
    finally:
        daemon.stop()
        await task
        await web.stop()
        await db.stop()
        if qemu:
            qemu.stop()


def _show(work: Path, dump_dir: Path, metadata_files: list[Path], daemon: Daemon) -> None:
    _banner(f"Dumps under {dump_dir}")
    for meta in metadata_files:
        info: dict[str, Any] = json.loads(meta.read_text())
        dump = Path(info["dump"]["path"])
        st = dump.stat()
        with dump.open("rb") as f:
            magic = f.read(12)
        print(f"{dump}\n    mode {st.st_mode & 0o777:o}, {st.st_size} bytes, starts {magic!r}")
        print(f"    metadata {meta.name}: guest={info['guest']['name']} "
              f"qemu={info['guest']['qemu_version']} format={info['dump']['format']} "
              f"result={info['dump']['result']} seconds={info['dump']['duration_seconds']}")
        triage = info.get("triage") or {}
        if triage.get("title"):
            print(f"    crash title: {triage['title']} (signature {triage['signature']}, "
                  f"from the {triage['source'].replace('_', ' ')})")
        elif triage.get("error"):
            print(f"    triage: {triage['error']}")
    _banner("Guests now (policy: dump, then restart)")
    for monitor in daemon.monitors.values():
        incident = monitor.last_incident
        print(f"  {monitor.identity.name:14} {monitor.state:10} runstate={monitor.runstate:10} "
              + ("panicked earlier: dumped, then restarted by panicd" if incident
                 else "never panicked: left alone"))
    _banner("Journal alerts (journalctl SYSLOG_IDENTIFIER=panicd -o json)")
    journal.flush(timeout=5.0)  # alerts are queued for journald off the event loop
    out = subprocess.run(
        ["journalctl", "--no-pager", "-o", "json", "SYSLOG_IDENTIFIER=panicd",
         "--since", "-5min"],
        capture_output=True, text=True, check=False,
    )
    shown = 0
    for line in out.stdout.splitlines():
        entry = json.loads(line)
        if not entry.get("QMP_SOCKET", "").startswith(f"{work}/"):
            continue  # an earlier run's
        shown += 1
        fields = {k: entry[k] for k in ("PRIORITY", "MESSAGE_ID", "GUEST_NAME", "PANIC_ACTION",
                                        "DUMP_PATH", "CRASH_TITLE", "CRASH_SIGNATURE")
                  if k in entry}
        print(f"  {entry['MESSAGE']}\n      {fields}")
    if not shown:
        print("  (no journald here: the alerts are held for it, see journal.unavailable above)")
    state_dir = work / "state"
    # What the commands in the banners print, read the way they read it (read-only).
    db = connect(state_dir / FILE_NAME, read_only=True)
    try:
        _banner(f"Incident history (panicd incidents --state-dir {state_dir})")
        print(incidents_view.format_table(IncidentQueries(db).listing()))
        _banner(f"Crash signatures (panicd incidents --by-signature --state-dir {state_dir})")
        print(incidents_view.format_signatures(SignatureQueries(db).by_signature()))
    finally:
        db.close()
    print("\nExplained: journalctl -x SYSLOG_IDENTIFIER=panicd (after installing "
          "systemd/panicd.catalog and journalctl --update-catalog)")


def main(work_dir: Path | None = None, *, use_qemu: bool = True) -> int:
    logs.configure("info", "console")
    journald = ensure_journald()
    try:
        if work_dir is not None:
            work_dir.mkdir(parents=True, exist_ok=True)
            return asyncio.run(_demo(work_dir.resolve(), use_qemu))
        # A short path (unix socket paths are limited to 108 bytes), kept for a look afterwards.
        work = Path(tempfile.mkdtemp(prefix="panicd-demo-"))
        code = asyncio.run(_demo(work, use_qemu))
        print(f"\nEverything is left in {work} (config, dumps, metadata).")
        return code
    finally:
        if journald is not None:
            journald.terminate()
