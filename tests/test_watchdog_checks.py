"""`panicd check-config` on the nmi and wait_panic steps: where they mean nothing, it says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_check_config import check, findings, no_installed_unit  # noqa: F401 - fixture


def test_wait_panic_without_an_nmi_before_it_is_warned(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = check(tmp_path, """
[[policy]]
on_watchdog = ["wait_panic", "nmi", "wait_panic", "dump"]
wait_panic = { timeout = 30 }
""", capsys=capsys)
    assert code == 0, lines
    (warning,) = findings(lines)
    assert warning.startswith("WARNING policy[0].on_watchdog[0]: 'wait_panic' does not come "
                              "after an 'nmi'"), warning
    assert "30 s (wait_panic.timeout)" in warning
    assert "put 'nmi' before it" in warning


def test_nmi_and_wait_panic_in_on_panic_are_warned_as_meaningless(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = check(tmp_path, """
[[policy]]
on_panic = ["nmi", "wait_panic", "dump"]
""", capsys=capsys)
    assert code == 0, lines
    nmi, wait = findings(lines)
    assert nmi.startswith("WARNING policy[0].on_panic[0]: 'nmi' in on_panic: the guest has "
                          "already panicked"), nmi
    assert wait.startswith("WARNING policy[0].on_panic[1]: 'wait_panic' in on_panic: the guest "
                           "has already panicked, so it waits 60 s"), wait


def test_the_natural_watchdog_policy_passes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = check(tmp_path, """
[[policy]]
on_watchdog = ["nmi", "wait_panic", "dump", "restart"]
""", capsys=capsys)
    assert (code, findings(lines)) == (0, []), lines


def test_a_missing_hook_run_only_by_on_watchdog_is_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = check(tmp_path, """
[[policy]]
on_watchdog = ["dump", "exec", "restart"]
exec = { command = ["/nonexistent/notify-hang"] }
""", capsys=capsys)
    assert code == 1, lines
    (error,) = findings(lines)
    assert error.startswith("ERROR policy[0].exec.command[0]: /nonexistent/notify-hang does not "
                            "exist: the exec step fails at every watchdog"), error


def test_a_dump_after_a_restart_in_on_watchdog_is_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = check(tmp_path, """
[[policy]]
on_watchdog = ["restart", "dump"]
""", capsys=capsys)
    assert code == 1, lines
    (error,) = findings(lines)
    assert error.startswith("ERROR policy[0].on_watchdog[1]: 'dump' comes after 'restart' "
                            "(on_watchdog[0]): it dumps the freshly rebooted guest, not the "
                            "hang"), error


@pytest.mark.parametrize("step", ["pause", "restart", "poweroff"])
def test_panic_action_none_with_a_step_that_stops_the_guest_is_warned(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], step: str) -> None:
    code, lines = check(tmp_path, f"""
[[policy]]
panic_action = "none"
on_panic = ["dump", "{step}"]
""", capsys=capsys)
    assert code == 0, lines
    (warning,) = findings(lines)
    assert warning.startswith(f"WARNING policy[0].on_panic[1]: '{step}' in on_panic with "
                              'panic_action = "none": the guest is left running to write its '
                              "own crash dump (Windows' MEMORY.DMP)"), warning


def test_panic_action_none_with_the_default_on_panic_is_warned_and_an_empty_one_passes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, lines = check(tmp_path, '[[policy]]\npanic_action = "none"\n', capsys=capsys)
    (warning,) = findings(lines)
    assert warning.startswith("WARNING policy[0].on_panic[1]: 'pause' in on_panic"), warning
    code, lines = check(tmp_path, '[[policy]]\npanic_action = "none"\non_panic = ["exec"]\n'
                        'exec = { command = ["/bin/true"] }\n', capsys=capsys)
    assert (code, findings(lines)) == (0, []), lines
