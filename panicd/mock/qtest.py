"""A qtest-compatible control socket, so one test drives the mock and a real QEMU alike.

QEMU's ``-qtest unix:PATH,server=on,wait=off`` takes text lines; the ones that matter here:

    outb 0x505 0x1     ->  OK             (the guest writes PANICKED to the pvpanic port)
    inb 0x505          ->  OK 0x0003      (the guest reads the supported event bits)

Try it by hand: ``echo 'outb 0x505 0x1' | socat - UNIX-CONNECT:PATH``. Numbers may be written
in any base Python's int(x, 0) takes, as QEMU accepts any C base. Any other line gets
``FAIL ...``: the mock knows only the pvpanic port, and unlike QEMU, which aborts on a
malformed line, it survives one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from panicd.mock.pvpanic import ISA_PORT, PvPanicPort


class QtestServer:
    """Serves the qtest line protocol for one pvpanic port."""

    def __init__(self, port: PvPanicPort) -> None:
        self._port = port
        self._server: asyncio.Server | None = None
        self._path: Path | None = None
        self._clients: set[asyncio.StreamWriter] = set()

    async def start(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self._path))

    def answer(self, line: str) -> str:
        """The reply to one command line, without the newline."""
        words = line.split()
        try:
            if len(words) == 3 and words[0] == "outb" and int(words[1], 0) == ISA_PORT:
                self._port.write(int(words[2], 0))
                return "OK"
            if len(words) == 2 and words[0] == "inb" and int(words[1], 0) == ISA_PORT:
                return f"OK 0x{self._port.read():04x}"
        except ValueError:
            return f"FAIL malformed line: {line!r}"
        if words and words[0] in ("outb", "inb"):
            return f"FAIL panicd-mock has only the pvpanic port {ISA_PORT:#x}: {line!r}"
        return f"FAIL Unknown command '{words[0] if words else ''}'"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        try:
            while line := await reader.readline():
                writer.write(self.answer(line.decode(errors="replace")).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._clients):
            writer.close()
        await self._server.wait_closed()
        self._server = None
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
