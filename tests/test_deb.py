"""The Debian package (`./run deb`): what it installs, and what install and purge do.

The package is built once per session (./run deb keeps the .deb while its inputs are
unchanged) and installed into throwaway roots with `dpkg --root --force-script-chrootless`:
dpkg then runs the real maintainer scripts outside the root with DPKG_ROOT set, which
panicd's scripts, deb-systemd-helper and `journalctl --root` honour. systemctl and
deb-systemd-invoke are replaced by recording stubs on PATH, so the host's own systemd is never
asked to reload, start or stop anything.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.test_packaging import pins

ROOT = Path(__file__).resolve().parent.parent
VENV = "/opt/venvs/panicd"
#: Installed by the stubs below: what a host without a running systemd (or journald) has.
STUBBED = ("systemctl", "deb-systemd-invoke")

# The first build installs debhelper and dh-virtualenv and takes about a minute.
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def deb() -> Path:
    built = subprocess.run([str(ROOT / "run"), "deb"], cwd=ROOT, capture_output=True, text=True,
                           check=False)
    assert built.returncode == 0, built.stderr
    return ROOT / built.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class Entry:
    mode: str  # as ls prints it: drwxr-x---
    link: str | None


@pytest.fixture(scope="module")
def listing(deb: Path) -> dict[str, Entry]:
    """`dpkg-deb -c` as {absolute path: entry}."""
    out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True)
    entries: dict[str, Entry] = {}
    for line in out.stdout.splitlines():
        mode, _owner, _size, _date, _time, rest = line.split(None, 5)
        path, _, link = rest.partition(" -> ")
        entries[path.removeprefix(".").rstrip("/") or "/"] = Entry(mode, link or None)
    return entries


def control_field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


def member(deb: Path, path: str) -> bytes:
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True)
    return subprocess.run(["tar", "-xO", f".{path}"], input=tar.stdout, capture_output=True,
                          check=True).stdout


def control_member(deb: Path, name: str) -> str:
    tar = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True, check=True)
    return subprocess.run(["tar", "-xO", f"./{name}"], input=tar.stdout, capture_output=True,
                          check=True).stdout.decode()


def test_package_installs_command_unit_catalog_config_man_pages_and_directories(
        listing: dict[str, Entry]) -> None:
    expected = {
        "/usr/bin/panicd": "lrwxrwxrwx",
        f"{VENV}/bin/panicd": "-rwxr-xr-x",
        "/lib/systemd/system/panicd.service": "-rw-r--r--",
        "/usr/lib/systemd/catalog/panicd.catalog": "-rw-r--r--",
        "/etc/panicd/panicd.toml": "-rw-r--r--",
        "/usr/share/man/man8/panicd.8.gz": "-rw-r--r--",
        "/usr/share/man/man5/panicd.toml.5.gz": "-rw-r--r--",
        "/usr/share/doc/panicd/README.md": "-rw-r--r--",
        "/usr/share/doc/panicd/examples/panicd.toml": "-rw-r--r--",
        "/usr/share/doc/panicd/examples/panicd-localhost-only.conf": "-rw-r--r--",
        # Dumps are guest memory: root only, as the unit's StateDirectoryMode=0750 keeps them.
        "/var/lib/panicd": "drwxr-x---",
        "/var/lib/panicd/state": "drwxr-x---",
        "/var/lib/panicd/dumps": "drwxr-x---",
    }
    assert {path: listing[path].mode if path in listing else None for path in expected} == expected
    assert listing["/usr/bin/panicd"].link == f"{VENV}/bin/panicd"
    # The localhost-only drop-in is an example: installing it would restrict every host.
    assert not [path for path in listing if path.startswith("/etc/systemd")
                or "panicd.service.d" in path]
    # Debian policy: a package never installs into /usr/local.
    assert not [path for path in listing if path.startswith("/usr/local")]


def test_package_depends_on_its_python_and_marks_the_config_a_conffile(deb: Path) -> None:
    depends = [dep.strip() for dep in control_field(deb, "Depends").split(",")]
    # The virtualenv's interpreter is /usr/bin/python3.11 and its modules are built for it;
    # libsystemd0 comes from dh_shlibdeps reading systemd-python's compiled module.
    assert "python3.11" in depends
    assert any(dep.startswith("libsystemd0") for dep in depends), depends
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert control_field(deb, "Version") == f"{version}-1"
    assert control_member(deb, "conffiles").split() == ["/etc/panicd/panicd.toml"]


def to_package_paths(text: str) -> str:
    """The repo's documents name the README's manual install; the package's paths differ."""
    return (text.replace("/usr/local/bin/panicd", "/usr/bin/panicd")
            .replace("/usr/local/share/doc/panicd/", "/usr/share/doc/panicd/")
            .replace("/etc/systemd/system/panicd.service", "/lib/systemd/system/panicd.service"))


def test_packaged_unit_is_the_shipped_unit_with_the_packages_paths(deb: Path) -> None:
    packaged = member(deb, "/lib/systemd/system/panicd.service").decode()
    assert "/usr/local" not in packaged
    assert "ExecStart=/usr/bin/panicd run -c /etc/panicd/panicd.toml" in packaged
    assert "file:/usr/share/doc/panicd/README.md" in packaged
    assert packaged == to_package_paths((ROOT / "systemd/panicd.service").read_text())
    assert member(deb, "/usr/lib/systemd/catalog/panicd.catalog") == (
        ROOT / "systemd/panicd.catalog").read_bytes()
    assert member(deb, "/usr/share/doc/panicd/examples/panicd-localhost-only.conf") == (
        ROOT / "systemd/panicd-localhost-only.conf").read_bytes()


def test_man_pages_are_docs_man_compressed_naming_the_packages_paths(deb: Path) -> None:
    for page in ("man8/panicd.8", "man5/panicd.toml.5"):
        packaged = gzip.decompress(member(deb, f"/usr/share/man/{page}.gz")).decode()
        assert packaged == to_package_paths((ROOT / "docs/man" / page).read_text())
        assert "/usr/local/share/doc" not in packaged
        assert "/etc/systemd/system/panicd.service" not in packaged
    files = gzip.decompress(member(deb, "/usr/share/man/man8/panicd.8.gz")).decode()
    assert ".I /usr/share/doc/panicd/README.md" in files


def test_maintainer_scripts_are_valid_shell(deb: Path) -> None:
    for script in ("postinst", "prerm", "postrm"):
        text = control_member(deb, script)
        checked = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True, check=False)
        assert checked.returncode == 0, f"{script}: {checked.stderr}"
    # debhelper's part went in where #DEBHELPER# stood, and only there.
    assert "#DEBHELPER#" not in control_member(deb, "postinst")
    assert "deb-systemd-helper" in control_member(deb, "postinst")


# ---- installing into a throwaway root -------------------------------------------------------

@dataclass(frozen=True)
class Host:
    root: Path
    path: str  # PATH for dpkg and the maintainer scripts
    systemd_calls: Path  # what the stubs were asked, one call a line

    def dpkg(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PATH": self.path}
        return subprocess.run(["dpkg", f"--root={self.root}", "--force-script-chrootless", *args],
                              env=env, capture_output=True, text=True, check=False)

    def packaged_panicd(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The installed panicd, run from the throwaway root's virtualenv."""
        python = self.root / VENV.lstrip("/") / "bin/python"
        return subprocess.run([str(python), "-c", "import sys; from panicd.cli import main; sys.exit(main())",
                               *args], capture_output=True, text=True, check=False)


@pytest.fixture
def make_host(tmp_path: Path) -> Callable[..., Host]:
    """A throwaway root and a PATH with (or without) journalctl; systemctl is always a stub."""

    def make(*, journalctl: str = "real") -> Host:
        root = tmp_path / "root"
        (root / "var/lib/dpkg/info").mkdir(parents=True)
        (root / "var/lib/dpkg/updates").mkdir()
        (root / "var/lib/dpkg/status").touch()
        # A host has systemd's own catalog: journalctl leaves the database untouched when it
        # finds no catalog file at all, so an empty root could not show panicd's texts going.
        (root / "usr/lib/systemd/catalog").mkdir(parents=True)
        shutil.copy("/usr/lib/systemd/catalog/systemd.catalog", root / "usr/lib/systemd/catalog")
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        calls = tmp_path / "systemd-calls"
        calls.touch()
        skip = {*STUBBED, "journalctl"}
        for directory in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
            for tool in Path(directory).iterdir():
                link = bin_dir / tool.name
                if tool.name not in skip and not link.exists() and not link.is_symlink():
                    link.symlink_to(tool)
        for tool in STUBBED:
            stub = bin_dir / tool
            stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n')
            stub.chmod(0o755)
        if journalctl == "real":
            (bin_dir / "journalctl").symlink_to("/usr/bin/journalctl")
        elif journalctl == "failing":
            (bin_dir / "journalctl").write_text("#!/bin/sh\necho 'journalctl: no journal' >&2\nexit 1\n")
            (bin_dir / "journalctl").chmod(0o755)
        return Host(root, str(bin_dir), calls)

    return make


def install(host: Host, deb: Path) -> subprocess.CompletedProcess[str]:
    # --force-depends: the throwaway root's dpkg database holds no python3.11 or libc6.
    installed = host.dpkg("--force-depends", "-i", str(deb))
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return installed


def catalog_ids(root: Path) -> str:
    listed = subprocess.run(["journalctl", f"--root={root}", "--list-catalog"], capture_output=True,
                            text=True, check=False)
    return listed.stdout


def test_install_enables_panicd_and_builds_the_journal_catalog(make_host: Callable[..., Host],
                                                              deb: Path) -> None:
    host = make_host()
    install(host, deb)
    wants = host.root / "etc/systemd/system/multi-user.target.wants/panicd.service"
    assert str(wants.readlink()) == "/lib/systemd/system/panicd.service"
    # postinst ran journalctl --update-catalog: `journalctl -x` explains the alerts.
    assert "079e6d4b8354425b802f1a81c3453411 panicd: Guest @GUEST_NAME@ panicked" in catalog_ids(host.root)
    assert (host.root / "etc/panicd/panicd.toml").read_bytes() == member(deb, "/etc/panicd/panicd.toml")
    # dh-virtualenv pointed the command's shebang at the installed virtualenv, not the build's.
    script = (host.root / VENV.lstrip("/") / "bin/panicd").read_text()
    assert script.startswith(f"#!{VENV}/bin/python\n")


@pytest.mark.parametrize("journalctl", ["absent", "failing"])
def test_install_succeeds_on_a_host_without_journald(make_host: Callable[..., Host], deb: Path,
                                                     journalctl: str) -> None:
    host = make_host(journalctl=journalctl)
    installed = install(host, deb)
    assert (host.root / "usr/lib/systemd/catalog/panicd.catalog").is_file()
    assert not (host.root / "var/lib/systemd/catalog/database").exists()
    if journalctl == "failing":
        assert "journalctl --update-catalog failed" in installed.stderr


def test_virtualenv_holds_exactly_the_pinned_versions(make_host: Callable[..., Host], deb: Path) -> None:
    host = make_host()
    install(host, deb)
    listed = host.packaged_panicd("--version")
    assert listed.stdout.strip() == "panicd 0.1.0", listed.stderr
    python = host.root / VENV.lstrip("/") / "bin/python"
    dists = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m\n"
         "for d in m.distributions(): print(d.metadata['Name'], d.version)"],
        capture_output=True, text=True, check=True).stdout.split("\n")
    installed = {canonicalize_name(name): version
                 for name, version in (line.split() for line in dists if line)}
    installed.pop("panicd")
    pinned = pins()
    assert {name: pinned.get(name) for name in installed} == installed


def test_installed_config_is_valid_for_a_host_with_no_guests(make_host: Callable[..., Host],
                                                            deb: Path) -> None:
    host = make_host()
    install(host, deb)
    config = host.root / "etc/panicd/panicd.toml"
    unit = host.root / "lib/systemd/system/panicd.service"
    # What ExecStartPre= runs, and the full check too: not even a warning on a fresh install.
    for fail_on in ("syntax", "warning"):
        checked = host.packaged_panicd("check-config", f"--fail-on={fail_on}", "-c", str(config),
                                       "--unit", str(unit))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "(0 guests, 0 policies)" in checked.stdout
    # The example's guests and policies are there, commented out: deleting the "#" before a
    # setting gives the documented example back, byte for byte.
    lines = config.read_text().splitlines(keepends=True)
    start = lines.index("#[[guest]]\n")
    uncommented = [line[1:] if line.startswith("#") and line[1:2] not in ("", " ", "\n", "#")
                   else line for line in lines[start:]]
    example = (ROOT / "config/panicd.toml").read_text()
    assert example.endswith("".join(uncommented))
    assert tomllib.loads(example)["guest"], "the example lost its guests"


def test_purge_removes_config_and_state_but_never_the_dumps(make_host: Callable[..., Host],
                                                           deb: Path) -> None:
    host = make_host()
    install(host, deb)
    # What a running panicd leaves: its incident store, a dump and its metadata; and an
    # operator's edit of the configuration.
    (host.root / "var/lib/panicd/state/incidents.db").write_bytes(b"SQLite format 3\0")
    dump = host.root / "var/lib/panicd/dumps/web-01/2026-11-26T12:00:00Z.kdump"
    dump.parent.mkdir(mode=0o750)
    dump.write_bytes(b"KDUMP   guest memory")
    dump.with_name(dump.name + ".json").write_text('{"result": "completed"}')
    with (host.root / "etc/panicd/panicd.toml").open("a") as config:
        config.write('[[guest]]\nsocket = "/run/qemu/web-01.qmp"\n')

    purged = host.dpkg("--purge", "panicd")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not (host.root / "etc/panicd").exists()
    assert not (host.root / "var/lib/panicd/state").exists()
    assert dump.read_bytes() == b"KDUMP   guest memory"
    assert dump.with_name(dump.name + ".json").read_text() == '{"result": "completed"}'
    assert "dumps kept in /var/lib/panicd/dumps" in purged.stderr
    assert not (host.root / VENV.lstrip("/")).exists()
    assert not (host.root / "etc/systemd/system/multi-user.target.wants/panicd.service").exists()
    catalog = catalog_ids(host.root)
    assert "panicd" not in catalog
    assert "systemd:" in catalog


def test_purge_on_a_host_that_never_dumped_leaves_nothing_behind(make_host: Callable[..., Host],
                                                                deb: Path) -> None:
    host = make_host()
    install(host, deb)
    (host.root / "var/lib/panicd/state/incidents.db").write_bytes(b"SQLite format 3\0")
    purged = host.dpkg("--purge", "panicd")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    left = sorted(str(path.relative_to(host.root)) for path in host.root.rglob("*")
                  if "panicd" in path.name and not str(path).startswith(str(host.root / "var/lib/dpkg")))
    assert left == []


def test_packaged_panicd_serves_with_the_installed_config(make_host: Callable[..., Host], deb: Path,
                                                          tmp_path: Path) -> None:
    """A fresh install's panicd starts (READY, no guests) and answers `panicd status`."""
    host = make_host()
    install(host, deb)
    # The installed file, with its paths moved under tmp_path: systemd's StateDirectory= and
    # RuntimeDirectory= would make them on a host; this test does not write to /var or /run.
    config = tmp_path / "panicd.toml"
    text = (host.root / "etc/panicd/panicd.toml").read_text()
    for key, value in (("dump_dir", tmp_path / "dumps"), ("state_dir", tmp_path / "state"),
                       ("control_socket", tmp_path / "control.sock")):
        text, count = re.subn(rf'^{key} = ".*"$', f'{key} = "{value}"', text, flags=re.MULTILINE)
        assert count == 1, key
    config.write_text(text)
    (tmp_path / "dumps").mkdir()
    (tmp_path / "state").mkdir()
    python = host.root / VENV.lstrip("/") / "bin/python"
    entry = "import sys; from panicd.cli import main; sys.exit(main())"
    with subprocess.Popen([str(python), "-c", entry, "run", "-c", str(config)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as daemon:
        try:
            assert daemon.stderr is not None
            events = []
            for line in daemon.stderr:  # JSON log lines (stderr is not a terminal or the journal)
                events.append(json.loads(line)["event"])
                if events[-1] in ("daemon.ready", "daemon.stopped"):
                    break
            assert events[-1] == "daemon.ready", events
            status = host.packaged_panicd("status", "--json", "-c", str(config))
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["guests"] == []
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
    assert daemon.returncode == 0
