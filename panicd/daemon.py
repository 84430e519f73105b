"""The supervisor: owns the guest monitors, the shared dump slots, signals and sd_notify.

    Daemon.run()
      ├── IncidentStore            every incident, in SQLite (its own thread; opened first)
      ├── ControlServer.serve      answers `panicd status` and `panicd guest` (GuestActions)
      ├── _report_status           STATUS= to systemd whenever a guest's state changes
      ├── _watchdog                WATCHDOG=1 from the event loop itself (WatchdogSec=)
      └── GuestMonitor.run (x N)   one per [[guest]], each with its own IncidentWorker

Every task lives in one TaskGroup and has a name. A guest's failure stays inside its monitor
(it reconnects). SIGHUP reloads the config: guests are matched by socket path; new ones are
connected, removed ones dropped, unchanged ones keep their QMP connection, and policies are
looked up at each panic, so a changed policy applies to the next one. An invalid new config
is refused (logged and alerted) and the old one stays in force. SIGTERM/SIGINT end the daemon;
dumps in progress go on inside QEMU (see orphans.py).
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import signal
import socket
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import structlog

from panicd import __version__, alerts, metrics
from panicd.alerts import Alerter, JournalAlerter
from panicd.config import Config, GuestConfig, console_log_path, load
from panicd.control import ControlServer
from panicd.discovery import SocketWatcher
from panicd.dumps import DumpSlots, DumpStore
from panicd.errors import ConfigError
from panicd.events import GuestIdentity
from panicd.guest_actions import GuestActions
from panicd.listen import IdentificationSlot, QemuListener
from panicd.monitor import ConnectionState, GuestMonitor
from panicd.notify import Notifier
from panicd.respond import PanicResponder
from panicd.store import IncidentStore

log = structlog.get_logger("panicd.daemon")

#: STATUS= is sent at most this often while guests keep changing.
STATUS_DEBOUNCE_SECONDS = 0.2
#: How often incidents past `history_days` are pruned from the store.
HISTORY_PRUNE_SECONDS = 24 * 3600.0


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        alerter: Alerter | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.alerter = alerter or JournalAlerter()
        self.notifier = notifier or Notifier()
        self.dumps = DumpStore(config.daemon.dump_dir, min_free_bytes=config.daemon.min_free_bytes,
                               retention=config.daemon.retention)
        self.store = IncidentStore(config.daemon.state_dir, on_failure=self._store_failed)
        self.dump_slots = DumpSlots(config.daemon.max_concurrent_dumps)
        self.responder = PanicResponder(
            # Looked up through self.config at each panic, so a reloaded config applies.
            policy_for=lambda name: self.config.policy_for(name),  # noqa: PLW0108
            dumps=self.dumps,
            dump_slots=self.dump_slots,
            alerter=self.alerter,
            store=self.store,
            console_log_for=self._console_log_for,
        )
        self.responder.signatures.budget.per_hour = config.daemon.new_signature_alerts_per_hour
        self.monitors: dict[Path, GuestMonitor] = {}
        #: `panicd guest NAME ACTION`: the guests and the config as they are at each request.
        self.guest_actions = GuestActions(monitors=self.monitors.values,
                                          config=lambda: self.config, responder=self.responder,
                                          alerter=self.alerter)
        self.responder.metrics.watch_guests(self.monitors.values,
                                            lambda: self.config.daemon.metrics_max_guests)
        self._monitor_tasks: dict[Path, asyncio.Task[None]] = {}
        #: Sockets found by [discovery] rather than listed as [[guest]].
        self._discovered: set[Path] = set()
        self._watcher_task: asyncio.Task[None] | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self.started_at = time.time()
        self.reloads = 0

    def stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    # -- status ---------------------------------------------------------------------------

    def summary(self) -> str:
        monitors = list(self.monitors.values())
        connected = sum(m.state is ConnectionState.CONNECTED for m in monitors)
        panicked = sum(m.runstate == "guest-panicked" for m in monitors)
        running, stalled = self.dump_slots.running, self.dump_slots.stalled
        return (f"{len(monitors)} guests, {connected} connected, {panicked} panicked, "
                f"{running} dumps running" + (f", {stalled} stalled" if stalled else ""))

    def status(self) -> dict[str, Any]:
        return {
            "daemon": {
                "version": __version__,
                "pid": os.getpid(),
                "started_at": self.started_at,
                "config": str(self.config_path) if self.config_path else None,
                "reloads": self.reloads,
                "summary": self.summary(),
            },
            "guests": [m.snapshot() for m in self.monitors.values()],
        }

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Work that outlives a guest's step (a dump's triage and alert), owned by the daemon:
        a guest reconnecting or reloaded does not cut it short."""
        assert self._tasks is not None
        self._tasks.create_task(_logged(coro, name), name=name)

    def _store_failed(self, what: str, why: str) -> None:
        # Called from the store's thread: the alert is only queued (journal.py).
        self.alerter.send(alerts.store_failed(str(self.store.path), what, why))

    def _guest_changed(self) -> None:
        self._changed.set()

    # -- lifetime ---------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_signal, signal.SIGHUP)
        try:
            await self._run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("daemon.signal", signal=sig.name)
        if sig == signal.SIGHUP:
            self.request_reload()
        else:
            self.stop()

    async def _run(self) -> None:
        log.info(
            "daemon.starting",
            version=__version__,
            guests=len(self.config.guest),
            policies=len(self.config.policy),
            dump_dir=str(self.config.daemon.dump_dir),
        )
        # Before any guest: an incident found open there is resumed when its guest connects.
        await self.store.open()
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                self.responder.spawn = self._spawn
                control = ControlServer(self.config.daemon.control_socket, self.status,
                                        self.config.daemon.control_group,
                                        guest_action=self.guest_actions.request)
                tasks.create_task(control.serve(), name="control")
                if self.config.daemon.metrics_listen:
                    tasks.create_task(metrics.serve(self.responder.metrics,
                                                    self.config.daemon.metrics_listen), name="metrics")
                for spec in self.config.guest:
                    self._start_monitor(spec)
                self._start_discovery()
                await asyncio.sleep(0)  # let the watcher's first scan add what is there
                await self._first_attempts()
                self.notifier.ready()
                self.notifier.status(self.summary())
                log.info("daemon.ready", summary=self.summary())
                tasks.create_task(self._report_status(), name="status")
                tasks.create_task(self._prune_history(), name="history")
                if self.notifier.watchdog_seconds:
                    tasks.create_task(self._watchdog(self.notifier.watchdog_seconds), name="watchdog")
                await self._serve_reloads()
                self.notifier.stopping()
                log.info("daemon.stopping")
                raise _Stopping
        except* _Stopping:
            pass
        finally:
            await self.store.close()
        log.info("daemon.stopped")

    async def _first_attempts(self) -> None:
        """READY=1 waits until every guest's first connection has been tried (bounded)."""
        waits = [m.first_attempt.wait() for m in self.monitors.values()]
        if waits:
            limit = self.config.daemon.connect_timeout + 5
            try:
                async with asyncio.timeout(limit):
                    await asyncio.gather(*waits)
            except TimeoutError:
                log.warning("daemon.ready_before_all_tried", waited=limit)

    async def _serve_reloads(self) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                reload = asyncio.ensure_future(self._reload_requested.wait())
                await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
                if self._reload_requested.is_set():
                    self._reload_requested.clear()
                    await self.reload()
                reload.cancel()
        finally:
            stop.cancel()

    async def _report_status(self) -> None:
        while True:
            await self._changed.wait()
            await asyncio.sleep(STATUS_DEBOUNCE_SECONDS)
            self._changed.clear()
            self.notifier.status(self.summary())

    async def _prune_history(self) -> None:
        """`history_days`: old incidents whose dumps are gone leave the store, now and daily."""
        while True:
            await self.store.prune(self.config.daemon.history_days)
            await asyncio.sleep(HISTORY_PRUNE_SECONDS)

    async def _watchdog(self, interval: float) -> None:
        # Sent from the loop itself: if the loop is stuck, systemd stops hearing it and restarts us.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval / 2)

    # -- guests ---------------------------------------------------------------------------

    def _start_monitor(self, spec: GuestConfig, accepted: socket.socket | None = None) -> None:
        assert self._tasks is not None
        monitor = GuestMonitor(
            spec,
            settings=self.config.daemon,
            responder=self.responder,
            alerter=self.alerter,
            store=self.store,
            on_change=self._guest_changed,
            accepted=accepted,
        )
        self.monitors[spec.socket] = monitor
        task = self._tasks.create_task(_supervise(monitor), name=f"guest:{spec.socket}")
        self._monitor_tasks[spec.socket] = task
        if accepted is not None:
            # Its connection ends its life: forget it then (unless already replaced).
            def ended(_: asyncio.Task[None], key: Path = spec.socket) -> None:
                if self._monitor_tasks.get(key) is task:
                    self._monitor_tasks.pop(key)
                    self.monitors.pop(key)
                    self._discovered.discard(key)
                    self._changed.set()

            task.add_done_callback(ended)
        self._changed.set()

    def _qemu_connected(self, sock: socket.socket, pid: int, slot: IdentificationSlot) -> None:
        assert self.config.discovery.listen is not None
        # Keyed by the listen socket and the peer's pid: shown as the guest's "socket".
        key = Path(f"{self.config.discovery.listen}@{pid}")
        if key in self.monitors:
            self._detach_monitor(key)  # QEMU dialled again before panicd saw the old one end
        self._discovered.add(key)
        self._start_monitor(GuestConfig(socket=key), accepted=sock)
        # The listener's slot is this peer's until its monitor knows who it is, or it is gone.
        self.monitors[key].on_identified = slot.release
        self._monitor_tasks[key].add_done_callback(lambda _: slot.release())

    def _peer_refused(self, pid: int, uid: int) -> None:
        self.responder.metrics.refused_peers.inc()

    def _listen_saturated(self) -> None:
        self.responder.metrics.listen_saturated.inc()

    def _detach_monitor(self, socket: Path) -> asyncio.Task[None]:
        """Forget a guest at once (so the same socket can come back) and cancel its task."""
        task = self._monitor_tasks.pop(socket)
        self.monitors.pop(socket, None)
        self._discovered.discard(socket)
        task.cancel()
        log.info("guest.dropped", socket=str(socket))
        self._changed.set()
        return task

    async def _stop_monitor(self, socket: Path) -> None:
        if socket in self._monitor_tasks:  # it may have ended by itself (a dial-in guest)
            await asyncio.wait({self._detach_monitor(socket)})  # connection and worker closed

    # -- discovery ------------------------------------------------------------------------

    def _socket_appeared(self, path: Path) -> None:
        if path not in self.monitors:
            log.info("discovery.found", socket=str(path))
            self._discovered.add(path)
            self._start_monitor(GuestConfig(socket=path))

    def _watched_again(self, path: Path) -> None:
        patterns = [Path(p) for p in self.config.discovery.watch]
        if any(p.parent == path.parent and fnmatch.fnmatchcase(path.name, p.name) for p in patterns):
            self._socket_appeared(path)

    def _socket_vanished(self, path: Path) -> None:
        if path in self._discovered:
            self._detach_monitor(path)

    async def _stop_discovery(self) -> None:
        """Stop the watcher and the listener, and drop every guest they brought; a new
        watcher's first scan (and the QEMUs re-dialling) bring them back with new settings."""
        for source in (self._watcher_task, self._listener_task):
            if source is not None:
                source.cancel()
                await asyncio.wait({source})
        for key in list(self._discovered):
            if key in self.monitors:
                await self._stop_monitor(key)

    def _start_discovery(self) -> None:
        assert self._tasks is not None
        if self.config.discovery.listen is not None:
            listener = QemuListener(self.config.discovery.listen, self.config.discovery.allowed_uids,
                                    self._qemu_connected, self._peer_refused,
                                    self._listen_saturated)
            self._listener_task = self._tasks.create_task(listener.run(), name="listen")
        if self.config.discovery.watch:
            watcher = SocketWatcher(self.config.discovery.watch, self._socket_appeared,
                                    self._socket_vanished)
            self._watcher_task = self._tasks.create_task(watcher.run(), name="discovery")

    async def reload(self) -> bool:
        """Load the config file again; apply it, or keep the old one. True when applied."""
        try:
            return await self._reload()
        except Exception:
            # A bug here must not take every guest's monitor down with the daemon.
            log.exception("reload.failed")
            self.notifier.ready()
            return False

    async def _reload(self) -> bool:
        if self.config_path is None:
            log.warning("reload.no_config_file")
            return False
        self.notifier.reloading()
        try:
            new = await asyncio.to_thread(load, self.config_path)
        except ConfigError as exc:
            log.error("reload.rejected", error=str(exc))  # noqa: TRY400 - a user error, no traceback
            self.alerter.send(alerts.config_rejected(str(self.config_path), str(exc)))
            self.notifier.ready()
            return False
        if new.daemon.state_dir != self.config.daemon.state_dir:
            # The incident store stays open where it is: open incidents and the crash-loop
            # budget must not vanish with a reload. A restart moves it.
            log.warning("reload.state_dir_kept", state_dir=str(self.config.daemon.state_dir),
                        asked=str(new.daemon.state_dir),
                        hint="restart panicd to move its incident store")
            new = new.model_copy(update={"daemon": new.daemon.model_copy(
                update={"state_dir": self.config.daemon.state_dir})})
        old = {g.socket: g for g in self.config.guest}
        wanted = {g.socket: g for g in new.guest}
        daemon_changed = new.daemon != self.config.daemon
        discovery_changed = new.discovery != self.config.discovery or daemon_changed
        panic_actions: dict[Path, tuple[GuestMonitor, str]] = {
            path: (monitor, self.config.policy_for(monitor.identity.name).panic_action)
            for path, monitor in self.monitors.items()}
        self.config = new
        await self._apply_guests(old, wanted, daemon_changed=daemon_changed,
                                 discovery_changed=discovery_changed)
        await self._reapply_panic_actions(panic_actions)
        self.reloads += 1
        kept = [str(s) for s in wanted if s in old and old[s] == wanted[s] and not daemon_changed]
        log.info("reload.applied", guests=len(wanted), kept=len(kept),
                 added=len(set(wanted) - set(old)), removed=len(set(old) - set(wanted)))
        self.notifier.ready()
        self.notifier.status(self.summary())
        return True

    async def _apply_guests(self, old: dict[Path, GuestConfig], wanted: dict[Path, GuestConfig], *,
                            daemon_changed: bool, discovery_changed: bool) -> None:
        for path, spec in old.items():
            if path not in wanted or wanted[path] != spec or daemon_changed:
                await self._stop_monitor(path)
        for path in wanted:
            if path in self._discovered:  # now listed: its [[guest]] entry (name) applies
                await self._stop_monitor(path)
        if discovery_changed:
            await self._stop_discovery()
        if daemon_changed:
            self._apply_daemon_settings(self.config)
        for path, spec in wanted.items():
            if path not in self.monitors:
                self._start_monitor(spec)
        if discovery_changed:
            self._start_discovery()
        elif self._watcher_task is not None:
            # A [[guest]] removed whose socket the watcher matches: it is discovered again.
            for path in old:
                if path not in wanted and path.exists():
                    self._watched_again(path)

    async def _reapply_panic_actions(
            self, before: dict[Path, tuple[GuestMonitor, str]]) -> None:
        """Guests connected across the reload whose policy's panic_action changed: QEMU's
        panic action is set again now (a monitor started by the reload sets it on connect)."""
        for path, monitor in list(self.monitors.items()):
            kept = before.get(path)
            if kept is None or kept[0] is not monitor:
                continue
            action = self.config.policy_for(monitor.identity.name).panic_action
            if action != kept[1]:
                log.info("reload.panic_action_changed", guest=monitor.identity.name,
                         panic_action=action, was=kept[1])
                await monitor.panic_action_reloaded()

    def _apply_daemon_settings(self, new: Config) -> None:
        # Rare ([daemon] edited): every guest reconnects with the new settings. Dumps already
        # running keep the slot they hold; the new limit governs the next ones.
        self.dumps.root = new.daemon.dump_dir
        self.dumps.min_free_bytes = new.daemon.min_free_bytes
        self.dumps.retention = new.daemon.retention
        self.dump_slots = DumpSlots(new.daemon.max_concurrent_dumps)
        self.responder.dump_slots = self.dump_slots
        self.responder.signatures.budget.per_hour = new.daemon.new_signature_alerts_per_hour
        log.info("reload.daemon_settings_changed")

    def _console_log_for(self, guest: GuestIdentity) -> Path | None:
        """The guest's console log: its [[guest]]'s `console_log`, else its policy's."""
        listed = next((g for g in self.config.guest if str(g.socket) == guest.socket), None)
        template = (listed.console_log if listed is not None else None) \
            or self.config.policy_for(guest.name).console_log
        return console_log_path(template, guest.name) if template else None


async def _logged(coro: Coroutine[Any, Any, Any], name: str) -> None:
    # A failure in background work is a bug to log, never a reason to stop the daemon.
    try:
        await coro
    except Exception:
        log.exception("task.failed", task=name)


async def _supervise(monitor: GuestMonitor) -> None:
    """Run a monitor; should it ever fail (a bug), log it and start it again, alone."""
    while True:
        try:
            await monitor.run()
        except Exception:
            log.exception("guest.monitor_crashed", guest=monitor.identity.name)
            await asyncio.sleep(1.0)
        else:
            return  # only a monitor of an accepted connection ends by itself


class _Stopping(Exception):
    """Raised inside the TaskGroup to cancel every task in it."""
