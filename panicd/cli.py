"""The `panicd` command: a thin shell over the library.

    panicd run -c FILE             watch the configured guests (the daemon)
    panicd status [--json]         every guest of the running daemon, over its control socket
    panicd guest NAME ACTION       act on a guest through the daemon: dump, resume, restart,
                                   poweroff, nmi, run-policy (its on_panic steps)
    panicd incidents [--json]      every incident panicd has seen on this host, from its store
    panicd incidents show ID       one incident whole
    panicd check-config -c FILE    validate a config: bad keys, and what it would do wrong
    panicd mock-guest ...          the built-in mock pvpanic guest, to try a config on
    panicd triage DUMP             the crash title, panic reason and kernel log, from a dump
    panicd triage --log FILE|-     the same from a console log (serial file, journalctl -k)
    panicd demo                    a guided run on a built-in default (mock + real QEMU)

`main(argv)` returns the exit code, so tests call it directly.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from panicd import __version__
from panicd.config import DumpFormat, load
from panicd.errors import ConfigError
from panicd.events import IncidentKind
from panicd.store import FILE_NAME, StoreError, when
from panicd.text import printable

DEFAULT_CONFIG = Path("/etc/panicd/panicd.toml")
#: `panicd guest NAME ACTION`: what each action does (guest_actions.py runs them).
GUEST_ACTIONS = {
    "dump": "a memory dump, as the policy's dump step makes it",
    "resume": "cont (a paused or panicked guest runs again)",
    "restart": "system_reset, then cont",
    "poweroff": "quit: QEMU exits",
    "nmi": "inject-nmi (a guest booted with unknown_nmi_panic=1 panics)",
    "run-policy": "the guest's policy's on_panic steps, now (a hung guest)",
}
#: Exit status of `panicd guest` when the daemon refused the request.
REFUSED = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="panicd", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"panicd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    run.add_argument("--log-format", choices=["auto", "console", "json", "journal"])
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    status = sub.add_parser("status", help="show every guest of the running daemon")
    status.add_argument("-c", "--config", type=Path, default=None,
                        help="read control_socket from this config (when --socket is not "
                             f"given; default {DEFAULT_CONFIG})")
    status.add_argument("--socket", type=Path, help="the daemon's control socket")
    status.add_argument("--json", action="store_true", help="print JSON")

    guest = sub.add_parser("guest", help="act on a guest through the running daemon (an "
                                         "incident of kind manual)")
    guest.add_argument("name", help="the guest's name, as `panicd status` shows it")
    guest.add_argument("action", choices=list(GUEST_ACTIONS),
                       help="; ".join(f"{k}: {v}" for k, v in GUEST_ACTIONS.items()))
    guest.add_argument("--format", choices=list(DumpFormat.__args__),  # type: ignore[attr-defined]
                       help="with dump: this format instead of the policy's dump.format")
    guest.add_argument("--no-wait", action="store_true",
                       help="return once the daemon accepted it, without waiting for the steps")
    guest.add_argument("--timeout", type=float, default=900.0, metavar="SECONDS",
                       help="wait at most this long for the steps (default 900)")
    guest.add_argument("-c", "--config", type=Path, default=None,
                       help="read control_socket from this config (when --socket is not "
                            f"given; default {DEFAULT_CONFIG})")
    guest.add_argument("--socket", type=Path, help="the daemon's control socket")

    incidents = sub.add_parser("incidents", help="list the incidents in the store (newest first)")
    _store_arguments(incidents)
    incidents.add_argument("--guest", metavar="NAME", help="only this guest's (its exact name)")
    incidents.add_argument("--since", metavar="DATE", type=_since,
                           help="only those seen since DATE (2026-11-01, or an ISO time; UTC "
                                "unless it says)")
    incidents.add_argument("--kind", choices=[k.value for k in IncidentKind])
    incidents.add_argument("--json", action="store_true", help="print the full records as JSON")
    incidents.add_argument("--by-signature", action="store_true",
                           help="one line per crash title: how often, on how many guests, first "
                                "and last seen, the newest dump")
    show_sub = incidents.add_subparsers(dest="incidents_command")
    show = show_sub.add_parser("show", help="one incident whole: every field, every step")
    show.add_argument("id", help="the incident's id (first column of `panicd incidents`)")
    # Given after `show` too; SUPPRESS keeps a value given before `show` from being reset.
    _store_arguments(show, default=argparse.SUPPRESS)
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                      help="print the record as JSON")

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    check.add_argument("--unit", type=Path, default=None,
                       help="check against this systemd unit (and its UNIT.d/*.conf drop-ins) "
                            "instead of the installed panicd.service")
    check.add_argument("--fail-on", choices=["error", "warning", "syntax"], default="error",
                       help="exit 1 on an error finding (default), on any finding, or only "
                            "when `panicd run` would refuse the file (for ExecStartPre=)")

    import panicd.mock.cli as mock_cli  # noqa: PLC0415 - keeps start-up light

    mock = sub.add_parser(
        "mock-guest",
        help="run the built-in mock pvpanic guest",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mock_cli.add_arguments(mock)

    tri = sub.add_parser("triage", help="the crash title, panic reason and kernel log, read "
                                          "from a dump or a console log")
    tri.add_argument("dump", type=Path, nargs="?", help="an elf or kdump-* dump of the guest")
    tri.add_argument("--log", metavar="FILE",
                     help="read a kernel console log instead (a serial console file, "
                          "`journalctl -k` or dmesg output, a pstore file); - for standard input")
    tri.add_argument("--end-offset", type=int, metavar="BYTES", default=None,
                     help="with --log FILE: read the log only up to this offset (where it was "
                          "when the guest panicked)")
    tri.add_argument("--json", action="store_true", help="print JSON")
    tri.add_argument("--lines", type=int, default=50, help="how many last log lines (default 50)")
    tri.add_argument("--memory-limit", type=int, metavar="BYTES",
                     help="cap this process's private memory (RLIMIT_DATA) before reading")

    demo = sub.add_parser("demo", help="watch built-in guests panic: the quick start")
    demo.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    demo.add_argument("--no-qemu", action="store_true", help="mock guests only")
    return parser


def _store_arguments(parser: argparse.ArgumentParser, default: object = None) -> None:
    parser.add_argument("-c", "--config", type=Path, default=default,
                        help="read state_dir from this config (when --state-dir is not given; "
                             f"default {DEFAULT_CONFIG})")
    parser.add_argument("--state-dir", type=Path, default=default, metavar="DIR",
                        help=f"the daemon's state_dir, which holds {FILE_NAME}")


def _since(text: str) -> float:
    try:
        return when(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date (2026-11-01) or an ISO time (2026-11-01T12:00:00+01:00): {text!r}"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "check-config": _check_config, "run": _run, "status": _status, "guest": _guest,
        "incidents": _incidents, "triage": _triage, "mock-guest": _mock_guest, "demo": _demo,
    }
    return commands[args.command](args)


def _mock_guest(args: argparse.Namespace) -> int:
    import panicd.mock.cli as mock_cli  # noqa: PLC0415

    return mock_cli.run(args)


def _demo(args: argparse.Namespace) -> int:
    from panicd import demo  # noqa: PLC0415

    return demo.main(work_dir=args.dir, use_qemu=not args.no_qemu)


def _check_config(args: argparse.Namespace) -> int:
    from panicd import checks, sandbox  # noqa: PLC0415
    from panicd.findings import Severity  # noqa: PLC0415

    path: Path = args.config
    try:
        config = load(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.unit is not None:
        try:
            service: sandbox.ServiceSandbox | None = sandbox.read_named(args.unit)
        except OSError as exc:
            print(printable(f"panicd check-config: cannot read --unit {args.unit}: {exc}"),
                  file=sys.stderr)
            return 1
    else:
        skipped = ("the checks against the service's sandbox (writable dump_dir, state_dir "
                   "and sockets) are skipped; name a unit with --unit PATH")
        try:
            service = sandbox.find_installed()
        except OSError as exc:
            service = None
            print(printable(f"NOTE unit: cannot read the installed unit: {exc}: {skipped}"))
        else:
            if service is None:
                searched = ", ".join(str(d) for d in sandbox.UNIT_DIRS)
                print(printable(f"NOTE unit: no {sandbox.UNIT_NAME} installed (looked in "
                                f"{searched}): {skipped}"))
    findings = checks.check(config, service)
    for finding in findings:
        print(finding)
    errors = sum(f.severity is Severity.ERROR for f in findings)
    warnings = len(findings) - errors
    counts = f"({len(config.guest)} guests, {len(config.policy)} policies)"
    name = printable(str(path))
    if errors:
        print(f"{name}: {_plural(errors, 'error')}, {_plural(warnings, 'warning')} {counts}")
    elif warnings:
        print(f"{name}: OK with {_plural(warnings, 'warning')} {counts}")
    else:
        print(f"{name}: OK {counts}")
    failing = {"error": errors, "warning": len(findings), "syntax": 0}[args.fail_on]
    return 1 if failing else 0


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _run(args: argparse.Namespace) -> int:
    from panicd import logs  # noqa: PLC0415
    from panicd.daemon import Daemon  # noqa: PLC0415

    try:
        config = load(args.config)
    except ConfigError as exc:
        logs.configure("error", args.log_format or "auto")
        print(exc, file=sys.stderr)
        return 1
    logs.configure(
        args.log_level or config.daemon.log_level, args.log_format or config.daemon.log_format
    )
    _raise_fd_limit()

    async def serve() -> None:
        await Daemon(config, config_path=args.config).run()

    from panicd import journal  # noqa: PLC0415

    try:
        asyncio.run(serve())
    finally:
        # The last alerts (and the stop's log lines) are still queued for journald; a stalled
        # journald gets a few seconds, not a hung shutdown (systemd's TimeoutStopSec is 30 s).
        journal.flush(timeout=3.0)
    return 0


def _status(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from panicd import control  # noqa: PLC0415

    path = args.socket if args.socket is not None else _status_socket(args.config)
    try:
        reply = control.request(path)
    except (OSError, ValueError) as exc:
        print(_unreachable("status", path, exc), file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(printable(f"panicd status: {reply.get('error')}"), file=sys.stderr)
        return 1
    reply.pop("ok")
    # JSON keeps names exact (json.dumps escapes control characters); the table escapes them.
    print(json.dumps(reply, indent=2, default=str) if args.json else control.format_table(reply))
    return 0


def _guest(args: argparse.Namespace) -> int:
    """`panicd guest NAME ACTION`: 0 when every step was ok, 1 when one failed (or the steps
    did not finish in time, or the daemon could not be asked), 2 when the daemon refused."""
    from panicd import control  # noqa: PLC0415
    from panicd.config import DaemonConfig, load_control_socket  # noqa: PLC0415

    if args.format is not None and args.action not in ("dump", "run-policy"):
        print(f"panicd guest: --format goes with dump (or run-policy), not {args.action}",
              file=sys.stderr)
        return REFUSED
    path = args.socket if args.socket is not None else _daemon_path(
        "guest", args.config, key="control_socket", load_leniently=load_control_socket,
        default=DaemonConfig().control_socket, use="asking it at")
    wait = 0.0 if args.no_wait else max(args.timeout, 0.1)
    what = printable(f"{args.name} {args.action}")
    try:
        with control.ControlConnection(path) as connection:
            connection.send({"command": "guest", "guest": args.name, "action": args.action,
                             "format": args.format, "wait": wait})
            accepted = connection.receive()
            if not accepted.get("ok"):
                print(printable(f"panicd guest: {args.name} {args.action}: refused: "
                                f"{accepted.get('error')}"), file=sys.stderr)
                return REFUSED if accepted.get("refused") else 1
            incident = printable(str(accepted.get("incident")))
            steps = " ".join(str(s) for s in accepted.get("steps") or [])
            print(f"{what}: accepted: incident {incident} (steps: {printable(steps)})")
            if args.no_wait:
                print(f"follow it with: panicd incidents show {incident}")
                return 0
            # The daemon answers by `wait`; a little longer here for the reply to travel.
            outcome = connection.receive(timeout=wait + 10)
    except (OSError, ValueError) as exc:
        print(_unreachable("guest", path, exc), file=sys.stderr)
        return 1
    return control.print_guest_outcome(outcome, incident)


def _unreachable(command: str, path: Path, exc: Exception) -> str:
    """Why the daemon could not be asked, with what to do about a socket one may not use."""
    why = f"panicd {command}: cannot ask the daemon at {path}: {exc}"
    if isinstance(exc, PermissionError):
        why += ("; the control socket is root's and [daemon] control_group's (panicd guest "
                "also needs root or a uid in [daemon] control_allowed_uids)")
    return printable(why)


def _status_socket(config_path: Path | None) -> Path:
    """Where the daemon listens, by the config; what is wrong with the config goes to stderr.

    `status` needs only `[daemon] control_socket`: a file invalid elsewhere (a policy being
    edited while the daemon runs the old one) still names the socket, with a warning. A file
    that cannot be read or is not TOML leaves the default socket, and says so.
    """
    from panicd.config import DaemonConfig, load_control_socket  # noqa: PLC0415

    return _daemon_path("status", config_path, key="control_socket",
                        load_leniently=load_control_socket, default=DaemonConfig().control_socket,
                        use="asking it at")


def _daemon_path(command: str, config_path: Path | None, *, key: str,
                 load_leniently: Callable[[Path], Path], default: Path, use: str) -> Path:
    """`[daemon] <key>` of the config (the default one when not named), read leniently.

    The whole file is tried first; when it is invalid elsewhere, only `key` is read, with a
    warning (the daemon runs the file it read last). When the key cannot be had, `default`.
    """
    path = config_path or DEFAULT_CONFIG
    try:
        value: Path = getattr(load(path).daemon, key)
    except ConfigError as invalid:
        if config_path is None and not path.exists():
            return default  # no config at the default place: the default is the guess
        try:
            value = load_leniently(path)
        except ConfigError as unusable:
            print(f"panicd {command}: {unusable}", file=sys.stderr)
            print(printable(f"panicd {command}: no usable [daemon] {key} in {path}; "
                            f"trying the default, {default}"), file=sys.stderr)
            return default
        print(f"panicd {command}: warning: {invalid}", file=sys.stderr)
        said = "as the file says" if value != default else "the default (the file sets no other)"
        print(printable(f"panicd {command}: the daemon would refuse {path} on reload or restart "
                        f"(see panicd check-config -c {path}); {use} {value}, {said}"),
              file=sys.stderr)
    return value


def _incidents(args: argparse.Namespace) -> int:
    """`panicd incidents [show ID]`: the store, opened read-only (the daemon may run or not)."""
    from panicd import logs  # noqa: PLC0415
    from panicd.config import DaemonConfig, load_state_dir  # noqa: PLC0415

    # A row that does not validate is logged and left out: on stderr, never in the output.
    logs.configure("warning", "console")
    state_dir = args.state_dir if args.state_dir is not None else _daemon_path(
        "incidents", args.config, key="state_dir", load_leniently=load_state_dir,
        default=DaemonConfig().state_dir, use="reading the store under")
    from panicd import incidents_view  # noqa: PLC0415

    try:
        with incidents_view.read_only_store(state_dir / FILE_NAME) as queries:
            return incidents_view.command(args, queries, state_dir / FILE_NAME)
    except StoreError as exc:
        print(printable(f"panicd incidents: {exc}"), file=sys.stderr)
        return 1


def _raise_fd_limit() -> None:
    """One fd per guest connection: lift the soft limit (1024 under systemd) to the hard one."""
    import resource  # noqa: PLC0415

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _triage(args: argparse.Namespace) -> int:
    from panicd.triage import command  # noqa: PLC0415 - keeps start-up light

    return command.run(args)
