"""[discovery] listen under hostile peers: what an unidentified peer may cost panicd.

A real `panicd run` child listens; a real QEMU dials in through a monitor of its own. Peers
that are not QEMUs (but run as an allowed uid) flood the socket or say nothing; the QEMU's
panic must still be handled, and panicd's memory (its /proc/PID/status) must stay small.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path
from typing import Any

from panicd.alerts import AlertKind
from panicd.listen import MAX_UNIDENTIFIED_PEERS
from panicd.qmp import GREETING_READ_LIMIT
from tests.daemon_process import (
    PanicdProcess,
    completed_dumps,
    daemon_section,
    unique,
    wait_for,
)
from tests.journal import Journald
from tests.listen_flood import MIB, SilentPeers, flood, memory_mib
from tests.qemu_harness import QemuGuest

#: panicd idles at about 41 MiB here; before the read limits, 60 flooding peers took it to
#: about 580 MiB.
PEAK_RSS_LIMIT_MIB = 150
#: Back near idle once the flood is over: within this much of the idle figure.
SETTLED_RSS_MARGIN_MIB = 20


def listening(tmp: Path, daemon_extra: str = "") -> str:
    return (daemon_section(tmp, daemon_extra)
            + f'[discovery]\nlisten = "{tmp}/qmp.sock"\nallowed_uids = [0]\n'
            '[[policy]]\non_panic = ["dump", "pause"]\n')


def dialling_in(tmp: Path, name: str, *extra: str) -> QemuGuest:
    return QemuGuest(tmp / "q", name=name, extra_args=[
        "-chardev", f"socket,id=panicd,path={tmp / 'qmp.sock'},reconnect=1",
        "-mon", "chardev=panicd,mode=control", *extra])


async def test_sixty_flooding_peers_cost_little_memory_and_a_panic_is_still_handled(
    short_tmp: Path, panicd: Any, journal: Journald
) -> None:
    guest = dialling_in(short_tmp, unique("flooded"))
    try:
        await guest.start()
        daemon: PanicdProcess = panicd(listening(short_tmp))
        await daemon.wait_event("qmp.connected", guest=guest.name, timeout=20)
        assert daemon.proc is not None
        pid = daemon.proc.pid
        idle_rss, _ = memory_mib(pid)

        # 60 peers, each a process of its own, each sending a 100 MiB line, while the guest panics.
        flooding = asyncio.create_task(flood(short_tmp / "qmp.sock", peers=60, total=100 * MIB))
        await daemon.wait_event("listen.accepted", count=2)  # the guest, then the first peer
        assert await guest.panic() == "OK"
        peers = await flooding
        _, peak = memory_mib(pid)
        assert peak < PEAK_RSS_LIMIT_MIB, f"peak RSS {peak:.0f} MiB (idle {idle_rss:.0f} MiB)"

        (dump,) = await completed_dumps(short_tmp, guest.name)
        assert dump.stat().st_size > 0
        assert await guest.status() == "guest-panicked"
        (alert,) = await journal.find(MESSAGE_ID=AlertKind.PANIC.message_id, GUEST_NAME=guest.name)
        assert alert["PANIC_DETECTION"] == "event"
        (written,) = await journal.find(MESSAGE_ID=AlertKind.DUMP_COMPLETED.message_id,
                                        GUEST_NAME=guest.name)
        assert written["DUMP_PATH"] == str(dump)

        # panicd hung up on every one of them after a little more than the greeting limit.
        assert [p.outcome for p in peers] == ["cut_off"] * 60
        assert max(p.sent for p in peers) < 2 * MIB
        dropped = await daemon.wait_event("qmp.unreachable", count=60)
        assert all("longer than the 65536-byte limit" in e["error"] for e in dropped)

        # The flood is over and every peer's monitor has ended: memory is back near idle (waited
        # for, as what is still being freed is not what stays).
        def settled() -> float | None:
            rss, _ = memory_mib(pid)
            return rss if rss < idle_rss + SETTLED_RSS_MARGIN_MIB else None

        await wait_for(settled, timeout=10, what=f"RSS back near the idle {idle_rss:.0f} MiB")
        assert await daemon.stop() == 0
    finally:
        await guest.stop()


async def test_unidentified_peers_beyond_the_limit_wait_until_a_silent_one_is_dropped(
    short_tmp: Path, panicd: Any
) -> None:
    with socket.socket() as probe:  # a free port for the metrics endpoint
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon: PanicdProcess = panicd(listening(
        short_tmp, f'connect_timeout = 2\nmetrics_listen = "127.0.0.1:{port}"'))
    silent = SilentPeers(short_tmp / "qmp.sock", MAX_UNIDENTIFIED_PEERS)
    guest = dialling_in(short_tmp, unique("waiting"))
    try:
        await daemon.wait_event("listen.ready")
        await silent.start()
        await daemon.wait_event("listen.saturated")
        assert len(daemon.events("listen.accepted")) == MAX_UNIDENTIFIED_PEERS

        # The QEMU dials in while every slot is held: it waits in the listen backlog.
        await guest.start()
        await daemon.wait_event("qmp.connected", guest=guest.name, timeout=20)
        log = daemon.log()
        accepted = [i for i, e in enumerate(log) if e.get("event") == "listen.accepted"]
        assert len(accepted) == MAX_UNIDENTIFIED_PEERS + 1
        assert log[accepted[-1]]["pid"] == guest.proc.pid  # type: ignore[union-attr]
        # ... until a peer that never greeted was dropped, after connect_timeout.
        first_drop = next(i for i, e in enumerate(log) if e.get("event") == "qmp.unreachable")
        assert "no QMP greeting within 2 s" in log[first_drop]["error"]
        assert first_drop < accepted[-1]
        await wait_for(lambda: len(silent.closed) == MAX_UNIDENTIFIED_PEERS, timeout=10,
                       what="panicd hanging up on every silent peer")

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                return str(reply.read().decode())

        await daemon.wait_event("metrics.listening")
        metrics = await asyncio.to_thread(scrape)
        (saturated,) = [line for line in metrics.splitlines()
                        if line.startswith("panicd_listen_saturated_total ")]
        assert float(saturated.split()[1]) >= 1
        assert await daemon.stop() == 0
    finally:
        await silent.stop()
        await guest.stop()


async def test_a_qemu_whose_reply_is_longer_than_a_greeting_is_not_cut_off(
    short_tmp: Path, panicd: Any
) -> None:
    # Past the greeting, a QEMU may send more: here query-name's reply is 100 KB, as a -name
    # that long makes it (QEMU takes the last -name given).
    name = unique("long") + "-" + "n" * (GREETING_READ_LIMIT + 35_000)
    guest = dialling_in(short_tmp, unique("short"), "-name", name)
    try:
        await guest.start()
        daemon: PanicdProcess = panicd(listening(short_tmp))
        await daemon.wait_event("qmp.connected", guest=name, timeout=20)
        assert not daemon.events("qmp.unreachable")
        assert await daemon.stop() == 0
    finally:
        await guest.stop()
