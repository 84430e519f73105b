"""check-config's findings: what panicd will do with a config, and how to fix it.

A `Finding` is one line of `panicd check-config`'s report (checks.py, hook_checks.py): its
severity, the key it is about (`policy[1].on_panic[0]`), what panicd will do, and the fix.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from panicd.sandbox import Access, ServiceSandbox, Verdict
from panicd.text import printable


class Severity(enum.StrEnum):
    ERROR = "ERROR"
    WARNING = "WARNING"


@dataclass(frozen=True)
class Finding:
    severity: Severity
    #: The key it is about, as the config's own errors name keys: `policy[1].on_panic[0]`.
    where: str
    #: What panicd will do with this config.
    what: str
    #: How to fix it.
    fix: str

    def __str__(self) -> str:
        # Values quoted in `what` and `fix` come from the file: escaped here, once.
        return printable(f"{self.severity} {self.where}: {self.what}; {self.fix}")


def seen_as(verdict: Verdict, sandbox: ServiceSandbox) -> str:
    """How the service sees a path it cannot use as the host does, and which setting says so."""
    where = f"({verdict.origin} in {sandbox.unit})"
    if verdict.access is Access.PRIVATE:
        return f"is in the service's private /tmp, not the host's {where}"
    if verdict.access is Access.HIDDEN:
        return f"is hidden from the service {where}"
    return f"is read-only for the service {where}"
