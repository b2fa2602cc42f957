"""`anju fleet` end to end, small: real processes (mosquitto, three centre workers on a PostgreSQL
store, two hub processes of our real cloud_bridge), an alarm storm during which one centre worker
is SIGKILLed, and a district power cut. Nothing may be lost or doubled; the surviving workers
share the records; the summary and the plot are what a person reads. (The figures at full scale
come from bench/fleet.py, not from here: no timing is asserted.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_a_small_fleet_survives_a_storm_a_lost_centre_worker_and_a_power_cut(tmp_path: Path, postgres_url: str) -> None:
    plot = tmp_path / "latency.png"
    argv = [sys.executable, "-m", "hub.cli", "fleet", "--hubs", "60", "--duration", "10", "--storm", "40"]
    argv += ["--reconnect-storm", "--heartbeat-s", "2", "--ramp-s", "2", "--processes", "2"]
    argv += ["--centre-workers", "3", "--kill-centre-worker", "--db", postgres_url, "--plot", str(plot)]
    argv += ["--workdir", str(tmp_path / "run"), "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)

    assert (summary["lost"], summary["doubled"]) == (0, 0)
    storm, reconnect = summary["alarms"]["latency_ms"]["storm"], summary["alarms"]["latency_ms"]["reconnect"]
    assert storm["n"] == 40 and reconnect["n"] == 60, "every hub raised its alarm as the line came back"
    records = summary["records_by_centre_worker"]
    assert sum(records.values()) == 100, "one record per alarm at the centre"
    assert summary["centre_worker_killed"] == "centre-1"
    survivors = {name: count for name, count in records.items() if name != "centre-1"}
    assert len(survivors) == 2 and all(count > 0 for count in survivors.values()), "the shared subscription balances"
    assert summary["reconnect_settle_s"] is not None, "every hub came back after the power cut"
    assert summary["heartbeats"]["stored"] > 0 and summary["db"] == "postgresql"
    assert {p["process"] for p in summary["processes"]} >= {"mosquitto", "centre-2", "centre-3", "hubs-1"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fleet_refuses_a_nonsense_size_with_a_clear_message() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hub.cli", "fleet", "--hubs", "0"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "--hubs" in done.stderr
