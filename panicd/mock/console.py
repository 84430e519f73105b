"""The mock guest's serial console: what a Linux guest prints there when it panics.

A real guest's kernel prints its crash report (the WARNING or Oops, the registers, the call
trace, `Kernel panic - not syncing: ...`) on its console before its pvpanic driver tells QEMU,
and QEMU's `-serial file:PATH` keeps it. The mock writes such a report (Linux 6.1 on x86-64,
timestamps and all) to its console file when its pvpanic port reports a panic, so that a
configuration's `console_log` and panicd's crash titles can be tried without a VM. Each reset
starts a new boot there, as a real kernel's first line does (`Linux version ...`): the crash is
the previous boot's, and a console triage of the new boot finds none.
"""

from __future__ import annotations

import time
from pathlib import Path

#: `{name}` is the guest's name (dashes become underscores: a C identifier).
CRASH_REPORT = """\
[{t:12.6f}] ------------[ cut here ]------------
[{t:12.6f}] {name}: request queue corrupted
[{t:12.6f}] WARNING: CPU: 1 PID: 4242 at drivers/mock/{name}.c:118 {name}_handle_request+0x9d/0x140 [{name}]
[{t:12.6f}] Modules linked in: {name}(O) pvpanic_mmio pvpanic qemu_fw_cfg
[{t:12.6f}] CPU: 1 PID: 4242 Comm: kworker/1:2 Tainted: G           O      6.1.0-56-amd64 #1 Debian 6.1.192-2
[{t:12.6f}] Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
[{t:12.6f}] RIP: 0010:{name}_handle_request+0x9d/0x140 [{name}]
[{t:12.6f}] Call Trace:
[{t:12.6f}]  <TASK>
[{t:12.6f}]  {name}_work+0x2e/0x60 [{name}]
[{t:12.6f}]  process_one_work+0x1c7/0x380
[{t:12.6f}]  worker_thread+0x4d/0x380
[{t:12.6f}]  kthread+0xd7/0x100
[{t:12.6f}]  ret_from_fork+0x1f/0x30
[{t:12.6f}]  </TASK>
[{t:12.6f}] ---[ end trace 0000000000000000 ]---
[{t:12.6f}] Kernel panic - not syncing: kernel: panic_on_warn set ...
"""


BOOT_BANNER = ("[    0.000000] Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) "
               "(gcc-12 (Debian 12.2.0-14) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP "
               "PREEMPT_DYNAMIC Debian 6.1.192-2\n")


class SerialConsole:
    """A console log file the mock guest appends to, as QEMU's `-serial file:` does."""

    def __init__(self, path: Path, guest_name: str | None) -> None:
        self.path = path
        self.name = (guest_name or "mock").replace("-", "_")
        self._booted = time.monotonic()

    def booted(self) -> None:
        """The guest was reset: its next boot's first line."""
        self._booted = time.monotonic()
        with self.path.open("a", encoding="utf-8") as console:
            console.write(BOOT_BANNER)

    def kernel_panicked(self) -> None:
        """Print the crash report a panicking kernel prints before it tells pvpanic."""
        uptime = time.monotonic() - self._booted + 1.0
        with self.path.open("a", encoding="utf-8") as console:
            console.write(CRASH_REPORT.format(t=uptime, name=self.name))
