"""QMP events as typed models, and the `Incident` panicd builds from them.

QEMU's events arrive as JSON objects (`{"event": ..., "data": ..., "timestamp": ...}`). They are
validated here, at the edge, into `QmpEvent`; a message that does not fit is reported and
dropped by the caller, never passed on raw. The events panicd acts on (qapi/run-state.json):

- GUEST_PANICKED {action: pause|poweroff|run, info?}: the pvpanic device saw PANICKED (bit 1),
  or Hyper-V crash MSRs / s390 reported a crash. `info` is a union on "type" that grows with
  QEMU releases (hyper-v, s390, tdx, sev...): unknown types are kept, not refused; a
  `hyper-v` one (a Windows bugcheck) is read by `PanicInfo.hyper_v` and bugcheck.py.
- GUEST_CRASHLOADED {action: run, info?}: CRASH_LOADED (bit 2), the guest's own kdump kernel
  took over; the guest keeps running.
- WATCHDOG {action, ...}: the guest's watchdog device (i6300esb, ib700) was not fed in time.
- RESUME / RESET: the guest runs again, so the next panic is a new one.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Timestamp(BaseModel):
    seconds: int
    microseconds: int = Field(ge=0, lt=1_000_000)

    def as_float(self) -> float:
        return self.seconds + self.microseconds / 1e6


#: QAPI's uint64, as QEMU prints it: an unsigned decimal JSON number.
UInt64 = Annotated[int, Field(ge=0, le=2**64 - 1, strict=True)]


class HyperVCrashInfo(BaseModel):
    """GuestPanicInformationHyperV (qapi/run-state.json, QEMU >= 2.9): the five Hyper-V crash
    MSRs (HV_X64_MSR_CRASH_P0..P4) that a guest with `-cpu ...,hv-crash` wrote before it
    wrote CRASH_CTL. QEMU's x86_cpu_get_crash_info copies them as they are into arg1..arg5:

        {"type": "hyper-v", "arg1": 126, "arg2": 18446744072635809797, ...}

    Windows writes its bugcheck (STOP) code into arg1 and the code's four parameters into
    arg2..arg5 (bugcheck.py decodes them). A Linux guest on Hyper-V writes them too, with its
    own meaning (an error code, its guest OS id, ip, ax, sp): see `bugcheck.decode`.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)
    type: Literal["hyper-v"]
    arg1: UInt64
    arg2: UInt64
    arg3: UInt64
    arg4: UInt64
    arg5: UInt64


class PanicInfo(BaseModel):
    """GuestPanicInformation: a union on `type`; members panicd does not know are kept as-is."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    def hyper_v(self) -> HyperVCrashInfo | None:
        """The Hyper-V crash MSRs, when this is a well-formed `hyper-v` member; else None
        (another type, or one whose arguments are not uint64s: kept raw, never refused)."""
        if self.type != "hyper-v":
            return None
        try:
            return HyperVCrashInfo.model_validate(self.model_dump())
        except ValidationError:
            return None


class QmpEvent(BaseModel):
    """Any QMP event. `data` stays a mapping; the models below read the parts panicd uses."""

    model_config = ConfigDict(frozen=True)
    event: str = Field(min_length=1, max_length=128)
    data: dict[str, Any] = Field(default_factory=dict)
    timestamp: Timestamp | None = None


class PanickedData(BaseModel):
    """Data of GUEST_PANICKED and GUEST_CRASHLOADED."""

    model_config = ConfigDict(extra="allow", frozen=True)
    # Not a Literal: a newer QEMU may add an action, and a panic must never be dropped for it.
    action: str = Field(max_length=64)
    info: PanicInfo | None = None


class WatchdogData(BaseModel):
    """Data of WATCHDOG (qapi/run-state.json): the action QEMU took, a WatchdogAction (reset,
    shutdown, poweroff, pause, debug, none, inject-nmi). panicd sets `pause` on connect; the
    others are what a QEMU panicd could not take over reports."""

    model_config = ConfigDict(extra="allow", frozen=True)
    # Not a Literal, as for panics: a hung guest must never be dropped for a new action name.
    action: str = Field(max_length=64)


@dataclass(frozen=True)
class CaughtPanic:
    """A GUEST_PANICKED handed to the incident that was waiting for it (the `wait_panic` step,
    after an `nmi`), instead of raised as an incident of its own."""

    data: PanickedData
    #: The event exactly as QEMU sent it.
    raw_event: dict[str, Any]
    received_at: float


class DumpCompletedData(BaseModel):
    """Data of DUMP_COMPLETED (qapi/dump.json)."""

    class Result(BaseModel):
        status: str
        completed: int = 0
        total: int = 0

    result: Result
    error: str | None = None


class IncidentKind(StrEnum):
    #: GUEST_PANICKED: the guest's kernel panicked (pvpanic, Hyper-V crash MSRs).
    PANIC = "panic"
    #: GUEST_CRASHLOADED: the guest's own crash kernel (kdump) took over.
    CRASH_LOADED = "crash-loaded"
    #: WATCHDOG: the guest's watchdog device fired (the guest hung).
    WATCHDOG = "watchdog"
    #: An operator's `panicd guest NAME ACTION`, through the control socket.
    MANUAL = "manual"


class Detection(StrEnum):
    #: QEMU sent the event while panicd was connected.
    EVENT = "event"
    #: panicd (re)connected and found the guest already in `guest-panicked`.
    ON_CONNECT = "on-connect"
    #: Found on connect, and panicd had seen it before but its steps never all ran.
    RESUMED = "resumed"
    #: Asked for by an operator (`panicd guest NAME ACTION`): a manual incident.
    REQUESTED = "requested"


@dataclass(frozen=True)
class GuestIdentity:
    """Who a guest is, as learned when its QMP connection was made."""

    name: str
    socket: str
    uuid: str | None = None
    qemu_version: str | None = None
    qemu_pid: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "socket": self.socket,
            "uuid": self.uuid,
            "qemu_version": self.qemu_version,
            "qemu_pid": self.qemu_pid,
        }


def new_incident_id(when: float | None = None) -> str:
    """An incident id that sorts by time and is unique on this host: `20261126-123456-1a2b3c4d5e6f`
    (48 random bits: a storm of thousands of panics in one second does not collide)."""
    stamp = datetime.datetime.fromtimestamp(time.time() if when is None else when, datetime.UTC)
    return f"{stamp:%Y%m%d-%H%M%S}-{os.urandom(6).hex()}"


@dataclass(frozen=True)
class Incident:
    """One panic (or crash-loaded report) of one guest: what the policy steps act on.

    Its persistent account, with the steps' results, is `records.IncidentRecord` (same `id`).
    """

    kind: IncidentKind
    guest: GuestIdentity
    detection: Detection
    #: QEMU's panic action as reported: pause, poweroff, run; None when found on connect.
    action: str | None
    #: The event exactly as QEMU sent it (None when found on connect).
    raw_event: dict[str, Any] | None = None
    info: PanicInfo | None = None
    received_at: float = field(default_factory=time.time)
    id: str = field(default_factory=new_incident_id)
    #: A manual incident's steps, as the operator asked (None: the policy's for its kind).
    requested_steps: tuple[str, ...] | None = None
    #: Who asked for a manual incident (the control socket peer's uid).
    requested_by: int | None = None
    #: A manual dump's format (`panicd guest NAME dump --format F`), over the policy's.
    dump_format: str | None = None

    @property
    def qemu_exiting(self) -> bool:
        """QEMU powers the guest off after this event: nothing is left to dump or act on."""
        return self.action == "poweroff"
