"""The supervisor: owns the guest monitors, the shared dump slots, signals and sd_notify.

    Daemon.run()
      ├── PanicLedger.run          writes the handled-panics ledger off the event path
      └── GuestMonitor.run (x N)     one per [[guest]], each with its own incident worker

Every task lives in one TaskGroup and has a name. A guest's failure stays inside its monitor
(it reconnects); only SIGTERM/SIGINT (or `stop()`) end the daemon, by cancelling the group.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import structlog

from panicd.alerts import Alerter, JournalAlerter
from panicd.config import Config
from panicd.dumps import DumpStore
from panicd.ledger import PanicLedger
from panicd.monitor import GuestMonitor
from panicd.respond import PanicResponder

log = structlog.get_logger("panicd.daemon")


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) how panicd is; a no-op outside systemd."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    from systemd import daemon  # noqa: PLC0415 - systemd-python only when it is needed

    try:
        daemon.notify(message)
    except OSError as exc:
        log.warning("sd_notify.failed", error=str(exc))


class Daemon:
    def __init__(self, config: Config, *, alerter: Alerter | None = None) -> None:
        self.config = config
        self.alerter = alerter or JournalAlerter()
        self.dumps = DumpStore(config.daemon.dump_dir)
        self.ledger = PanicLedger(config.daemon.state_dir)
        self.dump_slots = asyncio.Semaphore(config.daemon.max_concurrent_dumps)
        self.responder = PanicResponder(
            # Looked up through self.config at each panic, so a reloaded config applies.
            policy_for=lambda name: self.config.policy_for(name),  # noqa: PLW0108
            dumps=self.dumps,
            dump_slots=self.dump_slots,
            alerter=self.alerter,
        )
        self.monitors: dict[Path, GuestMonitor] = {}
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self._run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("daemon.signal", signal=sig.name)
        self.stop()

    async def _run(self) -> None:
        log.info(
            "daemon.starting",
            guests=len(self.config.guest),
            policies=len(self.config.policy),
            dump_dir=str(self.config.daemon.dump_dir),
        )
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.ledger.run(), name="ledger")
                for spec in self.config.guest:
                    monitor = GuestMonitor(
                        spec,
                        settings=self.config.daemon,
                        responder=self.responder,
                        alerter=self.alerter,
                        ledger=self.ledger,
                    )
                    self.monitors[spec.socket] = monitor
                    tasks.create_task(_supervise(monitor), name=f"guest:{spec.socket}")
                sd_notify("READY=1")
                log.info("daemon.ready")
                await self._stop.wait()
                sd_notify("STOPPING=1")
                log.info("daemon.stopping")
                raise _Stopping
        except* _Stopping:
            pass
        log.info("daemon.stopped")


async def _supervise(monitor: GuestMonitor) -> None:
    """Run a monitor; should it ever fail (a bug), log it and start it again, alone."""
    while True:
        try:
            await monitor.run()
        except Exception:
            log.exception("guest.monitor_crashed", guest=monitor.identity.name)
            await asyncio.sleep(1.0)


class _Stopping(Exception):
    """Raised inside the TaskGroup to cancel every task in it."""
