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

from cloud_bridge import mqtt
from cloud_bridge.contract import BATCH_MAX, topic
from cloud_bridge.mqtt import MqttUplink
from cloud_bridge.outbox import Outbox, RetryPolicy
from hub.config import MqttConfig
from hub.model import Event, EventType
from simulator.broker import PrivateBroker
from simulator.centre import Centre
from simulator.proxy import TcpProxy
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
    ack_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # every on_ack call
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
        holder["rig"].ack_calls.append((event_id, ack))
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


@dataclass
class Wire:
    """What the hub publishes on `event` and `events`, in order: (kind, [event message, ...])."""

    messages: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def items(self) -> list[dict[str, Any]]:
        return [event for _, events in self.messages for event in events]

    async def wait_for(self, condition: Any, timeout: float = 15) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


async def watch_the_wire(rig: Rig) -> Wire:
    wire, subscribed = Wire(), asyncio.Event()

    async def watch() -> None:
        async with aiomqtt.Client(rig.broker.host, rig.broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe([(topic(COUNTY, HUB, "event"), 1), (topic(COUNTY, HUB, "events"), 1)])
            subscribed.set()
            async for message in client.messages:
                body = json.loads(message.payload)  # type: ignore[arg-type]
                kind = str(message.topic).rsplit("/", 1)[-1]
                wire.messages.append((kind, body["events"] if kind == "events" else [body]))
                wire.changed.set()

    rig.start(watch())
    await asyncio.wait_for(subscribed.wait(), 10)
    return wire


def acks_message(*items: tuple[str, int], hub_id: str = HUB) -> bytes:
    return json.dumps(
        {
            "schema": "anju.acks/1",
            "hub_id": hub_id,
            "centre_id": "centre-test",
            "acks": [
                {"event_id": i, "seq": seq, "received_at": "2026-11-29T10:00:00Z", "duplicate": False}
                for i, seq in items
            ],
        }
    ).encode()


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
            {
                "schema": "anju.cmd/1",
                "cmd_id": "c2",
                "hub_id": HUB,
                "command": "silence",
                "issued_at": "2026-11-29T10:00:00Z",
                "signature": "c2lnbmVk",  # the uplink checks the schema; hub.commands checks the signature
            }
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


@dataclass
class LinedHub:
    """An uplink reaching the broker through a TcpProxy (`line`), with a centre answering it."""

    line: TcpProxy
    uplink: MqttUplink
    outbox: Outbox
    task: asyncio.Task[None]
    acked: list[str] = field(default_factory=list)

    async def wait_acked(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not self.acked:
                await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def behind_a_line(
    broker: PrivateBroker, tmp_path: Path, line_mode: str = "up", **mqtt: Any
) -> AsyncIterator[LinedHub]:
    centre = Centre(broker.host, broker.port, tmp_path / "centre.sqlite3")
    outbox = Outbox(RetryPolicy(first_s=1.0, cap_s=2.0))
    acked: list[str] = []

    async def on_ack(event_id: str, ack: dict[str, Any]) -> None:
        if outbox.ack(event_id) is not None:
            acked.append(event_id)

    async def on_command(command: dict[str, Any]) -> None:
        pass

    async with TcpProxy(broker.host, broker.port) as line:
        await line.set_mode(line_mode)  # type: ignore[arg-type]
        uplink = MqttUplink(
            MqttConfig(host="127.0.0.1", port=line.port, **mqtt), HUB, COUNTY, outbox, on_ack, on_command
        )
        tasks = [asyncio.create_task(centre.run()), asyncio.create_task(uplink.run())]
        try:
            yield LinedHub(line, uplink, outbox, tasks[1], acked)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_line_that_resets_every_connection_for_a_while_does_not_end_the_uplink(
    broker: PrivateBroker, tmp_path: Path
) -> None:
    """Connections accepted and reset at once (a load balancer before a dead broker, a district's
    line coming back): the uplink fails session after session, and must still connect once the
    line is back. On Python 3.11 a TaskGroup's leftover cancel request used to end it for good."""
    # connect_timeout_s: a reset before the CONNACK fails the attempt at once, not after this
    settings = {"heartbeat_s": 5, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2, "connect_timeout_s": 30}
    async with behind_a_line(broker, tmp_path, **settings) as hub:
        await asyncio.wait_for(hub.uplink.connected.wait(), 10)
        await hub.line.set_mode("reset")
        async with asyncio.timeout(15):  # attempt after attempt fails, each accepted, then cut
            while hub.line.stats.reset_at_once < 5:
                await asyncio.sleep(0.02)
        assert not hub.task.done(), "the uplink must never end on its own"
        hub.outbox.add(event(EventType.ALARM_EMERGENCY, 1))
        await hub.line.set_mode("up")
        await asyncio.wait_for(hub.uplink.connected.wait(), 10)
        await hub.wait_acked(10)


async def test_a_new_alarm_cuts_a_long_reconnect_backoff_short(broker: PrivateBroker, tmp_path: Path) -> None:
    """The line was dead long enough for the backoff to grow; an alarm raised when it returns is
    sent at once, not after the 10-20 s the backoff would have waited."""
    async with behind_a_line(broker, tmp_path, "down", reconnect_min_s=20, reconnect_max_s=60) as hub:
        async with asyncio.timeout(10):  # the first attempt is refused: now it backs off for 10-20 s
            while hub.uplink.down_for() < 0.5:
                await asyncio.sleep(0.02)
        await hub.line.set_mode("up")
        hub.outbox.add(event(EventType.ALARM_EMERGENCY, 1))
        await hub.wait_acked(5)


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
    command = {
        "schema": "anju.cmd/1",
        "cmd_id": "c-away",
        "hub_id": HUB,
        "command": "silence",
        "issued_at": "2026-11-29T10:00:00Z",
        "signature": "c2lnbmVk",
    }
    await publish_raw(rig.broker, "cmd", json.dumps(command).encode())
    rig.start(rig.uplink.run())
    await asyncio.wait_for(rig.command_seen.wait(), 10)
    assert [c["cmd_id"] for c in rig.commands] == ["c-away"]


async def test_a_backlog_goes_out_in_batches_of_what_is_due(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """250 events due at once (no centre, so nothing is acknowledged): batches of 100, 100 and 50, in
    order, each item an event message; nothing on `event`."""
    monkeypatch.setattr(mqtt, "ACK_WINDOW", 1000)
    wire = await watch_the_wire(rig)
    backlog = [event(EventType.TEST_WALK if seq % 2 else EventType.FAULT_BATTERY_LOW, seq) for seq in range(1, 251)]
    rig.outbox.extend(backlog)
    rig.start(rig.uplink.run())
    await wire.wait_for(lambda: len(wire.items()) >= 250)
    assert [(kind, len(events)) for kind, events in wire.messages] == [("events", 100), ("events", 100), ("events", 50)]
    # faults before info, each in the hub's order, every item as its own event message would be
    expected = sorted(backlog, key=lambda e: (e.priority, e.seq or 0))
    assert [item["event_id"] for item in wire.items()] == [e.event_id for e in expected]
    assert {item["attempt"] for item in wire.items()} == {1}


async def test_past_the_ack_window_only_an_alarm_goes(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """With 120 events awaiting an ack (a window of 120, no centre), the backlog stops; a new alarm
    still goes, alone, on `event`."""
    monkeypatch.setattr(mqtt, "ACK_WINDOW", 120)
    wire = await watch_the_wire(rig)
    rig.outbox.extend(event(EventType.TEST_WALK, seq) for seq in range(1, 501))
    rig.start(rig.uplink.run())
    await wire.wait_for(lambda: len(wire.items()) >= 120)
    alarm = event(EventType.ALARM_FALL, 501, device="radar-hall")
    rig.outbox.add(alarm)
    await wire.wait_for(lambda: any(kind == "event" for kind, _ in wire.messages))
    # The hub publishes in order: anything else it sent before the alarm arrived before it.
    assert [(kind, len(events)) for kind, events in wire.messages] == [("events", 100), ("events", 20), ("event", 1)]
    assert wire.messages[-1][1][0]["event_id"] == alarm.event_id


async def test_an_alarm_raised_during_a_drain_goes_alone_and_is_acknowledged(rig: Rig, tmp_path: Path) -> None:
    centre = start_centre(rig, tmp_path)
    await asyncio.wait_for(centre.connected.wait(), 10)
    wire = await watch_the_wire(rig)
    backlog = [event(EventType.INFO_CHECKIN_OK, seq, device="hub") for seq in range(1, 3001)]
    rig.outbox.extend(backlog)
    rig.start(rig.uplink.run())
    await wire.wait_for(lambda: len(wire.messages) >= 1)
    assert len(rig.outbox) > 2000, "the alarm is raised with most of the backlog still to go"
    alarm = event(EventType.ALARM_EMERGENCY, 3001)
    rig.outbox.add(alarm)
    await rig.wait_acked(3001, timeout=60)
    assert len(rig.outbox) == 0
    with_alarm = [(kind, events) for kind, events in wire.messages if alarm.event_id in {e["event_id"] for e in events}]
    assert with_alarm and all(kind == "event" and len(events) == 1 for kind, events in with_alarm)
    batches = [events for kind, events in wire.messages if kind == "events"]
    assert len(batches) >= 30 and all(1 <= len(b) <= BATCH_MAX for b in batches)
    assert not [e for b in batches for e in b if e["priority"] == "alarm"], "alarms are never batched"
    records = centre.store.events()
    assert len(records) == 3001 and {r["hub_id"] for r in records} == {HUB}
    # It overtook the backlog: when it was queued fewer than 1,000 events had been acked and at most
    # ACK_WINDOW more were on their way; everything else went after it.
    assert rig.acked.index(alarm.event_id) < 1000 + mqtt.ACK_WINDOW
    # every backlog ack came as an item of an `acks` message, with the message's hub and centre
    batch_acks = [ack for event_id, ack in rig.ack_calls if event_id != alarm.event_id]
    assert all(ack["hub_id"] == HUB and ack["centre_id"] == "centre-1" and "schema" not in ack for ack in batch_acks)


async def test_an_acks_message_clears_the_outbox_and_repeated_or_unknown_ids_are_harmless(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="cloud_bridge.mqtt")  # the second drop of a kind in a minute: debug
    faults = [event(EventType.FAULT_TAMPER, seq, device=f"sensor-{seq}") for seq in (1, 2, 3)]
    rig.outbox.extend(faults)
    rig.start(rig.uplink.run())
    await asyncio.wait_for(rig.uplink.connected.wait(), 10)
    unknown = "01937f5e-0000-7000-8000-000000000000"
    a, b, c = (e.event_id for e in faults)
    # malformed (an empty batch) and foreign (another hub's) acks change nothing
    await publish_raw(rig.broker, "acks", acks_message())
    await publish_raw(rig.broker, "acks", acks_message((a, 1), hub_id="hub-8"))
    await publish_raw(rig.broker, "acks", acks_message((a, 1), (a, 1), (unknown, 99), (c, 3)))
    await rig.wait_acked(2)
    assert [event_id for event_id, _ in rig.ack_calls] == [a, a, unknown, c]
    assert rig.acked == [a, c]
    assert b in rig.outbox and len(rig.outbox) == 1
    assert rig.ack_calls[0][1] == {
        "event_id": a,
        "seq": 1,
        "received_at": "2026-11-29T10:00:00Z",
        "duplicate": False,
        "hub_id": HUB,
        "centre_id": "centre-test",
    }
    assert "malformed acks dropped" in caplog.text and "acks for another hub (hub-8) dropped" in caplog.text
    assert len(rig.tap.violations) == 2, rig.tap.violations  # the empty batch and the foreign hub_id
    rig.tap.violations.clear()
    await publish_raw(rig.broker, "acks", acks_message((b, 2)))
    await rig.wait_acked(3)
    assert len(rig.outbox) == 0


async def test_a_failing_ack_handler_does_not_cost_the_other_items(rig: Rig) -> None:
    faults = [event(EventType.FAULT_POWER, seq, device="mains") for seq in (1, 2)]
    rig.outbox.extend(faults)
    original = rig.uplink._on_ack

    async def flaky(event_id: str, ack: dict[str, Any]) -> None:
        if event_id == faults[0].event_id:
            raise RuntimeError("journal on fire")
        await original(event_id, ack)

    rig.uplink._on_ack = flaky
    rig.start(rig.uplink.run())
    await asyncio.wait_for(rig.uplink.connected.wait(), 10)
    await publish_raw(rig.broker, "acks", acks_message((faults[0].event_id, 1), (faults[1].event_id, 2)))
    await rig.wait_acked(1)
    assert rig.acked == [faults[1].event_id]


async def test_heartbeat_extra_is_merged_into_every_heartbeat(broker: PrivateBroker) -> None:
    reports = [
        {
            "modem": {"sim": "READY", "signal_dbm": -71, "registered": True},
            "uplinks": {"mqtt": {"ok": True, "detail": "x"}},
        },
        {"modem": None, "uplinks": {"sms": {"ok": False, "detail": "SIM PIN"}}, "hub_id": "not-me"},
    ]

    def extra() -> dict[str, Any]:
        return reports[0] if len(reports) == 1 else reports.pop(0)

    config = MqttConfig(host=broker.host, port=broker.port, heartbeat_s=0.1)

    async def nothing(*_: Any) -> None: ...

    uplink = MqttUplink(config, HUB, COUNTY, Outbox(), nothing, nothing, heartbeat_extra=extra)
    tap = ContractTap(broker.host, broker.port)
    tasks = [asyncio.create_task(tap.run())]
    try:
        await asyncio.wait_for(tap.subscribed.wait(), 10)
        async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe(topic(COUNTY, HUB, "heartbeat"), qos=1)
            tasks.append(asyncio.create_task(uplink.run()))
            beats = []
            async with asyncio.timeout(10):
                async for message in client.messages:
                    beats.append(json.loads(message.payload))  # type: ignore[arg-type]
                    if len(beats) == 2:
                        break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert beats[0]["modem"] == {"sim": "READY", "signal_dbm": -71, "registered": True}
    assert beats[0]["uplinks"] == {"mqtt": {"ok": True, "detail": "x"}}
    assert (beats[1]["modem"], beats[1]["hub_id"]) == (None, HUB), "extra fields never replace the hub's own"
    assert tap.violations == []
