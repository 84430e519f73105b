"""A real `panicd run` in a child process, as systemd would start it, for end-to-end tests."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from panicd.dumps import safe_name

_numbers = itertools.count(1)


class PanicdProcess:
    def __init__(self, workdir: Path, config: str, env: dict[str, str] | None = None,
                 log_format: str | None = "json", wrapper: Sequence[str] = ()) -> None:
        self.env = env or {}
        #: A command that execs its arguments (an `unshare ...` set-up, say), run in front.
        self.wrapper = list(wrapper)
        self.log_format = log_format
        self.workdir = workdir
        self.config_path = workdir / "panicd.toml"
        self.config_path.write_text(config)
        # One log per process: a test may start panicd several times in one directory.
        self.log_path = workdir / f"panicd-{next(_numbers)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.wrapper, sys.executable, "-m", "panicd", "run", "-c", str(self.config_path),
             "--log-level", "debug",
             *(["--log-format", self.log_format] if self.log_format else [])],
            stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        log.close()

    def log(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "(not json)", "line": line})
        return out

    def events(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in self.log() if e.get("event") == name
                and all(e.get(k) == v for k, v in fields.items())]

    async def wait_event(self, name: str, timeout: float = 15.0, count: int = 1,
                         **fields: Any) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(name, **fields)
            if len(found) >= count:
                return found
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"panicd exited ({self.proc.returncode}):\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {name} {fields} within {timeout} s:\n{self.tail()}")
            await asyncio.sleep(0.05)

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, as systemd does; return the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError(f"panicd ignored SIGTERM for {timeout} s:\n{self.tail()}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def wait_for(predicate: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def unique(prefix: str) -> str:
    """A guest name no other test (or earlier run, in the journal) has used."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def daemon_section(tmp: Path, extra: str = "") -> str:
    """A [daemon] section keeping everything of this test's panicd under `tmp`."""
    return (f'[daemon]\ndump_dir = "{tmp}/dumps"\nstate_dir = "{tmp}/state"\n'
            f'control_socket = "{tmp}/control.sock"\nreconnect_max_seconds = 0.5\n{extra}\n')


def dumps_of(tmp: Path, name: str) -> list[Path]:
    """The dump files (not metadata) panicd wrote for guest `name`."""
    return sorted(p for p in (tmp / "dumps" / safe_name(name)).glob("*") if p.suffix != ".json")


def metadata(dump: Path) -> dict[str, Any]:
    return json.loads(dump.with_name(dump.name + ".json").read_text())


async def completed_dumps(tmp: Path, name: str, count: int = 1, timeout: float = 30) -> list[Path]:
    def done() -> list[Path]:
        # Finished: written, triage read, DUMP_COMPLETED sent (`announced`, evidence.py).
        found = [d for d in dumps_of(tmp, name)
                 if d.with_name(d.name + ".json").exists()
                 and metadata(d)["dump"]["result"] == "completed" and metadata(d).get("announced")]
        return found if len(found) >= count else []

    return await wait_for(done, timeout=timeout, what=f"{count} completed dump(s) of {name}")
