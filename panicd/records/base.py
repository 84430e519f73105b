"""What every record stands on: the strict base model, and the guest a record is about.

Both an incident (incident.py) and the `<dump>.json` beside a dump (evidence.py) name their
guest the same way, so `GuestRecord` lives below them both: the package's modules then import
in one direction only.

    base.py  <──  evidence.py  <──  steps.py  <──  incident.py
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from panicd.events import GuestIdentity


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GuestRecord(_Record):
    name: str
    socket: str
    uuid: str | None = None
    qemu_version: str | None = None
    qemu_pid: int | None = None

    @classmethod
    def of(cls, identity: GuestIdentity) -> GuestRecord:
        return cls(**identity.as_dict())
