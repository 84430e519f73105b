"""Crash titles: scored on syzkaller's real reports, each crash kind by hand, and fuzzed."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from panicd.triage import console
from panicd.triage.console import kernel_lines
from panicd.triage.rust_demangle import demangle, demangle_itanium
from panicd.triage.title import MAX_TITLE, CrashTitle, crash_title, signature_of, title_of_log
from tests.syzkaller_reports import REPORTS_DIR, SyzReport, load_reports, same_class_and_function, score

# --- (1) the thresholds, on syzkaller's reports -----------------------------------------


@pytest.fixture(scope="module")
def syzkaller_score() -> object:
    if not (REPORTS_DIR / "reports").is_dir():
        missing = (f"syzkaller's reports are missing: {REPORTS_DIR}/reports (the checkout must "
                   "sit beside ../shared/, as CI has it)")
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    return score(load_reports(), title_of_log)


def test_titles_match_syzkaller_on_most_crash_reports(syzkaller_score: object) -> None:
    result = syzkaller_score
    assert result.scored > 300  # type: ignore[attr-defined]
    assert result.exact_ratio >= 0.85, result.as_dict()  # type: ignore[attr-defined]


def test_titles_name_syzkaller_bug_class_and_function(syzkaller_score: object) -> None:
    assert syzkaller_score.class_function_ratio >= 0.95, syzkaller_score.as_dict()  # type: ignore[attr-defined]


def test_logs_without_a_crash_get_almost_no_title(syzkaller_score: object) -> None:
    assert syzkaller_score.no_crash_logs == 24  # type: ignore[attr-defined]
    assert syzkaller_score.false_titles <= 1  # type: ignore[attr-defined]


def test_titling_a_log_takes_under_5_ms_on_average(syzkaller_score: object) -> None:
    assert syzkaller_score.mean_ms < 5.0  # type: ignore[attr-defined]


# --- (2) each crash kind, on small hand-written logs ----------------------------------------------

TASK = """CPU: 0 PID: 1 Comm: sh Tainted: G           O       6.1.0-18-amd64 #1  Debian 6.1.76-1
Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.2-debian-1.16.2-1 04/01/2014
"""

NULL_DEREF = """BUG: kernel NULL pointer dereference, address: 0000000000000000
#PF: supervisor write access in kernel mode
#PF: error_code(0x0002) - not-present page
Oops: 0002 [#1] PREEMPT SMP NOPTI
""" + TASK + """RIP: 0010:panicd_crash_null+0x5/0x10 [panicd_crash]
Code: 00 00 00 00 <c7> 04 25 00 00 00 00 01 00 00 00
RSP: 0018:ffffb3a0c0013e40 EFLAGS: 00010246
Call Trace:
 <TASK>
 ? __die+0x1f/0x70
 ? page_fault_oops+0x171/0x4e0
 ? exc_page_fault+0x77/0x170
 ? asm_exc_page_fault+0x26/0x30
 param_attr_store+0x9a/0x100
 module_attr_store+0x1c/0x30
 kernfs_fop_write_iter+0x132/0x1c0
 vfs_write+0x23b/0x400
 ksys_write+0x6f/0xf0
 do_syscall_64+0x58/0xc0
 entry_SYSCALL_64_after_hwframe+0x64/0xce
 </TASK>
Modules linked in: panicd_crash(O)
CR2: 0000000000000000
---[ end trace 0000000000000000 ]---
Kernel panic - not syncing: Fatal exception
"""

KERNEL_BUG = """kernel BUG at drivers/misc/panicd_crash.c:12!
invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
""" + TASK + """RIP: 0010:panicd_crash_bug+0x1/0x2 [panicd_crash]
Call Trace:
 <TASK>
 ? die+0x36/0x90
 ? do_trap+0xda/0x100
 ? exc_invalid_op+0x50/0x70
 param_attr_store+0x9a/0x100
 </TASK>
Kernel panic - not syncing: Fatal exception
"""

WARN = """WARNING: CPU: 0 PID: 1 at drivers/misc/panicd_crash.c:3 panicd_crash_warn+0x1/0x2 [panicd_crash]
Modules linked in: panicd_crash(O)
""" + TASK + """RIP: 0010:panicd_crash_warn+0x1/0x2 [panicd_crash]
Kernel panic - not syncing: kernel: panic_on_warn set ...
Call Trace:
 <TASK>
 dump_stack_lvl+0x44/0x5c
 panic+0x118/0x2ed
 check_panic_on_warn.cold+0x14/0x14
 __warn+0x81/0x130
 report_bug+0x191/0x1c0
 handle_bug+0x3c/0x70
 exc_invalid_op+0x17/0x70
 param_attr_store+0x9a/0x100
 </TASK>
"""

SYSRQ = """sysrq: Trigger a crash
Kernel panic - not syncing: sysrq triggered crash
""" + TASK + """Call Trace:
 <TASK>
 dump_stack_lvl+0x44/0x5c
 panic+0x118/0x2ed
 sysrq_handle_crash+0x16/0x20
 __handle_sysrq.cold+0x43/0x11b
 write_sysrq_trigger+0x24/0x40
 </TASK>
Kernel Offset: 0x2a000000 from 0xffffffff81000000 (relocation range: 0xffffffff80000000-0xffffffffbfffffff)
"""

KILL_INIT = """Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100
""" + TASK + """Call Trace:
 <TASK>
 dump_stack_lvl+0x44/0x5c
 panic+0x118/0x2ed
 do_exit.cold+0x15/0xa0
 do_group_exit+0x2d/0x80
 </TASK>
"""

KASAN = """==================================================================
BUG: KASAN: slab-use-after-free in my_driver_read+0x41/0x60 drivers/char/my.c:88
Read of size 4 at addr ffff888012345678 by task cat/4242

""" + TASK + """Call Trace:
 <TASK>
 __dump_stack lib/dump_stack.c:88 [inline]
 dump_stack_lvl+0xd9/0x1b0 lib/dump_stack.c:106
 print_report+0xc4/0x620 mm/kasan/report.c:475
 kasan_report+0xda/0x110 mm/kasan/report.c:588
 my_driver_read+0x41/0x60 drivers/char/my.c:88
 vfs_read+0x1ce/0x8f0 fs/read_write.c:468
 </TASK>

Allocated by task 4000:
 kmalloc include/linux/slab.h:600 [inline]
 my_driver_open+0x22/0x80 drivers/char/my.c:40
"""

KASAN_IN_HELPER = """BUG: KASAN: global-out-of-bounds in memcpy+0x20/0x60
Write of size 16 at addr ffffffff8a000000 by task sh/1

Call Trace:
 dump_stack+0x1/0x2
 kasan_report+0x1/0x2
 memcpy+0x20/0x60
 frob_buffer+0x10/0x40
"""

GPF = """general protection fault, probably for non-canonical address 0xdffffc0000000003: 0000 [#1] SMP
KASAN: null-ptr-deref in range [0x0000000000000018-0x000000000000001f]
""" + TASK + """RIP: 0010:tipc_frob+0x16/0x40 net/tipc/frob.c:12
Call Trace:
 <TASK>
 tipc_caller+0x1/0x2
 </TASK>
"""

PAGING = """BUG: unable to handle page fault for address: ffffc90000a1c000
#PF: supervisor read access in kernel mode
Oops: 0000 [#1] SMP
RIP: 0010:[<ffffffff81234567>] walk_things+0x10/0x50
"""

OLD_IP = """BUG: unable to handle kernel paging request at 00000000ffffff8a
IP: [<ffffffff810a376f>] frob_rcu.constprop.76+0x1f/0x280 kernel/rcu/tree.c:3046
Oops: 0002 [#1] SMP
"""

REFCOUNT = """refcount_t: underflow; use-after-free.
WARNING: CPU: 1 PID: 22 at lib/refcount_t.c:28 refcount_warn_saturate+0xba/0x110
Call Trace:
 <TASK>
 sock_put_thing+0x33/0x40
 </TASK>
"""

LOCKING_WARNING = """WARNING: CPU: 0 PID: 3 at kernel/locking/lockdep.c:734 register_lock_class+0xe10/0x1860
Call Trace:
 __lock_acquire+0x1/0x2
 lock_acquire+0x1/0x2
 _raw_spin_lock_bh+0x1/0x2
 frob_autobind+0x1/0x2
"""

DEADLOCK = """======================================================
WARNING: possible circular locking dependency detected
6.1.0 #1 Not tainted
------------------------------------------------------
sh/123 is trying to acquire lock:
ffff888012345678 (&dev->mutex){+.+.}-{3:3}, at: frob_ioctl+0x1e/0x40

but task is already holding lock:
ffff888087654321 (&other->lock){+.+.}-{3:3}, at: frob_open+0x109/0x140
"""

RCU_STALL = """rcu: INFO: rcu_preempt self-detected stall on CPU
rcu: 	0-....: (10500 ticks this GP) idle=f4c/1/0x4000000000000000
Call Trace:
 <IRQ>
 rcu_sched_clock_irq+0x1/0x2
 update_process_times+0x1/0x2
 tick_sched_timer+0x1/0x2
 __hrtimer_run_queues+0x1/0x2
 hrtimer_interrupt+0x1/0x2
 sysvec_apic_timer_interrupt+0x1/0x2
 </IRQ>
 <TASK>
 asm_sysvec_apic_timer_interrupt+0x1/0x2
RIP: 0010:spin_in_loop+0x1/0x2
 spin_in_loop+0x1/0x2
 frob_write+0x1/0x2
 vfs_write+0x1/0x2
 ksys_write+0x1/0x2
 do_syscall_64+0x1/0x2
 </TASK>
"""

SOFT_LOCKUP = """watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [syz-executor.3:4242]
Modules linked in:
RIP: 0010:_raw_spin_unlock_irqrestore+0x1/0x2
Call Trace:
 <TASK>
 frob_queue_drain+0x1/0x2
 __x64_sys_frobnicate+0x1/0x2
 do_syscall_64+0x1/0x2
 </TASK>
"""

HUNG = """INFO: task kworker/0:1:77 blocked for more than 143 seconds.
      Not tainted 6.1.0 #1
"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.
task:kworker/0:1     state:D stack:0     pid:77    ppid:2      flags:0x00004000
Call Trace:
 <TASK>
 __schedule+0x1/0x2
 schedule+0x1/0x2
 schedule_preempt_disabled+0x1/0x2
 __mutex_lock+0x1/0x2
 frob_lock+0x1/0x2
 frob_work+0x1/0x2
 process_one_work+0x1/0x2
 </TASK>
"""

LEAK = """BUG: memory leak
unreferenced object 0xffff888012345600 (size 64):
  comm "sh", pid 42, jiffies 4294937296 (age 12.340s)
  hex dump (first 32 bytes):
    00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................
  backtrace:
    [<ffffffff81234567>] kmemleak_alloc+0x1/0x2
    [<ffffffff81234568>] kmalloc_trace+0x1/0x2
    [<ffffffff81234569>] frob_create+0x1/0x2
    [<ffffffff8123456a>] do_frob+0x1/0x2
"""

UBSAN = """UBSAN: array-index-out-of-bounds in drivers/frob/frob.c:12:3
index 9 is out of range for type 'int [8]'
Call Trace:
 dump_stack_lvl+0x1/0x2
 ubsan_epilogue+0x1/0x2
 __ubsan_handle_out_of_bounds+0x1/0x2
 frob_index+0x1/0x2
"""

ARM64_PAGING = """Unable to handle kernel paging request at virtual address dfff800000000004
Mem abort info:
Internal error: Oops: 0000000096000005 [#1] PREEMPT SMP
pc : frob_arm+0x24/0x90
lr : frob_caller+0x1/0x2
Call trace:
 frob_arm+0x24/0x90
 frob_caller+0x1/0x2
"""

STACK_PROTECTOR = (
    "Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: frob_parse+0x7ea/0x7f0\n")

DOUBLE_FAULT = """PANIC: double fault, error_code: 0x0
RIP: 0010:frob_recursive+0x1/0x2
"""

SLEEPING = """BUG: sleeping function called from invalid context at kernel/locking/mutex.c:580
in_atomic(): 1, irqs_disabled(): 0, non_block: 0, pid: 1, name: sh
Call Trace:
 dump_stack_lvl+0x1/0x2
 __might_resched+0x1/0x2
 __mutex_lock+0x1/0x2
 frob_atomic_path+0x1/0x2
"""

NEW_WARNING = """WARNING: fs/frob/frob.c:1058 at frob_update_ref+0x125d/0x1630, CPU#1: syz.9.803/11907
Modules linked in:
"""


@pytest.mark.parametrize(("log", "title"), [
    (NULL_DEREF, "BUG: unable to handle kernel NULL pointer dereference in panicd_crash_null"),
    (KERNEL_BUG, "kernel BUG in panicd_crash_bug"),
    (WARN, "WARNING in panicd_crash_warn"),
    (SYSRQ, "kernel panic: sysrq triggered crash"),
    (KILL_INIT, "kernel panic: Attempted to kill init!"),
    (KASAN, "KASAN: slab-use-after-free Read in my_driver_read"),
    (KASAN_IN_HELPER, "KASAN: global-out-of-bounds Write in frob_buffer"),
    (GPF, "general protection fault in tipc_frob"),
    (PAGING, "BUG: unable to handle kernel paging request in walk_things"),
    (OLD_IP, "BUG: unable to handle kernel paging request in frob_rcu"),
    (REFCOUNT, "WARNING: refcount bug in sock_put_thing"),
    (LOCKING_WARNING, "WARNING: locking bug in frob_autobind"),
    (DEADLOCK, "possible deadlock in frob_ioctl"),
    (RCU_STALL, "INFO: rcu detected stall in frob_write"),
    (SOFT_LOCKUP, "BUG: soft lockup in sys_frobnicate"),
    (HUNG, "INFO: task hung in frob_lock"),
    (LEAK, "memory leak in frob_create"),
    (UBSAN, "UBSAN: array-index-out-of-bounds in frob_index"),
    (ARM64_PAGING, "BUG: unable to handle kernel paging request in frob_arm"),
    (STACK_PROTECTOR, "kernel panic: stack is corrupted in frob_parse"),
    (DOUBLE_FAULT, "PANIC: double fault in frob_recursive"),
    (SLEEPING, "BUG: sleeping function called from invalid context in frob_atomic_path"),
    (NEW_WARNING, "WARNING in frob_update_ref"),
])
def test_each_crash_kind_gets_its_title(log: str, title: str) -> None:
    crash = title_of_log(log)
    assert crash is not None
    assert crash.title == title
    assert not crash.corrupted


def test_a_frame_in_a_module_blames_the_function_not_the_module() -> None:
    crash = title_of_log(NULL_DEREF)
    assert crash is not None
    assert crash.frame == "panicd_crash_null"
    assert crash.kind == "BUG: unable to handle kernel NULL pointer dereference"


def test_a_panic_is_of_kind_kernel_panic_and_blames_no_frame() -> None:
    crash = title_of_log(SYSRQ)
    assert crash == CrashTitle("kernel panic: sysrq triggered crash", "kernel panic", None, corrupted=False,
                               crash_type="DoS")


def test_a_report_that_lacks_the_stack_it_needs_is_corrupted() -> None:
    crash = title_of_log("general protection fault: 0000 [#1] SMP KASAN\nModules linked in:\n")
    assert crash is not None
    assert crash.title == "general protection fault in corrupted"
    assert crash.corrupted
    assert crash.frame is None


def test_a_log_without_a_crash_gets_no_title() -> None:
    boot = "Linux version 6.1.0-18-amd64\nINFO: lockdep is turned off.\nsysrq: Show Memory\n"
    assert title_of_log(boot) is None
    assert title_of_log("") is None


def test_titles_fold_pids_addresses_lines_and_numbers() -> None:
    one = title_of_log("Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(8,1)")
    two = title_of_log("Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(253,7)")
    assert one is not None and two is not None
    assert one.title == two.title == "kernel panic: VFS: Unable to mount root fs on unknown-block(NUM,NUM)"
    addr = title_of_log("Kernel panic - not syncing: bad thing at ffff888012345678 in x.c:123 pid 4242")
    assert addr is not None
    assert addr.title == "kernel panic: bad thing at ADDR in x.c:LINE pid NUM"


def test_a_signature_is_the_first_16_hex_digits_of_the_titles_sha256() -> None:
    crash = title_of_log(SYSRQ)
    assert crash is not None
    assert crash.signature == signature_of("kernel panic: sysrq triggered crash")
    assert crash.signature == hashlib.sha256(b"kernel panic: sysrq triggered crash").hexdigest()[:16]


# --- (3) console prefixes and bare records give one title ----------------------------------------

def _with_prefixes(log: str, style: str) -> str:
    out = []
    for n, line in enumerate(log.splitlines()):
        stamp = f"[{12 + n / 1000:>12.6f}]"
        out.append({
            "serial": f"{stamp}[    T1] {line}\r",
            "dmesg": f"{stamp} {line}",
            "cpu": f"{stamp}[    C0] {line}",
            "journal": f"Nov 26 12:00:{n % 60:02d} web-01 kernel: {line}",
            "level": f"<4>{stamp} {line}",
            "ansi": f"\x1b[32m{stamp}\x1b[0m {line}",
            # journalctl -k -o short-precise / short-monotonic / short-full / short-unix
            "short-precise": f"Nov 26 12:00:{n % 60:02d}.{n:06d} web-01 kernel: {line}",
            "short-monotonic": f"{stamp} web-01 kernel: {line}",
            "short-full": f"Thu 2026-11-26 12:00:{n % 60:02d} UTC web-01 kernel: {line}",
            "short-unix": f"1764158400.{n:06d} web-01 kernel: {line}",
            # dmesg --time-format iso; dmesg -x (--decode), without and with a timestamp
            "dmesg-iso": f"2026-11-26T12:00:{n % 60:02d},{n:06d}+00:00 {line}",
            "dmesg-decode": f"kern  :{'emerg' if n == 0 else 'warn':<6}: {line}",
            "dmesg-decode-stamp": f"kern  :warn  : {stamp} {line}",
        }[style])
    return "\n".join(out)


@pytest.mark.parametrize("style", ["serial", "dmesg", "cpu", "journal", "level", "ansi"])
@pytest.mark.parametrize("log", [NULL_DEREF, KERNEL_BUG, WARN, SYSRQ, KASAN, HUNG, RCU_STALL])
def test_console_prefixes_do_not_change_the_title(log: str, style: str) -> None:
    bare = crash_title(log.splitlines())
    assert bare is not None
    assert title_of_log(_with_prefixes(log, style)) == bare
    assert title_of_log(_with_prefixes(log, style).encode()) == bare


def test_console_lines_lose_only_their_prefix() -> None:
    lines = kernel_lines(b"[   12.345678][ T1234]  ? foo+0x1/0x2\r\n<6>[    1.000000] sysrq: x\n\xff\xfe")
    assert lines == [" ? foo+0x1/0x2", "sysrq: x", "\ufffd\ufffd"]


# --- (4) hostile input ----------------------------------------------------------------------------

def _real_lines() -> list[str]:
    return [line for log in (NULL_DEREF, KASAN, WARN, HUNG, RCU_STALL, LEAK, DEADLOCK) for line in
            log.splitlines()]


def _check(result: CrashTitle | None) -> None:
    if result is not None:
        assert len(result.title) <= MAX_TITLE
        assert not any(unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"} for c in result.title)
        assert len(result.signature) == 16


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes_never_raise(data: bytes) -> None:
    _check(title_of_log(data))


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_real_lines()), st.text(max_size=40), st.integers(0, 200)),
                max_size=60))
def test_spliced_real_lines_never_raise(pieces: list[tuple[str, str, int]]) -> None:
    lines = [line[:cut] + noise + line[cut:] for line, noise, cut in pieces]
    _check(crash_title(lines))
    _check(title_of_log("\n".join(lines)))


@pytest.mark.parametrize("hostile", [
    "BUG: KASAN: " + "a-" * 200_000 + " in f",
    "[" * 1_000_000,
    "Kernel panic - not syncing: " + "9" * 300_000,
    "WARNING: CPU: 0 PID: 1 at " + "x" * 500_000 + " f+0x1/0x2",
    "general protection fault\n" + " ? f+0x1/0x2\n" * 200_000,
    ("INFO: task " + "a" * 70 + " blocked for more than 1 seconds.\n") * 10_000,
    "Kernel panic - not syncing: " + "\x1b[" * 100_000,
    " [<ffffffff81000000>] " * 50_000,
])
def test_huge_hostile_logs_are_titled_fast(hostile: str) -> None:
    started = time.perf_counter()
    _check(title_of_log(hostile))
    assert time.perf_counter() - started < 2.0


def test_numbers_cannot_mint_unbounded_titles() -> None:
    titles = {title_of_log(f"Kernel panic - not syncing: oops {n} at {n:#x}{n:08x} pid {n}")
              for n in range(1000)}
    assert len(titles) == 1


# --- (5) the class+function yardstick --------------------------------------------------------------

def _syz(title: str, *alts: str, crash_type: str | None = None, frame: str | None = None) -> SyzReport:
    return SyzReport("t", b"", title, alts, corrupted=False, crash_type=crash_type, frame=frame)


def test_class_and_function_forgive_wording_but_not_class_or_frame() -> None:
    ours = CrashTitle("KASAN: use-after-free Read in f", "KASAN: use-after-free Read", "f", False,
                      crash_type="KASAN-USE-AFTER-FREE-READ")
    # syzkaller's newer wording of the same bug: same class, same function
    assert same_class_and_function(_syz("KASAN: slab-use-after-free Read in f",
                                        crash_type="KASAN-USE-AFTER-FREE-READ"), ours)
    assert not same_class_and_function(_syz("KASAN: use-after-free Read in g",
                                            crash_type="KASAN-USE-AFTER-FREE-READ"), ours)
    assert not same_class_and_function(_syz("KASAN: use-after-free Write in f",
                                            crash_type="KASAN-USE-AFTER-FREE-WRITE"), ours)
    # FRAME: wins over the title's function; an ALT's function counts
    assert same_class_and_function(_syz("x in g", crash_type="KASAN-USE-AFTER-FREE-READ", frame="f"), ours)
    assert same_class_and_function(_syz("x in g", "x in f", crash_type="KASAN-USE-AFTER-FREE-READ"), ours)


def test_a_title_without_a_function_needs_no_frame_and_the_same_text() -> None:
    panic = title_of_log(SYSRQ)
    assert panic is not None
    assert same_class_and_function(_syz("kernel panic: sysrq triggered crash", crash_type="DoS"), panic)
    assert not same_class_and_function(_syz("kernel panic: Attempted to kill init!", crash_type="DoS"), panic)


@pytest.mark.parametrize(("log", "crash_type"), [
    (KASAN, "KASAN-USE-AFTER-FREE-READ"),
    (KASAN_IN_HELPER, "KASAN-WRITE"),
    ("BUG: KFENCE: out-of-bounds write in frob+0x1/0x2\n", "KFENCE-WRITE"),
    (HUNG, "HANG"), (RCU_STALL, "HANG"), (DEADLOCK, "LOCKDEP"), (WARN, "WARNING"),
    (REFCOUNT, "REFCOUNT_WARNING"),
    (SYSRQ, "DoS"), (NULL_DEREF, "NULL-POINTER-DEREFERENCE"), (PAGING, "MEMORY_SAFETY_BUG"),
    (UBSAN, "MEMORY_SAFETY_UBSAN"), (LEAK, "LEAK"), (SLEEPING, "ATOMIC_SLEEP"),
    ("BUG: stack guard page was hit at 0000 (stack is 0..1)\nRIP: 0010:frob+0x1/0x2\n", None),
])
def test_each_kind_has_syzkallers_bug_class(log: str, crash_type: str | None) -> None:
    crash = title_of_log(log)
    assert crash is not None
    assert crash.crash_type == crash_type


# --- (6) frame rules: each family on a small log written for it ----------------------------------

def test_a_stall_is_blamed_on_what_the_timer_interrupt_found_running() -> None:
    # The timer landed inside a softirq's packet handler: that handler stalls, not the syscall
    # the softirq happened to interrupt (seen after <EOI>).
    log = """INFO: rcu_sched self-detected stall on CPU
Call Trace:
 <IRQ>
 rcu_check_callbacks+0x1/0x2
 update_process_times+0x1/0x2
 hrtimer_interrupt+0x1/0x2
 smp_apic_timer_interrupt+0x1/0x2
 apic_timer_interrupt+0x1/0x2
 frob_parse_options+0x1/0x2
 frob_rcv+0x1/0x2
 __netif_receive_skb_core+0x1/0x2
 net_rx_action+0x1/0x2
 __do_softirq+0x1/0x2
 <EOI>
 frob_sendmsg+0x1/0x2
 do_syscall_64+0x1/0x2
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "INFO: rcu detected stall in frob_rcv"


def test_a_stall_waiting_on_a_cross_cpu_call_is_titled_smp_call_function() -> None:
    log = """INFO: rcu_preempt detected stalls on CPUs/tasks:
Call Trace:
 <IRQ>
 update_process_times+0x1/0x2
 sysvec_apic_timer_interrupt+0x1/0x2
 </IRQ>
 asm_sysvec_apic_timer_interrupt+0x1/0x2
RIP: 0010:smp_call_function_single+0x311/0x450
 on_each_cpu+0x4d/0x1f0
 frob_flush_all+0x1/0x2
 __x64_sys_frob+0x1/0x2
 do_syscall_64+0x1/0x2
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "INFO: rcu detected stall in smp_call_function"


def test_a_stalled_work_item_with_only_unreliable_frames_is_named_by_its_worker() -> None:
    log = """INFO: rcu_sched self-detected stall on CPU
Workqueue: events frob_poll_work
Call Trace:
 <IRQ>
 update_process_times+0x1/0x2
 apic_timer_interrupt+0x1/0x2
 </IRQ>
 ? frob_poll_work+0x1/0x2
 process_one_work+0x1/0x2
 worker_thread+0x1/0x2
 kthread+0x1/0x2
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "INFO: rcu detected stall in frob_poll_work"


def test_a_stall_under_a_file_open_blames_the_files_open_method() -> None:
    log = RCU_STALL.replace(" frob_write+0x1/0x2\n vfs_write+0x1/0x2\n ksys_write+0x1/0x2\n",
                            " frob_open+0x1/0x2\n do_dentry_open+0x1/0x2\n vfs_open+0x1/0x2\n"
                            " do_sys_open+0x1/0x2\n")
    crash = title_of_log(log)
    assert crash is not None and crash.title == "INFO: rcu detected stall in frob_open"


HUNG_HEAD = """INFO: task frob:42 blocked for more than 143 seconds.
task:frob state:D stack:0 pid:42 ppid:1 flags:0x00004000
Call Trace:
 <TASK>
 __schedule+0x1/0x2
 schedule+0x1/0x2
 schedule_timeout+0x1/0x2
"""


@pytest.mark.parametrize(("frames", "title"), [
    # RCU's own machinery is skipped; the grace-period wait a caller asked for is kept
    (" __mutex_lock+0x1/0x2\n rcu_barrier+0x1/0x2\n frob_teardown+0x1/0x2\n", "frob_teardown"),
    (" wait_for_completion+0x1/0x2\n __wait_rcu_gp+0x1/0x2\n synchronize_rcu+0x1/0x2\n frob_del+0x1/0x2\n",
     "synchronize_rcu"),
    # a subsystem's lock is named; the console lock (printk's) hands the blame to its caller
    (" __mutex_lock+0x1/0x2\n rtnl_lock+0x1/0x2\n frob_ioctl+0x1/0x2\n", "rtnl_lock"),
    (" __down+0x1/0x2\n down+0x1/0x2\n console_lock+0x1/0x2\n frob_console_open+0x1/0x2\n",
     "frob_console_open"),
    # blocked inside an API's body: the API is named
    (" io_schedule+0x1/0x2\n folio_wait_bit_common+0x1/0x2\n do_frob_cache+0x1/0x2\n frob_cache+0x1/0x2\n"
     " frob_read+0x1/0x2\n", "frob_cache"),
])
def test_a_hung_task_names_what_it_waits_for(frames: str, title: str) -> None:
    crash = title_of_log(HUNG_HEAD + frames)
    assert crash is not None and crash.title == f"INFO: task hung in {title}"


def test_a_hung_task_whose_name_splits_the_header_is_still_titled() -> None:
    log = HUNG_HEAD.replace("INFO: task frob:42 blocked", "INFO: task fr\nob:42 blocked") + \
        " __flush_work+0x1/0x2\n frob_close+0x1/0x2\n"
    crash = title_of_log(log)
    assert crash is not None and crash.title == "INFO: task hung in frob_close"


def test_lockdep_blames_a_subsystems_lock_function_at_the_acquire_site() -> None:
    log = DEADLOCK.replace("at: frob_ioctl+0x1e/0x40", "at: frob_subsys_lock+0x17/0x20")
    crash = title_of_log(log)
    assert crash is not None and crash.title == "possible deadlock in frob_subsys_lock"


def test_lockdep_on_a_workqueue_pseudo_lock_blames_the_held_locks_site() -> None:
    log = DEADLOCK.replace("(&dev->mutex){+.+.}-{3:3}, at: frob_ioctl+0x1e/0x40",
                           "((wq_completion)frob){+.+.}-{0:0}, at: flush_workqueue+0xe6/0x1520")
    crash = title_of_log(log)
    assert crash is not None and crash.title == "possible deadlock in frob_open"


def test_an_irq_safe_to_unsafe_order_blames_where_the_lock_became_irq_safe() -> None:
    log = """WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected
sh/1 [HC0[0]:SC0[0]:HE0:SE1] is trying to acquire:
ffff888012345678 (&a->lock){.?.+}-{2:2}, at: frob_fasync+0x1/0x2

and this task is already holding:
ffff888012345679 (&b->lock){....}-{2:2}, at: frob_pass+0x1/0x2
... which became HARDIRQ-irq-safe at:
  lock_acquire+0x1/0x2
  _raw_spin_lock_irqsave+0x1/0x2
  frob_irq_event+0x1/0x2
  frob_interrupt+0x1/0x2
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "possible deadlock in frob_irq_event"


@pytest.mark.parametrize(("helper", "kind"), [
    ("frob_write_lock", "lock wrapper"),
    ("__task_rq_lock", "lock wrapper"),
    ("filemap_get_folio", "page cache"),
    ("find_lock_entries", "page cache"),
    ("alloc_pages_noprof", "allocator"),
    ("iput", "VFS reference"),
    ("fast_dput", "VFS reference"),
    ("drop_nlink", "VFS reference"),
    ("mark_buffer_dirty", "VFS reference"),
    ("sk_stop_timer_sync", "timer"),
])
def test_a_fault_in_a_generic_helper_blames_its_caller(helper: str, kind: str) -> None:
    log = f"""general protection fault: 0000 [#1] SMP KASAN
RIP: 0010:{helper}+0x16/0x40
Call Trace:
 {helper}+0x16/0x40
 frob_the_thing+0x1/0x2
 vfs_write+0x1/0x2
"""
    crash = title_of_log(log)
    assert crash is not None, kind
    assert crash.title == "general protection fault in frob_the_thing", kind


def test_a_lock_wrapper_is_blamed_when_a_task_sleeps_in_it_in_atomic_context() -> None:
    log = SLEEPING.replace(" __mutex_lock+0x1/0x2\n", " __mutex_lock+0x1/0x2\n frob_lock+0x1/0x2\n")
    crash = title_of_log(log)
    assert crash is not None and crash.frame == "frob_lock"


def test_the_frame_printed_as_preemption_context_is_not_the_stack() -> None:
    log = """BUG: sleeping function called from invalid context at include/linux/sched/mm.h:201
Preemption disabled at:
[<ffffffff8709e980>] frob_xmit+0x1f0/0x2e30
Call Trace:
 dump_stack+0x1/0x2
 ___might_sleep+0x1/0x2
 kmem_cache_alloc_node+0x1/0x2
 frob_alloc+0x1/0x2
"""
    crash = title_of_log(log)
    assert crash is not None and crash.frame == "frob_alloc"


def test_a_usb_urb_warning_names_the_caller_and_the_check() -> None:
    log = """WARNING: CPU: 0 PID: 12 at drivers/usb/core/urb.c:477 usb_submit_urb+0x119a/0x13c0
Call Trace:
 __warn+0x1/0x2
 report_bug+0x1/0x2
 usb_start_wait_urb+0x1/0x2
 usb_bulk_msg+0x1/0x2
 frob_write_reg+0x1/0x2
"""
    crash = title_of_log(log)
    assert crash is not None
    assert crash.title == "WARNING in frob_write_reg/usb_submit_urb"
    assert crash.frame == "frob_write_reg"


def test_a_compat_syscall_is_titled_with_the_bare_syscall_name() -> None:
    log = SOFT_LOCKUP.replace("__x64_sys_frobnicate", "compat_SyS_frobnicate")
    crash = title_of_log(log)
    assert crash is not None and crash.title == "BUG: soft lockup in frobnicate"


RUST_OVERFLOW = """rust_kernel: panicked at drivers/frob/frob.rs:877:13:
attempt to subtract with overflow
Call Trace:
 <TASK>
 dump_stack_lvl+0x1/0x2
 panic+0x1/0x2
 _RNvCscSpY9Juk0HT_7___rustc17rust_begin_unwind+0x15b/0x160
 _RNvNtCs9jEwPDbx20M_4core9panicking9panic_fmt+0x84/0x90
 _RNvNtNtCs9jEwPDbx20M_4core9panicking11panic_const24panic_const_sub_overflow+0xb2/0xc0
 _RNvMs3_NtCshgDM7dBCdno_4frob7processNtB5_7Process10update_ref+0x17e5/0x1860
 </TASK>
"""


def test_a_rust_panic_blames_the_demangled_rust_function() -> None:
    crash = title_of_log(RUST_OVERFLOW)
    assert crash is not None
    assert crash.title == "attempt to subtract with overflow in <frob::process::Process>::update_ref"


@pytest.mark.parametrize(("symbol", "name"), [
    ("_RNvCs_3foo3bar", "foo::bar"),
    ("_RNvMs3_NtCshgDM7dBCdno_4frob7processNtB5_7Process10update_ref",
     "<frob::process::Process>::update_ref"),
    ("_RNvXs1_CscPPBqWtAqum_4drvrNtB5_4DrvrNtNtCs43vyB533jt3_6kernel4misc4Misc4mmap",
     "<drvr::Drvr as kernel::misc::Misc>::mmap"),
    ("_RNvB2_1a", None),          # a back-reference to itself
    ("_RNvNvNvNvB0_1a1b1c1d", None),
    ("_RNvCs_99foo", None),       # an identifier longer than the symbol
    ("_RINvCs_3foo3barpE", None),  # generic arguments: not handled, kept mangled
    ("_R" + "N" * 300, None),     # nesting deeper than allowed
    ("notrust", None),
])
def test_rust_symbols_demangle_or_are_left_alone(symbol: str, name: str | None) -> None:
    assert demangle(symbol) == name


@settings(max_examples=300, deadline=1000)
@given(st.text(alphabet="_RNvCMXYBIsu0123456789abcdefxyzABZ", max_size=120))
def test_demangling_any_string_never_raises(symbol: str) -> None:
    result = demangle("_R" + symbol)
    assert result is None or len(result) < 10_000


def test_a_log_of_several_boots_is_titled_by_its_last_boots_crash() -> None:
    log = "Linux version 6.1.0\n" + KERNEL_BUG + "Linux version 6.1.0\n" + WARN
    crash = title_of_log(log)
    assert crash is not None and crash.title == "WARNING in panicd_crash_warn"
    # the lines given to crash_title are titled by their first crash
    first = crash_title(kernel_lines(KERNEL_BUG + WARN))
    assert first is not None and first.title == "kernel BUG in panicd_crash_bug"


def test_a_last_boot_without_a_crash_gets_no_title() -> None:
    log = "Linux version 6.1.0\n" + KERNEL_BUG + "Linux version 6.1.0\nsystemd[1]: ok\n"
    assert title_of_log(log) is None


# --- (3) rule families added for the last stretch of issue 10 -------------------------------------


def test_an_old_x86_rip_line_with_two_addresses_names_the_faulting_function() -> None:
    log = """kernel BUG at arch/x86/kvm/mmu.c:1284!
invalid opcode: 0000 [#1] SMP KASAN
RIP: 0010:[<ffffffff810d9c93>]  [<ffffffff810d9c93>] frob_remove+0x3b3/0x3d0
Call Trace:
 [<ffffffff810ec8b2>] frob_caller+0x162/0x260
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "kernel BUG in frob_remove"


@pytest.mark.parametrize(("level", "crash_type"), [("WARNING", "LOCKDEP"), ("INFO", None)])
def test_only_the_warning_form_of_suspicious_rcu_usage_is_classed_lockdep(
        level: str, crash_type: str | None) -> None:
    log = f"""{level}: suspicious RCU usage
include/linux/rcupdate.h:302 Illegal context switch in RCU read-side critical section!
stack backtrace:
Call Trace:
 dump_stack+0x1/0x2
 lockdep_rcu_suspicious+0x1/0x2
 frob_opt+0x1/0x2
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == f"{level}: suspicious RCU usage in frob_opt"
    assert crash.crash_type == crash_type


@pytest.mark.parametrize(("pc", "blamed"), [
    ("btrfs_assertfail", "frob_close"),          # an assertion-failure reporter: its caller
    ("assert_frob_presence", "assert_frob_presence"),  # a check of its own: the bug site
])
def test_assertion_reporters_are_skipped_but_checking_functions_are_blamed(pc: str, blamed: str) -> None:
    log = f"""kernel BUG at fs/frob/frob.h:12!
invalid opcode: 0000 [#1] SMP KASAN
RIP: 0010:{pc}+0x1/0x2
Call Trace:
 frob_close+0x1/0x2
 generic_shutdown_super+0x1/0x2
"""
    crash = title_of_log(log)
    assert crash is not None and crash.frame == blamed


@pytest.mark.parametrize("pc", ["iov_iter_advance", "qlist_free_all", "__unwind_start"])
def test_iterators_and_allocator_internals_are_blamed_for_their_own_faults(pc: str) -> None:
    # they walk structures of their own (an iov_iter, KASAN's quarantine, a task's stack);
    # they are not copy or allocation entry points a caller misused
    log = f"""general protection fault: 0000 [#1] SMP KASAN
RIP: 0010:{pc}+0x1/0x2
Call Trace:
 frob_caller+0x1/0x2
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == f"general protection fault in {pc}"


@pytest.mark.parametrize("helper", ["try_to_grab_pending", "logic_inb", "ioread32", "__raw_readb"])
def test_workqueue_cancel_internals_and_io_accessors_blame_their_caller(helper: str) -> None:
    log = f"""general protection fault: 0000 [#1] SMP KASAN
RIP: 0010:{helper}+0x16/0x40
Call Trace:
 {helper}+0x16/0x40
 frob_init+0x1/0x2
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "general protection fault in frob_init"


def test_a_warning_stack_starts_at_its_call_trace_not_at_interleaved_frames() -> None:
    log = """WARNING: CPU: 0 PID: 6092 at fs/proc/generic.c:330 proc_register+0x2a4/0x370
 ? other_cpu_helper+0x1/0x2
Kernel panic - not syncing: panic_on_warn set ...
 other_cpu_writer+0x17d0/0x3940
 other_cpu_write_iter+0xb9/0x160
Call Trace:
 dump_stack+0x1/0x2
 panic+0x1/0x2
 __warn+0x1/0x2
 proc_create_data+0x1/0x2
 frob_tg_check+0x1/0x2
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "WARNING: proc registration bug in frob_tg_check"


def test_an_arm64_syscall_is_dispatched_by_el0_svc_handler() -> None:
    log = """Kernel panic - not syncing: corrupted stack end detected inside scheduler
Call trace:
 dump_backtrace+0x0/0x2c8
 panic+0x1b8/0x31c
 schedule+0x0/0x240
 kmem_cache_alloc+0x2e0/0x3f8
 frob_alloc_security+0xc4/0x1b0
 __sys_frob+0xc8/0x178
 __arm64_sys_frob+0x4c/0x60
 el0_svc_handler+0xd4/0x198
 el0_svc+0x8/0xc
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "kernel panic: corrupted stack end in sys_frob"


STALL_HEAD = """rcu: INFO: rcu_preempt self-detected stall on CPU
rcu:  0-...!: (10499 ticks this GP) idle=bde/1/0x4000000000000000 softirq=233837/233838 fqs=1
"""


def test_a_stall_in_an_hrtimer_callback_blames_the_callback() -> None:
    log = STALL_HEAD + """Call Trace:
 <IRQ>
 rcu_sched_clock_irq+0x1/0x2
 update_process_times+0x1/0x2
 hrtimer_interrupt+0x1/0x2
 asm_sysvec_apic_timer_interrupt+0x12/0x20
 frob_fill_beacon+0x1/0x2
 frob_beacon+0xd5/0x1a0
 __hrtimer_run_queues+0x6a9/0xfc0
 hrtimer_run_softirq+0x17b/0x360
 __do_softirq+0x1f8/0xb23
 </IRQ>
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "INFO: rcu detected stall in frob_beacon"


def test_a_stall_under_a_protocols_setsockopt_blames_the_protocol_handler() -> None:
    # sock_common_setsockopt calls the protocol's own handler, like any dispatcher
    log = STALL_HEAD + """Call Trace:
 <IRQ>
 apic_timer_interrupt+0xf/0x20
 </IRQ>
 frob_loop+0x1/0x2
 frob_setsockopt+0xa0/0xb4
 sock_common_setsockopt+0x54/0x5c
 __sys_setsockopt+0xc8/0x17c
 __x64_sys_setsockopt+0x1/0x2
 do_syscall_64+0x1/0x2
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "INFO: rcu detected stall in frob_setsockopt"


def test_a_stall_in_recvmmsg_is_the_syscalls_not_a_protocol_handlers() -> None:
    # ____sys_recvmsg is the per-message loop body of recvmmsg, not a dispatcher
    log = STALL_HEAD + """Call Trace:
 <IRQ>
 apic_timer_interrupt+0xf/0x20
 </IRQ>
 frob_recvmsg+0x1/0x2
 inet_recvmsg+0x1/0x2
 ____sys_recvmsg+0x1/0x2
 do_recvmmsg+0x1/0x2
 __x64_sys_recvmmsg+0x1/0x2
 do_syscall_64+0x1/0x2
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "INFO: rcu detected stall in sys_recvmmsg"


def test_a_stall_waiting_in_on_each_cpu_is_a_stall_in_smp_call_function() -> None:
    # the PC inside the <IRQ> section (a WARNING raised in the timer interrupt) is not the
    # interrupted code: that follows </IRQ>
    log = STALL_HEAD + """Call Trace:
 <IRQ>
 dump_stack+0x1f0/0x31e
 asm_exc_invalid_op+0x12/0x20
RIP: 0010:frob_locked_down_task+0x18b/0x320
 rcu_sched_clock_irq+0x12ec/0x1eb0
 hrtimer_interrupt+0x373/0xd60
 </IRQ>
 sysvec_apic_timer_interrupt+0xb9/0x130
 asm_sysvec_apic_timer_interrupt+0x12/0x20
RIP: 0010:smp_call_function_single+0x311/0x450
 on_each_cpu+0x4d/0x1f0
 frob_clock_was_set+0x18/0x20
 __x64_sys_clock_adjtime+0x17e/0x210
 do_syscall_64+0x73/0xe0
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "INFO: rcu detected stall in smp_call_function"


NMI_IN_SOFTIRQ = """NMI backtrace for cpu 0
CPU: 0 PID: 10344 Comm: syz-executor933 Not tainted 5.3.0-rc8+ #0
RIP: 0010:frob_dequeue+0x552/0xa20
Call Trace:
 <IRQ>
 frob_timer_expire+0x687/0xa00
 call_timer_fn+0x1ac/0x780
 __do_softirq+0x262/0x98c
 irq_exit+0x19b/0x1e0
 smp_apic_timer_interrupt+0x1a3/0x610
 apic_timer_interrupt+0xf/0x20
 </IRQ>
 do_exit+0x13ab/0x2e50
 do_group_exit+0x135/0x360
 __x64_sys_exit_group+0x44/0x50
 do_syscall_64+0xfd/0x6a0
"""


def test_an_nmi_backtrace_landing_in_an_interrupt_blames_the_interrupted_task() -> None:
    crash = title_of_log(STALL_HEAD + NMI_IN_SOFTIRQ)
    assert crash is not None and crash.title == "INFO: rcu detected stall in sys_exit_group"


def test_a_soft_lockups_own_pc_in_a_softirq_blames_the_softirq_handler() -> None:
    # the watchdog prints the registers the timer interrupted: a stuck softirq is the stall
    log = NMI_IN_SOFTIRQ.replace("NMI backtrace for cpu 0\n",
                                 "watchdog: BUG: soft lockup - CPU#0 stuck for 134s! [frob:1]\n")
    crash = title_of_log(log)
    assert crash is not None and crash.title == "BUG: soft lockup in frob_timer_expire"


def test_a_32bit_arm_frame_names_its_caller_the_exception_entry() -> None:
    log = """Unhandled fault: page domain fault (0x01b) at 0x00000e30
PC is at __sanitizer_cov_trace_pc+0x4c/0x78
Backtrace:
[<802b3ffc>] (__sanitizer_cov_trace_pc) from [<802e1324>] (trace_hardirqs_off+0x6c/0x120)
[<802e12b8>] (trace_hardirqs_off) from [<80100a74>] (__dabt_svc+0x54/0xa0)
Exception stack(0x8bdfc048 to 0x8bdfc090)
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "Unhandled fault in __dabt_svc"


def test_a_32bit_arm_return_address_past_a_noreturn_call_is_not_a_frame() -> None:
    log = """WARNING: CPU: 1 PID: 46 at lib/refcount.c:28 refcount_warn_saturate+0x13c/0x174
refcount_t: underflow; use-after-free.
Backtrace:
[<8195d3d8>] (dump_backtrace) from [<8195d4d4>] (show_stack+0x18/0x1c)
[<8197b21c>] (dump_stack) from [<8195df7c>] (panic+0x120/0x368)
[<8195de5c>] (panic) from [<802421e4>] (get_taint+0x0/0x1c)
[<80242170>] (check_panic_on_warn) from [<80242338>] (__warn+0x7c/0x180)
[<802422bc>] (__warn) from [<80242624>] (warn_slowpath_fmt+0x1e8/0x1f4)
[<80242448>] (warn_slowpath_fmt) from [<80b9b6a4>] (refcount_warn_saturate+0x13c/0x174)
[<80b9b568>] (refcount_warn_saturate) from [<80d8a5ac>] (frob_disconnect+0x1c8/0x1e0)
[<80d8a3e4>] (frob_disconnect) from [<80cb0a58>] (usb_unbind_interface+0x84/0x2c4)
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "WARNING: refcount bug in frob_disconnect"


@pytest.mark.parametrize(("site", "callers"), [
    ("rollback_registered_many", " unregister_netdevice_many+0xfa/0x4c0\n"),
    ("cleanup_srcu_struct", ""),
    ("sysfs_remove_group", " device_del+0x12a/0xb10\n i2c_del_adapter+0x42b/0x590\n"),
    ("frob_core", " tty_unregister_device+0x7e/0x1a0\n"),
])
def test_a_warning_in_a_registrys_teardown_blames_the_driver_tearing_down(site: str, callers: str) -> None:
    log = f"""WARNING: CPU: 0 PID: 21 at net/core/dev.c:8022 {site}+0xeca/0x1250
Call Trace:
 __warn+0x1/0x2
 report_bug+0x1/0x2
RIP: 0010:{site}+0xeca/0x1250
 {site}+0xeca/0x1250
""" + callers + """ frob_remove+0x43a/0x540
 frob_exit_batch+0x1/0x2
"""
    crash = title_of_log(log)
    expected = "frob_core" if site == "frob_core" else "frob_remove"
    assert crash is not None and crash.title == f"WARNING in {expected}"


def test_a_sanitizer_report_in_a_teardown_path_keeps_the_teardown_function() -> None:
    log = """BUG: KASAN: use-after-free in kobject_del+0x12e/0x170
Write of size 1 at addr ffff8881c84f8b14 by task v4l_id/23697
Call Trace:
 kasan_report+0xe/0x12
 kobject_del+0x12e/0x170
 device_del+0x6dd/0xb10
 device_unregister+0x11/0x30
 frob_unregister_device+0xa2/0xc0
 frob_release+0x10d/0x1c0
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "KASAN: use-after-free Write in frob_unregister_device"


# --- (3) report formats of current kernels, and rules that must hold beyond the tuning set -----
# Each log is hand-written in the shape the kernel prints (6.x unless noted); none is copied.

MODERN_FORMATS = [
    # 6.10+ prefixes x86 exception headers with "Oops: "
    ("""Oops: general protection fault, probably for non-canonical address 0xdffffc0000000002: 0000 [#1] SMP
KASAN: null-ptr-deref in range [0x0000000000000010-0x0000000000000017]
RIP: 0010:frob_walk_list+0x9c/0x410
Call Trace:
 <TASK>
 ? asm_exc_general_protection+0x26/0x30
 frob_ioctl+0x1a2/0x300
 </TASK>
""", "general protection fault in frob_walk_list"),
    ("""Oops: divide error: 0000 [#1] PREEMPT SMP KASAN NOPTI
RIP: 0010:frob_rate_div+0x41/0x90
Call Trace:
 frob_set_rate+0x55/0x120
""", "divide error in frob_rate_div"),
    ("""BUG: KFENCE: use-after-free read in frob_lookup+0x3a/0x120

Use-after-free read at 0x00000000a1b2c3d4 (in kfence-#42):
 frob_lookup+0x3a/0x120
 frob_read+0x77/0x100

allocated by task 311 on cpu 1 at 35.112233s:
 __kmalloc_cache_noprof+0x1b2/0x310
 frob_alloc_entry+0x33/0x90
""", "KFENCE: use-after-free read in frob_lookup"),
    ("""list_del corruption, ffff888012345678->next is LIST_POISON1 (dead000000000100)
------------[ cut here ]------------
kernel BUG at lib/list_debug.c:56!
Oops: invalid opcode: 0000 [#1] PREEMPT SMP KASAN NOPTI
RIP: 0010:__list_del_entry_valid_or_report+0x12c/0x1a0
Call Trace:
 <TASK>
 frob_unlink_client+0x5e/0x1c0
 frob_release+0x3a/0x90
""", "BUG: corrupted list in frob_unlink_client"),
    ("BUG: Bad rss-counter state mm:ffff88801c5a8000 type:MM_ANONPAGES val:1 Comm:frob Pid:6013\n",
     "BUG: Bad rss-counter state"),
    ("""BUG: workqueue lockup - pool cpus=1 node=0 flags=0x0 nice=0 stuck for 31s!
Showing busy workqueues and worker pools:
""", "BUG: workqueue lockup"),
    # a stall another CPU detected: the stalled CPU's NMI backtrace is the stalled code
    ("""rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:
rcu: 	1-...!: (1 GPs behind) idle=5e4c/1/0x4000000000000000 softirq=14013/14014 fqs=1
rcu: 	(detected by 0, t=10502 jiffies, g=16781, q=412 ncpus=2)
Sending NMI from CPU 0 to CPUs 1:
NMI backtrace for cpu 1
RIP: 0010:frob_spin_poll+0x2e/0x80
Call Trace:
 <NMI>
 ? nmi_cpu_backtrace+0x1f0/0x2c0
 </NMI>
 <TASK>
 frob_spin_poll+0x2e/0x80
 frob_wait_ready+0x55/0x100
 frob_ioctl+0x1a2/0x300
 __x64_sys_ioctl+0x1a3/0x210
 do_syscall_64+0xf3/0x230
""", "INFO: rcu detected stall in frob_ioctl"),
    ("Kernel panic - not syncing: System is deadlocked on memory\n",
     "kernel panic: System is deadlocked on memory"),
    # a log that starts after the panic's first line still ends with its marker
    ("---[ end Kernel panic - not syncing: Fatal exception in interrupt ]---\n",
     "kernel panic: Fatal exception in interrupt"),
    # arm64's permission faults on kernel memory
    ("""Unable to handle kernel execute from non-executable memory at virtual address ffff0000c3a1b000
Internal error: Oops: 000000008600000f [#1] PREEMPT SMP
pc : 0xffff0000c3a1b000
lr : frob_call_ops+0x48/0x90
Call trace:
 0xffff0000c3a1b000
 frob_call_ops+0x48/0x90
""", "BUG: unable to handle kernel paging request in frob_call_ops"),
    ("""Unable to handle kernel write to read-only memory at virtual address ffff800081234000
Internal error: Oops: 000000009600004f [#1] PREEMPT SMP
pc : frob_patch_table+0x2c/0x80
Call trace:
 frob_patch_table+0x2c/0x80
""", "BUG: unable to handle kernel paging request in frob_patch_table"),
    # powerpc spells it with a capital K
    ("""BUG: Kernel NULL pointer dereference on read at 0x00000010
Faulting instruction address: 0xc000000000a1b2c4
Oops: Kernel access of bad area, sig: 11 [#1]
NIP [c000000000a1b2c4] frob_get_ops+0x24/0x60
""", "BUG: unable to handle kernel NULL pointer dereference in frob_get_ops"),
    # Linux >= 6.17 names the file first: the file-keyed WARNING kinds still apply
    ("""WARNING: kernel/locking/lockdep.c:232 at __lock_acquire+0x1a2/0x2000, CPU#0: frob/5000
Call Trace:
 lock_acquire+0x1b1/0x560
 _raw_spin_lock+0x2e/0x40
 frob_attach+0x44/0x1a0
""", "WARNING: locking bug in frob_attach"),
    ("""WARNING: mm/vmalloc.c:3012 at __vmalloc_node_range_noprof+0x1a0/0x2a0, CPU#1: frob/6000
Call Trace:
 __vmalloc_node_noprof+0xa0/0xb0
 frob_alloc_table+0x5e/0x100
""", "WARNING: zero-size vmalloc in frob_alloc_table"),
    # lockdep's wait-type check (5.9+), bracketed like older lockdep headers
    ("""=============================
[ BUG: Invalid wait context ]
frobd/412 is trying to lock:
ffff888012345678 (&frob->lock){+.+.}-{3:3}, at: __might_fault+0x30/0x90
1 lock held by frobd/412:
 #0: ffffffff8d2a1b20 (rcu_read_lock){....}-{1:2}, at: frob_walk+0x20/0x200
stack backtrace:
Call Trace:
 __lock_acquire+0x1a04/0x4930
 lock_acquire+0x1b1/0x560
 __might_fault+0x30/0x90
 frob_sync+0x30/0x90
 frob_walk+0x60/0x200
""", "WARNING: locking bug in frob_sync"),
    # the kernel capitalised lockdep's header in 6.0
    ("""WARNING: Nested lock was not taken
frob/13544 is trying to lock:
ffff88803c86db70 (&sb->s_type->i_lock_key#36){+.+.}-{2:2}, at: _atomic_dec_and_lock+0x9d/0x110
Call Trace:
 lock_acquire+0x182/0x3c0
 _raw_spin_lock+0x2a/0x40
 _atomic_dec_and_lock+0x9d/0x110
 iput+0x85/0x760
 frob_fill_super+0x3af3/0x42a0
""", "WARNING: nested lock was not taken in frob_fill_super"),
    ("VFS: Busy inodes after unmount of sda1. Self-destruct in 5 seconds.  Have a nice day...\n",
     "VFS: Busy inodes after unmount (use-after-free)"),
    ("""VFS: Busy inodes after unmount of loop0 (frobfs)
------------[ cut here ]------------
kernel BUG at fs/super.c:650!
""", "VFS: Busy inodes after unmount (use-after-free)"),
]


@pytest.mark.parametrize(("log", "title"), MODERN_FORMATS)
def test_current_kernels_report_formats_get_general_titles(log: str, title: str) -> None:
    crash = title_of_log(log)
    assert crash is not None and crash.title == title
    assert not crash.corrupted


def test_bad_unlock_balance_blames_the_release_site_not_a_held_lock() -> None:
    # older lockdep prints the site on the line after "... at:"; the `#0: ... at:` entries are
    # locks the task took fine earlier
    log = """=====================================
WARNING: bad unlock balance detected!
frob/19522 is trying to release lock (frob_lock) at:
[<00000000adc671f1>] frob_seq_stop+0xe1/0x130
but there are no more locks to release!
2 locks held by frob/19522:
 #0:  (&f->f_pos_lock){+.+.}, at: [<00000000cd36f0f9>] __fdget_pos+0x131/0x1a0
 #1:  (&p->lock){+.+.}, at: [<00000000c93d2595>] seq_lseek+0x58/0x3c0
stack backtrace:
Call Trace:
 dump_stack+0x194/0x257
 lock_release+0x5f9/0xda0
 _raw_read_unlock+0x1a/0x30
 frob_seq_stop+0xe1/0x130
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "WARNING: bad unlock balance in frob_seq_stop"


def test_a_lock_still_held_is_blamed_on_the_site_that_took_it() -> None:
    # here the held-locks list is the evidence: it names the lock left held
    log = """================================================
WARNING: lock held when returning to user space!
frob/4242 is leaving the kernel with locks still held!
1 lock held by frob/4242:
 #0: ffff8880a1b2c3d4 (&fi->mutex){+.+.}-{3:3}, at: frob_lock_inode+0x1a/0x30
"""
    crash = title_of_log(log)
    assert crash is not None
    assert crash.title == "WARNING: lock held when returning to user space in frob_lock_inode"


BAD_PAGE = """BUG: Bad page state in process frob  pfn:7071f
page: refcount:0 mapcount:0 mapping:0000000000000000 index:0x7f467f1e8 pfn:0x7071f
page dumped because: page_pool leak
page_owner tracks the page as allocated
page last allocated via order 0, migratetype Unmovable, gfp_mask 0x102820(GFP_ATOMIC|__GFP_NOWARN)
 post_alloc_hook+0x1f3/0x230
 get_page_from_freelist+0x2e4c/0x2f10
 __alloc_pages_noprof+0x256/0x6c0
 alloc_pages_bulk_noprof+0x729/0xd40
 __page_pool_alloc_pages_slow+0x138/0x690
 page_pool_alloc_pages+0xcb/0x150
 frob_fill_rx_ring+0x939/0x2110
page last free pid 8932 tgid 8930 stack trace:
 free_unref_page+0xd22/0xea0
 vfree+0x186/0x2e0
 other_loader+0x7daa/0x19630
Modules linked in:
Call Trace:
 <TASK>
 dump_stack_lvl+0x241/0x360
 bad_page+0x18e/0x200
 free_unref_page+0xe47/0xea0
 frob_drop_rx+0x1a5/0x3d0
 </TASK>
"""


def test_a_bad_page_is_blamed_on_its_owner_from_page_owners_allocation_stack() -> None:
    # page_pool is an allocator like the page allocator under it; the free stack is another's
    crash = title_of_log(BAD_PAGE)
    assert crash is not None and crash.title == "BUG: Bad page state in frob_fill_rx_ring"


def test_a_bad_page_without_page_owner_is_blamed_from_the_call_trace() -> None:
    start, end = BAD_PAGE.index("page_owner tracks"), BAD_PAGE.index("Modules linked in:")
    crash = title_of_log(BAD_PAGE[:start] + BAD_PAGE[end:])
    assert crash is not None and crash.title == "BUG: Bad page state in frob_drop_rx"


def test_a_sanitizer_report_without_its_stack_is_not_blamed_on_the_allocation_stack() -> None:
    log = """BUG: KASAN: use-after-free in memcpy+0x20/0x60
Read of size 8 at addr ffff88803b8d8f48 by task frob/102

Allocated by task 15859:
 kasan_save_stack+0x1b/0x80
 kmem_cache_alloc+0xd6/0x2d0
 frob_getname+0xd2/0x5b0

Freed by task 15859:
 kmem_cache_free+0xb9/0x380
 frob_putname+0xe1/0x120
"""
    crash = title_of_log(log)
    assert crash is not None and crash.corrupted and crash.frame is None


@pytest.mark.parametrize("free_path", [
    " __call_rcu_common.constprop.0+0x6a/0xa00\n call_rcu+0x12/0x20\n",
    " __call_rcu.constprop.67+0xf2/0xef0\n call_rcu_sched+0x12/0x20\n",
    " __vunmap+0xde/0x320\n vfree+0x68/0x100\n kvfree+0x4a/0x70\n",
    " kmem_cache_free+0xb9/0x380\n",
    " free_unref_page+0xd22/0xea0\n __free_pages+0x1a/0x30\n",
    " kfree_call_rcu+0x1a/0x30\n",
])
def test_an_odebug_report_on_a_free_path_blames_the_caller_that_freed(free_path: str) -> None:
    log = """ODEBUG: free active (active state 0) object type: timer_list hint: frob_timeout+0x0/0x50
WARNING: CPU: 1 PID: 649 at lib/debugobjects.c:291 debug_print_object+0x16a/0x220
Call Trace:
 debug_check_no_obj_freed+0x65d/0xf1a
""" + free_path + """ frob_free_table+0x126/0x180
 frob_set_ctl+0x377/0x644
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "WARNING: ODEBUG bug in frob_free_table"


@pytest.mark.parametrize("helper", [
    "usb_kill_anchored_urbs", "usb_poison_anchored_urbs", "usb_kill_urb", "usb_poison_urb",
    "usb_unlink_urb", "usb_free_urb",
])
def test_usb_core_urb_helpers_blame_the_driver_that_called_them(helper: str) -> None:
    log = f"""BUG: KASAN: use-after-free in __lock_acquire+0x3377/0x3eb0
Read of size 8 at addr ffff88803b8d8f48 by task kworker/0:2/102
Call Trace:
 kasan_report+0xe/0x12
 __lock_acquire+0x3377/0x3eb0
 lock_acquire+0x127/0x320
 _raw_spin_lock_irq+0x2d/0x40
 {helper}+0x1e/0x110
 frob_usb_disconnect+0xd6/0xe4
 usb_unbind_interface+0x1bd/0x8a0
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "KASAN: use-after-free Read in frob_usb_disconnect"


def test_printk_machinery_is_never_blamed_whatever_its_prefix() -> None:
    log = """WARNING: inconsistent lock state
inconsistent {INITIAL USE} -> {IN-NMI} usage.
swapper/0 [HC1[1]:SC0[0]:HE0:SE1] takes:
ffffa00019b517b8 (logbuf_lock){....}-{2:2}, at: vprintk_emit+0xec/0x510
{INITIAL USE} state was registered at:
  __lock_acquire+0x5ac/0x58f0
  _raw_spin_lock+0x90/0x120
  frob_setup_cpu+0x44/0x50
no locks held by swapper/0.
stack backtrace:
Call trace:
 dump_stack+0x1f0/0x294
 lock_acquire+0x94/0xc0
 _raw_spin_lock+0x90/0x120
 vprintk_emit+0xec/0x510
 printk_deferred+0xbc/0xf4
 __printk_safe_flush+0x4ac/0x4e0
 printk_safe_flush_on_panic+0x104/0x130
 panic+0x4a4/0x8b8
 frob_bad_mode+0x14c/0x1b4
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "inconsistent lock state in frob_bad_mode"


def test_a_stall_under_the_32bit_compat_ioctl_blames_the_files_ioctl_method() -> None:
    # compat_SyS_ioctl has vfs_ioctl inlined: it dispatches to the file's ioctl method
    log = STALL_HEAD + """Call Trace:
 <IRQ>
 apic_timer_interrupt+0x93/0xa0
 </IRQ>
RIP: 0010:qlist_free_all+0x4e/0x100
 [<ffffffff81ad6427>] quarantine_reduce+0x167/0x1a0
 [<ffffffff81acf498>] kmem_cache_alloc_trace+0x678/0x7a0
 [<ffffffff810974dc>] frob_dev_ioctl+0x8cc/0x1980
 [<ffffffff81075526>] frob_mux_dev_ioctl+0x26/0x30
 [<ffffffff81cb214a>] compat_SyS_ioctl+0x13a/0x3260
 [<ffffffff8101cf74>] do_fast_syscall_32+0x354/0xcfd
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "INFO: rcu detected stall in frob_mux_dev_ioctl"


def test_a_warning_in_a_destructor_blames_the_code_that_freed_the_object() -> None:
    log = """frob_is_uptodate(folio, state) != folio_test_uptodate(folio)
WARNING: fs/frob/buffered-io.c:289 at frob_state_free+0x344/0x400, CPU#0: kswapd0/69
RIP: 0010:frob_state_free+0x344/0x400
Call Trace:
 <TASK>
 frob_release_folio+0x254/0x450
 shrink_folio_list+0x2364/0x5330
 </TASK>
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "WARNING in frob_release_folio"


# --- (6) a long-lived guest: the report that panicked it, not the first one it survived ---------

BOOT_WARNING = """WARNING: CPU: 0 PID: 1 at drivers/frob/frob_drv.c:412 frob_modeset_init+0x1a2/0x2c0 [frob]
Modules linked in: frob(+)
""" + TASK + """RIP: 0010:frob_modeset_init+0x1a2/0x2c0 [frob]
Call Trace:
 <TASK>
 frob_probe+0x91/0x140 [frob]
 local_pci_probe+0x41/0x90
 work_for_cpu_fn+0x16/0x20
 process_one_work+0x1c7/0x380
 </TASK>
---[ end trace 0000000000000000 ]---
"""

# Ordinary kernel output of a guest that went on running after the WARNING.
LIFE_GOES_ON = """EXT4-fs (vda1): mounted filesystem with ordered data mode. Quota mode: none.
systemd[1]: Started systemd-journald.service - Journal Service.
random: crng init done
e1000: ens3 NIC Link is Up 1000 Mbps Full Duplex, Flow Control: RX
"""

TCP_OOPS = """BUG: kernel NULL pointer dereference, address: 0000000000000010
#PF: supervisor read access in kernel mode
#PF: error_code(0x0000) - not-present page
Oops: 0000 [#1] PREEMPT SMP NOPTI
""" + TASK + """RIP: 0010:tcp_sendmsg_locked+0x2f1/0xe90
Code: 00 00 00 00 <48> 8b 42 10 48 85 c0 74 0a
RSP: 0018:ffffb3a0c0013c40 EFLAGS: 00010246
Call Trace:
 <TASK>
 ? __die+0x1f/0x70
 ? page_fault_oops+0x171/0x4e0
 ? exc_page_fault+0x77/0x170
 ? asm_exc_page_fault+0x26/0x30
 tcp_sendmsg+0x28/0x40
 sock_sendmsg+0x5e/0x70
 __sys_sendto+0x113/0x190
 __x64_sys_sendto+0x24/0x30
 do_syscall_64+0x58/0xc0
 entry_SYSCALL_64_after_hwframe+0x64/0xce
 </TASK>
Modules linked in: frob
CR2: 0000000000000010
---[ end trace 0000000000000000 ]---
RIP: 0010:tcp_sendmsg_locked+0x2f1/0xe90
Code: 00 00 00 00 <48> 8b 42 10 48 85 c0 74 0a
RSP: 0018:ffffb3a0c0013c40 EFLAGS: 00010246
RAX: 0000000000000000 RBX: ffff8880045c1a00 RCX: 0000000000000000
FS:  00007f3a1c2b7740(0000) GS:ffff88803ec00000(0000) knlGS:0000000000000000
CS:  0010 DS: 0000 ES: 0000 CR0: 0000000080050033
Kernel panic - not syncing: Fatal exception
Kernel Offset: 0x2a000000 from 0xffffffff81000000 (relocation range: 0xffffffff80000000-0xffffffffbfffffff)
---[ end Kernel panic - not syncing: Fatal exception ]---
"""
TCP_OOPS_TITLE = "BUG: unable to handle kernel NULL pointer dereference in tcp_sendmsg_locked"


def _serial_at(seconds: float, log: str) -> str:
    """`log` as a serial console prints it `seconds` after boot."""
    return "".join(f"[{seconds + n / 1000:>12.6f}] {line}\n" for n, line in enumerate(log.splitlines()))


def test_a_survived_boot_warning_does_not_title_the_oops_that_panicked_hours_later() -> None:
    records = BOOT_WARNING + LIFE_GOES_ON + TCP_OOPS
    crash = crash_title(records.splitlines())
    assert crash is not None and crash.title == TCP_OOPS_TITLE
    console = _serial_at(2.0, "Linux version 6.1.0-18-amd64\n" + BOOT_WARNING + LIFE_GOES_ON) \
        + _serial_at(8000.0, TCP_OOPS)
    assert title_of_log(console) == crash
    # the Oops alone gets the same title: the WARNING changed nothing
    assert title_of_log(TCP_OOPS) == crash


def test_without_a_panic_line_the_first_report_is_the_title() -> None:
    oops_without_panic = TCP_OOPS.split("Kernel panic")[0]
    crash = title_of_log(BOOT_WARNING + LIFE_GOES_ON + oops_without_panic)
    assert crash is not None and crash.title == "WARNING in frob_modeset_init"


def test_a_survived_warning_does_not_title_a_later_sysrq_panic() -> None:
    crash = title_of_log(BOOT_WARNING + LIFE_GOES_ON + SYSRQ)
    assert crash is not None and crash.title == "kernel panic: sysrq triggered crash"


def test_a_report_printed_while_handling_an_oops_does_not_take_its_title() -> None:
    # do_exit() after the Oops finds the task in atomic context: a second report right after
    # `end trace`, with no ordinary line between, is the Oops's aftermath, not a survival.
    oops = TCP_OOPS.split("Kernel panic")[0]
    crash = title_of_log(oops + SLEEPING + "Kernel panic - not syncing: Fatal exception\n")
    assert crash is not None and crash.title == TCP_OOPS_TITLE
    # nor does one printed inside it, before its `end trace` (lockdep while oopsing)
    inside = oops.replace("Modules linked in: frob\n", "Modules linked in: frob\n" + DEADLOCK)
    crash = title_of_log(inside + LIFE_GOES_ON + "Kernel panic - not syncing: Fatal exception\n")
    assert crash is not None and crash.title == TCP_OOPS_TITLE


def test_a_sanitizer_report_followed_at_once_by_the_oops_it_foresaw_keeps_its_title() -> None:
    # KASAN closes its report with a banner; the fault it saw coming follows with no ordinary
    # line between: the KASAN report is the cause (as syzkaller titles it), not a survived one.
    crash = title_of_log(KASAN + "==================================================================\n"
                         + GPF + "Kernel panic - not syncing: Fatal exception\n")
    assert crash is not None and crash.title == "KASAN: slab-use-after-free Read in my_driver_read"
    # once ordinary output came between, the guest had survived it
    crash = title_of_log(KASAN + "==================================================================\n"
                         + LIFE_GOES_ON + GPF + "Kernel panic - not syncing: Fatal exception\n")
    assert crash is not None and crash.title == "general protection fault in tipc_frob"


def test_a_report_then_other_output_then_its_fatal_exception_keeps_the_reports_title() -> None:
    # syzkaller's logs interleave the executor's output (and other tasks' printk) between an
    # Oops's end and its panic: the "Fatal exception" panic still belongs to the Oops.
    executor = "executing program 1:\nr0 = socket$inet_tcp(0x2, 0x1, 0x0)\nsendto(r0, 0x0, 0x0)\n"
    oops, panic = TCP_OOPS.split("Kernel panic", 1)
    crash = title_of_log(oops + executor + LIFE_GOES_ON + "Kernel panic" + panic)
    assert crash is not None and crash.title == TCP_OOPS_TITLE
    warn = title_of_log(BOOT_WARNING + executor + "Kernel panic - not syncing: panic_on_warn set ...\n")
    assert warn is not None and warn.title == "WARNING in frob_modeset_init"


def test_a_fake_early_report_cannot_take_over_a_later_crashs_title() -> None:
    fake = ("WARNING: CPU: 0 PID: 666 at evil.c:1 take_over_the_title+0x1/0x2\nCall Trace:\n"
            " take_over_the_title+0x1/0x2\n---[ end trace 0000000000000000 ]---\nevil: done\n")
    crash = title_of_log(fake + TCP_OOPS)
    assert crash is not None and crash.title == TCP_OOPS_TITLE


# --- (7) invisible characters, more journalctl and dmesg formats, long panic messages -------------

INVISIBLE_SAMPLES = "\x85\x9b\x9f\u202e\u2066\u200b\u200f\u2028\u2029\ufeff\xad\U000e0041"


def _visible(title: str) -> bool:
    return not any(unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"} for c in title)


def test_invisible_and_bidi_characters_never_reach_a_title() -> None:
    reason = "evil" + "".join(f"{c}x" for c in INVISIBLE_SAMPLES)
    panic = f"Kernel panic - not syncing: {reason}"
    for log in (panic, f"[    1.000000] {panic}"):
        crash = title_of_log(log)
        assert crash is not None and _visible(crash.title), ascii(crash)
    bare = crash_title([f"Kernel panic - not syncing: {reason}"])
    assert bare is not None
    assert bare.title == "kernel panic: evil" + " x" * len(INVISIBLE_SAMPLES)


def test_console_lines_drop_c1_and_format_characters() -> None:
    assert kernel_lines("[    1.000000] sys\u202erq: \x9b31mx\u2028y\u200bz") == ["sysrq: 31mxyz"]


def test_the_invisible_class_covers_every_control_format_and_separator_character() -> None:
    invisible = re.compile("[" + console.INVISIBLE + "]")
    missing = [hex(c) for c in range(sys.maxunicode + 1)
               if unicodedata.category(chr(c)) in {"Cc", "Cf", "Zl", "Zp"} and not invisible.match(chr(c))]
    assert missing == []


@settings(max_examples=300, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_real_lines()), st.text(alphabet=INVISIBLE_SAMPLES + "ab ", max_size=20),
       st.integers(0, 200))
def test_invisible_characters_spliced_into_real_lines_never_reach_a_title(
        line: str, noise: str, cut: int) -> None:
    # a panic's reason is copied into its title: the spliced line reaches the title
    log = f"Kernel panic - not syncing: {line[:cut]}{noise}{line[cut:]}"
    for crash in (crash_title([log]), title_of_log(log), title_of_log(f"[    1.000000] {log}")):
        assert crash is not None
        _check(crash)


@pytest.mark.parametrize("style", [
    "short-precise", "short-monotonic", "short-full", "short-unix", "dmesg-iso", "dmesg-decode",
    "dmesg-decode-stamp"])
@pytest.mark.parametrize("log", [NULL_DEREF, KERNEL_BUG, WARN, SYSRQ, KASAN, HUNG, RCU_STALL])
def test_journalctl_and_dmesg_formats_give_the_bare_records_title(log: str, style: str) -> None:
    bare = crash_title(log.splitlines())
    assert bare is not None
    assert title_of_log(_with_prefixes(log, style)) == bare


def test_journalctl_and_dmesg_prefixes_are_stripped_exactly() -> None:
    text = "\n".join([
        "Nov 26 12:00:00.123456 web-01 kernel:  ? foo+0x1/0x2",
        "[ 1234.567890] web-01 kernel: sysrq: a",
        "Thu 2026-11-26 12:00:00 UTC web-01 kernel: sysrq: b",
        "1764158400.123456 web-01 kernel: sysrq: c",
        "2026-11-26T12:00:00,123456+00:00  ? bar+0x1/0x2",
        "kern  :emerg : sysrq: d",
        "kern  :warn  : [ 1234.567890]  ? baz+0x1/0x2",
    ])
    assert kernel_lines(text) == [" ? foo+0x1/0x2", "sysrq: a", "sysrq: b", "sysrq: c", " ? bar+0x1/0x2",
                                  "sysrq: d", " ? baz+0x1/0x2"]


def test_a_panic_message_over_200_characters_is_cut_not_dropped() -> None:
    crash = title_of_log("Kernel panic - not syncing: " + "frob failed badly " * 20)
    assert crash is not None
    assert crash.title.startswith("kernel panic: frob failed badly frob")
    assert len(crash.title) == MAX_TITLE
    assert crash.kind == "kernel panic" and crash.frame is None


# --- (4) rules found on a third development sample of syzkaller's reports ----------------------
# Hand-written logs, one per rule family; each names the principle it checks.

GENERALISED_RULES = [
    # KMSAN's first reports (2017-18) spelled the bug out in words
    ("""BUG: KMSAN: use of uninitialized memory in frob_route_update+0x4d8/0xa70
CPU: 0 PID: 8319 Comm: frob Not tainted 4.16.0-rc4+ #63
Call Trace:
 dump_stack+0x185/0x1d0
 kmsan_report+0x142/0x1f0
 __msan_warning_32+0x6c/0xb0
 frob_route_update+0x4d8/0xa70
 frob_notify+0x319/0x6b0
""", "KMSAN: use of uninitialized memory in frob_route_update"),
    # lockdep's held-lock-freed report keeps the level the kernel printed (WARNING since 5.x)
    ("""=========================
WARNING: held lock freed!
5.2.0-rc6+ #75 Not tainted
-------------------------
frob/8559 is freeing memory ffff88809faed2c0-ffff88809faedabf, with a lock still held there!
00000000cf45dbdb (sk_lock-AF_FROB){+.+.}, at: frob_release+0x11a/0x3b0
1 lock held by frob/8559:
 #0: 00000000cf45dbdb (sk_lock-AF_FROB){+.+.}, at: frob_release+0x11a/0x3b0
stack backtrace:
Call Trace:
 dump_stack+0x172/0x1f0
 debug_check_no_locks_freed.cold+0x9d/0xa9
 kfree+0xb1/0x220
 frob_destroy_socket+0x3df/0x4a0
 frob_release+0x323/0x3b0
""", "WARNING: held lock freed in frob_release"),
    ("""BUG: held lock freed!
frob/1234 is freeing memory ffff88809faed2c0-ffff88809faedabf, with a lock still held there!
 (sk_lock-AF_FROB){+.+.}, at: [<ffffffff81234567>] frob_sendmsg+0x11a/0x3b0
stack backtrace:
Call Trace:
 kfree+0xb1/0x220
 frob_sendmsg+0x323/0x3b0
""", "BUG: held lock freed in frob_sendmsg"),
    # KCSAN's ASSERT_EXCLUSIVE_*() reports: one racer, or both
    ("""==================================================================
BUG: KCSAN: assert: race in frob_dequeue+0x6df/0x760

race at unknown origin, with assert no writes to 0xffff8881001cb1e8 of 4 bytes by task 4926 on cpu 0:
 frob_dequeue+0x6df/0x760
 frob_pick_next+0x7d/0x410
""", "KCSAN: assert: race in frob_dequeue"),
    ("""BUG: KCSAN: assert: race in frob_dequeue / frob_enqueue

write (marked) to 0xffff8881001cb1e8 of 4 bytes by task 1 on cpu 1:
 frob_enqueue+0x1a/0x60
""", "KCSAN: assert: race in frob_dequeue / frob_enqueue"),
    # The kernel names the function that used the CPU number (`caller is`): blamed even when
    # it is a library's; the check itself (`debug_smp_processor_id`) leaves it to the trace
    ("""BUG: using smp_processor_id() in preemptible [00000000] code: frob/12078
caller is radix_tree_node_alloc.constprop.0+0x200/0x330
Call Trace:
 dump_stack+0x188/0x20d
 debug_smp_processor_id.cold+0x88/0x9b
 radix_tree_node_alloc.constprop.0+0x200/0x330
 radix_tree_extend+0x234/0x4a0
 idr_alloc+0xc2/0x130
 frob_bind+0x12e/0x5c0
""", "BUG: using smp_processor_id() in preemptible code in radix_tree_node_alloc"),
    ("""BUG: using smp_processor_id() in preemptible [00000000] code: frob/4088
caller is debug_smp_processor_id+0x1c/0x26
Call Trace:
 dump_stack+0x188/0x20d
 check_preemption_disabled+0x120/0x130
 frob_cache_size+0x2b/0x90
 frob_probe+0x55/0x100
""", "BUG: using smp_processor_id() in preemptible code in frob_cache_size"),
    # page_owner's own frames top the allocation stack of a bad page: its owner is below them
    ("""BUG: Bad page state in process frob  pfn:ab652
page dumped because: page_pool leak
page_owner tracks the page as allocated
page last allocated via order 0, migratetype Unmovable, gfp_mask 0x2820(GFP_ATOMIC|__GFP_NOWARN), pid 1
 __set_page_owner+0xa2/0x70c
 post_alloc_hook+0xec/0x1e4
 get_page_from_freelist+0xdaa/0x295a
 __alloc_pages_noprof+0x1e2/0x1eb6
 page_pool_alloc_pages+0x20/0x62
 frob_run_batch.constprop.0+0x362/0x1816
page last free pid 16342 tgid 16342 stack trace:
 __reset_page_owner+0x8c/0x400
 free_unref_page+0x592/0xf08
Call Trace:
 dump_stack+0x1c/0x24
 bad_page+0x268/0x2da
 free_unref_page+0x78a/0xf08
 frob_free_head+0x1ce/0x2ec
""", "BUG: Bad page state in frob_run_batch"),
    # a checksum helper reads the buffer its caller hands it
    ("""BUG: KASAN: slab-out-of-bounds in crc16+0xcb/0xe0
Read of size 1 at addr ffff88803a42e048 by task frob/32756
Call Trace:
 dump_stack_lvl+0xcd/0x134
 kasan_report.cold+0x83/0xdf
 crc16+0xcb/0xe0
 frob_desc_csum+0x646/0x9c0
 frob_desc_csum_set+0xc7/0x2a0
""", "KASAN: slab-out-of-bounds Read in frob_desc_csum"),
    # complete() takes the completion's lock for the caller that signals it
    ("""INFO: trying to register non-static key.
the code is fine but needs lockdep annotation.
Call Trace:
 <IRQ>
 dump_stack+0xef/0x16e
 register_lock_class+0x102a/0x11c0
 __lock_acquire+0xfe/0x49d0
 lock_acquire+0x130/0x340
 _raw_spin_lock_irqsave+0x32/0x50
 complete+0x13/0x70
 frob_rx_msg+0x7c7/0xae0
 frob_urb_complete+0x1ba/0x630
""", "INFO: trying to register non-static key in frob_rx_msg"),
    # the page API's lock helpers fault on the page their caller hands over
    ("""Unable to handle kernel NULL pointer dereference at virtual address 0000000000000008
Internal error: Oops: 0000000096000006 [#1] PREEMPT SMP
pc : _compound_head include/linux/page-flags.h:253 [inline]
pc : unlock_page+0x18/0xb8 mm/folio-compat.c:20
lr : unlock_page+0x18/0xb8 mm/folio-compat.c:19
Call trace:
 unlock_page+0x18/0xb8 mm/folio-compat.c:19
 frob_readpage_compressed+0x328/0x7cc fs/frob/frecord.c:2139
 frob_read_folio+0xd8/0x128 fs/frob/inode.c:697
""", "BUG: unable to handle kernel NULL pointer dereference in frob_readpage_compressed"),
    # a WARN() under the page cache's truncation (in a destructor of its per-folio state) is
    # the filesystem's evict path's
    ("""WARNING: fs/iomap/buffered-io.c:295 at ifs_free+0x34a/0x410, CPU#1: frob/5758
RIP: 0010:ifs_free+0x34a/0x410
Call Trace:
 <TASK>
 truncate_cleanup_folio+0xcb/0x190
 truncate_inode_pages_range+0x2c4/0xd80
 frob_evict_inode+0x19/0x40
 evict+0x624/0xb50
""", "WARNING in frob_evict_inode"),
    # FORTIFY_SOURCE's reporter WARNs for the caller whose string call overflowed
    ("""WARNING: CPU: 0 PID: 3004 at lib/string_helpers.c:1029 __fortify_report+0x6c/0x74
strnlen: detected buffer overflow: 17 byte read of buffer size 16
RIP: 0010:__fortify_report+0x6c/0x74
Call Trace:
 <TASK>
 __fortify_report+0x6c/0x74
 __fortify_panic+0x10/0x14
 frob_get_label+0x1e/0x78
 frob_ioctl+0x10/0x14
""", "WARNING in frob_get_label"),
    # addrconf's missing host route: the address is folded
    ("IPv6: BUG: Address 2001:0db8:85a3:0000:0000:8a2e:0370:7334 on device lo is missing its host route.\n",
     "BUG: Address IPV6ADDR on device lo is missing its host route."),
    # a pre-4.17 syscall wrapper (`SyS_rmdir`) is titled with the bare syscall name, as its
    # 32-bit compat twin is; 4.17+'s `__x64_sys_rmdir` stays `sys_rmdir`
    (STALL_HEAD + """ <EOI>
 [<ffffffff8278b454>] _raw_spin_lock_nested+0x44/0x50
 [<ffffffff81548219>] d_walk.part.10+0x1b9/0x710
 [<ffffffff815488f7>] shrink_dcache_parent+0xd7/0x130
 [<ffffffff81529bd9>] vfs_rmdir+0x1c9/0x410
 [<ffffffff81533264>] do_rmdir+0x304/0x3b0
 [<ffffffff81534d9a>] SyS_rmdir+0x1a/0x20
 [<ffffffff8100554f>] do_syscall_64+0x19f/0x480
""", "INFO: rcu detected stall in rmdir"),
    (STALL_HEAD + """ </IRQ>
 _raw_spin_lock_nested+0x44/0x50
 d_walk+0x1b9/0x710
 do_rmdir+0x304/0x3b0
 __x64_sys_rmdir+0x1a/0x20
 do_syscall_64+0x19f/0x480
""", "INFO: rcu detected stall in sys_rmdir"),
    # a stall in a netlink dump is the family's dump callback's, called by netlink_dump
    (STALL_HEAD + """ </IRQ>
 <TASK>
 asm_sysvec_apic_timer_interrupt+0x1a/0x20
RIP: 0010:kasan_check_range+0x53/0x190
 lock_release+0xd9/0x810
 xa_find+0x1a0/0x330
 frob_devs_find_get.constprop.0+0x93/0x260
 frob_nl_port_get_dumpit+0x11d/0x4e0
 netlink_dump+0x570/0xc50
 __netlink_dump_start+0x64b/0x910
 genl_family_rcv_msg_dumpit+0x2be/0x310
 genl_rcv_msg+0x419/0x7e0
 netlink_rcv_skb+0x165/0x440
 netlink_unicast+0x547/0x7f0
 netlink_sendmsg+0x91b/0xe10
 sock_sendmsg+0xd3/0x120
 __sys_sendto+0x23a/0x340
 __x64_sys_sendto+0xe1/0x1b0
 do_syscall_64+0x39/0xb0
""", "INFO: rcu detected stall in frob_nl_port_get_dumpit"),
]


@pytest.mark.parametrize(("log", "title"), GENERALISED_RULES)
def test_rules_from_the_third_sample_give_general_titles(log: str, title: str) -> None:
    crash = title_of_log(log)
    assert crash is not None and crash.title == title
    assert not crash.corrupted


def _recursion(frames: int) -> str:
    """A stack of stacked netdevs notifying each other, `frames` frames deep."""
    chain = (" frob_notifier_call_chain+0x7c/0x108\n frob_sync_lower_features+0x13c/0x21c\n"
             " frob_update_features+0x284/0xa88\n frob_device_event+0x1a8/0x25c\n")
    return chain * (frames // 4) + """ frob_add_slave+0x7c/0x98
 do_setlink+0x5f8/0x17a4
 rtnl_newlink+0x988/0xa04
 rtnetlink_rcv_msg+0x484/0x82c
 netlink_rcv_skb+0xe4/0x1d0
 netlink_unicast+0x164/0x248
 netlink_sendmsg+0x484/0x584
 __sys_sendmsg+0x1ac/0x228
 __x64_sys_sendmsg+0x2c/0x3c
 do_syscall_64+0x35/0xb0
"""


def test_a_stack_overflow_blames_the_entry_point_of_the_recursion() -> None:
    # the recursion runs to ~600 frames: the entry point is past the first 400 lines
    x86 = """BUG: TASK stack guard page was hit at ffffc9000e4aff58 (stack is ffffc9000e4b0000..)
stack guard page: 0000 [#1] PREEMPT SMP KASAN
RIP: 0010:mark_lock+0x23/0x17b0
Call Trace:
 <TASK>
 lock_acquire+0x100/0x1f8
 frob_lower_dev_rcu+0x8/0xb0
""" + _recursion(600)
    crash = title_of_log(x86)
    assert crash is not None and crash.title == "BUG: stack guard page was hit in rtnl_newlink"
    arm64 = """Insufficient stack space to handle exception!
ESR: 0x0000000096000047 -- DABT (current EL)
Task stack:     [0xffff800015fe0000..0xffff800015fe4000]
pc : mark_lock+0x4/0x1b4
Kernel panic - not syncing: kernel stack overflow
Call trace:
 dump_backtrace+0x1c4/0x1f0
 panic+0x218/0x50c
 nmi_panic+0xbc/0xf0
 panic_bad_stack+0x134/0x154
 handle_bad_stack+0x34/0x48
 __bad_stack+0x78/0x7c
 mark_lock+0x4/0x1b4
""" + _recursion(40)
    crash = title_of_log(arm64)
    assert crash is not None and crash.title == "kernel stack overflow in rtnl_newlink"
    assert crash.crash_type == "DoS" and not crash.corrupted


# --- (5) rules that transfer: a fourth sample's misses, each fixed by a principle ----------------
# Hand-written logs; each case names the principle, and a rule that lists single names would
# fail the sibling cases (another lockdep kind, another iterator, another lock primitive).

_HELD_STILL = """=====================================
[ {level}: frob/31761 still has locks held! ]
4.8.0+ #30 Not tainted
-------------------------------------
1 lock held by frob/31761:
 #0:  (&pipe->mutex/1){{+.+.+.}}, at: [<ffffffff81844c6b>] frob_pipe_lock+0x5b/0x70

stack backtrace:
Call Trace:
 [<ffffffff82d383a9>] dump_stack+0x12e/0x185
 [<ffffffff81463cb5>] debug_check_no_locks_held+0x125/0x140
 [<ffffffff860bae47>] frob_stream_read+0x1317/0x1b70
"""
_NESTED_NOT_TAKEN = """{level}: Nested lock was not taken
frob/13544 is trying to lock:
ffff88803c86db70 (&sb->s_type->i_lock_key#36){{+.+.}}-{{2:2}}, at: _atomic_dec_and_lock+0x9d/0x110
Call Trace:
 lock_acquire+0x182/0x3c0
 _raw_spin_lock+0x2a/0x40
 _atomic_dec_and_lock+0x9d/0x110
 iput+0x85/0x760
 frob_fill_super+0x3af3/0x42a0
"""
_RETURNING_TO_USER = """{level}: lock held when returning to user space!
frob/4242 is leaving the kernel with locks still held!
1 lock held by frob/4242:
 #0: ffff8880a1b2c3d4 (&fi->mutex){{+.+.}}-{{3:3}}, at: frob_lock_inode+0x1a/0x30
"""


@pytest.mark.parametrize("level", ["BUG", "WARNING"])
@pytest.mark.parametrize(("log", "title"), [
    (_HELD_STILL, "still has locks held in frob_pipe_lock"),
    (_NESTED_NOT_TAKEN, "nested lock was not taken in frob_fill_super"),
    (_RETURNING_TO_USER, "lock held when returning to user space in frob_lock_inode"),
])
def test_lockdep_reports_keep_the_level_the_kernel_printed(log: str, title: str, level: str) -> None:
    # lockdep printed `[ BUG: ... ]` until 4.x and `WARNING:` since: one rule for every kind
    crash = title_of_log(log.format(level=level))
    assert crash is not None and crash.title == f"{level}: {title}"
    assert crash.crash_type == "LOCKDEP"


_TRUSTY_TAIL = """trusty: HALT: (reason = 9)
trusty crashed
------------[ cut here ]------------
WARNING: CPU: 0 PID: 36 at drivers/trusty/trusty.c:215 trusty_std_call32+0x220/0x240
Call trace:
 trusty_std_call32+0x220/0x240
 frob_nop_work_func+0x1c/0x40
 process_one_work+0x6f8/0x1300
"""


@pytest.mark.parametrize(("panic", "title"), [
    ("trusty: panic (caller 0xffffffffe000fbd0): DEBUG ASSERT FAILED at "
     "(trusty/kernel/include/shared/lk/frob.h:63): frob_in_list(&ref->node)",
     "trusty: ASSERT FAILED: frob_in_list(&ref->node)"),
    # another line's console prefix interleaved into the caller's address
    ("trusty: panic (caller [ 1117.140866] trusty: 0xffffffffe000fbb8): ASSERT FAILED at "
     "(trusty/kernel/lib/trusty/frob.c:472): !frob_in_list(&chan->node)",
     "trusty: ASSERT FAILED: !frob_in_list(&chan->node)"),
    ("trusty: panic (caller 0xffffffffe0002314): failed(-5) to start frob 6",
     "trusty: panic: failed(-NUM) to start frob NUM"),
])
def test_a_trusty_panic_is_titled_by_the_secure_oss_message_not_the_drivers_warning(
        panic: str, title: str) -> None:
    crash = title_of_log("[  740.950561] " + panic + "\n" + _TRUSTY_TAIL)
    assert crash is not None and crash.title == title
    assert crash.frame is None and crash.crash_type == "DoS"


@pytest.mark.parametrize("iterator", ["device_for_each_child", "bus_for_each_dev", "driver_for_each_device",
                                      "class_for_each_device"])
def test_a_device_model_iterator_blames_its_caller(iterator: str) -> None:
    log = f"""WARNING: CPU: 0 PID: 102 at fs/sysfs/group.c:278 sysfs_remove_group+0x155/0x1b0
Call Trace:
 sysfs_remove_group+0x155/0x1b0
 device_del+0x1e1/0xb10
 device_unregister+0x11/0x30
 frob_unregister_client+0x8b/0xa0
 {iterator}+0xf9/0x170
 i2c_del_adapter+0x2e2/0x590
 frob_i2c_core_done+0x69/0xb6
 frob_hdw_destroy+0x179/0x370
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "WARNING in frob_i2c_core_done"


@pytest.mark.parametrize("primitive", ["down_trylock", "down_killable", "write_seqlock", "percpu_rwsem_wait",
                                       "rt_mutex_lock"])
def test_lockdep_never_blames_a_core_lock_primitive(primitive: str) -> None:
    log = f"""======================================================
WARNING: possible circular locking dependency detected
------------------------------------------------------
frob/31457 is trying to acquire lock:
ffffffff8600aef8 ((console_sem).lock){{-.-.}}, at: {primitive}+0x13/0x70

but task is already holding lock:
ffff88006c849558 (&rq->lock){{-.-.}}, at: frob_tick_handler+0x17e/0xb00
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "possible deadlock in frob_tick_handler"


def test_lockdep_still_blames_a_subsystems_lock_function() -> None:
    log = """WARNING: possible circular locking dependency detected
frob/1 is trying to acquire lock:
ffffffff8a5c6e68 (rtnl_mutex){+.+.}-{3:3}, at: rtnl_lock+0x17/0x20

but task is already holding lock:
ffff88806c849558 (&frob->lock){+.+.}-{3:3}, at: frob_ioctl+0x17e/0xb00
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "possible deadlock in rtnl_lock"


def _infoleak(filemap_frame: str) -> str:
    return f"""BUG: KMSAN: kernel-infoleak in _copy_to_iter+0x376/0x1c60
 _copy_to_iter+0x376/0x1c60
 copy_page_to_iter+0x420/0x880
 {filemap_frame}+0xbcc/0x1470
 frob_read_iter+0x6c0/0x8e0
 vfs_read+0x8fc/0xf50
"""


def test_the_page_caches_operations_are_blamed_but_not_its_lookup_helpers() -> None:
    crash = title_of_log(_infoleak("filemap_read"))
    assert crash is not None and crash.title == "KMSAN: kernel-infoleak in filemap_read"
    for helper in ("__filemap_get_folio", "filemap_get_pages", "filemap_alloc_folio", "filemap_add_folio"):
        crash = title_of_log(_infoleak(helper))
        assert crash is not None and crash.title == "KMSAN: kernel-infoleak in frob_read_iter", helper


@pytest.mark.parametrize("hook", ["write_comp_data", "__sanitizer_cov_trace_pc", "check_kcov_mode"])
def test_a_stall_sampled_in_a_kcov_hook_blames_the_looping_thread(hook: str) -> None:
    log = f"""rcu: INFO: rcu_sched self-detected stall on CPU
rcu: \t0-....: (10499 ticks this GP) idle=d0a/1/0x4000000000000002 softirq=51093/51093 fqs=3111
NMI backtrace for cpu 0
Call Trace:
 <IRQ>
 dump_stack+0xe1/0x157
 rcu_dump_cpu_stacks+0x183/0x1cf
 update_process_times+0x2d/0x70
 hrtimer_interrupt+0x2ea/0x730
 smp_apic_timer_interrupt+0x159/0x580
 apic_timer_interrupt+0x93/0xa0
 </IRQ>
RIP: 0010:{hook}+0x9/0x70
RSP: 0018:ffff8801e1757da8 EFLAGS: 00000206 ORIG_RAX: ffffffffffffff12
 kthread_should_park+0x54/0xd0
 frob_sq_thread+0x213/0xc80
 kthread+0x345/0x410
 ret_from_fork+0x3f/0x50
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "INFO: rcu detected stall in frob_sq_thread"


def test_a_fault_in_a_kcov_hook_is_still_the_hooks() -> None:
    log = """Unhandled fault: page domain fault (0x01b) at 0x00000ea3
PC is at write_comp_data+0x4c/0xd8
Backtrace:
[<802b3460>] (write_comp_data) from [<802b3668>] (__sanitizer_cov_trace_const_cmp1+0x34/0x3c)
[<802b3634>] (__sanitizer_cov_trace_const_cmp1) from [<814e3fb4>] (frob_decode+0x1e0/0x7f8)
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "Unhandled fault in write_comp_data"


def _slab_warning(site: str) -> str:
    return f"""------------[ cut here ]------------
WARNING: CPU: 1 PID: 5931 at mm/slab_common.c:935 {site}+0x34/0x12c
Modules linked in:
pc : {site}+0x34/0x12c
Call trace:
 {site}+0x34/0x12c
 kfree+0xf8/0x19c
 kvfree+0x40/0x50
 frob_expand_isize+0xcec/0x16b4
 frob_mark_inode_dirty+0x448/0x848
"""


def test_only_an_allocators_size_check_is_a_kmalloc_bug() -> None:
    crash = title_of_log(_slab_warning("kmalloc_slab"))
    assert crash is not None and crash.title == "WARNING: kmalloc bug in frob_expand_isize"
    # kfree() of memory kmalloc never gave: slab's internals are passed over, a plain WARNING
    crash = title_of_log(_slab_warning("free_large_kmalloc"))
    assert crash is not None and crash.title == "WARNING in frob_expand_isize"


@pytest.mark.parametrize("helper", ["frob_ldisc_lock_pair_timeout", "frob_lock_pair", "frob_lock_timeout"])
def test_a_hung_task_in_a_lock_protocols_internals_blames_the_operation(helper: str) -> None:
    log = f"""INFO: task getty:2986 blocked for more than 120 seconds.
      Not tainted 3.18.0 #12
"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.
Call Trace:
 [<ffffffff835bdeb4>] schedule+0x64/0x160
 [<ffffffff835c9c1a>] schedule_timeout+0x2fa/0x5d0
 [<ffffffff835cb4ec>] ldsem_down_write+0x1ac/0x357
 [<ffffffff835cbdd2>] {helper}+0xb2/0x160
 [<ffffffff81f8b03f>] frob_ldisc_hangup+0x21f/0x720
 [<ffffffff81f7a8d4>] __frob_hangup+0x3c4/0x9a0
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "INFO: task hung in frob_ldisc_hangup"


def test_a_hung_task_waiting_on_a_subsystems_lock_still_names_the_lock() -> None:
    log = """INFO: task frob:2986 blocked for more than 120 seconds.
Call Trace:
 __schedule+0x86c/0x1ed0
 schedule+0xfe/0x460
 __mutex_lock+0x6b2/0x1150
 rtnl_lock+0x17/0x20
 frob_ioctl+0x21f/0x720
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "INFO: task hung in rtnl_lock"


def test_a_sanitizer_firing_in_a_stack_dump_blames_who_asked_for_the_dump() -> None:
    log = """==================================================================
BUG: KASAN: stack-out-of-bounds in __show_regs+0x740/0x750
Read of size 8 at addr ffffc900047cfb48 by task kworker/1:3/5221
Call Trace:
 <IRQ>
 dump_stack_lvl+0x116/0x1f0
 print_report+0xc3/0x670
 kasan_report+0xd9/0x110
 __show_regs+0x740/0x750
 show_trace_log_lvl+0x26c/0x3d0
 sched_show_task+0x424/0x630
 show_state_filter+0xee/0x320
 frob_k_spec+0xed/0x150
 frob_kbd_event+0xcbd/0x17a0
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "KASAN: stack-out-of-bounds Read in frob_k_spec"


def test_a_workqueue_lockup_names_the_work_in_flight_when_the_kernel_lists_it() -> None:
    header = "BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck for 56s!\n"
    listing = """Showing busy workqueues and worker pools:
workqueue events: flags=0x100
  pwq 2: cpus=0 node=0 flags=0x0 nice=0 active=20 refcnt=21
    in-flight: 9:frob_fib_event_work for 58s frob_fib_event_work ,1074:frob_fib_event_work for 57s
    pending: free_obj_work, psi_avgs_work
"""
    crash = title_of_log(header + listing)
    assert crash is not None and crash.title == "BUG: workqueue lockup in frob_fib_event_work"
    assert not crash.corrupted
    crash = title_of_log(header)
    assert crash is not None and crash.title == "BUG: workqueue lockup"


@pytest.mark.parametrize(("symbol", "name"), [
    ("_Z8fakeNameiii", "fakeName"),
    # Rust's legacy mangling: the trailing hash dropped
    ("_ZN11rust_binder7process7Process10update_ref17h0123456789abcdefE",
     "rust_binder::process::Process::update_ref"),
    ("_ZN4frob6Device4openE", "frob::Device::open"),
])
def test_itanium_mangled_frames_are_titled_by_their_demangled_name(symbol: str, name: str) -> None:
    log = f"""WARNING: possible recursive locking detected
frob/24950 is trying to acquire lock:
ffff888106a71958 (&q->elevator_lock){{+.+.}}-{{4:4}}, at: {symbol}+0x49a/0x1a10
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == f"possible deadlock in {name}"


@pytest.mark.parametrize("symbol", ["_Z", "_Z999x", "_Zfoo", "_ZN3foo", "_ZN0E", "_Z" + "9" * 500])
def test_malformed_itanium_names_are_kept_as_printed(symbol: str) -> None:
    assert demangle_itanium(symbol) is None


# --- rules from a fourth sample (D): families, not names ----------------------------------------


@pytest.mark.parametrize("trap", ["divide error", "divide_error"])
def test_a_divide_error_is_titled_in_both_the_old_and_the_idtentry_spelling(trap: str) -> None:
    log = f"""{trap}: 0000 [#1] PREEMPT SMP KASAN
CPU: 1 PID: 6855 Comm: syz-executor857 Not tainted 5.9.0-rc8 #0
RIP: 0010:frob_tabledist.part.0+0x22a/0x2a0
Call Trace:
 <IRQ>
 frob_enqueue+0xac1/0x2e40
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "divide error in frob_tabledist"


@pytest.mark.parametrize(("lock", "what"), [("spinlock", "bad magic"), ("rwlock", "bad magic"),
                                             ("rwlock", "already unlocked"), ("spinlock", "wrong owner")])
def test_the_spinlock_debug_checks_title_spinlocks_and_rwlocks_alike(lock: str, what: str) -> None:
    log = f"""BUG: {lock} {what} on CPU#0, kworker/0:18/18158, 00000000859f2a8d
Workqueue: events frob_net_finalize_work
Call Trace:
 dump_stack+0x107/0x163
 do_raw_write_lock+0x1ef/0x280
 frob_mon_reinit_self+0x1f7/0x630
 frob_net_finalize+0x1df/0x310
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == f"BUG: {lock} {what} in frob_mon_reinit_self"
    assert crash.crash_type == "LOCKDEP"


@pytest.mark.parametrize("helper", ["warn_bogus_irq_restore", "__warn_printk", "warn_slowpath_fmt",
                                    "warn_alloc"])
def test_a_warning_raised_by_a_warning_helper_blames_its_caller(helper: str) -> None:
    log = f"""------------[ cut here ]------------
raw_local_irq_restore() called with IRQs enabled
WARNING: CPU: 0 PID: 4392 at kernel/locking/irqflag-debug.c:10 {helper}+0x1d/0x20
RIP: 0010:{helper}+0x1d/0x20
Call Trace:
 frob_wait+0xc9/0xe0
 __pv_queued_spin_lock_slowpath+0x86f/0xad0
 do_raw_spin_lock+0x200/0x2b0
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "WARNING in frob_wait"


_RECLAIM_LOCK_STATE = """================================
WARNING: inconsistent lock state
--------------------------------
inconsistent {SOFTIRQ-ON-W} -> {IN-SOFTIRQ-W} usage.
ksoftirqd/1/19 [HC0[0]:SC1[3]:HE1:SE0] takes:
ffffffff8c9dd960 (fs_reclaim){+.?.}-{0:0}, at: SITE+0x46/0x340
{SOFTIRQ-ON-W} state was registered at:
  lock_acquire+0x19f/0x4d0
  fs_reclaim_acquire+0x77/0x110
  kmem_cache_alloc_trace+0x42/0x310
  frob_numa_init+0x122/0x49f

stack backtrace:
Call Trace:
 dump_stack_lvl+0x1dc/0x2d8
 mark_lock+0x168c/0x1e00
 lock_acquire+0x19f/0x4d0
 fs_reclaim_acquire+0x77/0x110
 SITE+0x46/0x340
 frob_alloc_skb+0xd8/0x580
 frob_sendmsg_frag+0x6a1/0x1570
"""


def test_lockdep_blames_an_allocator_that_took_the_reclaim_lock_as_printed() -> None:
    # the allocator took lockdep's fs_reclaim pseudo-lock itself: the allocation is the site
    crash = title_of_log(_RECLAIM_LOCK_STATE.replace("SITE", "kmem_cache_alloc_node"))
    assert crash is not None and crash.title == "inconsistent lock state in kmem_cache_alloc_node"
    # any other generic site is still passed over, and the annotation helper is never blamed
    crash = title_of_log(_RECLAIM_LOCK_STATE.replace("SITE", "skb_put"))
    assert crash is not None and crash.title == "inconsistent lock state in frob_alloc_skb"


def test_a_lockdep_annotation_helper_is_never_blamed() -> None:
    log = """BUG: KASAN: slab-out-of-bounds in fs_reclaim_acquire+0x77/0x110
Read of size 8 at addr ffff8881c84f8b14 by task frob/1
Call Trace:
 kasan_report+0xe/0x12
 fs_reclaim_acquire+0x77/0x110
 frob_alloc_skb+0xd8/0x580
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "KASAN: slab-out-of-bounds Read in frob_alloc_skb"


@pytest.mark.parametrize("initialiser", ["init_timer_key", "timer_setup", "hrtimer_init", "__init_work"])
def test_odebug_init_active_object_blames_who_reinitialised_it(initialiser: str) -> None:
    log = f"""------------[ cut here ]------------
WARNING: CPU: 0 PID: 2484 at lib/debugobjects.c:260 debug_print_object+0x181/0x210
ODEBUG: init active (active state 0) object type: timer_list hint:           (null)
Call Trace:
 [<ffffffff8110c041>] warn_slowpath_fmt+0xb1/0xd0
 [<ffffffff81d15631>] debug_print_object+0x181/0x210
 [<ffffffff81d15eb2>] __debug_object_init+0x482/0x8a0
 [<ffffffff81253f0d>] {initialiser}+0x3d/0x390
 [<ffffffff81cbe2ef>] kobject_release+0x15f/0x250
 [<ffffffff81cbe5f0>] kobject_put+0x70/0xd0
 [<ffffffff81c62057>] frob_mq_unregister_disk+0x1d7/0x350
 [<ffffffff81c62058>] frob_del_gendisk+0x1d7/0x350
"""
    crash = title_of_log(log)
    # a teardown function is the culprit here: ODEBUG names the bug, it is no plain WARN()
    assert crash is not None and crash.title == "WARNING: ODEBUG bug in frob_mq_unregister_disk"


@pytest.mark.parametrize("helper", [" sysfs_remove_file_ns+0x5f/0x70\n device_remove_file+0x25/0x30\n",
                                    " devres_release_all+0x8c/0xc3\n device_release+0x39/0x200\n"
                                    " kobject_put+0x256/0x550\n device_unregister+0x34/0xc0\n",
                                    " device_remove_groups+0x1a/0x30\n"])
def test_the_driver_cores_teardown_blames_the_driver(helper: str) -> None:
    log = """BUG: KASAN: use-after-free in sysfs_remove_file_ns+0x5f/0x70
Read of size 8 at addr ffff8881c84f8b14 by task v4l_id/23697
Call Trace:
 kasan_report+0xe/0x12
""" + helper + """ frob_release+0x97/0x1c0
 frob_radio_close+0x6f/0x74
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "KASAN: use-after-free Read in frob_release"


@pytest.mark.parametrize("primitives", [
    " aes_encrypt+0x15cc/0x1db0\n aesti_encrypt+0x7d/0xf0\n crypto_ecb_encrypt+0x1e7/0x380\n"
    " crypto_skcipher_encrypt+0xe0/0x150\n xts_encrypt+0x3c4/0x540\n",
    " sha256_update+0x15cc/0x1db0\n crypto_shash_update+0xe0/0x150\n",
    " aes_encrypt+0x1239/0x1960\n cipher_crypt_one+0x120/0x2e0\n crypto_cipher_encrypt_one+0x33/0x40\n"
    " drbg_ctr_update+0x19a9/0x3700\n",
])
def test_the_crypto_layer_blames_the_caller_whose_data_it_computes_on(primitives: str) -> None:
    first = primitives.split("+", 1)[0].strip()
    log = f"""BUG: KMSAN: uninit-value in {first}+0x15cc/0x1db0
{primitives} frob_crypt_block+0x52c/0x900
 frob_encrypt_pagecache_blocks+0x3e7/0x8b0
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "KMSAN: uninit-value in frob_crypt_block"


def test_a_stack_overflow_under_setsockopt_blames_the_protocols_handler() -> None:
    log = """BUG: TASK stack guard page was hit at ffffc900054afff8 (stack is ffffc900054b0000..ffffc900054b8)
stack guard page: 0000 [#1] PREEMPT SMP KASAN
RIP: 0010:__sanitizer_cov_trace_const_cmp4+0x17/0x70
Call Trace:
""" + " frob_setsockopt+0x128/0xe40\n" * 20 + """ __sys_setsockopt+0x2db/0x610
 __x64_sys_setsockopt+0xba/0x150
 do_syscall_64+0x35/0xb0
 entry_SYSCALL_64_after_hwframe+0x44/0xae
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "BUG: stack guard page was hit in frob_setsockopt"


def _stall(frames: str) -> str:
    return """INFO: rcu_sched self-detected stall on CPU
Call Trace:
 <IRQ>
 update_process_times+0x32/0x80
 smp_apic_timer_interrupt+0x144/0x5e0
 apic_timer_interrupt+0x8e/0xa0
 </IRQ>
RIP: 0010:frob_abort_conn+0xb1f/0x1580
""" + frames


def test_a_stall_in_task_work_blames_the_queued_callback() -> None:
    crash = title_of_log(_stall(""" frob_put_super+0x123/0x440
 generic_shutdown_super+0x1bf/0x530
 deactivate_super+0x193/0x1c0
 frob_cleanup_mnt+0x16/0x20
 task_work_run+0x1ec/0x2a0
 exit_to_usermode_loop+0x313/0x370
 do_syscall_64+0x6be/0x820
"""))
    assert crash is not None and crash.title == "INFO: rcu detected stall in frob_cleanup_mnt"


def test_the_32_bit_entry_of_a_syscall_is_titled_by_the_bare_name() -> None:
    crash = title_of_log(_stall(""" __ia32_sys_frob_init+0x10/0x20
 do_syscall_64+0x103/0x610
 entry_SYSCALL_64_after_hwframe+0x49/0xbe
"""))
    assert crash is not None and crash.title == "INFO: rcu detected stall in frob_init"


def test_a_workqueue_lockup_names_the_stuck_pools_longest_running_work() -> None:
    log = """BUG: workqueue lockup - pool cpus=0 node=0 flags=0x0 nice=0 stuck for 168s!
Showing busy workqueues and worker pools:
workqueue events: flags=0x100
  pwq 6: cpus=1 node=0 flags=0x0 nice=0 active=1 refcnt=2
    in-flight: 5684:frob_other_pool_work for 170s
workqueue events_unbound: flags=0x2
  pwq 8: cpus=0-1 flags=0x6 nice=0 active=18 refcnt=19
    in-flight: 13:frob_unbound_work for 178s ,86:frob_unbound_work for 179s
workqueue events_power_efficient: flags=0x180
  pwq 2: cpus=0 node=0 flags=0x0 nice=0 active=6 refcnt=7
    in-flight: 5630:frob_periodic_work for 168s
workqueue frob-kex: flags=0x124
  pwq 2: cpus=0 node=0 flags=0x0 nice=0 active=1 refcnt=2
    in-flight: 5719:frob_handshake_worker for 180s
    pending: frob_other_pool_work
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "BUG: workqueue lockup in frob_handshake_worker"


# --- rules from the fifth sample (E) ------------------------------------------------------------


@pytest.mark.parametrize("panic_helper", ["panic_saved_regs", "__panic", "vpanic", "panic_smp_self_stop"])
def test_the_panic_paths_own_helpers_are_never_blamed(panic_helper: str) -> None:
    log = f"""BUG: scheduling while atomic: syz-executor.4/21395/0x00000201
Kernel panic - not syncing: scheduling while atomic
Call Trace:
 [<ffffffff842799f2>] dump_stack+0x14d/0x20b
 [<ffffffff813a89f9>] {panic_helper}+0xcb/0xcb
 [<ffffffff81442cdf>] __schedule_bug+0x10f/0x140
 [<ffffffff810010c8>] __schedule+0xd18/0x1d30
 [<ffffffff8100216f>] schedule+0x8f/0x1b0
 [<ffffffff8101ac24>] frob_to_usermode_loop+0x164/0x360
 [<ffffffff8101cb4e>] do_syscall_64+0x56e/0x6d0
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "BUG: scheduling while atomic in frob_to_usermode_loop"


def test_a_stall_sampled_in_kmsans_old_runtime_is_still_a_cross_cpu_call() -> None:
    log = """watchdog: BUG: soft lockup - CPU#1 stuck for 123s! [syz-executor1:24793]
RIP: 0010:msan_get_shadow_origin_ptr+0x6f/0x300
Call Trace:
 __msan_metadata_ptr_for_load_4+0x10/0x20
 smp_call_function_single+0x363/0x500
 smp_call_function_many+0x672/0xe30
 on_each_cpu_cond+0x335/0x420
 frob_bh_lrus+0x54/0x60
 frob_close+0xa6/0xf0
 __fput+0x458/0xa30
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "BUG: soft lockup in smp_call_function"


def test_a_leak_from_the_per_cpu_allocator_blames_who_allocated() -> None:
    log = """BUG: memory leak
unreferenced object 0xffff88005f7ac800 (size 2048):
  comm "syz-executor0", pid 6839, jiffies 4294947130 (age 39.460s)
  backtrace:
    [<00000000996d44e4>] __kmalloc+0x14f/0x2a0
    [<00000000d3775b57>] pcpu_mem_zalloc+0x6a/0x90
    [<00000000ba6d0050>] pcpu_create_chunk+0xb6/0x2a0
    [<000000007b267cc3>] pcpu_alloc+0x7e5/0x8b0
    [<00000000c6fad5c7>] __alloc_percpu_gfp+0x27/0x30
    [<0000000018bf48ad>] frob_map_create+0x149/0x520
    [<00000000807bbe88>] __x64_sys_bpf+0x169/0x340
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "memory leak in frob_map_create"


def test_the_dentry_leak_is_titled_by_the_operation_the_kernel_names() -> None:
    log = """BUG: Dentry ffff888119d8a000{i=0,n=.index}  still in use (1) [unmount of frobfs frob0]
------------[ cut here ]------------
WARNING: CPU: 0 PID: 367 at fs/dcache.c:1616 umount_check+0x18d/0x1d0
Call Trace:
 d_walk+0x309/0x540
 shrink_dcache_for_umount+0x8e/0x1b0
 generic_shutdown_super+0x66/0x2c0
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "BUG: Dentry still in use in unmount"


@pytest.mark.parametrize("copier", ["simple_copy_to_iter", "csum_and_copy_to_iter", "hash_and_copy_to_iter"])
def test_an_iov_iter_copy_callback_is_never_blamed(copier: str) -> None:
    log = f"""BUG: KMSAN: kernel-infoleak in _copy_to_iter+0x870/0x1fd0
 _copy_to_iter+0x870/0x1fd0
 {copier}+0x68/0xa0
 __frob_datagram_iter+0x123/0xdc0
 skb_copy_datagram_iter+0x5c/0x200
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "KMSAN: kernel-infoleak in __frob_datagram_iter"


def test_a_32_bit_arm_syscall_entry_is_titled_by_the_bare_name() -> None:
    log = """rcu: INFO: rcu_sched self-detected stall on CPU
[<806ab444>] (gic_handle_irq) from [<80100b6c>] (__irq_svc+0x6c/0x90)
Exception stack(0x91883f00 to 0x91883f48)
3f40: 60000013 ffffffff
[<80100b6c>] (__irq_svc) from [<80616f94>] (check_zeroed_user+0x140/0x1dc)
[<80616f94>] (check_zeroed_user) from [<80321578>] (sys_frobat2+0x124/0x170)
[<80321578>] (sys_frobat2) from [<80100080>] (ret_fast_syscall+0x0/0x54)
"""
    crash = title_of_log(log)
    assert crash is not None and crash.title == "INFO: rcu detected stall in frobat2"
    # the bodies behind the per-ABI wrappers keep their `sys_` name
    wrapped = " __sys_frobat2+0x10/0x20\n __x64_sys_frobat2+0x10/0x20\n do_syscall_64+0x1/0x2\n"
    crash = title_of_log(_stall(wrapped))
    assert crash is not None and crash.title == "INFO: rcu detected stall in sys_frobat2"
