"""Alarm SMS: the hub's last way out when no IP uplink acknowledges an alarm in time.

``sms_text`` turns an event into one short Chinese SMS (at most 70 UCS-2 characters, the size of
one UCS-2 message, so it never arrives split or cut), for example::

    【安居】火警！ 主机hub-0001 设备smoke-kitchen 14:32 编号2e3f4a5b

The number (``编号``) is the last 8 characters of the event id (its random part: the first 8 of
a UUIDv7 are a timestamp shared by alarms within a minute), so the centre can match the SMS
to the record the same alarm makes when it arrives over MQTT or DC-09 later. Long hub and device
ids are shortened (with ``…``) to keep the message to one SMS.

``send_alarm_sms`` tries every number in turn, whatever happened to the one before, and reports
each outcome. ``SmsPath`` is the SMS uplink of the failover policy (cloud_bridge.failover): it
sends an alarm's SMS through the modem and reads the modem's SIM and signal for the heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import UTC
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from cloud_bridge.failover import PathHealth
from edge.modem import Modem, ModemError, ModemStatus
from hub.config import SmsUplinkConfig
from hub.model import Event, EventType, TimeSource

log = logging.getLogger(__name__)

SMS_MAX_UCS2 = 70
PREFIX = "【安居】"

SUMMARIES: dict[EventType, str] = {
    EventType.ALARM_EMERGENCY: "紧急呼叫",
    EventType.ALARM_FIRE: "火警",
    EventType.ALARM_FALL: "跌倒",
    EventType.ALARM_INACTIVITY: "长时间无活动",
    EventType.ALARM_CHECKIN_MISSED: "未按时报平安",
}

# Every other type by its category (the part before the dot).
CATEGORY_SUMMARIES: dict[str, str] = {
    "alarm": "报警",
    "prealarm": "预警",
    "cancel": "报警已取消",
    "restore": "已恢复",
    "fault": "设备故障",
    "info": "通知",
    "test": "测试",
}


class SmsModem(Protocol):
    """What ``send_alarm_sms`` needs of a modem (``edge.modem.Modem`` is one)."""

    async def send_sms(self, number: str, text: str) -> int: ...


def _ucs2_len(text: str) -> int:
    return len(text.encode("utf-16-be")) // 2


def _shorten(value: str, limit: int) -> str:
    if _ucs2_len(value) <= limit:
        return value
    if limit <= 1:
        return "…"[:limit]
    out = ""
    for char in value:
        if _ucs2_len(out + char) > limit - 1:
            break
        out += char
    return out + "…"


def summary(event_type: EventType) -> str:
    """The Chinese words for an event type: a specific one for the main alarms, else its category."""
    return SUMMARIES.get(event_type) or CATEGORY_SUMMARIES.get(event_type.value.split(".", 1)[0], "事件")


def sms_text(event: Event, timezone: str = "Asia/Shanghai") -> str:
    """One SMS (<= 70 UCS-2 characters) saying what happened, where, when, and which event it is."""
    occurred = event.occurred_at if event.occurred_at.tzinfo else event.occurred_at.replace(tzinfo=UTC)
    when = occurred.astimezone(ZoneInfo(timezone)).strftime("%H:%M")
    if event.time_source is TimeSource.MONOTONIC:
        when = "--:--"  # the hub's clock is not synchronised yet: no time rather than a wrong one
    head = f"{PREFIX}{summary(event.type)}！"
    tail = f" {when} 编号{event.event_id[-8:]}"
    hub_label, device_label = " 主机", " 设备"
    room = SMS_MAX_UCS2 - _ucs2_len(head + tail + hub_label)
    hub_id, device_id = event.hub_id, event.device_id or ""
    if device_id:
        room -= _ucs2_len(device_label)
    if _ucs2_len(hub_id + device_id) > room:
        # Share what is left: the device gets what the hub id does not need, and at least half.
        device_room = max(room // 2, room - _ucs2_len(hub_id)) if device_id else 0
        device_id = _shorten(device_id, device_room)
        hub_id = _shorten(hub_id, room - _ucs2_len(device_id))
    text = head + hub_label + hub_id + (device_label + device_id if device_id else "") + tail
    assert _ucs2_len(text) <= SMS_MAX_UCS2, text
    return text


async def send_alarm_sms(
    modem: SmsModem, numbers: Iterable[str], event: Event, timezone: str = "Asia/Shanghai"
) -> list[tuple[str, bool, str]]:
    """Send the event's SMS to every number; ``(number, ok, detail)`` for each, in order.

    ``detail`` is ``mr=<message reference>`` on success, else the error (a ``ModemError`` names
    the command and the modem's answer, e.g. ``+CMS ERROR: 38 (network out of order)``).
    """
    text = sms_text(event, timezone)
    results: list[tuple[str, bool, str]] = []
    for number in numbers:
        try:
            mr = await modem.send_sms(number, text)
        except Exception as exc:  # one bad number or a modem fault must not stop the others
            log.warning("alarm SMS for %s to %s failed: %s", event.event_id, number, exc)
            results.append((number, False, str(exc)))
        else:
            log.info("alarm SMS for %s sent to %s (mr=%d)", event.event_id, number, mr)
            results.append((number, True, f"mr={mr}"))
    return results


class SmsPath:
    """Alarm SMS through the 4G modem, and the modem's SIM and signal for the heartbeat."""

    name = "sms"

    def __init__(self, config: SmsUplinkConfig, timezone: str = "Asia/Shanghai") -> None:
        self.config = config
        self.timezone = timezone
        self.modem = Modem(config.port, config.baudrate)
        self.health = PathHealth()
        self.status: ModemStatus | None = None

    async def deliver(self, event: Event, numbers: list[str] | None = None) -> list[str]:
        """SMS to each of `numbers` (default: all); returns those the network took."""
        numbers = list(self.config.numbers) if numbers is None else numbers
        try:
            await self.modem.open()
            results = await send_alarm_sms(self.modem, numbers, event, self.timezone)
        except ModemError as exc:
            await self.modem.close()
            self.health.set(False, f"sms: {exc}")
            return []
        sent = [number for number, ok, _ in results if ok]
        failed = [detail for _, ok, detail in results if not ok]
        if sent and not failed:
            self.health.set(True, f"sms: alarm sent to {len(sent)} number(s)")
        elif sent:
            self.health.set(False, f"sms: sent to {len(sent)} of {len(results)} number(s); {failed[0]}")
        else:
            self.health.set(False, f"sms: no number could be reached ({failed[0] if failed else 'no numbers'})")
        return sent

    async def close(self) -> None:
        await self.modem.close()

    async def run(self) -> None:
        """Read SIM and signal now and then; a modem that stops answering is opened again."""
        while True:
            try:
                await self.modem.open()
                self.status = await self.modem.status()
                ready = self.status.sim == "READY" and self.status.signal_dbm is not None
                self.health.set(
                    ready,
                    f"sms: SIM {self.status.sim}, signal "
                    + ("none" if self.status.signal_dbm is None else f"{self.status.signal_dbm} dBm"),
                )
            except ModemError as exc:
                self.status = None
                self.health.set(False, f"sms: {exc}")
                await self.modem.close()
            await asyncio.sleep(self.config.status_s)

    def report(self) -> dict[str, Any] | None:
        if self.status is None:
            return None
        return {"sim": self.status.sim, "signal_dbm": self.status.signal_dbm, "registered": self.status.registered}
