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
    when: datetime  # the wall moment (UTC); for a relative timer, when it was expected to fire
    order: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)
    due_mono: float | None = field(default=None, compare=False)  # relative timers: a monotonic deadline

    def cancel(self) -> None:
        self.cancelled = True


class Clock:
    """Timers on wall time (`call_at`: daily routines, deadlines saved across a restart) and on
    elapsed time (`call_later`: a fall's cancel window, escalation, fire repeats); subclasses say
    what `now` and `monotonic` are. A hub has tens of timers: a list scanned in order is enough."""

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

    def monotonic(self) -> float:
        return time.monotonic()

    def local(self) -> datetime:
        """The moment in the household's time zone: for daily times, waking and quiet hours."""
        return self.now().astimezone(self.tz)

    def call_at(self, when: datetime, callback: Callable[[], None]) -> Timer:
        return self._add(Timer(when.astimezone(UTC), next(self._order), callback))

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Timer:
        """After `seconds` of elapsed time, whatever the wall clock does meanwhile (NTP, an RTC-less
        Pi setting its time at boot)."""
        when = self.now() + timedelta(seconds=seconds)
        return self._add(Timer(when, next(self._order), callback, due_mono=self.monotonic() + seconds))

    def _add(self, timer: Timer) -> Timer:
        self._timers.append(timer)
        self._schedule()
        return timer

    def _seconds_left(self, timer: Timer) -> float:
        if timer.due_mono is not None:
            return timer.due_mono - self.monotonic()
        return (timer.when - self.now()).total_seconds()

    def run_due(self) -> int:
        """Fire every timer whose moment has come, in order. Returns how many fired."""
        fired = 0
        try:
            while True:
                self._timers = [t for t in self._timers if not t.cancelled]
                due = [t for t in self._timers if self._seconds_left(t) <= 0]
                if not due:
                    break
                timer = min(due, key=lambda t: (self._seconds_left(t), t.order))
                self._timers.remove(timer)
                fired += 1
                try:
                    timer.callback()
                except Exception:  # one rule's failure must not stop every later timer
                    log.exception("a timer callback failed; the other timers go on")
        finally:
            self._schedule()
        return fired

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
            delay = max(0.0, min(self._seconds_left(t) for t in live))
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

    def monotonic(self) -> float:
        return time.monotonic() + self._offset.total_seconds()

    def advance(self, seconds: float) -> int:
        """Move the clock forward; every timer that falls due fires, in order, at its own moment."""
        target = self.monotonic() + seconds
        fired = 0
        while True:
            live = [t for t in self._timers if not t.cancelled]
            if not live:
                break
            step = min(self._seconds_left(t) for t in live)
            if self.monotonic() + step > target:
                break
            if step > 0:
                self._offset += timedelta(seconds=step)
            fired += self.run_due()
        remaining = target - self.monotonic()
        if remaining > 0:
            self._offset += timedelta(seconds=remaining)
        return fired
