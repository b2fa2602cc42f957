"""The 4G modem driver against the virtual modem over a real pty, and the alarm SMS text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cloud_bridge.sms import send_alarm_sms, sms_text
from edge.modem import Modem, ModemError, ModemStatus, ModemTimeout, rssi_to_dbm, ucs2_hex
from hub.model import Event, EventType
from simulator.modem import VirtualModem

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[VirtualModem]:
    async with VirtualModem(tmp_path / "modem") as virtual:
        yield virtual


@pytest.fixture
async def modem(sim: VirtualModem) -> AsyncIterator[Modem]:
    async with Modem(str(sim.port_path), command_timeout=1.0, sms_timeout=2.0) as driver:
        yield driver


def _event(event_type: EventType = EventType.ALARM_FIRE, **kw: object) -> Event:
    fields: dict = {
        "type": event_type,
        "hub_id": "hub-0001",
        "household_id": "hh-1",
        "county": "cn-test",
        "device_id": "smoke-kitchen",
        "event_id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        "occurred_at": datetime(2025, 3, 1, 6, 32, 10, tzinfo=UTC),  # 14:32 in Shanghai
    }
    fields.update(kw)
    return Event(**fields)


async def test_status_ready_with_signal(modem: Modem, sim: VirtualModem) -> None:
    status = await modem.status()
    assert status == ModemStatus(sim="READY", signal_dbm=-113 + 2 * sim.rssi, registered=True)
    assert not sim.echo and sim.cmee == 1  # the driver turned echo off and numeric errors on


async def test_chinese_sms_round_trip(modem: Modem, sim: VirtualModem) -> None:
    text = "【安居】火警！主机hub-0001 设备smoke-kitchen 14:32 编号0190a1b2"
    mr = await modem.send_sms("+8613800138000", text)
    assert len(sim.sent) == 1
    sms = sim.sent[0]
    assert (sms.number, sms.text, sms.dcs, sms.mr) == ("+8613800138000", text, 8, mr)
    assert f'AT+CMGS="{ucs2_hex("+8613800138000")}"' in sim.commands
    assert ucs2_hex("+86") == "002B00380036"


async def test_no_sim(modem: Modem, sim: VirtualModem) -> None:
    sim.no_sim()
    with pytest.raises(ModemError) as info:
        await modem.send_sms("10086", "测试")
    assert info.value.command == "AT+CPIN?"
    assert "CPIN" in str(info.value) and "+CME ERROR: 10" in str(info.value)
    assert "SIM not inserted" in str(info.value)
    assert (await modem.status()).sim == "NOT INSERTED"
    assert sim.sent == []


async def test_no_signal(modem: Modem, sim: VirtualModem) -> None:
    sim.no_signal()
    status = await modem.status()
    assert status.signal_dbm is None and status.registered is False and status.sim == "READY"
    with pytest.raises(ModemError) as info:
        await modem.send_sms("10086", "测试")
    assert "+CMS ERROR: 38" in str(info.value) and "network out of order" in str(info.value)
    assert info.value.command.startswith("AT+CMGS=")
    sim.recover()
    assert await modem.send_sms("10086", "测试") >= 0
    assert [s.text for s in sim.sent] == ["测试"]


async def test_smsc_unknown(modem: Modem, sim: VirtualModem) -> None:
    sim.smsc_unknown()
    with pytest.raises(ModemError, match=r"\+CMS ERROR: 330 \(SMSC address unknown\)"):
        await modem.send_sms("10086", "测试")


async def test_hung_modem_times_out(sim: VirtualModem) -> None:
    async with Modem(str(sim.port_path), command_timeout=0.3) as modem:
        sim.hang(30)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(ModemTimeout) as info:
            await modem.status()
        assert loop.time() - started < 1.0
        assert info.value.command == "AT" and "no final answer" in str(info.value)
        with pytest.raises(ModemTimeout):
            await modem.send_sms("10086", "测试")
        sim.recover()
        assert (await modem.status()).sim == "READY"


async def test_garbage_does_not_break_next_command(modem: Modem, sim: VirtualModem) -> None:
    sim.send_garbage(b"\x00\xff\xfe\x80 noise\r\n+CME ERR\xc3\r\nRING\r\n\x1b\x1a>half a line without end")
    status = await modem.status()
    assert status.sim == "READY" and status.signal_dbm is not None
    sim.send_garbage(b"\xde\xad\xbe\xef")
    await modem.send_sms("+8613800138000", "跌倒")
    assert sim.sent[-1].text == "跌倒"


async def test_text_longer_than_one_sms_is_refused(modem: Modem) -> None:
    with pytest.raises(ValueError, match="70"):
        await modem.send_sms("10086", "长" * 71)


def test_rssi_to_dbm() -> None:
    assert [rssi_to_dbm(r) for r in (0, 1, 31, 99)] == [-113, -111, -51, None]


@pytest.mark.parametrize(
    ("event_type", "words"),
    [
        (EventType.ALARM_EMERGENCY, "紧急呼叫"),
        (EventType.ALARM_FIRE, "火警"),
        (EventType.ALARM_FALL, "跌倒"),
        (EventType.ALARM_INACTIVITY, "长时间无活动"),
        (EventType.FAULT_BATTERY_LOW, "设备故障"),
    ],
)
def test_sms_text_content(event_type: EventType, words: str) -> None:
    text = sms_text(_event(event_type))
    assert len(text.encode("utf-16-be")) // 2 <= 70
    assert words in text
    assert "hub-0001" in text and "smoke-kitchen" in text
    assert "14:32" in text and "2e3f4a5b" in text


def test_sms_text_shortens_long_ids() -> None:
    text = sms_text(_event(EventType.ALARM_INACTIVITY, hub_id="hub-" + "x" * 60, device_id="长" * 50))
    assert len(text.encode("utf-16-be")) // 2 <= 70
    assert "长时间无活动" in text and "14:32" in text and "2e3f4a5b" in text and "…" in text
    no_device = sms_text(_event(device_id=None))
    assert "设备" not in no_device and "hub-0001" in no_device


async def test_send_alarm_sms_tries_every_number(modem: Modem, sim: VirtualModem) -> None:
    event = _event(EventType.ALARM_EMERGENCY)
    results = await send_alarm_sms(modem, ["+8613800138000", "not-a-number", "13900139000"], event)
    assert [(n, ok) for n, ok, _ in results] == [
        ("+8613800138000", True),
        ("not-a-number", False),
        ("13900139000", True),
    ]
    assert [s.number for s in sim.sent] == ["+8613800138000", "13900139000"]
    assert all(s.text == sms_text(event) for s in sim.sent)


async def test_an_sms_cancelled_before_the_prompt_does_not_leave_the_modem_in_text_entry(tmp_path: Path) -> None:
    """The send is cancelled (the alarm was acknowledged meanwhile) between AT+CMGS and '> ': the
    driver leaves text entry, so the next command is a command, not part of an SMS body."""
    async with VirtualModem(tmp_path / "modem") as virtual:
        modem = Modem(str(virtual.port_path), command_timeout=1.0)
        await modem.open()
        try:
            sending = asyncio.create_task(modem.send_sms("+8613800000000", "test"))
            while not (modem._protocol and modem._protocol.want_prompt):
                await asyncio.sleep(0)
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
            status = await modem.status()
            assert status.sim == "READY" and virtual._text_number is None and virtual.sent == []
        finally:
            await modem.close()
