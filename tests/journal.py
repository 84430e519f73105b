"""A real journald for the tests, and a reader for what panicd sent to it.

When the machine has no journal socket (a container, a CI box without systemd as PID 1),
`Journald.ensure()` starts /usr/lib/systemd/systemd-journald itself. Entries are read back with
`journalctl -o json`, exactly as an operator's tooling would.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

SOCKET = Path("/run/systemd/journal/socket")
JOURNALD = Path("/usr/lib/systemd/systemd-journald")


class Journald:
    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None

    def ensure(self) -> None:
        if SOCKET.exists() and _answers():
            return
        if not JOURNALD.exists():
            raise RuntimeError(f"{JOURNALD} is missing: install systemd (./run test does)")
        self._proc = subprocess.Popen(
            [str(JOURNALD)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if SOCKET.exists() and _answers():
                return
            time.sleep(0.05)
        raise RuntimeError("systemd-journald did not come up within 10 s")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)

    def entries(self, **match: str) -> list[dict[str, Any]]:
        args = ["journalctl", "--no-pager", "-o", "json", "--all"]
        args += [f"{k}={v}" for k, v in match.items()]
        out = subprocess.run(args, capture_output=True, check=False, timeout=30)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def wait_for(self, timeout: float = 10.0, count: int = 1, **match: str) -> list[dict[str, Any]]:
        """Entries matching every field, once at least `count` of them are in the journal."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.entries(**match)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


    async def find(self, timeout: float = 10.0, count: int = 1, **match: str) -> list[dict[str, Any]]:
        """`wait_for` for async tests: the event loop (and any mock guest on it) keeps running."""
        return await asyncio.to_thread(self.wait_for, timeout, count, **match)


def _answers() -> bool:
    try:
        from systemd import journal

        journal.send("panicd test suite: journal check", SYSLOG_IDENTIFIER="panicd-tests")
    except OSError:
        return False
    return os.access(SOCKET, os.W_OK)
