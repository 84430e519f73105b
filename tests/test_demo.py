"""The quick start's demo runs through: a mock and a real QEMU guest panic, both are dumped."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from panicd import demo
from tests.journal import Journald


def test_demo_dumps_every_panicked_guest(
    short_tmp: Path, journal: Journald, capsys: pytest.CaptureFixture[str]
) -> None:
    assert demo.main(work_dir=short_tmp, use_qemu=True) == 0
    metas = sorted((short_tmp / "dumps").glob("*/*.json"))
    assert [m.parent.name for m in metas] == ["demo-qemu-01", "demo-web-01"]
    assert all(json.loads(m.read_text())["dump"]["result"] == "completed" for m in metas)
    shown = capsys.readouterr().out
    assert "Guest demo-qemu-01 panicked" in shown  # read back from the journal
    assert "demo-db-01     connected  runstate=running    never panicked: left alone" in shown
    assert "demo-web-01    connected  runstate=running    panicked earlier: dumped, then" in shown
    history = shown[shown.index("Incident history"):]
    assert "demo-qemu-01" in history and "demo-web-01" in history
    assert history.count("dump:ok restart:ok") == 2
    # The mock's serial console gave its crash a title (its dump holds no kernel log).
    title = "WARNING in demo_web_01_handle_request"
    assert f"Guest demo-web-01: new crash signature: {title}" in shown
    assert f"Guest demo-web-01: {title} (new); memory dump written" in shown
    signatures = shown[shown.index("Crash signatures"):]
    assert signatures.splitlines()[2].split()[1:3] == ["1", "1"]
    assert title in signatures.splitlines()[2]


def test_a_socket_left_by_a_journald_that_is_gone_is_not_a_journald(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Left behind by a stopped journald, the socket file refuses: the demo must start one.
    path = short_tmp / "socket"
    monkeypatch.setattr(demo, "JOURNAL_SOCKET", path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as live:
        live.bind(str(path))
        assert demo.journald_answers()
    assert path.exists()
    assert not demo.journald_answers()
