"""A Debian 12 root with a real systemd as PID 1, for testing the shipped unit under systemd.

The root is made once by debootstrap (about 35 s) and cached under ~/.cache/panicd-tests/,
keyed by the suite and the package list. A test never writes into the cache: each boot mounts
an overlay (the cached root as its read-only lower layer, a fresh upper layer in the test's
directory) inside a new mount namespace, so the package, the configuration and the dumps of one
test vanish with it.

Booting: `unshare --pid --fork --mount --propagation private` makes the namespaces; in them the
overlay is mounted (itself a mount point, the cure for 226/NAMESPACE: systemd's sandboxing
(ProtectSystem=, PrivateTmp=, ...) remounts below the service's root and fails with EINVAL
when that root is not a mount point), proc is mounted, /sys and /dev are rbind-mounted, the
package is installed with the root's own dpkg, and `chroot ROOT /lib/systemd/systemd --system`
becomes PID 1. `systemctl` then works through `nsenter` into its namespaces.

Cleanup is a SIGKILL to that PID 1: the kernel kills every process of its PID namespace, and
the mount namespace (every mount made here, private to it) goes with its last process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

SUITE = "bookworm"
# python3.11 and procps: the package's Depends: (its virtualenv interpreter; /bin/kill for the
# unit's ExecReload=); the rest boots systemd.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3.11", "procps")
CACHE = Path.home() / ".cache/panicd-tests"


class SystemdRootError(Exception):
    """The root could not be made or booted (a test set-up failure, not panicd's)."""


def cached_root() -> Path:
    """The debootstrapped root for SUITE and PACKAGES, made on first use."""
    key = hashlib.sha256(f"{SUITE} {' '.join(sorted(PACKAGES))}".encode()).hexdigest()[:16]
    home = CACHE / f"debootstrap-{SUITE}-{key}"
    root = home / "root"
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one debootstrap, however many test runs wait
        if (home / "complete").exists():
            return root
        if shutil.which("debootstrap") is None:
            raise SystemdRootError("debootstrap is not installed (apt-get install debootstrap)")
        shutil.rmtree(home / "partial", ignore_errors=True)
        made = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                               SUITE, str(home / "partial")], capture_output=True, text=True,
                              check=False, timeout=900)
        if made.returncode != 0:
            raise SystemdRootError(f"debootstrap failed: {made.stdout[-2000:]}{made.stderr[-2000:]}")
        shutil.rmtree(root, ignore_errors=True)
        (home / "partial").rename(root)
        (home / "complete").touch()
    return root


class BootedSystemd:
    """systemd as PID 1 of its own PID and mount namespaces, in an overlay of the cached root."""

    def __init__(self, lower: Path, work: Path) -> None:
        self.lower = lower
        self.work = work
        #: The root as PID 1 sees it, a path in the new mount namespace only.
        self.root = work / "merged"
        self.unshare: subprocess.Popen[bytes] | None = None
        self.pid = 0  # PID 1's pid in this (the host's) PID namespace

    def boot(self, deb: Path, files: dict[str, str]) -> None:
        """Install `deb`, then write `files` ({path in the root: text}), then start systemd."""
        for name in ("upper", "ovl-work", "merged"):
            (self.work / name).mkdir(parents=True, exist_ok=True)
        staged = self.work / "upper/tmp"
        staged.mkdir(mode=0o1777, exist_ok=True)
        shutil.copy(deb, staged / "panicd.deb")
        for path, text in files.items():
            target = self.work / "files" / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        root = self.root
        script = "\n".join([
            "set -e",
            f"mount -t overlay overlay -o lowerdir={self.lower},upperdir={self.work / 'upper'},"
            f"workdir={self.work / 'ovl-work'} {root}",
            f"mount -t proc proc {root}/proc",
            f"mount --rbind /sys {root}/sys",
            f"mount --rbind /dev {root}/dev",
            # Installed before boot, like a host's image: the postinst enables the unit; it is
            # disabled again so each test starts it itself and sees the start happen.
            f"chroot {root} dpkg -i /tmp/panicd.deb >{self.work}/dpkg.log 2>&1",
            f"chroot {root} systemctl disable panicd.service >>{self.work}/dpkg.log 2>&1",
            # After dpkg: a file put in its way first would be a conffile conflict.
            f"if [ -d {self.work}/files ]; then cp -a {self.work}/files/. {root}/; fi",
            f"exec chroot {root} /lib/systemd/systemd --system",
        ])
        with (self.work / "boot.log").open("wb") as log:
            # A new session: a Ctrl-C at the terminal reaches pytest, not this PID 1.
            self.unshare = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount", "--propagation", "private",
                 "sh", "-c", script], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.unshare.poll() is not None:
                raise SystemdRootError(f"boot failed: {(self.work / 'boot.log').read_text()}"
                                       f"{self._read('dpkg.log')}")
            self.pid = self.pid or self._forked_child()
            if self.pid and self._comm(self.pid) == "systemd":
                state = self.systemctl("is-system-running").stdout.strip()
                if state and state not in ("offline", "initializing", "unknown"):
                    return  # "starting" is fine: the manager answers, the jobs are queued
            time.sleep(0.1)
        raise SystemdRootError(f"systemd did not come up: {(self.work / 'boot.log').read_text()}")

    def _read(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.work / name).read_text()
        return ""

    def _forked_child(self) -> int:
        assert self.unshare is not None
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children").read_text()
            if children.split():
                return int(children.split()[0])
        return 0

    @staticmethod
    def _comm(pid: int) -> str:
        with contextlib.suppress(OSError):
            return Path(f"/proc/{pid}/comm").read_text().strip()
        return ""

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command inside the booted root (its namespaces, root and working directory)."""
        return subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-p", "-r", "-w", *argv],
                              capture_output=True, text=True, check=False, timeout=timeout)

    def run_host_tool(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run one of the host's programs in the root's PID namespace (the root lacks some:
        minbase has no procps, so no kill)."""
        return subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-p", *argv],
                              capture_output=True, text=True, check=False, timeout=60)

    def systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", "--no-pager", *args)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        shown = self.systemctl("show", "-p", ",".join(properties), unit).stdout
        return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)

    def bind(self, host_dir: Path, path: str) -> None:
        """Bind-mount `host_dir` at `path` in the root (for services started from now on)."""
        # The namespace's own view: its root is the host's, so the booted root is self.root.
        target = f"{self.root}{path}"
        for argv in (["mkdir", "-p", target], ["mount", "--bind", str(host_dir), target]):
            done = subprocess.run(["nsenter", "-t", str(self.pid), "-m", *argv],
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemdRootError(f"{argv}: {done.stderr}")

    def shutdown(self) -> None:
        """SIGKILL PID 1: its PID namespace dies, and the private mounts with it."""
        if self.unshare is None:
            return
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.unshare.pid, signal.SIGKILL)
        self.unshare.wait(timeout=30)
        self.unshare = None


@contextlib.contextmanager
def booted_systemd(deb: Path, work: Path, files: dict[str, str]) -> Iterator[BootedSystemd]:
    system = BootedSystemd(cached_root(), work)
    try:
        system.boot(deb, files)
        yield system
    finally:
        system.shutdown()
