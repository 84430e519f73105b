"""How `panicd incidents` shows incident records to an operator: a table, or one incident whole.

Reads `records.IncidentRecord` models only (the store validated them); writes text in which
every value from a guest, QEMU or a config file is escaped (`table.cell`). `--json` prints
`record.model_dump(mode="json")` (`as_json`): names exact, in ASCII JSON.

The dump of an incident is `record.dump` once the daemon fills it in; until then (and for
records written before it did) it is read from the `dump` step's result: its `dump` detail
(path, format, bytes, seconds, result) and its `error`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import re
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from pydantic import BaseModel, JsonValue, TypeAdapter

from panicd.records import DumpSummary, IncidentRecord, IncidentState, StepResult
from panicd.signatures import SignatureQueries, SignatureSummary
from panicd.store import IncidentListing, IncidentQueries, StoreError, connect
from panicd.table import cell, human_size, render
from panicd.text import printable

_RECORDS = TypeAdapter(list[IncidentRecord])
_SIGNATURES = TypeAdapter(list[SignatureSummary])
_NON_ASCII = re.compile(r"[^\x00-\x7f]")

#: CRASH: the crash title when the incident has one (a Windows guest's: its bugcheck, `Bug Check
#: 0x7E SYSTEM_THREAD_EXCEPTION_NOT_HANDLED`), else the kernel's panic reason.
COLUMNS = ("ID", "TIME (UTC)", "GUEST", "KIND", "DETECTION", "STEPS", "DUMP", "CRASH")
SIGNATURE_COLUMNS = ("SIGNATURE", "COUNT", "GUESTS", "FIRST SEEN (UTC)", "LAST SEEN (UTC)",
                     "TITLE", "NEWEST DUMP")


def format_table(listed: Sequence[IncidentListing]) -> str:
    """One line per incident, in the order given (the store's: newest first)."""
    rows = []
    for r in listed:
        dump = r.dump if r.dump is not None else dump_from_step(r.dump_step)
        steps = r.steps + (" (open)" if r.state is IncidentState.OPEN else "")
        crash = r.title or (dump.panic_reason if dump is not None else None)
        rows.append((cell(r.id), utc_time(r.seen_at), cell(r.guest), cell(r.kind),
                     cell(r.detection), cell(steps.strip() or "-"), _dump_cell(dump),
                     cell(crash)))
    return "\n".join(render(COLUMNS, rows))


def format_signatures(summaries: Sequence[SignatureSummary]) -> str:
    """One line per crash signature (title), the most recently seen first."""
    rows = [(cell(s.signature), str(s.count), str(s.guests), utc_time(s.first_seen),
             utc_time(s.last_seen), cell(s.title), cell(s.newest_dump or "-"))
            for s in summaries]
    return "\n".join(render(SIGNATURE_COLUMNS, rows))


def signatures_json(summaries: Sequence[SignatureSummary]) -> str:
    return _NON_ASCII.sub(_json_escape, _SIGNATURES.dump_json(list(summaries), indent=2).decode())


def as_json(records: Sequence[IncidentRecord] | IncidentRecord) -> str:
    """The records as `model_dump(mode="json")` gives them, as indented ASCII JSON.

    pydantic's own serializer: 10,000 records in 0.07 s where `json.dumps` of `model_dump`s
    takes 0.36 s. It escapes only what JSON must (controls below U+0020), so every other
    non-ASCII character is escaped here, as `json.dumps` would: a C1 control such as U+009B
    (a one-byte CSI) or a bidi override in a guest's name reaches the terminal as text.
    """
    if isinstance(records, IncidentRecord):
        text = records.model_dump_json(indent=2)
    else:
        text = _RECORDS.dump_json(list(records), indent=2).decode()
    return _NON_ASCII.sub(_json_escape, text)


def _json_escape(match: re.Match[str]) -> str:
    # JSON writes a character above U+FFFF as its UTF-16 surrogate pair.
    encoded = match.group().encode("utf-16-be", "surrogatepass")
    return "".join(f"\\u{int.from_bytes(encoded[i:i + 2]):04x}" for i in range(0, len(encoded), 2))


def format_incident(record: IncidentRecord) -> str:
    """Every field of one incident, then each step with its timing, error, QMP command and reply.

    The fields are walked from the model, so a field added to the record is shown here too.
    """
    pairs = [("time", f"{utc_time(record.seen_at)} ({record.seen_at})")]
    for name, value in record:
        if name in ("id", "seen_at", "steps"):
            continue
        if name == "state":
            pairs.append(("state", f"{cell(record.state.value)} (outcome: {record.outcome})"))
        elif name == "dump":
            pairs += _model_pairs("dump", dump_of(record))
        elif name == "bugcheck":
            # As Windows shows it: `Bug Check 0x7E NAME (0xFFFFFFFFC0000005, 0x..., ...)`.
            pairs.append(("bugcheck", cell(record.bugcheck.describe()) if record.bugcheck else "-"))
        elif name == "crash" and record.crash is not None:
            pairs += [(label, utc_time(record.crash.first_seen) if label == "crash first seen"
                       else text) for label, text in _model_pairs("crash", record.crash)]
        elif isinstance(value, BaseModel):
            pairs += _model_pairs(name, value)
        else:
            pairs.append((_label(name), _value(value)))
    width = max(len(label) for label, _ in pairs)
    lines = [f"incident {cell(record.id)}"]
    lines += [f"  {label.ljust(width)}  {text}" for label, text in pairs]
    lines.append(f"steps ({len(record.steps)}):" if record.steps else "steps: none ran")
    for number, step in enumerate(record.steps, 1):
        lines += _step_lines(number, step)
    return "\n".join(lines)


def dump_of(record: IncidentRecord) -> DumpSummary | None:
    """The incident's dump: `record.dump`, else what its (last) `dump` step reported."""
    if record.dump is not None:
        return record.dump
    return dump_from_step(next((s for s in reversed(record.steps) if s.name == "dump"), None))


def dump_from_step(step: StepResult | None) -> DumpSummary | None:
    """A dump summary from what a `dump` step reported (its `dump` detail and error)."""
    return step.dump_summary() if step is not None else None


def utc_time(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _step_word(step: StepResult) -> str:
    if step.skipped:
        return "skipped"
    return "ok" if step.ok else "failed"


def _dump_cell(dump: DumpSummary | None) -> str:
    """`/path (elf, 256.0 MiB, 0.29 s, completed)`, with `: error` when it failed."""
    if dump is None:
        return "-"
    facts = [dump.format, human_size(dump.bytes) if dump.bytes is not None else None,
             f"{dump.seconds:.2f} s" if dump.seconds is not None else None, dump.result]
    text = f"{dump.path or 'no file'} ({', '.join(f for f in facts if f)})"
    if dump.format_fallback:
        text += f"; not the format asked for: {dump.format_fallback}"
    if dump.error:
        text += f": {dump.error}"
    return cell(text)


def _step_lines(number: int, step: StepResult) -> list[str]:
    started = step.started_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    lines = [f"  {number}. {cell(step.name)}: {_step_word(step)}, started {started}, "
             f"took {step.seconds:.3f} s"]
    facts: list[tuple[str, str]] = []
    if step.error is not None:
        facts.append(("error", cell(step.error)))
    if step.command is not None:
        facts.append(("qmp command", _value(step.command)))
    if step.reply is not None:
        facts.append(("qmp reply", _value(step.reply)))
    if step.skipped is not None:
        facts.append(("skipped", cell(step.skipped)))
    if step.guest_gone:
        facts.append(("guest gone", "yes"))
    for detail in (step.dump, step.power, step.hook):
        if detail is not None:
            facts += [(_label(name), _value(value)) for name, value in detail
                      if value is not None and value != {}]
    # A step stored by an earlier panicd, whose detail fitted none of the models: shown as is.
    facts += [(_label(key), _value(value)) for key, value in (step.detail or {}).items()]
    if facts:
        width = max(len(label) for label, _ in facts)
        lines += [f"       {label.ljust(width)}  {text}" for label, text in facts]
    return lines


def _model_pairs(prefix: str, model: BaseModel | None) -> list[tuple[str, str]]:
    if model is None:
        return [(prefix, "-")]
    return [(f"{prefix} {_label(name)}", _value(value)) for name, value in model]


def _label(name: str) -> str:
    return cell(name.replace("_", " "))


def _value(value: JsonValue | object) -> str:
    """A field's value on one line: JSON for structures (the event, a QMP reply), escaped."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dt.datetime):
        return utc_time(value.timestamp())
    if isinstance(value, dict | list):
        # ASCII JSON escapes every control (and every non-ASCII) character itself, so it is
        # safe on a terminal as it is, and stays JSON an operator can paste.
        return json.dumps(value, sort_keys=True, default=str)
    return cell(value)


# -- the `panicd incidents` command -----------------------------------------------------------

@contextlib.contextmanager
def read_only_store(path: Path) -> Iterator[IncidentQueries]:
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


def command(args: argparse.Namespace, queries: IncidentQueries, path: Path) -> int:
    """`panicd incidents [show ID | --by-signature]` on an open store; the exit status."""
    if args.incidents_command == "show":
        record = queries.incident(args.id)
        if record is None:
            print(printable(f"panicd incidents: no incident '{args.id}' in {path}"),
                  file=sys.stderr)
            return 1
        # JSON keeps names exact (json.dumps escapes control characters); the text escapes them.
        print(as_json(record) if args.json
              else format_incident(record))
        return 0
    if args.by_signature:
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
        print(signatures_json(summaries) if args.json
              else format_signatures(summaries))
        return 0
    if args.json:
        print(as_json(queries.incidents(guest=args.guest, since=args.since,
                                                        kind=args.kind)))
    else:
        print(format_table(queries.listing(guest=args.guest, since=args.since,
                                                          kind=args.kind)))
    return 0
