"""Real Debian guests crashed five ways, and what their dumps and serial consoles say.

One guest per crash kind of tests/linux_guest.py (sysrq, /init exiting, and the test module's
NULL pointer dereference, BUG() and WARN()), booted once for the module and all at once (each
is one TCG thread: about 13 s for the lot on two cores instead of 5 x 5 s). Each is dumped as
elf and triaged with the same code the daemon runs; the serial console file must hold the
same report, as a console-log triage will read it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from panicd.triage.memory import KernelMemory
from panicd.triage.printk import read_log
from panicd.triage.report import Report, open_dump, triage
from panicd.triage.title import crash_title, title_of_log
from panicd.triage.vmcoreinfo import Vmcoreinfo
from tests import linux_guest
from tests.linux_guest import (
    CRASH_KINDS,
    KERNEL_COMMAND_LINE,
    MARKER,
    MODULE_CRASHES,
    NO_CRASH,
    CrashKind,
    GuestDidNotPanic,
    crash_and_dump_timed,
    crash_module,
    kernel,
    serial_log,
)

#: A serial console line's printk timestamp, "[    4.369207] ".
CONSOLE_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\] ?")


@dataclass(frozen=True)
class Expected:
    """What one crash kind's kernel log holds on Debian 12's 6.1 kernel."""

    panic_reason: str  # a regex, matched in full
    first_problem: str | None  # a regex, matched in full; None: the panic is the only report
    blamed: str  # the function the report's stack (RIP line or call trace) must name


EXPECTED: dict[CrashKind, Expected] = {
    "sysrq": Expected(r"sysrq triggered crash", None, "sysrq_handle_crash"),
    "init-exit": Expected(r"Attempted to kill init! exitcode=0x00000100", None, "do_exit"),
    "null": Expected(r"Fatal exception",
                     r"BUG: kernel NULL pointer dereference, address: 0000000000000000",
                     "panicd_crash_null_deref"),
    "bug": Expected(r"Fatal exception", r"kernel BUG at panicd_crash\.c:\d+!", "panicd_crash_bug"),
    # 6.1.0-56 says "kernel: panic_on_warn set ...", older 6.1 builds "panic_on_warn set ...".
    "warn": Expected(r"(kernel: )?panic_on_warn set \.\.\.",
                     r"WARNING: CPU: \d+ PID: \d+ at panicd_crash\.c:\d+ "
                     r"panicd_crash_warn\+0x[0-9a-f]+/0x[0-9a-f]+ \[panicd_crash\]",
                     "panicd_crash_warn"),
}

#: syzkaller's titles for these crashes (its 6.x "BUG: kernel NULL pointer dereference, address:"
#: header keeps the older "unable to handle kernel NULL pointer dereference" title).
TITLES: dict[CrashKind, str] = {
    "sysrq": "kernel panic: sysrq triggered crash",
    "init-exit": "kernel panic: Attempted to kill init!",
    "null": "BUG: unable to handle kernel NULL pointer dereference in panicd_crash_null_deref",
    "bug": "kernel BUG in panicd_crash_bug",
    "warn": "WARNING in panicd_crash_warn",
}


@dataclass(frozen=True)
class CrashedGuest:
    report: Report
    dump_lines: list[str]  # the printk records read from the dump, one line each
    console_log: bytes  # the serial console file as QEMU wrote it
    console: list[str]  # the serial console, one line each, without timestamps
    boot_to_panic: float


@dataclass(frozen=True)
class CrashedGuests:
    by_kind: dict[CrashKind, CrashedGuest]
    #: A warn guest booted without panic_on_warn=1: the crash helper's error, and its console.
    warn_without_panic_on_warn: tuple[GuestDidNotPanic, list[str]]


def dump_lines(dump: Path) -> list[str]:
    """The kernel log in a dump, as the title rules read it: a record may hold several lines."""
    phys = open_dump(dump)
    try:
        info = Vmcoreinfo.from_notes(phys.notes())
        return [line for record in read_log(KernelMemory(phys, info), info)
                for line in record.text.split("\n")]
    finally:
        phys.close()


def console_lines(path: Path) -> list[str]:
    return [CONSOLE_TIMESTAMP.sub("", line).rstrip()
            for line in path.read_text(errors="replace").splitlines()]


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashedGuests]:
    """Every kind crashed and dumped (elf) once, concurrently, plus one warn guest that must not panic."""
    kernel()  # fail loudly, never skip, when the kernel or its headers are missing
    crash_module()
    base = tmp_path_factory.mktemp("crashes")

    async def crash(kind: CrashKind) -> tuple[dict[str, Path], float]:
        directory = base / kind
        directory.mkdir()
        return await crash_and_dump_timed(directory, crash=kind, formats=("elf",))

    async def warn_without_panic_on_warn() -> tuple[GuestDidNotPanic, list[str]]:
        directory = base / "warn-only"
        directory.mkdir()
        command_line = KERNEL_COMMAND_LINE.replace(" panic_on_warn=1", "")
        assert command_line != KERNEL_COMMAND_LINE
        with pytest.raises(GuestDidNotPanic) as error:
            await crash_and_dump_timed(directory, crash="warn", command_line=command_line,
                                       formats=("elf",))
        return error.value, console_lines(serial_log(directory))

    async def boot_all() -> tuple[list[tuple[dict[str, Path], float]],
                                  tuple[GuestDidNotPanic, list[str]]]:
        crashes = asyncio.gather(*(crash(kind) for kind in CRASH_KINDS))
        return await asyncio.gather(crashes, warn_without_panic_on_warn())

    results, no_panic = asyncio.run(boot_all())
    by_kind = {}
    for kind, (dumps, seconds) in zip(CRASH_KINDS, results, strict=True):
        by_kind[kind] = CrashedGuest(report=triage(dumps["elf"], lines=0),
                                     dump_lines=dump_lines(dumps["elf"]),
                                     console_log=serial_log(base / kind).read_bytes(),
                                     console=console_lines(serial_log(base / kind)),
                                     boot_to_panic=seconds)
        dumps["elf"].unlink()  # 256 MiB each: triaged, no longer needed
    yield CrashedGuests(by_kind, no_panic)
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("kind", CRASH_KINDS)
def test_the_dump_says_why_the_kernel_panicked(crashed: CrashedGuests, kind: CrashKind) -> None:
    report = crashed.by_kind[kind].report
    assert report.kernel_release == kernel()[1]
    assert report.panic_reason is not None
    assert re.fullmatch(EXPECTED[kind].panic_reason, report.panic_reason), report.panic_reason
    assert report.panic_line == f"Kernel panic - not syncing: {report.panic_reason}"


@pytest.mark.parametrize("kind", CRASH_KINDS)
def test_the_first_problem_and_its_stack_name_the_crashing_function(
    crashed: CrashedGuests, kind: CrashKind
) -> None:
    report, expected = crashed.by_kind[kind].report, EXPECTED[kind]
    if expected.first_problem is None:
        assert report.first_problem is None  # the panic itself is the report
    else:
        assert report.first_problem is not None
        assert re.fullmatch(expected.first_problem, report.first_problem), report.first_problem
    frames = "\n".join(report.call_trace)
    # A frame may be a compiler-split part of the function: "do_exit.cold+0x15/0x15".
    assert re.search(rf"\b{expected.blamed}(\.\w+)*\+0x", frames), frames
    if kind in MODULE_CRASHES:
        # The Oops or WARNING happened in the module's function: it is where RIP points, and
        # the module's init called it (a title's "in FUNCTION" comes from these lines).
        assert f"RIP: 0010:{expected.blamed}+0x" in frames
        assert re.search(r"^ panicd_crash_init\+0x[0-9a-f]+/0x[0-9a-f]+ \[panicd_crash\]$", frames, re.M)


@pytest.mark.parametrize("kind", CRASH_KINDS)
def test_the_serial_console_holds_the_same_report(crashed: CrashedGuests, kind: CrashKind) -> None:
    guest = crashed.by_kind[kind]
    report, console = guest.report, guest.console
    assert any(MARKER in line for line in console)
    start = console.index(report.first_problem or report.panic_line or "")
    # The dump's report lines, in the same order, right after the first problem (or panic)
    # line: what a console-log triage reads is what the dump triage read.
    dump_lines = [line.rstrip() for line in report.call_trace]
    assert console[start + 1:start + 1 + len(dump_lines)] == dump_lines
    assert report.panic_line in console[start:]


@pytest.mark.parametrize("kind", CRASH_KINDS)
def test_the_dump_and_the_serial_console_give_the_same_crash_title(
    crashed: CrashedGuests, kind: CrashKind
) -> None:
    guest = crashed.by_kind[kind]
    from_dump = crash_title(guest.dump_lines)
    assert from_dump is not None
    assert from_dump.title == TITLES[kind]
    assert not from_dump.corrupted
    assert from_dump.frame == MODULE_CRASHES.get(kind)  # the module's function, or none
    # Timestamps and all: the console path strips them and finds the very same title.
    assert title_of_log(guest.console_log) == from_dump


def test_a_warn_without_panic_on_warn_does_not_panic_and_the_helper_says_so_quickly(
    crashed: CrashedGuests,
) -> None:
    # Proof that panic_on_warn=1 on the command line is what turns the WARN into a panic; and
    # the guest powered off, so the helper failed at once with the console's end, not after
    # its 120 s wait for GUEST_PANICKED.
    error, console = crashed.warn_without_panic_on_warn
    assert "QEMU exited (0) with no panic" in str(error)
    assert NO_CRASH in str(error)  # the console's end comes with the error
    warning = next(i for i, line in enumerate(console) if line.startswith("WARNING: CPU:"))
    assert "panicd_crash_warn" in console[warning]
    assert NO_CRASH in "\n".join(console[warning:])
    assert not any("Kernel panic" in line for line in console)


def test_every_kind_panics_well_within_the_crash_helpers_wait(crashed: CrashedGuests) -> None:
    # 120 s is the helper's wait for GUEST_PANICKED; a boot is about 5 s alone, 13 s with all
    # six at once on two cores. A guest past 60 s (a loaded CI box stays well under) is one
    # whose /init no longer crashes it.
    for kind, guest in crashed.by_kind.items():
        assert guest.boot_to_panic < 60, (kind, guest.boot_to_panic)


@pytest.fixture
def fresh_module_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty $XDG_CACHE_HOME, and crash_module()'s in-process memo cleared before and after."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    crash_module.cache_clear()
    yield tmp_path / "cache" / "panicd-tests"
    crash_module.cache_clear()


def test_the_crash_module_is_built_once_and_rebuilt_when_its_source_changes(
    fresh_module_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = crash_module()
    assert first.parent == fresh_module_cache
    assert first.read_bytes()[:4] == b"\x7fELF"
    assert f"vermagic={kernel()[1]} " in first.read_bytes().decode("latin-1")
    assert [p.name for p in fresh_module_cache.iterdir()] == [first.name]  # no build leftovers

    def no_make(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a cache hit ran {args}")

    crash_module.cache_clear()  # a new test session: only the disk cache is left
    with monkeypatch.context() as no_build:
        no_build.setattr("tests.linux_guest.subprocess.run", no_make)
        assert crash_module() == first

    edited = tmp_path / "edited"
    shutil.copytree(linux_guest.CRASH_MODULE_SOURCE, edited)
    source = edited / "panicd_crash.c"
    source.write_text(source.read_text() + "/* edited */\n")
    monkeypatch.setattr(linux_guest, "CRASH_MODULE_SOURCE", edited)
    crash_module.cache_clear()
    second = crash_module()
    assert second != first
    assert second.exists() and first.exists()
