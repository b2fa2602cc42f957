"""Whole-system runs: real mosquitto, the centre and the hub as separate processes, simulated pins.

Each bundled scenario is a fault story (broker gone, hub killed mid-send, centre not acking);
the runner counts alarms in at the pins and records out at the centre.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hub.model import EventType
from hub.rules import LOCAL_ALERTS
from simulator.runner import run_scenario
from simulator.scenario import Scenario, bundled, load_scenario

SCENARIOS = sorted(p.stem for p in bundled("bathroom-cord").parent.glob("*.yaml"))


async def _run(scenario: Scenario, tmp_path: Path, prompt_cache: Path) -> dict:
    return await run_scenario(scenario, tmp_path / "run", prompt_cache=prompt_cache)


@pytest.mark.parametrize("name", SCENARIOS)
async def test_bundled_scenario_delivers_every_alarm_once(name: str, tmp_path: Path, prompt_cache: Path) -> None:
    scenario = load_scenario(bundled(name))
    result = await _run(scenario, tmp_path, prompt_cache)

    assert result["ok"], json.dumps(result["expectations"], ensure_ascii=False, indent=1)
    alarms = [e for e in result["events"] if e["type"].startswith("alarm.")]
    # (How many alarms each scenario must raise is in its own `expect`, checked by result["ok"].)
    for event in alarms:
        assert event["delivered"], event
        assert event["centre_records"] == 1, f"the centre must keep one record per alarm: {event}"
        assert event["centre_copies"] >= 1
        if event["device"] is not None and event["type"] in ("alarm.emergency", "alarm.fire"):
            # a device's call for help: the siren came first, the centre's ack after
            assert event["local_alert_ms"] is not None and event["local_alert_ms"] > 0
            assert event["ack_ms"] is not None and event["ack_ms"] > event["local_alert_ms"]
    assert len({e["event_id"] for e in alarms}) == len(alarms)
    assert [e["seq"] for e in result["events"]] == sorted(e["seq"] for e in result["events"])
    assert result["contract"]["violations"] == []
    # (The tap's message counts are not compared: across a broker restart it may reconnect after the hub.)
    for prompt in {prompt for _, prompt in LOCAL_ALERTS.values()}:
        expected = sum(1 for e in alarms if LOCAL_ALERTS.get(EventType(e["type"]), ("", ""))[1] == prompt)
        assert result["prompts"].count(prompt) >= expected, f"each alarm speaks its prompt: {prompt}"
    assert result["prompts"].count("centre_received") >= len([a for a in alarms if a["type"] != "alarm.checkin_missed"])


async def test_hub_killed_while_waiting_for_an_ack_resends_the_same_event(tmp_path: Path, prompt_cache: Path) -> None:
    result = await _run(load_scenario(bundled("kill-mid-send")), tmp_path, prompt_cache)
    (alarm,) = [e for e in result["events"] if e["type"] == "alarm.emergency"]
    assert alarm["centre_copies"] >= 2, "the restarted hub must resend the unacknowledged alarm"
    assert alarm["centre_records"] == 1
    assert alarm["delivered"]
    texts = [entry["text"] for entry in result["timeline"]]
    assert any("SIGKILL" in text for text in texts)


async def test_a_failed_expectation_is_reported(tmp_path: Path, prompt_cache: Path) -> None:
    scenario = Scenario.model_validate(
        {
            "name": "wrong-count",
            "household": {"id": "hh-0009", "county": "minle"},
            "devices": [{"id": "cord", "kind": "pullcord", "transport": "gpio", "pin": 17}],
            "steps": [{"at": 0.2, "device": "cord", "do": "pull"}],
            "expect": [{"event": "alarm.emergency", "device": "cord", "count": 3, "delivered": True}],
            "settle": 5,
        }
    )
    result = await _run(scenario, tmp_path, prompt_cache)
    assert result["ok"] is False
    (expectation,) = result["expectations"]
    assert expectation["ok"] is False
    assert "expected 3, the hub journaled 1" in expectation["detail"]


def test_cli_simulate_json_and_exit_status(tmp_path: Path) -> None:
    scenario = tmp_path / "two-pulls.yaml"
    scenario.write_text(
        "name: two-pulls\n"
        "household: {id: hh-0010, county: minle}\n"
        "devices:\n  - {id: cord, kind: pullcord, transport: gpio, pin: 17}\n"
        "steps:\n  - {at: 0.2, device: cord, do: pull}\n  - {at: 0.6, device: cord, do: pull}\n"
        "expect:\n  - {event: alarm.emergency, device: cord, count: 2, delivered: true}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "hub.cli", "simulate", str(scenario), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["ok"] is True
    for event in result["events"]:
        assert set(event) >= {
            "event_id",
            "type",
            "device",
            "priority",
            "local_alert_ms",
            "delivered",
            "ack_ms",
            "centre_copies",
            "centre_records",
        }
    assert {"ok", "detail"} <= set(result["expectations"][0])


def test_cli_simulate_bad_file_exits_2_naming_the_line(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.yaml"
    scenario.write_text(
        "name: bad\nhousehold: {id: hh-1, county: minle}\n"
        "devices:\n  - {id: cord, kind: pullcord, transport: gpio, pin: 17}\n"
        "steps:\n  - {at: 1.0, device: cord, do: pull, uplink: down}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "hub.cli", "simulate", str(scenario)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert f"{scenario}:6: steps[0]" in done.stderr
    assert "exactly one of" in done.stderr
