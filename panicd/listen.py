"""QEMU connects to panicd: one listening unix socket for many guests (`[discovery] listen`).

Each QEMU is started with a monitor of its own for panicd, which dials out and re-dials by
itself (QEMU 7.2 spelling; QEMU >= 9.2 says reconnect-ms=5000):

    -chardev socket,id=panicd,path=/run/panicd/qmp.sock,reconnect=5 -mon chardev=panicd,mode=control

The guest's own management QMP socket stays free for its orchestrator, and panicd never hunts
for sockets. QEMU is still the QMP server on that connection (it greets first). Each peer is
identified by SO_PEERCRED (pid, uid) before a byte is read: a uid not in `allowed_uids` is
refused and logged. The rest (query-name, query-uuid) is the monitor's usual identification.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger("panicd.listen")


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


class QemuListener:
    """Accepts QEMUs on `path`; hands each allowed one to `accepted(sock, pid)`."""

    def __init__(self, path: Path, allowed_uids: list[int],
                 accepted: Callable[[socket.socket, int], None],
                 refused: Callable[[int, int], None]) -> None:
        self.path = path
        self.allowed_uids = set(allowed_uids)
        self.accepted = accepted
        self.refused = refused

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            listener = self._bind()
        except OSError as exc:
            log.error("listen.unavailable", path=str(self.path), error=str(exc))  # noqa: TRY400
            return
        log.info("listen.ready", path=str(self.path), allowed_uids=sorted(self.allowed_uids))
        try:
            while True:
                try:
                    conn, _ = await loop.sock_accept(listener)
                except OSError as exc:
                    # Out of fds or buffers: say so, let the moment pass, keep listening.
                    log.error("listen.accept_failed", error=str(exc))  # noqa: TRY400
                    await asyncio.sleep(0.5)
                    continue
                try:
                    pid, uid = peer_credentials(conn)
                except OSError as exc:
                    log.warning("listen.no_credentials", error=str(exc))
                    conn.close()
                    continue
                if uid not in self.allowed_uids:
                    log.warning("listen.refused", pid=pid, uid=uid)
                    conn.close()
                    self.refused(pid, uid)
                    continue
                log.info("listen.accepted", pid=pid, uid=uid)
                try:
                    self.accepted(conn, pid)
                except Exception:
                    log.exception("listen.hand_over_failed", pid=pid)
                    conn.close()
        finally:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _bind(self) -> socket.socket:
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        listener.bind(str(self.path))
        # QEMUs run as root or a dedicated user: the uid check, not the mode, is the gate.
        self.path.chmod(0o666)
        listener.listen(128)
        listener.setblocking(False)
        return listener
