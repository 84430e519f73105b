"""The `panicd` command: a thin shell over the library.

    panicd run -c FILE             watch the configured guests (the daemon)
    panicd status [--json]         every guest of the running daemon, over its control socket
    panicd check-config -c FILE    validate a config; exit 0, or 1 naming each bad key
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
    status.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG,
                        help="read control_socket from this config (when --socket is not given)")
    status.add_argument("--socket", type=Path, help="the daemon's control socket")
    status.add_argument("--json", action="store_true", help="print JSON")

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)

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

    demo = sub.add_parser("demo", help="watch built-in guests panic: the quick start")
    demo.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    demo.add_argument("--no-qemu", action="store_true", help="mock guests only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.config)
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


def _check_config(path: Path) -> int:
    try:
        config = load(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{path}: OK ({len(config.guest)} guests, {len(config.policy)} policies)")
    return 0


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

    asyncio.run(serve())
    return 0


def _status(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from panicd import control  # noqa: PLC0415
    from panicd.config import DaemonConfig  # noqa: PLC0415

    path = args.socket
    if path is None:
        try:
            path = load(args.config).daemon.control_socket
        except ConfigError:
            path = DaemonConfig().control_socket
    try:
        reply = control.request(path)
    except (OSError, ValueError) as exc:
        print(f"panicd status: cannot ask the daemon at {path}: {exc}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"panicd status: {reply.get('error')}", file=sys.stderr)
        return 1
    reply.pop("ok")
    print(json.dumps(reply, indent=2, default=str) if args.json else control.format_table(reply))
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
    from panicd.triage.report import triage  # noqa: PLC0415

    try:
        report = triage(args.dump, lines=max(0, args.lines))
    except (TriageError, OSError) as exc:
        print(f"panicd triage: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
        return 0
    print(f"kernel:  {report.kernel_release}")
    print(f"panic:   {report.panic_line or '(no panic line in the log)'}")
    if report.first_problem:
        print(f"first:   {report.first_problem}")
    if report.call_trace:
        print("trace:\n  " + "\n  ".join(report.call_trace))
    print(f"last {len(report.last_lines)} of {report.records} log lines:")
    print("\n".join(report.last_lines))
    return 0
