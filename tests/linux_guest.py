"""A real Linux guest that panics: Debian's kernel, busybox, and an initramfs built here.

The initramfs's /init mounts /proc and /sys, loads pvpanic, pvpanic-mmio and qemu_fw_cfg
(so the vmcoreinfo device is filled and QEMU's dumps carry VMCOREINFO), prints a marker, and
crashes the kernel one of several ways (`CRASH_KINDS`):

- `sysrq`: `echo c > /proc/sysrq-trigger` ("Kernel panic - not syncing: sysrq triggered crash");
- `init-exit`: /init exits, and PID 1 exiting panics ("Attempted to kill init!");
- `null`, `bug`, `warn`: `insmod panicd_crash.ko crash=KIND`, the test module in
  tests/crash_module/, built here against the guest kernel's headers (`crash_module`) and cached:
  a NULL pointer dereference in panicd_crash_null_deref, BUG() in panicd_crash_bug, WARN() in
  panicd_crash_warn. The kernel command line has oops=panic (Debian's kernel only kills the
  task on an Oops) and panic_on_warn=1, so each of them panics.

A guest that hangs instead (`watchdog_qemu_args`): its /init loads the watchdog core and
i6300esb modules, arms QEMU's `-device i6300esb` through busybox's `watchdog` applet, then kills
the applet with SIGKILL (no magic close, so the armed device is never disabled) and idles:
nobody feeds the watchdog, and QEMU reports WATCHDOG a few seconds later. Booted with
`unknown_nmi_panic=1` (`WATCHDOG_NMI_COMMAND_LINE`), such a guest panics on an NMI.

loglevel=7 (no `quiet`) lets the whole report reach the serial console: with `quiet` the
console shows only levels below 4, and the WARNING line, registers and call trace are level 4.
Booted under TCG a guest panics in about 5 s. Needs linux-image-amd64, linux-headers-amd64 and
busybox-static (`./run setup` installs them).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from qemu.qmp import QMPClient

MODULES = Path("/usr/lib/modules")
MARKER = "panicd-test-guest: about to crash"
NO_CRASH = "panicd-test-guest: still alive after the crash"
CRASH_MODULE_SOURCE = Path(__file__).resolve().parent / "crash_module"
CRASH_MODULE_FILES = ("panicd_crash.c", "Kbuild")

CrashKind = Literal["sysrq", "init-exit", "null", "bug", "warn"]
CRASH_KINDS: tuple[CrashKind, ...] = get_args(CrashKind)
MODULE_CRASHES: dict[CrashKind, str] = {"null": "panicd_crash_null_deref", "bug": "panicd_crash_bug",
                                        "warn": "panicd_crash_warn"}
"""The kinds the test module makes, and the module function each crash happens in."""

# oops=panic: Debian's CONFIG_PANIC_ON_OOPS is off, so without it an Oops in insmod kills insmod
# and /init goes on. panic=0: stay panicked (QEMU's panic action decides), never reboot.
KERNEL_COMMAND_LINE = "console=ttyS0 panic=0 oops=panic panic_on_warn=1 loglevel=7"

_INIT_PRELUDE = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox insmod /pvpanic.ko
/bin/busybox insmod /pvpanic-mmio.ko
/bin/busybox insmod /qemu_fw_cfg.ko
"""
_CRASH_COMMANDS: dict[CrashKind, str] = {
    "sysrq": "echo c > /proc/sysrq-trigger",
    # The shell running /init is PID 1: its exit is the panic.
    "init-exit": "exit 1",
    **{kind: f"/bin/busybox insmod /panicd_crash.ko crash={kind}" for kind in MODULE_CRASHES},
}


WATCHDOG_MARKER = "panicd-test-guest: watchdog armed, no longer fed"
#: The hanging guest's command line with unknown_nmi_panic=1: an NMI no driver claims panics
#: it ("Kernel panic - not syncing: NMI: Not continuing").
WATCHDOG_NMI_COMMAND_LINE = f"{KERNEL_COMMAND_LINE} unknown_nmi_panic=1"
#: The applet's timeout (-T) and feeding period (-t), in seconds.
WATCHDOG_TIMEOUT, WATCHDOG_PERIOD = 2, 1

# The applet runs in the background (-F: not daemonized, so $! is its pid). Killed with SIGKILL
# it cannot write the magic 'V' that disables the device on close (it does on SIGTERM), so the
# i6300esb stays armed, unfed ("watchdog did not stop!"). PID 1 then idles: its exit would be a
# panic. QEMU's WATCHDOG comes about 5 s after (the device counts two stages), ~9 s after boot.
_WATCHDOG_INIT = f"""{_INIT_PRELUDE}/bin/busybox insmod /watchdog.ko
/bin/busybox insmod /i6300esb.ko
/bin/busybox watchdog -F -T {WATCHDOG_TIMEOUT} -t {WATCHDOG_PERIOD} /dev/watchdog &
/bin/busybox sleep 2
kill -KILL $!
echo "{WATCHDOG_MARKER}" > /dev/kmsg
while true; do /bin/busybox sleep 3600; done
"""


def init_script(crash: CrashKind = "sysrq") -> str:
    """The guest's /init for one crash kind; if the crash did not panic, it says so and powers off."""
    fallback = "" if crash == "init-exit" else (
        f'echo "{NO_CRASH}" > /dev/kmsg\n/bin/busybox poweroff -f\n')
    return (f'{_INIT_PRELUDE}echo "{MARKER}" > /dev/kmsg\n'
            f"{_CRASH_COMMANDS[crash]}\n{fallback}")


INIT = init_script()  # the sysrq guest's /init, as before the other kinds existed


def _release_order(release: str) -> list[tuple[int, str]]:
    """A sort key that puts 6.1.0-10-amd64 after 6.1.0-9-amd64."""
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"(\d+)", release)]


def kernel() -> tuple[Path, str]:
    """The kernel image the guest boots and its release.

    The newest release with both /boot/vmlinuz-R and headers (/usr/lib/modules/R/build), so
    the test module builds for the kernel that boots; else the newest with an image, for
    guests that need no module (`crash_module` then says the headers are missing).
    """
    releases = sorted((p.name for p in MODULES.iterdir() if p.is_dir()), key=_release_order) \
        if MODULES.exists() else []
    bootable = [r for r in releases if Path(f"/boot/vmlinuz-{r}").exists()]
    if not bootable:
        raise RuntimeError(f"no kernel to boot: none of {releases or 'no release'} in {MODULES} has a "
                           "/boot/vmlinuz-RELEASE; install linux-image-amd64 (./run setup does)")
    with_headers = [r for r in bootable if (MODULES / r / "build").is_dir()]
    release = (with_headers or bootable)[-1]
    return Path(f"/boot/vmlinuz-{release}"), release


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "panicd-tests"


def _crash_module_key(release: str, headers: Path) -> str:
    """What the built module depends on: its source, the release, and that release's headers.

    The headers' Module.symvers (symbol CRCs), .config and package version change with every
    new build of the kernel package, even under the same release name.
    """
    digest = hashlib.sha256(release.encode())
    for path in [*(CRASH_MODULE_SOURCE / name for name in CRASH_MODULE_FILES),
                 headers / "Module.symvers", headers / ".config",
                 headers / "include/generated/package.h", headers / "include/generated/utsversion.h"]:
        digest.update(path.name.encode() + b"\0")
        with contextlib.suppress(FileNotFoundError):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


@functools.cache
def crash_module() -> Path:
    """tests/crash_module/ built for the guest kernel, from the cache when its inputs are unchanged.

    Cached as $XDG_CACHE_HOME/panicd-tests/panicd_crash-RELEASE-KEY.ko (KEY hashes the source
    and the headers), so only the first build on a machine, or one after a change, runs make;
    within one process the path is remembered.
    """
    _, release = kernel()
    headers = MODULES / release / "build"
    if not headers.is_dir():
        raise RuntimeError(f"cannot build the test module: {headers} is missing; install "
                           f"linux-headers-{release} (./run setup installs linux-headers-amd64)")
    cache = _cache_dir()
    cached = cache / f"panicd_crash-{release}-{_crash_module_key(release, headers)}.ko"
    if cached.exists():
        return cached
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix="build-") as build:
        for name in CRASH_MODULE_FILES:
            shutil.copyfile(CRASH_MODULE_SOURCE / name, Path(build) / name)
        result = subprocess.run(["make", "-C", str(headers), f"M={build}", "modules"],
                                capture_output=True, text=True, check=False)
        built = Path(build) / "panicd_crash.ko"
        if result.returncode != 0 or not built.exists():
            raise RuntimeError(f"building the test module against {headers} failed "
                               f"(exit {result.returncode}):\n{result.stdout}{result.stderr}")
        # A rename: a concurrent session sees the whole module or none.
        built.replace(cached)
    return cached


def _newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A cpio archive in the kernel's "newc" format from (name, mode, data)."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out += b"070701" + b"".join(f"{f:08x}".encode() for f in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def _drivers() -> Path:
    _, release = kernel()
    return MODULES / release / "kernel" / "drivers"


def _base_modules() -> dict[str, Path]:
    mods = _drivers()
    return {
        "pvpanic.ko": mods / "misc/pvpanic/pvpanic.ko",
        "pvpanic-mmio.ko": mods / "misc/pvpanic/pvpanic-mmio.ko",
        "qemu_fw_cfg.ko": mods / "firmware/qemu_fw_cfg.ko",
    }


def build_initramfs(dest: Path, crash: CrashKind = "sysrq") -> Path:
    files = _base_modules()
    if crash in MODULE_CRASHES:
        files["panicd_crash.ko"] = crash_module()
    return _write_initramfs(dest, init_script(crash), files)


def build_watchdog_initramfs(dest: Path) -> Path:
    """The initramfs of a guest that arms its i6300esb watchdog and stops feeding it."""
    mods = _drivers()
    files = {**_base_modules(), "watchdog.ko": mods / "watchdog/watchdog.ko",
             "i6300esb.ko": mods / "watchdog/i6300esb.ko"}
    return _write_initramfs(dest, _WATCHDOG_INIT, files)


def _write_initramfs(dest: Path, init: str, files: dict[str, Path]) -> Path:
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise RuntimeError("/bin/busybox is missing: install busybox-static (./run does)")
    entries: list[tuple[str, int, bytes]] = [
        ("bin", stat.S_IFDIR | 0o755, b""),
        ("proc", stat.S_IFDIR | 0o755, b""),
        ("sys", stat.S_IFDIR | 0o755, b""),
        ("dev", stat.S_IFDIR | 0o755, b""),
        ("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()),
        ("init", stat.S_IFREG | 0o755, init.encode()),
    ]
    entries += [(name, stat.S_IFREG | 0o644, path.read_bytes()) for name, path in files.items()]
    dest.write_bytes(_newc(entries))
    return dest


def serial_log(directory: Path) -> Path:
    """Where the guest started by `qemu_args(directory)` writes its serial console."""
    return directory / "serial.log"


def qemu_args(directory: Path, *, vmcoreinfo: bool = True, memory_mib: int = 256,
              crash: CrashKind = "sysrq", command_line: str = KERNEL_COMMAND_LINE) -> list[str]:
    """Arguments (after the binary) that boot a guest that crashes as `crash` says; add -qmp yourself.

    The initramfs is written into `directory`, and the serial console to `serial_log(directory)`.
    """
    initramfs = build_initramfs(directory / "initramfs.cpio", crash)
    return _boot_args(directory, initramfs, vmcoreinfo=vmcoreinfo, memory_mib=memory_mib,
                      command_line=command_line)


def watchdog_qemu_args(directory: Path, *, memory_mib: int = 256,
                       command_line: str = KERNEL_COMMAND_LINE) -> list[str]:
    """Arguments (after the binary) that boot a guest whose i6300esb watchdog goes unfed a few
    seconds in (`WATCHDOG_MARKER` on its console); add -qmp and the watchdog action yourself."""
    initramfs = build_watchdog_initramfs(directory / "initramfs.cpio")
    return [*_boot_args(directory, initramfs, vmcoreinfo=True, memory_mib=memory_mib,
                        command_line=command_line), "-device", "i6300esb"]


def _boot_args(directory: Path, initramfs: Path, *, vmcoreinfo: bool, memory_mib: int,
               command_line: str) -> list[str]:
    image, _ = kernel()
    args = ["-machine", "pc", "-accel", "tcg", "-m", str(memory_mib), "-display", "none",
            "-nodefaults", "-kernel", str(image), "-initrd", str(initramfs),
            "-append", command_line, "-device", "pvpanic",
            "-serial", f"file:{serial_log(directory)}"]
    if vmcoreinfo:
        args += ["-device", "vmcoreinfo"]
    os.sync()
    return args


class GuestDidNotPanic(RuntimeError):
    """The guest's QEMU exited (e.g. /init powered off after a crash that did not panic)."""


async def _wait_for_panic(client: QMPClient, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Until GUEST_PANICKED; GuestDidNotPanic as soon as QEMU exits instead."""
    with client.listener("GUEST_PANICKED") as listener:
        status = await client.execute("query-status")
        if status["status"] == "guest-panicked":  # type: ignore[index]
            return
        async with asyncio.timeout(timeout):
            panicked = asyncio.ensure_future(listener.get())
            try:
                while not panicked.done():
                    if proc.poll() is not None:
                        raise GuestDidNotPanic(f"QEMU exited ({proc.returncode}) with no panic")
                    await asyncio.wait([panicked], timeout=0.2)
            finally:
                panicked.cancel()


async def crash_and_dump(directory: Path, *, vmcoreinfo: bool = True, memory_mib: int = 256,
                         crash: CrashKind = "sysrq", command_line: str = KERNEL_COMMAND_LINE,
                         formats: Sequence[str] = ("elf", "kdump-zlib")) -> dict[str, Path]:
    """Boot the guest, wait for its panic, dump it in each format; {format: path}.

    The dumps are directory/guest.elf and directory/guest.kdump, the console serial_log(directory).
    """
    return (await crash_and_dump_timed(directory, vmcoreinfo=vmcoreinfo, memory_mib=memory_mib,
                                       crash=crash, command_line=command_line, formats=formats))[0]


async def crash_and_dump_timed(directory: Path, *, vmcoreinfo: bool = True, memory_mib: int = 256,
                               crash: CrashKind = "sysrq", command_line: str = KERNEL_COMMAND_LINE,
                               formats: Sequence[str] = ("elf", "kdump-zlib"),
                               ) -> tuple[dict[str, Path], float]:
    """`crash_and_dump`, and the seconds from starting QEMU to its GUEST_PANICKED."""
    qmp = directory / "g.qmp"
    args = qemu_args(directory, vmcoreinfo=vmcoreinfo, memory_mib=memory_mib, crash=crash,
                     command_line=command_line)
    started = time.monotonic()
    proc = subprocess.Popen(  # noqa: ASYNC220 - killed below, never waited on long
        ["qemu-system-x86_64", *args, "-action", "panic=pause",
         "-qmp", f"unix:{qmp},server=on,wait=off"])
    try:
        async with asyncio.timeout(10):
            while not qmp.exists():
                await asyncio.sleep(0.05)
        client = QMPClient("linux-guest")
        await client.connect(str(qmp))
        try:
            await _wait_for_panic(client, proc, 120)
        except GuestDidNotPanic as error:
            with contextlib.suppress(Exception):  # QEMU is gone: the reader saw EOF
                await client.disconnect()
            tail = serial_log(directory).read_text(errors="replace").splitlines()[-30:]
            raise GuestDidNotPanic(f"{error}; the {crash} guest's serial console ended:\n"
                                   + "\n".join(tail)) from None
        boot_to_panic = time.monotonic() - started
        dumps = {}
        for fmt in formats:
            name = {"elf": "guest.elf", "kdump-zlib": "guest.kdump"}[fmt]
            fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            client.send_fd_scm(fd)
            os.close(fd)
            await client.execute("getfd", {"fdname": "dump"})
            dump_args: dict[str, Any] = {"paging": False, "protocol": "fd:dump"}
            if fmt != "elf":
                dump_args["format"] = fmt
            await client.execute("dump-guest-memory", dump_args)
            dumps[fmt] = directory / name
        await client.disconnect()
        return dumps, boot_to_panic
    finally:
        proc.kill()
        proc.wait()
