"""Fault tests with real processes: mosquitto, the centre and the hub, each fault injected for real
(SIGKILL, a TCP proxy refusing, black-holing or dropping, a journal budget running out, a journal
file deleted or overwritten). Every test counts alarms in at the pins and alarm records out at the
centre: nothing lost, nothing doubled.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator.runner import run_scenario
from simulator.scenario import Scenario

HEAD = """
household: {id: hh-0100, county: minle}
devices:
  - {id: cord-bath, kind: pullcord, transport: gpio, pin: 17, room: bathroom}
  - {id: cord-bed, kind: pullcord, transport: gpio, pin: 18, room: bedroom}
"""


async def _play(text: str, workdir: Path, prompt_cache: Path) -> dict[str, Any]:
    scenario = Scenario.model_validate(yaml.safe_load(HEAD + textwrap.dedent(text)))
    return await run_scenario(scenario, workdir, prompt_cache=prompt_cache)


def _centre_alarms(workdir: Path) -> list[tuple[str, int, int]]:
    """(event id, seq, copies) of every alarm record the centre keeps."""
    with contextlib.closing(sqlite3.connect(workdir / "centre.sqlite3")) as db:
        return db.execute("SELECT event_id, seq, copies FROM events WHERE type LIKE 'alarm.%' ORDER BY seq").fetchall()


def _every_alarm_once(result: dict[str, Any], workdir: Path, alarms_in: int) -> None:
    assert result["ok"], json.dumps(result["expectations"], ensure_ascii=False, indent=1)
    alarms = [e for e in result["events"] if e["type"].startswith("alarm.")]
    assert len(alarms) == alarms_in, f"{alarms_in} alarms raised at the pins, the hub journaled {len(alarms)}"
    for alarm in alarms:
        assert alarm["delivered"] and alarm["centre_records"] == 1, alarm
    records = _centre_alarms(workdir)
    assert len(records) == alarms_in, f"{alarms_in} alarms raised, the centre holds {len(records)} records"
    assert len({seq for _, seq, _ in records}) == alarms_in, "no sequence number twice"
    assert result["contract"]["violations"] == []


async def test_broker_killed_and_restarted(tmp_path: Path, prompt_cache: Path) -> None:
    result = await _play(
        """
        name: broker-killed
        steps:
          - {at: 0.5, device: cord-bath, do: pull}
          - {at: 1.0, broker: kill}
          - {at: 1.5, device: cord-bath, do: pull}
          - {at: 2.0, device: cord-bed, do: pull}
          - {at: 4.0, broker: up}
          - {at: 4.5, device: cord-bath, do: pull}
        expect:
          - {event: alarm.emergency, count: 4, delivered: true}
        """,
        tmp_path / "run",
        prompt_cache,
    )
    _every_alarm_once(result, tmp_path / "run", 4)
    assert any("SIGKILL" in entry["text"] for entry in result["timeline"])


async def test_five_minutes_of_black_hole(tmp_path: Path, prompt_cache: Path) -> None:
    """Nothing gets through and nothing is refused for 5 min of the hub's time: the hub says it is
    still calling, reports the outage, sends the SMS, and delivers the alarm once when the link
    returns (the black-holed connection never told it anything)."""
    result = await _play(
        """
        name: black-hole
        clock: {start: "2026-11-29T10:00:00+08:00"}
        uplinks:
          - {type: mqtt}
          - {type: sms, numbers: ["+8612345678901"]}
        steps:
          - {at: 0.5, uplink: blackhole}
          - {at: 1.0, device: cord-bath, do: pull}
          - {at: 2.0, advance: 5m}
          - {at: 3.0, uplink: up}
        expect:
          - {event: alarm.emergency, count: 1, delivered: true}
          - {prompt: still_calling}
          - {event: fault.uplink, count: 1, delivered: true}
          - {event: restore.uplink, count: 1, delivered: true}
          - {sms: true, count: 1}
        """,
        tmp_path / "run",
        prompt_cache,
    )
    _every_alarm_once(result, tmp_path / "run", 1)


async def test_hub_sigkilled_while_sending_over_a_flaky_link(tmp_path: Path, prompt_cache: Path) -> None:
    result = await _play(
        """
        name: kill-while-flaky
        steps:
          - {at: 0.5, uplink: flaky}
          - {at: 1.0, device: cord-bath, do: pull}
          - {at: 1.2, device: cord-bed, do: pull}
          - {at: 1.4, device: cord-bath, do: pull}
          - {at: 2.2, hub: kill}
          - {at: 2.5, device: cord-bed, do: pull}
          - {at: 4.0, uplink: up}
        expect:
          - {event: alarm.emergency, count: 4, delivered: true}
        """,
        tmp_path / "run",
        prompt_cache,
    )
    _every_alarm_once(result, tmp_path / "run", 4)


async def test_duplicate_acks_and_acks_for_unknown_events(tmp_path: Path, prompt_cache: Path) -> None:
    result = await _play(
        """
        name: noisy-acks
        steps:
          - {at: 0.3, acks: duplicate}
          - {at: 1.0, device: cord-bath, do: pull}
          - {at: 1.5, device: cord-bed, do: pull}
        expect:
          - {event: alarm.emergency, count: 2, delivered: true}
          - {prompt: centre_received, count: 2}
        """,
        tmp_path / "run",
        prompt_cache,
    )
    _every_alarm_once(result, tmp_path / "run", 2)


async def test_full_disk_drops_info_first_and_says_so(tmp_path: Path, prompt_cache: Path) -> None:
    """A journal budget of 64 KiB, no centre to take events away: walk-test (info) events fill it
    until the hub refuses them; the alarm after that is kept, sent and acknowledged, and the hub
    reports that it dropped info."""
    pulls = "\n".join(f"  - {{at: {1.0 + 0.25 * i:.2f}, device: cord-bath, do: pull, hold: 0.1}}" for i in range(24))
    result = await _play(
        "name: disk-full\n"
        "journal: {max_kb: 64, reserve_percent: 35}\n"
        "steps:\n"
        "  - {at: 0.3, uplink: down}\n"
        "  - {at: 0.5, mode: test}\n" + pulls + "\n"
        "  - {at: 8.0, mode: normal}\n"
        "  - {at: 8.5, device: cord-bed, do: pull}\n"
        "  - {at: 9.0, uplink: up}\n"
        "expect:\n"
        "  - {event: alarm.emergency, device: cord-bed, count: 1, delivered: true}\n"
        "  - {event: fault.device, count: 1, delivered: true}\n",
        tmp_path / "run",
        prompt_cache,
    )
    _every_alarm_once(result, tmp_path / "run", 1)
    walks = [e for e in result["events"] if e["type"] == "test.walk"]
    assert 0 < len(walks) < 24, f"{len(walks)} of 24 walk-test events kept: some must have been dropped"
    with contextlib.closing(sqlite3.connect(tmp_path / "run" / "centre.sqlite3")) as db:
        (message,) = db.execute("SELECT message FROM events WHERE type = 'fault.device'").fetchone()
    assert "info events are dropped" in json.loads(message)["details"]["problem"]


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
async def test_journal_lost_hub_starts_reports_and_keeps_working(
    damage: str, tmp_path: Path, prompt_cache: Path
) -> None:
    """The journal deleted or overwritten while the hub is down: it starts, reports it, keeps
    working, and numbers its events above the lost journal's."""
    workdir = tmp_path / "run"
    result = await _play(
        f"""
        name: journal-{damage}
        settle: 4  # the first alarm went with the old journal: the hub cannot count it
        steps:
          - {{at: 0.5, device: cord-bath, do: pull}}
          - {{at: 2.0, journal: {damage}}}
          - {{at: 2.5, device: cord-bed, do: pull}}
        expect:
          - {{event: fault.device, count: 1, delivered: true}}
          - {{event: alarm.emergency, device: cord-bed, count: 1, delivered: true}}
        """,
        workdir,
        prompt_cache,
    )
    assert result["ok"], json.dumps(result["expectations"], ensure_ascii=False, indent=1)
    records = _centre_alarms(workdir)
    assert len(records) == 2 and all(copies == 1 for _, _, copies in records)
    (before, _), (after, _) = [(seq, copies) for _, seq, copies in records]
    assert after > before, "the new journal numbers above the lost one: no sequence number twice"
    (fault,) = [e for e in result["events"] if e["type"] == "fault.device"]
    assert fault["delivered"]
    if damage == "corrupt":
        assert list((workdir / "hub").glob("journal.sqlite3.damaged-*")), "the damaged file is kept for a person"
