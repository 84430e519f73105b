"""QEMU connects to panicd: one listening unix socket for many guests (`[discovery] listen`).

Each QEMU is started with a monitor of its own for panicd, which dials out and re-dials by
itself (QEMU 7.2 spelling; QEMU >= 9.2 says reconnect-ms=5000):

    -chardev socket,id=panicd,path=/run/panicd/qmp.sock,reconnect=5 -mon chardev=panicd,mode=control

The guest's own management QMP socket stays free for its orchestrator, and panicd never hunts
for sockets. QEMU is still the QMP server on that connection (it greets first). Each peer is
identified by SO_PEERCRED (pid, uid) before a byte is read: a uid not in `allowed_uids` is
refused and logged. The rest (query-name, query-uuid) is the monitor's usual identification.

Until then a peer is unknown, and whatever it sends is bounded (see qmp.py's read limits), and
so is how many such peers there are: each accepted peer holds one of
`MAX_UNIDENTIFIED_PEERS` slots until its monitor has identified it or it is gone (a peer that
never greets is dropped after `connect_timeout`). With every slot held, panicd accepts no one
else: the next peers wait in the kernel's listen backlog, costing panicd nothing, and are
served in the order they came as slots free up.
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

#: Accepted peers not yet identified, at most. One costs a task, a socket and a read buffer
#: (up to about 1.3 MiB: see qmp.py) for at most connect_timeout plus a few command timeouts;
#: a QEMU is identified in milliseconds, so even a host's whole fleet re-dialling after a
#: restart of panicd passes through quickly.
MAX_UNIDENTIFIED_PEERS = 16


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a unix socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


class IdentificationSlot:
    """An accepted peer's place among the unidentified ones: release it when the peer has been
    identified or is gone. Releasing more than once is harmless."""

    def __init__(self, free: Callable[[], None]) -> None:
        self._free: Callable[[], None] | None = free

    def release(self) -> None:
        free, self._free = self._free, None
        if free is not None:
            free()


class QemuListener:
    """Accepts QEMUs on `path`; hands each allowed one to `accepted(sock, pid, slot)`, which
    must see that `slot` is released once the peer is identified or gone."""

    def __init__(self, path: Path, allowed_uids: list[int],
                 accepted: Callable[[socket.socket, int, IdentificationSlot], None],
                 refused: Callable[[int, int], None],
                 saturated: Callable[[], None] = lambda: None) -> None:
        self.path = path
        self.allowed_uids = set(allowed_uids)
        self.accepted = accepted
        self.refused = refused
        #: Called each time the listener stops accepting because every slot is held.
        self.saturated = saturated
        self._unidentified = asyncio.Semaphore(MAX_UNIDENTIFIED_PEERS)
        self._waiting = False

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
                slot = await self._free_slot()
                handed_over = False
                try:
                    handed_over = await self._accept_one(loop, listener, slot)
                finally:
                    # Kept only by a peer handed over; refused, failed or cancelled: freed.
                    if not handed_over:
                        slot.release()
        finally:
            listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _free_slot(self) -> IdentificationSlot:
        if self._unidentified.locked():
            # Said once per episode: a flood of peers must not become a flood of log lines.
            (log.debug if self._waiting else log.warning)(
                "listen.saturated", unidentified=MAX_UNIDENTIFIED_PEERS)
            self._waiting = True
            self.saturated()
        else:
            self._waiting = False
        await self._unidentified.acquire()
        return IdentificationSlot(self._unidentified.release)

    async def _accept_one(self, loop: asyncio.AbstractEventLoop, listener: socket.socket,
                          slot: IdentificationSlot) -> bool:
        """Accept one peer; True when it was handed over (with its slot)."""
        try:
            conn, _ = await loop.sock_accept(listener)
        except OSError as exc:
            # Out of fds or buffers: say so, let the moment pass, keep listening.
            log.error("listen.accept_failed", error=str(exc))  # noqa: TRY400
            await asyncio.sleep(0.5)
            return False
        try:
            pid, uid = peer_credentials(conn)
        except OSError as exc:
            log.warning("listen.no_credentials", error=str(exc))
            conn.close()
            return False
        if uid not in self.allowed_uids:
            log.warning("listen.refused", pid=pid, uid=uid)
            conn.close()
            self.refused(pid, uid)
            return False
        log.info("listen.accepted", pid=pid, uid=uid)
        try:
            self.accepted(conn, pid, slot)
        except Exception:
            log.exception("listen.hand_over_failed", pid=pid)
            conn.close()
            return False
        return True

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

