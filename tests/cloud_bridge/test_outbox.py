"""The outbox: alarms first, resends with capped backoff, nothing forgotten until the centre acks it."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_bridge.outbox import Outbox, RetryPolicy
from hub.model import Event, EventType

ALARM, FAULT, INFO = EventType.ALARM_EMERGENCY, EventType.FAULT_BATTERY_LOW, EventType.INFO_CHECKIN_OK


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


_seqs = itertools.count(1)


def _event(type_: EventType = ALARM, seq: int | None = None, **overrides: Any) -> Event:
    return Event(
        type=type_,
        hub_id="hub-0001",
        household_id="hh-0001",
        county="minle",
        seq=next(_seqs) if seq is None else seq,
        **overrides,
    )


def _outbox(clock: Clock, rand: Callable[[], float] = lambda: 0.0, policy: RetryPolicy | None = None) -> Outbox:
    return Outbox(policy or RetryPolicy(first_s=3.0, cap_s=60.0, jitter=0.5), clock=clock, rand=rand)


def _ids(taken: list[tuple[Event, int]]) -> list[str]:
    return [event.event_id for event, _ in taken]


def test_alarms_leave_before_faults_before_info_whatever_the_add_order() -> None:
    outbox = _outbox(Clock())
    info1, fault1, info2, alarm1, fault2, alarm2 = (
        _event(INFO, 1),
        _event(FAULT, 2),
        _event(INFO, 3),
        _event(EventType.ALARM_FIRE, 4),
        _event(EventType.FAULT_POWER, 5),
        _event(ALARM, 6),
    )
    # Added out of seq order too: within a priority the seq decides, not the add order.
    for event in (info2, fault2, alarm2, info1, alarm1, fault1):
        outbox.add(event)
    taken = outbox.take_due()
    assert _ids(taken) == [e.event_id for e in (alarm1, alarm2, fault1, fault2, info1, info2)]
    assert [attempt for _, attempt in taken] == [1] * 6


def test_take_due_with_a_limit_takes_the_most_urgent_first() -> None:
    outbox = _outbox(Clock())
    events = [_event(INFO, 1), _event(FAULT, 2), _event(ALARM, 3), _event(ALARM, 4)]
    outbox.extend(events)
    assert _ids(outbox.take_due(limit=2)) == [events[2].event_id, events[3].event_id]
    assert _ids(outbox.take_due(limit=1)) == [events[1].event_id]
    assert _ids(outbox.take_due()) == [events[0].event_id]
    assert outbox.take_due() == []


def test_a_taken_event_is_not_due_again_until_the_retry_delay_passes() -> None:
    clock = Clock()
    outbox = _outbox(clock)
    event = _event(ALARM)
    outbox.add(event)
    assert outbox.take_due() == [(event, 1)]
    assert outbox.take_due() == []
    clock.now = 1002.999
    assert outbox.take_due() == []
    clock.now = 1003.0
    (again,) = outbox.take_due()
    assert again == (event, 2)
    assert again[0].event_id == event.event_id and again[0].seq == event.seq
    assert len(outbox) == 1 and event.event_id in outbox


def test_resend_delays_double_and_stop_at_the_cap() -> None:
    clock = Clock()
    outbox = _outbox(clock, policy=RetryPolicy(first_s=1.0, cap_s=10.0, jitter=0.5))
    event = _event(ALARM)
    outbox.add(event)
    gaps = []
    last = clock.now
    for expected_attempt in range(1, 8):
        # Step in small increments: the event must come back exactly when its delay is over.
        while not (taken := outbox.take_due()):
            clock.advance(0.25)
        assert taken == [(event, expected_attempt)]
        gaps.append(clock.now - last)
        last = clock.now
    assert gaps == [0.0, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_retry_policy_delays_and_jitter_bounds() -> None:
    policy = RetryPolicy(first_s=3.0, cap_s=60.0, jitter=0.5)
    assert [policy.delay(n, 0.0) for n in range(1, 8)] == [3.0, 6.0, 12.0, 24.0, 48.0, 60.0, 60.0]
    assert policy.delay(1, 1.0) == pytest.approx(1.5)
    assert policy.delay(10, 1.0) == pytest.approx(30.0)
    assert RetryPolicy(first_s=4.0, cap_s=60.0, jitter=0.25).delay(2, 1.0) == pytest.approx(6.0)
    assert RetryPolicy(first_s=4.0, cap_s=60.0, jitter=0.0).delay(2, 1.0) == pytest.approx(8.0)


@pytest.mark.parametrize(("rand", "expected_delay"), [(0.0, 3.0), (1.0, 1.5), (0.5, 2.25)])
def test_jitter_shortens_the_resend_delay_as_the_policy_says(rand: float, expected_delay: float) -> None:
    clock = Clock(0.0)
    outbox = _outbox(clock, rand=lambda: rand)
    event = _event(ALARM)
    outbox.add(event)
    outbox.take_due()
    assert outbox.seconds_until_due() == pytest.approx(expected_delay)
    clock.now = expected_delay - 0.001
    assert outbox.take_due() == []
    clock.now = expected_delay
    assert outbox.take_due() == [(event, 2)]


def test_ack_removes_the_event_and_a_second_ack_returns_none() -> None:
    outbox = _outbox(Clock())
    event = _event(ALARM)
    outbox.add(event)
    outbox.take_due()
    assert outbox.ack(event.event_id) == event
    assert event.event_id not in outbox
    assert len(outbox) == 0
    assert outbox.ack(event.event_id) is None
    assert outbox.ack("never-added") is None
    assert outbox.pending_counts() == {"alarm": 0, "fault": 0, "info": 0}


def test_an_acked_event_with_a_pending_resend_is_never_returned_again() -> None:
    clock = Clock()
    outbox = _outbox(clock)
    acked, other = _event(ALARM), _event(ALARM)
    outbox.extend([acked, other])
    assert _ids(outbox.take_due()) == [acked.event_id, other.event_id]
    outbox.ack(acked.event_id)
    clock.advance(3600)
    assert _ids(outbox.take_due()) == [other.event_id]
    outbox.requeue_all()
    assert _ids(outbox.take_due()) == [other.event_id]
    clock.advance(3600)
    assert _ids(outbox.take_due()) == [other.event_id]


def test_an_event_acked_before_it_was_ever_sent_is_not_sent() -> None:
    outbox = _outbox(Clock())
    event = _event(ALARM)
    outbox.add(event)
    assert outbox.ack(event.event_id) == event
    assert outbox.take_due() == []
    assert outbox.seconds_until_due() is None


def test_adding_a_queued_event_again_is_a_no_op() -> None:
    clock = Clock()
    outbox = _outbox(clock)
    event = _event(ALARM)
    outbox.add(event)
    outbox.take_due()
    outbox.add(event)  # e.g. the journal backlog replayed while it is in flight
    assert len(outbox) == 1
    assert outbox.take_due() == []  # still waiting for its resend, not sent twice at once
    clock.advance(3.0)
    assert outbox.take_due() == [(event, 2)]


def test_an_event_added_again_after_its_ack_follows_its_own_schedule() -> None:
    clock = Clock(0.0)
    outbox = _outbox(clock)
    event = _event(ALARM)
    outbox.add(event)
    assert outbox.take_due() == [(event, 1)]  # resend scheduled at 3.0
    outbox.ack(event.event_id)
    clock.now = 2.0
    outbox.add(event)
    assert outbox.take_due() == [(event, 1)]  # a fresh entry: resend scheduled at 5.0
    clock.now = 3.0
    assert outbox.take_due() == []


def test_requeue_all_makes_everything_due_now_in_priority_order() -> None:
    clock = Clock()
    outbox = _outbox(clock, policy=RetryPolicy(first_s=30.0, cap_s=60.0, jitter=0.0))
    info, fault, alarm = _event(INFO), _event(FAULT), _event(ALARM)
    outbox.extend([info, fault, alarm])
    outbox.take_due()
    clock.advance(1.0)
    assert outbox.take_due() == []
    assert outbox.seconds_until_due() == pytest.approx(29.0)
    outbox.requeue_all()
    assert outbox.seconds_until_due() == 0.0
    assert outbox.take_due() == [(alarm, 2), (fault, 2), (info, 2)]
    assert outbox.take_due() == []


def test_requeue_all_also_covers_events_never_sent() -> None:
    outbox = _outbox(Clock())
    sent, unsent = _event(ALARM, 1), _event(INFO, 2)
    outbox.add(sent)
    outbox.take_due()
    outbox.add(unsent)
    outbox.requeue_all()
    assert outbox.take_due() == [(sent, 2), (unsent, 1)]
    assert outbox.take_due() == []  # the unsent event was queued once, not twice


def test_seconds_until_due() -> None:
    clock = Clock()
    outbox = _outbox(clock, policy=RetryPolicy(first_s=5.0, cap_s=60.0, jitter=0.5))
    assert outbox.seconds_until_due() is None
    first = _event(ALARM)
    outbox.add(first)
    assert outbox.seconds_until_due() == 0.0
    outbox.take_due()
    assert outbox.seconds_until_due() == pytest.approx(5.0)
    clock.advance(2.0)
    assert outbox.seconds_until_due() == pytest.approx(3.0)
    clock.advance(4.0)
    assert outbox.seconds_until_due() == 0.0  # overdue reads as 0, never negative
    outbox.take_due()
    second = _event(FAULT)
    outbox.add(second)
    assert outbox.seconds_until_due() == 0.0
    outbox.take_due()
    outbox.ack(first.event_id)
    outbox.ack(second.event_id)
    assert outbox.seconds_until_due() is None


def test_a_backlog_of_twenty_thousand_info_events_never_delays_a_new_alarm() -> None:
    clock = Clock()
    outbox = _outbox(clock)
    outbox.extend(_event(INFO, seq) for seq in range(1, 20_001))
    # Part of the backlog is in flight, part is waiting for a resend.
    assert len(outbox.take_due(limit=200)) == 200
    alarm = _event(ALARM, 20_001)
    outbox.add(alarm)
    assert outbox.take_due(limit=1) == [(alarm, 1)]
    clock.advance(3.0)  # the 200 info resends and the alarm's resend are all due now
    assert outbox.take_due(limit=1) == [(alarm, 2)]
    assert outbox.pending_counts() == {"alarm": 1, "fault": 0, "info": 20_000}


def test_adding_an_event_without_seq_raises_value_error() -> None:
    outbox = _outbox(Clock())
    event = Event(type=ALARM, hub_id="hub-0001", household_id="hh-0001", county="minle")
    with pytest.raises(ValueError, match=event.event_id):
        outbox.add(event)
    assert len(outbox) == 0


def test_on_change_fires_on_add_and_on_requeue_all() -> None:
    outbox = _outbox(Clock())
    calls: list[str] = []
    outbox.on_change(lambda: calls.append("a"))
    outbox.on_change(lambda: calls.append("b"))
    outbox.requeue_all()
    assert calls == []  # nothing queued: nothing became due
    event = _event(ALARM)
    outbox.add(event)
    assert calls == ["a", "b"]
    outbox.add(event)  # already queued: nothing new became due
    assert calls == ["a", "b"]
    outbox.take_due()
    outbox.requeue_all()
    assert calls == ["a", "b", "a", "b"]


def test_oldest_pending_and_pending_counts() -> None:
    outbox = _outbox(Clock())
    assert outbox.oldest_pending_at() is None
    early, late = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    old, new = _event(FAULT, occurred_at=early), _event(INFO, occurred_at=late)
    outbox.extend([new, old])
    assert outbox.oldest_pending_at() == early
    assert outbox.pending_counts() == {"alarm": 0, "fault": 1, "info": 1}
    outbox.ack(old.event_id)
    assert outbox.oldest_pending_at() == late


# --- property: any interleaving of operations ---------------------------------------------------------------

_TYPES = [ALARM, EventType.ALARM_FIRE, FAULT, EventType.FAULT_POWER, INFO, EventType.TEST_CALL]

_operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(_TYPES)),
        st.tuples(st.just("take"), st.one_of(st.none(), st.integers(1, 3))),
        st.tuples(st.just("ack"), st.integers(0, 40)),
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 10.0])),
        st.tuples(st.just("requeue"), st.none()),
    ),
    max_size=60,
)


@dataclass
class _Tracked:
    event: Event
    attempts: int = 0
    due: float | None = None  # None: due at once (never sent, or requeued)
    acked: bool = False


@settings(max_examples=500, deadline=None, derandomize=True, database=None)
@given(
    operations=_operations,
    rand=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
    reverse_seq=st.booleans(),
)
def test_every_event_is_returned_until_acked_never_after_with_consecutive_attempts(
    operations: list[tuple[str, Any]], rand: float, reverse_seq: bool
) -> None:
    clock = Clock(0.0)
    policy = RetryPolicy(first_s=1.0, cap_s=4.0, jitter=0.5)
    outbox = Outbox(policy, clock=clock, rand=lambda: rand)
    tracked: dict[str, _Tracked] = {}
    order: list[str] = []  # add order, for acks by index
    seqs = itertools.count(1000, -1) if reverse_seq else itertools.count(1)

    def expected_due() -> list[str]:
        due = [t for t in tracked.values() if not t.acked and (t.due is None or t.due <= clock.now)]
        due.sort(key=lambda t: (int(t.event.priority), t.event.seq or 0))
        return [t.event.event_id for t in due]

    def take(limit: int | None) -> list[tuple[Event, int]]:
        expected = expected_due()
        taken = outbox.take_due(limit)
        assert _ids(taken) == (expected if limit is None else expected[:limit])
        for event, attempt in taken:
            entry = tracked[event.event_id]
            assert not entry.acked, "returned after its ack"
            assert event == entry.event, "a resend must carry the same event (id, seq, details)"
            assert attempt == entry.attempts + 1, "attempt numbers must be consecutive"
            entry.attempts = attempt
            entry.due = clock.now + policy.delay(attempt, rand)
        return taken

    for name, arg in operations:
        if name == "add":
            event = _event(arg, next(seqs))
            outbox.add(event)
            tracked[event.event_id] = _Tracked(event)
            order.append(event.event_id)
        elif name == "take":
            take(arg)
        elif name == "ack" and order:
            event_id = order[arg % len(order)]
            entry = tracked[event_id]
            returned = outbox.ack(event_id)
            assert returned == (None if entry.acked else entry.event)
            entry.acked = True
        elif name == "advance":
            clock.advance(arg)
        elif name == "requeue":
            outbox.requeue_all()
            for entry in tracked.values():
                entry.due = None
        pending = [t for t in tracked.values() if not t.acked]
        assert len(outbox) == len(pending)
        if not pending:
            assert outbox.seconds_until_due() is None
        elif expected_due():
            assert outbox.seconds_until_due() == 0.0
        else:
            soonest = min(t.due for t in pending if t.due is not None)
            assert outbox.seconds_until_due() == pytest.approx(soonest - clock.now)

    # Eventually: once the longest delay has passed, every unacked event comes back, and only those.
    clock.advance(policy.cap_s)
    unacked = {t.event.event_id for t in tracked.values() if not t.acked}
    assert set(_ids(take(None))) == unacked
    for event_id in unacked:
        assert outbox.ack(event_id) is not None
    clock.advance(policy.cap_s)
    assert outbox.take_due() == []
    assert len(outbox) == 0
