"""Run a command under the network-relevant restrictions of a systemd unit, without PID 1.

    python tests/unit_sandbox.py systemd/panicd.service -- panicd run -c FILE

There is no systemd as PID 1 on the test machine, so `systemd-run -p ...` is out. What can be
applied from user space is applied here, read from the unit itself, the way systemd applies
it to the service's main process (and so to every hook it forks):

- NoNewPrivileges=yes: prctl(PR_SET_NO_NEW_PRIVS);
- CapabilityBoundingSet= (empty): every capability dropped from the bounding set, so root
  execs with none;
- SystemCallFilter= (an allow list, then ~deny lists) with SystemCallErrorNumber=: a seccomp
  filter of the syscalls `systemd-analyze syscall-filter` lists for those groups;
- RestrictAddressFamilies=: a second seccomp filter failing socket() with EAFNOSUPPORT for
  any other family, as systemd does.

IPAddressDeny=/IPAddressAllow= are a BPF program PID 1 attaches to the service's cgroup, and
ProtectSystem= and friends need mount namespaces PID 1 sets up: those are not applied here.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_GT = 6
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38


def scmp_act_errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def service_settings(unit: Path) -> list[tuple[str, str]]:
    """The [Service] assignments of a unit file, in order (repeated keys kept)."""
    out, section = [], ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out.append((key, value))
    return out


def syscall_group(name: str, seen: set[str] | None = None) -> set[str]:
    """The syscalls of a filter group, nested groups expanded, as this systemd defines them."""
    seen = set() if seen is None else seen
    seen.add(name)
    listing = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True,
                             text=True, check=True, timeout=30).stdout
    calls: set[str] = set()
    for line in listing.splitlines()[1:]:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if entry.startswith("@"):
            if entry not in seen:
                calls |= syscall_group(entry, seen)
        else:
            calls.add(entry)
    return calls


def allowed_syscalls(settings: list[tuple[str, str]]) -> set[str] | None:
    """The allow list SystemCallFilter= lines amount to; None when there is none."""
    allowed: set[str] | None = None
    for key, value in settings:
        if key != "SystemCallFilter" or not value:
            continue
        deny = value.startswith("~")
        names: set[str] = set()
        for item in value.removeprefix("~").split():
            names |= syscall_group(item) if item.startswith("@") else {item}
        if deny:
            assert allowed is not None, "a deny list alone is not modelled"
            allowed -= names
        else:
            allowed = names if allowed is None else allowed | names
    return allowed


def install_filters(settings: list[tuple[str, str]]) -> None:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(ScmpArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    values = dict(settings)

    def check(result: int, what: str) -> None:
        if result != 0:
            raise OSError(-result, f"{what}: {os.strerror(-result)}")

    families = values.get("RestrictAddressFamilies", "").split()
    if families:
        # Default allow; socket() with any family but the listed ones fails, as in systemd.
        ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
        allowed = sorted(getattr(socket, f) for f in families)
        refuse = scmp_act_errno(errno.EAFNOSUPPORT)
        nr = lib.seccomp_syscall_resolve_name(b"socket")
        for family in [f for f in range(allowed[-1]) if f not in allowed]:
            cmp = ScmpArgCmp(0, SCMP_CMP_EQ, family, 0)
            check(lib.seccomp_rule_add_array(ctx, refuse, nr, 1, ctypes.byref(cmp)), "socket")
        cmp = ScmpArgCmp(0, SCMP_CMP_GT, allowed[-1], 0)
        check(lib.seccomp_rule_add_array(ctx, refuse, nr, 1, ctypes.byref(cmp)), "socket")
        check(lib.seccomp_load(ctx), "load address families")

    syscalls = allowed_syscalls(settings)
    if syscalls is not None:
        number = getattr(errno, values.get("SystemCallErrorNumber", "EPERM"))
        ctx = lib.seccomp_init(scmp_act_errno(number))
        for name in sorted(syscalls):
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:  # not a syscall of this architecture (systemd skips those too)
                continue
            check(lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 0, None), name)
        check(lib.seccomp_load(ctx), "load system call filter")


def confine(unit: Path) -> None:
    """Apply the unit's restrictions listed above to this process (and what it execs)."""
    settings = service_settings(unit)
    values = dict(settings)
    libc = ctypes.CDLL(None, use_errno=True)
    if values.get("NoNewPrivileges") == "yes" and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if "CapabilityBoundingSet" in values and values["CapabilityBoundingSet"] == "":
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        for cap in range(last + 1):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0):
                raise OSError(ctypes.get_errno(), f"PR_CAPBSET_DROP {cap}")
    install_filters(settings)


def main(argv: list[str]) -> None:
    unit, separator, *command = argv
    assert separator == "--" and command, __doc__
    confine(Path(unit))
    os.execvp(command[0], command)  # noqa: S606 - becoming the confined command is the point


if __name__ == "__main__":
    main(sys.argv[1:])
