"""sd_notify: telling systemd (Type=notify) how panicd is.

The protocol is one datagram of `KEY=value` lines to the unix socket named by $NOTIFY_SOCKET
(a leading `@` means the abstract namespace). It is spoken here directly, rather than through
systemd-python, so that messages carry exactly what systemd expects (MONOTONIC_USEC with
RELOADING=1, as systemd >= 253 wants for Type=notify-reload) and tests can own the socket.

The watchdog interval comes from $WATCHDOG_USEC (set by WatchdogSec= in the unit), for this
process only when $WATCHDOG_PID is unset or names it. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time

import structlog

log = structlog.get_logger("panicd.notify")


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        self.watchdog_seconds: float | None = None
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_seconds = int(usec) / 1e6
        self._last_status: str | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> None:
        if self.address is None:
            return
        message = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self.address)
        except OSError as exc:
            log.warning("sd_notify.failed", error=str(exc), message=message[:200].decode())

    def ready(self) -> None:
        self.send("READY=1")

    def reloading(self) -> None:
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def status(self, text: str) -> None:
        """STATUS=, sent only when it changed."""
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")
