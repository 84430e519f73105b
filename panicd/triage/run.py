"""Running triage for the daemon: in a child process, under a timeout and a memory limit.

The dump (and a console log) is guest-written, hostile input. The reader is careful, but the
daemon does not rely on that alone: triage runs as `python -m panicd triage --json` in its own
process, so a dump that made it loop, crash or balloon costs that process (killed at the
timeout, capped by RLIMIT_DATA), never panicd.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

TIMEOUT_SECONDS = 30.0
MEMORY_LIMIT = 1 << 30  # private memory; the mmap'd dump itself does not count


async def triage_in_child(dump: Path, lines: int = 50, timeout: float = TIMEOUT_SECONDS) -> dict[str, Any]:
    """The dump's report as a dict, or {"error": why} when the dump could not be read."""
    return await _child([str(dump)], lines, timeout)


async def triage_console_in_child(log: Path, end_offset: int | None, lines: int = 50,
                                  timeout: float = TIMEOUT_SECONDS) -> dict[str, Any]:
    """The report of a guest's console log (up to `end_offset`), or {"error": why}."""
    args = ["--log", str(log)]
    if end_offset is not None:
        args += ["--end-offset", str(end_offset)]
    return await _child(args, lines, timeout)


async def _child(what: list[str], lines: int, timeout: float) -> dict[str, Any]:
    # The child sets its own memory limit before it reads a byte of the dump: a preexec_fn
    # would run Python between fork and exec in a process that has threads (the journal
    # writer), which Python documents as unsafe (a lock held by another thread at the fork
    # stays held in the child).
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "panicd", "triage", "--json", "--lines", str(lines),
        "--memory-limit", str(MEMORY_LIMIT), *what,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return {"error": f"triage gave up after {timeout:g} s"}
    if proc.returncode != 0:
        reason = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return {"error": reason[0][:500]}
    try:
        report = json.loads(out)
    except ValueError:
        return {"error": "triage printed no report"}
    return report if isinstance(report, dict) else {"error": "triage printed no report"}
