"""Per-guest metrics: `panicd_guest_state{guest, state, runstate}`, one series per guest being
watched now, at most `metrics_max_guests` of them; the rest counted in
`panicd_guests_unlabelled`. Scraped from a real `panicd run`, as Prometheus would."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from panicd.metrics import MAX_GUEST_LABEL_CHARS, Metrics
from panicd.monitor import ConnectionState
from tests.daemon_process import PanicdProcess, daemon_section, unique
from tests.qemu_harness import GuestFactory, MockGuestUnderTest

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def parse(text: str) -> Series:
    """Every sample of an exposition: (name, labels) -> value."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def scrape(port: int) -> Series:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return str(reply.read().decode())
    return parse(await asyncio.to_thread(get))


def guest_series(series: Series) -> dict[str, dict[str, str]]:
    """panicd_guest_state's series, by guest label: {guest: labels}."""
    out: dict[str, dict[str, str]] = {}
    for (name, labels), value in series.items():
        if name == "panicd_guest_state":
            assert value == 1
            found = dict(labels)
            out[found["guest"]] = found
    return out


async def test_a_guest_has_its_series_while_watched_showing_its_panic_and_it_goes_with_it(
    short_tmp: Path, guest_factory: GuestFactory, panicd: Any
) -> None:
    guest = await guest_factory(name=unique("held"))
    port = free_port()
    daemon: PanicdProcess = panicd(
        daemon_section(short_tmp, f'metrics_listen = "127.0.0.1:{port}"')
        + f'[discovery]\nwatch = ["{guest.qmp_path}"]\n[[policy]]\non_panic = ["pause"]\n')
    await daemon.wait_event("qmp.connected", guest=guest.name)
    await daemon.wait_event("metrics.listening")

    before = guest_series(await scrape(port))
    assert before == {guest.name: {"guest": guest.name, "state": "connected",
                                   "runstate": "running"}}

    await guest.panic()
    await daemon.wait_event("incident.handled", guest=guest.name)
    held = guest_series(await scrape(port))
    assert held[guest.name]["runstate"] == "guest-panicked"  # PanicdGuestHeldPanicked's series
    assert len(held) == 1  # the running one is gone, not kept beside it

    # The guest goes (QEMU removes its QMP socket when it quits; the mock's goes with it).
    if isinstance(guest, MockGuestUnderTest):
        await guest.kill()
    else:
        await guest.execute("quit")
        await guest.wait_exited()
    await daemon.wait_event("guest.dropped", socket=str(guest.qmp_path))
    after = await scrape(port)
    assert guest_series(after) == {}
    assert after[("panicd_guests_unlabelled", frozenset())] == 0


async def test_at_most_metrics_max_guests_have_a_series_the_rest_are_counted(
    short_tmp: Path, panicd: Any
) -> None:
    tag = unique("cap")
    names = [f"{tag}-{letter}" for letter in "cab"]  # started out of order
    guests = [MockGuestUnderTest(short_tmp / f"g{i}", name=name) for i, name in enumerate(names)]
    port = free_port()
    try:
        for guest in guests:
            await guest.start()
        config = daemon_section(short_tmp, f'metrics_listen = "127.0.0.1:{port}"\n'
                                           "metrics_max_guests = 2")
        config += "".join(f'[[guest]]\nsocket = "{g.qmp_path}"\n' for g in guests)
        daemon: PanicdProcess = panicd(config + '[[policy]]\non_panic = ["pause"]\n')
        await daemon.wait_event("qmp.connected", count=3)
        await daemon.wait_event("metrics.listening")
        series = await scrape(port)
        assert sorted(guest_series(series)) == [f"{tag}-a", f"{tag}-b"]  # the first by name
        assert series[("panicd_guests_unlabelled", frozenset())] == 1
        assert series[("panicd_guests", frozenset({("state", "connected")}))] == 3
    finally:
        for guest in guests:
            await guest.stop()


@dataclass
class _Identity:
    name: str


@dataclass
class _Guest:
    """What a scrape reads of a GuestMonitor."""

    identity: _Identity
    state: ConnectionState = ConnectionState.CONNECTED
    runstate: str | None = "running"


def rendered(names: list[str], max_labelled: int = 1000) -> Series:
    metrics = Metrics()
    guests = [_Guest(_Identity(name)) for name in names]
    metrics.watch_guests(lambda: guests, lambda: max_labelled)
    return parse(metrics.render().decode())


def test_guest_labels_are_escaped_and_cut_so_any_name_scrapes() -> None:
    long_a, long_b = "a" * 300 + "-1", "a" * 300 + "-2"
    # A socket file name that is not UTF-8 gives a name with a surrogate (os.fsdecode):
    # UTF-8 cannot carry it, and without escaping the whole scrape failed.
    undecodable = b"vm-\xff".decode("utf-8", "surrogateescape")
    series = guest_series(rendered(['evil"\n\x1b[31m', undecodable, long_a, long_b]))
    assert 'evil"\\n\\x1b[31m' in series  # as `panicd status` prints it
    assert "vm-\\udcff" in series
    cut = [label for label in series if label.startswith("aaa")]
    assert len(cut) == 2  # two names, two series, though cut alike
    assert all(len(label) == MAX_GUEST_LABEL_CHARS for label in cut)


def test_guests_sharing_a_name_share_a_series_and_zero_labels_none() -> None:
    series = rendered(["twin", "twin", "solo"])
    assert series[("panicd_guest_state", frozenset(
        {("guest", "twin"), ("state", "connected"), ("runstate", "running")}))] == 2
    none = rendered(["one", "two"], max_labelled=0)
    assert guest_series(none) == {}
    assert none[("panicd_guests_unlabelled", frozenset())] == 2
