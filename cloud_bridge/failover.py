"""Failover: every alarm leaves the home by some path, and counts as done on the first ack.

The MQTT uplink (cloud_bridge.mqtt) carries every event to the county centre; that is the record,
and it keeps resending until the centre's ack. This module watches each unacknowledged *alarm*
and, when the paths before one are down or have not got an ack in time, sends it down the next:

- **DC-09** (`Dc09Path`): a professional alarm receiving centre over TCP. An alarm goes there
  when the uplinks listed before DC-09 are down (MQTT not connected), or when it has waited
  `after_s` for an ack. An ACK from the receiver makes the alarm done; a NAK is answered once with
  the receiver's clock; a DUH is reported and never looped on. The DC-09 sequence number comes
  from the hub's own sequence number, so a resend carries the same one.
- **SMS** (`SmsPath`): the last resort, through the 4G modem. An alarm goes by SMS when no IP
  uplink has acknowledged it within the escalation time, or at once when every IP uplink has
  failed it. An SMS is *sent*, not acknowledged: it is sent once per alarm, and the alarm stays
  pending for MQTT (the centre's record) and DC-09.

"Done" is the first acknowledgement on any path (`Failover.delivered`); later ones are recorded
by the caller but change nothing here. Timing runs on the hub's clock (hub.clock), so a
scenario's `advance` moves failover deadlines like every other timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloud_bridge.dc09 import Dc09Client, FrameError, ResponseKind, encode_event
from cloud_bridge.outbox import RetryPolicy
from cloud_bridge.sms import send_alarm_sms
from edge.modem import Modem, ModemError, ModemStatus
from hub.clock import Clock, Timer
from hub.config import Dc09UplinkConfig, SmsUplinkConfig
from hub.model import Event

log = logging.getLogger(__name__)

# (event, path, acknowledged): a path carried the event; `acknowledged` is False for an SMS, which
# the network accepted but nobody confirmed.
DeliveryHandler = Callable[[Event, str, bool], None]


def dc09_sequence(hub_seq: int) -> int:
    """The DC-09 sequence number (0001-9999) of a hub event: the same on every resend."""
    return (hub_seq - 1) % 9999 + 1


@dataclass
class PathHealth:
    """What the heartbeat says of one path: working or not, and why."""

    ok: bool | None = None  # None: not tried yet
    detail: str = "not tried yet"

    def set(self, ok: bool, detail: str) -> None:
        if ok != self.ok:
            (log.info if ok else log.warning)("uplink %s", detail)
        self.ok, self.detail = ok, detail

    def report(self) -> dict[str, Any]:
        return {"ok": bool(self.ok), "detail": self.detail}


class Dc09Path:
    """Alarms to one DC-09 receiver, one message at a time, with NULL link tests in between."""

    name = "dc09"

    def __init__(self, config: Dc09UplinkConfig, zones: dict[str, int]) -> None:
        self.config = config
        self.zones = zones
        self.client = Dc09Client(
            config.host,
            config.port,
            config.account,
            receiver=config.receiver,
            prefix=config.prefix,
            key=config.key,
            key_format=config.key_format,
            transport=config.protocol,
        )
        self.health = PathHealth()
        self._lock = asyncio.Lock()
        self._null_sequence = 0
        self._last_traffic = time.monotonic()

    async def deliver(self, event: Event) -> str:
        """Send one alarm; returns "ack", "failed" (try again later) or "refused" (do not retry:
        the event has no code, or the receiver answered DUH)."""
        assert event.seq is not None
        try:
            message = self._encode(event, datetime.now(UTC) + self.client.clock_offset)
        except ValueError as exc:
            log.error("alarm %s cannot go over DC-09: %s", event.event_id, exc)
            return "refused"
        async with self._lock:
            self._last_traffic = time.monotonic()
            try:
                response = await self.client.send(message, self.config.timeout_s)
                if response.kind is ResponseKind.NAK:
                    # The receiver's clock disagrees with ours: stamp with its clock and send again, once.
                    log.warning("DC-09 receiver NAKed %s; resending with its clock", event.event_id)
                    message = self._encode(event, datetime.now(UTC) + self.client.clock_offset)
                    response = await self.client.send(message, self.config.timeout_s)
            except (OSError, TimeoutError, FrameError) as exc:
                self.health.set(False, f"dc09 {self.config.host}:{self.config.port}: {exc or type(exc).__name__}")
                return "failed"
        if response.kind is ResponseKind.ACK:
            self.health.set(True, f"dc09 {self.config.host}:{self.config.port}: alarm acknowledged")
            return "ack"
        if response.kind is ResponseKind.DUH:
            log.error("DC-09 receiver does not understand %s (DUH); not sending it there again", event.event_id)
            self.health.set(False, f"dc09 {self.config.host}:{self.config.port}: DUH (message not understood)")
            return "refused"
        self.health.set(False, f"dc09 {self.config.host}:{self.config.port}: answered {response.kind}")
        return "failed"

    async def link_test(self) -> None:
        """A NULL message, unless an alarm went over the link recently (that proves it as well)."""
        if time.monotonic() - self._last_traffic < self.config.link_test_s and self.health.ok:
            return
        async with self._lock:
            self._null_sequence = self._null_sequence % 9999 + 1
            self._last_traffic = time.monotonic()
            try:
                response = await self.client.send_null(self._null_sequence, self.config.timeout_s)
            except (OSError, TimeoutError, FrameError) as exc:
                self.health.set(False, f"dc09 {self.config.host}:{self.config.port}: link test failed: {exc}")
                return
        ok = response.kind in (ResponseKind.ACK, ResponseKind.NAK)  # a NAK proves the link and sets our clock
        self.health.set(ok, f"dc09 {self.config.host}:{self.config.port}: link test {response.kind}")

    async def run(self) -> None:
        if self.config.link_test_s <= 0:
            return
        while True:
            await self.link_test()
            await asyncio.sleep(self.config.link_test_s)

    def _encode(self, event: Event, stamp: datetime) -> bytes:
        assert event.seq is not None
        return encode_event(
            event,
            account=self.config.account,
            receiver=self.config.receiver,
            prefix=self.config.prefix,
            fmt=self.config.format,
            sequence=dc09_sequence(event.seq),
            zone=self.zones.get(event.device_id or "", 0),
            key=self.config.key,
            key_format=self.config.key_format,
            timestamp=stamp,
        )


class SmsPath:
    """Alarm SMS through the 4G modem, and the modem's SIM and signal for the heartbeat."""

    name = "sms"

    def __init__(self, config: SmsUplinkConfig, timezone: str = "Asia/Shanghai") -> None:
        self.config = config
        self.timezone = timezone
        self.modem = Modem(config.port, config.baudrate)
        self.health = PathHealth()
        self.status: ModemStatus | None = None

    async def deliver(self, event: Event) -> str:
        """SMS to every number; "sent" if the network took at least one, else "failed"."""
        try:
            await self.modem.open()
            results = await send_alarm_sms(self.modem, self.config.numbers, event, self.timezone)
        except ModemError as exc:
            await self.modem.close()
            self.health.set(False, f"sms: {exc}")
            return "failed"
        sent = [number for number, ok, _ in results if ok]
        if sent:
            self.health.set(True, f"sms: alarm sent to {len(sent)} of {len(results)} number(s)")
            return "sent"
        self.health.set(False, f"sms: no number could be reached ({results[0][2]})")
        return "failed"

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


@dataclass
class _Alarm:
    event: Event
    since: float  # the hub clock's monotonic time the alarm started waiting for an ack
    done_via: str | None = None
    dc09_state: str = "idle"  # idle, busy, failed (retry at dc09_next), refused (never again)
    dc09_next: float = 0.0
    dc09_attempts: int = 0
    sms_state: str = "idle"  # idle, busy, failed (retry at sms_next), sent
    sms_next: float = 0.0
    sms_attempts: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class Failover:
    """Decides, alarm by alarm, when to use DC-09 and SMS (see the module docstring)."""

    def __init__(
        self,
        *,
        order: list[str],
        primary_up: Callable[[], bool],
        dc09: Dc09Path | None,
        sms: SmsPath | None,
        clock: Clock,
        sms_after_s: float,
        on_delivered: DeliveryHandler,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.order = order
        self.primary_up = primary_up
        self.dc09 = dc09
        self.sms = sms
        self.clock = clock
        self.sms_after_s = sms_after_s
        self.on_delivered = on_delivered
        self.retry = retry or RetryPolicy(first_s=5.0, cap_s=60.0)
        self._alarms: dict[str, _Alarm] = {}
        self._wake = asyncio.Event()
        self._timer: Timer | None = None

    @property
    def active(self) -> bool:
        return self.dc09 is not None or self.sms is not None

    def track(self, event: Event, done_via: str | None = None, sms_sent: bool = False) -> None:
        """Watch an alarm until some path acknowledges it. For an alarm from before a restart,
        the time it has waited already counts (by the wall clock: monotonic times do not survive
        a reboot); `done_via` and `sms_sent` are what the journal says happened to it then."""
        if not self.active or not event.type.is_alarm or event.event_id in self._alarms:
            return
        waited = max(0.0, (self.clock.now() - event.occurred_at).total_seconds()) if done_via is None else 0.0
        alarm = _Alarm(event, since=self.clock.monotonic() - min(waited, 86_400), done_via=done_via)
        if sms_sent:
            alarm.sms_state = "sent"
        if done_via is None:
            self._alarms[event.event_id] = alarm
            self._wake.set()

    def delivered(self, event_id: str, via: str) -> None:
        """Some path has the centre's ack for this event: failover for it ends."""
        alarm = self._alarms.pop(event_id, None)
        if alarm is not None:
            alarm.done_via = via
            for task in alarm.tasks:
                if via != "dc09":  # a DC-09 send under way finishes; its answer is recorded, no more
                    task.cancel()

    def pending(self) -> int:
        return len(self._alarms)

    def heartbeat(self) -> dict[str, Any]:
        """The heartbeat's `uplinks` (and `modem`, when there is one)."""
        uplinks: dict[str, Any] = {"mqtt": {"ok": self.primary_up(), "detail": "county broker"}}
        if self.dc09 is not None:
            uplinks["dc09"] = self.dc09.health.report()
        extra: dict[str, Any] = {"uplinks": uplinks}
        if self.sms is not None:
            uplinks["sms"] = self.sms.health.report()
            extra["modem"] = self.sms.report()
        return extra

    async def run(self) -> None:
        """Watch the alarms for ever (plus the paths' own link tests and modem polling)."""
        helpers = [path.run() for path in (self.dc09, self.sms) if path is not None]
        async with asyncio.TaskGroup() as group:
            for helper in helpers:
                group.create_task(helper)
            group.create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            self._wake.clear()
            next_due = self._step()
            if self._timer is not None:
                self._timer.cancel()
            self._timer = None
            if next_due is not None:
                self._timer = self.clock.call_later(max(0.0, next_due - self.clock.monotonic()), self._wake.set)
            # The MQTT uplink's connection state has no callback: look at it twice a second.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.5)

    def _step(self) -> float | None:
        """Start every send that is due; return the next moment something falls due (hub clock)."""
        now = self.clock.monotonic()
        upcoming: list[float] = []
        for alarm in list(self._alarms.values()):
            if self.dc09 is not None and alarm.dc09_state in ("idle", "failed"):
                due = now if self._earlier_down("dc09") else alarm.since + self.dc09.config.after_s
                if alarm.dc09_state == "failed":
                    due = max(due, alarm.dc09_next)
                if due <= now:
                    self._start(alarm, "dc09")
                else:
                    upcoming.append(due)
            if self.sms is not None and alarm.sms_state in ("idle", "failed"):
                due = alarm.since + self.sms_after_s
                if self._all_ip_failed(alarm):
                    due = now
                if alarm.sms_state == "failed":
                    due = max(due, alarm.sms_next)
                if due <= now:
                    self._start(alarm, "sms")
                else:
                    upcoming.append(due)
        return min(upcoming, default=None)

    def _earlier_down(self, name: str) -> bool:
        """Whether every IP uplink listed before `name` is down (then `name` need not wait)."""
        earlier = self.order[: self.order.index(name)]
        return "mqtt" in earlier and not self.primary_up()

    def _all_ip_failed(self, alarm: _Alarm) -> bool:
        if self.primary_up():
            return False
        return self.dc09 is None or alarm.dc09_state in ("failed", "refused")

    def _start(self, alarm: _Alarm, path: str) -> None:
        setattr(alarm, f"{path}_state", "busy")
        task = asyncio.get_running_loop().create_task(self._send(alarm, path))
        alarm.tasks.add(task)
        task.add_done_callback(alarm.tasks.discard)

    async def _send(self, alarm: _Alarm, path: str) -> None:
        event = alarm.event
        try:
            if path == "dc09":
                assert self.dc09 is not None
                alarm.dc09_attempts += 1
                log.warning(
                    "alarm %s #%s: sending over DC-09 (attempt %d)", event.type.value, event.seq, alarm.dc09_attempts
                )
                outcome = await self.dc09.deliver(event)
                if outcome == "ack":
                    self.on_delivered(event, "dc09", True)
                    return
                alarm.dc09_state = "refused" if outcome == "refused" else "failed"
                alarm.dc09_next = self.clock.monotonic() + self.retry.delay(alarm.dc09_attempts, random.random())
            else:
                assert self.sms is not None
                alarm.sms_attempts += 1
                log.warning(
                    "alarm %s #%s: sending by SMS (attempt %d)", event.type.value, event.seq, alarm.sms_attempts
                )
                outcome = await self.sms.deliver(event)
                if outcome == "sent":
                    alarm.sms_state = "sent"
                    self.on_delivered(event, "sms", False)
                    return
                alarm.sms_state = "failed"
                alarm.sms_next = self.clock.monotonic() + self.retry.delay(alarm.sms_attempts, random.random())
        except asyncio.CancelledError:
            raise
        except Exception:  # a path's bug must not end failover for every other alarm
            log.exception("sending alarm %s over %s failed", event.event_id, path)
            setattr(alarm, f"{path}_state", "failed")
            setattr(alarm, f"{path}_next", self.clock.monotonic() + self.retry.cap_s)
        finally:
            self._wake.set()
