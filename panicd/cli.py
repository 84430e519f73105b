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
import contextlib
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from panicd import __version__
from panicd.config import DumpFormat, load
from panicd.errors import ConfigError
from panicd.events import IncidentKind
from panicd.store import FILE_NAME, IncidentQueries, StoreError, connect, when
from panicd.table import cell, human_size, render
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
    errors = sum(f.severity is checks.Severity.ERROR for f in findings)
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
        print(printable(f"panicd status: cannot ask the daemon at {path}: {exc}"),
              file=sys.stderr)
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
        print(printable(f"panicd guest: cannot ask the daemon at {path}: {exc}"), file=sys.stderr)
        return 1
    return _print_guest_outcome(outcome, incident)


def _print_guest_outcome(outcome: dict[str, Any], incident: str) -> int:
    if not outcome.get("done"):
        print(printable(f"incident {incident}: {outcome.get('error')}; see panicd incidents "
                        f"show {incident}"), file=sys.stderr)
        return 1
    steps = [s for s in outcome.get("steps") or [] if isinstance(s, dict)]
    rows = [(cell(s.get("name")), "ok" if s.get("ok") else "failed",
             f"{s.get('seconds', 0):.2f} s", cell(_step_summary(s))) for s in steps]
    print("\n".join(render(("STEP", "RESULT", "TOOK", "DETAIL"), rows)))
    result = printable(str(outcome.get("outcome")))
    print(f"incident {incident}: {result} (panicd incidents show {incident})")
    return 0 if outcome.get("outcome") == "ok" else 1


def _step_summary(step: dict[str, Any]) -> str:
    """What a step did, in a few words: its error, its dump, the guest's runstate after it."""
    if not step.get("ok"):
        return f"{step.get('error')}"
    parts = [f"skipped: {step['skipped']}"] if step.get("skipped") else []
    dump = step.get("dump")
    if isinstance(dump, dict) and dump.get("path"):
        size = dump.get("bytes")
        parts.append(f"{dump['path']} ({human_size(size) if isinstance(size, int) else '?'}, "
                     f"{dump.get('format')}, {dump.get('result')})")
    power = step.get("power")
    if isinstance(power, dict) and power.get("status"):
        parts.append(f"guest {power['status']}")
    return "; ".join(parts) or "-"


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
        print(printable(f"panicd {command}: the daemon would refuse {path} on reload or restart "
                        f"(see panicd check-config -c {path}); {use} {value}, "
                        "as the file says"), file=sys.stderr)
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
    try:
        with _read_only_store(state_dir / FILE_NAME) as queries:
            return _print_incidents(args, queries, state_dir / FILE_NAME)
    except StoreError as exc:
        print(printable(f"panicd incidents: {exc}"), file=sys.stderr)
        return 1


@contextlib.contextmanager
def _read_only_store(path: Path) -> Iterator[IncidentQueries]:
    """Questions to the store at `path`, which is never written; StoreError says what is wrong."""
    try:
        path.stat()
    except FileNotFoundError:
        raise StoreError(f"no incident store at {path} (panicd has not run with this "
                         "state_dir, or --state-dir or -c names another)") from None
    except OSError as exc:
        raise StoreError(f"cannot open the incident store {path}: {exc}") from exc
    try:
        db = connect(path, read_only=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the incident store {path}: {exc}") from exc
    except StoreError as exc:
        raise StoreError(f"cannot open the incident store {exc}") from exc
    try:
        yield IncidentQueries(db)
    except sqlite3.Error as exc:
        # A file SQLite opens but cannot read through (truncated, not panicd's, damaged).
        raise StoreError(f"cannot read the incident store {path}: {exc}") from exc
    finally:
        db.close()


def _print_incidents(args: argparse.Namespace, queries: IncidentQueries, path: Path) -> int:
    from panicd import incidents_view  # noqa: PLC0415

    if args.incidents_command == "show":
        record = queries.incident(args.id)
        if record is None:
            print(printable(f"panicd incidents: no incident '{args.id}' in {path}"),
                  file=sys.stderr)
            return 1
        # JSON keeps names exact (json.dumps escapes control characters); the text escapes them.
        print(incidents_view.as_json(record) if args.json
              else incidents_view.format_incident(record))
        return 0
    if args.by_signature:
        from panicd.signatures import SignatureQueries  # noqa: PLC0415

        if args.kind is not None:
            print("panicd incidents: --kind does not go with --by-signature (a signature is a "
                  "crash title, whatever the incident's kind)", file=sys.stderr)
            return 2
        version = queries.db.execute("PRAGMA user_version").fetchone()[0]
        if version < 2:
            # A panicd from before crash signatures still runs on this store: its next start
            # migrates it (schema 2 adds the signatures' table).
            print(printable(f"panicd incidents: {path} has no crash signatures yet (schema "
                            f"{version}): restart panicd to bring the store up to date"),
                  file=sys.stderr)
            return 1
        summaries = SignatureQueries(queries.db).by_signature(guest=args.guest, since=args.since)
        print(incidents_view.signatures_json(summaries) if args.json
              else incidents_view.format_signatures(summaries))
        return 0
    if args.json:
        print(incidents_view.as_json(queries.incidents(guest=args.guest, since=args.since,
                                                        kind=args.kind)))
    else:
        print(incidents_view.format_table(queries.listing(guest=args.guest, since=args.since,
                                                          kind=args.kind)))
    return 0


def _raise_fd_limit() -> None:
    """One fd per guest connection: lift the soft limit (1024 under systemd) to the hard one."""
    import resource  # noqa: PLC0415

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _triage(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from panicd.triage import TriageError  # noqa: PLC0415
    from panicd.triage.report import (  # noqa: PLC0415
        from_console,
        read_console_log,
        read_console_stream,
        triage,
    )

    if (args.dump is None) == (args.log is None):
        print("panicd triage: give a DUMP or --log FILE (- for standard input), not both",
              file=sys.stderr)
        return 2
    if args.end_offset is not None and args.log in (None, "-"):
        print("panicd triage: --end-offset goes with --log FILE (a file, not a dump or -)",
              file=sys.stderr)
        return 2
    if args.memory_limit is not None:
        import resource  # noqa: PLC0415

        resource.setrlimit(resource.RLIMIT_DATA, (args.memory_limit, args.memory_limit))
    lines = max(0, args.lines)
    try:
        if args.log == "-":
            report = from_console(read_console_stream(sys.stdin.buffer), lines=lines)
        elif args.log is not None:
            report = from_console(read_console_log(Path(args.log), args.end_offset), lines=lines)
        else:
            report = triage(args.dump, lines=lines)
    except (TriageError, OSError) as exc:
        print(printable(f"panicd triage: {exc}"), file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    # Everything below was written by the guest's kernel (or whoever controls the guest):
    # escaped, so a log line cannot move the cursor or recolour the operator's terminal.
    title = report.title or "(no crash in the log)"
    if report.title_corrupted:
        title += " (the report looks garbled)"
    print(f"title:   {printable(title)}")
    if report.signature:
        print(f"signature: {report.signature}")
    print(f"kernel:  {printable(report.kernel_release or '')}")
    print(f"panic:   {printable(report.panic_line or '(no panic line in the log)')}")
    if report.first_problem:
        print(f"first:   {printable(report.first_problem)}")
    if report.call_trace:
        print("trace:\n  " + "\n  ".join(printable(line) for line in report.call_trace))
    print(f"last {len(report.last_lines)} of {report.records} log lines:")
    print("\n".join(printable(line) for line in report.last_lines))
    return 0
