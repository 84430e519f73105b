"""`panicd mock-guest`: the command users try their config with."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from panicd.mock import cli
from tests.qemu_harness import connect, disconnect


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "panicd", "mock-guest", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)


async def wait_for_socket(path: Path, proc: asyncio.subprocess.Process) -> None:
    async with asyncio.timeout(10):
        while not path.exists():
            assert proc.returncode is None
            await asyncio.sleep(0.02)


async def test_sigusr1_panics_and_sigterm_exits_0(short_tmp: Path) -> None:
    qmp = short_tmp / "cli.qmp"
    proc = await start("--qmp", str(qmp), "--name", "cli-01", "--panic-action", "pause")
    try:
        await wait_for_socket(qmp, proc)
        client = await connect(qmp)
        with client.listener() as listener:
            proc.send_signal(signal.SIGUSR1)
            event = await asyncio.wait_for(listener.get(), 5)
            assert (event["event"], event["data"]) == ("GUEST_PANICKED", {"action": "pause"})
            status: object = await client.execute("query-status")
            assert status == {"status": "guest-panicked", "singlestep": False, "running": False}
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 10) == 0
        await disconnect(client)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    assert 'cli-01: GUEST_PANICKED {"action": "pause"}' in log
    assert '"reason": "host-signal"' in log
    assert not qmp.exists()


async def test_a_panic_with_exit_failure_ends_the_command_with_status_1(short_tmp: Path) -> None:
    proc = await start("--qmp", str(short_tmp / "a.qmp"), "--panic-action", "exit-failure",
                       "--panic-after", "0.2")
    assert await asyncio.wait_for(proc.wait(), 10) == 1
    assert proc.stderr is not None
    assert '"reason": "guest-panic"' in (await proc.stderr.read()).decode()


async def test_nmi_panics_makes_an_nmi_panic_the_guest_now_or_once_it_runs(short_tmp: Path) -> None:
    qmp = short_tmp / "nmi.qmp"
    proc = await start("--qmp", str(qmp), "--name", "nmi-01", "--panic-action", "pause",
                       "--nmi-panics")
    try:
        await wait_for_socket(qmp, proc)
        client = await connect(qmp)
        with client.listener() as listener:
            async def next_events(count: int) -> list[tuple[str, object]]:
                got = [await asyncio.wait_for(listener.get(), 5) for _ in range(count)]
                return [(e["event"], e.get("data")) for e in got]

            # Running: it panics at once, as Linux with unknown_nmi_panic=1 does.
            assert await client.execute("inject-nmi") == {}
            assert await next_events(2) == [("GUEST_PANICKED", {"action": "pause"}),
                                            ("STOP", None)]
            await client.execute("cont")
            assert await next_events(1) == [("RESUME", None)]
            # A panicked kernel panics no more: a new boot's can.
            await client.execute("system_reset")
            assert await next_events(1) == [("RESET", {"guest": False,
                                                       "reason": "host-qmp-system-reset"})]
            # Stopped: the NMI waits for the vCPU, and the panic comes right after RESUME.
            await client.execute("stop")
            assert await client.execute("inject-nmi") == {}
            assert await next_events(1) == [("STOP", None)]
            status: object = await client.execute("query-status")
            assert status == {"status": "paused", "singlestep": False, "running": False}
            await client.execute("cont")
            assert await next_events(3) == [("RESUME", None),
                                            ("GUEST_PANICKED", {"action": "pause"}),
                                            ("STOP", None)]
            status = await client.execute("query-status")
            assert status == {"status": "guest-panicked", "singlestep": False, "running": False}
        await disconnect(client)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_help_says_how_to_panic_the_guest_by_hand() -> None:
    parser = argparse.ArgumentParser(formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_arguments(parser)
    text = parser.format_help()
    assert "echo 'outb 0x505 0x1' | socat - UNIX-CONNECT:PATH" in text
    assert "kill -USR1" in text
    args = parser.parse_args(["--qmp", "a", "--qmp", "b", "--memory", "32"])
    assert args.qmp == [Path("a"), Path("b")]
    assert args.panic_action == "shutdown"  # QEMU's default
    assert args.nmi_panics is False  # a qtest QEMU has no guest OS to panic on an NMI
    assert "--nmi-panics" in text
