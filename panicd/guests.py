"""The guests panicd watches: one GuestMonitor per QMP socket, and where those sockets come from.

    [[guest]] in the config ─────────────────────┐  listed: kept until a reload removes it
    SocketWatcher  (task "discovery") ── found ───┤  discovered: dropped when its socket
                   [discovery] watch  ── vanished ┤    vanishes
    QemuListener   (task "listen")    ── dialled ─┤  dialled in: keyed "<listen>@<pid>",
                   [discovery] listen    in       │    forgotten when its connection ends
                                                  ▼
    WatchedGuests.monitors   socket -> GuestMonitor, each run as task "guest:{socket}"
                             (restarted alone, after a pause, should it ever crash)

Every task here lives in the daemon's TaskGroup (`start`). A socket is watched by one monitor
at most: a guest is forgotten at once when dropped (`guest.dropped`), so the same socket can
come back while the old monitor is still closing. A dial-in guest's monitor holds the
listener's IdentificationSlot until it knows who the peer is, or the peer is gone.

A reload is applied in two halves around the daemon's own settings (daemon.py):

    drop_changed   listed guests removed or changed (all of them if [daemon] changed), and
                   discovered ones now listed, are stopped; if [discovery] or [daemon] changed,
                   the watcher and listener stop and every guest they brought is dropped
    add_wanted     listed guests not watched are started; a changed discovery starts again
                   (its first scan, and the QEMUs re-dialling, bring their guests back);
                   else a [[guest]] removed whose socket the watcher matches is found again

Unchanged guests keep their QMP connection; `reapply_panic_actions` then sets QEMU's panic
action again on those whose policy's `panic_action` changed.
"""

from __future__ import annotations

import asyncio
import fnmatch
import socket
from collections.abc import Callable
from pathlib import Path

import structlog

from panicd.alerts import Alerter
from panicd.config import Config, GuestConfig
from panicd.discovery import SocketWatcher
from panicd.listen import IdentificationSlot, QemuListener
from panicd.monitor import GuestMonitor
from panicd.respond import PanicResponder
from panicd.store import IncidentStore

log = structlog.get_logger("panicd.guests")


class WatchedGuests:
    """The set of watched guests: their monitors and tasks, and the sources that add them."""

    def __init__(
        self,
        *,
        config: Callable[[], Config],
        responder: PanicResponder,
        alerter: Alerter,
        store: IncidentStore,
        on_change: Callable[[], None],
    ) -> None:
        #: The config in force, looked up at each use: a reload replaces it.
        self._config = config
        self._responder = responder
        self._alerter = alerter
        self._store = store
        self._on_change = on_change
        self.monitors: dict[Path, GuestMonitor] = {}
        self._monitor_tasks: dict[Path, asyncio.Task[None]] = {}
        #: Sockets found by [discovery] rather than listed as [[guest]].
        self._discovered: set[Path] = set()
        self._watcher_task: asyncio.Task[None] | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._tasks: asyncio.TaskGroup | None = None

    async def start(self, tasks: asyncio.TaskGroup) -> None:
        """Watch the listed guests and start discovery, all owned by `tasks`."""
        self._tasks = tasks
        for spec in self._config().guest:
            self._start_monitor(spec)
        self._start_discovery()
        await asyncio.sleep(0)  # let the watcher's first scan add what is there

    # -- one guest ------------------------------------------------------------------------

    def _start_monitor(self, spec: GuestConfig, accepted: socket.socket | None = None) -> None:
        assert self._tasks is not None
        monitor = GuestMonitor(
            spec,
            settings=self._config().daemon,
            responder=self._responder,
            alerter=self._alerter,
            store=self._store,
            on_change=self._on_change,
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
                    self._on_change()

            task.add_done_callback(ended)
        self._on_change()

    def _detach_monitor(self, socket: Path) -> asyncio.Task[None]:
        """Forget a guest at once (so the same socket can come back) and cancel its task."""
        task = self._monitor_tasks.pop(socket)
        self.monitors.pop(socket, None)
        self._discovered.discard(socket)
        task.cancel()
        log.info("guest.dropped", socket=str(socket))
        self._on_change()
        return task

    async def _stop_monitor(self, socket: Path) -> None:
        if socket in self._monitor_tasks:  # it may have ended by itself (a dial-in guest)
            await asyncio.wait({self._detach_monitor(socket)})  # connection and worker closed

    # -- discovery ------------------------------------------------------------------------

    def _qemu_connected(self, sock: socket.socket, pid: int, slot: IdentificationSlot) -> None:
        listen = self._config().discovery.listen
        assert listen is not None
        # Keyed by the listen socket and the peer's pid: shown as the guest's "socket".
        key = Path(f"{listen}@{pid}")
        if key in self.monitors:
            self._detach_monitor(key)  # QEMU dialled again before panicd saw the old one end
        self._discovered.add(key)
        self._start_monitor(GuestConfig(socket=key), accepted=sock)
        # The listener's slot is this peer's until its monitor knows who it is, or it is gone.
        self.monitors[key].on_identified = slot.release
        self._monitor_tasks[key].add_done_callback(lambda _: slot.release())

    def _peer_refused(self, pid: int, uid: int) -> None:
        self._responder.metrics.refused_peers.inc()

    def _listen_saturated(self) -> None:
        self._responder.metrics.listen_saturated.inc()

    def _socket_appeared(self, path: Path) -> None:
        if path not in self.monitors:
            log.info("discovery.found", socket=str(path))
            self._discovered.add(path)
            self._start_monitor(GuestConfig(socket=path))

    def _watched_again(self, path: Path) -> None:
        patterns = [Path(p) for p in self._config().discovery.watch]
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
        self._watcher_task = self._listener_task = None  # none runs until _start_discovery
        for key in list(self._discovered):
            if key in self.monitors:
                await self._stop_monitor(key)

    def _start_discovery(self) -> None:
        assert self._tasks is not None
        discovery = self._config().discovery
        if discovery.listen is not None:
            listener = QemuListener(discovery.listen, discovery.allowed_uids,
                                    self._qemu_connected, self._peer_refused,
                                    self._listen_saturated)
            self._listener_task = self._tasks.create_task(listener.run(), name="listen")
        if discovery.watch:
            watcher = SocketWatcher(discovery.watch, self._socket_appeared,
                                    self._socket_vanished)
            self._watcher_task = self._tasks.create_task(watcher.run(), name="discovery")

    # -- reload ---------------------------------------------------------------------------

    def panic_actions(self, config: Config) -> dict[Path, tuple[GuestMonitor, str]]:
        """Each guest's monitor and its policy's panic_action under `config` (the config
        before a reload): what `reapply_panic_actions` compares with afterwards."""
        return {path: (monitor, config.policy_for(monitor.identity.name).panic_action)
                for path, monitor in self.monitors.items()}

    async def drop_changed(self, old: dict[Path, GuestConfig], wanted: dict[Path, GuestConfig],
                           *, daemon_changed: bool, discovery_changed: bool) -> None:
        """A reload's first half: stop the guests it changes (see the module docstring)."""
        for path, spec in old.items():
            if path not in wanted or wanted[path] != spec or daemon_changed:
                await self._stop_monitor(path)
        for path in wanted:
            if path in self._discovered:  # now listed: its [[guest]] entry (name) applies
                await self._stop_monitor(path)
        if discovery_changed:
            await self._stop_discovery()

    def add_wanted(self, old: dict[Path, GuestConfig], wanted: dict[Path, GuestConfig], *,
                   discovery_changed: bool) -> None:
        """A reload's second half, under the new config: start what is not watched."""
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

    async def reapply_panic_actions(
            self, before: dict[Path, tuple[GuestMonitor, str]]) -> None:
        """Guests connected across the reload whose policy's panic_action changed: QEMU's
        panic action is set again now (a monitor started by the reload sets it on connect).
        All at once: a frozen QEMU costs its own command timeout, not every other guest's."""
        changed: list[GuestMonitor] = []
        for path, monitor in list(self.monitors.items()):
            kept = before.get(path)
            if kept is None or kept[0] is not monitor:
                continue
            action = self._config().policy_for(monitor.identity.name).panic_action
            if action != kept[1]:
                log.info("reload.panic_action_changed", guest=monitor.identity.name,
                         panic_action=action, was=kept[1])
                changed.append(monitor)
        outcomes = await asyncio.gather(*(m.panic_action_reloaded() for m in changed),
                                        return_exceptions=True)
        for monitor, outcome in zip(changed, outcomes, strict=True):
            if isinstance(outcome, Exception):
                # A bug in one guest's set-action: logged, the others' stand.
                log.error("reload.set_action_crashed", guest=monitor.identity.name,
                          exc_info=outcome)


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
