"""THE TABLE: every kind of Linux crash panicd can title, in the order they are tried.

How a title is made (panicd/triage/title.py applies this table):

1. The first kernel line that matches some kind's `header` starts the crash report; on that
   line the kinds are tried top to bottom and the first whose header matches wins. So a
   specific kind (`WARNING: refcount bug`, matched on the `refcount_t:` text it prints) comes
   before the general one (`WARNING`). Lines in `NOT_A_CRASH` never start a report. When the
   log has a panic line, a report the guest survived is passed over for the next one (see
   `PANIC_LINE` at the end: a boot-time WARNING does not title a later Oops).
2. `details`, when set, is searched for in the report's next lines; its named groups join the
   header's (KASAN prints "Read of size 8" two lines after its header). When `details` is set
   and not found, the kind is skipped and the next one is tried.
3. `blame` names the strategy that picks the guilty frame (see `Blame`); `skip` adds frames,
   beyond `GENERIC_SKIP`, that are never to blame for this kind. Frames are taken from the
   report's own stack: the auxiliary stacks a report also prints (`AUX_STACK_HEADER`: where
   the object was allocated or freed, the locks held, ...) are never walked, unless a kind
   names one as its `evidence_stack`.
4. `title` is formatted with the captures and `frame`; then title.py normalises it (pids,
   addresses, line numbers, numbers) and caps it. When the kind needs a frame and none is
   found, the title says "in corrupted" and the report is marked corrupted.

Adding a crash kind: one `CrashKind(...)` entry here, placed before any more general entry
its header would also match, plus a small hand-written log in tests/test_crash_titles.py.

Each kind also carries `crash_type`, syzkaller's bug class for it (the `TYPE:` of its reports:
HANG, LOCKDEP, WARNING, KASAN-READ, ...; None where syzkaller gives none), exposed as
`CrashTitle.crash_type`.

Not covered on purpose: syzkaller's "unexpected kernel reboot" (a log that just stops and
boots again). A serial console file holds every clean reboot too, so that rule would title
healthy guests; panicd learns of real crashes from pvpanic instead.

Every pattern here runs on text a guest wrote: each is anchored or starts with a literal, and
none nests quantifiers over overlapping characters, so matching stays linear in the line.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass


class Blame(enum.Enum):
    """Which frame a crash kind blames."""

    NONE = "none"            # the title names no function
    HEADER = "header"        # the function in the header line's `fn` capture, else the trace
    HEADER_AS_IS = "header as is"  # the header's `fn`, even a generic one (KCSAN names both racers)
    NAMED = "named"          # the `fn` the report names as the culprit (`caller is f`), even a
    #                          generic one, unless the kind's own `skip` matches it; else the trace
    RIP = "rip"              # the faulting PC (`RIP:`, `IP:`, `pc :`, `PC is at`), else the trace
    TRACE = "trace"          # the first frame of the report's stack trace that is not skipped
    STALL = "stall"          # an RCU stall or soft lockup: the stalled code's entry point
    LOCK = "lock"            # lockdep: the function at the first `at: func+0x..`, else the trace
    STUCK_WORK = "stuck work"  # a workqueue lockup: the work in flight longest on the stuck pool,
    #                            else the header's `fn` (the first work in flight anywhere)


@dataclass(frozen=True)
class CrashKind:
    header: re.Pattern[str]
    title: str                            # str.format with the header's groups and {frame}
    blame: Blame = Blame.TRACE
    details: re.Pattern[str] | None = None
    skip: re.Pattern[str] | None = None   # more frames never to blame (searched in the name)
    needs_frame: bool = True              # no frame found -> "in corrupted", corrupted
    corrupted: bool = False               # this shape of report is always garbled
    kind: str = ""                        # the bug class, when not the title before " in {frame}"
    # syzkaller's bug class (its reports' `TYPE:`: HANG, LOCKDEP, KASAN-READ, ...), or a function
    # of the captures that gives it; None for the kinds syzkaller gives no class.
    crash_type: str | Callable[[Mapping[str, str]], str | None] | None = None
    # A task blocked inside an API's body (`do_read_cache_folio` called by `read_cache_folio`)
    # is blocked in the API: blame the function its callers called.
    blame_api: bool = False
    # Lockdep, hung tasks and sleeping in atomic context name the lock a task takes, so a
    # function that takes one (`rtnl_lock`) may be to blame; every other kind skips such
    # wrappers (`LOCK_WRAPPER`).
    blames_lock_functions: bool = False
    # The auxiliary stack (one of `AUX_STACK_HEADER`'s) that is this kind's evidence: a bad
    # page's state was set by whoever allocated it, so `BUG: Bad page state` walks page_owner's
    # allocation stack first. Every other auxiliary stack is never walked.
    evidence_stack: re.Pattern[str] | None = None


def _re(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _names(*prefixes: str) -> re.Pattern[str]:
    """Function names starting with any of these prefixes (a frame's name, not a whole line)."""
    return re.compile("^(?:" + "|".join(prefixes) + ")")


# A function name as printed in a frame or a header: `foo`, `foo.isra.3`, `foo.cold`.
FN = r"(?P<fn>[A-Za-z_][\w.$]{0,200})"

# Frames that are never to blame: reporting machinery, sanitizers, lock and allocator helpers,
# string and copy helpers, exception and interrupt glue, syscall entry. Matched as prefixes of
# the function name (after `.isra.N`-style suffixes are cut).
GENERIC_SKIP = _names(
    # reporting: dump_stack, printing, oops and panic paths
    r"dump_stack", r"__dump_stack", r"sched_show_task",
    # the stack and register dumpers, with any prefix (`__show_regs`) and the task-state dump
    # behind sysrq-t (`show_state_filter`): a sanitizer that fires while they print was asked to
    # print by their caller, whose report or request it is
    r"_{0,2}show_(?:stack|regs|trace|state)",
    r"print_", r"__print_", r"printk", r"vprintk", r"_printk",
    # panic() and its own helpers, whatever the kernel calls them (`__panic`, 6.x's `vpanic`,
    # `panic_saved_regs`, `panic_smp_self_stop`): they stop the machine for the code that called them
    r"_{0,2}v?panic(?:_|$)",
    # the WARN machinery and the kernel's warning helpers, whatever the check they print for
    # (`__warn`, `warn_slowpath_fmt`, `warn_alloc`, `warn_bogus_irq_restore`): a helper that
    # only warns is called by the code whose state is wrong
    r"_{0,2}warn(?:_|$)",
    r"report_bug", r"handle_bug", r"fixup_bug", r"do_error_trap", r"do_trap", r"do_invalid_op",
    r"invalid_op$", r"exc_", r"asm_exc_", r"die$", r"__die", r"oops_", r"no_context", r"bad_area",
    r"__bad_area", r"do_page_fault", r"__do_page_fault", r"page_fault", r"do_user_addr_fault",
    r"do_kern_addr_fault", r"kernelmode_fixup_or_oops", r"handle_page_fault", r"do_general_protection",
    r"general_protection", r"do_divide_error", r"divide_error", r"do_int3", r"do_debug", r"bug_handler",
    r"__bug$", r"do_mem_abort", r"el1_", r"el1h_", r"__do_kernel_fault", r"do_translation_fault",
    r"do_bad_area", r"die_kernel_fault", r"arm64_", r"do_undefinstr", r"el0_",
    r"check_panic_on_warn", r"nmi_", r"arch_trigger", r"trigger_", r"rcu_dump_cpu_stacks",
    r"dump_header", r"watchdog", r"lockup_detector", r"dump_backtrace", r"__dump_backtrace",
    r"__stack_chk_fail", r"\w{0,60}_panic$", r"rust_helper_BUG", r"__pfx_",
    # FORTIFY_SOURCE's reporter: it WARNs (6.9+) or panics (fortify_panic) for the caller whose
    # string or memory call overflowed
    r"_{0,2}fortify_report",
    # assertion-failure reporters (`btrfs_assertfail`, `__assert_fail`), not a function that
    # checks a condition of its own (`assert_slb_presence` is the WARN site syzkaller names)
    r"\w{0,60}assert(?:ion)?_?fail", r"\w{0,60}_assert_", r"__assert", r"\w{0,60}assert$",
    r"dev_vprintk", r"dev_printk", r"_dev_(?:err|warn|info|notice|crit)",
    r"hex_dump", r"__x86_indirect_thunk", r"__x86_return_thunk", r"retint_", r"___preempt_schedule",
    r"local_apic_timer_interrupt", r"program_check_", r"reacquire_held_locks", r"perf_trace_",
    r"trace_event_raw_event", r"dump_cpu_task", r"\w{0,60}_is_static_object", r"down$", r"up$",
    r"seq_read", r"seq_printf", r"__check_heap_object", r"proc_create", r"device_add$", r"get_device_parent",
    r"device_destroy", r"add_uevent_var", r"__dev_printk", r"dpm_sysfs_remove", r"__cancel_work",
    r"try_to_grab_pending",  # the workqueue's cancel internals, like __cancel_work
    r"cancel_work", r"cancel_delayed_work", r"drain_workqueue", r"destroy_workqueue", r"idr_", r"ida_",
    r"radix_tree_", r"__radix_tree", r"rb_", r"__rb_", r"rhashtable_", r"__rhashtable", r"va_format",
    r"wait_for_completion", r"__wait_for_common", r"put_device",
    # the timer API, every variant and its internals (`del_timer_sync`, `__mod_timer`,
    # `try_to_del_timer_sync`, 6.2's `timer_delete_sync`, `timer_shutdown_sync`): it acts on the
    # timer its caller owns
    r"_{0,2}(?:try_to_)?del_timer", r"_{0,2}mod_timer", r"_{0,2}timer_(?:delete|shutdown)",
    # ... and the initialisers of timers and work items (`init_timer_key`, `timer_setup`,
    # `hrtimer_init`, `__init_work`): ODEBUG's "init active object" is the caller re-initialising
    # an object it still has armed
    r"_{0,2}init_timer", r"_{0,2}timer_(?:setup|init)", r"_{0,2}hrtimer_init",
    r"_{0,2}init_(?:delayed_)?work$",
    r"___kmalloc", r"__kobject",
    # kmalloc's internals whatever their prefix (`__do_kmalloc_node`, `free_large_kmalloc`) and a
    # subsystem's accounted wrapper of it (`sock_kmalloc`): they act for the caller that allocates
    r"\w{0,40}_kmalloc(?:_\w{0,40})?$", r"mutex_", r"\w{0,40}rt_mutex", r"walk_stackframe", r"__virt_to_phys",
    r"do_tag_check_fault", r"do_DataAbort", r"do_PrefetchAbort", r"__do_user_fault", r"do_sea$",
    r"arch_timer_handler", r"_R\w{0,200}rust_begin_unwind", r"_R\w{0,200}panicking",
    # Rust's panic and formatting machinery (demangled): the code that overflowed is to blame
    r"core::", r"<core::", r"__rustc::", r"rust_begin_unwind", r"usb_control_msg",
    # the USB core's URB and anchor helpers act on the URBs their driver built or anchored
    r"usb_submit_urb", r"usb_start_wait_urb", r"usb_(?:kill|poison|unpoison|unlink|block|unblock|"
    r"free|alloc|get|put|anchor|unanchor)_urb$", r"usb_(?:kill|poison|unpoison|unlink|scuttle|"
    r"wait|get_from)_anchored_urbs?$", r"usb_wait_anchor_empty", r"usb_anchor_urb",
    # printk's own machinery, whatever its prefix (`__printk_safe_flush`, `printk_deferred`)
    r"__printk", r"console_unlock", r"console_flush", r"console_emit",
    r"usb_bulk_msg", r"usb_interrupt_msg", r"__read_once", r"__seqprop", r"ref_tracker", r"__phys_addr",
    # sanitizers and coverage
    r"kasan", r"__kasan", r"__asan", r"asan_", r"check_memory_region", r"kmsan", r"__kmsan", r"__msan",
    r"msan_",  # KMSAN's runtime before it was renamed kmsan_ (2018-19: `msan_get_shadow_origin_ptr`)
    r"hwasan", r"__hwasan", r"kcsan", r"__kcsan", r"__tsan", r"ubsan", r"__ubsan", r"handle_overflow",
    r"kfence", r"__kfence",
    r"__sanitizer", r"check_stack_object", r"kmemleak", r"__kmemleak",
    r"should_fail", r"fail_dump", r"__should_failslab",
    # lockdep and lock helpers
    r"lock_acquire", r"lock_release", r"lock_contended", r"__lock_acquire",
    r"lock_is_held", r"lockdep", r"__lockdep", r"mark_lock", r"check_prev_add", r"check_prevs_add",
    r"validate_chain", r"lock_downgrade", r"register_lock_class", r"look_up_lock_class",
    r"find_held_lock", r"match_held_lock", r"__lock_release", r"mark_usage", r"check_noncircular",
    r"check_deadlock", r"check_irq_usage", r"valid_state", r"mark_held_locks", r"trace_hardirqs",
    r"_raw_", r"__raw_", r"raw_spin", r"do_raw_", r"spin_", r"_spin_", r"queued_", r"native_queued",
    r"__pv_queued", r"__mutex_", r"down_read",
    r"down_write", r"up_read", r"up_write", r"__down", r"__up_", r"rwsem_", r"__rwsem", r"percpu_down",
    r"percpu_up", r"rcu_read_lock", r"rcu_read_unlock", r"__rcu_read", r"rcu_lock_", r"preempt_",
    r"local_bh_", r"__local_bh", r"_local_bh", r"lock_sock", r"release_sock", r"lockref_",
    r"seqcount_", r"write_seqcount", r"read_seqcount", r"__might_", r"___might_", r"might_",
    # lockdep's annotation helpers take a pseudo-lock for their caller (`fs_reclaim_acquire` for
    # an allocation that may reclaim, `might_alloc`, `lock_map_acquire`): never the culprit
    r"_{0,2}fs_reclaim_", r"lock_map_",
    # The core lock primitives, every variant (`down_trylock`, `down_killable`, `write_seqlock`,
    # `percpu_rwsem_wait`): never to blame, for any kind, lockdep's too. They differ from a
    # subsystem's lock function (`rtnl_lock`, `LOCK_WRAPPER`), which names the lock a task takes
    # and which lockdep and hung-task kinds may blame.
    r"down_(?:trylock|interruptible|killable|timeout)", r"downgrade_write", r"__percpu_",
    r"percpu_rwsem", r"(?:read|write)_seq(?:lock|unlock|begin|retry)",
    # allocators and object lifetime helpers
    r"kmalloc", r"__kmalloc", r"slab_", r"__slab", r"___slab", r"kfree", r"__kfree",
    r"kzalloc", r"kcalloc", r"kmemdup", r"kstrdup", r"kstrndup", r"krealloc", r"__krealloc",
    r"kvmalloc", r"kvzalloc", r"kvfree", r"vmalloc", r"__vmalloc", r"vzalloc", r"vfree", r"__vfree",
    r"alloc_pages", r"__alloc_pages", r"cache_alloc", r"____cache_alloc", r"cache_free", r"___cache_free",
    r"free_debug_processing", r"alloc_debug_processing", r"__free_pages", r"free_pages",
    r"quarantine_", r"set_track", r"memcg_", r"__memcg", r"obj_cgroup", r"kmem_", r"setup_object",
    r"new_slab", r"allocate_slab", r"page_alloc", r"get_page_from_freelist", r"mempool_",
    r"__debug_object", r"debug_",
    r"refcount_", r"__refcount_", r"kref_", r"atomic_", r"arch_atomic", r"__list_", r"list_",
    r"hlist_", r"__hlist", r"check_object_size", r"__check_object_size", r"check_heap_object",
    r"usercopy_", r"__virt_addr_valid", r"post_alloc_hook", r"prep_new_page", r"__kmem_cache",
    # free-path and deferral helpers: they act on the object their caller hands over, so a
    # debug-objects or sanitizer check in them ("free active object") is the caller's doing
    r"call_rcu", r"__call_rcu", r"call_srcu",
    r"__kvfree_call_rcu", r"__vunmap", r"vunmap$", r"free_percpu", r"__free_percpu",
    r"free_unref_", r"free_pcppages", r"__free_one_page", r"__put_page",
    r"put_page$", r"put_pages_list", r"release_pages", r"bad_page$",
    r"page_pool_alloc", r"__page_pool_alloc", r"page_pool_put", r"__page_pool_put",
    # the per-CPU allocator, its API and internals (mm/percpu.c: `__alloc_percpu_gfp`,
    # `pcpu_alloc`, `pcpu_create_chunk`): it allocates for the caller, as kmalloc does
    r"_{0,2}alloc_percpu", r"pcpu_",
    r"alloc_page_interleave", r"__alloc_frozen_pages", r"alloc_frozen_pages",
    r"xas_",
    # the crypto layer's algorithms, the modes built on them and its API (`aes_encrypt`,
    # `sha256_update`, `xts_encrypt`, `crypto_skcipher_encrypt`, the DRBG): they compute on the
    # key and data their caller hands over, so an uninit or bad buffer there is the caller's
    r"_{0,2}aes(?:ti)?_", r"_{0,2}sha\d{1,3}_", r"_{0,2}crypto_", r"cipher_crypt_", r"drbg_",
    r"(?:xts|ecb|cbc|lrw|cts)_(?:en|de)crypt",
    # checksums (`crc16`, `crc32c`, `crc32_le`) read the buffer their caller hands them
    r"crc\d{0,2}c?$", r"crc\d{0,2}_", r"crc_", r"__crc", r"test_and_", r"__test_and_",
    r"_atomic_dec_and", r"__bitmap", r"find_next_bit", r"find_first_bit", r"_find_next_bit",
    # page cache and page allocation: they fail on the page or folio their caller handed them
    # The page cache's lookup, allocation and insertion helpers (`__filemap_get_folio`,
    # `filemap_alloc_folio`, `filemap_add_folio`, `filemap_get_pages`). Not its operations, which
    # are the code at fault when they fail (`filemap_read` copying to user space, `filemap_fault`).
    r"_{0,2}filemap_(?:get|alloc|add|grab|create)_", r"find_lock_", r"__find_lock_", r"find_get_",
    r"pagecache_get_page",
    r"folio_", r"__folio_", r"\w{0,60}_noprof$",
    # the page API's lock and reference helpers (wrappers of the folio ones since 5.16)
    r"unlock_page$", r"lock_page$", r"__lock_page", r"trylock_page$", r"get_page$", r"wait_on_page_",
    r"__pagevec_", r"pagevec_",
    # truncation, its per-folio step and its wrappers: they walk the mapping that the
    # filesystem's evict/setattr hands over (a BUG_ON of their own, `kernel BUG in
    # truncate_inode_partial_page`, keeps its name: that function is not listed)
    r"truncate_inode_pages", r"truncate_cleanup_", r"truncate_pagecache", r"truncate_setsize$",
    # VFS reference and inode-state helpers: a bad reference or link count was the caller's
    r"iput$", r"iput_final", r"dput$", r"fast_dput", r"__dentry_kill", r"fput$", r"fput_many",
    r"____fput", r"drop_nlink", r"clear_nlink", r"inc_nlink", r"set_nlink", r"mark_buffer_dirty",
    r"__mark_inode_dirty", r"mark_inode_dirty", r"__brelse", r"brelse",
    # timers a caller stops or re-arms
    r"sk_stop_timer", r"sk_reset_timer",
    # generic helpers: wait queues, work queues, timers, kobjects, devices, socket buffers; the
    # caller that misused them is to blame
    r"__wake_up", r"wake_up$", r"wake_up_(?:process|state|bit|var|all|interruptible|locked|poll)",
    r"finish_wait", r"prepare_to_wait",
    # a completion is signalled under its own wait-queue lock, for the caller that owns it
    r"complete$", r"complete_all$", r"swake_up",
    r"kthread_stop", r"kobject_", r"device_del", r"device_unregister", r"klist_", r"__flush_work",
    # the driver core's teardown: removing a device's attributes, links and managed resources
    # (`device_remove_file`, `device_remove_groups`, `devres_release_all`) and releasing it (the
    # kobject release callback `device_release`, `device_release_driver`) for the driver or bus
    # that removes it; a bad attribute or resource left behind is that driver's
    r"_{0,2}device_remove_", r"_{0,2}devres_", r"_{0,2}device_release",
    # the device model's iterators call back into their caller's function for each device,
    # driver or child (`device_for_each_child`, `bus_for_each_dev`, `driver_for_each_device`)
    r"(?:device|bus|driver|class)_for_each_",
    # what a kernel thread's loop asks on each pass (`kthread_should_stop`, `kthread_should_park`):
    # the loop is the thread's function, the caller
    r"_{0,2}kthread_should_", r"kthread_parkme",
    r"flush_work", r"__queue_work", r"queue_work", r"lock_timer_base", r"sysfs_remove", r"sysfs_create",
    r"skb_pull", r"skb_put", r"skb_push", r"__skb_pull", r"skb_over_panic", r"skb_under_panic",
    # string, memory and user-copy helpers
    r"memcpy", r"__memcpy", r"memmove", r"__memmove", r"memset", r"__memset", r"memcmp", r"bcmp",
    r"memchr", r"memscan", r"__str", r"kstrto",
    r"str(?:n?len|n?cmp|n?casecmp|[ln]?cpy|scpy|[ln]?cat|r?chr|nchr|n?str|sep|spn|cspn|pbrk)\b",
    r"simple_strto", r"vsnprintf", r"snprintf",
    r"sprintf", r"vsprintf", r"vscnprintf", r"scnprintf", r"bin_printf", r"string$", r"string_nocheck",
    r"hex_string", r"pointer$", r"number$", r"format_decode", r"widen_string", r"read_word_at_a_time",
    r"copy_to_user", r"copy_from_user", r"_copy_", r"__copy_", r"raw_copy", r"copy_user",
    r"copyin", r"copyout", r"copy_overflow", r"get_user", r"put_user", r"__get_user", r"__put_user",
    r"memdup_user", r"copy_page_", r"csum_partial",
    # the iov_iter copies and the per-chunk callbacks that wrap them (`_copy_to_iter`,
    # `simple_copy_to_iter`, `csum_and_copy_to_iter`, `hash_and_copy_to_iter`): they copy the
    # buffer their caller walks (`__skb_datagram_iter`) to or from user space
    r"\w{0,40}copy_(?:to|from)_iter",
    r"rep_movs",
    # port and MMIO accessors: they fault on the I/O address their caller handed them
    r"logic_(?:in|out)[bwl]?s?$", r"ioread\d", r"iowrite\d", r"__raw_(?:read|write)[bwlq]$",
    # interrupt, softirq, entry and thread glue
    r"apic_timer_interrupt", r"smp_apic_timer_interrupt", r"sysvec_", r"asm_sysvec_", r"irq_exit",
    r"__irq_exit", r"do_softirq", r"__do_softirq", r"invoke_softirq", r"handle_softirqs", r"do_IRQ",
    r"common_interrupt", r"asm_common_interrupt", r"ret_from_intr", r"call_on_stack", r"run_on_irqstack",
    r"__sysvec_", r"entry_SYSCALL", r"entry_SYSENTER", r"entry_INT80", r"do_syscall", r"__do_syscall",
    r"do_fast_syscall", r"do_int80", r"syscall_", r"__syscall", r"invoke_syscall", r"el0t_", r"el0_svc",
    r"do_el0_svc", r"ret_from_fork", r"kthread$", r"__kthread", r"ret_fast_syscall",
    r"system_call", r"fast_syscall", r"x64_sys_call", r"x86_64_start", r"start_secondary",
    r"cpu_startup_entry", r"secondary_startup", r"rest_init", r"arch_call_rest_init",
    r"unwind_", r"arch_stack_walk", r"stack_trace_", r"save_stack", r"__save_stack",
    r"depot_", r"stack_depot",
    # page_owner records the allocation stack from inside the allocator: its own frames top it
    r"_{0,2}(?:re)?set_page_owner",
    r"kernel_text_address", r"__kernel_text_address", r"is_bpf_text",
)

_SCHED = _names(
    r"__schedule", r"schedule", r"preempt_schedule", r"_cond_resched", r"__cond_resched",
    r"io_schedule", r"context_switch", r"__switch_to", r"finish_task_switch", r"__switch_to_asm",
)

# A hung task's stack is all waiting: skip whatever waits, sleeps or takes a sleeping lock
# (searched anywhere in the name), and RCU's own machinery (`rcu_barrier`, `__wait_rcu_gp`).
# A subsystem's lock (`rtnl_lock`) and the grace-period wait a caller asked for
# (`synchronize_rcu`, `synchronize_sched`) stay to blame: they say what the task waits for.
# The console lock is printk's: any task that prints may wait on it, so its caller is to blame.
# A subsystem's lock function names the lock waited for when it takes one lock plainly
# (`rtnl_lock`); its variants that take several at once (`*_lock_pair*`) or give up after a
# timeout (`*_lock*_timeout`) are that lock protocol's internals: the operation that called
# them (`tty_ldisc_hangup`) is what hung.
HUNG_SKIP = _re(
    r"schedule|^__sched|^sched_|wait|switch_to|context_switch|mutex|rwsem|down_read|down_write|^down|"
    r"completion|sleep|freezer|refrigerator|kthread|__lock|_slowlock|_slowpath|^__rela|^rcu_|^__rcu|"
    r"^console_(?:lock|trylock)|_lock_pair|_lock\w{0,30}_timeout$")

# A subsystem registry's teardown (`i2c_del_adapter`, `tty_unregister_device`, the netdev
# unregister batch, srcu's destructor) and an object's destructor (`*_free`: a library's
# per-object state, freed on its owner's behalf) act on the object their caller hands over, and a WARN()
# in or under it is a lifetime check on the state the caller left (still registered, still in
# use): in a plain WARN() report (titled `PLAIN_WARNING`) these are skipped, as the WARN() site
# and when walking up the stack, and the driver's remove/disconnect/destroy path is blamed. Not
# in a WARNING that names its bug (ODEBUG's "free active object" or "init active object" is the
# teardown that freed or re-initialised it: `WARNING: ODEBUG bug in blk_mq_unregister_disk`), nor
# in sanitizer reports: there syzkaller blames the teardown function itself in some reports
# (`KASAN: use-after-free Write in video_unregister_device`) and its caller in others
# (`... in hso_probe` past tty_unregister_device), so no rule covers both.
PLAIN_WARNING = "WARNING in "
TEARDOWN = _re(
    r"^(?:\w{0,60}_)?unregister(?:_\w{0,60})?$|^\w{0,60}_del_adapter$|^rollback_registered|"
    r"^cleanup_srcu_struct$|^\w{1,60}_free$")

# Stacks a report prints besides its own, each under one of these headers: where the object
# was allocated or freed (KASAN, KFENCE, KMSAN, SLUB debug, page_owner), work queued on it
# earlier, when a lock state or IRQ state was last set (lockdep), the locks a task holds
# (lockdep's `#0: ... at: f`), another leaked object's backtrace. They explain the crash; they
# are not where it happened, so no kind blames their frames (unless it names one as its
# `evidence_stack`). A section runs from its header to `AUX_STACK_OVER` (or a stack's end).
# Not listed: lockdep's dependency chain (`-> #1 (&lock){+.+.}:`), walked only when the
# report's own backtrace is all generic (see title.py's blame_lock).
AUX_STACK_HEADER = _re(
    r"^(?:Allocated by task|Freed by task|(?:allocated|freed) by task \d|"
    r"(?:INFO: )?(?:Allocated|Freed) in \S|"
    r"Last potentially related work creation|Second to last potentially related work creation|"
    r"Uninit was (?:created|stored)|Local variable \S{1,200} created at|"
    r"page_owner tracks the page|page last allocated via|page last free|page_owner free stack|"
    r"\{[A-Z -]{1,40}\} state was registered at|irq event stamp|(?:hard|soft)irqs last|"
    r"\d{1,6} locks? held by|no locks held by|Showing all locks held|"
    r"unreferenced object 0x)")
LEAKED_OBJECT = _re(r"^unreferenced object 0x")
# An entry of lockdep's list of the locks a task holds (`#0: ffff.. (&lock){+.+.}, at: f+0x..`):
# evidence only for the kinds that report a lock still held.
HELD_LOCK_ENTRY = _re(r"^ {0,4}#\d{1,4}: ")
# Where an auxiliary section ends: the report's own stack, or its task and register preamble.
AUX_STACK_OVER = _re(
    r"^(?:Call Trace:|Call trace:|Backtrace:|stack backtrace:|CPU: \d|Hardware name:|"
    r"Modules linked in|RIP: |pc : |PC is at |NIP \[|Workqueue: |other info that might help|"
    r"-{3,}\[ |={10,}|-{10,})")

# kmemleak's backtrace starts in the allocator: blame the first caller that is not allocating.
LEAK_SKIP = _re(r"alloc|create_object|kmemleak|kstrdup|kmemdup|kasprintf|kvasprintf|krealloc|^__do_")

# A function that only takes or drops a lock for its caller (`reiserfs_write_lock`,
# `__task_rq_lock`): a fault or bad state found there was the caller's doing.
LOCK_WRAPPER = _re(r"_(?:lock|unlock|trylock)(?:_nested|_irq|_irqsave|_irqrestore|_bh|_shared)?$")

# Lockdep names the lock's taker, and a subsystem's lock function (`rtnl_lock`) is one. But
# the workqueue core takes lockdep's pseudo-locks for work items and flushes
# (`(work_completion)`, `(wq_completion)`) on every work's behalf: its sites say nothing.
LOCK_SKIP = _names(r"process_one_work", r"worker_thread", r"flush_workqueue", r"__flush_workqueue",
                   r"drain_workqueue", r"__flush_work", r"flush_work", r"start_flush_work")

# The allocator takes lockdep's reclaim pseudo-lock (`fs_reclaim`) itself, on entry, wherever it
# may reclaim memory: when lockdep names an allocator as the site taking a lock (`(fs_reclaim)
# ..., at: kmem_cache_alloc_node+0x46`), the allocation is the operation that took it (one that
# may reclaim, made in a context that must not), so that allocator is blamed as printed, though
# it is generic everywhere else. Only at the site lockdep prints, never when walking a stack.
LOCK_TAKING_ALLOCATOR = _names(
    r"kmem_cache_alloc", r"__kmem_cache_alloc", r"_{0,2}kmalloc", r"_{0,2}alloc_pages", r"_{0,2}vmalloc")

# An RCU stall or soft lockup interrupts code that loops: blame the function a dispatcher
# called into it through (a syscall, a file or socket operation, a received packet's protocol
# handler, a work item, a timer), found from the innermost frame outwards.
STALL_DISPATCH = _names(
    r"do_syscall_", r"entry_SYSCALL", r"entry_SYSENTER", r"invoke_syscall", r"do_fast_syscall",
    r"do_int80", r"x64_sys_call", r"el0_svc_common", r"ret_fast_syscall",
    r"el0_svc_handler",   # arm64's syscall dispatcher in 4.19-5.0, before el0_svc_common
    r"__netif_receive_skb_core", r"__netif_receive_skb_one_core", r"__netif_receive_skb_list_core",
    r"process_one_work", r"call_timer_fn", r"tasklet_action_common",
    # the callbacks a task queued to run on its way back to user space (`__cleanup_mnt`, `____fput`)
    r"task_work_run$",
    # hrtimer callbacks: called by __run_hrtimer, or by __hrtimer_run_queues when it is inlined
    r"__run_hrtimer$", r"__hrtimer_run_queues$",
    r"__vfs_write", r"new_sync_write", r"__vfs_read", r"new_sync_read", r"vfs_ioctl", r"do_vfs_ioctl",
    r"__fput", r"sock_sendmsg_nosec", r"sock_recvmsg_nosec", r"__sock_sendmsg",
    # a socket's protocol handler, called through the common socket layer
    r"sock_common_setsockopt$", r"sock_common_getsockopt$",
    # ... or by the syscall's body itself, where that call is a tail call or inlined and no
    # sock_common_* frame is printed (`__sys_setsockopt`, named `sys_setsockopt` like the syscall,
    # -> `tls_setsockopt`)
    r"(?:sys_)?setsockopt$", r"(?:sys_)?getsockopt$",  # (32-bit arm: the bare entry, see title.py)
    # Not ____sys_sendmsg/____sys_recvmsg: they are the per-message body of sendmmsg/recvmmsg,
    # and a stall there is the syscall's (`INFO: rcu detected stall in sys_recvmmsg`).
    r"__do_fault", r"vfs_write$", r"vfs_read$", r"sock_sendmsg$", r"sock_recvmsg$",
    r"\w{0,40}netlink_rcv_msg$",
    # netlink's dump loop calls the family's dump callback (a `*_dumpit`) once per batch: a dump
    # that never ends is the callback's, as a request's is its handler's (netlink_rcv_msg)
    r"netlink_dump$",
    r"mmap_region", r"\w{0,60}_compat_ioctl$", r"do_dentry_open",
    # the ioctl syscall itself when vfs_ioctl is inlined into it (the 32-bit compat_SyS_ioctl,
    # titled `ioctl`; sys_ioctl): it calls the file's ioctl method
    r"ioctl$", r"sys_ioctl$",
)
# The timer interrupt's entry: the frames after it are the code it found running (inside a
# softirq or on the task's stack), whatever `<IRQ>` markers surround them.
STALL_INTERRUPT = _re(
    r"^(?:asm_)?(?:smp_)?(?:sysvec_)?apic_timer_interrupt$|^el1h?_(?:64_)?irq$|^__irq_svc$")
# A worker thread's loop: when no frame of the work item it runs is reliable, the `Workqueue:`
# line printed with the task names the work function.
STALL_WORKER = _names(r"process_one_work", r"worker_thread", r"kthread$", r"ret_from_fork")
# A CPU stuck waiting in a cross-CPU call stalls in the call itself, whoever made it;
# `on_each_cpu*` is smp_call_function() plus the local call.
STALL_CROSS_CALL = _re(r"^smp_call_function|^on_each_cpu")
STALL_CROSS_CALL_NAME = "smp_call_function"
STALL_SKIP = _names(
    r"rcu_", r"__rcu", r"check_cpu_stall", r"print_cpu_stall", r"print_other_cpu_stall",
    r"update_process_times", r"tick_", r"__hrtimer", r"hrtimer_", r"__run_hrtimer",
    r"smp_call_function_single_interrupt", r"generic_smp_call_function", r"flush_smp_call_function",
    r"__flush_smp_call_function", r"irq_work", r"__irq_work", r"run_timer_softirq", r"__run_timers",
    r"call_timer_fn", r"expire_timers", r"net_rx_action", r"process_backlog", r"__netif_receive_skb",
    r"netif_receive_skb", r"__schedule", r"schedule", r"_cond_resched", r"__cond_resched",
    r"watchdog_timer_fn", r"csd_lock_wait", r"smp_call_function_many_cond",
    # KCOV's hooks (`__sanitizer_cov_*`, generic anyway, and their internals `write_comp_data`,
    # `check_kcov_mode`) run in every basic block of instrumented code, so the timer often finds
    # them running: they are never the stalled code. A fault's PC in one is kept (a fault there
    # is the hook's own: `Unhandled fault in write_comp_data`), hence here, not in GENERIC_SKIP.
    r"write_comp_data", r"check_kcov_mode", r"__kcov",
)

KASAN_DETAILS = _re(r"^(?P<access>Read|Write) (?:of size|at addr)")


def _sanitizer_type(tool: str) -> Callable[[Mapping[str, str]], str | None]:
    """A sanitizer report's class from its bug and access: `KASAN: slab-use-after-free Read` is
    KASAN-USE-AFTER-FREE-READ, `KFENCE: out-of-bounds write` KFENCE-WRITE; a report that does
    not say its access (old KASAN) counts as a read, as most are."""
    def crash_type(captures: Mapping[str, str]) -> str:
        bug = captures.get("bug", "").lower()
        access = captures.get("access") or (
            bug.rsplit(" ", 1)[-1] if bug.endswith(("read", "write")) else "read")
        if "infoleak" in bug:
            return f"{tool}-INFO-LEAK"
        for marker, name in (("invalid-free", "INVALID-FREE"), ("double-free", "INVALID-FREE"),
                             ("invalid free", "INVALID-FREE"), ("memory corruption", "MEMORY-CORRUPTION"),
                             ("uninit-value", "UNINIT-VALUE"),
                             ("uninitialized memory", "UNINIT-VALUE")):
            if marker in bug:
                return f"{tool}-{name}"
        for marker, name in (("use-after-free", "USE-AFTER-FREE-"),
                             ("null-ptr-deref", "NULL-POINTER-DEREFERENCE-")):
            if marker in bug:
                return f"{tool}-{name}{access.upper()}"
        return f"{tool}-{access.upper()}"
    return crash_type


def _ubsan_type(captures: Mapping[str, str]) -> str:
    """An out-of-bounds array index is a memory-safety bug; UBSAN's other reports are not."""
    return "MEMORY_SAFETY_UBSAN" if captures.get("bug") == "array-index-out-of-bounds" else "UBSAN"


def _fault_type(captures: Mapping[str, str]) -> str | None:
    """A kernel fault's class from what it says it was; a user-memory access has none."""
    what = captures.get("what", "")
    if "NULL" in what:
        return "NULL-POINTER-DEREFERENCE"
    return "MEMORY_SAFETY_BUG" if "paging" in what or "page fault" in what else None


def _rcu_usage_type(captures: Mapping[str, str]) -> str | None:
    """`WARNING: suspicious RCU usage` is lockdep's (LOCKDEP); the older `INFO:` form has no class."""
    return "LOCKDEP" if captures.get("level") == "WARNING" else None


def _kind(header: str, title: str, **kw: object) -> CrashKind:
    return CrashKind(header=_re(header), title=title, **kw)  # type: ignore[arg-type]


def _lockdep_kind(what: str, title: str, **kw: object) -> CrashKind:
    """A lockdep report titled with the level the kernel printed before it (`BUG:` or `WARNING:`:
    lockdep moved its reports from BUG to WARNING over the years; syzkaller keeps the printed one,
    so the same bug on an old and a new kernel gets its era's title). `what` is matched without
    regard to case (`nested lock` became `Nested lock` in 6.0)."""
    header = r"(?P<level>WARNING|BUG): (?i:" + what + ")"
    return _kind(header, "{level}: " + title, crash_type="LOCKDEP", **kw)


# Top to bottom: the first kind whose header (and details, if any) match is the crash's kind.
CRASH_KINDS: tuple[CrashKind, ...] = (
    # --- memory-safety sanitizers: the header line names the bug and usually the function ---
    _kind(r"BUG: KASAN: (?:double-free or )?invalid-free in " + FN, "KASAN: invalid-free in {frame}",
          blame=Blame.HEADER, crash_type="KASAN-INVALID-FREE"),
    _kind(r"BUG: KASAN: double-free in " + FN, "KASAN: invalid-free in {frame}", blame=Blame.HEADER,
          crash_type="KASAN-INVALID-FREE"),
    _kind(r"BUG: KASAN: (?P<bug>[a-z-]+) in " + FN, "KASAN: {bug} {access} in {frame}",
          blame=Blame.HEADER, details=KASAN_DETAILS, crash_type=_sanitizer_type("KASAN")),
    _kind(r"BUG: KASAN: (?P<bug>[a-z-]+) on address", "KASAN: {bug} {access} in {frame}",
          details=KASAN_DETAILS, crash_type=_sanitizer_type("KASAN")),
    _kind(r"BUG: KASAN: (?P<bug>[a-z-]+)", "KASAN: {bug} in {frame}", corrupted=True,
          crash_type=_sanitizer_type("KASAN")),
    _kind(r"BUG: KFENCE: (?P<bug>[a-z-]+ (?:read|write)) in " + FN, "KFENCE: {bug} in {frame}",
          blame=Blame.HEADER, crash_type=_sanitizer_type("KFENCE")),
    _kind(r"BUG: KFENCE: (?P<bug>[a-z -]+?) in " + FN, "KFENCE: {bug} in {frame}", blame=Blame.HEADER,
          crash_type=_sanitizer_type("KFENCE")),
    # KMSAN's bug is one word today (`uninit-value`, `kernel-infoleak`); its first reports (2017-18)
    # spelled it out (`use of uninitialized memory`): a few words, titled as printed.
    _kind(r"BUG: KMSAN: (?P<bug>[a-z-]+(?: [a-z-]+){0,5}) in " + FN, "KMSAN: {bug} in {frame}",
          blame=Blame.HEADER, crash_type=_sanitizer_type("KMSAN")),
    _kind(r"BUG: KCSAN: data-race in " + FN + r" / (?P<other>[A-Za-z_][\w.]{0,200})",
          "KCSAN: data-race in {frame} / {other}", blame=Blame.HEADER_AS_IS, crash_type="KCSAN-DATARACE"),
    _kind(r"BUG: KCSAN: data-race in " + FN, "KCSAN: data-race in {frame}", blame=Blame.HEADER,
          crash_type="KCSAN-DATARACE"),
    # ASSERT_EXCLUSIVE_*() found a concurrent access the code declared impossible: the same
    # shape as a data race, `f / g` when both racers are known, `f` alone otherwise.
    _kind(r"BUG: KCSAN: assert: race in " + FN + r" / (?P<other>[A-Za-z_][\w.]{0,200})",
          "KCSAN: assert: race in {frame} / {other}", blame=Blame.HEADER_AS_IS, crash_type="KCSAN-ASSERT"),
    _kind(r"BUG: KCSAN: assert: race in " + FN, "KCSAN: assert: race in {frame}", blame=Blame.HEADER,
          crash_type="KCSAN-ASSERT"),
    _kind(r"UBSAN: (?P<bug>[a-z-]+(?: [a-z-]+)*) in ", "UBSAN: {bug} in {frame}", crash_type=_ubsan_type),
    _kind(r"UBSAN: Undefined behaviour in ", "UBSAN: undefined-behaviour in {frame}", crash_type="UBSAN"),
    # --- kmemleak ---
    # the first leaked object's backtrace is the report's own; the next object's is another's
    _kind(r"unreferenced object 0x", "memory leak in {frame}", skip=LEAK_SKIP, crash_type="LEAK",
          evidence_stack=LEAKED_OBJECT),
    _kind(r"BUG: memory leak$", "memory leak in {frame}", skip=LEAK_SKIP, crash_type="LEAK",
          evidence_stack=LEAKED_OBJECT),
    # --- page faults and exceptions: the faulting PC is to blame ---
    # `BUG: Kernel NULL pointer dereference on read at 0x10` is powerpc's spelling
    _kind(r"BUG: [Kk]ernel NULL pointer dereference", "BUG: unable to handle kernel NULL pointer "
          "dereference in {frame}", blame=Blame.RIP, crash_type="NULL-POINTER-DEREFERENCE"),
    _kind(r"BUG: unable to handle kernel NULL pointer dereference", "BUG: unable to handle kernel "
          "NULL pointer dereference in {frame}", blame=Blame.RIP, crash_type="NULL-POINTER-DEREFERENCE"),
    _kind(r"BUG: unable to handle kernel paging request", "BUG: unable to handle kernel paging "
          "request in {frame}", blame=Blame.RIP, crash_type="MEMORY_SAFETY_BUG"),
    _kind(r"BUG: unable to handle page fault for address", "BUG: unable to handle kernel paging "
          "request in {frame}", blame=Blame.RIP, crash_type="MEMORY_SAFETY_BUG"),
    _kind(r"BUG: kernel (?P<what>[a-z ]+)(?:, address|; )", "BUG: unable to handle kernel {what} "
          "in {frame}", blame=Blame.RIP, crash_type=_fault_type),
    _kind(r"Unable to handle kernel (?P<what>NULL pointer dereference|paging request|access to user memory)",
          "BUG: unable to handle kernel {what} in {frame}", blame=Blame.RIP, crash_type=_fault_type),
    # arm64's permission faults on kernel memory: bad accesses of a mapped page, titled as paging
    _kind(r"Unable to handle kernel (?:execute from non-executable memory|write to read-only memory)",
          "BUG: unable to handle kernel paging request in {frame}", blame=Blame.RIP,
          crash_type="MEMORY_SAFETY_BUG"),
    _kind(r"BUG: Unable to handle kernel (?:data access|instruction fetch)",
          "BUG: unable to handle kernel paging request in {frame}", blame=Blame.RIP,
          crash_type="MEMORY_SAFETY_BUG"),
    _kind(r"BUG: unable to handle kernel$", "BUG: unable to handle kernel", blame=Blame.NONE,
          needs_frame=False, corrupted=True, crash_type=None),
    _kind(r"general protection fault", "general protection fault in {frame}", blame=Blame.RIP,
          crash_type="DoS"),
    _kind(r"stack segment: ", "stack segment fault in {frame}", blame=Blame.RIP, crash_type="DoS"),
    # x86 names the trap `divide error` until 5.8 and, since its trap handlers became
    # idtentries (5.9), after the handler: `divide_error: 0000 [#1]`: one bug, one title.
    _kind(r"divide[ _]error: ", "divide error in {frame}", blame=Blame.RIP, crash_type="DoS"),
    _kind(r"PANIC: double fault", "PANIC: double fault in {frame}", blame=Blame.RIP, crash_type="DoS"),
    # A stack overflow is a call chain too deep, usually a recursion (stacked netdevs notifying
    # each other): the frame that hit the guard page is an innocent leaf. As for a corrupted
    # stack end, blame the entry point a dispatcher called into (a syscall's, a netlink
    # message's handler), found from the innermost frame outwards (Blame.STALL).
    _kind(r"BUG: (?:TASK |IRQ )?stack guard page was hit", "BUG: stack guard page was hit in {frame}",
          blame=Blame.STALL, crash_type=None),
    # arm64's overflow report: the exception entry found no stack left; `kernel stack overflow`
    # is the panic that follows.
    _kind(r"^Insufficient stack space to handle exception!?$", "kernel stack overflow in {frame}",
          blame=Blame.STALL, crash_type="DoS"),
    _kind(r"kernel BUG at mm/usercopy\.c", "BUG: bad usercopy in {frame}", blame=Blame.RIP,
          skip=_names(r"__check_object", r"check_object", r"usercopy"), crash_type="BUG"),
    _kind(r"usercopy: Kernel memory (?:exposure|overwrite) attempt", "BUG: bad usercopy in {frame}",
          blame=Blame.TRACE, crash_type="BUG"),
    _kind(r"kernel BUG at lib/list_debug\.c", "BUG: corrupted list in {frame}", blame=Blame.RIP,
          crash_type="MEMORY_SAFETY_BUG"),
    _kind(r"list_(?:add|del) corruption", "BUG: corrupted list in {frame}", blame=Blame.RIP,
          crash_type="MEMORY_SAFETY_BUG"),
    _kind(r"kernel BUG at ", "kernel BUG in {frame}", blame=Blame.RIP, crash_type="BUG"),
    _kind(r"kernel BUG$", "kernel BUG in {frame}", blame=Blame.RIP, crash_type="BUG"),
    _kind(r"invalid opcode: ", "invalid opcode in {frame}", blame=Blame.RIP, crash_type="DoS"),
    _kind(r"Internal error: Oops - BUG", "kernel BUG in {frame}", blame=Blame.RIP, crash_type="BUG"),
    _kind(r"Internal error: ", "Internal error in {frame}", blame=Blame.RIP, crash_type="DoS"),
    _kind(r"Unhandled fault: ", "Unhandled fault in {frame}", blame=Blame.RIP, crash_type="DoS"),
    _kind(r"Alignment trap: ", "Alignment trap in {frame}", blame=Blame.RIP, crash_type="DoS"),
    # --- lockdep --- (its headers' wording is matched case-insensitively: the kernel changed
    # case across versions, `nested lock was not taken` became `Nested lock was not taken`)
    _kind(r"(?:WARNING|INFO): (?i:possible circular locking dependency detected)",
          "possible deadlock in {frame}", blame=Blame.LOCK, skip=LOCK_SKIP, blames_lock_functions=True,
          crash_type="LOCKDEP"),
    _kind(r"(?:WARNING|INFO): (?i:possible recursive locking detected)", "possible deadlock in {frame}",
          blame=Blame.LOCK, skip=LOCK_SKIP, blames_lock_functions=True, crash_type="LOCKDEP"),
    _kind(r"(?:WARNING|INFO): (?i:possible irq lock inversion dependency detected)",
          "possible deadlock in {frame}", blame=Blame.LOCK, skip=LOCK_SKIP, blames_lock_functions=True,
          crash_type="LOCKDEP"),
    # An IRQ-safe -> IRQ-unsafe order: the first stack shows where the lock became IRQ-safe,
    # i.e. the interrupt-context user whose lock the new dependency endangers.
    _kind(r"(?:WARNING|INFO): (?i:.{0,40}-safe -> .{0,40}-unsafe lock order detected)",
          "possible deadlock in {frame}", blame=Blame.TRACE, skip=LOCK_SKIP, blames_lock_functions=True,
          crash_type="LOCKDEP"),
    _kind(r"(?:WARNING|INFO): (?i:inconsistent lock state)", "inconsistent lock state in {frame}",
          blame=Blame.LOCK, skip=LOCK_SKIP, blames_lock_functions=True, crash_type="LOCKDEP"),
    # The reports below are titled with the level the kernel printed (`[ BUG: held lock freed! ]`
    # until 4.x, `WARNING: held lock freed!` since): `_lockdep_kind` puts it in each title.
    _lockdep_kind(r"bad unlock balance detected", "bad unlock balance in {frame}", blame=Blame.LOCK,
                  skip=LOCK_SKIP, blames_lock_functions=True),
    _lockdep_kind(r"held lock freed", "held lock freed in {frame}", blame=Blame.LOCK, skip=LOCK_SKIP,
                  blames_lock_functions=True),
    _lockdep_kind(r"nested lock was not taken", "nested lock was not taken in {frame}"),
    _lockdep_kind(r"lock held when returning to user space",
                  "lock held when returning to user space in {frame}", blame=Blame.LOCK, skip=LOCK_SKIP,
                  blames_lock_functions=True, evidence_stack=HELD_LOCK_ENTRY),
    _lockdep_kind(r".{0,40} still has locks held", "still has locks held in {frame}", blame=Blame.LOCK,
                  skip=LOCK_SKIP, blames_lock_functions=True, evidence_stack=HELD_LOCK_ENTRY),
    # Kernels before 4.15 printed it as `INFO:`; syzkaller classes only the `WARNING:` form.
    _kind(r"(?P<level>WARNING|INFO): (?i:suspicious RCU usage)", "{level}: suspicious RCU usage in {frame}",
          crash_type=_rcu_usage_type),
    _kind(r"INFO: trying to register non-static key", "INFO: trying to register non-static key in {frame}",
          crash_type=None),
    _kind(r"BUG: (?P<what>MAX_[A-Z_]{1,40}) too low!", "BUG: {what} too low!", blame=Blame.NONE,
          needs_frame=False, crash_type=None),
    _kind(r"BUG: workqueue leaked lock or atomic", "BUG: workqueue leaked lock or atomic in {frame}",
          details=_re(r"last function: " + FN), blame=Blame.HEADER, crash_type=None),
    # --- WARN(): the specific ones first, by the text printed before or with them ---
    _kind(r"refcount_t: ", "WARNING: refcount bug in {frame}",
          skip=_names(r"refcount", r"__refcount"), crash_type="REFCOUNT_WARNING"),
    _kind(r"WARNING: (?:.{0,200} at )?lib/refcount\.c", "WARNING: refcount bug in {frame}",
          skip=_names(r"refcount", r"__refcount"), crash_type="REFCOUNT_WARNING"),
    _kind(r"ODEBUG: ", "WARNING: ODEBUG bug in {frame}", skip=_names(r"debug_", r"__debug"),
          crash_type="WARNING"),
    _kind(r"WARNING: (?:.{0,200} at )?lib/debugobjects\.c", "WARNING: ODEBUG bug in {frame}",
          crash_type="WARNING"),
    _kind(r"WARNING: (?:.{0,200} at )?kernel/locking/lockdep\.c", "WARNING: locking bug in {frame}",
          blame=Blame.TRACE, crash_type="LOCKDEP"),
    _kind(r"DEBUG_LOCKS_WARN_ON", "WARNING: locking bug in {frame}", crash_type="LOCKDEP"),
    # lockdep's wait-type check (5.9+): a lock taken in a context that may not sleep as it can
    _kind(r"BUG: (?i:invalid wait context)", "WARNING: locking bug in {frame}", crash_type="LOCKDEP"),
    # An allocator's size check (`kmalloc_slab`, `kvmalloc_node`: a request too large) is the
    # `kmalloc bug`: the caller asked for a bad size. Any other WARNING in slab code (kfree() of
    # memory kmalloc never gave: `free_large_kmalloc`) names no bug of its own: a plain WARNING,
    # blamed on the first caller outside the allocator.
    _kind(r"WARNING: (?:.{0,200} at )?mm/(?:slab_common|util)\.c:\d{1,6} (?:at )?(?!\w{0,60}free)"
          r"[\w.]{0,60}alloc", "WARNING: kmalloc bug in {frame}", blame=Blame.TRACE, crash_type="WARNING"),
    _kind(r"WARNING: (?:.{0,200} at )?mm/vmalloc\.c:\d{1,6} (?:at )?__vmalloc",
          "WARNING: zero-size vmalloc in {frame}",
          blame=Blame.TRACE, crash_type="WARNING"),
    _kind(r"WARNING: (?:.{0,200} at )?fs/proc/generic\.c", "WARNING: proc registration bug in {frame}",
          blame=Blame.TRACE, crash_type="WARNING"),
    _kind(r"WARNING: (?:.{0,200} at )?lib/kobject\.c", "WARNING: kobject bug in {frame}", blame=Blame.TRACE,
          crash_type="WARNING"),
    # usb_submit_urb() warns about the URB its caller built: the caller is named, with the check.
    _kind(r"WARNING: (?:.{0,200} at )?drivers/usb/core/urb\.c:\d{1,6} (?:at )?usb_submit_urb",
          "WARNING in {frame}/usb_submit_urb", blame=Blame.TRACE, crash_type="WARNING"),
    _kind(r"WARNING: (?:.{0,200} at )?mm/usercopy\.c", "WARNING: bad usercopy in {frame}", blame=Blame.TRACE,
          crash_type="WARNING"),
    _kind(r"WARNING: kernel stack regs at [0-9a-f]{6,16} .{0,80} has bad '(?P<reg>\w+)' value",
          "WARNING: kernel stack regs has bad '{reg}' value", blame=Blame.NONE, needs_frame=False,
          crash_type=None),
    _kind(r"WARNING: kernel stack regs at .{0,80} has bad", "WARNING: kernel stack regs has bad value",
          blame=Blame.NONE, needs_frame=False, crash_type=None),
    _kind(r"WARNING: kernel stack frame pointer at .{0,80} has bad value",
          "WARNING: kernel stack frame pointer has bad value", blame=Blame.NONE, needs_frame=False,
          crash_type=None),
    _kind(r"WARNING: CPU: \d+ PID: \d+ at \S{1,200} " + FN + r"\+0x", "WARNING in {frame}",
          blame=Blame.HEADER, crash_type="WARNING"),
    _kind(r"WARNING: at \S{1,200} " + FN + r"(?:\+0x|\(\))", "WARNING in {frame}", blame=Blame.HEADER,
          crash_type="WARNING"),
    _kind(r"WARNING: CPU: \d+ PID: \d+ at ", "WARNING in {frame}", blame=Blame.RIP, crash_type="WARNING"),
    # Linux >= 6.17: `WARNING: fs/x.c:12 at func+0x1/0x2, CPU#0: comm/pid`, or `at 0x0` and no name
    _kind(r"WARNING: \S{1,200}:\d{1,6} at " + FN + r"\+0x", "WARNING in {frame}", blame=Blame.HEADER,
          crash_type="WARNING"),
    _kind(r"WARNING: \S{1,200}:\d{1,6} at ", "WARNING in {frame}", blame=Blame.RIP, crash_type="WARNING"),
    # --- hangs and stalls ---
    _kind(r"INFO: rcu_(?:preempt|sched|bh) (?:self-)?detected(?: expedited)? stalls?",
          "INFO: rcu detected stall in {frame}", blame=Blame.STALL, crash_type="HANG"),
    _kind(r"INFO: rcu detected stall", "INFO: rcu detected stall in {frame}", blame=Blame.STALL,
          crash_type="HANG"),
    _kind(r"BUG: soft lockup - CPU#\d+ stuck", "BUG: soft lockup in {frame}", blame=Blame.STALL,
          crash_type="HANG"),
    _kind(r"INFO: task \S{1,64} blocked for more than", "INFO: task hung in {frame}", skip=HUNG_SKIP,
          blame_api=True, blames_lock_functions=True, crash_type="HANG"),
    _kind(r"INFO: task \S{1,64} blocked in I/O wait for more than", "INFO: task hung in {frame}",
          skip=HUNG_SKIP, blame_api=True, blames_lock_functions=True, crash_type="HANG"),
    # A task name holding a newline splits the header: `INFO: task <name part>` then the rest.
    _kind(r"^INFO: task [^:]{0,64}$", "INFO: task hung in {frame}", skip=HUNG_SKIP, blame_api=True,
          blames_lock_functions=True, crash_type="HANG",
          details=_re(r"^[^:]{0,64}:\d{1,9} blocked (?:in I/O wait )?for more than")),
    _kind(r"INFO: task \S{1,64} can't die for more than", "INFO: task can't die in {frame}",
          skip=HUNG_SKIP, blame_api=True, blames_lock_functions=True, crash_type="HANG"),
    # A pool stuck: the kernel lists every busy workqueue, each pool's work in flight with how
    # long it has run (`pwq 2: cpus=0 node=0 flags=0x0 nice=0 ...`, then `in-flight:
    # 9:nsim_fib_event_work for 58s`). What holds the stuck pool (`BUG: workqueue lockup - pool
    # cpus=0 node=0 flags=0x0 nice=0 stuck for 56s!`) is its work in flight the longest, not work
    # on other pools; named as printed, so lockups in different work functions get different
    # titles. With no in-flight list (older kernels, a cut log), the bare title.
    _kind(r"BUG: workqueue lockup", "BUG: workqueue lockup in {frame}", blame=Blame.STUCK_WORK,
          details=_re(r"^ {0,8}in-flight: \d{1,9}:" + FN), crash_type=None),
    _kind(r"BUG: workqueue lockup", "BUG: workqueue lockup", blame=Blame.NONE, needs_frame=False,
          crash_type=None),
    # The spinlock debug checks (lib/spinlock_debug.c) report on spinlocks and rwlocks alike
    # (`BUG: rwlock bad magic on CPU#0, ...`): one family, titled with the lock type printed.
    _kind(r"BUG: (?P<lock>spinlock|rwlock) (?P<what>lockup suspected|already unlocked|recursion|bad magic|"
          r"wrong owner|wrong CPU)", "BUG: {lock} {what} in {frame}", crash_type="LOCKDEP"),
    _kind(r"unregister_netdevice: waiting for \S{1,64} to become free",
          "unregister_netdevice: waiting for DEV to become free", blame=Blame.NONE, needs_frame=False,
          crash_type="DoS"),
    # --- other BUG: reports ---
    _kind(r"BUG: sleeping function called from invalid context",
          "BUG: sleeping function called from invalid context in {frame}",
          skip=_names(r"__might", r"___might", r"might_"), blames_lock_functions=True,
          crash_type="ATOMIC_SLEEP"),
    _kind(r"BUG: scheduling while atomic", "BUG: scheduling while atomic in {frame}", skip=_SCHED,
          crash_type="ATOMIC_SLEEP"),
    # The kernel names the function that used the CPU number (`caller is f`): that is the code at
    # fault, even a library's (a radix tree's per-CPU preload), unless it is the check itself or
    # the lockdep/irq-tracing code that ran it; then the trace decides.
    _kind(r"BUG: using (?P<fn_name>__this_cpu_\w+|smp_processor_id)\(\) in preemptible",
          "BUG: using {fn_name}() in preemptible code in {frame}", details=_re(r"^caller is " + FN + r"\+0x"),
          blame=Blame.NAMED,
          skip=_names(r"check_preemption_disabled", r"debug_smp_processor_id", r"__this_cpu_preempt",
                      r"lockdep", r"__lockdep", r"trace_hardirqs"),
          crash_type="LOCKDEP"),
    _kind(r"BUG: using (?P<fn_name>__this_cpu_\w+|smp_processor_id)\(\) in preemptible",
          "BUG: using {fn_name}() in preemptible code in {frame}",
          skip=_names(r"check_preemption_disabled", r"debug_smp_processor_id", r"__this_cpu_preempt"),
          crash_type="LOCKDEP"),
    # A page found in a bad state when freed was put in it by its owner: with page_owner on,
    # the allocation stack names the owner (the free path in the Call Trace is generic).
    _kind(r"BUG: Bad page state", "BUG: Bad page state in {frame}", crash_type=None,
          evidence_stack=_re(r"^page last allocated via")),
    _kind(r"BUG: Bad page map", "BUG: Bad page map in {frame}", crash_type=None),
    _kind(r"BUG: Bad rss-counter", "BUG: Bad rss-counter state", blame=Blame.NONE, needs_frame=False,
          crash_type=None),
    # addrconf found an IPv6 address without its local route (`IPv6: BUG: Address 2001:db8::1 on
    # device lo is missing its host route.`): the address is folded, as any address in a title
    _kind(r"BUG: Address [0-9A-Fa-f:.]{2,64} on device (?P<dev>\S{1,32}) is missing its host route",
          "BUG: Address IPV6ADDR on device {dev} is missing its host route.", blame=Blame.NONE,
          needs_frame=False, crash_type=None),
    # The kernel names the operation that found the dentry still referenced (`[unmount of ext4
    # loop4]`, printed by umount_check() during its dcache walk): the title names it, not the walk.
    _kind(r"BUG: Dentry .{0,80} still in use \(-?\d{1,12}\) \[(?P<op>\w{1,40}) of ",
          "BUG: Dentry still in use in {op}", blame=Blame.NONE, needs_frame=False, crash_type=None),
    _kind(r"BUG: Dentry .{0,80} still in use", "BUG: Dentry still in use in {frame}", crash_type=None),
    _kind(r"BUG: (?P<what>[A-Za-z][^:]{0,60}?) \(", "BUG: {what}", blame=Blame.NONE, needs_frame=False,
          crash_type=None),
    # generic_shutdown_super() found inodes still referenced after the filesystem went away
    _kind(r"VFS: Busy inodes after unmount", "VFS: Busy inodes after unmount (use-after-free)",
          blame=Blame.NONE, needs_frame=False, crash_type=None),
    _kind(r"VFS: Close: file count is 0", "VFS: Close: file count is zero (use-after-free)",
          blame=Blame.NONE, needs_frame=False, crash_type="DoS"),
    # --- syzkaller's own executor failures, and Rust's integer-overflow panics ---
    _kind(r"^SYZFAIL: (?P<what>.{1,100})$", "SYZFAIL: {what}", blame=Blame.NONE, needs_frame=False,
          crash_type="SYZ_FAILURE"),
    _kind(r"^attempt to (?P<op>add|subtract|multiply|divide|negate|shift left|shift right) with overflow$",
          "attempt to {op} with overflow in {frame}", crash_type=None),
    # --- Trusty, Android's TEE (arm64): its driver echoes the secure OS's log as `trusty: ...` ---
    # When the secure OS panics (`trusty: panic (caller 0x..): <message>`, then `trusty: HALT`),
    # the driver's next call fails with a WARNING of its own (`trusty_std_call32`) that says
    # nothing: the secure OS's message is the bug. A failed assertion drops its file and line
    # (`ASSERT FAILED at (ipc.c:472): cond`, possibly `DEBUG ASSERT FAILED`); any other panic
    # keeps its message. The caller part may hold another line's console prefix (interleaved
    # output), so it is skipped up to its closing parenthesis.
    _kind(r"trusty: panic(?: \(caller [^)]{0,80}\))?: (?:DEBUG )?ASSERT FAILED at \([^)]{0,200}\):"
          r" ?(?P<what>.{0,200})$", "trusty: ASSERT FAILED: {what}", blame=Blame.NONE, needs_frame=False,
          crash_type="DoS"),
    _kind(r"trusty: panic(?: \(caller [^)]{0,80}\))?: (?P<what>.{1,200})$", "trusty: panic: {what}",
          blame=Blame.NONE, needs_frame=False, crash_type="DoS"),
    # --- panics: the reason is the title; some name a function too ---
    _kind(r"Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: " + FN + r"\+0x",
          "kernel panic: stack is corrupted in {frame}", blame=Blame.HEADER, crash_type="DoS"),
    _kind(r"Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in",
          "kernel panic: stack is corrupted in {frame}", blame=Blame.TRACE, crash_type="DoS"),
    # The scheduler found the task's stack overrun: blame what the task was running, as for a stall.
    _kind(r"Kernel panic - not syncing: corrupted stack end detected inside scheduler",
          "kernel panic: corrupted stack end in {frame}", blame=Blame.STALL, skip=_SCHED, crash_type="DoS"),
    _kind(r"Kernel panic - not syncing: Attempted to kill init!", "kernel panic: Attempted to kill init!",
          blame=Blame.NONE, needs_frame=False, kind="kernel panic", crash_type="DoS"),
    _kind(r"Kernel panic - not syncing: (?P<reason>VFS: Unable to mount root fs on \S{0,64})",
          "kernel panic: {reason}", blame=Blame.NONE, needs_frame=False, kind="kernel panic",
          crash_type="DoS"),
    # the reason, less the `---[ end Kernel panic - not syncing: ... ]---` marker's tail (a log
    # cut before the panic's first line still ends with the marker)
    _kind(r"Kernel panic - not syncing: (?P<reason>.{1,200}?)(?: \.\.\.)?(?: \]---)?$",
          "kernel panic: {reason}", blame=Blame.NONE, needs_frame=False, kind="kernel panic",
          crash_type="DoS"),
    # a reason too long for the entry above: its first 200 characters (the title is capped anyway)
    _kind(r"Kernel panic - not syncing: (?P<reason>.{1,200})", "kernel panic: {reason}", blame=Blame.NONE,
          needs_frame=False, kind="kernel panic", crash_type="DoS"),
    _kind(r"Kernel panic - not syncing:? {0,16}$", "kernel panic", blame=Blame.NONE, needs_frame=False,
          crash_type="DoS"),
)

# Lines that look like a header but report no crash: they never start a report.
NOT_A_CRASH = re.compile(
    r"INFO: lockdep is turned off|INFO: Stall ended before state dump|"
    r"INFO: NMI handler \S{1,64} took too long|INFO: recovery required|"
    r"INFO: \S{1,64} detected expedited stalls? on CPUs/tasks: \{ \}|"
    r"WARNING: The mand mount option|WARNING: [^:]{0,60} is deprecated|"
    r"WARNING: kernel not compiled with")

# Cheap prefilter: a line that contains none of these cannot be a header.
HEADER_WORDS = re.compile(
    r"BUG|WARNING|INFO:|KASAN|KMSAN|KCSAN|KFENCE|UBSAN|fault|error|panic|PANIC|unreferenced|"
    r"Unable|Unhandled|Alignment|Insufficient stack|refcount_t|ODEBUG|DEBUG_LOCKS|corruption|usercopy|"
    r"unregister_netdevice|VFS: Close|VFS: Busy|SYZFAIL|overflow")

# --- which report the panic came from, on a guest that survived earlier ones ---
# A long-lived guest may print a report it survives (a boot-time WARNING: `---[ end trace ]---`,
# then ordinary kernel output) hours before the one that panics it. When the log has a panic
# line, title.py titles the first report that was not survived: one whose end (`REPORT_ENDED`)
# is followed by at least one ordinary line (not `REPORT_RESIDUE`) and then another report
# before the panic was survived. A report printed while handling another (lockdep during an
# Oops, an Oops `[#2]`) follows the first with no ordinary line between: not survived.
PANIC_LINE = _re(r"Kernel panic - not syncing")
# A panic that only finishes the report printed before it (die() -> "Fatal exception",
# panic_on_warn, the hung-task and lockup detectors' panic_on_* switches): the report before
# it caused it, whatever lines come between (syzkaller's executor output, other tasks' printk).
# Any other panic (`sysrq triggered crash`, `Attempted to kill init!`, a driver's panic()) is a
# report of its own: a report ended and followed by ordinary lines before it was survived.
PANIC_AFTER_REPORT = _re(
    r"Kernel panic - not syncing: (?:.{0,60}Fatal exception|.{0,60}panic_on_|hung_task: |"
    r"(?:soft|hard)lockup: |Hard LOCKUP|RCU Stall|Machine halted|scheduling while atomic|bad mode)")
# Where a report's trace ended: the oops/WARN end marker, or the closing banner of a
# sanitizer's report (KASAN, KCSAN, KMSAN, UBSAN print one before their header and one after).
REPORT_ENDED = _re(r"^(?:---\[ end trace|={20,}$)")
# The lines a report prints after its end marker or that accompany any report: register dumps
# repeated after `end trace` (x86 >= 5.x), code bytes, module lists, stack frames and their
# markers, the panic's own tail. Every other line is ordinary kernel (or user-space) output.
REPORT_RESIDUE = _re(
    r"^(?:$|\s|[A-Z]{1,3}\d{0,2}: ?[0-9a-f]{4}|R\d{1,2}: |[RE]?IP: |Code: |Modules linked in|"
    r"Kernel Offset|CR\d: |DR\d: |PKRU: |FS: |CS: |[a-z]{1,3}\d{0,2} ?: [0-9a-f]{8}|pc ?: |lr ?: |sp ?: |"
    r"(?:NIP|LR|CTR|MSR)\b|Call Trace|Call trace|Backtrace|<TASK>|</TASK>|<IRQ>|</IRQ>|---\[|={20,}|"
    r"note: |Dumping ftrace|Rebooting in|Fixing recursive fault|Disabling lock debugging|"
    r"irq event stamp|hardirqs last|softirqs last|CPU: \d|Hardware name|Tainted|Workqueue: |"
    r"Stack:|Exception stack|Process |Internal error|Kernel panic)")
