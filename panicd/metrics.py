"""Prometheus metrics, served on `[daemon] metrics_listen` (off by default).

Counted where things happen (the monitor counts panics, the dump step dumps, the restart step
restarts); guests by connection state are read from the monitors at each scrape. The HTTP
side is a few lines of asyncio in the daemon's own loop: GET /metrics and nothing else, a
capped request, a timeout; no thread, no framework.

Per-guest series are bounded: `panicd_guest_state` has one series per guest being watched
now (a guest that goes takes its series with it: they are made at each scrape, never kept),
for at most `[daemon] metrics_max_guests` guests (the first by name); the others are only
counted, in `panicd_guests_unlabelled`. Every other metric has a fixed set of series.
Alerting rules built on these names ship in contrib/prometheus/panicd.rules.yml.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable, Iterable
from typing import Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from panicd import journal
from panicd.text import printable

log = structlog.get_logger("panicd.metrics")

REQUEST_TIMEOUT = 5.0
MAX_REQUEST_BYTES = 8192
#: A guest label value longer than this is cut, and ends in a hash of the whole name so that
#: two long names sharing a beginning stay two series.
MAX_GUEST_LABEL_CHARS = 128
#: `[daemon] metrics_max_guests`'s default, for a Metrics no daemon configured.
DEFAULT_MAX_LABELLED_GUESTS = 1000


class WatchedGuestView(Protocol):
    """What a scrape reads from each guest being watched (a GuestMonitor)."""

    @property
    def identity(self) -> _Named: ...

    @property
    def state(self) -> _Valued: ...

    @property
    def runstate(self) -> str | None: ...


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class _Valued(Protocol):
    @property
    def value(self) -> str: ...


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.panics = Counter("panicd_panics", "Guest panics seen", registry=r)
        self.crash_loaded = Counter("panicd_crash_loaded", "GUEST_CRASHLOADED events", registry=r)
        self.dumps = Counter(
            "panicd_dumps",
            "Dumps by result: completed, or failed (every DUMP_FAILED alert, disk guard skips too)",
            ["result"], registry=r)
        for result in ("completed", "failed"):  # at 0 from the start: increase() sees the first
            self.dumps.labels(result=result)
        # Also counted as failed (its alert is DUMP_FAILED); apart, so that a full disk can be
        # told from a broken dump: the rules alert on each, once.
        self.dumps_skipped = Counter(
            "panicd_dumps_skipped",
            "Dumps not started, by reason: disk_space (the disk guard, min_free_bytes)",
            ["reason"], registry=r)
        self.dumps_skipped.labels(reason="disk_space")
        self.dump_seconds = Histogram(
            "panicd_dump_duration_seconds", "Time QEMU took to write a dump",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800), registry=r)
        self.dump_bytes = Counter("panicd_dump_bytes", "Bytes of dumps written", registry=r)
        self.restarts = Counter("panicd_restarts", "Guests restarted by panicd", registry=r)
        self.crash_loops = Counter(
            "panicd_crash_loops",
            "Restarts refused (crash loop): CRASH_LOOP alerts with REBOOTED_BY=panicd",
            registry=r)
        self.guest_crash_loops = Counter(
            "panicd_guest_crash_loops",
            "Guests found rebooting themselves in a loop: CRASH_LOOP alerts with REBOOTED_BY=guest",
            registry=r)
        self.refused_peers = Counter("panicd_refused_peers", "Peers refused on the listen socket",
                                     registry=r)
        self.listen_saturated = Counter(
            "panicd_listen_saturated",
            "Times the listen socket stopped accepting: every slot for unidentified peers held",
            registry=r)
        # One label, two values: a label per title would let guests mint unbounded series.
        self.incidents = Counter(
            "panicd_incidents",
            "Incidents given a crash title, by whether the title was new on this host",
            ["signature_new"], registry=r)
        for new in ("true", "false"):  # both series exist from the start, at 0
            self.incidents.labels(signature_new=new)
        self.new_signature_alerts_suppressed = Counter(
            "panicd_new_signature_alerts_suppressed",
            "New crash titles not alerted: the guest's new_signature_alerts_per_hour was spent",
            registry=r)
        self.guest_action_refusals_unaudited = Counter(
            "panicd_guest_action_refusals_unaudited",
            "Refused `panicd guest` requests not audited one by one: their caller was past its "
            "refusals a minute (each window's are summed up in one GUEST_ACTION entry)",
            registry=r)
        self.guests = Gauge("panicd_guests", "Guests by connection state", ["state"], registry=r)
        r.register(_JournalCollector())
        self._watched: Callable[[], Iterable[WatchedGuestView]] = list
        self._max_labelled: Callable[[], int] = lambda: DEFAULT_MAX_LABELLED_GUESTS
        self._guest_collector = _GuestStateCollector()
        r.register(self._guest_collector)

    def watch_guests(self, guests: Callable[[], Iterable[WatchedGuestView]],
                     max_labelled: Callable[[], int]) -> None:
        """Where to read the guests being watched, and how many may have their own series
        (`metrics_max_guests`, read at each scrape so a reload applies), at scrape time."""
        self._watched = guests
        self._max_labelled = max_labelled

    def render(self) -> bytes:
        guests = list(self._watched())
        counts: dict[str, int] = {"connected": 0, "connecting": 0, "disconnected": 0}
        for guest in guests:
            counts[guest.state.value] = counts.get(guest.state.value, 0) + 1
        for state, n in counts.items():
            self.guests.labels(state=state).set(n)
        self._guest_collector.guests = guests
        self._guest_collector.limit = max(0, self._max_labelled())
        try:
            return generate_latest(self.registry)
        finally:
            self._guest_collector.guests = []


def guest_label(name: str) -> str:
    """A guest's name as a label value: escaped as `panicd status` prints it (a name may hold
    control characters, or undecodable bytes from a socket's file name, which UTF-8 cannot
    carry), and cut to MAX_GUEST_LABEL_CHARS, a hash of the whole name marking the cut."""
    text = printable(name)
    if len(text) <= MAX_GUEST_LABEL_CHARS:
        return text
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{text[:MAX_GUEST_LABEL_CHARS - 9]}~{digest}"


class _GuestStateCollector:
    """`panicd_guest_state{guest, state, runstate}` (value 1: one series per guest watched
    now) and `panicd_guests_unlabelled`, from the guests `Metrics.render` reads."""

    def __init__(self) -> None:
        #: Set by `Metrics.render` for the length of one scrape.
        self.guests: list[WatchedGuestView] = []
        self.limit = DEFAULT_MAX_LABELLED_GUESTS

    def describe(self) -> Iterable[Metric]:
        return []  # names fixed above; nothing to read before a scrape

    def collect(self) -> Iterable[Metric]:
        limit = self.limit
        ordered = sorted(self.guests, key=lambda guest: guest.identity.name)
        series: dict[tuple[str, str, str], int] = {}
        for guest in ordered[:limit]:
            key = (guest_label(guest.identity.name), guest.state.value,
                   guest_label(guest.runstate or ""))
            # Two guests with one name (sockets in two directories) share a series: its
            # value counts them, as panicd_guests does.
            series[key] = series.get(key, 0) + 1
        family = GaugeMetricFamily(
            "panicd_guest_state",
            "Each guest being watched (at most metrics_max_guests): its connection state and "
            "QEMU runstate (empty while unknown); the value counts guests of that name",
            labels=["guest", "state", "runstate"])
        for (name, state, runstate), count in sorted(series.items()):
            family.add_metric([name, state, runstate], count)
        yield family
        yield GaugeMetricFamily(
            "panicd_guests_unlabelled",
            "Guests being watched past metrics_max_guests: counted here, without their own "
            "panicd_guest_state series", value=max(0, len(ordered) - limit))


class _JournalCollector:
    """The journal writer's queue, read at scrape time (it is process-wide, not per daemon)."""

    def collect(self) -> Iterable[Metric]:
        writer = journal.writer()
        dropped = CounterMetricFamily(
            "panicd_journal_dropped", "Journal entries given up (queue full or refused by journald)",
            labels=["kind"])
        for kind, count in writer.dropped.items():
            dropped.add_metric([kind], count)
        yield dropped
        yield GaugeMetricFamily("panicd_journal_queued", "Journal entries waiting for journald",
                                value=writer.queued)


async def serve(metrics: Metrics, listen: str) -> None:
    """Serve GET /metrics on "host:port" until cancelled; a bind failure is logged, not fatal."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].split()
            if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
                body, status, ctype = metrics.render(), b"200 OK", CONTENT_TYPE_LATEST.encode()
            else:
                body, status, ctype = b"not found: try /metrics\n", b"404 Not Found", b"text/plain"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype
                         + b"\r\nContent-Length: " + str(len(body)).encode()
                         + b"\r\nConnection: close\r\n\r\n" + body)
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1)

    try:
        server = await asyncio.start_server(client, host, int(port), limit=MAX_REQUEST_BYTES)
    except (OSError, ValueError) as exc:
        log.error("metrics.unavailable", listen=listen, error=str(exc))  # noqa: TRY400
        return
    log.info("metrics.listening", listen=listen)
    async with server:
        await server.serve_forever()
