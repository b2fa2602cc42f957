"""The hub's clock for rules: wall time in the household's time zone, and timers on it.

Rules never read the system clock or sleep: they ask a `Clock` for `now()` and for timers at a
wall-clock moment (`call_at`). `SystemClock` runs timers on the asyncio loop and re-checks them
every `TICK_S`, so a clock that jumps forward (NTP correcting a Pi without an RTC) fires what fell
due, in order, and one that jumps back does not fire early. `SimulatedClock` starts at a chosen
moment and can be advanced (`advance`), firing every timer that falls due in order at its own
time: a 12-hour inactivity rule is tested in milliseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

log = logging.getLogger(__name__)

TICK_S = 30.0


@dataclass(order=True)
class Timer:
    when: datetime
    order: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class Clock:
    """Timers on wall time; subclasses say what `now` is."""

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self._timers: list[Timer] = []
        self._order = itertools.count()
        self._wakeup: asyncio.TimerHandle | None = None
        self._ticker: asyncio.TimerHandle | None = None

    def now(self) -> datetime:
        """The moment, in UTC: deadlines computed from it are real durations, also across a
        daylight-saving change (local wall-clock arithmetic would be an hour off)."""
        raise NotImplementedError

    def local(self) -> datetime:
        """The moment in the household's time zone: for daily times, waking and quiet hours."""
        return self.now().astimezone(self.tz)

    def call_at(self, when: datetime, callback: Callable[[], None]) -> Timer:
        timer = Timer(when.astimezone(UTC), next(self._order), callback)
        heapq.heappush(self._timers, timer)
        self._schedule()
        return timer

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        return self.call_at(self.now() + timedelta(seconds=seconds), callback)

    def run_due(self) -> int:
        """Fire every timer whose moment has come, in order. Returns how many fired."""
        fired = 0
        try:
            while self._timers and self._timers[0].when <= self.now():
                timer = heapq.heappop(self._timers)
                if timer.cancelled:
                    continue
                fired += 1
                try:
                    timer.callback()
                except Exception:  # one rule's failure must not stop every later timer
                    log.exception("a timer callback failed; the other timers go on")
        finally:
            self._schedule()
        return fired

    def pending(self) -> list[Timer]:
        return sorted(t for t in self._timers if not t.cancelled)

    def _schedule(self) -> None:
        """Wake the loop when the next timer is due, and every TICK_S regardless (clock jumps)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None
        live = [t for t in self._timers if not t.cancelled]
        if live:
            delay = max(0.0, (min(live).when - self.now()).total_seconds())
            self._wakeup = loop.call_later(min(delay, TICK_S), self.run_due)
        if self._ticker is None:
            self._ticker = loop.call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        self._ticker = None
        self.run_due()

    def close(self) -> None:
        for handle in (self._wakeup, self._ticker):
            if handle is not None:
                handle.cancel()
        self._timers.clear()


class SystemClock(Clock):
    def now(self) -> datetime:
        return datetime.now(UTC)


class SimulatedClock(Clock):
    """Starts at `start` and runs at real speed from there; `advance` jumps it forward."""

    def __init__(self, start: datetime, tz: tzinfo | None = None) -> None:
        super().__init__(tz or start.tzinfo or datetime.now().astimezone().tzinfo)  # type: ignore[arg-type]
        self._start = start
        self._started_mono = time.monotonic()
        self._offset = timedelta()

    def now(self) -> datetime:
        elapsed = timedelta(seconds=time.monotonic() - self._started_mono)
        return (self._start + elapsed + self._offset).astimezone(UTC)

    def advance(self, seconds: float) -> int:
        """Move the clock forward; every timer that falls due fires, in order, at its own moment."""
        target = self.now() + timedelta(seconds=seconds)
        fired = 0
        while True:
            live = [t for t in self._timers if not t.cancelled]
            if not live or min(live).when > target:
                break
            step = min(live).when - self.now()
            if step > timedelta():
                self._offset += step
            fired += self.run_due()
        remaining = target - self.now()
        if remaining > timedelta():
            self._offset += remaining
        return fired
