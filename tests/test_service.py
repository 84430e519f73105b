"""panicd under systemd: sd_notify, reload, `panicd status`, journal-native logs, the unit.

The sd_notify tests own a real NOTIFY_SOCKET datagram socket, as systemd would; the reload
test runs two real QEMU guests.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from panicd.alerts import AlertKind
from panicd.mock import MockGuest
from tests.daemon_process import PanicdProcess, daemon_section, unique, wait_for
from tests.journal import Journald
from tests.qemu_harness import QemuGuest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "panicd.service"
LOCALHOST_ONLY = ROOT / "systemd" / "panicd-localhost-only.conf"
Start = Callable[..., PanicdProcess]


def guests(*sockets: Path) -> str:
    return "".join(f'[[guest]]\nsocket = "{s}"\n' for s in sockets)


class NotifySocket:
    """The systemd side of sd_notify: every datagram panicd sends, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            self.messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def with_key(self, key: str) -> list[dict[str, str]]:
        return [m for m in self.drain() if key in m]


@pytest.fixture
def notify(short_tmp: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(short_tmp / "notify.sock")
    yield sock
    sock.sock.close()


@pytest.fixture
async def mock_guests(short_tmp: Path) -> AsyncIterator[list[MockGuest]]:
    made = [MockGuest(name=unique("svc")), MockGuest(name=unique("svc"))]
    for i, g in enumerate(made):
        await g.start(short_tmp / f"m{i}.qmp")
    yield made
    for g in made:
        await g.stop()


async def test_sd_notify_ready_status_watchdog_reloading_stopping(
    short_tmp: Path, mock_guests: list[MockGuest], panicd: Start, notify: NotifySocket
) -> None:
    config = daemon_section(short_tmp) + guests(short_tmp / "m0.qmp", short_tmp / "m1.qmp")
    daemon = panicd(config, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})

    await wait_for(lambda: notify.with_key("READY"), what="READY=1")
    # READY=1 comes once every guest's first connection was tried: both are connected by then.
    assert len(daemon.events("qmp.connected")) == 2
    await wait_for(lambda: any(m.get("STATUS") == "2 guests, 2 connected, 0 panicked, 0 dumps running"
                               for m in notify.drain()), what="STATUS")
    before = len(notify.with_key("WATCHDOG"))
    started = time.monotonic()
    # Every 0.2 s (half of WatchdogSec): 4 more within ~0.8 s, and no stall near WatchdogSec.
    await wait_for(lambda: len(notify.with_key("WATCHDOG")) - before >= 4, what="4 more pings",
                   timeout=3)
    assert time.monotonic() - started < 2.0

    mock_guests[0].machine.panic_action = "pause"
    mock_guests[0].port.write(1)
    await wait_for(lambda: any("1 panicked" in m.get("STATUS", "") for m in notify.drain()),
                   what="STATUS with the panic")

    daemon.signal(signal.SIGHUP)
    reloading = await wait_for(lambda: notify.with_key("RELOADING"), what="RELOADING=1")
    assert int(reloading[0]["MONOTONIC_USEC"]) > 0
    await wait_for(lambda: len(notify.with_key("READY")) == 2, what="READY=1 after reload")
    index = notify.messages.index(reloading[0])
    assert any("READY" in m for m in notify.messages[index:])

    assert await daemon.stop() == 0
    assert notify.with_key("STOPPING")


async def test_reload_adds_removes_and_keeps_guests_and_policies(
    short_tmp: Path, panicd: Start, journal: Journald
) -> None:
    a_name, b_name, c_name = unique("keep"), unique("drop"), unique("new")
    made = [QemuGuest(short_tmp / n[:8], name=n) for n in (a_name, b_name, c_name)]
    a, b, c = made
    try:
        for g in made:
            await g.start()
        old_policy = '[[policy]]\non_panic = ["dump", "pause"]\n'
        daemon = panicd(daemon_section(short_tmp) + guests(a.qmp_path, b.qmp_path) + old_policy)
        await daemon.wait_event("qmp.connected", guest=a_name)
        await daemon.wait_event("qmp.connected", guest=b_name)

        new_policy = f'[[policy]]\nmatch = "{a_name}"\non_panic = ["restart"]\n' + old_policy
        daemon.config_path.write_text(
            daemon_section(short_tmp) + guests(a.qmp_path, c.qmp_path) + new_policy)
        daemon.signal(signal.SIGHUP)
        await daemon.wait_event("reload.applied")
        await daemon.wait_event("qmp.connected", guest=c_name)
        await daemon.wait_event("guest.dropped", socket=str(b.qmp_path))
        assert len(daemon.events("qmp.connected", guest=a_name)) == 1  # never reconnected

        await a.panic()
        await daemon.wait_event("incident.handled", guest=a_name)
        assert await a.status() == "running"  # the new policy: restart, no dump
        assert not (short_tmp / "dumps" / a_name).exists()
        await b.panic()  # no longer watched
        await asyncio.sleep(0.5)
        assert not daemon.events("panic.detected", guest=b_name)

        # An invalid config is refused; the one in force stays, guests and all.
        daemon.config_path.write_text(guests(a.qmp_path) + '[[policy]]\non_panic = ["reboot"]\n')
        daemon.signal(signal.SIGHUP)
        await daemon.wait_event("reload.rejected")
        (rejected,) = await journal.find(MESSAGE_ID=AlertKind.CONFIG_REJECTED.message_id,
                                         CONFIG_FILE=str(daemon.config_path))
        assert "policy[0].on_panic[0]" in rejected["MESSAGE"]
        await c.panic()
        await daemon.wait_event("incident.handled", guest=c_name)
        assert await c.status() == "guest-panicked"
        assert list((short_tmp / "dumps" / c_name).glob("*.elf"))
        assert await daemon.stop() == 0
    finally:
        for g in made:
            await g.stop()


def run_status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "panicd", "status", *args],
                          capture_output=True, text=True, timeout=30, check=False)


async def ask_raw(path: Path, data: bytes) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return json.loads(line)


async def test_status_table_json_and_garbage_on_the_control_socket(
    short_tmp: Path, mock_guests: list[MockGuest], panicd: Start
) -> None:
    control = short_tmp / "control.sock"
    sockets = (short_tmp / "m0.qmp", short_tmp / "m1.qmp", short_tmp / "gone.qmp")
    config = (daemon_section(short_tmp) + guests(*sockets)
              + '[[policy]]\non_panic = ["dump", "restart"]\n')
    daemon = panicd(config)
    await daemon.wait_event("daemon.ready")
    assert (control.stat().st_mode & 0o777) == 0o600
    sick = mock_guests[0]
    sick.port.write(1)
    await daemon.wait_event("incident.handled", guest=sick.name)

    table = await asyncio.to_thread(run_status, "--socket", str(control))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SOCKET", "CONNECTION", "RUNSTATE", "LAST", "PANIC",
                                "LAST", "DUMP", "RESTARTS", "LAST", "INCIDENT"]
    row = next(line for line in lines if line.startswith(sick.name))
    assert "connected" in row
    assert "running" in row
    assert row.split()[-3:-1][0] == "1"  # one restart; then the last incident, "ID ok"
    assert row.rstrip().endswith(" ok")
    assert "completed" in row
    assert re.search(r"gone\s+\S*gone.qmp\s+(disconnected|connecting)", table.stdout)

    as_json = await asyncio.to_thread(run_status, "--json", "-c", str(daemon.config_path))
    status = json.loads(as_json.stdout)
    by_name = {g["name"]: g for g in status["guests"]}
    assert by_name[sick.name]["restarts"] == 1
    assert by_name[sick.name]["last_dump"]["result"] == "completed"
    assert Path(by_name[sick.name]["last_dump"]["path"]).exists()
    assert by_name[mock_guests[1].name]["last_panic"] is None
    assert status["daemon"]["summary"].startswith("3 guests, 2 connected")

    for garbage in (b"\xff\xfe\x00garbage\n", b"[1, 2, 3]\n", b'{"command": "reboot"}\n',
                    b"x" * 100_000 + b"\n", b"{}\n"):
        reply = await ask_raw(control, garbage)
        assert reply["ok"] is False
        assert reply["error"]
    # A client that connects and says nothing, and one that hangs up at once.
    _silent = await asyncio.open_unix_connection(str(control))
    _r, w = await asyncio.open_unix_connection(str(control))
    w.close()
    again = await asyncio.to_thread(run_status, "--json", "--socket", str(control))
    assert json.loads(again.stdout)["daemon"]["pid"] == daemon.proc.pid  # type: ignore[union-attr]
    _silent[1].close()
    assert await daemon.stop() == 0


def test_status_without_a_daemon_says_so(short_tmp: Path) -> None:
    result = run_status("--socket", str(short_tmp / "nobody.sock"))
    assert result.returncode == 1
    assert "cannot ask the daemon" in result.stderr


async def test_logs_are_native_journal_fields(
    short_tmp: Path, mock_guests: list[MockGuest], panicd: Start, journal: Journald
) -> None:
    guest = mock_guests[0]
    config = (daemon_section(short_tmp) + 'log_format = "journal"\n'
              + guests(short_tmp / "m0.qmp"))
    daemon = panicd(config, log_format=None)  # as configured: the journal
    entries = await journal.find(EVENT="qmp.connected", GUEST_NAME=guest.name)
    assert entries[0]["SYSLOG_IDENTIFIER"] == "panicd"
    assert entries[0]["QMP_SOCKET"] == str(short_tmp / "m0.qmp")
    assert entries[0]["PRIORITY"] == "6"
    assert entries[0]["MESSAGE"].startswith("qmp.connected ")
    assert await daemon.stop() == 0


def verify_unit(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # ExecStart names /usr/local/bin/panicd (the README's install): point it at this checkout's.
    panicd_bin = Path(sys.executable).parent / "panicd"
    unit = tmp_path / "panicd.service"
    unit.write_text(unit_text.replace("/usr/local/bin/panicd", str(panicd_bin)))
    # verify runs `man` on every man: page in Documentation=: only the repo's pages may answer.
    return subprocess.run(["systemd-analyze", "verify", str(unit)],
                          capture_output=True, text=True, check=False, timeout=60,
                          env={**os.environ, "MANPATH": str(ROOT / "docs" / "man")})


def test_unit_verifies(tmp_path: Path) -> None:
    result = verify_unit(UNIT.read_text(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "panicd.service" not in result.stderr, result.stderr


def test_unit_verifies_with_the_localhost_only_drop_in(tmp_path: Path) -> None:
    # The drop-in's lines, appended to the unit: verify checks their syntax as systemd would.
    result = verify_unit(UNIT.read_text() + LOCALHOST_ONLY.read_text(), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "panicd.service" not in result.stderr, result.stderr


def security(unit: str, root: Path | None = None) -> tuple[float, dict[str, str]]:
    """systemd-analyze's offline review: the exposure score and each check's verdict."""
    base = ["systemd-analyze", "security", "--offline=true",
            *([f"--root={root}"] if root else []), unit]
    table = subprocess.run(base, capture_output=True, text=True, check=False, timeout=60)
    match = re.search(r"Overall exposure level for panicd.service: ([\d.]+)", table.stdout)
    assert match, table.stdout + table.stderr
    checks = json.loads(subprocess.run([*base, "--json=short"], capture_output=True, text=True,
                                       check=True, timeout=60).stdout)
    return float(match.group(1)), {c["json_field"]: c["description"] for c in checks}


def test_unit_security_exposure_is_at_most_2_5() -> None:
    score, _ = security(str(UNIT))
    assert score <= 2.5


def test_shipped_unit_lets_panicd_and_its_hooks_reach_any_address() -> None:
    # A Prometheus on another host scrapes metrics_listen; hooks post to webhooks. The
    # verdicts are systemd's own reading of the unit, not a grep of it.
    _, checks = security(str(UNIT))
    assert checks["IPAddressDeny"] == "Service does not define an IP address allow list"
    assert checks["PrivateNetwork"] == "Service has access to the host's network"
    assert checks["RestrictAddressFamilies_AF_INET_INET6"] == "Service may allocate Internet sockets"
    settings = [line.split("=", 1) for line in UNIT.read_text().splitlines() if "=" in line
                and not line.startswith("#")]
    for key, value in settings:
        assert key not in {"IPAddressDeny", "IPAddressAllow", "SocketBindDeny",
                           "RestrictNetworkInterfaces", "IPIngressFilterPath",
                           "IPEgressFilterPath"}, f"{key}={value} filters network traffic"
        assert (key, value) != ("PrivateNetwork", "yes")
        if key == "RestrictAddressFamilies":
            assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(value.split()), value
    # The syscall filter keeps every call a TCP server and client need.
    from tests.unit_sandbox import allowed_syscalls, service_settings

    allowed = allowed_syscalls(service_settings(UNIT))
    assert allowed is not None
    assert {"socket", "connect", "bind", "listen", "accept4", "sendto", "recvfrom", "sendmsg",
            "recvmsg", "getsockopt", "setsockopt", "getsockname", "getpeername", "poll",
            "epoll_wait", "shutdown"} <= allowed


def test_localhost_only_drop_in_keeps_ip_traffic_to_localhost(tmp_path: Path) -> None:
    # As the README installs it: the unit plus the drop-in under /etc/systemd/system.
    system = tmp_path / "etc" / "systemd" / "system"
    (system / "panicd.service.d").mkdir(parents=True)
    (system / "panicd.service").write_text(UNIT.read_text())
    (system / "panicd.service.d" / "localhost-only.conf").write_text(LOCALHOST_ONLY.read_text())
    score, checks = security("panicd.service", root=tmp_path)
    assert checks["IPAddressDeny"] == (
        "Service defines IP address allow list with only localhost entries")
    shipped, _ = security(str(UNIT))
    assert score < shipped <= 2.5


class SandboxedPanicd(PanicdProcess):
    """`panicd run` under the unit's seccomp, capability and no-new-privileges settings."""

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "unit_sandbox.py"), str(UNIT), "--",
             sys.executable, "-m", "panicd", "run", "-c", str(self.config_path),
             "--log-level", "debug", "--log-format", "json"],
            stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=ROOT)
        log.close()


WEBHOOK = """\
import errno, json, os, socket, sys, urllib.request
try:  # proves the unit's RestrictAddressFamilies= is in force around this hook
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    netlink = "allowed"
except OSError as exc:
    netlink = errno.errorcode[exc.errno]
body = json.dumps({"guest": os.environ["PANICD_GUEST"], "netlink": netlink}).encode()
urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=body), timeout=10).read()
"""


class Webhook(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_networked_hook_and_a_remote_scrape_work_under_the_units_settings(
    short_tmp: Path, mock_guests: list[MockGuest]
) -> None:
    # What can be applied without PID 1 is (tests/unit_sandbox.py); IPAddressDeny= is a
    # cgroup BPF filter only PID 1 attaches, which the unit tests above show is absent.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=server.serve_forever, name="webhook", daemon=True).start()
    hook = short_tmp / "webhook.py"
    hook.write_text(WEBHOOK)
    url = f"http://localhost:{server.server_address[1]}/alert"  # resolved, as a real hook does
    port = free_port()
    guest = mock_guests[0]
    config = (daemon_section(short_tmp, f'metrics_listen = "0.0.0.0:{port}"')
              + guests(short_tmp / "m0.qmp")
              + f'[[policy]]\non_panic = ["exec"]\n'
              f'exec = {{ command = ["{sys.executable}", "{hook}", "{url}"] }}\n')
    daemon = SandboxedPanicd(short_tmp, config)
    daemon.start()
    try:
        await daemon.wait_event("qmp.connected", guest=guest.name)
        guest.port.write(1)
        await daemon.wait_event("incident.handled", guest=guest.name)
        assert {"guest": guest.name, "netlink": "EAFNOSUPPORT"} in Webhook.received, daemon.tail()

        # Bound to every address, as a remote Prometheus needs; this host may only reach
        # itself, so the scrape comes over loopback.
        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
                return str(reply.read().decode())

        assert "panicd_panics_total 1.0" in await asyncio.to_thread(scrape)
        assert await daemon.stop() == 0
    finally:
        daemon.kill()
        server.shutdown()
        server.server_close()


async def test_a_dump_running_at_shutdown_is_completed_when_panicd_returns(
    short_tmp: Path, panicd: Start, journal: Journald
) -> None:
    name = unique("long")
    guest = MockGuest(name=name, memory_bytes=8 * 2**20, dump_bytes_per_second=4 * 2**20)  # 2 s
    await guest.start(short_tmp / "m0.qmp")
    try:
        config = (daemon_section(short_tmp) + guests(short_tmp / "m0.qmp")
                  + '[[policy]]\non_panic = ["dump", "pause"]\n')
        first = panicd(config)
        await first.wait_event("qmp.connected", guest=name)
        guest.port.write(1)
        await first.wait_event("dump.started")
        assert await first.stop() == 0  # SIGTERM in the middle of the dump
        (meta_path,) = (short_tmp / "dumps" / name).glob("*.json")
        assert json.loads(meta_path.read_text())["dump"]["result"] == "running"

        second = panicd(config)
        await second.wait_event("dump.orphan_completed", timeout=20)
        meta = json.loads(meta_path.read_text())
        dump = Path(meta["dump"]["path"])
        assert meta["dump"]["result"] == "completed"
        assert meta["dump"]["completed_while_panicd_was_away"] is True
        assert meta["dump"]["size_bytes"] == dump.stat().st_size > 8 * 2**20
        assert dump.read_bytes()[:4] == b"\x7fELF"
        (alert,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id,
                                      GUEST_NAME=name)
        assert alert["DUMP_PATH"] == str(dump)
        # The panic's steps were cut short, so they run again; the dump is not made twice.
        await second.wait_event("panic.resumed")
        await second.wait_event("dump.already_made")
        assert len(list((short_tmp / "dumps" / name).glob("*.elf"))) == 1
        assert await second.stop() == 0
    finally:
        await guest.stop()
