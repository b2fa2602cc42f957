"""The journal: every event durable on disk, numbered once, and kept until the centre acknowledges it."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import hub.journal
from hub.journal import MIN_PAGES, AsyncJournal, Journal, JournalError, JournalFull
from hub.model import Event, EventType

REPO = Path(__file__).resolve().parents[2]


def _event(type_: EventType = EventType.ALARM_EMERGENCY, **overrides: Any) -> Event:
    fields: dict[str, Any] = {
        "type": type_,
        "hub_id": "hub-0001",
        "household_id": "hh-0001",
        "county": "minle",
        "device_id": "cord-bath",
        "details": {"room": "bathroom"},
    }
    fields.update(overrides)
    return Event(**fields)


@pytest.fixture
def journal(tmp_path: Path) -> Any:
    j = Journal(tmp_path / "journal.sqlite3")
    yield j
    j.close()


def test_seq_starts_at_one_and_strictly_increases(journal: Journal) -> None:
    types = [EventType.INFO_CHECKIN_OK, EventType.ALARM_FIRE, EventType.FAULT_BATTERY_LOW, EventType.ALARM_FALL]
    seqs = [journal.append(_event(t)).seq for t in types * 3]
    assert seqs == list(range(1, 13))


def test_append_returns_the_event_unchanged_but_for_its_seq(journal: Journal) -> None:
    event = _event(device_counter=42)
    stored = journal.append(event, alerted_mono_ns=123)
    assert stored == event.with_seq(1)
    record = journal.get(event.event_id)
    assert record is not None
    assert record.event == stored
    assert record.alerted_mono_ns == 123
    assert not record.acknowledged


def test_file_is_in_wal_mode_as_seen_by_another_connection(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    j = Journal(path)
    j.append(_event())
    try:
        other = sqlite3.connect(path)
        try:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert other.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1
        finally:
            other.close()
    finally:
        j.close()


def test_journal_connection_commits_with_synchronous_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # synchronous is a per-connection setting: capture the connection the journal opens.
    opened: list[sqlite3.Connection] = []
    real_connect = sqlite3.connect

    def spying_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = real_connect(*args, **kwargs)
        opened.append(connection)
        return connection

    monkeypatch.setattr(hub.journal.sqlite3, "connect", spying_connect)
    j = Journal(tmp_path / "journal.sqlite3")
    try:
        assert len(opened) == 1
        assert opened[0].execute("PRAGMA synchronous").fetchone()[0] == 2  # 2 = FULL
        assert opened[0].execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        j.close()


def test_appending_the_same_event_twice_keeps_one_row_and_one_seq(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    j = Journal(path)
    try:
        event = _event()
        first = j.append(event)
        j.append(_event(EventType.INFO_CHECKIN_OK))
        again = j.append(event)
        assert first.seq == again.seq == 1
        assert again == first
        assert [r.event.seq for r in j.records()] == [1, 2]
    finally:
        j.close()
    # A restart must not change that either.
    j = Journal(path)
    try:
        assert j.append(event).seq == 1
        assert len(j.records()) == 2
    finally:
        j.close()


def test_mark_acked_returns_the_record_once_then_none(journal: Journal) -> None:
    event = journal.append(_event())
    at = datetime(2024, 7, 1, 8, 30, tzinfo=UTC)
    record = journal.mark_acked(event.event_id, "mqtt", at=at)
    assert record is not None
    assert record.event == event
    assert record.acknowledged
    assert record.ack_via == "mqtt"
    assert datetime.fromisoformat(record.acked_at or "") == at
    assert journal.mark_acked(event.event_id, "sms") is None
    again = journal.get(event.event_id)
    assert again is not None and again.ack_via == "mqtt"  # the second ack did not overwrite the first


def test_mark_acked_for_an_unknown_id_returns_none(journal: Journal) -> None:
    assert journal.mark_acked("0190a6c2-7d4e-7b3a-8f00-1234567890ab", "mqtt") is None


def test_unacknowledged_after_restart_is_exactly_the_unacked_events_alarms_first(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    j = Journal(path)
    journaled = [
        j.append(_event(EventType.INFO_CHECKIN_OK, device_id=None)),  # 1
        j.append(_event(EventType.FAULT_BATTERY_LOW)),  # 2
        j.append(_event(EventType.INFO_REMINDER_ACK, device_id=None)),  # 3 (acked below)
        j.append(_event(EventType.ALARM_FIRE, device_id="smoke-kitchen")),  # 4
        j.append(_event(EventType.FAULT_TAMPER)),  # 5
        j.append(_event(EventType.ALARM_EMERGENCY)),  # 6 (acked below)
        j.append(_event(EventType.ALARM_FALL, device_id="pendant")),  # 7
        j.append(_event(EventType.INFO_CHECKIN_OK, device_id=None)),  # 8
    ]
    j.mark_acked(journaled[2].event_id, "mqtt")
    j.mark_acked(journaled[5].event_id, "mqtt")
    j.close()

    j = Journal(path)
    try:
        pending = j.unacknowledged()
        assert [e.seq for e in pending] == [4, 7, 2, 5, 1, 8]
        by_seq = {e.seq: e for e in journaled}
        assert pending == [by_seq[e.seq] for e in pending]  # every field survived the restart
        assert j.pending_counts() == {"alarm": 2, "fault": 2, "info": 2}
        # Numbering continues after the restart; it never reuses a seq.
        assert j.append(_event()).seq == 9
    finally:
        j.close()


def test_details_with_chinese_text_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    details = {"room": "卫生间", "message": "奶奶拉了浴室的拉绳", "nested": {"人": ["张", "王"]}, "battery_pct": 88}
    j = Journal(path)
    event = j.append(_event(details=details))
    j.close()
    j = Journal(path)
    try:
        (stored,) = j.unacknowledged()
        assert stored.details == details
        assert stored == event
    finally:
        j.close()


def test_alarm_survives_sigkill_of_the_journaling_process(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    child = textwrap.dedent(
        """
        import sys, time
        from pathlib import Path
        from hub.journal import Journal
        from hub.model import Event, EventType

        j = Journal(Path(sys.argv[1]))
        info = j.append(Event(EventType.INFO_CHECKIN_OK, "hub-0001", "hh-0001", "minle"))
        alarm = j.append(Event(EventType.ALARM_EMERGENCY, "hub-0001", "hh-0001", "minle", device_id="cord-bath"))
        j.mark_acked(info.event_id, "mqtt")
        print(alarm.seq, alarm.event_id, flush=True)
        time.sleep(60)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-c", child, str(path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"the child died before journaling: {proc.stderr.read() if proc.stderr else ''}"
    finally:
        proc.kill()  # SIGKILL: no close(), no checkpoint, no atexit
        proc.communicate(timeout=10)
    assert proc.returncode == -9
    seq, event_id = line.split()

    j = Journal(path)
    try:
        pending = j.unacknowledged()
        assert [(e.seq, e.event_id, e.type) for e in pending] == [(int(seq), event_id, EventType.ALARM_EMERGENCY)]
        assert [r.acknowledged for r in j.records()] == [True, False]  # the ack of the info survived too
    finally:
        j.close()


def test_a_directory_is_not_a_journal(tmp_path: Path) -> None:
    directory = tmp_path / "journal.sqlite3"
    directory.mkdir()
    with pytest.raises(JournalError) as info:
        Journal(directory)
    assert str(directory) in str(info.value)


def test_a_file_of_random_bytes_is_not_a_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    garbage = random.Random(1).randbytes(8192)
    path.write_bytes(garbage)
    with pytest.raises(JournalError) as info:
        Journal(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == garbage  # the journal did not overwrite a file it does not understand


async def test_async_journal_append_ack_and_unacknowledged(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    j = AsyncJournal(path)
    try:
        assert j.path == path
        info = await j.append(_event(EventType.INFO_CHECKIN_OK, details={"说": "我很好"}))
        alarm = await j.append(_event(EventType.ALARM_EMERGENCY), 5)
        fault = await j.append(_event(EventType.FAULT_POWER))
        assert (info.seq, alarm.seq, fault.seq) == (1, 2, 3)
        assert await j.unacknowledged() == [alarm, fault, info]
        assert await j.pending_counts() == {"alarm": 1, "fault": 1, "info": 1}

        record = await j.mark_acked(alarm.event_id, "mqtt")
        assert record is not None and record.event == alarm and record.alerted_mono_ns == 5
        assert await j.mark_acked(alarm.event_id, "mqtt") is None
        assert await j.unacknowledged() == [fault, info]
    finally:
        j.close()

    reopened = AsyncJournal(path)
    try:
        assert await reopened.unacknowledged() == [fault, info]
        assert (await reopened.unacknowledged())[1].details == {"说": "我很好"}
    finally:
        reopened.close()


async def test_async_journal_keeps_call_order(tmp_path: Path) -> None:
    j = AsyncJournal(tmp_path / "journal.sqlite3")
    try:
        events = [_event(EventType.INFO_CHECKIN_OK) for _ in range(20)]
        stored = await asyncio.gather(*(j.append(e) for e in events))
        assert [e.seq for e in stored] == list(range(1, 21))
        assert [e.event_id for e in stored] == [e.event_id for e in events]
    finally:
        j.close()


def test_async_journal_on_a_bad_path_raises_journal_error(tmp_path: Path) -> None:
    with pytest.raises(JournalError) as info:
        AsyncJournal(tmp_path)
    assert str(tmp_path) in str(info.value)


# -- storage running out: alarms keep flowing, info goes first, and the journal says so ---------------

BUDGET = 64 * 1024  # 16 pages of 4 KiB: the schema takes 7


def _info() -> Event:
    return _event(EventType.INFO_CHECKIN_OK, device_id=None, details={"answered_by": "hub_button"})


def _seq(event: Event) -> int:
    assert event.seq is not None
    return event.seq


def _append_until_full(j: Journal, make: Any, limit: int = 2000) -> tuple[list[Event], Event, JournalFull]:
    """Append events from `make()` until the journal refuses one: (the kept, the refused, the error)."""
    kept: list[Event] = []
    for _ in range(limit):
        event = make()
        try:
            kept.append(j.append(event))
        except JournalFull as exc:
            return kept, event, exc
    raise AssertionError(f"the journal took {limit} events into a {BUDGET}-byte budget")


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "journal.sqlite3", max_bytes=BUDGET)
    yield j
    j.close()


def test_info_is_refused_within_the_reserve_while_alarms_and_faults_use_it(small: Journal) -> None:
    assert small.usage().info_refused == 0
    kept, refused, exc = _append_until_full(small, _info)
    assert len(kept) > 20
    message = str(exc)
    assert refused.event_id in message and "not kept" in message and "reserve" in message
    assert f"of {BUDGET} bytes used" in message
    assert "free disk space or raise the journal's max size" in message
    usage = small.usage()
    assert usage.max_bytes == BUDGET
    assert 0.8 * BUDGET < usage.used_bytes <= BUDGET  # refused near the reserve, not early
    assert usage.info_refused == 1
    assert exc.usage is not None and exc.usage.info_refused == 1 and exc.usage.used_bytes == usage.used_bytes
    assert small.get(refused.event_id) is None

    # The same event retried is counted once; another info event is refused and counted too.
    with pytest.raises(JournalFull):
        small.append(refused)
    with pytest.raises(JournalFull):
        small.append(_info())
    assert small.usage().info_refused == 2

    # Alarms and faults are taken from the reserve.
    alarm = small.append(_event(EventType.ALARM_FIRE, device_id="smoke-kitchen"))
    fault = small.append(_event(EventType.FAULT_POWER, device_id=None))
    assert _seq(alarm) == _seq(kept[-1]) + 1 and _seq(fault) == _seq(alarm) + 1  # the refusals used no seq
    assert small.unacknowledged() == [alarm, fault, *kept]
    assert small.usage().used_bytes <= BUDGET
    # A duplicate is still answered with the stored event, full or not.
    assert small.append(kept[0]) == kept[0]


def test_the_reserve_deletes_acknowledged_events_oldest_first_but_never_unacknowledged(small: Journal) -> None:
    alarm = small.append(_event(EventType.ALARM_FALL, device_id="pendant"))  # never acknowledged
    unacked_info: list[Event] = []
    acked_seqs: list[int] = []
    for _ in range(30):  # 300 info events: about twice what the budget holds
        batch = [small.append(_info()) for _ in range(10)]
        unacked_info.append(batch[0])
        small.mark_acked_many([(e.event_id, "mqtt") for e in batch[1:]])
        acked_seqs.extend(_seq(e) for e in batch[1:])

    usage = small.usage()
    assert usage.info_refused == 0
    assert usage.used_bytes <= BUDGET
    assert small.unacknowledged() == [alarm, *unacked_info]  # every unacknowledged event is kept
    remaining = [r.event.seq for r in small.records() if r.acknowledged]
    assert len(remaining) < len(acked_seqs)  # acknowledged events were deleted to make room...
    assert remaining == acked_seqs[len(acked_seqs) - len(remaining) :]  # ...the oldest first


def test_a_journal_full_of_alarms_refuses_the_next_then_recovers_as_the_centre_acks(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    j = Journal(path, max_bytes=BUDGET)
    try:
        committed, _, exc = _append_until_full(j, lambda: _event(EventType.ALARM_FIRE, device_id="smoke-kitchen"))
        assert "database or disk is full" in str(exc) and "raise the journal's max size" in str(exc)
        assert j.usage().used_bytes == BUDGET
        assert j.usage().info_refused == 0
        assert j.unacknowledged() == committed  # every committed alarm is readable
        with pytest.raises(JournalFull):
            j.append(_info())
        assert j.usage().info_refused == 1
        deadline = datetime.now(UTC) + timedelta(minutes=1)
        with pytest.raises(JournalFull):
            j.save_window("fall:pendant", deadline, {"note": "x" * 20_000})
        j.save_window("fall:pendant", deadline, {"note": "short"})  # a small one still fits
        assert [w[0] for w in j.windows()] == ["fall:pendant"]
    finally:
        j.close()

    j = Journal(path, max_bytes=BUDGET)  # reopened: nothing lost, nothing damaged
    try:
        assert j.unacknowledged() == committed
        # No room to mark them acknowledged (and none acknowledged to delete): they are deleted instead.
        records = j.mark_acked_many([(e.event_id, "mqtt") for e in committed[:40]])
        assert [r.event if r else None for r in records] == committed[:40]
        assert all(r is not None and r.ack_via == "mqtt" and r.acknowledged for r in records)
        assert all(j.get(e.event_id) is None for e in committed[:40])
        assert j.mark_acked(committed[0].event_id, "mqtt") is None  # not a first ack any more
        # The centre acknowledges the rest of the backlog but the last 20.
        records = j.mark_acked_many([(e.event_id, "mqtt") for e in committed[40:-20]])
        assert all(r is not None and r.acknowledged for r in records)
        after = j.append(_event(EventType.ALARM_FALL, device_id="pendant"))
        assert _seq(after) == _seq(committed[-1]) + 1  # numbering goes on; no seq was used by a failure
        info = j.append(_info())  # acknowledged events deleted: the reserve is back, info is taken again
        assert j.unacknowledged() == [*committed[-20:], after, info]
        assert j.usage().used_bytes <= BUDGET
    finally:
        j.close()


def test_a_journal_larger_than_its_new_budget_keeps_its_events_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    j = Journal(path)  # no budget
    events = [j.append(_info()) for _ in range(300)]
    j.mark_acked_many([(e.event_id, "mqtt") for e in events[:100]])
    j.close()
    j = Journal(path, max_bytes=BUDGET)
    try:
        before = j.usage().used_bytes
        assert before > BUDGET
        with pytest.raises(JournalFull):  # the acknowledged events deleted are not enough
            j.append(_info())
        assert j.usage().used_bytes < before
        assert len(j.records()) == 200 and j.unacknowledged() == events[100:]
        alarm = j.append(_event(EventType.ALARM_EMERGENCY))  # the file keeps its size: room for alarms
        j.mark_acked_many([(e.event_id, "mqtt") for e in events[100:]])
        info = j.append(_info())  # under the budget again
        assert j.usage().used_bytes <= BUDGET
        assert j.unacknowledged() == [alarm, info]
    finally:
        j.close()


def test_min_free_bytes_keeps_the_last_of_the_disk_for_alarms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    free = [500 << 20]
    monkeypatch.setattr(hub.journal.shutil, "disk_usage", lambda _: SimpleNamespace(free=free[0]))
    j = Journal(tmp_path / "journal.sqlite3", min_free_bytes=100 << 20)
    try:
        j.append(_info())
        free[0] = 100 << 20
        with pytest.raises(JournalFull) as info:
            j.append(_info())
        assert f"{100 << 20} bytes free on disk" in str(info.value)
        assert "free disk space" in str(info.value)
        alarm = j.append(_event(EventType.ALARM_EMERGENCY))
        assert j.usage() == hub.journal.JournalUsage(j.usage().used_bytes, None, 100 << 20, 1)
        free[0] = 200 << 20  # disk space freed: info flows again
        info_event = j.append(_info())
        assert [e.seq for e in j.unacknowledged()] == [alarm.seq, 1, info_event.seq]
    finally:
        j.close()


class _FailingWrites:
    """A connection whose writes fail with `error`; reads go through."""

    def __init__(self, db: sqlite3.Connection, error: sqlite3.Error) -> None:
        self._db = db
        self._error = error

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql.split()[0].upper() in {"INSERT", "UPDATE", "DELETE", "BEGIN"}:
            raise self._error
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


@pytest.mark.parametrize(
    ("message", "full"),
    [("database or disk is full", True), ("disk I/O error", False), ("attempt to write a readonly database", False)],
)
def test_write_failures_map_to_journal_full_only_for_want_of_room(
    journal: Journal, monkeypatch: pytest.MonkeyPatch, message: str, full: bool
) -> None:
    alarm = journal.append(_event())
    real = journal._db
    monkeypatch.setattr(journal, "_db", _FailingWrites(real, sqlite3.OperationalError(message)))
    deadline = datetime.now(UTC)
    writes = [
        lambda: journal.append(_event(EventType.ALARM_FIRE)),
        lambda: journal.append(_info()),
        lambda: journal.mark_acked(alarm.event_id, "mqtt"),
        lambda: journal.mark_acked_many([(alarm.event_id, "mqtt")]),
        lambda: journal.save_window("w", deadline, {}),
        lambda: journal.delete_window("w"),
    ]
    for write in writes:
        with pytest.raises(JournalError) as info:
            write()
        assert isinstance(info.value, JournalFull) is full, info.value
        assert str(journal.path) in str(info.value) and message in str(info.value)
    monkeypatch.setattr(journal, "_db", real)  # the failure passes: the journal works on
    assert journal.append(_info()).seq == 2
    assert journal.mark_acked(alarm.event_id, "mqtt") is not None


def test_the_file_size_limit_is_reported_as_journal_full_and_the_journal_recovers(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    child = textwrap.dedent(
        """
        import resource, signal, sys
        from datetime import UTC, datetime
        from pathlib import Path
        from hub.journal import Journal, JournalError
        from hub.model import Event, EventType

        def alarm():
            return Event(EventType.ALARM_FIRE, "hub-0001", "hh-0001", "minle", device_id="smoke-kitchen")

        def attempt(label, write):
            try:
                write()
                print(label, "ok")
            except JournalError as exc:
                print(label, type(exc).__name__, flush=True)

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        j = Journal(Path(sys.argv[1]))
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (128 * 1024, hard))
        kept = []
        try:
            for _ in range(5000):
                kept.append(j.append(alarm()))
            print("append never failed")
        except JournalError as exc:
            print("append", type(exc).__name__, len(kept), flush=True)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # now not a byte more: no write fits
        attempt("ack", lambda: j.mark_acked_many([(kept[0].event_id, "mqtt")]))
        attempt("window", lambda: j.save_window("w", datetime.now(UTC), {}))
        attempt("again", lambda: j.append(alarm()))
        print("unacked", len(j.unacknowledged()), flush=True)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # room again
        print("recovered", j.append(alarm()).seq, flush=True)
        j.close()
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-c", child, str(path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    outcome, count = lines["append"].split()
    assert outcome == "JournalFull", result.stdout
    kept = int(count)
    assert kept > 0
    assert lines["ack"] == lines["window"] == lines["again"] == "JournalFull", result.stdout
    assert lines["unacked"] == str(kept)
    assert lines["recovered"] == str(kept + 1)

    j = Journal(path)
    try:
        assert [e.seq for e in j.unacknowledged()] == list(range(1, kept + 2))
    finally:
        j.close()


@pytest.mark.parametrize(
    "options",
    [
        {"max_bytes": MIN_PAGES * 4096 - 1},
        {"max_bytes": 1000},
        {"max_bytes": True},
        {"reserve_fraction": 1.0},
        {"reserve_fraction": -0.1},
        {"min_free_bytes": -1},
    ],
)
def test_bad_storage_options_are_refused_before_anything_is_written(tmp_path: Path, options: dict[str, Any]) -> None:
    path = tmp_path / "journal.sqlite3"
    with pytest.raises(ValueError, match="journal"):
        Journal(path, **options)
    assert not path.exists()


async def test_async_journal_passes_the_storage_options_through(tmp_path: Path) -> None:
    j = AsyncJournal(tmp_path / "journal.sqlite3", max_bytes=BUDGET, reserve_fraction=0.5, min_free_bytes=1)
    try:
        assert (j.max_bytes, j.reserve_fraction, j.min_free_bytes) == (BUDGET, 0.5, 1)
        for _ in range(2000):
            try:
                await j.append(_info())
            except JournalFull:
                break
        usage = await j.usage()
        assert usage.max_bytes == BUDGET and usage.info_refused == 1
        assert usage.used_bytes <= 0.5 * BUDGET + 4096  # half the budget kept for alarms and faults
        await j.append(_event(EventType.ALARM_EMERGENCY))
        assert (await j.pending_counts())["alarm"] == 1
    finally:
        j.close()
    with pytest.raises(ValueError, match="too small"):
        AsyncJournal(tmp_path / "other.sqlite3", max_bytes=4096)


def test_failover_deliveries_are_recorded_once_per_path_and_survive_a_restart(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    alarm = journal.append(Event(EventType.ALARM_EMERGENCY, "hub-1", "hh-1", "minle", "cord"))
    assert journal.mark_delivered(alarm.event_id, "sms", False) is True
    assert journal.mark_delivered(alarm.event_id, "dc09", True) is True
    assert journal.mark_delivered(alarm.event_id, "dc09", True) is False  # a later ack: no second record
    journal.close()
    reopened = Journal(tmp_path / "j.sqlite3")
    assert reopened.deliveries([alarm.event_id, "unknown"]) == {alarm.event_id: {"sms": False, "dc09": True}}


def test_a_journal_started_over_numbers_above_the_floor(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    journal.start_sequence_after(1_700_000_000_000)
    first = journal.append(Event(EventType.ALARM_EMERGENCY, "hub-1", "hh-1", "minle", "cord"))
    journal.start_sequence_after(5)  # never lowers it
    second = journal.append(Event(EventType.ALARM_EMERGENCY, "hub-1", "hh-1", "minle", "cord"))
    assert first.seq == 1_700_000_000_001 and second.seq == 1_700_000_000_002


def test_only_a_damaged_file_counts_as_corrupt(tmp_path: Path) -> None:
    """The service sets a journal aside only when SQLite says the file is damaged; a locked or
    unreadable one is kept for the next start (its pending alarms are still in it)."""
    from hub.service import _is_corrupt

    damaged = tmp_path / "damaged.sqlite3"
    damaged.write_bytes(b"this is not a database " * 200)
    with pytest.raises(JournalError) as corrupt:
        Journal(damaged)
    assert _is_corrupt(corrupt.value)

    for reason in ("database is locked", "unable to open database file", "disk I/O error"):
        error = JournalError(f"cannot open the journal: {reason}")
        error.__cause__ = sqlite3.OperationalError(reason)
        assert not _is_corrupt(error), reason
