"""Failover: every alarm leaves the home by some path, and counts as done on the first ack.

The MQTT uplink (cloud_bridge.mqtt) carries every event to the county centre; that is the record,
and it keeps resending until the centre's ack. This module watches each unacknowledged *alarm*
and, when the paths before one are down or have not got an ack in time, sends it down the next:

- **DC-09** (`cloud_bridge.dc09_uplink.Dc09Path`): a professional alarm receiving centre over TCP
  or UDP. An alarm goes there when the uplinks listed before DC-09 are down (MQTT without a
  connection for `mqtt.down_after_s`), or when it has waited `after_s` for an ack. An ACK from the
  receiver makes the alarm done; a NAK is answered once with the receiver's clock; a DUH is
  reported and never looped on. The DC-09 sequence number comes from the hub's own sequence
  number, so a resend carries the same one.
- **SMS** (`cloud_bridge.sms.SmsPath`): the last resort, through the 4G modem. An alarm goes by
  SMS when no IP uplink has acknowledged it within the escalation time, or at once when every IP
  uplink has failed it. An SMS is *sent*, not acknowledged: each number gets it once (a number
  not reached is tried again), and the alarm stays pending for MQTT (the centre's record) and
  DC-09.

"Done" is the first acknowledgement on any path (`Failover.delivered`); later ones are recorded
by the caller but change nothing here. Timing runs on the hub's clock (hub.clock), so a
scenario's `advance` moves failover deadlines like every other timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cloud_bridge.outbox import RetryPolicy
from hub.clock import Clock, Timer
from hub.model import Event

if TYPE_CHECKING:  # the paths load only for a hub that has them (cryptography, the modem driver)
    from cloud_bridge.dc09_uplink import Dc09Path
    from cloud_bridge.sms import SmsPath

log = logging.getLogger(__name__)

# (event, path, acknowledged): a path carried the event; `acknowledged` is False for an SMS, which
# the network accepted but nobody confirmed.
DeliveryHandler = Callable[[Event, str, bool], None]


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


@dataclass
class _Alarm:
    event: Event
    since: float  # the hub clock's monotonic time the alarm started waiting for an ack
    done_via: str | None = None
    dc09_state: str = "idle"  # idle, busy, failed (retry at dc09_next), refused (never again)
    dc09_next: float = 0.0
    dc09_attempts: int = 0
    sms_state: str = "idle"  # idle, busy, failed (retry at sms_next), sent
    sms_left: list[str] | None = None  # numbers still to reach (None: all of them)
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
        self._finishing: set[asyncio.Task[None]] = set()  # sends of alarms done meanwhile

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

    def retime(self, fix: Callable[[Event], Event]) -> None:
        """Replace every tracked alarm by `fix(alarm)` (its time corrected once the hub's clock was
        synchronised): what DC-09 and SMS send from now on."""
        for alarm in self._alarms.values():
            alarm.event = fix(alarm.event)

    def delivered(self, event_id: str, via: str) -> None:
        """Some path has the centre's ack for this event: failover for it ends. A send under way
        finishes (cutting an SMS short could leave the modem mid-message); nothing new starts."""
        alarm = self._alarms.pop(event_id, None)
        if alarm is not None:
            alarm.done_via = via
            self._finishing |= alarm.tasks

    async def close(self) -> None:
        """At shutdown: stop every send under way, close the modem and the DC-09 connection."""
        tasks = {task for alarm in self._alarms.values() for task in alarm.tasks} | self._finishing
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._timer is not None:
            self._timer.cancel()
        if self.dc09 is not None:
            await self.dc09.client.close()
        if self.sms is not None:
            await self.sms.close()

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

    async def test_call(self, event: Event) -> list[tuple[str, bool, str]]:
        """Send a test event over DC-09 and SMS now, whatever their state: (path, ok, detail) each."""
        results = []
        if self.dc09 is not None:
            outcome = await self.dc09.deliver(event)
            results.append(("dc09", outcome == "ack", self.dc09.health.detail))
        if self.sms is not None:
            sent = await self.sms.deliver(event)
            results.append(("sms", len(sent) == len(self.sms.config.numbers), self.sms.health.detail))
        return results

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
        task.add_done_callback(self._finishing.discard)

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
                left = alarm.sms_left if alarm.sms_left is not None else list(self.sms.config.numbers)
                none_reached_yet = len(left) == len(self.sms.config.numbers)
                sent = await self.sms.deliver(event, left)
                if sent and none_reached_yet:
                    self.on_delivered(event, "sms", False)  # the alarm's first SMS has left
                alarm.sms_left = [number for number in left if number not in sent]
                if not alarm.sms_left:
                    alarm.sms_state = "sent"
                    return
                alarm.sms_state = "failed"  # the numbers not reached are tried again later
                alarm.sms_next = self.clock.monotonic() + self.retry.delay(alarm.sms_attempts, random.random())
        except asyncio.CancelledError:
            raise
        except Exception:  # a path's bug must not end failover for every other alarm
            log.exception("sending alarm %s over %s failed", event.event_id, path)
            setattr(alarm, f"{path}_state", "failed")
            setattr(alarm, f"{path}_next", self.clock.monotonic() + self.retry.cap_s)
        finally:
            self._wake.set()
