"""The baseline for panicd's latency: the least a qemu.qmp program can do on a panic.

Connects to one QMP socket; on every GUEST_PANICKED sends query-status (the first command,
as panicd's `pause` step does), then cont, so the next panic is a new one. Runs until killed.
"""

import asyncio
import sys

from qemu.qmp import QMPClient


async def main(path: str) -> None:
    client = QMPClient("minimal")
    await client.connect(path)
    print("ready", flush=True)
    with client.listener("GUEST_PANICKED") as listener:
        while True:
            await listener.get()
            await client.execute("query-status")
            await client.execute("cont")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
