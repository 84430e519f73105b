"""`panicd triage --log`: the crash title and report from a kernel console log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from panicd.cli import main
from panicd.triage.title import signature_of
from tests.test_console_titles import CRASHED, REBOOTED, TITLE


def test_a_console_file_gives_the_last_boots_crash_title_and_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "serial.log"
    log.write_text(CRASHED)
    assert main(["triage", "--log", str(log)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"title:   {TITLE}"
    assert out[1] == f"signature: {signature_of(TITLE)}"
    assert out[2] == "kernel:  6.1.0-99-amd64"
    assert out[3] == "panic:   Kernel panic - not syncing: kernel: panic_on_warn set ..."


def test_end_offset_reads_the_log_as_it_was_at_the_panic(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "serial.log"
    log.write_text(CRASHED + REBOOTED)
    assert main(["triage", "--log", str(log), "--json"]) == 0
    # Read whole, the file's last boot is the restart's, whose crash is another one.
    assert json.loads(capsys.readouterr().out)["title"] == (
        "general protection fault in after_the_restart")
    assert main(["triage", "--log", str(log), "--json",
                 "--end-offset", str(len(CRASHED.encode()))]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["title"], report["source"], report["blamed_frame"]) == (
        TITLE, "console_log", "panicd_fake_probe")
    assert report["last_lines"][-1] == "Kernel panic - not syncing: kernel: panic_on_warn set ..."


def test_standard_input_is_read_like_a_file_with_journalctl_prefixes() -> None:
    # journalctl -k's short format: "Nov 26 14:10:06 host kernel: ".
    journal = "".join(f"Nov 26 14:10:06 web-01 kernel: {line.split('] ', 1)[1]}\n"
                      for line in CRASHED.splitlines())
    out = subprocess.run([sys.executable, "-m", "panicd", "triage", "--log", "-", "--json"],
                         input=journal.encode(), capture_output=True, check=True).stdout
    assert json.loads(out)["title"] == TITLE


def test_a_log_without_a_crash_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "serial.log"
    log.write_text("[    0.000000] Linux version 6.1.0-99-amd64 #1 SMP\n[    1.0] all is well\n")
    assert main(["triage", "--log", str(log)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "title:   (no crash in the log)"


def test_a_dump_and_a_log_together_or_neither_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["triage"]) == 2
    assert main(["triage", str(tmp_path / "d.elf"), "--log", "-"]) == 2
    assert "give a DUMP or --log FILE" in capsys.readouterr().err
    assert main(["triage", "--log", str(tmp_path / "missing.log")]) == 1
    assert "No such file" in capsys.readouterr().err


def test_links_and_fifos_are_refused_not_followed_or_waited_on(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "secret"
    secret.write_text("Kernel panic - not syncing: root's secret\n")
    (tmp_path / "link").symlink_to(secret)
    assert main(["triage", "--log", str(tmp_path / "link")]) == 1
    err = capsys.readouterr().err
    assert "is a symbolic link" in err and "secret" not in err.replace(str(tmp_path), "")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main(["triage", "--log", str(fifo)]) == 1  # at once: not waiting for a writer
    assert "is not a regular file" in capsys.readouterr().err


def test_the_panic_trailer_is_not_the_panic_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "serial.log"
    log.write_text("Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\n"
                   "---[ end Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b ]---\n")
    assert main(["triage", "--log", str(log), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["panic_reason"] == "Attempted to kill init! exitcode=0x0000000b"
    assert report["title"] == "kernel panic: Attempted to kill init!"


def test_end_offset_without_a_log_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["triage", "--log", "-", "--end-offset", "10"]) == 2
    assert main(["triage", str(tmp_path / "d.elf"), "--end-offset", "10"]) == 2
    assert "--end-offset goes with --log FILE" in capsys.readouterr().err
