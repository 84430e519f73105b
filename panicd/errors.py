"""The panicd error tree.

Every error panicd raises on purpose derives from `PanicdError`, so callers can tell a known,
reported failure from a bug::

    PanicdError
    ├── ConfigError          the config file is missing, not TOML, or fails validation
    ├── StoreError           the incident store file cannot be used (store.py)
    ├── GuestError           something about one guest went wrong (carries the guest name)
    │   ├── GuestUnreachable     its QMP socket is absent, refuses, or never greets
    │   └── StepFailed           a policy step failed (carries the step, command and reply)
    │       └── DumpFailed           a dump could not be made, or QEMU reported it failed

Alerts raise nothing: a journald that is slow or gone delays them (journal.py), never a step.
Cancellation (`asyncio.CancelledError`) is never wrapped.
"""

from __future__ import annotations

from typing import Any


class PanicdError(Exception):
    """Root of every error panicd raises on purpose."""


class ConfigError(PanicdError):
    """The configuration file is unusable; the message names the key and the reason."""


class GuestError(PanicdError):
    """A failure tied to one guest."""

    def __init__(self, guest: str, message: str) -> None:
        super().__init__(f"{guest}: {message}")
        self.guest = guest


class GuestUnreachable(GuestError):
    """The guest's QMP monitor cannot be reached or did not answer in time."""


class StepFailed(GuestError):
    """A policy step failed.

    `command` and `reply` say what panicd sent to QEMU and what came back, when the failure
    came from QEMU; both are None when it did not (a hook that exited non-zero, say).
    """

    def __init__(
        self,
        guest: str,
        step: str,
        message: str,
        *,
        command: dict[str, Any] | None = None,
        reply: object = None,
    ) -> None:
        super().__init__(guest, f"step {step!r} failed: {message}")
        self.step = step
        self.reason = message
        self.command = command
        self.reply = reply


class DumpFailed(StepFailed):
    """A memory dump failed or timed out; any partial file has been removed."""

    def __init__(
        self,
        guest: str,
        message: str,
        *,
        command: dict[str, Any] | None = None,
        reply: object = None,
    ) -> None:
        super().__init__(guest, "dump", message, command=command, reply=reply)
