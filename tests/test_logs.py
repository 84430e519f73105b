"""Where log lines go: the journal under systemd, readable on a terminal, JSON elsewhere."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from panicd import logs


def test_stderr_connected_to_journald_means_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = (tmp_path / "stream").open("w")
    st = os.fstat(stream.fileno())
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert logs.resolve("auto") == "journal"
    # A JOURNAL_STREAM inherited by a process whose stderr went elsewhere is not the journal.
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")
    assert logs.resolve("auto") == "json"
    assert logs.resolve("console") == "console"
    stream.close()


def test_journal_fields_are_valid_names() -> None:
    fields = logs.journal_fields({"event": "dump.completed", "level": "warning", "guest": "web-01",
                                  "socket": "/run/q.qmp", "bytes": 12, "weird-key!": [1],
                                  "message": "x", "timestamp": "t"})
    assert fields["EVENT"] == "dump.completed"
    assert fields["PRIORITY"] == "4"
    assert fields["GUEST_NAME"] == "web-01"
    assert fields["QMP_SOCKET"] == "/run/q.qmp"
    assert fields["BYTES"] == "12"
    assert fields["WEIRD_KEY_"] == "[1]"
    assert fields["PANICD_MESSAGE"] == "x"
    assert "TIMESTAMP" not in fields
    assert fields["MESSAGE"].startswith("dump.completed ")


def test_console_lines_escape_control_characters_in_values(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import structlog

    logs.configure("info", "console")
    structlog.get_logger("t").warning("qmp.connected", guest="web\n\x1b[31mred", uuid=None)
    err = capsys.readouterr().err
    assert "\x1b[31mred" not in err
    assert "web\\n\\x1b[31mred" in err
    assert err.count("\n") == 1  # one line, whatever the guest called itself
