"""contrib/log-shipping/: panicd's alerts forwarded off the host by MESSAGE_ID. Every shipped
config names exactly the MESSAGE_IDs panicd sends (a new alert kind must not be silently
left on the host), and the journalctl matches pick a real alert out of the real journal."""

from __future__ import annotations

import re
import subprocess
import tomllib
import uuid
from pathlib import Path

import pytest

from panicd import alerts
from panicd import journal as panicd_journal
from panicd.alerts import AlertKind
from systemd import journal as systemd_journal
from tests.journal import Journald

SHIPPING = Path(__file__).resolve().parent.parent / "contrib" / "log-shipping"
ALERT_IDS = {kind.message_id for kind in AlertKind}
SCRIPT = SHIPPING / "panicd-alerts-json"


@pytest.mark.parametrize("name", ["panicd-alerts-json", "vector.toml", "fluent-bit.conf",
                                  "promtail.yml"])
def test_each_shipping_config_matches_every_alert_and_nothing_else(name: str) -> None:
    text = (SHIPPING / name).read_text()
    named = re.findall(r"\b[0-9a-f]{32}\b", text)
    assert len(named) == len(set(named)), "a MESSAGE_ID listed twice"
    assert set(named) == ALERT_IDS


def test_the_vector_config_is_toml_with_the_matches_where_vector_reads_them() -> None:
    config = tomllib.loads((SHIPPING / "vector.toml").read_text())
    source = config["sources"]["panicd_alerts"]
    assert source["type"] == "journald"
    assert set(source["include_matches"]["MESSAGE_ID"]) == ALERT_IDS
    assert config["sinks"]["panicd_alerts_out"]["inputs"] == ["panicd_alerts"]


def test_the_fluent_bit_filters_are_ored() -> None:
    lines = [line.split() for line in (SHIPPING / "fluent-bit.conf").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert ["Systemd_Filter_Type", "Or"] in lines
    filters = {words[1] for words in lines if words[0] == "Systemd_Filter"}
    assert filters == {f"MESSAGE_ID={mid}" for mid in ALERT_IDS}


def test_the_journalctl_matches_give_panicd_alerts_and_not_its_log_lines(
    journal: Journald,
) -> None:
    marker = f"/tmp/shipping-{uuid.uuid4().hex}.toml"
    alerts.JournalAlerter().send(alerts.config_rejected(marker, "a test of the shipping matches"))
    assert panicd_journal.flush(5.0)  # the writer thread has handed it to journald
    # A log line of panicd's, same identifier, no MESSAGE_ID: not an alert, not shipped.
    systemd_journal.send(f"a log line {marker}", SYSLOG_IDENTIFIER="panicd", CONFIG_FILE=marker)
    assert journal.wait_for(CONFIG_FILE=marker, count=2)  # both are in the journal

    out = subprocess.run([str(SCRIPT), "--since=-10min", f"CONFIG_FILE={marker}"],
                         capture_output=True, text=True, check=True, timeout=30)
    entries = [line for line in out.stdout.splitlines() if line.strip()]
    assert len(entries) == 1
    assert AlertKind.CONFIG_REJECTED.message_id in entries[0]
