"""The journal writer: alerts and journal log lines queued off the event loop, never lost silently."""

from __future__ import annotations

import errno
import threading
import time
import uuid

import pytest

from panicd.journal import JournalWriter, NativeJournal
from panicd.metrics import Metrics
from tests.journal import Journald


class FakeJournald:
    """A journald whose reading can be stalled, or that is gone, under the test's control."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str]]] = []
        self.reading = threading.Event()
        self.reading.set()
        self.refuse: list[int] = []  # errno values to raise, one per call, before accepting

    def send(self, message: str, **fields: str) -> None:
        if self.refuse:
            raise OSError(self.refuse.pop(0), "refused")
        self.reading.wait()
        self.received.append((message, fields))


def wait_until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_submit_returns_at_once_while_journald_does_not_read() -> None:
    journald = FakeJournald()
    journald.reading.clear()
    lines: list[str] = []
    writer = JournalWriter(capacity=100, send=journald.send, on_error=lines.append)
    begun = time.monotonic()
    for i in range(50):
        assert writer.submit("log", f"line {i}", {"PRIORITY": "6"})
    assert time.monotonic() - begun < 0.5
    assert journald.received == []
    assert not writer.flush(0.2)  # still held: journald is not reading

    journald.reading.set()
    assert writer.flush(5)
    assert [m for m, _ in journald.received] == [f"line {i}" for i in range(50)]
    assert writer.dropped == {"alert": 0, "log": 0}
    assert lines == []


def test_a_full_queue_gives_up_log_lines_for_alerts_counts_every_drop_and_says_so_once() -> None:
    journald = FakeJournald()
    journald.reading.clear()
    lines: list[str] = []
    writer = JournalWriter(capacity=4, send=journald.send, on_error=lines.append)
    writer.submit("log", "log 0", {})
    wait_until(lambda: writer.queued == 1 and not writer._queue)  # the thread holds "log 0"
    for i in range(1, 8):
        writer.submit("log", f"log {i}", {})
    assert writer.submit("alert", "alert A", {"MESSAGE_ID": "x"})
    assert writer.submit("alert", "alert B", {"MESSAGE_ID": "x"})
    # Four slots: log 1-4 queued, log 5-7 dropped, then the alerts take log 1's and log 2's.
    assert writer.dropped == {"alert": 0, "log": 5}
    assert len(lines) == 1 and "journal.overflow" in lines[0]

    text = Metrics().render().decode()  # the process-wide writer: present, zero here
    assert 'panicd_journal_dropped_total{kind="log"}' in text

    journald.reading.set()
    assert writer.flush(5)
    messages = [m for m, _ in journald.received]
    # What the queue kept, in order; the notice of what was lost once it is half empty again.
    assert messages == ["log 0", "log 3", "journal.overflow_ended dropped=5", "log 4",
                        "alert A", "alert B"]
    assert journald.received[2][1]["DROPPED"] == "5"


def test_with_every_slot_an_alert_the_new_alert_is_dropped_and_counted() -> None:
    journald = FakeJournald()
    journald.reading.clear()
    writer = JournalWriter(capacity=2, send=journald.send, on_error=lambda _: None)
    writer.submit("alert", "held", {})
    wait_until(lambda: not writer._queue)
    assert writer.submit("alert", "a1", {})
    assert writer.submit("alert", "a2", {})
    assert not writer.submit("alert", "a3", {})
    assert writer.dropped["alert"] == 1
    journald.reading.set()
    assert writer.flush(5)


def test_entries_are_held_while_journald_is_gone_and_delivered_when_it_is_back() -> None:
    journald = FakeJournald()
    journald.refuse = [errno.ECONNREFUSED, errno.ENOENT, errno.ECONNREFUSED]
    lines: list[str] = []
    writer = JournalWriter(capacity=10, send=journald.send, on_error=lines.append)
    writer.submit("alert", "panic", {"ERROR": "x"})
    writer.submit("log", "after", {})
    assert writer.flush(10)
    assert [m for m, _ in journald.received] == ["panic", "after"]
    assert writer.dropped == {"alert": 0, "log": 0}
    assert any("journal.unavailable" in line for line in lines)
    assert any("journal.available" in line for line in lines)


@pytest.mark.parametrize("error", [errno.EINVAL, errno.EMSGSIZE])
def test_an_entry_journald_refuses_is_counted_and_the_next_one_goes_through(error: int) -> None:
    journald = FakeJournald()
    journald.refuse = [error]
    lines: list[str] = []
    writer = JournalWriter(capacity=10, send=journald.send, on_error=lines.append)
    writer.submit("alert", "bad", {"X": "1"})
    writer.submit("alert", "good", {})
    assert writer.flush(5)
    assert [m for m, _ in journald.received] == ["good"]
    assert writer.dropped["alert"] == 1
    assert any("journal.refused" in line and "bad" in line for line in lines)


def test_native_protocol_entries_reach_journald_with_multiline_and_large_fields(
    journal: Journald,
) -> None:
    tag = f"native-{uuid.uuid4().hex[:8]}"
    native = NativeJournal()
    kernel_log = "\n".join(f"[ {i:5}.000000] line {i}" for i in range(3))
    big = "x" * (1 << 20)  # past any datagram: sent in a sealed memfd
    try:
        native.send("multi-line field", SYSLOG_IDENTIFIER="panicd-tests", TEST_TAG=tag,
                    KERNEL_LOG=kernel_log)
        native.send("large field", SYSLOG_IDENTIFIER="panicd-tests", TEST_TAG=tag, BIG=big)
    finally:
        native.close()
    entries = {e["MESSAGE"]: e for e in journal.wait_for(count=2, TEST_TAG=tag)}
    assert entries["multi-line field"]["KERNEL_LOG"] == kernel_log
    assert entries["large field"]["BIG"] == big


def test_the_writer_thread_outlives_an_error_reporter_that_fails() -> None:
    journald = FakeJournald()
    journald.refuse = [errno.EINVAL]  # the first entry is refused, and reporting that fails

    def broken_stderr(_line: str) -> None:
        raise RuntimeError("stderr is gone")

    writer = JournalWriter(capacity=10, send=journald.send, on_error=broken_stderr)
    writer.submit("alert", "refused", {})
    writer.submit("alert", "next", {})
    assert writer.flush(5)
    assert [m for m, _ in journald.received] == ["next"]
    assert writer.dropped["alert"] == 1
