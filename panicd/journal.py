"""Delivery to journald that never blocks the event loop.

Why it is needed: `systemd.journal.send` (sd_journal_sendv) writes one datagram to
/run/systemd/journal/socket with a blocking sendmsg(). When journald stops reading (it does
under I/O pressure, or when it is SIGSTOPped) its receive queue fills up
(`net.unix.max_dgram_qlen`, 10 datagrams by default) and the sender sleeps in the kernel until
journald reads again. Called on the event loop, that froze every guest's QMP session,
`panicd status`, and WATCHDOG=1 (so systemd killed panicd mid-dump, again and again).

So everything panicd sends to journald, alerts and (with `log_format = "journal"`) its log
lines, goes through one `JournalWriter`: `submit()` appends to a bounded queue and returns at
once; a single thread, the only one that talks to journald, drains it in order:

    event loop ── submit() ──> [ bounded queue ] ──> journal-writer thread ──> journald
                   never blocks                        may block: only it waits

- journald stalled: the thread waits in sendmsg(); entries queue up and are delivered, in
  order, when journald reads again.
- journald gone (no socket, ECONNREFUSED): the thread keeps the entry and retries with a capped
  backoff, so what was queued arrives once journald is back; one line on stderr says so.
- the queue full: a new alert takes the place of the oldest queued log line (alerts are what an
  operator acts on); with no log line to give up, the new entry is dropped. Every drop is
  counted (`dropped`, exported as `panicd_journal_dropped_total{kind}`), the first of each
  overflow writes one line on stderr, and a journal entry says how many were lost once the
  queue has room again. Nothing is lost silently.

The writer is process-wide (`writer()`): alerts and log lines share one order and one bound.
`flush()` waits, bounded, for the queue to drain: at exit and before reading the journal back.
"""

from __future__ import annotations

import array
import collections
import contextlib
import errno
import fcntl
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Kind = Literal["alert", "log"]
SendFunction = Callable[..., None]

#: Where journald reads native-protocol entries.
SOCKET_PATH = "/run/systemd/journal/socket"

#: Entries held while journald is slow or gone: a few MiB at most (entries are small).
DEFAULT_CAPACITY = 10_000
#: Retry delays while journald is gone: first, and the cap.
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 5.0
#: errno values meaning "journald is not there (yet)": keep the entry and try again.
_JOURNALD_ABSENT = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.ENOTCONN, errno.EAGAIN,
                              errno.ENOBUFS, errno.ECONNRESET})


@dataclass(frozen=True)
class Entry:
    kind: Kind
    message: str
    fields: dict[str, str]


class NativeJournal:
    """journald's native protocol on a socket of panicd's own (systemd's "Native Journal
    Protocol": one datagram of fields per entry; an entry too big for a datagram goes in a
    sealed memfd passed with SCM_RIGHTS).

    Spoken here rather than through systemd-python's `journal.send`, because that call holds
    the GIL while it sleeps in sendmsg() (its C code has no Py_BEGIN_ALLOW_THREADS): from any
    thread, a stalled journald would still freeze the whole interpreter. `socket.sendto`
    releases the GIL, so only the writer thread waits.
    """

    def __init__(self, path: str = SOCKET_PATH) -> None:
        self.path = path
        self._sock: socket.socket | None = None

    def send(self, message: str, **fields: str) -> None:
        data = encode({"MESSAGE": message, **fields})
        sock = self._socket()
        try:
            sock.sendto(data, self.path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS) or len(data) < 4096:
                raise
            self._send_memfd(sock, data)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            with contextlib.suppress(OSError):  # as libsystemd does: room for big entries
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
            self._sock = sock
        return self._sock

    def _send_memfd(self, sock: socket.socket, data: bytes) -> None:
        fd = os.memfd_create("panicd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            # journald accepts only a memfd sealed against every change.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))],
                         0, self.path)
        finally:
            os.close(fd)


def encode(fields: dict[str, str]) -> bytes:
    """Entry fields in the native protocol: `KEY=value\n`, or, for a value holding a newline,
    `KEY\n` + its length (64-bit little endian) + the value + `\n`."""
    out = bytearray()
    for key, value in fields.items():
        raw = value.encode("utf-8", "surrogateescape")
        if b"\n" in raw:
            out += key.encode() + b"\n" + struct.pack("<Q", len(raw)) + raw + b"\n"
        else:
            out += key.encode() + b"=" + raw + b"\n"
    return bytes(out)


def _stderr(line: str) -> None:
    # Written by the writer thread (or once per overflow by submit()): the line journald
    # could not take is kept somewhere an operator looks.
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


class JournalWriter:
    """A bounded queue of journal entries and the one thread that sends them."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, send: SendFunction | None = None,
                 on_error: Callable[[str], None] = _stderr) -> None:
        self.capacity = capacity
        self._send = send or NativeJournal().send
        self._on_error = on_error
        self._queue: collections.deque[Entry] = collections.deque()
        self._lock = threading.Condition()
        #: Entries given up, by kind, since the start.
        self.dropped: dict[Kind, int] = {"alert": 0, "log": 0}
        #: Entries delivered to journald, by kind.
        self.delivered: dict[Kind, int] = {"alert": 0, "log": 0}
        #: Set at an overflow's first drop, cleared once the queue is half empty again.
        self._overflowing = False
        self._dropped_unreported = 0
        self._busy = False  # the thread holds an entry it has not delivered yet
        self._thread: threading.Thread | None = None
        self._pid = 0

    # -- the producer side: any thread, never blocks ------------------------------------------

    def submit(self, kind: Kind, message: str, fields: dict[str, str]) -> bool:
        """Queue an entry for journald; False when it had to be dropped (the queue is full)."""
        entry = Entry(kind, message, fields)
        first_drop = False
        with self._lock:
            try:
                self._ensure_thread()
            except RuntimeError:  # no thread can be started (out of memory or pids): counted
                self.dropped[kind] += 1
                return False
            accepted = True
            if len(self._queue) >= self.capacity:
                victim = self._oldest_log() if kind == "alert" else None
                if victim is not None:
                    self._queue.remove(victim)
                else:
                    victim, accepted = entry, False
                self.dropped[victim.kind] += 1
                first_drop = not self._overflowing
                self._overflowing = True
                self._dropped_unreported += 1
            if accepted:
                self._queue.append(entry)
                self._lock.notify()
        if first_drop:
            self._say(f"panicd: journal.overflow: journald is not keeping up; {self.capacity} "
                      "entries are queued and newer log lines are being dropped (counted in "
                      "panicd_journal_dropped_total)")
        return accepted

    def _say(self, line: str) -> None:
        # Reporting trouble must never add to it: a failing reporter costs the line only.
        with contextlib.suppress(Exception):
            self._on_error(line)

    def _oldest_log(self) -> Entry | None:
        return next((e for e in self._queue if e.kind == "log"), None)

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._queue) + self._busy

    def flush(self, timeout: float) -> bool:
        """Wait until everything queued has been delivered (or `timeout`); True if it was."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0 or self._thread is None or not self._thread.is_alive():
                    return False
                self._lock.wait(min(left, 0.05))
        return True

    def _ensure_thread(self) -> None:
        # After a fork (a hook's child never submits, but be safe) the thread is not there.
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._drain, name="journal-writer", daemon=True)
            self._thread.start()

    # -- the writer thread ----------------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    self._lock.wait()
                entry = self._queue.popleft()
                self._busy = True
                lost = 0
                if self._overflowing and len(self._queue) <= self.capacity // 2:
                    self._overflowing = False
                    lost, self._dropped_unreported = self._dropped_unreported, 0
            try:
                if lost:
                    self._deliver(Entry("log", f"journal.overflow_ended dropped={lost}", {
                        "PRIORITY": "4", "SYSLOG_IDENTIFIER": "panicd",
                        "EVENT": "journal.overflow_ended", "DROPPED": str(lost)}))
                self._deliver(entry)
            except Exception:  # the one thread that writes must outlive any entry
                with self._lock:
                    self.dropped[entry.kind] += 1
            finally:
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()

    def _deliver(self, entry: Entry) -> None:
        """Send one entry; wait out a missing journald; give up only on an entry it refuses."""
        delay = RETRY_FIRST_SECONDS
        outage = False
        while True:
            try:
                self._send(entry.message, **entry.fields)
            except OSError as exc:
                if exc.errno not in _JOURNALD_ABSENT:
                    # journald refused this entry itself (EINVAL, EMSGSIZE...): retrying
                    # cannot help. Keep it on stderr, count it.
                    self._count_failed(entry, exc)
                    return
                if not outage:
                    outage = True
                    self._say(f"panicd: journal.unavailable: {exc}; holding {self.queued} "
                              f"entries and retrying (next: {entry.message[:200]!r})")
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            except Exception as exc:  # a bad field must cost this entry only
                self._count_failed(entry, exc)
                return
            with self._lock:
                self.delivered[entry.kind] += 1
            if outage:
                self._say("panicd: journal.available: delivering the held entries")
            return

    def _count_failed(self, entry: Entry, exc: BaseException) -> None:
        with self._lock:
            self.dropped[entry.kind] += 1
        self._say(f"panicd: journal.refused: {exc}: {entry.kind} {entry.message!r} {entry.fields!r}")


_writer: JournalWriter | None = None
_writer_lock = threading.Lock()


def writer() -> JournalWriter:
    """The process's one JournalWriter."""
    global _writer  # noqa: PLW0603 - one queue per process, shared by alerts and logs
    with _writer_lock:
        if _writer is None:
            _writer = JournalWriter()
        return _writer


def flush(timeout: float = 3.0) -> bool:
    """Deliver what is queued, waiting at most `timeout`; True when nothing is left."""
    return _writer.flush(timeout) if _writer is not None else True
