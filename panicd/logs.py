"""structlog set-up: events, not prose, with the guest bound to every line.

Where the lines go:
- `journal` (the default under systemd, when stderr is the $JOURNAL_STREAM journald gave us):
  each event is a native journal entry, queued for the journal writer thread (journal.py) so
  that a stalled journald never blocks the caller: MESSAGE, EVENT=<event name>, PRIORITY from the level,
  GUEST_NAME, QMP_SOCKET and every other key as an upper-case field, so
  `journalctl -u panicd EVENT=dump.completed` or `GUEST_NAME=web-01` just work;
- `console` (the default on a terminal): readable columns;
- `json` (the default anywhere else): one JSON object per line.

Per-guest context is bound with `structlog.contextvars.bind_contextvars(guest=...)` at the top
of each guest's task, and asyncio copies it into every task that guest starts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog

from panicd import journal
from panicd.text import printable

LogFormat = Literal["auto", "console", "json", "journal"]

_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
_RENAMED = {"guest": "GUEST_NAME", "socket": "QMP_SOCKET", "event": "EVENT"}
_NOT_A_FIELD = re.compile(r"[^A-Z0-9_]")


def journal_fields(event_dict: MutableMapping[str, Any]) -> dict[str, str]:
    """An event as journal fields (uppercase names of [A-Z0-9_], not starting with `_`)."""
    level = str(event_dict.pop("level", "info"))
    event_dict.pop("timestamp", None)  # the journal stamps entries itself
    event = str(event_dict.get("event", ""))
    detail = " ".join(f"{k}={v}" for k, v in event_dict.items() if k != "event")
    fields = {"MESSAGE": f"{event} {detail}".strip(), "PRIORITY": str(_PRIORITY.get(level, 6)),
              "SYSLOG_IDENTIFIER": "panicd"}
    for key, value in event_dict.items():
        name = _RENAMED.get(key) or _NOT_A_FIELD.sub("_", key.upper()).lstrip("_")
        if not name or name in ("MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "MESSAGE_ID"):
            name = f"PANICD_{name}"
        fields[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return fields


def _to_journal(_logger: object, _name: str, event_dict: MutableMapping[str, Any]) -> str:
    # Queued, never sent from here: a stalled journald must not stall the caller (journal.py).
    fields = journal_fields(event_dict)
    message = fields.pop("MESSAGE")
    journal.writer().submit("log", message, fields)
    raise structlog.DropEvent


def _escaping(renderer: structlog.typing.Processor) -> structlog.typing.Processor:
    """A console renderer that escapes control characters in every string value first: a
    guest's name or a QMP reply must not send escape sequences to the operator's terminal
    (JSON and journal output keep values exact; they are escaped by their own formats)."""

    def render(logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> Any:
        for key, value in event_dict.items():
            if isinstance(value, str) and key != "exception":  # tracebacks keep their lines
                event_dict[key] = printable(value)
        return renderer(logger, name, event_dict)

    return render


def stderr_is_journal() -> bool:
    """True when stderr is the journald stream systemd connected ($JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = stream.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(device) and st.st_ino == int(inode)


def resolve(fmt: LogFormat) -> LogFormat:
    if fmt != "auto":
        return fmt
    if stderr_is_journal():
        return "journal"
    return "console" if sys.stderr.isatty() else "json"


def configure(level: str = "info", fmt: LogFormat = "auto") -> None:
    chosen = resolve(fmt)
    renderer: structlog.typing.Processor
    if chosen == "journal":
        renderer = _to_journal
    elif chosen == "console":
        renderer = _escaping(structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
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
