"""Shared fixtures: a real journald, real `panicd run` processes, guests under test."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import pytest
import structlog

from tests.daemon_process import PanicdProcess
from tests.journal import Journald
from tests.qemu_harness import guest_factory, qemus  # noqa: F401 - fixtures


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """Code under test may configure structlog (the demo does); no test sees another's set-up."""
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture(scope="session")
def journal() -> Iterator[Journald]:
    """The machine's journald, started for the session when there is none."""
    j = Journald()
    j.ensure()
    yield j
    j.stop()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory: unix socket paths must fit in 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="pd-") as tmp:
        yield Path(tmp)


@pytest.fixture
async def panicd(short_tmp: Path) -> AsyncIterator[Callable[..., PanicdProcess]]:
    """Start `panicd run` on a config text; every one started is stopped at the end."""
    started: list[PanicdProcess] = []

    def start(config: str, env: dict[str, str] | None = None,
              log_format: str | None = "json", wrapper: Sequence[str] = ()) -> PanicdProcess:
        proc = PanicdProcess(short_tmp, config, env, log_format, wrapper)
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
