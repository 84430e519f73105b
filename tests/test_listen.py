"""[discovery] listen: QEMU connects to panicd through a monitor of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from panicd.mock import MockGuest
from tests.daemon_process import PanicdProcess, completed_dumps, daemon_section, metadata, unique
from tests.qemu_harness import QemuGuest


def listening(tmp: Path, allowed: str = "[0]") -> str:
    return (daemon_section(tmp) + f'[discovery]\nlisten = "{tmp}/qmp.sock"\nallowed_uids = {allowed}\n'
            '[[policy]]\non_panic = ["dump", "pause"]\n')


async def test_qemus_dial_in_and_are_handled(short_tmp: Path, panicd: Any) -> None:
    listen = short_tmp / "qmp.sock"
    real = QemuGuest(short_tmp / "q", name=unique("dialer"), extra_args=[
        "-chardev", f"socket,id=panicd,path={listen},reconnect=1",
        "-mon", "chardev=panicd,mode=control"])
    mock = MockGuest(name=unique("mockdial"), reconnect_seconds=0.2)
    try:
        await real.start()  # before panicd listens: QEMU keeps re-dialling by itself
        await mock.connect_out(listen)
        daemon: PanicdProcess = panicd(listening(short_tmp))
        await daemon.wait_event("qmp.connected", guest=real.name, timeout=20)
        await daemon.wait_event("qmp.connected", guest=mock.name, timeout=20)
        accepted = daemon.events("listen.accepted")
        assert {e["pid"] for e in accepted} >= {real.proc.pid}  # type: ignore[union-attr]

        await real.panic()
        (dump,) = await completed_dumps(short_tmp, real.name)
        assert metadata(dump)["guest"]["socket"] == f"{listen}@{real.proc.pid}"  # type: ignore[union-attr]
        assert await real.status() == "guest-panicked"
        # The guest's own QMP socket was never touched: the harness's client is still on it.
        assert real.qmp_path.exists()
        mock.port.write(1)
        await completed_dumps(short_tmp, mock.name)

        # panicd restarts: the QEMUs dial in again; the handled panic is not handled twice.
        assert await daemon.stop() == 0
        again: PanicdProcess = panicd(listening(short_tmp))
        await again.wait_event("panic.already_handled", guest=real.name, timeout=20)
        assert len(list((short_tmp / "dumps" / real.name).glob("*.elf"))) == 1
        assert await again.stop() == 0
    finally:
        await mock.stop()
        await real.stop()


async def test_a_peer_with_a_uid_not_allowed_is_refused(short_tmp: Path, panicd: Any) -> None:
    mock = MockGuest(name=unique("stranger"), reconnect_seconds=0.2)
    try:
        daemon: PanicdProcess = panicd(listening(short_tmp, allowed="[4242]"))
        await daemon.wait_event("listen.ready")
        await mock.connect_out(short_tmp / "qmp.sock")
        refused = await daemon.wait_event("listen.refused")
        assert refused[0]["uid"] == 0
        assert not daemon.events("qmp.connected")
        assert await daemon.stop() == 0
    finally:
        await mock.stop()
