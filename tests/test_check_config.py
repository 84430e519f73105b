"""`panicd check-config` beyond syntax: what panicd would really do with a config it accepts.

Each test writes a config (and, where it matters, real files: hooks, unit files), runs
`panicd check-config` through `main()`, and asserts the lines an operator reads and the
exit code: an ERROR (exit 1) when panicd would fail at it every time, a WARNING (exit 0)
when it would run but not as the file seems to mean.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

import pytest

from panicd import sandbox
from panicd.cli import main
from panicd.control import ControlServer

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_UNIT = ROOT / "systemd" / "panicd.service"


@pytest.fixture(autouse=True)
def no_installed_unit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This machine's own /etc/systemd/system must not decide a test: an empty search path."""
    units = tmp_path / "units"
    units.mkdir()
    monkeypatch.setattr(sandbox, "UNIT_DIRS", (units,))
    return units


def check(tmp_path: Path, text: str, *args: str,
          capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    config = tmp_path / "panicd.toml"
    config.write_text(text)
    code = main(["check-config", "-c", str(config), *args])
    out = capsys.readouterr()
    assert out.err == ""
    return code, out.out.splitlines()


def findings(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(("ERROR ", "WARNING "))]


def test_a_policy_behind_an_earlier_match_is_reported_as_never_applying(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = check(tmp_path, """
[[policy]]
match = "web-*"
on_panic = ["dump", "restart"]
[[policy]]
match = "web-0*"          # covered: starts with the literal prefix of web-*
[[policy]]
match = "web-01"          # covered: a fixed name web-* matches
[[policy]]
match = "db-[0-9]*"
[[policy]]
match = "db-1?"           # covered in fact, but containment in general is not detected
[[policy]]
match = "db-[0-9]*"       # identical to policy[3]
[[policy]]
on_panic = ["pause"]      # match defaults to "*"
[[policy]]
match = "anything"
""", capsys=capsys)
    assert code == 0
    assert findings(lines) == [
        "WARNING policy[1].match: policy[1] (match = 'web-0*') never applies: policy[0] "
        "(match = 'web-*') comes first and takes every guest it would; move policy[1] above "
        "policy[0], or narrow policy[0].match",
        "WARNING policy[2].match: policy[2] (match = 'web-01') never applies: policy[0] "
        "(match = 'web-*') comes first and takes every guest it would; move policy[2] above "
        "policy[0], or narrow policy[0].match",
        "WARNING policy[5].match: policy[5] (match = 'db-[0-9]*') never applies: policy[3] "
        "(match = 'db-[0-9]*') comes first and takes every guest it would; move policy[5] "
        "above policy[3], or narrow policy[3].match",
        "WARNING policy[7].match: policy[7] (match = 'anything') never applies: policy[6] "
        "(match = '*') comes first and takes every guest it would; move policy[7] above "
        "policy[6], or narrow policy[6].match",
    ]
    assert lines[-1] == f"{tmp_path / 'panicd.toml'}: OK with 4 warnings (0 guests, 8 policies)"


def test_steps_that_lose_the_crash_or_find_no_guest_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = check(tmp_path, """
[[policy]]
match = "a"
on_panic = ["restart", "dump"]
[[policy]]
match = "b"
on_panic = ["dump", "poweroff", "exec", "pause"]
exec = { command = ["/bin/true"] }
[[policy]]
match = "c"
on_panic = ["resume", "dump"]
on_crash_loaded = ["poweroff", "dump"]
[[policy]]
match = "d"
on_panic = ["dump", "restart"]    # the right order: nothing to say
""", capsys=capsys)
    assert code == 1
    assert findings(lines) == [
        "ERROR policy[0].on_panic[1]: 'dump' comes after 'restart' (on_panic[0]): it dumps "
        "the freshly rebooted guest, not the crash; put 'dump' before 'restart'",
        "ERROR policy[1].on_panic[3]: 'pause' comes after 'poweroff' (on_panic[1]): QEMU has "
        "exited by then, so at every panic it fails (a step-failed alert); move 'pause' "
        "before 'poweroff', or remove it",
        "WARNING policy[2].on_panic[1]: 'dump' comes after 'resume' (on_panic[0]): the guest "
        "runs on first, and a kernel booted with panic=N reboots itself, so the dump may not "
        "hold the crash; put 'dump' before 'resume'",
        "ERROR policy[2].on_crash_loaded[1]: 'dump' comes after 'poweroff' "
        "(on_crash_loaded[0]): QEMU has exited by then, so at every crash-loaded event it "
        "finds no guest "
        "to dump (a step-failed alert); move 'dump' before 'poweroff', or remove it",
    ]
    assert lines[-1].endswith(": 3 errors, 1 warning (0 guests, 4 policies)")


def test_exec_hooks_that_cannot_start_are_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    runnable = bin_dir / "page-oncall"
    runnable.write_text("#!/bin/sh\nexit 0\n")
    runnable.chmod(0o755)
    not_executable = bin_dir / "notes.txt"
    not_executable.write_text("not a program\n")
    not_executable.chmod(0o644)
    # A bare name is looked up on PATH, as create_subprocess_exec does for the hook; with no
    # unit to say the service's, the caller's.
    monkeypatch.setenv("PATH", str(bin_dir))
    policies = [
        ("a", f'["{runnable}"]'),                 # fine
        ("b", '["page-oncall", "--high"]'),       # fine: on PATH
        ("c", f'["{bin_dir}/gone"]'),
        ("d", f'["{not_executable}"]'),
        ("e", f'["{bin_dir}"]'),
        ("f", '["no-such-hook"]'),
        ("g", '["hooks/notify"]'),
    ]
    text = "".join(f'[[policy]]\nmatch = "{m}"\non_panic = ["dump", "exec"]\n'
                   f"exec = {{ command = {cmd} }}\n" for m, cmd in policies)
    # Configured but no exec step: it never runs, so a missing program does not matter.
    text += '[[policy]]\nmatch = "h"\nexec = { command = ["/nowhere/hook"] }\n'
    code, lines = check(tmp_path, text, capsys=capsys)
    fails = "the exec step fails at every panic (a step-failed alert)"
    assert code == 1
    assert findings(lines) == [
        f"ERROR policy[2].exec.command[0]: {bin_dir}/gone does not exist: {fails}; install "
        "the hook there, or correct the path",
        f"ERROR policy[3].exec.command[0]: {not_executable} is not an executable file: "
        f"{fails}; chmod +x {not_executable}, or name the program itself",
        f"ERROR policy[4].exec.command[0]: {bin_dir} is not an executable file: {fails}; "
        f"chmod +x {bin_dir}, or name the program itself",
        f"ERROR policy[5].exec.command[0]: 'no-such-hook' is not found in the caller's PATH "
        f"({bin_dir}): {fails}; give the program's absolute path, or install it on panicd's "
        "PATH (no unit was read: name one with --unit to search the service's PATH)",
        "WARNING policy[6].exec.command[0]: 'hooks/notify' is relative: it is looked up from "
        "panicd's working directory (/ under systemd), not from the config file's; give the "
        "program's absolute path",
    ]


def hook_in_a_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A hook installed in a virtualenv whose bin/ is on the caller's PATH, not the service's."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    hook = bin_dir / "panicd-test-page-oncall"
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return hook


VENV_HOOK_CONFIG = ('[[policy]]\non_panic = ["dump", "exec"]\n'
                    'exec = { command = ["panicd-test-page-oncall", "--high"] }\n')


def test_a_bare_hook_name_is_looked_up_on_the_services_path_not_the_callers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    no_installed_unit: Path,
) -> None:
    hook_in_a_venv(tmp_path, monkeypatch)
    # No unit: the caller's PATH stands in for panicd's, and it has the hook.
    code, lines = check(tmp_path, VENV_HOOK_CONFIG, capsys=capsys)
    assert (code, findings(lines)) == (0, [])

    # Under the shipped unit, which sets no PATH, panicd looks only where systemd's default
    # PATH says: the hook is not there.
    error = ("ERROR policy[0].exec.command[0]: 'panicd-test-page-oncall' is not found in the "
             "service's PATH (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; "
             "systemd's default: {unit} and its drop-ins set none): the exec step fails at "
             "every panic (a step-failed alert); give the program's absolute path, or install "
             "it in a directory on that PATH")
    code, lines = check(tmp_path, VENV_HOOK_CONFIG, "--unit", str(SHIPPED_UNIT), capsys=capsys)
    assert (code, findings(lines)) == (1, [error.format(unit=SHIPPED_UNIT)])
    # The same with the installed unit, found by itself.
    shutil.copy(SHIPPED_UNIT, no_installed_unit)
    code, lines = check(tmp_path, VENV_HOOK_CONFIG, capsys=capsys)
    assert (code, findings(lines)) == (1, [error.format(unit=no_installed_unit / "panicd.service")])

    # Where the unit would let panicd run the caller's copy, the fix names it.
    unit = tmp_path / "bare.service"
    unit.write_text("[Service]\nProtectHome=yes\n")
    code, lines = check(tmp_path, VENV_HOOK_CONFIG, "--unit", str(unit), capsys=capsys)
    assert code == 1
    assert findings(lines)[0].endswith(
        f"; give its absolute path ({tmp_path}/venv/bin/panicd-test-page-oncall, found on the "
        "caller's PATH), or add its directory to the service's PATH with Environment=PATH= in "
        "a drop-in")


def test_the_path_a_units_drop_in_sets_is_the_one_searched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = hook_in_a_venv(tmp_path, monkeypatch).parent
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # from here on, not the caller's PATH's doing
    unit = tmp_path / "panicd.service"
    unit.write_text("[Service]\nProtectHome=yes\n"
                    "Environment=PATH=/usr/bin\n")
    drop_ins = tmp_path / "panicd.service.d"
    drop_ins.mkdir()
    path_conf = drop_ins / "path.conf"
    # Quoted, among other variables; it replaces the unit's PATH. A directory hidden from the
    # service comes first: panicd passes over it, as execvp does.
    path_conf.write_text(f'[Service]\nEnvironment=LANG=C "PATH=/home/nobody/bin:{bin_dir}:/usr/bin"\n')
    code, lines = check(tmp_path, VENV_HOOK_CONFIG, "--unit", str(unit), capsys=capsys)
    assert (code, findings(lines)) == (0, [])

    # An empty Environment= drops every earlier assignment: systemd's default again.
    path_conf.write_text(f"[Service]\nEnvironment=PATH={bin_dir}\nEnvironment=\n")
    code, lines = check(tmp_path, VENV_HOOK_CONFIG, "--unit", str(unit), capsys=capsys)
    assert code == 1
    assert ("(/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; systemd's default: "
            f"{unit} and its drop-ins set none)") in findings(lines)[0]

    # ExecSearchPath= gives the PATH when Environment= does not, and EnvironmentFile= wins
    # over both; the finding names the setting and file the PATH came from.
    env_file = tmp_path / "panicd.env"
    env_file.write_text('# PATH for panicd\nPATH="/usr/sbin:/usr/bin"\n')
    path_conf.write_text(f"[Service]\nEnvironment=\nExecSearchPath={bin_dir}\n"
                         f"EnvironmentFile=-{env_file}\n")
    code, lines = check(tmp_path, VENV_HOOK_CONFIG, "--unit", str(unit), capsys=capsys)
    assert code == 1
    assert (f"not found in the service's PATH (/usr/sbin:/usr/bin; EnvironmentFile={env_file} "
            f"in {path_conf}): ") in findings(lines)[0]
    env_file.unlink()
    code, lines = check(tmp_path, VENV_HOOK_CONFIG, "--unit", str(unit), capsys=capsys)
    assert (code, findings(lines)) == (0, [])

    # The shipped unit's PrivateTmp= hides the hook (under /tmp here) wherever PATH points.
    shipped = tmp_path / "shipped" / "panicd.service"
    (tmp_path / "shipped" / "panicd.service.d").mkdir(parents=True)
    shutil.copy(SHIPPED_UNIT, shipped)
    (tmp_path / "shipped" / "panicd.service.d" / "path.conf").write_text(
        f"[Service]\nEnvironment=PATH={bin_dir}:/usr/bin\n")
    code, lines = check(tmp_path, VENV_HOOK_CONFIG, "--unit", str(shipped), capsys=capsys)
    assert code == 1
    assert findings(lines)[0].startswith(
        f"ERROR policy[0].exec.command[0]: {bin_dir}/panicd-test-page-oncall is in the "
        f"service's private /tmp, not the host's (PrivateTmp=yes in {shipped}), and the hook "
        "runs in the service's sandbox")


async def test_an_unknown_control_group_is_an_error_and_leaves_no_control_socket(
    short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    group = "panicd-no-such-group"
    control = short_tmp / "control.sock"
    code, lines = check(short_tmp, f'[daemon]\ncontrol_socket = "{control}"\n'
                        f'control_group = "{group}"\n', capsys=capsys)
    assert code == 1
    assert findings(lines) == [
        f"ERROR daemon.control_group: this host has no group '{group}': panicd would start "
        "without its control socket (`panicd status` cannot reach it); create the group "
        f"(groupadd {group}) or remove control_group"]
    # What the daemon does with it: the server gives up before making the socket (it used
    # to leave one behind, served but closed to the group).
    await asyncio.wait_for(ControlServer(control, dict, group=group).serve(), 5)
    assert not control.exists()


def test_paths_the_units_sandbox_does_not_let_panicd_write_are_warned_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The shipped unit (ProtectSystem=strict, ProtectHome=yes, PrivateTmp=yes,
    # StateDirectory=panicd ..., RuntimeDirectory=panicd) with an operator's drop-in.
    unit = tmp_path / "panicd.service"
    shutil.copy(SHIPPED_UNIT, unit)
    (tmp_path / "panicd.service.d").mkdir()
    (tmp_path / "panicd.service.d" / "dumps.conf").write_text(
        "[Service]\nReadWritePaths=-/srv/crash \\\n  /srv/other\n")
    text = """
[daemon]
dump_dir = "/srv/dumps"
state_dir = "/var/lib/panicd/state"
control_socket = "/run/panicd/control.sock"
[discovery]
listen = "/tmp/panicd-qmp.sock"
watch = ["/run/qemu/*.qmp"]
[[guest]]
socket = "/home/alice/vm.qmp"
[[guest]]
socket = "/run/qemu/web-01.qmp"
"""
    code, lines = check(tmp_path, text, "--unit", str(unit), capsys=capsys)
    assert code == 0
    assert findings(lines) == [
        f"WARNING daemon.dump_dir: /srv/dumps is read-only for the service "
        f"(ProtectSystem=strict in {unit}): every dump would fail (read-only file system), "
        "and the policy's next steps run without one; create /srv/dumps and let the service "
        "write there with a drop-in: /etc/systemd/system/panicd.service.d/paths.conf holding "
        '"[Service]" and "ReadWritePaths=/srv/dumps", then systemctl daemon-reload && '
        "systemctl restart panicd",
        f"WARNING discovery.listen: /tmp/panicd-qmp.sock is in the service's private /tmp, "
        f"not the host's (PrivateTmp=yes in {unit}): QEMUs look in the host's /tmp and find "
        "no socket; use a directory under /var/lib/panicd (or /run/panicd for a socket)",
        f"WARNING guest[0].socket: /home/alice/vm.qmp is hidden from the service "
        f"(ProtectHome=yes in {unit}): panicd would never find QEMU's socket there; let QEMU "
        "put its QMP socket elsewhere (/run/qemu/, say), or override ProtectHome= in a "
        "drop-in",
    ]

    # The drop-in's paths (with its "-" prefix and a continuation line) count as writable.
    fixed = text.replace("/srv/dumps", "/srv/crash/dumps").replace("/tmp/", "/run/panicd/")
    fixed = fixed.replace("/home/alice/", "/srv/other/")
    code, lines = check(tmp_path, fixed, "--unit", str(unit), capsys=capsys)
    assert (code, findings(lines)) == (0, [])
    assert lines[-1].endswith(": OK (2 guests, 0 policies)")


def test_the_installed_unit_and_its_drop_ins_are_found_by_themselves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    etc, lib = tmp_path / "etc-systemd", tmp_path / "lib-systemd"
    shutil.copytree(SHIPPED_UNIT.parent, lib)
    (etc / "panicd.service.d").mkdir(parents=True)
    (etc / "panicd.service.d" / "paths.conf").write_text("[Service]\nReadWritePaths=/srv/a\n")
    monkeypatch.setattr(sandbox, "UNIT_DIRS", (etc, lib))
    text = '[daemon]\ndump_dir = "/srv/a/dumps"\nstate_dir = "/srv/b"\n'
    code, lines = check(tmp_path, text, capsys=capsys)
    assert code == 0
    assert [line.split(":")[0] for line in findings(lines)] == ["WARNING daemon.state_dir"]
    assert f"(ProtectSystem=strict in {lib / 'panicd.service'})" in findings(lines)[0]


def test_without_an_installed_unit_the_sandbox_checks_are_skipped_and_that_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_installed_unit: Path
) -> None:
    code, lines = check(tmp_path, '[daemon]\ndump_dir = "/srv/dumps"\n', capsys=capsys)
    assert code == 0
    assert lines == [
        f"NOTE unit: no panicd.service installed (looked in {no_installed_unit}): the checks "
        "against the service's sandbox (writable dump_dir, state_dir and sockets) are "
        "skipped; name a unit with --unit PATH",
        f"{tmp_path / 'panicd.toml'}: OK (0 guests, 0 policies)",
    ]
    code = main(["check-config", "-c", str(tmp_path / "panicd.toml"),
                 "--unit", str(tmp_path / "missing.service")])
    assert code == 1
    assert "cannot read --unit" in capsys.readouterr().err


def test_findings_escape_control_characters_from_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = ('[[policy]]\n[[policy]]\nmatch = "web\\n\\u001b[31m"\n'
            '[[guest]]\nsocket = "/home/\\u001b]0;owned\\u0007.qmp"\n')
    code, lines = check(tmp_path, text, "--unit", str(SHIPPED_UNIT), capsys=capsys)
    assert code == 0
    assert not any(c in "\n".join(lines) for c in "\x1b\x07")
    assert findings(lines)[0].startswith(
        "WARNING guest[0].socket: /home/\\x1b]0;owned\\x07.qmp is hidden from the service")
    assert findings(lines)[1].startswith(
        "WARNING policy[1].match: policy[1] (match = 'web\\n\\x1b[31m') never applies")
    assert len(lines) == 3  # two findings and the summary: no line was split


def test_fail_on_chooses_what_fails_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    warning_only = '[[policy]]\n[[policy]]\nmatch = "x"\n'
    error = '[[policy]]\non_panic = ["restart", "dump"]\n'
    assert check(tmp_path, warning_only, capsys=capsys)[0] == 0
    assert check(tmp_path, warning_only, "--fail-on", "warning", capsys=capsys)[0] == 1
    # For ExecStartPre=: report everything, refuse only what `panicd run` would refuse.
    code, lines = check(tmp_path, error, "--fail-on", "syntax", capsys=capsys)
    assert code == 0
    assert findings(lines)[0].startswith("ERROR policy[0].on_panic[1]:")
    config = tmp_path / "panicd.toml"
    config.write_text('[[policy]]\non_panic = ["explode"]\n')
    assert main(["check-config", "-c", str(config), "--fail-on", "syntax"]) == 1
    assert ("policy[0].on_panic[0]: 'explode' is not one of dump, pause, resume, restart, "
            "poweroff, exec, nmi, wait_panic") in capsys.readouterr().err.splitlines()


def test_the_shipped_config_and_unit_agree(capsys: pytest.CaptureFixture[str]) -> None:
    # Only the example hook is missing (it stands for the operator's own pager script).
    code = main(["check-config", "-c", str(ROOT / "config" / "panicd.toml"),
                 "--unit", str(SHIPPED_UNIT)])
    out = capsys.readouterr().out.splitlines()
    hook = "/usr/local/bin/page-oncall"
    expected_code = 0 if os.access(hook, os.X_OK) else 1
    assert code == expected_code
    with contextlib.suppress(ValueError):
        out.remove(f"ERROR policy[1].exec.command[0]: {hook} does not exist: the exec step "
                   "fails at every panic (a step-failed alert); install the hook there, or "
                   "correct the path")
    assert findings(out) == []


def test_unit_settings_are_read_as_systemd_applies_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = tmp_path / "panicd.service"
    unit.write_text("[Unit]\nReadWritePaths=/ignored\n[Service]\nProtectSystem=strict\n"
                    "ReadWritePaths=/srv/a\nCacheDirectory=panicd\n")
    (tmp_path / "panicd.service.d").mkdir()
    # An empty assignment resets the list: /srv/a is no longer writable. BindPaths= makes
    # its destination writable; %S is /var/lib in a system unit.
    (tmp_path / "panicd.service.d" / "50-override.conf").write_text(
        '[Service]\nReadWritePaths=\nBindPaths=/data:/srv/b\nReadWritePaths="%S/my dumps"\n')
    text = ('[daemon]\ndump_dir = "/srv/a/dumps"\nstate_dir = "/srv/b/state"\n'
            'control_socket = "/var/cache/panicd/control.sock"\n'
            '[discovery]\nlisten = "/var/lib/my dumps/qmp.sock"\n')
    code, lines = check(tmp_path, text, "--unit", str(unit), capsys=capsys)
    assert code == 0
    assert [line.split(":")[0] for line in findings(lines)] == ["WARNING daemon.dump_dir"]


def test_console_logs_the_units_sandbox_hides_are_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unit = tmp_path / "panicd.service"
    shutil.copy(SHIPPED_UNIT, unit)
    text = """
[[guest]]
socket = "/run/qemu/web-01.qmp"
console_log = "/home/alice/web-01.serial"
[[policy]]
console_log = "/tmp/serial/{name}/console.log"
"""
    code, lines = check(tmp_path, text, "--unit", str(unit), capsys=capsys)
    assert code == 0
    assert findings(lines) == [
        f"WARNING guest[0].console_log: /home/alice is hidden from the service "
        f"(ProtectHome=yes in {unit}): panicd would never read the console log there, and "
        "crashes without a readable dump get no title; let QEMU write its serial console "
        "under /var/log/qemu/ (say), or override ProtectHome= in a drop-in",
        f"WARNING policy[0].console_log: /tmp/serial is in the service's private /tmp, not the "
        f"host's (PrivateTmp=yes in {unit}): panicd would never read the console log there, "
        "and crashes without a readable dump get no title; let QEMU write its serial console "
        "under /var/log/qemu/ (say), or override PrivateTmp= in a drop-in",
    ]
    fixed = text.replace("/home/alice/", "/var/log/qemu/").replace("/tmp/serial/", "/var/log/qemu/")
    code, lines = check(tmp_path, fixed, "--unit", str(unit), capsys=capsys)
    assert (code, findings(lines)) == (0, [])


def test_a_console_log_shared_by_every_guest_of_a_policy_is_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = """
[[policy]]
match = "web-01"
console_log = "/var/log/qemu/web-01.serial"
[[policy]]
match = "web-*"
console_log = "/var/log/qemu/all.serial"
"""
    code, lines = check(tmp_path, text, capsys=capsys)
    assert code == 0
    assert findings(lines) == [
        "WARNING policy[1].console_log: '/var/log/qemu/all.serial' has no {name}: every guest "
        "matching 'web-*' would read this one file, and one guest's crash would title "
        "another's; put {name} in the path (\"/var/log/qemu/{name}.serial\"), or name each "
        "guest's file in its [[guest]] console_log",
    ]
