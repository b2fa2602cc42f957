"""The journal: every event durable on disk, numbered once, and kept until the centre acknowledges it."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import hub.journal
from hub.journal import AsyncJournal, Journal, JournalError
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
