"""The `exec` step: run the operator's command with the incident in its environment.

Environment: PANICD_GUEST, PANICD_UUID, PANICD_SOCKET, PANICD_KIND (the incident's kind:
panic | crash-loaded | watchdog | manual), PANICD_EVENT (JSON: the QMP event as QEMU sent it;
for an incident with no event of its own, `hook_event` describes it), PANICD_DUMP (the dump
written by an earlier `dump` step of this incident, else empty).
The command runs without a shell, in its own process group, killed whole at its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
from typing import IO, Any

import structlog

from panicd.actions import StepContext
from panicd.errors import StepFailed
from panicd.events import Incident, IncidentKind
from panicd.records import HookStepDetail

log = structlog.get_logger("panicd.hook")

_PANICD_ONLY = frozenset({"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS",
                          "LISTEN_PID", "LISTEN_FDNAMES"})

#: Captured output kept for the log, per stream.
OUTPUT_LIMIT = 4096


#: The QMP event each kind of incident comes from: named in PANICD_EVENT when panicd saw no
#: event (a panic or watchdog found on connect, an incident resumed after a restart of panicd).
_EVENT_OF_KIND = {IncidentKind.PANIC: "GUEST_PANICKED", IncidentKind.CRASH_LOADED: "GUEST_CRASHLOADED",
                  IncidentKind.WATCHDOG: "WATCHDOG"}


def hook_event(incident: Incident) -> dict[str, Any]:
    """PANICD_EVENT: QEMU's event as it came; else one made up of what panicd knows, named by
    the incident's kind with a `detected` key (on-connect, resumed); for a manual incident
    (`panicd guest`), which no QMP event started, `"event": null` with the uid that asked
    and the steps asked for."""
    if incident.raw_event is not None:
        return incident.raw_event
    if incident.kind is IncidentKind.MANUAL:
        return {"event": None, "detected": incident.detection.value,
                "requested_by": incident.requested_by,
                "requested_steps": list(incident.requested_steps or ())}
    return {"event": _EVENT_OF_KIND[incident.kind],
            "data": {"action": incident.action or "pause"},
            "detected": incident.detection.value}


def hook_environment(ctx: StepContext) -> dict[str, str]:
    incident = ctx.incident
    event = hook_event(incident)
    return {
        "PANICD_GUEST": incident.guest.name,
        "PANICD_UUID": incident.guest.uuid or "",
        "PANICD_SOCKET": incident.guest.socket,
        "PANICD_KIND": incident.kind.value,
        "PANICD_EVENT": json.dumps(event, sort_keys=True),
        "PANICD_DUMP": str(ctx.dump_path) if ctx.dump_path else "",
    }


async def run_hook(ctx: StepContext) -> HookStepDetail:
    settings = ctx.policy.exec
    name = ctx.guest.identity.name
    if settings is None:  # config validation forbids this; kept for direct callers
        raise StepFailed(name, "exec", "no exec command configured")
    # A hook must not be able to speak for panicd to systemd (sd_notify, watchdog).
    inherited = {k: v for k, v in os.environ.items() if k not in _PANICD_ONLY}
    env = {**inherited, **hook_environment(ctx)}
    # Output goes to unlinked temporary files, not pipes: a child the hook leaves in the
    # background may keep a pipe open forever, but the hook is done when its process exits.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = await asyncio.create_subprocess_exec(
                *settings.command,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        except OSError as exc:
            raise StepFailed(name, "exec", f"cannot start {settings.command[0]}: {exc}") from exc
        try:
            async with asyncio.timeout(settings.timeout):
                await proc.wait()
        except TimeoutError as exc:
            _kill_group(proc.pid)
            await proc.wait()
            raise StepFailed(name, "exec", f"timed out after {settings.timeout:g} s; killed") from exc
        except asyncio.CancelledError:
            _kill_group(proc.pid)
            await asyncio.shield(proc.wait())
            raise
        stdout, stderr = (_head(f) for f in (out, err))
    if proc.returncode != 0:
        raise StepFailed(name, "exec", f"exited with status {proc.returncode}: {stderr.strip()}")
    return HookStepDetail(returncode=proc.returncode, stdout=stdout, stderr=stderr)


def _head(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read(OUTPUT_LIMIT).decode("utf-8", "replace")


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
