"""How well and how fast panicd titles crashes, scored on syzkaller's Linux crash reports.

    .venv/bin/python benchmarks/crash_titles.py [--misses] [--reports DIR]

Runs `title_of_log` on every log in ../shared/syzkaller-linux-reports/ (the scoring is
tests/syzkaller_reports.py, shared with tests/test_crash_titles.py) and prints: exact title
matches on the non-corrupted crash reports, matches of bug class and blamed function, false
titles on the logs without a crash, and the mean and worst time per log. `--misses` lists every
log whose title differs, expected against got. Results: benchmarks/results/crash_titles.json.
`--reports DIR` scores another folder of reports in the same format (`DIR/reports/<N>`), e.g. a
held-out sample of syzkaller's reports the rules were not tuned on; its results are not saved.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from panicd.triage.title import title_of_log  # needs the path above
from tests.syzkaller_reports import REPORTS_DIR, load_reports, score

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", action="store_true", help="list every title that differs")
    parser.add_argument("--reports", type=Path, default=REPORTS_DIR,
                        help="a folder of reports in the same format (default: the shared set)")
    args = parser.parse_args(argv)
    if not (args.reports / "reports").is_dir():
        print(f"missing: {args.reports}/reports", file=sys.stderr)
        return 1
    reports = load_reports(args.reports)
    title_of_log(reports[0].log)  # warm the regex cache: time the titling, not the compiling
    result = score(reports, title_of_log)
    print(f"non-corrupted crash reports: {result.scored}")
    print(f"  exact title:               {result.exact} ({100 * result.exact_ratio:.1f}%)")
    print(f"  bug class and function:    {result.class_function} ({100 * result.class_function_ratio:.1f}%)")
    print("    (our crash_type == the report's TYPE, and our blamed frame == its FRAME, else the")
    print("     function after the last ' in ' of its TITLE or an ALT; see tests/syzkaller_reports.py)")
    print(f"corrupted reports (unscored): {result.corrupted_logs}, exact {result.corrupted_exact}")
    print(f"no-crash logs: {result.no_crash_logs}, false titles {result.false_titles}")
    print(f"time per log: mean {result.mean_ms:.3f} ms, max {result.max_ms:.3f} ms")
    if args.misses:
        for miss in result.misses:
            flag = "corrupted " if miss.corrupted else ""
            print(f"{flag}{miss.name}:\n  expected {miss.expected!r}\n  got      {miss.got!r}")
    if args.reports != REPORTS_DIR:
        return 0
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "crash_titles.json").write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
