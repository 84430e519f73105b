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
