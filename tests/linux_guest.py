"""A real Linux guest that panics: Debian's kernel, busybox, and an initramfs built here.

The initramfs's /init mounts /proc and /sys, loads pvpanic, pvpanic-mmio and qemu_fw_cfg
(so the vmcoreinfo device is filled and QEMU's dumps carry VMCOREINFO), prints a marker, and
crashes the kernel with `echo c > /proc/sysrq-trigger`. Booted under TCG it panics in about
5 s. Needs linux-image-amd64 and busybox-static (`./run` installs them).
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

MODULES = Path("/usr/lib/modules")
MARKER = "panicd-test-guest: about to crash"

INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox insmod /pvpanic.ko
/bin/busybox insmod /pvpanic-mmio.ko
/bin/busybox insmod /qemu_fw_cfg.ko
echo "{MARKER}" > /dev/kmsg
echo c > /proc/sysrq-trigger
"""


def kernel() -> tuple[Path, str]:
    """The installed kernel image and its release."""
    releases = sorted(p.name for p in MODULES.iterdir()) if MODULES.exists() else []
    if not releases:
        raise RuntimeError("no kernel in /usr/lib/modules: install linux-image-amd64 (./run does)")
    release = releases[-1]
    image = Path(f"/boot/vmlinuz-{release}")
    if not image.exists():
        raise RuntimeError(f"{image} is missing")
    return image, release


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


def build_initramfs(dest: Path) -> Path:
    _, release = kernel()
    mods = MODULES / release / "kernel" / "drivers"
    files = {
        "pvpanic.ko": mods / "misc/pvpanic/pvpanic.ko",
        "pvpanic-mmio.ko": mods / "misc/pvpanic/pvpanic-mmio.ko",
        "qemu_fw_cfg.ko": mods / "firmware/qemu_fw_cfg.ko",
    }
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise RuntimeError("/bin/busybox is missing: install busybox-static (./run does)")
    entries: list[tuple[str, int, bytes]] = [
        ("bin", stat.S_IFDIR | 0o755, b""),
        ("proc", stat.S_IFDIR | 0o755, b""),
        ("sys", stat.S_IFDIR | 0o755, b""),
        ("dev", stat.S_IFDIR | 0o755, b""),
        ("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes()),
        ("init", stat.S_IFREG | 0o755, INIT.encode()),
    ]
    entries += [(name, stat.S_IFREG | 0o644, path.read_bytes()) for name, path in files.items()]
    dest.write_bytes(_newc(entries))
    return dest


def qemu_args(directory: Path, *, vmcoreinfo: bool = True, memory_mib: int = 256) -> list[str]:
    """Arguments (after the binary) that boot the crashing guest; add -qmp yourself."""
    image, _ = kernel()
    initramfs = build_initramfs(directory / "initramfs.cpio")
    args = ["-machine", "pc", "-accel", "tcg", "-m", str(memory_mib), "-display", "none",
            "-nodefaults", "-kernel", str(image), "-initrd", str(initramfs),
            "-append", "console=ttyS0 panic=0 quiet", "-device", "pvpanic",
            "-serial", f"file:{directory / 'serial.log'}"]
    if vmcoreinfo:
        args += ["-device", "vmcoreinfo"]
    os.sync()
    return args


async def crash_and_dump(directory: Path, *, vmcoreinfo: bool = True,
                         memory_mib: int = 256) -> dict[str, Path]:
    """Boot the guest, wait for its panic, dump it as elf and kdump-zlib; {format: path}."""
    qmp = directory / "g.qmp"
    proc = subprocess.Popen(  # noqa: ASYNC220 - killed below, never waited on long
        ["qemu-system-x86_64", *qemu_args(directory, vmcoreinfo=vmcoreinfo, memory_mib=memory_mib),
         "-action", "panic=pause", "-qmp", f"unix:{qmp},server=on,wait=off"])
    try:
        async with asyncio.timeout(10):
            while not qmp.exists():
                await asyncio.sleep(0.05)
        client = QMPClient("linux-guest")
        await client.connect(str(qmp))
        with client.listener("GUEST_PANICKED") as listener:
            status = await client.execute("query-status")
            if status["status"] != "guest-panicked":  # type: ignore[index]
                await asyncio.wait_for(listener.get(), 120)
        dumps = {}
        for fmt, name in (("elf", "guest.elf"), ("kdump-zlib", "guest.kdump")):
            fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            client.send_fd_scm(fd)
            os.close(fd)
            await client.execute("getfd", {"fdname": "dump"})
            args: dict[str, Any] = {"paging": False, "protocol": "fd:dump"}
            if fmt != "elf":
                args["format"] = fmt
            await client.execute("dump-guest-memory", args)
            dumps[fmt] = directory / name
        await client.disconnect()
        return dumps
    finally:
        proc.kill()
        proc.wait()
