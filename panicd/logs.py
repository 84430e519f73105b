"""structlog set-up: events, not prose, with the guest bound to every line.

On a terminal the output is readable columns; anywhere else (a pipe, a file, journald's
stdout stream) it is one JSON object per line. Per-guest context is bound with
`structlog.contextvars.bind_contextvars(guest=...)` at the top of each guest's task, and
asyncio copies it into every task that guest starts.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

LogFormat = Literal["auto", "console", "json"]


def configure(level: str = "info", fmt: LogFormat = "auto") -> None:
    renderer: structlog.typing.Processor
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
