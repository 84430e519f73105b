"""The config file: the public keys work, and every kind of mistake is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from panicd.cli import main
from panicd.config import DEFAULT_POLICY, load, parse
from panicd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

ISSUE_EXAMPLE = """
[daemon]
dump_dir = "/var/lib/panicd/dumps"
max_concurrent_dumps = 2
take_over_panic_action = true

[[guest]]
socket = "/run/qemu/web-01.qmp"

[[policy]]
match = "web-*"
on_panic = ["dump", "restart"]
on_crash_loaded = []
dump = { format = "kdump-zlib", paging = false, timeout = 600 }

[[policy]]
on_panic = ["dump", "pause"]
"""


def test_the_documented_example_parses() -> None:
    config = parse(ISSUE_EXAMPLE)
    assert config.daemon.max_concurrent_dumps == 2
    assert config.guest[0].socket == Path("/run/qemu/web-01.qmp")
    assert config.policy_for("web-01").on_panic == ["dump", "restart"]
    assert config.policy_for("web-01").dump.format == "kdump-zlib"
    assert config.policy_for("db-01").on_panic == ["dump", "pause"]


def test_shipped_example_config_is_valid() -> None:
    config = load(ROOT / "config" / "panicd.toml")
    assert len(config.guest) == 2
    assert config.policy_for("db-07").exec is not None


def test_no_matching_policy_gives_the_default() -> None:
    config = parse('[[policy]]\nmatch = "web-*"\non_panic = ["pause"]\n')
    assert config.policy_for("db-01") is DEFAULT_POLICY
    assert DEFAULT_POLICY.on_panic == ["dump", "pause"]


def test_first_matching_policy_wins() -> None:
    config = parse(
        '[[policy]]\nmatch = "web-0*"\non_panic = ["pause"]\n'
        '[[policy]]\nmatch = "web-*"\non_panic = ["restart"]\n'
    )
    assert config.policy_for("web-01").on_panic == ["pause"]
    assert config.policy_for("web-11").on_panic == ["restart"]


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "panicd.toml"
    cfg.write_text('[daemon]\ndump_dir = "d"\n[[guest]]\nsocket = "g.qmp"\n')
    config = load(cfg)
    assert config.daemon.dump_dir == tmp_path / "d"
    assert config.guest[0].socket == tmp_path / "g.qmp"


@pytest.mark.parametrize(
    ("text", "where", "why"),
    [
        ('[daemon]\ndump_dirr = "/x"\n', "daemon.dump_dirr", "unknown key"),
        ('[[policy]]\non_panic = ["dump", "reboot"]\n', "policy[0].on_panic[1]",
         "'reboot' is not one of dump, pause, resume, restart, poweroff, exec, nmi, wait_panic"),
        ('[[policy]]\ndump = { format = "zip" }\n', "policy[0].dump.format",
         "'zip' is not one of elf, kdump-zlib,"),
        ('[[policy]]\non_watchdog = ["dump", "restrat"]\n', "policy[0].on_watchdog[1]",
         "wait_panic (did you mean 'restart'?)"),
        ('[[guest]]\nname = "web"\n', "guest[0].socket", "Field required"),
        ('[[policy]]\non_panic = ["exec"]\n', "policy[0]", "needs exec"),
        ('[[policy]]\ndump = { format = "kdump-zlib", paging = true }\n', "policy[0].dump",
         "paging = true works only with format"),
        ('[daemon]\nmax_concurrent_dumps = 0\n', "daemon.max_concurrent_dumps",
         "greater than or equal to 1 (got 0)"),
        ('[daemon]\ncontrol_socket = 5\n', "daemon.control_socket", "5 is not a path"),
        ('[[guest]]\nsocket = "/a"\n[[guest]]\nsocket = "/a"\n', "guest[1].socket", "twice"),
        ('[[policy]]\nexec = { command = [] }\n', "policy[0].exec.command", "at least 1"),
    ],
)
def test_mistakes_are_named(text: str, where: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    message = str(caught.value)
    assert f"{where}: " in message
    assert why in message


def test_not_toml_is_named() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse("[[guest]\nsocket=")


def test_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[[guest]]\nsocket = "/run/qemu/not-yet-started.qmp"\n')
    assert main(["check-config", "-c", str(good)]) == 0
    assert "OK (1 guests, 0 policies)" in capsys.readouterr().out

    bad = tmp_path / "bad.toml"
    bad.write_text('[[policy]]\non_panic = ["dump", "explode"]\n')
    assert main(["check-config", "-c", str(bad)]) == 1
    err = capsys.readouterr().err
    assert ("policy[0].on_panic[1]: 'explode' is not one of dump, pause, resume, restart, "
            "poweroff, exec, nmi, wait_panic") in err.splitlines()

    assert main(["check-config", "-c", str(tmp_path / "missing.toml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_keys_and_values_from_the_file_are_escaped_one_problem_per_line() -> None:
    # A key holding a newline must not fake a second problem line, nor an ESC reach the
    # terminal: each problem stays on one line, control characters written as escapes.
    text = '[daemon]\n"evil\\nkey" = 1\n[[policy]]\non_panic = ["dump", "\\u001b[31mred"]\n'
    with pytest.raises(ConfigError) as caught:
        parse(text)
    lines = str(caught.value).splitlines()
    assert lines[1:] == [
        "daemon.evil\\nkey: unknown key",
        "policy[0].on_panic[1]: '\\x1b[31mred' is not one of dump, pause, resume, restart, "
        "poweroff, exec, nmi, wait_panic",
    ]
