"""Store-and-forward bookkeeping: which journaled events still need the centre's ack, and when to send.

The journal makes events durable; the outbox decides the order and timing of (re)sends:
- priority first (alarms, then faults, then info), then the hub's sequence number, so a backlog
  of info never delays a new alarm;
- an event that was sent but not acknowledged is sent again with the same id after a capped
  exponential backoff with jitter, and at once after every reconnect (`requeue_all`);
- an event leaves only when an ack names its event id (`ack`).

Pure logic on an injected monotonic clock; the uplinks (cloud_bridge.mqtt, later DC-09 and SMS)
do the I/O. Two heaps keep `take_due` cheap with a backlog of 100,000 events.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.model import Event, Priority


@dataclass(frozen=True)
class RetryPolicy:
    """Resend an unacknowledged event after `first_s`, doubling up to `cap_s`, each delay jittered
    down by up to `jitter` (0.5 = anywhere between half and all of it) so a thousand hubs coming
    back after an outage do not resend in lockstep."""

    first_s: float = 3.0
    cap_s: float = 60.0
    jitter: float = 0.5

    def delay(self, attempts: int, rand: float) -> float:
        base = min(self.cap_s, self.first_s * (2 ** max(0, attempts - 1)))
        return base * (1.0 - self.jitter * rand)


@dataclass
class _Entry:
    event: Event
    attempts: int = 0
    next_due: float = 0.0
    generation: int = 0  # a fresh number on every (re)schedule; stale heap items are skipped


class Outbox:
    def __init__(
        self,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._clock = clock
        self._rand = rand
        self._entries: dict[str, _Entry] = {}
        self._ready: list[tuple[int, int, int, str]] = []  # (priority, seq, generation, id)
        self._waiting: list[tuple[float, int, int, int, str]] = []  # (due, priority, seq, gen, id)
        self._listeners: list[Callable[[], None]] = []
        self._alarm_listeners: list[Callable[[], None]] = []
        self._unacked_sends: set[str] = set()
        self._generations = itertools.count(1)  # outbox-wide, so a re-added id never matches an old item

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._entries

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever something became due (a new event, a requeue)."""
        self._listeners.append(listener)

    def on_alarm(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever a new event of alarm priority is queued."""
        self._alarm_listeners.append(listener)

    def add(self, event: Event) -> None:
        """Queue a journaled event for sending now. Adding an id that is queued already is a no-op."""
        if event.seq is None:
            raise ValueError(f"event {event.event_id} has no sequence number: journal it first")
        if event.event_id in self._entries:
            return
        entry = _Entry(event, generation=next(self._generations))
        self._entries[event.event_id] = entry
        self._push_ready(entry)
        self._notify()
        if event.priority <= Priority.ALARM:
            for listener in self._alarm_listeners:
                listener()

    def extend(self, events: Iterable[Event]) -> None:
        for event in events:
            self.add(event)

    def ack(self, event_id: str) -> Event | None:
        """The centre has the event: forget it. Returns it, or None for an unknown or repeated ack."""
        entry = self._entries.pop(event_id, None)
        if entry is None:
            return None
        if event_id in self._unacked_sends:
            self._unacked_sends.discard(event_id)
            self._notify()  # a place in the ack window is free again
        return entry.event

    def retime(self, fix: Callable[[Event], Event]) -> None:
        """Replace every queued event by `fix(event)`: its time corrected once the hub's clock was
        synchronised (hub.timesync). Ids, sequence numbers, order and resend schedule stay."""
        for entry in self._entries.values():
            fixed = fix(entry.event)
            if (fixed.event_id, fixed.seq) != (entry.event.event_id, entry.event.seq):
                raise ValueError(f"event {entry.event.event_id}: retiming must keep its id and seq")
            entry.event = fixed

    def awaiting_ack(self) -> int:
        """How many events have been sent and wait for their ack (the ack window in use)."""
        return len(self._unacked_sends)

    def take_due(self, limit: int | None = None, most: Priority | None = None) -> list[tuple[Event, int]]:
        """Events to send now, most urgent first, each with its attempt number (1 = first send).

        Taking an event schedules its resend: if no ack arrives by then it is due again. With
        `most`, only events of that priority or more urgent are taken (alarms past a full window).
        """
        now = self._clock()
        while self._waiting and self._waiting[0][0] <= now:
            _, _, _, generation, event_id = heapq.heappop(self._waiting)
            entry = self._entries.get(event_id)
            if entry and entry.generation == generation:
                self._unacked_sends.discard(event_id)  # no ack in time: it leaves the ack window
                self._push_ready(entry)
        taken: list[tuple[Event, int]] = []
        while self._ready and (limit is None or len(taken) < limit):
            if most is not None and self._ready[0][0] > most:
                break  # the most urgent ready event is less urgent than asked for
            _, _, generation, event_id = heapq.heappop(self._ready)
            entry = self._entries.get(event_id)
            if entry is None or entry.generation != generation:
                continue
            entry.attempts += 1
            entry.generation = next(self._generations)
            entry.next_due = now + self.retry.delay(entry.attempts, self._rand())
            seq = entry.event.seq or 0
            heapq.heappush(
                self._waiting,
                (entry.next_due, int(entry.event.priority), seq, entry.generation, event_id),
            )
            taken.append((entry.event, entry.attempts))
            self._unacked_sends.add(event_id)
        return taken

    def requeue_all(self) -> None:
        """Everything unacknowledged is due at once (after a reconnect: the old sends may be lost)."""
        self._ready.clear()
        self._waiting.clear()
        self._unacked_sends.clear()
        for entry in self._entries.values():
            entry.generation = next(self._generations)
            self._push_ready(entry)
        if self._entries:
            self._notify()

    def seconds_until_due(self) -> float | None:
        """How long until something is due: 0 when something is ready, None when nothing is queued.
        Stale heap items on top are dropped on the way, so this stays cheap with a large backlog."""
        self._drop_stale(self._ready)
        self._drop_stale(self._waiting)
        if self._ready:
            return 0.0
        if self._waiting:
            return max(0.0, self._waiting[0][0] - self._clock())
        return None

    def pending_counts(self) -> dict[str, int]:
        counts = {"alarm": 0, "fault": 0, "info": 0}
        for entry in self._entries.values():
            counts[entry.event.priority.label] += 1
        return counts

    def oldest_pending_at(self) -> datetime | None:
        """When the oldest unacknowledged event happened (wall clock: monotonic times from before a
        reboot mean nothing now)."""
        return min((e.event.occurred_at for e in self._entries.values()), default=None)

    def _drop_stale(self, heap: list[Any]) -> None:
        """Pop items from the top of a heap that no longer stand for a queued send (acked, or
        rescheduled under a new generation); both heaps end in (…, generation, event id)."""
        while heap:
            entry = self._entries.get(heap[0][-1])
            if entry is not None and entry.generation == heap[0][-2]:
                return
            heapq.heappop(heap)

    def _push_ready(self, entry: _Entry) -> None:
        heapq.heappush(
            self._ready, (int(entry.event.priority), entry.event.seq or 0, entry.generation, entry.event.event_id)
        )

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()
