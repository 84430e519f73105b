"""Triage: the kernel log read back out of a real Linux guest's dump."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from panicd.alerts import AlertKind
from panicd.cli import main
from panicd.triage import NoVmcoreinfo, TriageError
from panicd.triage.report import triage
from tests.daemon_process import completed_dumps, daemon_section, metadata, unique
from tests.journal import Journald
from tests.linux_guest import MARKER, crash_and_dump, kernel, qemu_args


@pytest.fixture(scope="module")
def linux_dumps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Elf dumps of a real Debian kernel that panicked, with and without -device vmcoreinfo."""
    kernel()  # fails loudly, never skips, when the kernel package is missing
    dumps = {}
    for name, vmcoreinfo in (("with", True), ("without", False)):
        directory = tmp_path_factory.mktemp(f"linux-{name}")
        dumps[name] = asyncio.run(crash_and_dump(directory, vmcoreinfo=vmcoreinfo))["elf"]
    yield dumps
    for dump in dumps.values():
        shutil.rmtree(dump.parent, ignore_errors=True)


@pytest.mark.parametrize("suffix", [".elf", ".kdump"])
def test_the_panic_and_the_log_are_read_from_a_dump(linux_dumps: dict[str, Path], suffix: str) -> None:
    report = triage(linux_dumps["with"].with_suffix(suffix), lines=50)
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


@pytest.mark.parametrize("suffix", [".elf", ".kdump"])
def test_a_dump_without_vmcoreinfo_says_how_to_get_it(linux_dumps: dict[str, Path], suffix: str) -> None:
    with pytest.raises(NoVmcoreinfo, match="start the guest with -device vmcoreinfo"):
        triage(linux_dumps["without"].with_suffix(suffix))


def test_truncated_and_foreign_files_are_triage_errors(linux_dumps: dict[str, Path], tmp_path: Path) -> None:
    for suffix in (".elf", ".kdump"):
        source = linux_dumps["with"].with_suffix(suffix).read_bytes()
        for size in (0, 10, 64, 4096, len(source) // 3):
            cut = tmp_path / f"cut-{size}{suffix}"
            cut.write_bytes(source[:size])
            with pytest.raises(TriageError):
                triage(cut)
    other = tmp_path / "other"
    other.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(TriageError, match="neither an ELF core nor"):
        triage(other)


@pytest.mark.parametrize("fmt", ["elf", "kdump-zlib"])
async def test_panicd_puts_the_panic_reason_in_the_metadata_and_the_alert(
    short_tmp: Path, panicd: Any, journal: Journald, fmt: str
) -> None:
    name = unique("linux")
    qmp = short_tmp / "linux.qmp"
    proc = subprocess.Popen(  # noqa: ASYNC220 - killed below
        ["qemu-system-x86_64", *qemu_args(short_tmp), "-name", name,
         "-qmp", f"unix:{qmp},server=on,wait=off"])
    try:
        daemon = panicd(daemon_section(short_tmp) + f'[[guest]]\nsocket = "{qmp}"\n'
                        f'[[policy]]\non_panic = ["dump", "poweroff"]\ndump = {{ format = "{fmt}" }}\n')
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


@pytest.fixture(scope="module")
def fuzz_copies(linux_dumps: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
                ) -> dict[str, tuple[Path, list[tuple[int, int]]]]:
    """A copy of each dump, and the byte ranges a clean triage reads (where fuzzing bites)."""
    from panicd.triage import elf

    copies = {}
    for suffix in (".elf", ".kdump"):
        copy = tmp_path_factory.mktemp("fuzz") / f"dump{suffix}"
        shutil.copyfile(linux_dumps["with"].with_suffix(suffix), copy)
        seen: list[tuple[int, int]] = []
        original_elf = elf.ElfCore._bytes

        def spy_elf(self: Any, offset: int, size: int, seen: list[tuple[int, int]] = seen,
                    original: Any = original_elf) -> bytes:
            seen.append((offset, size))
            return original(self, offset, size)  # type: ignore[no-any-return]

        elf.ElfCore._bytes = spy_elf  # type: ignore[method-assign]
        try:
            triage(copy)
        finally:
            elf.ElfCore._bytes = original_elf  # type: ignore[method-assign]
        if suffix == ".kdump":  # read through mmap slices, not _bytes: fuzz its first MiB
            seen = [(0, 1 << 20)]
        copies[suffix] = (copy, [r for r in seen if r[1] > 0])
    return copies


@pytest.mark.parametrize("suffix", [".elf", ".kdump"])
def test_fuzzed_dumps_never_crash_or_hang_triage(
    fuzz_copies: dict[str, tuple[Path, list[tuple[int, int]]]], suffix: str
) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    path, ranges = fuzz_copies[suffix]

    @settings(max_examples=150, deadline=2000, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def check(data: st.DataObject) -> None:
        start, size = data.draw(st.sampled_from(ranges))
        at = start + data.draw(st.integers(0, max(0, size - 1)))
        garbage = data.draw(st.binary(min_size=1, max_size=16))
        with path.open("r+b") as f:
            f.seek(at)
            saved = f.read(len(garbage))
            f.seek(at)
            f.write(garbage)
        try:
            triage(path)  # a report, or TriageError: nothing else, and quickly
        except TriageError:
            pass
        finally:
            with path.open("r+b") as f:
                f.seek(at)
                f.write(saved)

    check()


async def test_the_daemon_side_survives_a_hostile_dump(tmp_path: Path) -> None:
    from panicd.triage.run import triage_in_child

    bogus = tmp_path / "bogus.elf"
    bogus.write_bytes(b"\x7fELF" + b"\xff" * 4000)
    report = await triage_in_child(bogus)
    assert "error" in report
    assert "ELF" in report["error"]
    slow = await triage_in_child(bogus, timeout=0.001)  # killed, not waited for
    assert "gave up" in slow["error"]


async def test_a_guest_without_vmcoreinfo_is_still_dumped_with_the_reason_why_not_read(
    short_tmp: Path, panicd: Any, journal: Journald
) -> None:
    name = unique("novmci")
    qmp = short_tmp / "linux.qmp"
    proc = subprocess.Popen(  # noqa: ASYNC220 - killed below
        ["qemu-system-x86_64", *qemu_args(short_tmp, vmcoreinfo=False), "-name", name,
         "-qmp", f"unix:{qmp},server=on,wait=off"])
    try:
        daemon = panicd(daemon_section(short_tmp) + f'[[guest]]\nsocket = "{qmp}"\n'
                        '[[policy]]\non_panic = ["dump", "poweroff"]\n')
        (dump,) = await completed_dumps(short_tmp, name, timeout=90)
        assert "start the guest with -device vmcoreinfo" in metadata(dump)["triage"]["error"]
        (alert,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id, GUEST_NAME=name)
        assert "start the guest with -device vmcoreinfo" in alert["TRIAGE_ERROR"]
        assert "PANIC_REASON" not in alert
        assert await daemon.stop() == 0
    finally:
        proc.kill()
        proc.wait()


def test_the_triage_command_escapes_what_the_guest_wrote(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The kernel log is the guest's to write: a line may hold ESC sequences or a fake newline.
    from panicd.triage import report as triage_report

    hostile = "evil\x1b[2J\x1b[31mred\rover"
    fake = triage_report.Report(kernel_release="6.1\x1b]0;title\x07", panic_line=hostile,
                                panic_reason=hostile, first_problem=hostile,
                                call_trace=[hostile], last_lines=[hostile, "plain"], records=2)
    monkeypatch.setattr(triage_report, "triage", lambda path, lines=50: fake)
    assert main(["triage", str(tmp_path / "any.elf")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out
    assert "panic:   evil\\x1b[2J\\x1b[31mred\\rover" in out
    assert "kernel:  6.1\\x1b]0;title\\x07" in out
    assert main(["triage", "--json", str(tmp_path / "any.elf")]) == 0
    assert json.loads(capsys.readouterr().out)["panic_line"] == hostile  # exact in JSON
