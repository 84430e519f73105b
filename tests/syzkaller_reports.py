"""syzkaller's Linux crash reports as a yardstick for panicd's crash titles.

`../shared/syzkaller-linux-reports/` (beside the checkout) holds real kernel console logs, each
with the title syzkaller gives it. This module reads them and scores `title_of_log` on them; the
test (tests/test_crash_titles.py) asserts the issue's thresholds, the benchmark
(benchmarks/crash_titles.py) prints the figures. Both use the same code, so they cannot disagree.

Two figures are scored on the non-corrupted crash reports:

- **exact**: our title equals, whitespace-normalised, the report's `TITLE:` or one of its `ALT:`s.
- **bug class and blamed function** (the issue's "same bug class and blamed function", forgiving
  wording): both halves hold.
  - class: our `CrashTitle.crash_type` equals the report's `TYPE:` (syzkaller's crash.Type, e.g.
    HANG, LOCKDEP, KASAN-READ); no type on either side counts as equal, and is how syzkaller marks
    the kinds it gives no class.
  - function: our blamed frame equals the report's `FRAME:` when it has one, else the function of
    `TITLE:` or of any `ALT:` (the text after its last " in "; of a compound "f / g" or
    "f/usb_submit_urb", the first name). A title that names no function (`kernel panic: ...`,
    `BUG: workqueue lockup`) matches when we blame no frame and our title, less any " in ...",
    equals it.

A report file: header lines (`TITLE:`, `ALT:`, `CORRUPTED: Y`, ...) up to the first empty line,
then the console log, optionally followed by an empty line, `REPORT:` and syzkaller's expected
report text, which is not part of the log.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from panicd.triage.title import CrashTitle

REPORTS_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "syzkaller-linux-reports"
_REPORT_TAIL = re.compile(rb"\n\nREPORT:\n")


@dataclass(frozen=True)
class SyzReport:
    name: str
    log: bytes
    title: str | None            # None: the log holds no crash
    alt_titles: tuple[str, ...]
    corrupted: bool
    crash_type: str | None = None   # `TYPE:`, syzkaller's bug class
    frame: str | None = None        # `FRAME:`, the blamed function where the title does not say

    @property
    def accepted(self) -> tuple[str, ...]:
        return (*((self.title,) if self.title else ()), *self.alt_titles)


def load_reports(folder: Path = REPORTS_DIR) -> list[SyzReport]:
    reports = []
    for path in sorted((folder / "reports").iterdir(), key=lambda p: (len(p.name), p.name)):
        data = path.read_bytes()
        head, _, log = data.partition(b"\n\n")
        headers: dict[str, list[str]] = {}
        for line in head.decode("utf-8", "replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith("#"):
                headers.setdefault(key.strip(), []).append(value.strip())
        log = _REPORT_TAIL.split(log, maxsplit=1)[0]
        reports.append(SyzReport(
            name=path.name, log=log,
            title=headers.get("TITLE", [""])[0] or None,
            alt_titles=tuple(headers.get("ALT", [])),
            corrupted=headers.get("CORRUPTED", [""])[0] == "Y",
            crash_type=headers.get("TYPE", [""])[0] or None,
            frame=headers.get("FRAME", [""])[0] or None,
        ))
    return reports


def normalise_space(title: str) -> str:
    return " ".join(title.split())


def title_function(title: str) -> str | None:
    """The function a title blames: after its last " in ", the first of "f / g" or "f/g"; None: none."""
    _, sep, function = normalise_space(title).rpartition(" in ")
    if not sep:
        return None
    return function.split(" / ")[0].split("/")[0]


def title_class_text(title: str) -> str:
    """A title less its " in <function>": `kernel panic: sysrq triggered crash` stays whole."""
    text = normalise_space(title)
    head, sep, _ = text.rpartition(" in ")
    return head if sep else text


def same_class_and_function(report: SyzReport, got: CrashTitle) -> bool:
    """The issue's "same bug class and blamed function" (see the module docstring)."""
    if got.crash_type != report.crash_type:
        return False
    if report.frame is not None:
        return got.frame == report.frame
    for accepted in report.accepted:
        function = title_function(accepted)
        if function is None:
            if got.frame is None and title_class_text(got.title) == normalise_space(accepted):
                return True
        elif got.frame == function:
            return True
    return False


@dataclass
class Miss:
    name: str
    expected: str | None
    got: str | None
    corrupted: bool


@dataclass
class Score:
    scored: int = 0              # non-corrupted titled reports
    exact: int = 0
    class_function: int = 0
    no_crash_logs: int = 0
    false_titles: int = 0
    corrupted_logs: int = 0
    corrupted_exact: int = 0
    seconds: list[float] = field(default_factory=list)
    misses: list[Miss] = field(default_factory=list)

    @property
    def exact_ratio(self) -> float:
        return self.exact / self.scored if self.scored else 0.0

    @property
    def class_function_ratio(self) -> float:
        return self.class_function / self.scored if self.scored else 0.0

    @property
    def mean_ms(self) -> float:
        return 1000 * sum(self.seconds) / len(self.seconds) if self.seconds else 0.0

    @property
    def max_ms(self) -> float:
        return 1000 * max(self.seconds, default=0.0)

    def as_dict(self) -> dict[str, object]:
        return {
            "scored": self.scored, "exact": self.exact, "exact_ratio": round(self.exact_ratio, 4),
            "class_function": self.class_function,
            "class_function_ratio": round(self.class_function_ratio, 4),
            "no_crash_logs": self.no_crash_logs, "false_titles": self.false_titles,
            "corrupted_logs": self.corrupted_logs, "corrupted_exact": self.corrupted_exact,
            "mean_ms": round(self.mean_ms, 3), "max_ms": round(self.max_ms, 3),
            "misses": len(self.misses),
        }


def score(reports: list[SyzReport], title_of_log: Callable[[bytes], CrashTitle | None]) -> Score:
    result = Score()
    for report in reports:
        started = time.perf_counter()
        crash = title_of_log(report.log)
        result.seconds.append(time.perf_counter() - started)
        got = crash.title if crash else None
        if report.title is None:
            result.no_crash_logs += 1
            if got is not None:
                result.false_titles += 1
                result.misses.append(Miss(report.name, None, got, corrupted=False))
            continue
        accepted = [normalise_space(t) for t in report.accepted]
        exact = got is not None and normalise_space(got) in accepted
        if report.corrupted:
            result.corrupted_logs += 1
            result.corrupted_exact += exact
            if not exact:
                result.misses.append(Miss(report.name, report.title, got, corrupted=True))
            continue
        result.scored += 1
        result.exact += exact
        result.class_function += crash is not None and same_class_and_function(report, crash)
        if not exact:
            result.misses.append(Miss(report.name, report.title, got, corrupted=False))
    return result
