"""Failover to DC-09 and SMS, against a real pysiaalarm receiver and a virtual modem on a pty."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloud_bridge.dc09 import CR, LF, crc16_arc
from cloud_bridge.dc09_uplink import Dc09Path, dc09_sequence
from cloud_bridge.failover import Failover
from cloud_bridge.sms import SmsPath
from hub.clock import SimulatedClock
from hub.config import Dc09UplinkConfig, SmsUplinkConfig
from hub.model import Event, EventType
from simulator.dc09_receiver import Dc09Receiver
from simulator.modem import VirtualModem

KEY = "ANJU-TEST-KEY-16"
NUMBERS = ["+8612345678901", "+8613800000000"]


class Harness:
    def __init__(self, clock: SimulatedClock, receiver: Dc09Receiver | None, modem: VirtualModem | None) -> None:
        self.clock = clock
        self.receiver = receiver
        self.modem = modem
        self.primary = False
        self.delivered: list[tuple[str, str, bool]] = []
        self.changed = asyncio.Event()
        dc09 = sms = None
        if receiver is not None:
            config = Dc09UplinkConfig(
                type="dc09",
                host="127.0.0.1",
                port=receiver.port,
                account="1234",
                key=KEY,
                key_format="ascii",
                receiver="1",
                after_s=10,
                link_test_s=0,
                timeout_s=1.0,
            )
            dc09 = Dc09Path(config, {"cord-bath": 3})
        if modem is not None:
            sms = SmsPath(SmsUplinkConfig(type="sms", port=str(modem.port_path), numbers=NUMBERS, status_s=3600))
        self.failover = Failover(
            order=["mqtt", "dc09", "sms"],
            primary_up=lambda: self.primary,
            dc09=dc09,
            sms=sms,
            clock=clock,
            sms_after_s=60,
            on_delivered=self._on_delivered,
        )

    def _on_delivered(self, event: Event, via: str, acknowledged: bool) -> None:
        self.delivered.append((event.event_id, via, acknowledged))
        if acknowledged:
            self.failover.delivered(event.event_id, via)
        self.changed.set()

    async def next_delivery(self) -> tuple[str, str, bool]:
        count = len(self.delivered)
        while len(self.delivered) == count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 10)
        return self.delivered[-1]


def _alarm(clock: SimulatedClock, type_: EventType = EventType.ALARM_EMERGENCY, seq: int = 7) -> Event:
    event = Event(type_, "hub-0001", "hh-0001", "minle", "cord-bath", occurred_at=clock.now())
    return event.with_seq(seq)


@pytest.fixture
async def receiver() -> AsyncIterator[Dc09Receiver]:
    async with Dc09Receiver("1234", key=KEY, key_format="ascii") as running:
        yield running


@pytest.fixture
async def modem(tmp_path: Path) -> AsyncIterator[VirtualModem]:
    async with VirtualModem(tmp_path / "modem") as running:
        yield running


@pytest.fixture
def clock() -> SimulatedClock:
    return SimulatedClock(datetime(2026, 11, 29, 8, 0, tzinfo=UTC))


async def _running(harness: Harness) -> asyncio.Task[None]:
    task = asyncio.create_task(harness.failover.run())
    await asyncio.sleep(0)
    return task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_broker_down_sends_the_alarm_over_dc09_at_once(clock: SimulatedClock, receiver: Dc09Receiver) -> None:
    harness = Harness(clock, receiver, None)
    task = await _running(harness)
    alarm = _alarm(clock, seq=10_005)
    harness.failover.track(alarm)

    assert await harness.next_delivery() == (alarm.event_id, "dc09", True)
    signal = await receiver.wait_for(lambda s: s.code == "MA", 5)
    assert signal.encrypted and signal.account == "1234"
    assert int(signal.sequence) == dc09_sequence(10_005) == 6  # the same number on every resend
    assert harness.failover.pending() == 0
    assert harness.failover.heartbeat()["uplinks"]["dc09"]["ok"] is True
    await _stop(task)


async def test_alarm_waits_for_mqtt_ack_before_dc09(clock: SimulatedClock, receiver: Dc09Receiver) -> None:
    harness = Harness(clock, receiver, None)
    harness.primary = True
    task = await _running(harness)
    acked, waiting = _alarm(clock, seq=1), _alarm(clock, EventType.ALARM_FIRE, seq=2)
    harness.failover.track(acked)
    harness.failover.track(waiting)
    harness.failover.delivered(acked.event_id, "mqtt")  # the centre acked this one over MQTT

    clock.advance(9)
    await asyncio.sleep(0.1)
    assert receiver.alarms() == []  # still within after_s: MQTT gets its chance
    clock.advance(2)
    assert await harness.next_delivery() == (waiting.event_id, "dc09", True)
    assert [s.code for s in receiver.alarms()] == ["FA"]
    await _stop(task)


async def test_every_ip_path_down_sends_sms_to_every_number_once(
    clock: SimulatedClock, receiver: Dc09Receiver, modem: VirtualModem
) -> None:
    await receiver.stop()  # the alarm receiver is unreachable too
    harness = Harness(clock, receiver, modem)
    task = await _running(harness)
    alarm = _alarm(clock)
    harness.failover.track(alarm)

    assert await harness.next_delivery() == (alarm.event_id, "sms", False)
    assert [sms.number for sms in modem.sent] == NUMBERS
    assert "紧急呼叫" in modem.sent[0].text and alarm.event_id[-8:] in modem.sent[0].text
    assert harness.failover.pending() == 1  # an SMS is not an ack: DC-09 and MQTT keep trying
    report = harness.failover.heartbeat()["uplinks"]
    assert report["dc09"]["ok"] is False and "dc09" in report["dc09"]["detail"]

    await receiver.start()  # the receiver comes back: the retry gets through, no second SMS
    clock.advance(61)
    assert await harness.next_delivery() == (alarm.event_id, "dc09", True)
    assert len(modem.sent) == 2
    await _stop(task)


async def test_sms_after_the_escalation_time_when_nothing_acks(clock: SimulatedClock, modem: VirtualModem) -> None:
    harness = Harness(clock, None, modem)
    harness.primary = True  # connected, but the centre never acks
    task = await _running(harness)
    harness.failover.track(_alarm(clock))
    clock.advance(59)
    await asyncio.sleep(0.2)
    assert modem.sent == []
    clock.advance(2)
    assert (await harness.next_delivery())[1:] == ("sms", False)
    await _stop(task)


async def test_modem_without_signal_is_retried_and_reported(clock: SimulatedClock, modem: VirtualModem) -> None:
    modem.no_signal()
    harness = Harness(clock, None, modem)
    assert harness.failover.sms is not None
    task = await _running(harness)
    harness.failover.track(_alarm(clock))
    for _ in range(100):  # the SMS attempt is refused by the network
        await asyncio.sleep(0.05)
        if "+CMS ERROR" in harness.failover.sms.health.detail:
            break
    assert "+CMS ERROR: 38" in harness.failover.heartbeat()["uplinks"]["sms"]["detail"]
    assert harness.failover.heartbeat()["modem"]["signal_dbm"] is None
    modem.recover()
    clock.advance(120)
    assert (await harness.next_delivery())[1:] == ("sms", False)
    assert harness.failover.heartbeat()["modem"]["sim"] == "READY"
    await _stop(task)


async def test_info_and_acknowledged_alarms_are_not_failed_over(clock: SimulatedClock, receiver: Dc09Receiver) -> None:
    harness = Harness(clock, receiver, None)
    harness.failover.track(_alarm(clock, EventType.INFO_CHECKIN_OK))
    harness.failover.track(_alarm(clock), done_via="dc09")  # from before a restart: done already
    assert harness.failover.pending() == 0


async def _duh_receiver() -> tuple[asyncio.Server, list[bytes]]:
    """A receiver that understands nothing: answers every frame with DUH."""
    received: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frame = await reader.readuntil(CR)
        received.append(frame)
        body = f'"DUH"0000R0L0A0[]_{datetime.now(UTC):%H:%M:%S,%m-%d-%Y}'.encode()
        writer.write(LF + f"{crc16_arc(body):04X}{len(body):04X}".encode() + body + CR)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, received


async def test_duh_is_reported_not_looped(clock: SimulatedClock, modem: VirtualModem) -> None:
    server, received = await _duh_receiver()
    harness = Harness(clock, None, modem)
    config = Dc09UplinkConfig(
        type="dc09", host="127.0.0.1", port=server.sockets[0].getsockname()[1], account="1234", receiver="1"
    )
    harness.failover.dc09 = Dc09Path(config, {})
    task = await _running(harness)
    harness.failover.track(_alarm(clock))  # MQTT down: DC-09 at once, DUH, so SMS at once

    assert (await harness.next_delivery())[1:] == ("sms", False)
    clock.advance(600)
    await asyncio.sleep(0.2)
    alarms = [frame for frame in received if b'"NULL"' not in frame]
    assert len(alarms) == 1, "a message the receiver does not understand is not sent again"
    assert "DUH" in harness.failover.heartbeat()["uplinks"]["dc09"]["detail"]
    await _stop(task)
    server.close()
    await server.wait_closed()
