"""What panicd's systemd unit lets it see and write: read from the installed unit files.

The shipped unit (systemd/panicd.service) runs panicd under `ProtectSystem=strict`: the
whole file system is read-only for it except the directories the unit names
(`StateDirectory=panicd ...` -> /var/lib/panicd, `RuntimeDirectory=panicd` -> /run/panicd,
and any `ReadWritePaths=`). A `dump_dir` elsewhere passes every other check and then fails
at the first panic with EROFS. `ProtectHome=` hides /home, /root and /run/user, and
`PrivateTmp=` gives the service a /tmp of its own. `panicd check-config` reads the unit and
its drop-ins to say so before a panic does.

Model: each setting contributes rules (path, access); for a path, the rule on its deepest
ancestor decides, as systemd applies the most specific mount last. Read here:
ProtectSystem=, ProtectHome=, PrivateTmp=, StateDirectory=, RuntimeDirectory=,
CacheDirectory=, LogsDirectory=, ReadWritePaths=, ReadOnlyPaths=, InaccessiblePaths=,
BindPaths=, BindReadOnlyPaths= (with their `-`/`+` prefixes and the common path
specifiers). Not modelled: TemporaryFileSystem=, RootDirectory=/RootImage=, DynamicUser=,
mount propagation, and file permissions (panicd runs as root).

The unit also decides the service's PATH, on which an exec hook's bare command name is looked
up (the hook inherits panicd's environment): systemd's default unless `Environment=PATH=`,
`EnvironmentFile=` or `ExecSearchPath=` sets one. Not modelled: `PassEnvironment=`, and
`DefaultEnvironment=` in system.conf.
"""

from __future__ import annotations

import enum
import glob
import os
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

UNIT_NAME = "panicd.service"

#: systemd's system unit search path (systemd.unit(5)), highest priority first: where an
#: administrator, a package or `make install` puts a unit.
UNIT_DIRS: tuple[Path, ...] = (
    Path("/etc/systemd/system"),
    Path("/run/systemd/system"),
    Path("/usr/local/lib/systemd/system"),
    Path("/usr/lib/systemd/system"),
    Path("/lib/systemd/system"),
)

#: Where the *Directory= settings put their directories (systemd.exec(5)).
_DIRECTORY_ROOTS = {
    "StateDirectory": Path("/var/lib"),
    "RuntimeDirectory": Path("/run"),
    "CacheDirectory": Path("/var/cache"),
    "LogsDirectory": Path("/var/log"),
}

#: The PATH systemd gives a system service that sets none (systemd.exec(5), "Environment
#: Variables in Spawned Processes"): /sbin:/bin are appended by a systemd built for an unmerged
#: /usr, as Debian 12's systemd 252 is.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: Path specifiers of a system unit (systemd.unit(5), "Specifiers").
_SPECIFIERS = {"%t": "/run", "%S": "/var/lib", "%C": "/var/cache", "%L": "/var/log",
               "%E": "/etc", "%T": "/tmp", "%V": "/var/tmp", "%%": "%"}  # noqa: S108 - systemd's


class Access(enum.Enum):
    WRITABLE = "writable"
    READ_ONLY = "read-only"
    HIDDEN = "hidden"
    #: PrivateTmp: writable, but the service's own: the host never sees what is written there.
    PRIVATE = "private"


@dataclass(frozen=True)
class Rule:
    path: Path
    access: Access
    #: The setting that made it, as written: "ProtectSystem=strict".
    origin: str


@dataclass(frozen=True)
class Verdict:
    access: Access
    origin: str


@dataclass(frozen=True)
class ServiceSandbox:
    """The file system as panicd sees it under its unit."""

    #: The unit file, then its drop-ins in the order systemd applies them.
    files: tuple[Path, ...]
    rules: tuple[Rule, ...]
    #: The service's PATH, where a hook's bare command name is looked up.
    path: str = DEFAULT_PATH
    #: Where `path` comes from: "Environment= in FILE", or systemd's default.
    path_origin: str = "systemd's default"

    @property
    def unit(self) -> Path:
        return self.files[0]

    def access(self, path: Path) -> Verdict:
        """How the service may use `path` (the rule of its deepest covered ancestor)."""
        best: Rule | None = None
        for candidate in _spellings(path):
            for rule in self.rules:
                if candidate.is_relative_to(rule.path) and (
                    best is None or len(rule.path.parts) >= len(best.path.parts)
                ):
                    best = rule
        if best is None:
            return Verdict(Access.WRITABLE, "no sandbox setting covers it")
        return Verdict(best.access, best.origin)


def _spellings(path: Path) -> list[Path]:
    """The path as written (normalised) and with symlinks resolved: either may be a mount."""
    plain = Path(os.path.normpath(path))
    try:
        real = path.resolve()
    except (OSError, RuntimeError):
        return [plain]
    return [plain] if real == plain else [plain, real]


def find_installed(dirs: Sequence[Path] | None = None) -> ServiceSandbox | None:
    """The installed panicd.service with its drop-ins (from `UNIT_DIRS`), or None."""
    dirs = UNIT_DIRS if dirs is None else dirs
    unit = next((d / UNIT_NAME for d in dirs if (d / UNIT_NAME).is_file()), None)
    if unit is None:
        return None
    return read(unit, _drop_ins([d / f"{UNIT_NAME}.d" for d in dirs] + [d / "service.d" for d in dirs]))


def read_named(unit: Path) -> ServiceSandbox:
    """The unit at `unit` and the drop-ins beside it (`UNIT.d/*.conf`); raises OSError."""
    return read(unit, _drop_ins([unit.with_name(unit.name + ".d")]))


def _drop_ins(directories: Iterable[Path]) -> list[Path]:
    """`*.conf` files in order of their names; a name in an earlier directory masks later ones."""
    chosen: dict[str, Path] = {}
    for directory in directories:
        if directory.is_dir():
            for conf in directory.glob("*.conf"):
                chosen.setdefault(conf.name, conf)
    return [chosen[name] for name in sorted(chosen)]


def read(unit: Path, drop_ins: Sequence[Path] = ()) -> ServiceSandbox:
    """Parse the [Service] settings of `unit` then each drop-in; raises OSError."""
    settings: dict[str, list[str]] = {}
    #: The settings that give the service its PATH, each value with its file.
    path_settings: dict[str, list[tuple[str, Path]]] = {
        "ExecSearchPath": [], "Environment": [], "EnvironmentFile": []}
    for file in (unit, *drop_ins):
        for key, value in _service_assignments(file.read_text(encoding="utf-8", errors="replace")):
            # An empty assignment resets a list setting; for single-valued ones the last wins.
            if value == "":
                settings[key] = []
            else:
                settings.setdefault(key, []).append(value)
            if key in path_settings:
                path_settings[key] = [*path_settings[key], (value, file)] if value else []
    path, origin = _service_path(path_settings, unit)
    return ServiceSandbox(files=(unit, *drop_ins), rules=tuple(_rules(settings)),
                          path=path, path_origin=origin)


def _service_path(settings: dict[str, list[tuple[str, Path]]], unit: Path) -> tuple[str, str]:
    """The service's PATH and where it comes from. systemd merges, each over the one before:
    its default, ExecSearchPath=, Environment=, then the EnvironmentFile= files."""
    path, origin = DEFAULT_PATH, f"systemd's default: {unit} and its drop-ins set none"
    if settings["ExecSearchPath"]:
        path = ":".join(_expand(value) for value, _ in settings["ExecSearchPath"])
        origin = f"ExecSearchPath= in {settings['ExecSearchPath'][-1][1]}"
    for value, file in settings["Environment"]:
        for word in _words([value]):
            if word.startswith("PATH="):
                path, origin = _expand(word.removeprefix("PATH=")), f"Environment= in {file}"
    unread: list[str] = []
    for value, file in settings["EnvironmentFile"]:
        # Read by systemd as the service starts: a file missing now is skipped (or made by then).
        pattern = _expand(value.removeprefix("-"))
        names = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]  # noqa: PTH207
        for name in names:
            try:
                text = Path(name).read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError):
                unread.append(name)
                continue
            found = _environment_file_path(text)
            if found is not None:
                path, origin = found, f"EnvironmentFile={name} in {file}"
    if unread:
        origin += f"; {', '.join(unread)} could not be read here, and may set another"
    return path, origin


def _environment_file_path(text: str) -> str | None:
    """PATH as an EnvironmentFile= sets it (KEY=VALUE lines, the last wins; quotes around the
    value are taken off, but multi-line values and backslash escapes are not read), or None."""
    path = None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "PATH":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            path = value
    return path


def _service_assignments(text: str) -> list[tuple[str, str]]:
    """`Key=value` pairs of the [Service] section, continuation lines joined."""
    out: list[tuple[str, str]] = []
    section = ""
    pending = ""
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == "Service" and "=" in line:
            key, value = line.split("=", 1)
            out.append((key.strip(), value.strip()))
    return out


def _last(settings: dict[str, list[str]], key: str, default: str) -> str:
    values = settings.get(key)
    return values[-1].lower() if values else default


def _boolean(value: str) -> bool:
    return value in ("1", "yes", "true", "on")


def _rules(settings: dict[str, list[str]]) -> list[Rule]:
    return [*_protection_rules(settings), *_directory_rules(settings)]


def _protection_rules(settings: dict[str, list[str]]) -> Iterable[Rule]:
    """What ProtectSystem=, ProtectHome= and PrivateTmp= take away."""
    protect_system = _last(settings, "ProtectSystem", "no")
    if _boolean(protect_system):
        protect_system = "yes"
    origin = f"ProtectSystem={protect_system}"
    if protect_system == "strict":
        yield Rule(Path("/"), Access.READ_ONLY, origin)
    elif protect_system in ("yes", "full"):
        extra = ("/etc",) if protect_system == "full" else ()
        for top in ("/usr", "/boot", "/efi", *extra):
            yield Rule(Path(top), Access.READ_ONLY, origin)

    protect_home = _last(settings, "ProtectHome", "no")
    if _boolean(protect_home):
        protect_home = "yes"
    if protect_home in ("yes", "tmpfs", "read-only"):
        # tmpfs mounts an empty read-only tmpfs: as good as hidden for panicd's purposes.
        access = Access.READ_ONLY if protect_home == "read-only" else Access.HIDDEN
        for top in ("/home", "/root", "/run/user"):
            yield Rule(Path(top), access, f"ProtectHome={protect_home}")

    if _boolean(_last(settings, "PrivateTmp", "no")):
        for top in ("/tmp", "/var/tmp"):  # noqa: S108 - what PrivateTmp= covers
            yield Rule(Path(top), Access.PRIVATE, "PrivateTmp=yes")


def _directory_rules(settings: dict[str, list[str]]) -> Iterable[Rule]:
    """What the directory and path settings give back (or take away, path by path)."""
    for key, root in _DIRECTORY_ROOTS.items():
        for entry in _words(settings.get(key, [])):
            # "name:symlink" (systemd >= 250) makes both writable: the directory and its alias.
            for name in entry.split(":"):
                if name:
                    yield Rule(root / name, Access.WRITABLE, f"{key}={entry}")

    listed = (("ReadWritePaths", Access.WRITABLE), ("ReadOnlyPaths", Access.READ_ONLY),
              ("InaccessiblePaths", Access.HIDDEN), ("BindPaths", Access.WRITABLE),
              ("BindReadOnlyPaths", Access.READ_ONLY))
    for key, access in listed:
        for entry in _words(settings.get(key, [])):
            path = _listed_path(entry, bind=key.startswith("Bind"))
            if path is not None:
                yield Rule(path, access, f"{key}={entry}")


def _words(values: Sequence[str]) -> list[str]:
    """Space-separated, optionally quoted entries of every assignment, in order."""
    words: list[str] = []
    for value in values:
        try:
            words += shlex.split(value)
        except ValueError:
            words += value.split()
    return words


def _listed_path(entry: str, *, bind: bool) -> Path | None:
    """The path an entry of ReadWritePaths= (and friends) makes a mount at, or None."""
    # "-" ignores a missing path, "+" resolves inside RootDirectory=; neither moves the mount.
    entry = entry.lstrip("-+")
    if bind:
        # BindPaths=SOURCE[:DESTINATION[:OPTIONS]]: the mount is at DESTINATION.
        parts = entry.split(":")
        entry = parts[1] if len(parts) > 1 and parts[1] else parts[0]
    unknown = False

    def expand(match: re.Match[str]) -> str:
        nonlocal unknown
        unknown = unknown or match.group(0) not in _SPECIFIERS
        return _SPECIFIERS.get(match.group(0), match.group(0))

    entry = re.sub(r"%.", expand, entry)
    if unknown or not entry.startswith("/"):
        return None  # a specifier of no fixed value (%h, %i), or not a path
    return Path(os.path.normpath(entry))


def _expand(value: str) -> str:
    """`value` with the specifiers of fixed value expanded (the others left as written)."""
    return re.sub(r"%.", lambda match: _SPECIFIERS.get(match.group(0), match.group(0)), value)
