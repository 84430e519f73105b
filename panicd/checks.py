"""What `panicd check-config` finds in a valid config: mistakes that parse but will bite.

`config.load` rejects what panicd cannot run (unknown keys, bad values). These checks look
at a config it accepts and say what panicd would actually do with it:

- a policy that can never apply, because an earlier `match` takes every guest it would;
- steps in an order that loses the crash (`dump` after `restart`) or that cannot work
  (anything but `exec` after `poweroff`: QEMU has exited), in on_panic, on_watchdog and
  on_crash_loaded alike;
- `panic_action = "none"` with `pause`, `restart` or `poweroff` in on_panic: the guest left
  running to write its own crash dump (Windows' MEMORY.DMP) is stopped in the middle of it;
- a `wait_panic` with no `nmi` before it (nothing provokes the panic it waits for), and
  `nmi` or `wait_panic` in on_panic (the guest has panicked already);
- an `exec` hook whose program is missing, not executable, or not on PATH: the service's
  PATH, as its unit sets it, when there is a unit (`panicd.hook_checks`);
- a `control_group` this host does not have;
- with the installed systemd unit (`panicd.sandbox`): a `dump_dir`, `state_dir` or socket
  the service may not write, and guest sockets, console logs or hooks it cannot even see.

A finding is an ERROR when panicd would fail at it every time, a WARNING when panicd would
run but not as the file seems to mean. Each says what will happen and how to fix it.
"""

from __future__ import annotations

import fnmatch
import grp
from collections.abc import Iterator
from pathlib import Path

from panicd import hook_checks
from panicd.config import Config, Policy
from panicd.findings import Finding, Severity, seen_as
from panicd.sandbox import Access, ServiceSandbox

_WILDCARDS = frozenset("*?[")
_DROP_IN = "/etc/systemd/system/panicd.service.d/paths.conf"




def check(config: Config, sandbox: ServiceSandbox | None = None) -> list[Finding]:
    """Every finding, in the order of the file's sections (daemon, discovery, guest, policy)."""
    findings = list(_nul_paths(config))
    if findings:
        return findings  # the other checks would trip over the same paths
    findings += _control_group(config)
    if sandbox is not None:
        findings += _writable_paths(config, sandbox)
        findings += _visible_sockets(config, sandbox)
        findings += _visible_console_logs(config, sandbox)
    for index, policy in enumerate(config.policy):
        findings += _shadowed(index, config.policy)
        findings += _shared_console_log(index, policy)
        findings += _step_order(index, policy)
        findings += _stops_a_guest_left_running(index, policy)
        findings += _nmi_steps(index, policy)
        findings += _hook(index, policy, sandbox)
    return findings


def _configured_paths(config: Config) -> Iterator[tuple[str, str]]:
    daemon = config.daemon
    yield "daemon.dump_dir", str(daemon.dump_dir)
    yield "daemon.state_dir", str(daemon.state_dir)
    yield "daemon.control_socket", str(daemon.control_socket)
    if config.discovery.listen is not None:
        yield "discovery.listen", str(config.discovery.listen)
    for i, pattern in enumerate(config.discovery.watch):
        yield f"discovery.watch[{i}]", pattern
    for i, guest in enumerate(config.guest):
        yield f"guest[{i}].socket", str(guest.socket)
    for i, policy in enumerate(config.policy):
        if policy.exec is not None:
            yield f"policy[{i}].exec.command[0]", policy.exec.command[0]


def _nul_paths(config: Config) -> Iterator[Finding]:
    # TOML allows "\u0000" in a string; the kernel allows it in no file name.
    for where, path in _configured_paths(config):
        if "\0" in path:
            yield Finding(Severity.ERROR, where, f"'{path}' holds a NUL character, which no "
                          "file name can: every use of it fails", "remove the \\u0000")


def _control_group(config: Config) -> Iterator[Finding]:
    group = config.daemon.control_group
    if group is None:
        return
    try:
        grp.getgrnam(group)
    except KeyError:
        yield Finding(
            Severity.ERROR, "daemon.control_group",
            f"this host has no group '{group}': panicd would start without its control socket "
            "(`panicd status` cannot reach it)",
            f"create the group (groupadd {group}) or remove control_group")


# -- the service's sandbox ------------------------------------------------------------------

_BLOCKED_CONSEQUENCE = {
    "daemon.dump_dir": "every dump would fail (read-only file system), and the policy's "
                       "next steps run without one",
    "daemon.state_dir": "the incident store could not be saved (kept in memory only), so after "
                        "panicd restarts a guest still paused is handled (and dumped) again and "
                        "the incident history and crash-loop budget start afresh",
    "daemon.control_socket": "panicd could not create its control socket: `panicd status` "
                             "would not reach it",
    "discovery.listen": "panicd could not create the socket QEMUs connect to: no guest "
                        "would reach it",
}

_PRIVATE_CONSEQUENCE = {
    "daemon.dump_dir": "the host never sees the dumps, and they are removed when panicd stops",
    "daemon.state_dir": "the incident store is lost whenever panicd stops, so after a restart "
                        "a guest still paused is handled (and dumped) again and the history "
                        "starts afresh",
    "daemon.control_socket": "`panicd status` looks in the host's /tmp and finds no socket",
    "discovery.listen": "QEMUs look in the host's /tmp and find no socket",
}




def _writable_paths(config: Config, sandbox: ServiceSandbox) -> Iterator[Finding]:
    daemon = config.daemon
    written: list[tuple[str, Path, Path]] = [  # (key, path, the directory that must be writable)
        ("daemon.dump_dir", daemon.dump_dir, daemon.dump_dir),
        ("daemon.state_dir", daemon.state_dir, daemon.state_dir),
        ("daemon.control_socket", daemon.control_socket, daemon.control_socket.parent),
    ]
    if config.discovery.listen is not None:
        listen = config.discovery.listen
        written.append(("discovery.listen", listen, listen.parent))
    for where, path, directory in written:
        verdict = sandbox.access(path)
        if verdict.access is Access.READ_ONLY:
            yield Finding(
                Severity.WARNING, where,
                f"{path} {seen_as(verdict, sandbox)}: {_BLOCKED_CONSEQUENCE[where]}",
                f"create {directory} and let the service write there with a drop-in: "
                f"{_DROP_IN} holding \"[Service]\" and \"ReadWritePaths={directory}\", then "
                "systemctl daemon-reload && systemctl restart panicd")
        elif verdict.access is not Access.WRITABLE:
            consequence = (_PRIVATE_CONSEQUENCE if verdict.access is Access.PRIVATE
                           else _BLOCKED_CONSEQUENCE)[where]
            yield Finding(
                Severity.WARNING, where, f"{path} {seen_as(verdict, sandbox)}: {consequence}",
                "use a directory under /var/lib/panicd (or /run/panicd for a socket)")


def _visible_sockets(config: Config, sandbox: ServiceSandbox) -> Iterator[Finding]:
    # Connecting needs no write access (connect() works on a read-only mount), only that
    # the socket be visible: ProtectHome= and PrivateTmp= replace what the host has there.
    watched = [(f"guest[{i}].socket", g.socket) for i, g in enumerate(config.guest)]
    watched += [(f"discovery.watch[{i}]", Path(p).parent)
                for i, p in enumerate(config.discovery.watch)]
    return _hidden(sandbox, watched, "panicd would never find QEMU's socket there",
                   "let QEMU put its QMP socket elsewhere (/run/qemu/, say)")


def _visible_console_logs(config: Config, sandbox: ServiceSandbox) -> Iterator[Finding]:
    # Reading one needs only that it be visible (ProtectSystem=strict leaves files readable).
    logs = [(f"guest[{i}].console_log", g.console_log) for i, g in enumerate(config.guest)]
    logs += [(f"policy[{i}].console_log", p.console_log) for i, p in enumerate(config.policy)]
    # The directory up to the first {name}: the part every guest's file shares.
    directories = [(where, Path(template.split("{name}", 1)[0] + "_").parent)
                   for where, template in logs if template is not None]
    return _hidden(sandbox, directories, "panicd would never read the console log there, and "
                   "crashes without a readable dump get no title",
                   "let QEMU write its serial console under /var/log/qemu/ (say)")


def _hidden(sandbox: ServiceSandbox, places: list[tuple[str, Path]], consequence: str,
            elsewhere: str) -> Iterator[Finding]:
    """A WARNING for each place the unit's sandbox hides from panicd (or makes private)."""
    for where, path in places:
        verdict = sandbox.access(path)
        if verdict.access in (Access.HIDDEN, Access.PRIVATE):
            yield Finding(
                Severity.WARNING, where, f"{path} {seen_as(verdict, sandbox)}: {consequence}",
                f"{elsewhere}, or override {verdict.origin.split('=')[0]}= in a drop-in")


# -- policies ------------------------------------------------------------------------------

def _shared_console_log(index: int, policy: Policy) -> Iterator[Finding]:
    if policy.console_log is None or "{name}" in policy.console_log:
        return
    if not any(c in _WILDCARDS for c in policy.match):
        return  # a policy for one guest may name its file
    yield Finding(
        Severity.WARNING, f"policy[{index}].console_log",
        f"'{policy.console_log}' has no {{name}}: every guest matching '{policy.match}' would "
        "read this one file, and one guest's crash would title another's",
        "put {name} in the path (\"/var/log/qemu/{name}.serial\"), or name each guest's file "
        "in its [[guest]] console_log")


def _covers(earlier: str, later: str) -> bool:
    """True when every name `later` matches is certainly matched by `earlier`.

    Detected: an earlier pattern made only of `*`; identical patterns; an earlier pattern
    that matches a later one without wildcards (a fixed name); an earlier `PREFIX*` (or
    `*SUFFIX`) with no other wildcard where the later pattern starts (ends) with it
    literally. Not detected (fnmatch containment in general, and several earlier policies
    that only cover a later one together): `web-[0-9]*` before `web-1?`, `*-db-*` before
    `eu-db-*`, or `a*` and `b*` before `[ab]*`.
    """
    if earlier == later or set(earlier) == {"*"}:
        return True
    if not _WILDCARDS & set(later):
        return fnmatch.fnmatchcase(later, earlier)
    head, tail = earlier[:-1], earlier[1:]
    if earlier.endswith("*") and not _WILDCARDS & set(head):
        return later.startswith(head)
    # A "]" in the suffix could close a bracket expression of the later pattern.
    if earlier.startswith("*") and not (_WILDCARDS | {"]"}) & set(tail):
        return later.endswith(tail)
    return False


def _shadowed(index: int, policies: list[Policy]) -> Iterator[Finding]:
    later = policies[index]
    for i, earlier in enumerate(policies[:index]):
        if _covers(earlier.match, later.match):
            yield Finding(
                Severity.WARNING, f"policy[{index}].match",
                f"policy[{index}] (match = '{later.match}') never applies: policy[{i}] "
                f"(match = '{earlier.match}') comes first and takes every guest it would",
                f"move policy[{index}] above policy[{i}], or narrow policy[{i}].match")
            return


#: Each step list, and the incidents that run it ("the exec step fails at every panic").
_STEP_LISTS = {"on_panic": "panic", "on_watchdog": "watchdog", "on_crash_loaded": "crash-loaded event"}


def _step_lists(policy: Policy) -> Iterator[tuple[str, list[str]]]:
    yield from ((name, list(getattr(policy, name))) for name in _STEP_LISTS)


def _step_order(index: int, policy: Policy) -> Iterator[Finding]:
    for list_name, steps in _step_lists(policy):
        every = f"at every {_STEP_LISTS[list_name]}"
        first: dict[str, str] = {}  # step -> where it first comes: "on_panic[0]"
        for k, step in enumerate(steps):
            where = f"policy[{index}].{list_name}[{k}]"
            if "poweroff" in first and step != "exec":
                # `quit`: QEMU exits, so every QMP step after it finds no guest.
                gone = "finds no guest to dump" if step == "dump" else "fails"
                yield Finding(
                    Severity.ERROR, where,
                    f"'{step}' comes after 'poweroff' ({first['poweroff']}): QEMU has exited "
                    f"by then, so {every} it {gone} (a step-failed alert)",
                    f"move '{step}' before 'poweroff', or remove it")
            elif step == "dump" and "restart" in first:
                # system_reset then cont: the memory QEMU would dump is the new boot's.
                yield Finding(
                    Severity.ERROR, where,
                    f"'dump' comes after 'restart' ({first['restart']}): it dumps the freshly "
                    f"rebooted guest, not the {'hang' if list_name == 'on_watchdog' else 'crash'}",
                    "put 'dump' before 'restart'")
            elif step == "dump" and "resume" in first:
                # cont from guest-panicked: the panicked kernel runs on, and with panic=N
                # it reboots itself before (or while) it is dumped.
                yield Finding(
                    Severity.WARNING, where,
                    f"'dump' comes after 'resume' ({first['resume']}): the guest runs on "
                    "first, and a kernel booted with panic=N reboots itself, so the dump may "
                    "not hold the crash",
                    "put 'dump' before 'resume'")
            first.setdefault(step, f"{list_name}[{k}]")


def _stops_a_guest_left_running(index: int, policy: Policy) -> Iterator[Finding]:
    """`panic_action = "none"` leaves a panicked guest running so that it writes its own crash
    dump (Windows: MEMORY.DMP, then it reboots itself); a step that stops or resets it cuts
    that dump short. A `dump` is fine: QEMU stops a running guest only while it dumps it."""
    if policy.panic_action != "none":
        return
    for k, step in enumerate(policy.on_panic):
        if step in ("pause", "restart", "poweroff"):
            yield Finding(
                Severity.WARNING, f"policy[{index}].on_panic[{k}]",
                f"'{step}' in on_panic with panic_action = \"none\": the guest is left running "
                "to write its own crash dump (Windows' MEMORY.DMP), and this step stops it in "
                "the middle of writing it (on_panic is [\"dump\", \"pause\"] when not set)",
                f"remove '{step}' (on_panic = [] or [\"exec\"] only records the panic), or "
                "set panic_action = \"pause\" to have panicd keep and dump the guest")


def _nmi_steps(index: int, policy: Policy) -> Iterator[Finding]:
    timeout = f"{policy.wait_panic.timeout:g} s"
    for k, step in enumerate(policy.on_panic):
        where = f"policy[{index}].on_panic[{k}]"
        if step == "nmi":
            # The panicked kernel is stopped in its panic loop: an NMI changes nothing.
            yield Finding(
                Severity.WARNING, where,
                "'nmi' in on_panic: the guest has already panicked, so an NMI turns nothing "
                "into a panic (it only disturbs the panicked kernel if the guest runs again)",
                "remove it; 'nmi' belongs in on_watchdog, for a guest that hung")
        elif step == "wait_panic":
            # The panic that started the incident is latched: a second one never comes.
            yield Finding(
                Severity.WARNING, where,
                f"'wait_panic' in on_panic: the guest has already panicked, so it waits "
                f"{timeout} (wait_panic.timeout) at every panic for a panic that never comes, "
                "before the next steps run",
                "remove it; 'wait_panic' belongs after an 'nmi' in on_watchdog")
    for list_name, steps in (("on_watchdog", policy.on_watchdog),
                             ("on_crash_loaded", policy.on_crash_loaded)):
        nmi_seen = False
        for k, step in enumerate(steps):
            nmi_seen = nmi_seen or step == "nmi"
            if step == "wait_panic" and not nmi_seen:
                # A hung guest does not panic by itself: only an NMI (unknown_nmi_panic=1)
                # makes it, and the NMI must be injected before anything waits for it.
                yield Finding(
                    Severity.WARNING, f"policy[{index}].{list_name}[{k}]",
                    f"'wait_panic' does not come after an 'nmi': nothing provokes the panic it "
                    f"waits for, so it usually waits the whole {timeout} (wait_panic.timeout) "
                    "before the next steps run",
                    "put 'nmi' before it (and boot the guest with unknown_nmi_panic=1), "
                    "or remove it")


def _hook(index: int, policy: Policy, sandbox: ServiceSandbox | None) -> Iterator[Finding]:
    runs_it = [_STEP_LISTS[name] for name, steps in _step_lists(policy) if "exec" in steps]
    if policy.exec is None or not runs_it:
        return  # configured but never run: nothing will fail
    fails = f"the exec step fails at every {' and '.join(runs_it)} (a step-failed alert)"
    yield from hook_checks.program(policy.exec.command[0], f"policy[{index}].exec.command[0]",
                                   fails, sandbox)
