"""The hub service in one process against a real private mosquitto and the reference centre:
what happens to an alarm when the journal is damaged or the disk refuses writes. (Commands from
the centre, stale, repeated or otherwise: tests/hub/test_commands.py.) Pins are gpiozero's
MockFactory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub.config import HubConfig
from hub.journal import Journal, JournalError
from hub.service import PROVISIONAL_SEQ_BASE, HubService
from simulator.broker import PrivateBroker
from simulator.centre import Centre


def config(tmp_path: Path, broker: PrivateBroker, prompt_cache: Path) -> HubConfig:
    return HubConfig.model_validate(
        {
            "hub_id": "hub-svc",
            "county": "minle",
            "household_id": "hh-svc",
            "data_dir": str(tmp_path / "hub"),
            "gpio": {"pin_factory": "mock"},
            "audio": {"player": "record", "cache_dir": str(prompt_cache)},
            "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
            "outbox": {"resend_first_s": 0.5, "resend_cap_s": 1.0},
            "devices": [{"id": "cord", "kind": "pullcord", "transport": "gpio", "pin": 17}],
        }
    )


class Running:
    def __init__(self, service: HubService, centre: Centre) -> None:
        self.service = service
        self.centre = centre

    async def pull(self) -> None:
        """A person's pull: the cord is held longer than the 50 ms debounce, then let go."""
        pin = self.service.inputs._inputs[0].button.pin
        pin.drive_low()
        await asyncio.sleep(0.12)
        pin.drive_high()
        await asyncio.sleep(0.12)

    async def centre_records(self, count: int, timeout: float = 15) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(records := self.centre.store.events()) < count:
                await asyncio.sleep(0.05)
        return records


@pytest.fixture
async def start(tmp_path: Path, broker: PrivateBroker, prompt_cache: Path) -> AsyncIterator[Any]:
    tasks: list[asyncio.Task[Any]] = []
    stop = asyncio.Event()

    async def starter() -> Running:
        centre = Centre(broker.host, broker.port, tmp_path / "centre.sqlite3")
        tasks.append(asyncio.create_task(centre.run()))
        service = HubService(config(tmp_path, broker, prompt_cache))
        tasks.append(asyncio.create_task(service.run(stop)))
        await asyncio.wait_for(service.ready.wait(), 20)
        await asyncio.wait_for(centre.connected.wait(), 10)
        return Running(service, centre)

    yield starter
    stop.set()
    await asyncio.wait(tasks[1:], timeout=15)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_damaged_journal_is_moved_aside_and_alarms_still_flow(tmp_path: Path, start) -> None:
    data = tmp_path / "hub"
    data.mkdir()
    (data / "journal.sqlite3").write_bytes(b"this is not a database" * 100)
    running = await start()
    await running.pull()
    records = await running.centre_records(2)
    assert sorted(r["type"] for r in records) == ["alarm.emergency", "fault.device"]
    assert list(data.glob("journal.sqlite3.damaged-*")), "the damaged file is kept for a person to look at"


async def test_an_alarm_leaves_even_when_the_journal_refuses_to_write(monkeypatch, start) -> None:
    def refuse(self: Journal, event: Any, alerted: Any = None) -> Any:
        raise JournalError(f"cannot write event {event.event_id} to {self.path}: database or disk is full")

    running = await start()
    monkeypatch.setattr(Journal, "append", refuse)
    await running.pull()
    (record,) = await running.centre_records(1)
    assert record["type"] == "alarm.emergency" and record["seq"] >= PROVISIONAL_SEQ_BASE
    assert running.service.siren.pattern == "emergency", "the siren never waited for the disk"
