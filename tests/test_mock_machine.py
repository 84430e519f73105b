"""Runstates and pvpanic bits beyond the contract test: what QEMU can't easily be made to do."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from panicd.mock.machine import Machine, RunState
from panicd.mock.pvpanic import PvPanicPort
from panicd.mock.qapi import QmpError

Events = list[tuple[str, Any]]


def machine(**kwargs: Any) -> tuple[Machine, Events, list[int]]:
    events: Events = []
    exits: list[int] = []

    def emit(name: str, data: Mapping[str, Any] | None) -> None:
        events.append((name, None if data is None else dict(data)))

    return Machine(emit, exits.append, **kwargs), events, exits


def test_a_panic_with_shutdown_action_pause_pauses_like_no_shutdown() -> None:
    m, events, exits = machine()
    m.set_actions({"shutdown": "pause"})
    m.guest_panicked()
    assert events == [("GUEST_PANICKED", {"action": "pause"}), ("STOP", None)]
    assert m.runstate == "guest-panicked"
    assert exits == []


def test_guest_panic_information_is_passed_on() -> None:
    m, events, _ = machine(panic_action="none")
    m.guest_panicked({"type": "hyper-v", "arg1": 1, "arg2": 2, "arg3": 3, "arg4": 4, "arg5": 5})
    assert events[0][1]["info"]["type"] == "hyper-v"


def test_exit_failure_exits_with_status_1_and_nothing_after() -> None:
    m, events, exits = machine(panic_action="exit-failure")
    m.guest_panicked()
    m.guest_panicked()
    assert exits == [1]
    assert [name for name, _ in events] == ["GUEST_PANICKED", "STOP", "SHUTDOWN"]


def test_cont_in_the_shutdown_runstate_needs_a_reset() -> None:
    m, _, _ = machine(obeys_powerdown=True)
    m.set_actions({"shutdown": "pause"})
    m.system_powerdown()
    assert m.runstate == "shutdown"
    with pytest.raises(QmpError, match=r"^Resetting the Virtual Machine is required$"):
        m.cont()
    m.system_reset()
    assert m.runstate == "prelaunch"
    m.cont()
    assert m.running


def test_reboot_action_shutdown_turns_a_reset_into_a_shutdown() -> None:
    m, events, exits = machine()
    m.set_actions({"reboot": "shutdown"})
    m.system_reset()
    assert events == [("SHUTDOWN", {"guest": False, "reason": "host-qmp-system-reset"})]
    assert exits == [0]


def test_reset_during_a_dump_of_a_running_guest_aborts_like_qemu_7_2() -> None:
    m, events, exits = machine()
    m.vm_stop(RunState.SAVE_VM)
    m.system_reset()
    assert events[-1] == ("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
    assert exits == [-6]


def test_quit_exits_even_with_shutdown_action_pause() -> None:
    m, events, exits = machine()
    m.set_actions({"shutdown": "pause"})
    m.quit()
    assert events == [("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})]
    assert exits == [0]


def test_a_signal_shuts_down_with_reason_host_signal() -> None:
    m, events, exits = machine()
    m.host_signal()
    assert events == [("SHUTDOWN", {"guest": False, "reason": "host-signal"})]
    assert exits == [0]


def test_powerdown_is_only_an_event_without_a_guest_os() -> None:
    m, events, exits = machine()
    m.system_powerdown()
    assert events == [("POWERDOWN", None)]
    assert m.running
    assert exits == []


def test_stop_and_cont_are_refused_while_a_dump_runs() -> None:
    m, _, _ = machine()
    m.dump_in_progress = True
    for command in (m.stop, m.cont):
        with pytest.raises(QmpError, match=r"^There is a dump in process, please wait\.$"):
            command()


def test_pvpanic_on_qemu_7_2_supports_0x3_and_ignores_other_bits() -> None:
    m, events, _ = machine(panic_action="none")
    port = PvPanicPort(m, (7, 2, 0))
    assert port.read() == 0x3
    port.write(0x4)
    port.write(0xF8)
    assert events == []
    port.write(0x102)  # only the low byte reaches a one-byte port
    port.write(0x6)  # CRASH_LOADED wins over SHUTDOWN
    assert events == [("GUEST_CRASHLOADED", {"action": "run"})] * 2


def test_pvpanic_on_qemu_9_1_reports_a_guest_shutdown() -> None:
    m, events, exits = machine()
    port = PvPanicPort(m, (9, 1, 0))
    assert port.read() == 0x7
    port.write(0x4)
    assert events == [("GUEST_PVSHUTDOWN", None),
                      ("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})]
    assert exits == [0]


def test_an_unknown_panic_action_is_refused() -> None:
    with pytest.raises(ValueError, match="panic action"):
        machine(panic_action="poweroff")


# An NMI into a guest that panics on it (Linux's unknown_nmi_panic=1): as a boot sector whose NMI
# handler writes pvpanic, and Debian's 6.1 kernel, did on QEMU 7.2 under TCG.

def test_an_nmi_panics_a_running_nmi_panics_guest_at_once() -> None:
    m, events, _ = machine(panic_action="pause", nmi_panics=True)
    m.inject_nmi()
    assert events == [("GUEST_PANICKED", {"action": "pause"}), ("STOP", None)]
    assert m.runstate == "guest-panicked"


def test_an_nmi_into_a_stopped_guest_waits_and_panics_it_right_after_resume() -> None:
    m, events, _ = machine(panic_action="pause", nmi_panics=True)
    m.stop()
    m.inject_nmi()
    m.inject_nmi()  # one pending NMI, however many were injected
    assert events == [("STOP", None)]
    assert m.runstate == "paused"
    m.cont()
    assert events == [("STOP", None), ("RESUME", None),
                      ("GUEST_PANICKED", {"action": "pause"}), ("STOP", None)]
    assert m.runstate == "guest-panicked"
    m.cont()  # taken: nothing pending any more
    assert events[-1] == ("RESUME", None)
    assert m.running


def test_a_guest_without_nmi_panics_takes_the_nmi_and_runs_on() -> None:
    m, events, _ = machine(panic_action="pause")
    m.inject_nmi()
    m.stop()
    m.inject_nmi()
    m.cont()
    assert events == [("STOP", None), ("RESUME", None)]
    assert m.running
    m.nmi_panics = True  # the NMI was taken: nothing is left pending to panic on
    m.stop()
    m.cont()
    assert m.running


def test_a_reset_drops_a_pending_nmi_and_one_sent_in_prelaunch_is_the_firmwares() -> None:
    m, events, _ = machine(panic_action="pause", nmi_panics=True)
    m.stop()
    m.inject_nmi()
    m.system_reset()
    m.cont()
    assert m.running
    m.stop()
    m.system_reset()
    assert m.runstate == "prelaunch"
    m.inject_nmi()
    m.cont()
    assert m.running
    assert "GUEST_PANICKED" not in [name for name, _ in events]


def test_a_kernel_that_panicked_on_an_nmi_panics_no_more_until_a_reset() -> None:
    m, events, _ = machine(panic_action="pause", nmi_panics=True)
    m.inject_nmi()
    m.inject_nmi()  # Linux's nmi_panic() does nothing while a panic is under way
    m.cont()
    assert [name for name, _ in events] == ["GUEST_PANICKED", "STOP", "RESUME"]
    m.system_reset()  # a new boot: its kernel can panic again
    m.inject_nmi()
    assert [name for name, _ in events][-2:] == ["GUEST_PANICKED", "STOP"]


def test_an_nmi_panic_runs_the_panic_action() -> None:
    m, events, exits = machine(nmi_panics=True)  # QEMU's default: shutdown
    m.inject_nmi()
    assert events == [("GUEST_PANICKED", {"action": "poweroff"}), ("STOP", None),
                      ("SHUTDOWN", {"guest": True, "reason": "guest-panic"})]
    assert exits == [0]
