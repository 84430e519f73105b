"""`panicd status` as an operator meets it: hostile guest names, and a config being edited.

A real QEMU is started with `-name` holding a newline and an ANSI colour sequence (QEMU
accepts both and returns them in query-name); a real `panicd run` watches it. The table
must show one line per guest with the name escaped, and `--json` the exact name.
`status` needs only `[daemon] control_socket`, so a config broken elsewhere still works,
with a warning; an unusable one says what is wrong and which socket was tried instead.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from panicd.cli import main
from panicd.config import DaemonConfig
from panicd.control import format_table
from tests.daemon_process import PanicdProcess, daemon_section
from tests.qemu_harness import QemuGuest

Start = Callable[..., PanicdProcess]
HOSTILE = "evil\n\x1b[31mred"
DEFAULT_SOCKET = DaemonConfig().control_socket


async def status(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, ["status", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


async def test_hostile_names_are_escaped_in_the_table_and_exact_in_json_despite_a_broken_policy(
    short_tmp: Path, panicd: Start, capsys: pytest.CaptureFixture[str]
) -> None:
    guest = QemuGuest(short_tmp / "qemu", name=HOSTILE)
    await guest.start()
    try:
        config = (daemon_section(short_tmp)
                  # The harness names the socket after the guest: JSON's escapes are TOML's.
                  + f"[[guest]]\nsocket = {json.dumps(str(guest.qmp_path))}\n"  # no name: query-name
                  + f'[[guest]]\nsocket = "{short_tmp}/plain.qmp"\nname = "plain"\n')
        daemon = panicd(config)
        await daemon.wait_event("qmp.connected", guest=HOSTILE)

        # The operator is editing the file the daemon runs: a typo in a policy.
        daemon.config_path.write_text(config + '[[policy]]\non_panic = ["explode"]\n')
        code, out, err = await status(capsys, "-c", str(daemon.config_path))
        assert code == 0, err
        assert err.splitlines() == [
            f"panicd status: warning: {daemon.config_path}: invalid configuration:",
            "policy[0].on_panic[0]: 'explode' is not one of dump, pause, resume, restart, "
            "poweroff, exec, nmi, wait_panic",
            f"panicd status: the daemon would refuse {daemon.config_path} on reload or restart "
            f"(see panicd check-config -c {daemon.config_path}); asking it at "
            f"{short_tmp}/control.sock, as the file says",
        ]
        assert "\x1b" not in out
        lines = out.splitlines()
        assert lines[0].startswith("NAME")
        rows = lines[1:3]
        assert lines[3:5] == ["", "2 guests, 1 connected, 0 panicked, 0 dumps running"]
        escaped = next(row for row in rows if row.startswith("evil"))
        assert escaped.split()[:3] == [
            "evil\\n\\x1b[31mred", str(guest.qmp_path).replace("\n", "\\n").replace(
                "\x1b", "\\x1b"), "connected"]
        assert next(row for row in rows if row.startswith("plain")).split()[2] in (
            "connecting", "disconnected")

        code, out, err = await status(capsys, "--json", "-c", str(daemon.config_path))
        assert code == 0
        names = {g["name"] for g in json.loads(out)["guests"]}
        assert names == {HOSTILE, "plain"}
        assert await daemon.stop() == 0
    finally:
        await guest.stop()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[guest]\nsocket =", "not valid TOML"),
        ("[daemon]\ncontrol_socket = 5\n", "daemon.control_socket: 5 is not a path"),
        ("daemon = 1\n", "daemon: must be a table"),
        (None, "cannot read"),
    ],
    ids=["not-toml", "bad-control-socket", "daemon-not-a-table", "missing-file"],
)
async def test_an_unusable_config_is_named_with_the_socket_tried_instead(
    short_tmp: Path, capsys: pytest.CaptureFixture[str], text: str | None, problem: str
) -> None:
    config = short_tmp / "panicd.toml"
    if text is not None:
        config.write_text(text)
    code, out, err = await status(capsys, "-c", str(config))
    lines = err.splitlines()
    assert lines[0].startswith(f"panicd status: {config}: ")
    assert problem in err
    assert (f"panicd status: no usable [daemon] control_socket in {config}; trying the "
            f"default, {DEFAULT_SOCKET}") in lines
    if not DEFAULT_SOCKET.exists():  # no panicd installed and running on this machine
        assert code == 1
        assert lines[-1].startswith(f"panicd status: cannot ask the daemon at {DEFAULT_SOCKET}: ")
        assert out == ""


async def test_a_config_invalid_elsewhere_still_names_the_socket_when_no_daemon_answers(
    short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = short_tmp / "panicd.toml"
    config.write_text(daemon_section(short_tmp) + "[daemon_typo]\n")
    code, out, err = await status(capsys, "-c", str(config))
    assert (code, out) == (1, "")
    assert "daemon_typo: unknown key" in err
    assert err.splitlines()[-1].startswith(
        f"panicd status: cannot ask the daemon at {short_tmp}/control.sock: ")
    assert str(DEFAULT_SOCKET) not in err


def test_a_socket_the_caller_may_not_use_says_who_may(short_tmp: Path) -> None:
    """Run as nobody (root would pass any mode): the hint names the settings that let one in."""
    path = short_tmp / "control.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    path.chmod(0o600)
    short_tmp.chmod(0o755)
    try:
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable,
             "-m", "panicd", "status", "--socket", str(path)],
            capture_output=True, text=True, timeout=30, check=False)
    finally:
        listener.close()
    assert result.returncode == 1
    assert "Permission denied" in result.stderr
    assert "control_group" in result.stderr and "control_allowed_uids" in result.stderr


def test_the_table_gives_the_last_panic_as_utc_to_the_second() -> None:
    table = format_table({"guests": [{"name": "web-01", "socket": "/s", "connection": "connected",
                                      "runstate": "running",
                                      "last_panic": "2026-11-26T17:40:52.482999+00:00"}]})
    assert "2026-11-26T17:40:52Z" in table and ".482999" not in table
