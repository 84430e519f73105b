"""check-config's checks of an `exec` hook's program: will panicd find it and be able to run it?

The exec step (`panicd.actions.hook`) starts the command with create_subprocess_exec in
panicd's own environment (less a few systemd variables, plus PANICD_*), so a bare command
name is looked up on panicd's PATH, one directory after another, as execvp does: a directory
where the program is missing, not executable or hidden by the sandbox is passed over. Under
systemd that PATH is the one the unit gives the service (`ServiceSandbox.path`), not the
PATH of whoever runs check-config: a hook in an operator's `.venv/bin` is found by their
shell and by nothing else. With no unit read, the caller's PATH stands in, and the finding
says so. A path with a `/` is not searched: an absolute one is checked where it is.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from panicd.findings import Finding, Severity, seen_as
from panicd.sandbox import Access, ServiceSandbox


def program(name: str, where: str, fails: str, sandbox: ServiceSandbox | None) -> Iterator[Finding]:
    """Findings on the hook program `name` (exec.command[0]), reported at `where`; `fails`
    says what its failing costs ("the exec step fails at every panic (...)")."""
    if "/" not in name:
        yield from _bare_name(name, where, fails, sandbox)
        return
    if not name.startswith("/"):
        yield Finding(
            Severity.WARNING, where,
            f"'{name}' is relative: it is looked up from panicd's working directory "
            "(/ under systemd), not from the config file's",
            "give the program's absolute path")
        return
    path = Path(name)
    if not path.exists():
        yield Finding(Severity.ERROR, where, f"{name} does not exist: {fails}",
                      "install the hook there, or correct the path")
    elif not path.is_file() or not os.access(path, os.X_OK):
        yield Finding(Severity.ERROR, where, f"{name} is not an executable file: {fails}",
                      f"chmod +x {name}, or name the program itself")
    elif sandbox is not None:
        yield from _hidden(path, where, fails, sandbox)


def _bare_name(name: str, where: str, fails: str,
               sandbox: ServiceSandbox | None) -> Iterator[Finding]:
    caller_path = os.environ.get("PATH", os.defpath)
    if sandbox is None:
        if shutil.which(name, path=caller_path) is None:
            yield Finding(
                Severity.ERROR, where,
                f"'{name}' is not found in the caller's PATH ({caller_path}): {fails}",
                "give the program's absolute path, or install it on panicd's PATH (no unit "
                "was read: name one with --unit to search the service's PATH)")
        return
    hidden = None  # the first match the sandbox hides: execve fails there and looks further
    for directory in sandbox.path.split(":"):
        # An empty or relative entry is taken from the working directory: / under systemd.
        found = shutil.which(name, path=str(Path("/") / directory))
        if found is not None and _visible(Path(found), sandbox):
            return
        hidden = hidden or found
    if hidden is not None:
        yield from _hidden(Path(hidden), where, fails, sandbox)
        return
    fix = "give the program's absolute path, or install it in a directory on that PATH"
    theirs = shutil.which(name, path=caller_path)
    if theirs is not None and _visible(Path(theirs), sandbox):
        where_set = ("in the EnvironmentFile= that sets it" if "EnvironmentFile=" in
                     sandbox.path_origin else "with Environment=PATH= in a drop-in")
        fix = (f"give its absolute path ({theirs}, found on the caller's PATH), or add its "
               f"directory to the service's PATH {where_set}")
    yield Finding(
        Severity.ERROR, where,
        f"'{name}' is not found in the service's PATH ({sandbox.path}; {sandbox.path_origin}): "
        f"{fails}", fix)


def _visible(path: Path, sandbox: ServiceSandbox) -> bool:
    return sandbox.access(path).access not in (Access.HIDDEN, Access.PRIVATE)


def _hidden(path: Path, where: str, fails: str, sandbox: ServiceSandbox) -> Iterator[Finding]:
    if not _visible(path, sandbox):
        yield Finding(
            Severity.ERROR, where,
            f"{path} {seen_as(sandbox.access(path), sandbox)}, and the hook runs in the "
            f"service's sandbox: {fails}",
            "install the hook outside /home, /root and /tmp (/usr/local/libexec/, say)")
