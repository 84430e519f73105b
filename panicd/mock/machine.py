"""The mock guest's run state and what QEMU 7.2 does on panic, reset, stop, cont and quit.

This is a copy of the parts of QEMU's system/runstate.c that a panic handler can see, each
checked on a real QEMU 7.2 (``-machine pc -nodefaults -device pvpanic`` driven by qtest):

- panic (``qemu_system_guest_panicked``), by panic action:
  pause: GUEST_PANICKED {action: pause}, STOP, runstate guest-panicked;
  shutdown (QEMU's default): GUEST_PANICKED {action: poweroff}, STOP, SHUTDOWN {guest: true,
  reason: guest-panic}, then QEMU exits (status 1 with exit-failure); but with the shutdown
  action pause (``-no-shutdown``) it behaves as pause;
  none: GUEST_PANICKED {action: run} and the guest runs on.
  A panic while already stopped still sends GUEST_PANICKED but no STOP and keeps the runstate.
- ``vm_stop`` only acts on a running guest (so `stop` on a paused guest sends no STOP) and
  ``vm_start`` only on a stopped one (`cont` on a running guest sends no RESUME).
- `cont` refuses while a dump runs and in the shutdown runstate ("Resetting the Virtual
  Machine is required"); from guest-panicked it simply resumes.
- `system_reset` sends RESET {guest: false, reason: host-qmp-system-reset} and leaves any guest
  that was not running in prelaunch; `cont` then runs it. With ``-action reboot=shutdown`` the
  reset request becomes a shutdown. During a dump (runstate save-vm) QEMU 7.2 aborts on the
  invalid transition save-vm -> prelaunch; the mock "aborts" too (exit status -6).
- `quit`: SHUTDOWN {guest: false, reason: host-qmp-quit}, then exit.
- `inject-nmi` (qmp_inject_nmi -> x86_nmi) only marks an NMI pending on the vCPUs, in any
  runstate, and sends no event. A running vCPU takes it at once; a stopped one (paused,
  guest-panicked, save-vm) when it next runs, right after RESUME; several pending are one NMI;
  a reset drops it; one injected in prelaunch is taken by the firmware, not the guest OS.
  Without a guest OS nothing more happens. A Linux guest booted with ``unknown_nmi_panic=1``
  panics on it (`nmi_panics`): GUEST_PANICKED, then the panic action, as for a pvpanic write.
  (Seen: Debian's 6.1 kernel under TCG, and a boot sector whose NMI handler writes pvpanic.)
  Once that kernel has panicked it panics no more until a reset (Linux's nmi_panic() does
  nothing while a panic is under way): a later NMI is taken and nothing follows.

Not copied: the firmware. After a reset, a real QEMU's SeaBIOS reboots once more by itself
(a second RESET {guest: true, reason: guest-reset}); the mock guest has no firmware.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Any

from panicd.mock.qapi import QmpError


class RunState(enum.StrEnum):
    """QEMU's RunState values the mock can be in (qapi/run-state.json)."""

    RUNNING = "running"
    PAUSED = "paused"
    PRELAUNCH = "prelaunch"
    GUEST_PANICKED = "guest-panicked"
    SHUTDOWN = "shutdown"
    SAVE_VM = "save-vm"  # what query-status shows while a running guest is being dumped


# set-action's enums (qapi/run-state.json), in schema order.
ACTIONS: dict[str, tuple[str, ...]] = {
    "reboot": ("reset", "shutdown"),
    "shutdown": ("poweroff", "pause"),
    "panic": ("pause", "shutdown", "exit-failure", "none"),
    "watchdog": ("reset", "shutdown", "poweroff", "pause", "debug", "none", "inject-nmi"),
}

# ShutdownCause values that QEMU reports with "guest": true (shutdown_caused_by_guest()).
_GUEST_CAUSES = frozenset({"guest-shutdown", "guest-reset", "guest-panic", "subsystem-reset",
                           "snapshot-load"})

EXIT_ABORTED = -6  # like subprocess's returncode for a process killed by SIGABRT

EventSink = Callable[[str, Mapping[str, Any] | None], None]
ExitHook = Callable[[int], None]


class Machine:
    """Runstate, actions and events of one mock guest.

    `emit(name, data)` is called for every QMP event, synchronously and in QEMU's order;
    `on_exit(status)` once, when QEMU would exit (status 0, or 1 for panic=exit-failure).
    """

    def __init__(self, emit: EventSink, on_exit: ExitHook, *, panic_action: str = "shutdown",
                 obeys_powerdown: bool = False, nmi_panics: bool = False) -> None:
        if panic_action not in ACTIONS["panic"]:
            raise ValueError(f"panic action must be one of {ACTIONS['panic']}: {panic_action!r}")
        self._emit = emit
        self._on_exit = on_exit
        self.runstate = RunState.RUNNING
        self.panic_action = panic_action
        self.shutdown_action = "poweroff"
        self.reboot_action = "reset"
        self.watchdog_action = "reset"
        # An ACPI-aware guest OS powers off on system_powerdown; a qtest QEMU has none.
        self.obeys_powerdown = obeys_powerdown
        # A Linux guest booted with unknown_nmi_panic=1 panics on an NMI; a qtest QEMU has no OS.
        self.nmi_panics = nmi_panics
        self.nmi_pending = False  # injected while the vCPUs were stopped: taken when they run
        self.os_panicked = False  # its kernel panicked (on an NMI): no second panic until reset
        self.dump_in_progress = False  # set by the dump job; stop and cont refuse meanwhile
        self.exit_status: int | None = None

    @property
    def running(self) -> bool:
        return self.runstate is RunState.RUNNING

    @property
    def exited(self) -> bool:
        return self.exit_status is not None

    # -- what the guest does (through the pvpanic port) ---------------------------------------

    def guest_panicked(self, info: Mapping[str, Any] | None = None) -> None:
        """qemu_system_guest_panicked(): `info` is GuestPanicInformation (pvpanic sends none)."""
        if self.exited:
            return
        if self.panic_action == "pause" or (
            self.panic_action == "shutdown" and self.shutdown_action == "pause"
        ):
            self._panicked_event("pause", info)
            self.vm_stop(RunState.GUEST_PANICKED)
        elif self.panic_action in ("shutdown", "exit-failure"):
            self._panicked_event("poweroff", info)
            self.vm_stop(RunState.GUEST_PANICKED)
            self.shutdown_request("guest-panic")
        else:
            self._panicked_event("run", info)

    def guest_crashloaded(self, info: Mapping[str, Any] | None = None) -> None:
        """The guest loaded its own crash kernel: recorded, and it keeps running."""
        if not self.exited:
            self._panicked_event("run", info, event="GUEST_CRASHLOADED")

    def guest_pvshutdown(self) -> None:
        """QEMU >= 9.1: pvpanic's SHUTDOWN bit, a plain guest power-off."""
        if not self.exited:
            self._emit("GUEST_PVSHUTDOWN", None)
            self.shutdown_request("guest-shutdown")

    def _take_nmi(self) -> None:
        """A running vCPU takes a pending NMI: the guest OS's NMI handler runs."""
        if self.nmi_pending and self.running and not self.exited:
            self.nmi_pending = False
            if self.nmi_panics and not self.os_panicked:
                # Linux's unknown_nmi_error() -> nmi_panic(): its pvpanic driver reports it.
                self.os_panicked = True
                self.guest_panicked()

    def _panicked_event(self, action: str, info: Mapping[str, Any] | None,
                        event: str = "GUEST_PANICKED") -> None:
        data: dict[str, Any] = {"action": action}
        if info is not None:
            data["info"] = dict(info)
        self._emit(event, data)

    # -- what the host asks (QMP commands) ------------------------------------------------------

    def stop(self) -> None:
        self._refuse_during_dump()
        self.vm_stop(RunState.PAUSED)

    def cont(self) -> None:
        self._refuse_during_dump()
        # runstate_needs_reset() in 7.2: shutdown (and internal-error), not guest-panicked.
        if self.runstate is RunState.SHUTDOWN:
            raise QmpError("Resetting the Virtual Machine is required")
        self.vm_start()

    def inject_nmi(self) -> None:
        """qmp_inject_nmi(): accepted in every runstate; no event, no runstate change of its own."""
        if self.runstate is RunState.PRELAUNCH:
            return  # the firmware takes it when the guest starts (its NMI handler, not the OS's)
        self.nmi_pending = True
        self._take_nmi()

    def system_reset(self, cause: str = "host-qmp-system-reset") -> None:
        if self.reboot_action == "shutdown":
            self.shutdown_request(cause)
            return
        self.nmi_pending = False  # a CPU reset clears a pending NMI
        self.os_panicked = False  # and the next boot's kernel can panic again
        self._emit("RESET", {"guest": cause in _GUEST_CAUSES, "reason": cause})
        if self.runstate is RunState.SAVE_VM:
            # QEMU 7.2: "invalid runstate transition: 'save-vm' -> 'prelaunch'", then abort().
            self._exit(EXIT_ABORTED)
        elif not self.running:
            self.runstate = RunState.PRELAUNCH

    def system_powerdown(self) -> None:
        self._emit("POWERDOWN", None)
        if self.obeys_powerdown and self.running:
            self.shutdown_request("guest-shutdown")

    def quit(self) -> None:
        self.shutdown_action = "poweroff"  # qmp_quit() overrides -action shutdown=pause
        self.shutdown_request("host-qmp-quit")

    def host_signal(self) -> None:
        """SIGTERM/SIGINT to QEMU: SHUTDOWN {guest: false, reason: host-signal}, then exit,
        even with the shutdown action pause (qemu_system_killed() clears no_shutdown)."""
        self.shutdown_action = "poweroff"
        self.shutdown_request("host-signal")

    def set_actions(self, actions: Mapping[str, str]) -> None:
        """set-action; the values were checked against `ACTIONS` already."""
        self.reboot_action = actions.get("reboot", self.reboot_action)
        self.shutdown_action = actions.get("shutdown", self.shutdown_action)
        self.panic_action = actions.get("panic", self.panic_action)
        self.watchdog_action = actions.get("watchdog", self.watchdog_action)

    def _refuse_during_dump(self) -> None:
        if self.dump_in_progress:
            raise QmpError("There is a dump in process, please wait.")

    # -- QEMU's primitives ----------------------------------------------------------------------

    def vm_stop(self, state: RunState) -> None:
        if self.running:
            self.runstate = state
            self._emit("STOP", None)

    def vm_start(self) -> None:
        if not self.running:
            self._emit("RESUME", None)
            self.runstate = RunState.RUNNING
            self._take_nmi()

    def shutdown_request(self, cause: str) -> None:
        """main_loop_should_exit() handling a shutdown request: SHUTDOWN, then exit or pause."""
        if self.exited:
            return
        self._emit("SHUTDOWN", {"guest": cause in _GUEST_CAUSES, "reason": cause})
        if self.shutdown_action == "pause":
            self.vm_stop(RunState.SHUTDOWN)
            return
        failed = cause == "guest-panic" and self.panic_action == "exit-failure"
        self._exit(1 if failed else 0)

    def _exit(self, status: int) -> None:
        if not self.exited:
            self.exit_status = status
            self._on_exit(status)
