"""The supervisor: the daemon's lifetime, its reload, the shared dump slots, signals and sd_notify.

    Daemon.run()
      ├── IncidentStore            every incident, in SQLite (its own thread; opened first)
      ├── ControlServer.serve      answers `panicd status` and `panicd guest` (GuestActions)
      ├── metrics.serve            Prometheus metrics, when `metrics_listen` is set
      ├── WatchedGuests.start      the guests (guests.py): "guest:{socket}", a GuestMonitor
      │                            with its IncidentWorker each, and "discovery" and "listen"
      ├── _report_status           STATUS= to systemd whenever a guest's state changes
      ├── _prune_history           incidents past `history_days` leave the store, daily
      └── _watchdog                WATCHDOG=1 from the event loop itself (WatchdogSec=)

Every task lives in one TaskGroup and has a name. A guest's failure stays inside its monitor
(it reconnects). READY=1 is sent once every guest's first connection has been tried (bounded).
SIGTERM/SIGINT end the daemon; dumps in progress go on inside QEMU (see orphans.py).

SIGHUP reloads the config:

    load ──> invalid? ──> refused (logged and alerted); the old config stays in force
      └──> valid ──> WatchedGuests.drop_changed ──> [daemon] settings (dump store, slots)
                 ──> WatchedGuests.add_wanted ──> reapply_panic_actions ──> READY=1

Guests are matched by socket path: new ones are connected, removed ones dropped, unchanged
ones keep their QMP connection. Policies are looked up at each panic, so a changed policy
applies to the next one. The incident store stays where it was opened (`state_dir` is kept).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import structlog

from panicd import __version__, alerts, metrics
from panicd.alerts import Alerter, JournalAlerter
from panicd.config import Config, console_log_path, load
from panicd.control import ControlServer
from panicd.dumps import DumpSlots, DumpStore
from panicd.errors import ConfigError
from panicd.events import GuestIdentity
from panicd.guest_actions import GuestActions
from panicd.guests import WatchedGuests
from panicd.monitor import ConnectionState
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
        self.guests = WatchedGuests(config=lambda: self.config, responder=self.responder,
                                    alerter=self.alerter, store=self.store,
                                    on_change=self._guest_changed)
        #: The watched guests by socket (the guest set's own dict, so always current).
        self.monitors = self.guests.monitors
        #: `panicd guest NAME ACTION`: the guests and the config as they are at each request.
        self.guest_actions = GuestActions(monitors=self.monitors.values,
                                          config=lambda: self.config, responder=self.responder,
                                          alerter=self.alerter)
        self.responder.metrics.watch_guests(self.monitors.values,
                                            lambda: self.config.daemon.metrics_max_guests)
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
                "config": str(self.config_path.absolute()) if self.config_path else None,
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
                await self.guests.start(tasks)
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
                self.guest_actions.close()
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

    # -- reload ---------------------------------------------------------------------------

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
        panic_actions = self.guests.panic_actions(self.config)
        self.config = new
        await self.guests.drop_changed(old, wanted, daemon_changed=daemon_changed,
                                       discovery_changed=discovery_changed)
        if daemon_changed:
            self._apply_daemon_settings(new)
        self.guests.add_wanted(old, wanted, discovery_changed=discovery_changed)
        await self.guests.reapply_panic_actions(panic_actions)
        self.reloads += 1
        kept = [str(s) for s in wanted if s in old and old[s] == wanted[s] and not daemon_changed]
        log.info("reload.applied", guests=len(wanted), kept=len(kept),
                 added=len(set(wanted) - set(old)), removed=len(set(old) - set(wanted)))
        self.notifier.ready()
        self.notifier.status(self.summary())
        return True

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


class _Stopping(Exception):
    """Raised inside the TaskGroup to cancel every task in it."""
