"""The QMP session's edge: what a peer sends before it has greeted as QMP."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from panicd.errors import GuestUnreachable
from panicd.qmp import GREETING_READ_LIMIT, QmpSession


async def _peer_saying(path: Path, data: bytes) -> asyncio.Server:
    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(data)
            await writer.drain()
            await reader.read()  # until panicd hangs up
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_unix_server(talk, path=str(path))


async def _open(path: Path) -> str:
    with pytest.raises(GuestUnreachable) as caught:
        await QmpSession.open(path, name="peer", on_event=lambda _: None, connect_timeout=3,
                              command_timeout=3)
    return str(caught.value)


async def test_a_line_longer_than_a_greeting_is_cut_off_and_named(short_tmp: Path) -> None:
    path = short_tmp / "long.sock"
    async with await _peer_saying(path, b"x" * (GREETING_READ_LIMIT * 4)):
        assert f"longer than the {GREETING_READ_LIMIT}-byte limit" in await _open(path)


async def test_undecodable_bytes_are_not_called_a_long_line(short_tmp: Path) -> None:
    path = short_tmp / "bytes.sock"
    async with await _peer_saying(path, b"\xff\xfe\xfd not QMP\n"):
        message = await _open(path)
    assert "longer than" not in message
    assert "cannot connect" in message
