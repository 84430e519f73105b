"""`panicd incidents` as an operator meets it: the store's history, read without the daemon.

A store is written the daemon's way (`IncidentStore`: create, save, close) with incidents of
three guests, one of them named with a newline and an ANSI colour sequence (QEMU accepts both
in `-name`); then `panicd incidents` is run as the operator would. The table must be newest
first, one line per incident, every name escaped; `--json` the records exact; `show` one
incident whole. The store file must come out of every run byte for byte as it went in: the
CLI opens it read-only, as it must while the daemon runs or is stopped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from panicd.cli import main
from panicd.events import Detection, IncidentKind
from panicd.incidents_view import format_incident
from panicd.records import (
    DumpStepDetail,
    DumpSummary,
    GuestRecord,
    IncidentRecord,
    IncidentState,
    StepResult,
)
from panicd.store import FILE_NAME, MIGRATIONS, IncidentStore
from tests.daemon_process import PanicdProcess, daemon_section

Start = Callable[..., PanicdProcess]

HOSTILE = "evil\n\x1b[31mred"
ESCAPED = "evil\\n\\x1b[31mred"
DAY = 86400.0
#: 2026-11-20T10:00:00Z
BASE = dt.datetime(2026, 11, 20, 10, tzinfo=dt.UTC).timestamp()


def at(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def guest(name: str) -> GuestRecord:
    return GuestRecord(name=name, socket=f"/run/qemu/{name}.qmp", uuid=None,
                       qemu_version="7.2.0", qemu_pid=4242)


def history() -> list[IncidentRecord]:
    """Oldest first: a plain panic dumped and restarted, a crash-loaded one of a hostile guest
    whose restart QEMU refused, a failed dump, and an incident still open."""
    return [
        IncidentRecord(
            id="20261118-100000-aaaaaa", guest=guest("web1"), instance="/run/qemu/web1.qmp|1|2",
            kind=IncidentKind.PANIC, detection=Detection.EVENT, action="pause",
            seen_at=BASE - 2 * DAY, state=IncidentState.DONE,
            event={"event": "GUEST_PANICKED", "data": {"action": "pause"}},
            steps=[
                StepResult(name="dump", ok=True, started_at=at(BASE - 2 * DAY + 0.01),
                           seconds=0.52,
                           dump=DumpStepDetail(path="/var/lib/panicd/dumps/web1/1.elf",
                                               format="elf", bytes=268435456, seconds=0.29)),
                StepResult(name="restart", ok=True, started_at=at(BASE - 2 * DAY + 0.6),
                           seconds=0.01),
            ],
        ),
        IncidentRecord(
            id="20261119-100000-bbbbbb", guest=guest(HOSTILE), kind=IncidentKind.CRASH_LOADED,
            detection=Detection.ON_CONNECT, seen_at=BASE - DAY, state=IncidentState.DONE,
            steps=[
                StepResult(name="restart", ok=False, started_at=at(BASE - DAY + 0.01),
                           seconds=0.002, error="QEMU refused system_reset",
                           command={"execute": "system_reset"},
                           reply={"error": {"class": "GenericError",
                                            "desc": "no \x1b[2J reset"}}),
            ],
        ),
        IncidentRecord(
            id="20261120-100000-cccccc", guest=guest("db2"), kind=IncidentKind.PANIC,
            detection=Detection.EVENT, action="pause", seen_at=BASE, state=IncidentState.DONE,
            steps=[
                StepResult(name="dump", ok=False, started_at=at(BASE + 0.01), seconds=0.004,
                           error="skipped: not enough space under /var/lib/panicd/dumps"),
            ],
            dump=None,
        ),
        IncidentRecord(
            id="20261120-110000-dddddd", guest=guest("web1"), kind=IncidentKind.PANIC,
            detection=Detection.RESUMED, action="pause", seen_at=BASE + 3600,
            dump=DumpSummary(path="/var/lib/panicd/dumps/web1/2.elf", format="elf",
                             bytes=1024, seconds=0.3, result="completed",
                             panic_reason="sysrq triggered crash"),
            steps=[StepResult(name="dump", ok=True, started_at=at(BASE + 3600.01),
                              seconds=0.31,
                              dump=DumpStepDetail(path="/var/lib/panicd/dumps/web1/2.elf"))],
        ),
    ]


async def write_store(state_dir: Path, records: list[IncidentRecord]) -> Path:
    """The daemon's way: created durable, then saved once its steps ran; closed as on stop."""
    store = IncidentStore(state_dir)
    await store.open()
    for record in records:
        steps, record.steps = record.steps, []
        state, record.state = record.state, IncidentState.OPEN
        await store.create(record)
        record.steps, record.state = steps, state
        await store.save(record)
    await store.close()
    return state_dir / FILE_NAME


@pytest.fixture
async def store(tmp_path: Path) -> Path:
    return await write_store(tmp_path / "state", history())


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def rows(out: str) -> list[list[str]]:
    """Each line of the table as its cells (cells are split on two or more spaces)."""
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "TIME", "(UTC)", "GUEST", "KIND", "DETECTION", "STEPS",
                                "DUMP", "CRASH"]
    starts = [lines[0].index(name) for name in ("ID", "TIME", "GUEST", "KIND", "DETECTION",
                                                   "STEPS", "DUMP", "CRASH")]
    return [[line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
            for line in lines[1:]]


def fields_of(show: str) -> dict[str, str]:
    """The incident's own fields in `show`'s output (indented two spaces, before the steps)."""
    lines = show.splitlines()
    own = lines[1:lines.index(next(line for line in lines if line.startswith("steps")))]
    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in own)


def test_the_table_lists_every_incident_newest_first_with_hostile_names_escaped(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "incidents", "--state-dir", str(store.parent))
    assert (code, err) == (0, "")
    assert "\x1b" not in out
    assert rows(out) == [
        ["20261120-110000-dddddd", "2026-11-20T11:00:00Z", "web1", "panic", "resumed",
         "dump:ok (open)", "/var/lib/panicd/dumps/web1/2.elf (elf, 1.0 KiB, 0.30 s, completed)",
         "sysrq triggered crash"],
        ["20261120-100000-cccccc", "2026-11-20T10:00:00Z", "db2", "panic", "event",
         "dump:failed",
         "no file (failed): skipped: not enough space under /var/lib/panicd/dumps", "-"],
        ["20261119-100000-bbbbbb", "2026-11-19T10:00:00Z", ESCAPED, "crash-loaded",
         "on-connect", "restart:failed", "-", "-"],
        ["20261118-100000-aaaaaa", "2026-11-18T10:00:00Z", "web1", "panic", "event",
         "dump:ok restart:ok",
         "/var/lib/panicd/dumps/web1/1.elf (elf, 256.0 MiB, 0.29 s, completed)", "-"],
    ]


@pytest.mark.parametrize(
    ("args", "ids"),
    [
        (["--guest", "web1"], ["20261120-110000-dddddd", "20261118-100000-aaaaaa"]),
        (["--guest", HOSTILE], ["20261119-100000-bbbbbb"]),
        (["--since", "2026-11-20"], ["20261120-110000-dddddd", "20261120-100000-cccccc"]),
        (["--since", "2026-11-20T11:30:00+01:00"], ["20261120-110000-dddddd"]),
        (["--kind", "crash-loaded"], ["20261119-100000-bbbbbb"]),
        (["--kind", "panic", "--guest", "web1", "--since", "2026-11-19"],
         ["20261120-110000-dddddd"]),
        (["--guest", "nobody"], []),
    ],
    ids=["guest", "hostile-guest", "since-date", "since-time-with-zone", "kind", "all-three",
         "none"],
)
def test_filters_select_incidents_in_table_and_json(
    store: Path, capsys: pytest.CaptureFixture[str], args: list[str], ids: list[str]
) -> None:
    code, out, _ = run(capsys, "incidents", "--state-dir", str(store.parent), *args)
    assert code == 0
    assert [row[0] for row in rows(out)] == ids
    code, out, _ = run(capsys, "incidents", "--state-dir", str(store.parent), "--json", *args)
    assert code == 0
    assert [record["id"] for record in json.loads(out)] == ids


def test_json_gives_the_full_records_with_names_exact(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "incidents", "--json", "--state-dir", str(store.parent))
    assert (code, err) == (0, "")
    expected = [r.model_dump(mode="json") for r in reversed(history())]
    assert json.loads(out) == expected
    assert json.loads(out)[2]["guest"]["name"] == HOSTILE


def test_show_prints_one_incident_whole_with_each_steps_command_and_reply(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "incidents", "show", "20261119-100000-bbbbbb",
                         "--state-dir", str(store.parent))
    assert (code, err) == (0, "")
    assert "\x1b" not in out
    lines = out.splitlines()
    assert lines[0] == "incident 20261119-100000-bbbbbb"
    fields = fields_of(out)
    assert next(iter(fields)) == "time"
    assert fields["guest name"] == ESCAPED
    assert fields["guest socket"] == "/run/qemu/evil\\n\\x1b[31mred.qmp"
    assert fields["time"] == f"2026-11-19T10:00:00Z ({BASE - DAY})"
    assert fields["kind"] == "crash-loaded"
    assert fields["detection"] == "on-connect"
    assert fields["state"] == "done (outcome: failed)"
    # Every field of the record is shown (nested ones by their sub-fields).
    for name in IncidentRecord.model_fields.keys() - {"id", "steps", "seen_at", "guest"}:
        assert any(label.startswith(name.replace("_", " ")) for label in fields), name
    step = lines.index("steps (1):")
    assert lines[step + 1] == ("  1. restart: failed, started 2026-11-19T10:00:00.010000Z, "
                               "took 0.002 s")
    assert lines[step + 2:] == [
        "       error        QEMU refused system_reset",
        '       qmp command  {"execute": "system_reset"}',
        '       qmp reply    {"error": {"class": "GenericError", "desc": "no \\u001b[2J reset"}}',
    ]


def test_show_of_a_dump_step_lists_its_details_and_json_is_the_record(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "incidents", "--state-dir", str(store.parent),
                       "show", "20261118-100000-aaaaaa")
    assert code == 0
    assert fields_of(out)["dump path"] == "/var/lib/panicd/dumps/web1/1.elf"
    assert fields_of(out)["dump bytes"] == "268435456"
    assert "  1. dump: ok, started 2026-11-18T10:00:00.010000Z, took 0.520 s" in out
    assert "       bytes    268435456" in out.splitlines()
    assert "  2. restart: ok, started 2026-11-18T10:00:00.600000Z, took 0.010 s" in out
    code, out, _ = run(capsys, "incidents", "show", "--json", "20261118-100000-aaaaaa",
                       "--state-dir", str(store.parent))
    assert code == 0
    assert json.loads(out) == history()[0].model_dump(mode="json")


def test_show_of_an_unknown_id_fails_naming_it(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "incidents", "show", "nope\x1b", "--state-dir", str(store.parent))
    assert (code, out) == (1, "")
    assert err == f"panicd incidents: no incident 'nope\\x1b' in {store}\n"


def test_the_store_is_found_through_the_configs_state_dir_even_when_invalid_elsewhere(
    tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # daemon_section puts state_dir at <tmp>/state, where the fixture wrote the store.
    config = tmp_path / "panicd.toml"
    config.write_text(daemon_section(tmp_path) + '[[policy]]\non_panic = ["explode"]\n')
    code, out, err = run(capsys, "incidents", "-c", str(config), "--kind", "crash-loaded")
    assert code == 0
    assert [row[0] for row in rows(out)] == ["20261119-100000-bbbbbb"]
    assert err.splitlines()[-1] == (
        f"panicd incidents: the daemon would refuse {config} on reload or restart (see panicd "
        f"check-config -c {config}); reading the store under {tmp_path}/state, as the file says")


def test_a_missing_store_is_named_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "incidents", "--state-dir", str(tmp_path / "none"))
    assert (code, out) == (1, "")
    assert err.startswith(f"panicd incidents: no incident store at {tmp_path}/none/{FILE_NAME} ")
    assert not (tmp_path / "none").exists()  # looking created nothing


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"this is not a database, it is a text file\n" * 200, "file is not a database"),
        (b"", "no such table: incidents"),
        (b"SQLite format 3\x00" + b"\xff" * 84, "file is not a database"),
    ],
    ids=["garbage", "empty", "header-only"],
)
def test_a_store_that_cannot_be_read_says_why_and_is_left_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, why: str
) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(content)
    code, out, err = run(capsys, "incidents", "--state-dir", str(tmp_path))
    assert (code, out) == (1, "")
    assert err.startswith("panicd incidents: cannot ")
    assert f"incident store {path}: " in err
    assert why in err
    assert path.read_bytes() == content


@pytest.mark.parametrize(
    "args",
    [[], ["--json"], ["show", "20261118-100000-aaaaaa"], ["show", "nope"], ["--guest", "db2"]],
    ids=["table", "json", "show", "show-unknown", "filtered"],
)
def test_the_store_file_is_never_modified(
    store: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    before = (store.read_bytes(), store.stat().st_mtime_ns)
    main(["incidents", "--state-dir", str(store.parent), *args])
    capsys.readouterr()
    assert (store.read_bytes(), store.stat().st_mtime_ns) == before


async def test_it_reads_while_the_daemons_store_is_open_and_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The daemon keeps its connection open (WAL): a new incident committed by it is seen.
    daemon = IncidentStore(tmp_path)
    await daemon.open()
    try:
        record = history()[0].model_copy(update={"steps": [], "state": IncidentState.OPEN})
        await daemon.create(record)
        code, out, _ = run(capsys, "incidents", "--state-dir", str(tmp_path))
        assert code == 0
        assert [row[0] for row in rows(out)] == [record.id]
        assert rows(out)[0][5] == "(open)"
    finally:
        await daemon.close()


def test_a_bad_since_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["incidents", "--state-dir", str(tmp_path), "--since", "last tuesday"])
    assert exit_.value.code == 2
    assert "not a date (2026-11-01)" in capsys.readouterr().err


async def test_status_shows_each_guests_last_incident_from_the_store(
    short_tmp: Path, panicd: Start, capsys: pytest.CaptureFixture[str]
) -> None:
    # A history written by an earlier panicd; the guests' QEMUs are not running now.
    await write_store(short_tmp / "state", history())
    daemon = panicd(daemon_section(short_tmp)
                    + f'[[guest]]\nsocket = "{short_tmp}/web1.qmp"\nname = "web1"\n'
                    + f'[[guest]]\nsocket = "{short_tmp}/db2.qmp"\nname = "db2"\n'
                    + f'[[guest]]\nsocket = "{short_tmp}/new.qmp"\nname = "new"\n')
    await daemon.wait_event("control.listening")
    code = await asyncio.to_thread(main, ["status", "-c", str(daemon.config_path)])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].endswith("RESTARTS  LAST INCIDENT")
    column = lines[0].index("LAST INCIDENT")
    last = {line.split()[0]: line[column:] for line in lines[1:4]}
    assert last == {"web1": "20261120-110000-dddddd open", "db2": "20261120-100000-cccccc failed",
                    "new": "-"}
    assert await daemon.stop() == 0


async def test_json_is_ascii_and_what_json_dumps_of_model_dump_gives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A one-byte CSI (U+009B), a right-to-left override and a character beyond the BMP:
    # JSON need not escape them, a terminal must not receive them raw.
    name = "c1\u009b31m\u202ertl\U0001f600"
    record = history()[0].model_copy(update={"guest": guest(name)})
    await write_store(tmp_path, [record])
    code, out, _ = run(capsys, "incidents", "--json", "--state-dir", str(tmp_path))
    assert code == 0
    assert out.isascii()
    assert out == json.dumps([record.model_dump(mode="json")], indent=2) + "\n"
    code, out, _ = run(capsys, "incidents", "show", record.id, "--json", "--state-dir",
                       str(tmp_path))
    assert out == json.dumps(record.model_dump(mode="json"), indent=2) + "\n"


async def test_by_signature_on_a_store_an_older_panicd_still_runs_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    path = tmp_path / FILE_NAME
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + "PRAGMA user_version = 1;")  # a store of schema 1
    db.close()
    assert main(["incidents", "--state-dir", str(tmp_path), "--by-signature"]) == 1
    assert "has no crash signatures yet (schema 1): restart panicd" in capsys.readouterr().err
    assert main(["incidents", "--state-dir", str(tmp_path), "--by-signature", "--kind", "panic"]) == 2
    assert "--kind does not go with --by-signature" in capsys.readouterr().err


def test_show_gives_times_as_utc_to_the_second_and_names_the_same_crash() -> None:
    loaded = dt.datetime(2026, 11, 26, 17, 9, 54, 123456, tzinfo=dt.UTC)
    record = IncidentRecord(id="i2", guest=GuestRecord(name="win", socket="/s"),
                            kind=IncidentKind.PANIC, detection=Detection.EVENT, action="run",
                            seen_at=loaded.timestamp() - 1, crash_loaded_at=loaded,
                            same_crash_as="i1")
    shown = format_incident(record).splitlines()
    assert re.search(r"^  crash loaded at +2026-11-26T17:09:54Z$", "\n".join(shown), re.M)
    assert re.search(r"^  same crash as +i1$", "\n".join(shown), re.M)
