"""The MQTT uplink against a real private mosquitto and the reference centre, in one event loop.

Waits are event-driven (an asyncio.Event set by a handler, bounded by a generous timeout), never
sleeps that hope something has happened by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from cloud_bridge.contract import topic
from cloud_bridge.mqtt import MqttUplink
from cloud_bridge.outbox import Outbox, RetryPolicy
from hub.config import MqttConfig
from hub.model import Event, EventType
from simulator.broker import PrivateBroker
from simulator.centre import Centre
from simulator.tap import ContractTap

HUB, COUNTY = "hub-7", "minle"


def event(kind: EventType, seq: int, device: str = "cord-bath") -> Event:
    return Event(kind, HUB, "hh-0007", COUNTY, device).with_seq(seq)


@dataclass
class Rig:
    broker: PrivateBroker
    outbox: Outbox
    uplink: MqttUplink
    tap: ContractTap
    acked: list[str] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    ack_seen: asyncio.Event = field(default_factory=asyncio.Event)
    command_seen: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    def start(self, coro: Any) -> None:
        self.tasks.append(asyncio.create_task(coro))

    async def wait_acked(self, count: int, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while len(self.acked) < count:
                self.ack_seen.clear()
                await self.ack_seen.wait()


@pytest.fixture
async def rig(broker: PrivateBroker) -> AsyncIterator[Rig]:
    outbox = Outbox(RetryPolicy(first_s=1.0, cap_s=2.0))
    holder: dict[str, Rig] = {}

    async def on_ack(event_id: str, ack: dict[str, Any]) -> None:
        if outbox.ack(event_id) is not None:
            holder["rig"].acked.append(event_id)
        holder["rig"].ack_seen.set()

    async def on_command(command: dict[str, Any]) -> None:
        holder["rig"].commands.append(command)
        holder["rig"].command_seen.set()

    config = MqttConfig(host=broker.host, port=broker.port, heartbeat_s=0.3, reconnect_min_s=0.1, reconnect_max_s=0.5)
    uplink = MqttUplink(config, HUB, COUNTY, outbox, on_ack, on_command, version="test")
    tap = ContractTap(broker.host, broker.port)
    holder["rig"] = rig = Rig(broker, outbox, uplink, tap)
    rig.start(tap.run())
    await asyncio.wait_for(tap.subscribed.wait(), 10)
    yield rig
    for task in rig.tasks:
        task.cancel()
    await asyncio.gather(*rig.tasks, return_exceptions=True)
    assert tap.violations == [], "every message on the wire must match the contract"


def start_centre(rig: Rig, tmp_path: Path) -> Centre:
    centre = Centre(rig.broker.host, rig.broker.port, tmp_path / "centre.sqlite3")
    rig.start(centre.run())
    return centre


async def publish_raw(broker: PrivateBroker, kind: str, payload: bytes) -> None:
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.publish(topic(COUNTY, HUB, kind), payload, qos=1)


async def test_alarm_is_delivered_acknowledged_and_recorded_once(rig: Rig, tmp_path: Path) -> None:
    centre = start_centre(rig, tmp_path)
    await asyncio.wait_for(centre.connected.wait(), 10)
    rig.start(rig.uplink.run())
    alarm = event(EventType.ALARM_EMERGENCY, 1)
    rig.outbox.add(alarm)
    await rig.wait_acked(1)
    assert rig.acked == [alarm.event_id]
    assert len(rig.outbox) == 0
    (record,) = centre.store.events()
    assert (record["event_id"], record["hub_id"], record["seq"], record["copies"]) == (alarm.event_id, HUB, 1, 1)


async def test_an_alarm_leaves_before_a_backlog(rig: Rig) -> None:
    """With 300 info events queued first, the alarm is the first event on the wire."""
    seen: list[str] = []
    got_alarm = asyncio.Event()

    async def watch() -> None:
        async with aiomqtt.Client(rig.broker.host, rig.broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe(topic(COUNTY, HUB, "event"), qos=1)
            subscribed.set()
            async for message in client.messages:
                seen.append(json.loads(message.payload)["type"])  # type: ignore[arg-type]
                if seen[-1] == "alarm.fire":
                    got_alarm.set()

    subscribed = asyncio.Event()
    rig.start(watch())
    await asyncio.wait_for(subscribed.wait(), 10)
    for seq in range(1, 301):
        rig.outbox.add(event(EventType.TEST_WALK, seq))
    rig.outbox.add(event(EventType.ALARM_FIRE, 301, device="smoke-kitchen"))
    rig.start(rig.uplink.run())
    await asyncio.wait_for(got_alarm.wait(), 15)
    assert seen[0] == "alarm.fire"


async def test_malformed_and_foreign_messages_are_dropped_and_the_uplink_keeps_working(
    rig: Rig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cloud_bridge.mqtt")
    rig.start(rig.uplink.run())
    await asyncio.wait_for(rig.uplink.connected.wait(), 10)
    pending = event(EventType.ALARM_EMERGENCY, 1)
    rig.outbox.add(pending)  # no centre yet: it stays pending
    for kind, payload in [
        ("ack", b"\xff\xfe not json"),
        ("ack", b"[1, 2, 3]"),
        ("ack", json.dumps({"schema": "anju.ack/1", "event_id": "nope"}).encode()),
        (
            "cmd",
            json.dumps(
                {
                    "schema": "anju.cmd/1",
                    "cmd_id": "c1",
                    "command": "self-destruct",
                    "issued_at": "2026-11-29T10:00:00Z",
                }
            ).encode(),
        ),
    ]:
        await publish_raw(rig.broker, kind, payload)
    unknown = {
        "schema": "anju.ack/1",
        "event_id": "01937f5e-0000-7000-8000-000000000000",
        "seq": 99,
        "hub_id": HUB,
        "centre_id": "c",
        "received_at": "2026-11-29T10:00:00Z",
        "duplicate": False,
    }
    await publish_raw(rig.broker, "ack", json.dumps(unknown).encode())
    await publish_raw(
        rig.broker,
        "cmd",
        json.dumps(
            {"schema": "anju.cmd/1", "cmd_id": "c2", "command": "silence", "issued_at": "2026-11-29T10:00:00Z"}
        ).encode(),
    )
    await asyncio.wait_for(rig.command_seen.wait(), 10)
    assert [c["command"] for c in rig.commands] == ["silence"], "only the valid command reaches the hub"
    assert "malformed ack dropped" in caplog.text and "malformed cmd dropped" in caplog.text
    assert pending.event_id in rig.outbox, "an ack for an unknown id must not release a pending alarm"

    start_centre(rig, tmp_path)
    await rig.wait_acked(1)
    assert rig.acked == [pending.event_id]
    assert len(rig.tap.violations) == 4, "the tap saw exactly the four bad messages this test sent"
    rig.tap.violations.clear()


async def test_broker_restart_loses_nothing(rig: Rig, tmp_path: Path) -> None:
    centre = start_centre(rig, tmp_path)
    rig.start(rig.uplink.run())
    await asyncio.wait_for(rig.uplink.connected.wait(), 10)
    rig.broker.stop()
    raised_while_down = [event(EventType.ALARM_EMERGENCY, 1), event(EventType.ALARM_FIRE, 2, "smoke")]
    for item in raised_while_down:
        rig.outbox.add(item)
    rig.broker.start()
    await rig.wait_acked(2)
    assert sorted(rig.acked) == sorted(e.event_id for e in raised_while_down)
    assert [r["copies"] >= 1 for r in centre.store.events()] == [True, True]


async def test_birth_message_is_retained_and_heartbeats_report_pending(rig: Rig) -> None:
    rig.outbox.add(event(EventType.FAULT_BATTERY_LOW, 1, "pendant"))
    rig.start(rig.uplink.run())
    await asyncio.wait_for(rig.uplink.connected.wait(), 10)
    async with aiomqtt.Client(rig.broker.host, rig.broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(topic(COUNTY, HUB, "status"), qos=1)
        await client.subscribe(topic(COUNTY, HUB, "heartbeat"), qos=1)
        status = heartbeat = None
        async with asyncio.timeout(10):
            async for message in client.messages:
                body = json.loads(message.payload)  # type: ignore[arg-type]
                if str(message.topic).endswith("status"):
                    status = (body, message.retain)
                else:
                    heartbeat = body
                if status and heartbeat:
                    break
    assert status is not None and status[0]["state"] == "online" and status[1] is True
    assert heartbeat is not None and heartbeat["pending"] == {"alarm": 0, "fault": 1, "info": 0}


async def test_clean_stop_publishes_offline(rig: Rig) -> None:
    task = asyncio.create_task(rig.uplink.run())
    await asyncio.wait_for(rig.uplink.connected.wait(), 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    async with aiomqtt.Client(rig.broker.host, rig.broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(topic(COUNTY, HUB, "status"), qos=1)
        async with asyncio.timeout(10):
            message = await anext(aiter(client.messages))
    body = json.loads(message.payload)  # type: ignore[arg-type]
    assert (body["state"], body["reason"], message.retain) == ("offline", "hub stopped", True)


async def test_a_command_sent_while_the_hub_is_away_reaches_it_on_reconnect(rig: Rig) -> None:
    first = asyncio.create_task(rig.uplink.run())
    await asyncio.wait_for(rig.uplink.connected.wait(), 10)
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first
    command = {"schema": "anju.cmd/1", "cmd_id": "c-away", "command": "silence", "issued_at": "2026-11-29T10:00:00Z"}
    await publish_raw(rig.broker, "cmd", json.dumps(command).encode())
    rig.start(rig.uplink.run())
    await asyncio.wait_for(rig.command_seen.wait(), 10)
    assert [c["cmd_id"] for c in rig.commands] == ["c-away"]
