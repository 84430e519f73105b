"""The `panicd` command: a thin shell over the library.

    panicd run -c FILE             watch the configured guests (the daemon)
    panicd status [--json]         every guest of the running daemon, over its control socket
    panicd check-config -c FILE    validate a config: bad keys, and what it would do wrong
    panicd mock-guest ...          the built-in mock pvpanic guest, to try a config on
    panicd triage DUMP             the panic reason and the guest's kernel log, from a dump
    panicd demo                    a guided run on a built-in default (mock + real QEMU)

`main(argv)` returns the exit code, so tests call it directly.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from panicd import __version__
from panicd.config import load
from panicd.errors import ConfigError
from panicd.text import printable

DEFAULT_CONFIG = Path("/etc/panicd/panicd.toml")


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

    tri = sub.add_parser("triage", help="the panic reason and kernel log, read from a dump")
    tri.add_argument("dump", type=Path)
    tri.add_argument("--json", action="store_true", help="print JSON")
    tri.add_argument("--lines", type=int, default=50, help="how many last log lines (default 50)")
    tri.add_argument("--memory-limit", type=int, metavar="BYTES",
                     help="cap this process's private memory (RLIMIT_DATA) before reading")

    demo = sub.add_parser("demo", help="watch built-in guests panic: the quick start")
    demo.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    demo.add_argument("--no-qemu", action="store_true", help="mock guests only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "run":
        return _run(args)
    if args.command == "status":
        return _status(args)
    if args.command == "triage":
        return _triage(args)
    if args.command == "mock-guest":
        import panicd.mock.cli as mock_cli  # noqa: PLC0415

        return mock_cli.run(args)
    if args.command == "demo":
        from panicd import demo  # noqa: PLC0415

        return demo.main(work_dir=args.dir, use_qemu=not args.no_qemu)
    raise AssertionError(args.command)


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


def _status_socket(config_path: Path | None) -> Path:
    """Where the daemon listens, by the config; what is wrong with the config goes to stderr.

    `status` needs only `[daemon] control_socket`: a file invalid elsewhere (a policy being
    edited while the daemon runs the old one) still names the socket, with a warning. A file
    that cannot be read or is not TOML leaves the default socket, and says so.
    """
    from panicd.config import DaemonConfig, load_control_socket  # noqa: PLC0415

    default = DaemonConfig().control_socket
    path = config_path or DEFAULT_CONFIG
    try:
        return load(path).daemon.control_socket
    except ConfigError as invalid:
        if config_path is None and not path.exists():
            return default  # no config at the default place: the default socket is the guess
        try:
            socket = load_control_socket(path)
        except ConfigError as unusable:
            print(f"panicd status: {unusable}", file=sys.stderr)
            print(printable(f"panicd status: no usable [daemon] control_socket in {path}; "
                            f"trying the default, {default}"), file=sys.stderr)
            return default
        print(f"panicd status: warning: {invalid}", file=sys.stderr)
        print(printable(f"panicd status: the daemon would refuse {path} on reload or restart "
                        f"(see panicd check-config -c {path}); asking it at {socket}, "
                        "as the file says"), file=sys.stderr)
        return socket


def _raise_fd_limit() -> None:
    """One fd per guest connection: lift the soft limit (1024 under systemd) to the hard one."""
    import resource  # noqa: PLC0415

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _triage(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from panicd.triage import TriageError  # noqa: PLC0415
    from panicd.triage.report import triage  # noqa: PLC0415

    if args.memory_limit is not None:
        import resource  # noqa: PLC0415

        resource.setrlimit(resource.RLIMIT_DATA, (args.memory_limit, args.memory_limit))
    try:
        report = triage(args.dump, lines=max(0, args.lines))
    except (TriageError, OSError) as exc:
        print(f"panicd triage: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    # Everything below was written by the guest's kernel (or whoever controls the guest):
    # escaped, so a log line cannot move the cursor or recolour the operator's terminal.
    print(f"kernel:  {printable(report.kernel_release or '')}")
    print(f"panic:   {printable(report.panic_line or '(no panic line in the log)')}")
    if report.first_problem:
        print(f"first:   {printable(report.first_problem)}")
    if report.call_trace:
        print("trace:\n  " + "\n  ".join(printable(line) for line in report.call_trace))
    print(f"last {len(report.last_lines)} of {report.records} log lines:")
    print("\n".join(printable(line) for line in report.last_lines))
    return 0
