"""contrib/prometheus/panicd.rules.yml: `promtool test rules` on its unit tests, and every
metric, label and label value it names read back from a real panicd's /metrics, so that a
renamed metric breaks this test and not an operator's alerting."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from panicd.mock import MockGuest
from tests.daemon_process import PanicdProcess, daemon_section, unique, wait_for
from tests.qemu_harness import Qemus
from tests.test_metrics_guests import Series, free_port, scrape

RULES_DIR = Path(__file__).resolve().parent.parent / "contrib" / "prometheus"
RULES = RULES_DIR / "panicd.rules.yml"
RULE_TESTS = RULES_DIR / "panicd.rules.test.yml"

#: `panicd_x{a="b", c!~"d"}` in an expression: the metric, then its matchers.
_SELECTOR = re.compile(r"\b(panicd_\w+)(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:  # CI installs it: a missing promtool must not pass as skipped
        pytest.fail("promtool is not installed: install Debian's prometheus package "
                    "(./run setup does, as root)")
    return found


def run_promtool(*args: str) -> str:
    done = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_rules_are_valid_and_pass_their_promtool_unit_tests() -> None:
    assert "SUCCESS: 10 rules found" in run_promtool("check", "rules", str(RULES))
    assert "SUCCESS" in run_promtool("test", "rules", str(RULE_TESTS))


def test_every_rule_has_for_a_severity_and_says_what_to_do() -> None:
    text = RULES.read_text()
    rules = text.split("- alert: ")[1:]
    assert len(rules) == 10
    for rule in rules:
        name = rule.split()[0]
        assert re.search(r"^\s+for: \d+[smh]$", rule, re.M), f"{name}: no for:"
        assert re.search(r"^\s+severity: (critical|warning)$", rule, re.M), f"{name}: severity"
        assert "summary:" in rule and "description:" in rule, name
        # the operator is told what to run (panicd, the journal, systemctl, ...)
        assert re.search(r"`(panicd |journalctl |systemctl |df |promtool )", rule), f"{name}: no command"


def selectors() -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Every panicd metric the rules' expressions select: (name, [(label, op, value)])."""
    out = []
    for match in _SELECTOR.finditer(RULES.read_text()):
        out.append((match.group(1), _MATCHER.findall(match.group(2) or "")))
    return out


async def test_every_metric_label_and_value_the_rules_use_is_served_by_panicd(
    short_tmp: Path, qemus: Qemus, panicd: Any
) -> None:
    # A guest held panicked, so panicd_guest_state{runstate="guest-panicked"} is there too.
    guest = await qemus(unique("rules"))
    port = free_port()
    daemon: PanicdProcess = panicd(
        daemon_section(short_tmp, f'metrics_listen = "127.0.0.1:{port}"')
        + f'[[guest]]\nsocket = "{guest.qmp_path}"\n[[policy]]\non_panic = ["pause"]\n')
    await daemon.wait_event("qmp.connected", guest=guest.name)
    await daemon.wait_event("metrics.listening")
    await guest.panic()
    await daemon.wait_event("incident.handled", guest=guest.name)
    served: Series = await scrape(port)

    used = selectors()
    assert {name for name, _ in used} >= {
        "panicd_panics_total", "panicd_crash_loops_total", "panicd_guest_crash_loops_total",
        "panicd_dumps_total", "panicd_dumps_skipped_total", "panicd_incidents_total",
        "panicd_guest_state"}
    for name, matchers in used:
        samples = [dict(labels) for sample, labels in served if sample == name]
        assert samples, f"the rules use {name}; panicd's /metrics has no such series"
        for label, op, value in matchers:
            assert any(label in s for s in samples), f"{name} has no label {label}"
            if op == "=":
                assert any(s.get(label) == value for s in samples), \
                    f'{name}{{{label}="{value}"}}: no such series in /metrics'


def value(served: Series, name: str, **labels: str) -> float:
    return served[(name, frozenset(labels.items()))]


async def test_a_disk_guard_skip_is_counted_apart_so_only_its_own_rule_fires(
    short_tmp: Path, qemus: Qemus, panicd: Any
) -> None:
    guest = await qemus(unique("full"))
    port = free_port()
    # No disk keeps an exabyte free: the guard skips the dump (DUMP_FAILED alert, "skipped").
    daemon: PanicdProcess = panicd(
        daemon_section(short_tmp, f'metrics_listen = "127.0.0.1:{port}"\n'
                                  f"min_free_bytes = {10**18}")
        + f'[[guest]]\nsocket = "{guest.qmp_path}"\n[[policy]]\non_panic = ["dump", "pause"]\n')
    await daemon.wait_event("qmp.connected", guest=guest.name)
    await daemon.wait_event("metrics.listening")
    await guest.panic()
    (failed,) = await daemon.wait_event("step.failed", guest=guest.name)
    assert failed["error"].startswith("skipped: not enough space")
    await daemon.wait_event("incident.handled", guest=guest.name)
    served = await scrape(port)
    assert value(served, "panicd_dumps_skipped_total", reason="disk_space") == 1
    # Counted as failed too (its alert is DUMP_FAILED): PanicdDumpFailed subtracts the skips.
    assert value(served, "panicd_dumps_total", result="failed") == 1
    assert value(served, "panicd_dumps_total", result="completed") == 0


async def test_crash_loops_of_both_kinds_are_counted(short_tmp: Path, panicd: Any) -> None:
    kdump, restarted = MockGuest(name=unique("kdump")), MockGuest(name=unique("loop"))
    await kdump.start(short_tmp / "0.qmp")
    await restarted.start(short_tmp / "1.qmp")
    port = free_port()
    try:
        daemon: PanicdProcess = panicd(
            daemon_section(short_tmp, f'metrics_listen = "127.0.0.1:{port}"')
            + "".join(f'[[guest]]\nsocket = "{short_tmp}/{i}.qmp"\n' for i in (0, 1))
            + '[[policy]]\non_panic = ["restart"]\non_crash_loaded = []\n'
              "restart = { max = 1, within = 600 }\n")
        await daemon.wait_event("qmp.connected", count=2)
        await daemon.wait_event("metrics.listening")
        # The guest's own crash kernel reboots it, twice: CRASH_LOOP, REBOOTED_BY=guest.
        kdump.port.write(2)
        kdump.reboots_itself()
        await daemon.wait_event("incident.handled", guest=kdump.name)
        kdump.port.write(2)  # after its RESET on the same QMP stream: a new crash
        await daemon.wait_event("crash_loop.guest_reboots_itself", guest=kdump.name)
        # panicd restarts the other once, then refuses: CRASH_LOOP, REBOOTED_BY=panicd.
        restarted.port.write(1)
        await daemon.wait_event("incident.handled", guest=restarted.name)
        await wait_for(lambda: restarted.machine.runstate == "running", what="restart")
        restarted.port.write(1)
        await daemon.wait_event("incident.handled", guest=restarted.name, count=2)
        served = await scrape(port)
        assert value(served, "panicd_guest_crash_loops_total") == 1
        assert value(served, "panicd_crash_loops_total") == 1
    finally:
        await kdump.stop()
        await restarted.stop()
