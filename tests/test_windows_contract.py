"""The mock's Windows bugcheck event against the real QEMU's own schema (query-qmp-schema).

No guest here can make QEMU send a Hyper-V crash report (this machine's KVM has no Hyper-V
emulation), so the mock's GUEST_PANICKED with `info.type = hyper-v` is held to what the
installed QEMU 7.2 says that event is: its members, the union's tag and variants, the hyper-v
member's argument names and types, in schema order. panicd's model of it is held to the same.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from panicd.events import HyperVCrashInfo
from panicd.mock import MockGuest
from tests.qemu_harness import QEMU, connect, disconnect

pytestmark = pytest.mark.qemu


@pytest.fixture
async def qemu_schema(short_tmp: Path) -> AsyncIterator[dict[str, dict[str, Any]]]:
    """The real QEMU's QAPI schema, by (masked) type name: what it would send."""
    path = short_tmp / "schema.qmp"
    proc = subprocess.Popen([QEMU,  # noqa: ASYNC220 - started, then waited for without blocking "-machine", "none", "-display", "none", "-nodefaults",
                             "-qmp", f"unix:{path},server=on,wait=off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with asyncio.timeout(10):
            while not path.exists():
                assert proc.poll() is None, "QEMU exited at start"
                await asyncio.sleep(0.01)
        client = await connect(path)
        try:
            schema = await asyncio.wait_for(client.execute("query-qmp-schema"), 10)
        finally:
            await disconnect(client)
        yield {entry["name"]: entry for entry in schema}
    finally:
        proc.kill()
        proc.wait()


Schema = dict[str, dict[str, Any]]


def hyperv_variant(schema: Schema) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """GUEST_PANICKED's data, its `info` union, and the union's hyper-v variant, as QEMU has them."""
    event = schema["GUEST_PANICKED"]
    data = schema[event["arg-type"]]
    info = schema[next(m["type"] for m in data["members"] if m["name"] == "info")]
    (variant,) = [v for v in info["variants"] if v["case"] == "hyper-v"]
    return data, info, schema[variant["type"]]


async def test_the_mocks_bugcheck_event_has_qemus_hyperv_shape(
        short_tmp: Path, qemu_schema: dict[str, dict[str, Any]]) -> None:
    data_type, info_type, hyperv = hyperv_variant(qemu_schema)
    args = [m["name"] for m in hyperv["members"]]
    assert args == ["arg1", "arg2", "arg3", "arg4", "arg5"]
    assert {qemu_schema[m["type"]]["json-type"] for m in hyperv["members"]} == {"int"}
    assert info_type["tag"] == "type"
    tags = qemu_schema[info_type["members"][0]["type"]]["values"]
    actions = qemu_schema[next(m["type"] for m in data_type["members"]
                               if m["name"] == "action")]["values"]

    guest = MockGuest(name="contract-win", panic_action="pause")
    await guest.start(short_tmp / "m.qmp")
    client = await connect(short_tmp / "m.qmp")
    try:
        with client.listener(["GUEST_PANICKED"]) as listener:
            guest.bugcheck(0x7E, (2**64 - 1, 0xFFFFF8012A2B3C4D, 0, 1))
            event = await asyncio.wait_for(listener.get(), 5)
    finally:
        await disconnect(client)
        await guest.stop()
    data = event["data"]
    assert list(data) == [m["name"] for m in data_type["members"]]
    assert data["action"] in actions
    info = data["info"]
    # QAPI writes the union's base member (its tag) first, then the variant's, in order.
    assert list(info) == [info_type["tag"], *args]
    assert info["type"] == "hyper-v" and info["type"] in tags
    assert all(isinstance(info[a], int) and 0 <= info[a] < 2**64 for a in args)  # uint64
    assert info["arg1"] == 0x7E and info["arg2"] == 2**64 - 1
    # panicd reads exactly those members.
    assert [f for f in HyperVCrashInfo.model_fields if f != "type"] == args
    assert HyperVCrashInfo.model_validate(info).arg1 == 0x7E
