"""Prometheus metrics, served on `[daemon] metrics_listen` (off by default).

Counted where things happen (the monitor counts panics, the dump step dumps, the restart step
restarts); guests by connection state are read from the monitors at each scrape. The HTTP
side is a few lines of asyncio in the daemon's own loop: GET /metrics and nothing else, a
capped request, a timeout; no thread, no framework.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from panicd import journal

log = structlog.get_logger("panicd.metrics")

REQUEST_TIMEOUT = 5.0
MAX_REQUEST_BYTES = 8192


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.panics = Counter("panicd_panics", "Guest panics seen", registry=r)
        self.crash_loaded = Counter("panicd_crash_loaded", "GUEST_CRASHLOADED events", registry=r)
        self.dumps = Counter("panicd_dumps", "Dumps by result", ["result"], registry=r)
        self.dump_seconds = Histogram(
            "panicd_dump_duration_seconds", "Time QEMU took to write a dump",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800), registry=r)
        self.dump_bytes = Counter("panicd_dump_bytes", "Bytes of dumps written", registry=r)
        self.restarts = Counter("panicd_restarts", "Guests restarted by panicd", registry=r)
        self.crash_loops = Counter("panicd_crash_loops", "Restarts refused (crash loop)", registry=r)
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
        self._states: Callable[[], Iterable[str]] = list

    def watch_states(self, states: Callable[[], Iterable[str]]) -> None:
        """Where to read every guest's connection state from at scrape time."""
        self._states = states

    def render(self) -> bytes:
        counts: dict[str, int] = {"connected": 0, "connecting": 0, "disconnected": 0}
        for state in self._states():
            counts[state] = counts.get(state, 0) + 1
        for state, n in counts.items():
            self.guests.labels(state=state).set(n)
        return generate_latest(self.registry)


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
