"""The configuration file: pydantic models and TOML loading.

This is the only module that sees raw configuration. Everything else receives a validated
`Config`. The keys below are panicd's public contract; unknown keys are errors, so that a
typo (`on_panics`) is reported instead of silently ignored::

    [daemon]
    dump_dir = "/var/lib/panicd/dumps"
    max_concurrent_dumps = 2
    take_over_panic_action = true

    [[guest]]
    socket = "/run/qemu/web-01.qmp"

    [[policy]]
    match = "web-*"
    on_panic = ["dump", "restart"]
    dump = { format = "kdump-zlib", paging = false, timeout = 600 }

Relative paths are taken relative to the directory of the config file.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from panicd.errors import ConfigError
from panicd.text import printable

#: What a policy may do on a panic, in the order the operator lists them.
StepName = Literal["dump", "pause", "resume", "restart", "poweroff", "exec", "nmi", "wait_panic"]
STEP_NAMES: tuple[str, ...] = StepName.__args__  # type: ignore[attr-defined]

#: Formats of QMP's dump-guest-memory (qapi/dump.json, DumpGuestMemoryFormat).
DumpFormat = Literal["elf", "kdump-zlib", "kdump-lzo", "kdump-snappy", "kdump-raw-zlib",
                     "kdump-raw-lzo", "kdump-raw-snappy", "win-dmp"]

Seconds = Annotated[float, Field(gt=0, le=7 * 24 * 3600)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DumpSettings(_Strict):
    """How `dump` writes the guest's memory."""

    format: DumpFormat = "elf"
    # paging=true makes QEMU walk the guest's page tables, with memory use the guest controls.
    paging: bool = False
    timeout: Seconds = 600.0

    @model_validator(mode="after")
    def _paging_only_with_elf(self) -> DumpSettings:
        # QEMU refuses paging (and begin/length) for every format but elf.
        if self.paging and self.format != "elf":
            raise ValueError(f"paging = true works only with format = \"elf\", not {self.format!r}")
        return self


class ExecSettings(_Strict):
    """The hook run by the `exec` step."""

    command: list[str] = Field(min_length=1)
    timeout: Seconds = 30.0

    @field_validator("command")
    @classmethod
    def _program_named(cls, command: list[str]) -> list[str]:
        if not command[0]:
            raise ValueError("the first element (the program) must not be empty")
        return command


def _console_log_template(template: str) -> str:
    if not template.startswith("/"):
        raise ValueError(f"{template!r}: must be an absolute path")
    try:
        template.format(name="x")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{template!r}: only {{name}} may be filled in ({exc})") from None
    return template


#: A console log file name, absolute; `{name}` is replaced by the guest's name.
ConsoleLog = Annotated[str, Field(min_length=2, max_length=4096), AfterValidator(_console_log_template)]


def console_log_path(template: str, guest_name: str) -> Path | None:
    """The console log file of guest `guest_name`; None when the name cannot be part of a
    file name (a `/`, or `..`: a guest's name comes from QEMU, which the guest's owner runs)."""
    if "{name}" in template and ("/" in guest_name or "\0" in guest_name
                                 or guest_name in (".", "..")):
        return None
    return Path(template.format(name=guest_name))


class WaitPanicSettings(_Strict):
    """How long `wait_panic` waits for the GUEST_PANICKED an `nmi` should cause."""

    timeout: Seconds = 60.0


class RestartLimit(_Strict):
    """Crash-loop guard: at most `max` restarts by panicd within `within` seconds."""

    max: int = Field(ge=1, le=1000)
    within: Seconds


class Policy(_Strict):
    """What to do when a guest whose name matches `match` panics."""

    match: str = "*"
    on_panic: list[StepName] = Field(default_factory=lambda: list[StepName](["dump", "pause"]))
    on_crash_loaded: list[StepName] = Field(default_factory=list)
    #: The guest's watchdog fired (a hung guest): dump it, then restart it, by default.
    on_watchdog: list[StepName] = Field(
        default_factory=lambda: list[StepName](["dump", "restart"]))
    #: What QEMU does on a panic, set by panicd on connect: pause (so that it can be dumped),
    #: or none: the guest keeps running (a Windows guest writes its own MEMORY.DMP and reboots;
    #: libvirt's "preserve-running"). Takes effect with [daemon] take_over_panic_action.
    panic_action: Literal["pause", "none"] = "pause"
    dump: DumpSettings = DumpSettings()
    wait_panic: WaitPanicSettings = WaitPanicSettings()
    exec: ExecSettings | None = None
    #: Past the budget the guest is left paused instead of restarted, with a crash-loop alert.
    restart: RestartLimit | None = None
    #: The guest's serial console file (`{name}`: the guest's name); read for the crash title
    #: when the dump is missing, failed, or has no VMCOREINFO. A [[guest]]'s own wins.
    console_log: ConsoleLog | None = None

    @model_validator(mode="after")
    def _exec_needs_command(self) -> Policy:
        if self.exec is None and "exec" in (*self.on_panic, *self.on_crash_loaded, *self.on_watchdog):
            raise ValueError('the step "exec" needs exec = { command = [...] } in the same policy')
        return self

    def matches(self, guest_name: str) -> bool:
        return fnmatch.fnmatchcase(guest_name, self.match)


#: Used for a guest no [[policy]] matches.
DEFAULT_POLICY = Policy()


class GuestConfig(_Strict):
    """One guest, reached through its QMP unix socket."""

    socket: Path
    name: str | None = Field(default=None, min_length=1, max_length=256)
    #: This guest's serial console file (QEMU's `-serial file:PATH`); see Policy.console_log.
    console_log: ConsoleLog | None = None

    @field_validator("socket")
    @classmethod
    def _socket_path(cls, socket: Path) -> Path:
        if not str(socket):
            raise ValueError("must not be empty")
        return socket


class Retention(_Strict):
    """Which completed dumps to keep; after each new dump the oldest beyond a limit go."""

    max_per_guest: int | None = Field(default=None, ge=1)
    max_total_bytes: int | None = Field(default=None, ge=0)
    max_age_days: float | None = Field(default=None, gt=0)


class DaemonConfig(_Strict):
    """Host-wide settings."""

    dump_dir: Path = Path("/var/lib/panicd/dumps")
    state_dir: Path = Path("/var/lib/panicd/state")
    max_concurrent_dumps: int = Field(default=2, ge=1, le=64)
    #: A dump is skipped (and alerted) unless the dump directory keeps this much free after it.
    min_free_bytes: int = Field(default=1 << 30, ge=0)
    retention: Retention = Retention()
    #: Incidents older than this whose dumps are gone (retention, or removed by hand) are
    #: dropped from the incident store, so it stays small on a host that runs for years.
    history_days: float = Field(default=90, gt=0)
    #: Per guest, at most this many crash titles never seen on this host are alerted as new
    #: (NEW_CRASH_SIGNATURE) in an hour; the rest are recorded and counted, not alerted, so a
    #: guest that makes up titles cannot flood the journal.
    new_signature_alerts_per_hour: int = Field(default=5, ge=0, le=10_000)
    #: "host:port" for Prometheus metrics (GET /metrics); None: not served.
    metrics_listen: str | None = Field(default=None, pattern=r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):[0-9]{1,5}$")
    #: At most this many guests get their own `panicd_guest_state` series (the first by name);
    #: the rest are counted in `panicd_guests_unlabelled`, so a fleet host's series stay bounded.
    metrics_max_guests: int = Field(default=1000, ge=0, le=1_000_000)
    take_over_panic_action: bool = True
    connect_timeout: Seconds = 5.0
    command_timeout: Seconds = 30.0
    reconnect_max_seconds: Seconds = 30.0
    #: Where `panicd status` reaches the daemon; mode 0600, 0660 with control_group.
    control_socket: Path = Path("/run/panicd/control.sock")
    control_group: str | None = None
    #: Besides root, the uids (SO_PEERCRED) allowed to act on guests through the control socket
    #: (`panicd guest NAME ACTION`); anyone who can open the socket may read `panicd status`.
    control_allowed_uids: list[Annotated[int, Field(ge=0, lt=2**32)]] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: auto: the journal under systemd (JOURNAL_STREAM), console on a terminal, else JSON.
    log_format: Literal["auto", "console", "json", "journal"] = "auto"


class Discovery(_Strict):
    """Guests found without listing them."""

    #: Socket path patterns ("/run/qemu/*.qmp"): the directory literal, the name a pattern.
    watch: list[str] = Field(default_factory=list)

    #: A unix socket QEMUs connect to (-chardev socket,path=...,reconnect=5 -mon ...).
    listen: Path | None = None
    #: Peers (by SO_PEERCRED uid) allowed on `listen`; others are refused and logged.
    allowed_uids: list[int] = Field(default_factory=lambda: [0])

    @field_validator("watch")
    @classmethod
    def _absolute(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not pattern.startswith("/"):
                raise ValueError(f"{pattern!r}: patterns must be absolute paths")
            if any(c in Path(pattern).parent.as_posix() for c in "*?["):
                raise ValueError(f"{pattern!r}: only the file name may hold wildcards")
        return patterns


class Config(_Strict):
    """The whole file."""

    daemon: DaemonConfig = DaemonConfig()
    discovery: Discovery = Discovery()
    guest: list[GuestConfig] = Field(default_factory=list)
    policy: list[Policy] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_guests(self) -> Config:
        seen_sockets: set[Path] = set()
        seen_names: set[str] = set()
        for i, guest in enumerate(self.guest):
            if guest.socket in seen_sockets:
                raise ValueError(f"guest[{i}].socket: {guest.socket} is listed twice")
            seen_sockets.add(guest.socket)
            if guest.name is not None:
                if guest.name in seen_names:
                    raise ValueError(f"guest[{i}].name: {guest.name!r} is listed twice")
                seen_names.add(guest.name)
        return self

    def policy_for(self, guest_name: str) -> Policy:
        """The first policy whose `match` fits the guest's name; the default when none does."""
        return next((p for p in self.policy if p.matches(guest_name)), DEFAULT_POLICY)


_QUOTED = re.compile(r"'([^']*)'")


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not part.startswith(("function-", "literal[")):
            out += f".{part}" if out else part
    return out or "(top level)"


def _shown(value: object) -> str:
    """A bad value as the operator wrote it, escaped and cut short, for one line of output."""
    text = f"'{printable(value)}'" if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:76] + "...'"


def _describe(item: ErrorDetails) -> str:
    kind, given = item["type"], item.get("input")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "literal_error":
        # pydantic says "Input should be 'dump', 'pause' or 'exec'"; name the bad value too.
        choices = _QUOTED.findall(str(item.get("ctx", {}).get("expected", "")))
        close = difflib.get_close_matches(given, choices, n=1) if isinstance(given, str) else []
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{_shown(given)} is not one of {', '.join(choices)}{hint}"
    if kind == "path_type":
        return f"{_shown(given)} is not a path: write it as a string"
    msg = item["msg"].removeprefix("Value error, ")
    if isinstance(given, str | int | float) and kind != "missing" and _shown(given) not in msg:
        msg += f" (got {_shown(given)})"
    return msg


def _explain(error: ValidationError, within: tuple[str, ...] = ()) -> str:
    """One line per problem: `policy[0].on_panic[1]: 'explode' is not one of dump, ...`.

    Keys and values come from the file, so both are escaped (`_shown`, `printable`): a key
    holding a newline cannot fake a second problem, nor an ESC colour the operator's terminal.
    """
    lines = []
    for item in error.errors():
        loc = (*within, *item["loc"])
        # Config's own checks (a guest listed twice) name their key in the message itself.
        where = "" if not loc and item["type"] == "value_error" else f"{printable(_where(loc))}: "
        lines.append(where + _describe(item))
    return "\n".join(lines)


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """Make relative paths relative to the config file, before validation sees them."""
    daemon = raw.get("daemon")
    if isinstance(daemon, dict):
        for key in ("dump_dir", "state_dir", "control_socket"):
            if isinstance(daemon.get(key), str) and daemon[key]:
                daemon[key] = str(base / daemon[key])
    guests = raw.get("guest")
    if isinstance(guests, list):
        for guest in guests:
            if isinstance(guest, dict) and isinstance(guest.get("socket"), str) and guest["socket"]:
                guest["socket"] = str(base / guest["socket"])


def _read_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{printable(source)}: not valid TOML: {exc}") from exc


def _read_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(printable(f"{path}: cannot read: {exc}")) from exc


def parse(text: str, *, base: Path = Path("/"), source: str = "<config>") -> Config:
    """Validate config text; raise ConfigError naming every offending key."""
    raw = _read_toml(text, source)
    _resolve_paths(raw, base)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{printable(source)}: invalid configuration:\n{_explain(exc)}") from exc


def load(path: Path) -> Config:
    """Read and validate the config file at `path`."""
    return parse(_read_file(path), base=path.resolve().parent, source=str(path))


def load_control_socket(path: Path) -> Path:
    """Only `[daemon] control_socket` of the file at `path` (its default when unset).

    That key is all `panicd status` needs, so a file that is invalid elsewhere (a policy
    being edited, say) still tells it where the running daemon listens. Raises ConfigError
    when the file cannot be read, is not TOML, or that key itself is unusable.
    """
    return _load_daemon_path(path, "control_socket")


def load_state_dir(path: Path) -> Path:
    """Only `[daemon] state_dir` of the file at `path` (its default when unset).

    What `panicd incidents` needs to find the incident store, read as leniently as
    `load_control_socket` reads the socket, and raising ConfigError the same way.
    """
    return _load_daemon_path(path, "state_dir")


def _load_daemon_path(path: Path, key: Literal["control_socket", "state_dir"]) -> Path:
    raw = _read_toml(_read_file(path), str(path))
    daemon = raw.get("daemon", {})
    if not isinstance(daemon, dict):
        raise ConfigError(f"{printable(str(path))}: daemon: must be a table ([daemon])")
    only_key = {k: v for k, v in daemon.items() if k == key}
    _resolve_paths({"daemon": only_key}, path.resolve().parent)
    try:
        value: Path = getattr(DaemonConfig.model_validate(only_key), key)
    except ValidationError as exc:
        raise ConfigError(f"{printable(str(path))}: invalid configuration:\n"
                          f"{_explain(exc, within=('daemon',))}") from exc
    return value
