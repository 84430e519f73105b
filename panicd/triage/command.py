"""`panicd triage`: a dump's or a console log's report, for an operator or the daemon's child.

The daemon runs it as `python -m panicd triage --json --memory-limit N` (run.py): the dump or
console log is guest-written, so it is read in a process of its own. Everything printed as
text was written by the guest's kernel, so it is escaped (`printable`).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

from panicd.text import printable
from panicd.triage import TriageError
from panicd.triage import report as reports


def run(args: argparse.Namespace) -> int:
    """`panicd triage DUMP` or `panicd triage --log FILE|-`: the report, as text or JSON."""

    if (args.dump is None) == (args.log is None):
        print("panicd triage: give a DUMP or --log FILE (- for standard input), not both",
              file=sys.stderr)
        return 2
    if args.end_offset is not None and args.log in (None, "-"):
        print("panicd triage: --end-offset goes with --log FILE (a file, not a dump or -)",
              file=sys.stderr)
        return 2
    if args.memory_limit is not None:
        resource.setrlimit(resource.RLIMIT_DATA, (args.memory_limit, args.memory_limit))
    lines = max(0, args.lines)
    try:
        if args.log == "-":
            report = reports.from_console(reports.read_console_stream(sys.stdin.buffer), lines=lines)
        elif args.log is not None:
            report = reports.from_console(reports.read_console_log(Path(args.log), args.end_offset),
                                          lines=lines)
        else:
            report = reports.triage(args.dump, lines=lines)
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
