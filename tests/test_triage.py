"""Triage: the kernel log read back out of a real Linux guest's dump."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from panicd.alerts import AlertKind
from panicd.cli import main
from panicd.triage import NoVmcoreinfo, TriageError
from panicd.triage.report import triage
from tests.daemon_process import completed_dumps, daemon_section, metadata, unique
from tests.journal import Journald
from tests.linux_guest import MARKER, kernel, qemu_args


async def _crash_and_dump(directory: Path, vmcoreinfo: bool) -> Path:
    qmp = directory / "g.qmp"
    proc = subprocess.Popen(  # noqa: ASYNC220 - killed below, never waited on long
        ["qemu-system-x86_64", *qemu_args(directory, vmcoreinfo=vmcoreinfo),
         "-action", "panic=pause", "-qmp", f"unix:{qmp},server=on,wait=off"])
    try:
        async with asyncio.timeout(10):
            while not qmp.exists():
                await asyncio.sleep(0.05)
        client = QMPClient("triage-test")
        await client.connect(str(qmp))
        with client.listener("GUEST_PANICKED") as listener:
            status = await client.execute("query-status")
            if status["status"] != "guest-panicked":  # type: ignore[index]
                await asyncio.wait_for(listener.get(), 60)
        dump = directory / "guest.elf"
        fd = os.open(dump, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        client.send_fd_scm(fd)
        os.close(fd)
        await client.execute("getfd", {"fdname": "dump"})
        await client.execute("dump-guest-memory", {"paging": False, "protocol": "fd:dump"})
        await client.disconnect()
        return dump
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def linux_dumps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Elf dumps of a real Debian kernel that panicked, with and without -device vmcoreinfo."""
    kernel()  # fails loudly, never skips, when the kernel package is missing
    dumps = {}
    for name, vmcoreinfo in (("with", True), ("without", False)):
        directory = tmp_path_factory.mktemp(f"linux-{name}")
        dumps[name] = asyncio.run(_crash_and_dump(directory, vmcoreinfo))
    yield dumps
    for dump in dumps.values():
        shutil.rmtree(dump.parent, ignore_errors=True)


def test_the_panic_and_the_log_are_read_from_an_elf_dump(linux_dumps: dict[str, Path]) -> None:
    report = triage(linux_dumps["with"], lines=50)
    _, release = kernel()
    assert report.kernel_release == release
    assert report.panic_reason == "sysrq triggered crash"
    assert report.panic_line == "Kernel panic - not syncing: sysrq triggered crash"
    assert any("sysrq_handle_crash" in line for line in report.call_trace)
    assert len(report.last_lines) == 50
    assert report.records > 100
    texts = "\n".join(report.last_lines)
    assert "sysrq: Trigger a crash" in texts
    assert any(MARKER in line for line in report.last_lines)  # what /init wrote to /dev/kmsg


def test_a_dump_without_vmcoreinfo_says_how_to_get_it(linux_dumps: dict[str, Path]) -> None:
    with pytest.raises(NoVmcoreinfo, match="start the guest with -device vmcoreinfo"):
        triage(linux_dumps["without"])


def test_truncated_and_foreign_files_are_triage_errors(linux_dumps: dict[str, Path], tmp_path: Path) -> None:
    source = linux_dumps["with"].read_bytes()
    for size in (0, 10, 64, 4096, len(source) // 3):
        cut = tmp_path / f"cut-{size}.elf"
        cut.write_bytes(source[:size])
        with pytest.raises(TriageError):
            triage(cut)
    other = tmp_path / "other"
    other.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(TriageError, match="neither an ELF core nor"):
        triage(other)


async def test_panicd_puts_the_panic_reason_in_the_metadata_and_the_alert(
    short_tmp: Path, panicd: Any, journal: Journald
) -> None:
    name = unique("linux")
    qmp = short_tmp / "linux.qmp"
    proc = subprocess.Popen(  # noqa: ASYNC220 - killed below
        ["qemu-system-x86_64", *qemu_args(short_tmp), "-name", name,
         "-qmp", f"unix:{qmp},server=on,wait=off"])
    try:
        daemon = panicd(daemon_section(short_tmp) + f'[[guest]]\nsocket = "{qmp}"\n'
                        '[[policy]]\non_panic = ["dump", "poweroff"]\n')
        (dump,) = await completed_dumps(short_tmp, name, timeout=90)
        triage_report = metadata(dump)["triage"]
        _, release = kernel()
        assert triage_report["panic_reason"] == "sysrq triggered crash"
        assert triage_report["kernel_release"] == release
        (alert,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id, GUEST_NAME=name)
        assert alert["PANIC_REASON"] == "sysrq triggered crash"
        assert alert["KERNEL_RELEASE"] == release
        assert "Kernel panic - not syncing: sysrq triggered crash" in alert["KERNEL_LOG"]
        assert "sysrq triggered crash" in alert["MESSAGE"]
        assert await daemon.stop() == 0
    finally:
        proc.kill()
        proc.wait()


def test_the_triage_command(linux_dumps: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["triage", str(linux_dumps["with"]), "--lines", "5"]) == 0
    out = capsys.readouterr().out
    assert "panic:   Kernel panic - not syncing: sysrq triggered crash" in out
    assert "last 5 of" in out
    assert main(["triage", "--json", str(linux_dumps["with"])]) == 0
    assert json.loads(capsys.readouterr().out)["panic_reason"] == "sysrq triggered crash"
    assert main(["triage", str(linux_dumps["without"])]) == 1
    assert "start the guest with -device vmcoreinfo" in capsys.readouterr().err
