"""A crash title for a Linux kernel log: one normalised line that names the bug, syzkaller-style.

    general protection fault in tipc_subscrb_subscrp_delete
    KASAN: use-after-free Read in remove_wait_queue
    kernel panic: sysrq triggered crash

Two crashes with one title are one bug. The rules are data (panicd/triage/title_rules.py); this
module applies them: find the first line of a crash report, pick the first matching crash kind,
find the frame it blames, format and normalise the title.

Input is guest-written text: lines are capped in number and length, every pattern is linear,
and `crash_title` returns None or a title for any input; it never raises. Titles are
normalised (pids, addresses, line numbers and numbers folded; control, format and separator
characters such as U+202E turned into spaces) and capped at 120 characters, so a hostile guest
cannot mint unbounded unique titles nor hide text in them.

A log may hold several reports: the title is the first one's, unless the log shows the guest
survived it (`_panicking_report`: a long-lived guest's boot-time WARNING must not title the
Oops that panicked it hours later).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from panicd.triage import console, rust_demangle
from panicd.triage.title_rules import (
    AUX_STACK_HEADER,
    AUX_STACK_OVER,
    CRASH_KINDS,
    GENERIC_SKIP,
    HEADER_WORDS,
    HELD_LOCK_ENTRY,
    LOCK_TAKING_ALLOCATOR,
    LOCK_WRAPPER,
    NOT_A_CRASH,
    PANIC_AFTER_REPORT,
    PANIC_LINE,
    PLAIN_WARNING,
    REPORT_ENDED,
    REPORT_RESIDUE,
    STALL_CROSS_CALL,
    STALL_CROSS_CALL_NAME,
    STALL_DISPATCH,
    STALL_INTERRUPT,
    STALL_SKIP,
    STALL_WORKER,
    TEARDOWN,
    Blame,
    CrashKind,
)

MAX_TITLE = 120
MAX_LINES_SCANNED = 20_000   # lines searched for the report's first line
MAX_REPORT_LINES = 1000      # lines of one report searched for its details and frames: a stack
# overflow's trace of a deep recursion runs to several hundred frames, its entry point last
MAX_LINE = 512

# A frame line, in every architecture's shape; `fn` is the function, `q` marks an unreliable one.
#    foo+0x1f/0x280 [mod]                    x86 (ORC), arm64 (with a trailing "(T)"), riscv
#  ? foo+0x1f/0x280                          x86, a stale return address on the stack
#  [<ffffffff810a376f>] foo+0x1f/0x280       older x86, kmemleak backtraces
#  [c00000003ae5b860] [c00000000016ab98] foo+0x1cc/0x534    powerpc
#  foo mm/file.c:123 [inline]                an inlined frame (syzkaller's symbolised logs)
_FRAME = re.compile(
    r"^ {0,12}(?:\[<?[0-9a-f]{6,16}>?\] {1,2}){0,2}(?P<q>\? )?"
    r"(?P<fn>[A-Za-z_][\w.$]{0,200})"
    r"(?:\+0x[0-9a-f]{1,16}/0x[0-9a-f]{1,16}(?: |$)| \S{1,200}:\d{1,6} \[inline\])")
#  [<c010b3c8>] (foo) from [<c0106b8c>] (bar+0x10/0x14)     32-bit arm: `foo` is the frame,
#  called by `bar`, which the next line names again (unless an exception stack comes between)
_ARM_FRAME = re.compile(
    r"^\[<[0-9a-f]{6,16}>\] \((?P<fn>[A-Za-z_][\w.$]{0,200})(?:\+0x[0-9a-f]{1,16}/0x[0-9a-f]{1,16})?\) from"
    r"(?: \[<[0-9a-f]{6,16}>\] \((?P<caller>[A-Za-z_][\w.$]{0,200})\+0x)?")
# The faulting PC of the oops, in every architecture's shape.
_PC = re.compile(
    r"^(?:RIP: 00\d\d:|RIP: ?\[<[0-9a-f]{6,16}>\] +\[<[0-9a-f]{6,16}>\] |RIP: |EIP: |"
    r"IP: \[<[0-9a-f]{6,16}>\] |"
    r"pc ?: |PC is at |NIP \[[0-9a-f]{6,16}\] |epc ?: |RIP  \[<[0-9a-f]{6,16}>\] )"
    r"(?:\[<[0-9a-f]{6,16}>\] {1,2}){0,2}(?P<fn>[A-Za-z_][\w.$]{0,200})\+0x")
_STACK_START = re.compile(r"^(?:Call Trace:|Call trace:|Backtrace:|stack backtrace:|  backtrace|backtrace)")
# Where one stack ends: another task's or the allocation's stack follows, or user space.
_STACK_END = re.compile(
    r"^(?:Allocated by task|Freed by task|The buggy address|Memory state around|Uninit was |"
    r"Local variable |Last potentially related work|Second to last|RIP: 0033:|---\[ end trace|"
    r"Kernel Offset:|Showing all locks held|INFO: task |NMI backtrace for cpu|Sending NMI from|"
    r" </TASK>|Modules linked in:|unreferenced object 0x|page last free)")
_WARN_HEADER = re.compile(r"^WARNING: (?:CPU: \d{1,5} PID: \d{1,9} at |at |\S{1,200}:\d{1,6} at )")
_REPORT_END = re.compile(r"^(?:---\[ end trace|Kernel Offset:|---\[ end Kernel panic|Rebooting in )")
# `Workqueue: events rtc_timer_do_work`: the work function a worker thread is running.
_WORKQUEUE = re.compile(r"^Workqueue: \S{1,64} " + r"(?P<fn>[A-Za-z_][\w.]{0,200})")
_IRQ_EXIT = re.compile(r"^(?: {0,4}</IRQ>| {0,4}<EOI>|RIP: 0010:|RIP: \[<|pc ?: |PC is at |NIP \[)")
_FN_SUFFIX = re.compile(r"\.(?:constprop|isra|part|cold|llvm|lto_priv|localalias)\b.{0,64}$")
_SYSCALL = re.compile(
    r"^(?:SYSC|__x64_sys|__arm64_sys|__riscv_sys|__s390x_sys|__se_sys|__do_sys|"
    r"__sys|ksys)_(?P<name>\w{1,100})$")
# Syscall entry points titled with the bare syscall name: 32-bit compat ones (`__ia32_sys_x` is
# the 32-bit ABI's entry; a 64-bit trace names it where both ABIs share one wrapper, as for a
# syscall without arguments), the `SyS_x` wrappers of kernels before 4.17 (native or
# compat), and a plain `sys_x`: the syscall table's own entry on a kernel with no per-ABI
# wrapper (32-bit arm: `(sys_openat2) from (ret_fast_syscall)`), as syzkaller titles them
# (`INFO: rcu detected stall in openat2`). The `__sys_x`/`ksys_x` bodies behind the wrappers
# are `sys_x`.
_BARE_SYSCALL = re.compile(
    r"^(?:sys|SyS|compat_SyS|C_SYSC|__ia32_sys|__ia32_compat_sys|__x64_compat_sys|__x32_compat_sys|__arm64_compat_sys|"
    r"__se_compat_sys|__do_compat_sys|compat_sys)_(?P<name>\w{1,100})$")

# Normalisation of a title, in order. Each pattern is linear (no nested quantifiers).
_NORMALISE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile("[" + console.INVISIBLE + "]"), " "),   # controls, bidi overrides, separators
    (re.compile(r"syz-executor[.\d]*\d|syz-executor(?=\b)"), "syz-executor"),
    (re.compile(r"(?P<fn>[A-Za-z_][\w.]{0,200})\+0x[0-9a-f]{1,16}/0x[0-9a-f]{1,16}"), r"\g<fn>"),
    (re.compile(r"(?P<file>\w[\w.\-/]{0,200}\.(?:c|h|S|rs|cc)):\d{1,9}(?::\d{1,9})?"), r"\g<file>:LINE"),
    (re.compile(r"\b(?:0x)?[0-9a-fA-F]{6,}\b"), "ADDR"),
    (re.compile(r"(?<![\w])\d+(?![A-Za-z_\d])"), "NUM"),
    (re.compile(r"\s+"), " "),
)


@dataclass(frozen=True)
class CrashTitle:
    title: str            # normalised, whitespace-collapsed, <= 120 chars
    kind: str             # the bug class: the title without " in <frame>"
    frame: str | None     # the blamed function (None when the title names none)
    corrupted: bool       # the report looked garbled or lacked the stack it needs
    crash_type: str | None = None  # syzkaller's bug class (`HANG`, `LOCKDEP`, `KASAN-READ`, ...)

    @property
    def signature(self) -> str:
        return signature_of(self.title)


def signature_of(title: str) -> str:
    """A short stable hash of a title: the first 16 hex digits of its sha256."""
    return hashlib.sha256(title.encode("utf-8", "replace")).hexdigest()[:16]


def normalise(title: str) -> str:
    for pattern, replacement in _NORMALISE:
        title = pattern.sub(replacement, title)
    return title.strip()[:MAX_TITLE].rstrip()


def function_name(raw: str) -> str:
    """A frame's symbol -> the function syzkaller names: no `.isra.N`, syscalls as `sys_x`
    (compat ones and pre-4.17 `SyS_x` as `x`), Rust v0 symbols demangled
    (`<rust_binder::process::Process>::update_ref`)."""
    name = _FN_SUFFIX.sub("", raw)
    if name.startswith("_R"):
        return rust_demangle.demangle(name) or name
    if name.startswith("_Z"):
        return rust_demangle.demangle_itanium(name) or name
    # A 32-bit compat entry point (`compat_SyS_mount`, `__ia32_compat_sys_mount`) and a pre-4.17
    # kernel's syscall wrapper (`SyS_rmdir`) are titled with the bare syscall name, as syzkaller
    # titles them (`BUG: soft lockup in mount`, `INFO: rcu detected stall in rmdir`); 4.17+'s
    # `__x64_sys_rmdir` and the old inner `SYSC_rmdir` are `sys_rmdir`.
    match = _BARE_SYSCALL.match(name)
    if match:
        return match.group("name")
    match = _SYSCALL.match(name)
    if match:
        return "sys_" + match.group("name")
    return name


def frame_of(line: str) -> str | None:
    """The function a stack-trace line names (None for other lines and unreliable `?` frames)."""
    match = _FRAME.match(line)
    if match:
        return None if match.group("q") else function_name(match.group("fn"))
    match = _ARM_FRAME.match(line)
    return function_name(match.group("fn")) if match else None


def arm_caller(line: str) -> str | None:
    """The caller a 32-bit arm frame line names (`(foo) from [<..>] (bar+0x10/0x14)` -> bar).

    Its next frame line names `bar` again, unless an `Exception stack(...)` dump comes between,
    as after the interrupt or abort entry (`__irq_svc`, `__dabt_svc`), or the trace ends: then
    this is the only mention of that frame."""
    match = _ARM_FRAME.match(line) if line.startswith("[<") else None
    caller = match.group("caller") if match else None
    return function_name(caller) if caller else None


def _is_timer_entry(line: str) -> bool:
    """A frame line of the timer interrupt's entry (`apic_timer_interrupt`, arm's `__irq_svc`)."""
    fn = frame_of(line)
    return fn is not None and bool(STALL_INTERRUPT.match(fn) or STALL_INTERRUPT.match(arm_caller(line) or ""))


class _FrameList:
    """Frames collected line by line (`feed` every line of the trace).

    A 32-bit arm line's caller counts as a frame of its own only where no frame line repeats
    it: after an interrupt or abort entry (`(gic_handle_irq) from (__irq_svc+0x70/0x98)`, then
    `Exception stack(...)`) or at the end of the trace. When the next frame line names another
    function, that line wins: `(panic) from (get_taint+0x0/0x1c)` then `(check_panic_on_warn)`
    is a return address just past a call that never returns, not a call from get_taint."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.pending: str | None = None   # the last arm line's caller, provisionally in `names`

    def feed(self, line: str, fn: str | None) -> None:
        if fn is None:
            if self.pending is not None and line.startswith("Exception stack("):
                self.pending = None   # the caller is the exception entry: keep it
            return
        if self.pending is not None and fn != self.pending:
            self.names.pop()
        if fn != self.pending:
            self.names.append(fn)
        self.pending = arm_caller(line)
        if self.pending is not None:
            self.names.append(self.pending)


class _Report:
    """The lines of one crash report, from its header to where it ends."""

    def __init__(self, lines: Sequence[str], kind: CrashKind) -> None:
        self.lines = lines
        self.kind = kind

    def skipped(self, fn: str) -> bool:
        extra = self.kind.skip
        return bool(GENERIC_SKIP.match(fn) or (extra is not None and extra.search(fn))
                    or (not self.kind.blames_lock_functions and LOCK_WRAPPER.search(fn))
                    or (self.kind.title.startswith(PLAIN_WARNING) and TEARDOWN.match(fn)))

    def stack(self, start: int = 1) -> list[str]:
        """The frames of the first stack trace at or after line `start`.

        A WARN() report (`WARNING: CPU: 0 PID: 1 at file.c:12 f+0x1/0x2`) always prints its stack
        after a `Call Trace:`-style line, on every architecture (__warn -> show_regs/dump_stack):
        frame-shaped lines between its header and that line are another CPU's output interleaved
        into it, so its stack starts at the marker."""
        previous = ""
        if _WARN_HEADER.match(self.lines[0]):
            lines = range(start, len(self.lines))
            marker = next((i for i in lines if _STACK_START.match(self.lines[i])), None)
            start = start if marker is None else marker + 1
        frames = _FrameList()
        evidence = self.kind.evidence_stack
        in_aux = False
        for line in self.lines[start:]:
            if AUX_STACK_HEADER.match(line):
                in_aux = evidence is None or not evidence.match(line)
            elif in_aux and AUX_STACK_OVER.match(line):
                in_aux = False
            fn = frame_of(line)
            if in_aux:
                # another stack's frames (an allocation's, a held lock's): never this crash's
                if frames.names and _STACK_END.match(line):
                    break
                previous = line
                continue
            # `Preemption disabled at:` prints one frame of context, not the stack.
            if fn is not None and not _CONTEXT_FRAME.match(previous):
                frames.feed(line, fn)
            elif frames.names and _STACK_END.match(line):
                break
            else:
                frames.feed(line, None)
            previous = line
        return frames.names

    def first_unskipped(self, frames: list[str]) -> str | None:
        for index, fn in enumerate(frames):
            if not self.skipped(fn):
                caller = frames[index + 1] if index + 1 < len(frames) else None
                if self.kind.blame_api and caller is not None and fn == "do_" + caller:
                    return caller
                return fn
        return None

    def pc(self) -> str | None:
        for line in self.lines:
            match = _PC.match(line)
            if match:
                return function_name(match.group("fn"))
        return None

    def blame_rip(self) -> str | None:
        fn = self.pc()
        if fn is not None and not self.skipped(fn):
            return fn
        # A fault inside a generic helper blames its caller; with no caller in sight, the helper.
        return self.first_unskipped(self.stack()) or fn

    def blame_stall(self) -> str | None:
        """The stalled code: from where the timer interrupt left it (`</IRQ>`, `<EOI>`, else the
        interrupted PC), the first function a dispatcher called into, else the first own frame."""
        frames = self.interrupted_frames()
        own = [fn for fn in frames if not self.stall_skipped(fn)]
        # A CPU stuck waiting in a cross-CPU call stalls in the call itself, whoever made it.
        if own and STALL_CROSS_CALL.match(own[0]):
            return STALL_CROSS_CALL_NAME
        for callee, caller in itertools.pairwise(frames):
            if STALL_DISPATCH.match(caller) and not self.stall_skipped(callee) \
                    and not STALL_DISPATCH.match(callee):
                return callee
        # A work item whose own frames were all unreliable (`?`): the worker names it.
        if frames and STALL_WORKER.match(frames[0] if not own else own[0]):
            work = self.work_function()
            if work is not None:
                return work
        return own[0] if own else None

    def interrupted_frames(self) -> list[str]:
        """The frames (interrupted PCs included) of the code the stall's timer interrupt found
        running: those after the interrupt's entry frame, or after `</IRQ>` or the first PC when
        they come first (the interrupt's own stack was not printed)."""
        start = self.task_context_start()
        entry = next((i + 1 for i in range(start) if _is_timer_entry(self.lines[i])), None)
        start = entry if entry is not None else start if start < len(self.lines) else 0
        frames = _FrameList()
        for line in self.lines[start:]:
            pc = _PC.match(line)
            fn = function_name(pc.group("fn")) if pc else frame_of(line)
            if fn is not None:
                frames.feed(line, fn)
            elif frames.names and _STACK_END.match(line):
                break
            else:
                frames.feed(line, None)
        return frames.names

    def task_context_start(self) -> int:
        """The first line where interrupt context ends (`</IRQ>`, `<EOI>`) or a PC of task
        context is printed; len(lines) if none. A PC printed inside an `<IRQ>` section (a WARNING
        raised in the timer interrupt) was itself running in the interrupt, so the task code the
        interrupt stopped is further on. So was the PC of another CPU's NMI backtrace when the
        trace after it opens `<IRQ>`: the NMI landed in an interrupt handler that CPU was passing
        through. (The stall's own PC, printed from the timer's registers, is kept even in a
        softirq: a softirq can be what is stuck.)"""
        in_irq = in_nmi_backtrace = False
        for index, line in enumerate(self.lines):
            marker = line.strip()
            if marker == "<IRQ>":
                in_irq = True
            elif line.startswith("NMI backtrace for cpu"):
                in_nmi_backtrace = True
            elif _IRQ_EXIT.match(line):
                if _PC.match(line) and (in_irq or (in_nmi_backtrace and self.opens_irq_trace(index))):
                    continue
                return index
        return len(self.lines)

    def opens_irq_trace(self, index: int) -> bool:
        """Whether the first trace after line `index` starts in an `<IRQ>` section."""
        for offset, line in enumerate(self.lines[index + 1:index + 40]):
            if _STACK_START.match(line):
                following = self.lines[index + offset + 2:index + offset + 3]
                return bool(following) and following[0].strip() == "<IRQ>"
            if frame_of(line) is not None:
                return False
        return False

    def work_function(self) -> str | None:
        for line in self.lines:
            match = _WORKQUEUE.match(line)
            if match:
                return function_name(match.group("fn"))
        return None

    def stuck_work(self) -> str | None:
        """A workqueue lockup's stuck pool (`pool cpus=0 node=0 flags=0x0 nice=0 stuck for 56s!`):
        the work function in flight the longest on it, from the busy list's `pwq N: <pool> ...`
        sections (the first one on a tie); None when the report names no work on that pool."""
        header = _STUCK_POOL.search(self.lines[0])
        if header is None:
            return None
        pool = header.group("pool") + " "
        on_pool = False
        longest: tuple[int, str] | None = None
        for line in self.lines[1:]:
            queue = _POOL_QUEUE.match(line)
            if queue is not None:
                on_pool = queue.group("pool").startswith(pool)
            elif on_pool and line.lstrip().startswith("in-flight:"):
                for work in _IN_FLIGHT.finditer(line):
                    seconds = int(work.group("seconds"))
                    if longest is None or seconds > longest[0]:
                        longest = (seconds, work.group("fn"))
        return function_name(longest[1]) if longest is not None else None

    def stall_skipped(self, fn: str) -> bool:
        return self.skipped(fn) or bool(STALL_SKIP.match(fn))

    def blame_lock(self) -> str | None:
        """Lockdep: the site taking the new lock (the first `at: f+0x..`); when that is a generic
        helper (a workqueue flush, a lock primitive), the site of the lock already held. An
        allocator named as the site took the reclaim pseudo-lock itself: it stays to blame
        (`LOCK_TAKING_ALLOCATOR`)."""
        first = next((i for i, line in enumerate(self.lines) if self.lock_site(i) is not None), None)
        held = next((i + 1 for i, line in enumerate(self.lines) if _LOCK_HELD.match(line)), None)
        for site in (first, held):
            fn = self.lock_site(site) if site is not None and site < len(self.lines) else None
            taker = site == first and fn is not None and LOCK_TAKING_ALLOCATOR.match(fn)
            if fn is not None and (not self.skipped(fn) or taker):
                return fn
        # Else the task's own backtrace; if all of it is generic, the first dependency chain.
        start = next((i for i, line in enumerate(self.lines) if _LOCK_BACKTRACE.match(line)), 0)
        return self.first_unskipped(self.stack(start)) or self.first_unskipped(self.stack())

    def lock_site(self, index: int) -> str | None:
        """The function a lockdep site line names: `(&lock){+.+.}, at: f+0x1/0x2`, or `... at:`
        ending the line with the frame on the next (older kernels). Never a line of the list
        of locks the task holds (`#0: (&lock){..}, at: f`), taken fine and earlier, unless the
        kind reports a lock still held."""
        line = self.lines[index]
        if HELD_LOCK_ENTRY.match(line) and self.kind.evidence_stack is not HELD_LOCK_ENTRY:
            return None
        match = _LOCK_AT.search(line)
        if match:
            return function_name(match.group("fn"))
        # (`{IN-HARDIRQ-W} state was registered at:` opens a stack of its own, not a site)
        if line.endswith(" at:") and index + 1 < len(self.lines) and not AUX_STACK_HEADER.match(line):
            return frame_of(self.lines[index + 1])
        return None

    def blame(self, header_fn: str | None) -> str | None:
        strategy = self.kind.blame
        named = function_name(header_fn) if header_fn is not None else None
        if strategy is Blame.NONE:
            return None
        if named is not None and (strategy is Blame.HEADER_AS_IS or
                                  (strategy is Blame.HEADER and not self.skipped(named))):
            return named
        if named is not None and strategy is Blame.NAMED and not (
                self.kind.skip is not None and self.kind.skip.search(named)):
            return named
        if strategy is Blame.STUCK_WORK:
            return self.stuck_work() or named
        by_strategy = {Blame.RIP: self.blame_rip, Blame.STALL: self.blame_stall, Blame.LOCK: self.blame_lock}
        if strategy in by_strategy:
            return by_strategy[strategy]()
        return self.first_unskipped(self.stack()) or self.blame_rip()


# A workqueue lockup's pool, the busy list's per-pool sections, and the works in flight on one
# (`9:nsim_fib_event_work for 58s`, a rescuer's `3196(RESCUER):addrconf_verify_work for 102s`).
_STUCK_POOL = re.compile(r"workqueue lockup - pool (?P<pool>[^!]{1,160}?) stuck for")
_POOL_QUEUE = re.compile(r"^ {0,8}pwq \d{1,6}: (?P<pool>.{1,200})$")
_IN_FLIGHT = re.compile(r"\d{1,9}(?:\(RESCUER\))?:(?P<fn>[A-Za-z_][\w.]{0,200}) for (?P<seconds>\d{1,9})s")
_LOCK_AT = re.compile(r"at: (?:\[<[0-9a-f]{6,16}>\] )?(?P<fn>[A-Za-z_][\w.$]{0,200})\+0x")
_CONTEXT_FRAME = re.compile(r"^Preemption disabled at:?$")
_LOCK_HELD = re.compile(r"^but task is already holding lock:")
_LOCK_BACKTRACE = re.compile(r"^stack backtrace:")


_Found = tuple[int, CrashKind, dict[str, str]]


def _find_report(lines: Sequence[str], start: int = 0) -> _Found | None:
    """The first report starting at or after line `start`: its line, kind and captures."""
    for index in range(start, min(len(lines), MAX_LINES_SCANNED)):
        line = lines[index]
        if not HEADER_WORDS.search(line) or NOT_A_CRASH.search(line):
            continue
        for kind in CRASH_KINDS:
            match = kind.header.search(line)
            if match is None:
                continue
            captures = {k: v for k, v in match.groupdict().items() if v is not None}
            if kind.details is not None:
                details = next((m for m in map(kind.details.search, lines[index + 1:index + 40]) if m), None)
                if details is None:
                    continue
                captures.update({k: v for k, v in details.groupdict().items() if v is not None})
            return index, kind, captures
    return None


def _panicking_report(lines: Sequence[str]) -> _Found | None:
    """The report that led to the panic: the first one that was not survived.

    syzkaller titles a log by its first report, which holds for its guests (panic_on_warn=1,
    oops=panic: the first report panics). A long-lived guest may have survived earlier ones (a
    boot-time WARNING hours before the Oops that panicked it): when the log has a panic line, a
    report whose trace ended (`REPORT_ENDED`) and was followed by an ordinary line and then by
    another report before the panic, or by a panic of its own (`sysrq triggered crash`), was
    survived. Without a panic line, the first report is the title. See title_rules.py."""
    found = _find_report(lines)
    if found is None:
        return None
    limit = min(len(lines), MAX_LINES_SCANNED)
    panic = next((i for i in range(found[0], limit) if PANIC_LINE.search(lines[i])), None)
    if panic is None:
        return found
    while found[0] < panic:
        following = _find_report(lines, found[0] + 1)
        boundary = panic if following is None else min(following[0], panic)
        if boundary == panic and PANIC_AFTER_REPORT.search(lines[panic]):
            return found   # "Fatal exception", panic_on_warn: this report's own panic
        if not _survived(lines, found[0] + 1, boundary):
            return found
        if following is None or following[0] > panic:
            return found   # the panic line starts no report of its own (cannot title it)
        found = following
    return found


def _survived(lines: Sequence[str], start: int, boundary: int) -> bool:
    """Whether lines[start:boundary], the rest of a report and what follows it up to the next
    report, show the report ended and the kernel went on: an end marker, then an ordinary line."""
    ended = next((i for i in range(start, boundary) if REPORT_ENDED.match(lines[i])), None)
    if ended is None:
        return False
    return any(not REPORT_RESIDUE.match(lines[i]) for i in range(ended + 1, boundary))


def _report_lines(lines: Sequence[str], start: int) -> list[str]:
    report = [lines[start][:MAX_LINE]]
    for line in lines[start + 1:start + MAX_REPORT_LINES]:
        report.append(line[:MAX_LINE])
        if _REPORT_END.match(line):
            break
    return report


def crash_title(lines: Sequence[str]) -> CrashTitle | None:
    """Kernel lines (bare printk text, no console prefixes) -> the crash's title; None: no crash."""
    found = _panicking_report(lines)
    if found is None:
        return None
    start, kind, captures = found
    report = _Report(_report_lines(lines, start), kind)
    frame = report.blame(captures.pop("fn", None))
    corrupted = kind.corrupted
    if "{frame}" in kind.title and frame is None:
        corrupted = corrupted or kind.needs_frame
    values = {name: captures.get(name, "") for name in _fields(kind.title)}
    values["frame"] = frame or "corrupted"
    title = normalise(kind.title.format(**values))
    bug_class = kind.kind or normalise(kind.title.split(" in {frame}")[0].format(**values))
    crash_type = kind.crash_type(captures) if callable(kind.crash_type) else kind.crash_type
    return CrashTitle(title=title, kind=bug_class, frame=frame, corrupted=corrupted, crash_type=crash_type)


def _fields(template: str) -> list[str]:
    return re.findall(r"\{(\w+)\}", template)


def title_of_log(text: str | bytes) -> CrashTitle | None:
    """A raw console log (serial file, dmesg, journalctl -k, pstore) -> the title of the crash
    of its last boot: a serial file keeps every boot, and the crash asked about is the newest.
    (A log whose last boot did not crash gets None, not an older boot's title.)"""
    lines = console.kernel_lines(text)
    boot = next((i for i in range(len(lines) - 1, -1, -1) if _BOOT.match(lines[i])), 0)
    return crash_title(lines[boot:])


# The kernel's first line of a boot.
_BOOT = re.compile(r"^Linux version \S")
