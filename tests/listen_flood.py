"""Hostile peers on panicd's `[discovery] listen` socket, and panicd's memory while they come.

Each flooding peer is a process of its own (panicd keys a dial-in guest by the peer's pid, so
peers sharing one pid would only replace each other), connects as an allowed uid (the tests
run as root) and sends one endless line, 1 MiB at a time and never a newline, until `total`
bytes are out or panicd closes the connection. A QEMU greets with under 1 KiB; anything this
long is not a QEMU.

Memory is read from /proc/PID/status: VmRSS (now) and VmHWM (the peak since the process
started, kept by the kernel, so no sampling can miss it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20

#: Forks one child per peer; each connects, sends, and prints one JSON line when it stops.
_PEERS = r"""
import json, os, socket, sys
path, peers, total, give_up = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
block = b"x" * (1 << 20)
children = []
for _ in range(peers):
    pid = os.fork()
    if pid == 0:
        sent, outcome = 0, "sent_all"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(give_up)
        try:
            sock.connect(path)
            while sent < total:
                sent += sock.send(block[: min(len(block), total - sent)])
        except TimeoutError:
            outcome = "stalled"
        except OSError:
            outcome = "cut_off"
        os.write(1, (json.dumps({"sent": sent, "outcome": outcome}) + "\n").encode())
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
"""


@dataclass
class FloodResult:
    sent: int
    #: "cut_off" (panicd closed the connection), "sent_all", or "stalled" (nothing moved for
    #: `give_up` seconds: panicd neither read nor closed).
    outcome: str


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of process `pid`, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def flood(path: Path, peers: int, total: int = 100 * MIB,
                give_up: float = 20.0) -> list[FloodResult]:
    """`peers` flooding peers (processes) at once; return when every one has stopped."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _PEERS, str(path), str(peers), str(total), str(give_up),
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, f"flooding peers failed ({proc.returncode})"
    return [FloodResult(**json.loads(line)) for line in out.decode().splitlines()]


#: Forks one child per peer; each connects, says "connected PID", sends nothing, and says
#: "closed PID" when panicd hangs up.
_SILENT = r"""
import os, socket, sys
path, peers = sys.argv[1], int(sys.argv[2])
children = []
for _ in range(peers):
    pid = os.fork()
    if pid == 0:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        os.write(1, f"connected {os.getpid()}\n".encode())
        while sock.recv(4096):
            pass
        os.write(1, f"closed {os.getpid()}\n".encode())
        os._exit(0)
    children.append(pid)
for pid in children:
    os.waitpid(pid, 0)
"""


class SilentPeers:
    """`peers` processes connected to `path` that never greet. `closed` collects the pids of
    those panicd hung up on; `stop()` ends them all."""

    def __init__(self, path: Path, peers: int) -> None:
        self.path = path
        self.peers = peers
        self.connected: list[int] = []
        self.closed: list[int] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _SILENT, str(self.path), str(self.peers),
            stdout=asyncio.subprocess.PIPE, start_new_session=True)
        self._reading = asyncio.create_task(self._read(), name="silent-peers")

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for line in self._proc.stdout:
            what, pid = line.decode().split()
            (self.connected if what == "connected" else self.closed).append(int(pid))

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            await self._proc.wait()
        if self._reading is not None:
            await asyncio.wait({self._reading})
