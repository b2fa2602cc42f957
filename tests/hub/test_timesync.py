"""A hub without a real-time clock: events raised before NTP has synchronised the wall clock carry
their monotonic time, no wrong wall time, and get their true time once it is synchronised."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from cloud_bridge.contract import validate
from cloud_bridge.dc09 import CR, LF, crc16_arc, parse_frame
from cloud_bridge.dc09_uplink import Dc09Path
from cloud_bridge.outbox import Outbox
from hub.config import ClockConfig, Dc09UplinkConfig
from hub.journal import _SCHEMA, Journal
from hub.model import Event, EventType, Origin, TimeSource
from hub.timesync import TimeSync, kernel_clock_synchronised, source_from_config

ORIGIN = Origin("hub-0001", "hh-0001", "county-01")
PI_BOOT_WALL = datetime(1970, 1, 1, tzinfo=UTC)  # what a Pi without an RTC believes after a power cut
TRUE_AT_SYNC = datetime(2025, 6, 1, 8, 0, 0, tzinfo=UTC)  # what NTP says when it has synchronised
SYNC_MONO_NS = 600 * 10**9  # ten minutes after boot
MS = timedelta(milliseconds=1)


class Flag:
    """An injected source: unsynchronised until `synchronised` is set."""

    def __init__(self) -> None:
        self.synchronised = False

    def __call__(self) -> bool:
        return self.synchronised


def _timesync(flag: Flag, boot_id: str = "11111111-2222-3333-4444-555555555555") -> TimeSync:
    return TimeSync(flag, boot_id=boot_id, wall=lambda: TRUE_AT_SYNC, mono_ns=lambda: SYNC_MONO_NS)


def _pulled_at(mono_ns: int) -> Event:
    """A pull-cord alarm as the edge makes it on a Pi whose wall clock still says 1970."""
    return ORIGIN.event(
        EventType.ALARM_EMERGENCY, None, mono_ns, None, PI_BOOT_WALL + timedelta(microseconds=mono_ns / 1000)
    )


# --- the kernel probe and the sources ------------------------------------------------------------


def test_the_kernel_probe_answers_on_this_machine() -> None:
    answer = kernel_clock_synchronised()
    assert answer in (True, False) if sys.platform.startswith("linux") else answer is None


def test_a_file_source_is_unsynchronised_until_the_file_appears(tmp_path: Path) -> None:
    flag = tmp_path / "clock-synced"
    sync = TimeSync(source_from_config(f"file:{flag}"))
    assert sync.check() is None and not sync.trusted
    flag.touch()  # the scenario's step: NTP has synchronised the clock
    assert sync.check() is not None and sync.trusted
    assert TimeSync(source_from_config("assume")).check() is not None


def test_the_configuration_names_a_known_source() -> None:
    assert ClockConfig().sync == "kernel"
    assert ClockConfig(sync="file:/run/anju/synced").sync == "file:/run/anju/synced"
    with pytest.raises(ValidationError):
        ClockConfig(sync="ntp")


async def test_the_watch_polls_until_synchronised_and_tells_once() -> None:
    flag = Flag()
    sync = TimeSync(flag, poll_s=0.001)
    told: list[object] = []
    sync.on_sync(told.append)
    watch = asyncio.create_task(sync.run())
    await asyncio.sleep(0.01)
    assert told == []
    flag.synchronised = True
    while not told:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)
    assert len(told) == 1 and told[0] is sync.sync
    watch.cancel()


# --- events --------------------------------------------------------------------------------------


def test_an_event_raised_unsynchronised_is_marked_and_a_receiver_can_place_it() -> None:
    sync = _timesync(Flag())
    pulled = time.monotonic_ns() - 2 * 10**9  # pulled 2 s ago, by the monotonic clock
    event = sync.stamp(_pulled_at(pulled)).with_seq(1)
    assert event.time_source is TimeSource.MONOTONIC and event.boot_id == sync.boot_id
    message = event.to_message(attempt=1)
    validate("event", message)
    assert message["time_source"] == "monotonic" and message["boot_id"] == sync.boot_id
    assert message["mono_ms"] == pulled // 1_000_000
    # The contract's rule for a receiver: receive time − (sent_mono_ms − mono_ms).
    placed = datetime.now(UTC) - timedelta(milliseconds=message["sent_mono_ms"] - message["mono_ms"])
    assert abs(placed - (datetime.now(UTC) - timedelta(seconds=2))) < 50 * MS


def test_an_event_raised_synchronised_keeps_its_wall_time() -> None:
    flag = Flag()
    flag.synchronised = True
    sync = _timesync(flag)
    sync.check()
    now = datetime.now(UTC)
    event = sync.stamp(ORIGIN.event(EventType.ALARM_EMERGENCY, None, SYNC_MONO_NS + 1, None, now))
    assert (event.time_source, event.occurred_at) == (TimeSource.WALL, now)


def test_after_sync_the_journal_and_the_resend_carry_the_true_time(tmp_path: Path) -> None:
    flag = Flag()
    sync = _timesync(flag)
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    outbox = Outbox(clock=lambda: 0.0)
    pulled = SYNC_MONO_NS - 300 * 10**9  # five minutes before NTP synchronised the clock
    earlier_boot = TimeSync(flag, boot_id="99999999-2222-3333-4444-555555555555").stamp(_pulled_at(pulled))
    events = [journal.append(sync.stamp(_pulled_at(pulled))), journal.append(earlier_boot)]
    outbox.extend(events)
    first = [e.to_message(attempt=1) for e, _ in outbox.take_due()]
    assert {m["time_source"] for m in first} == {"monotonic"}

    flag.synchronised = True
    point = sync.check()
    assert point is not None and point.offset == TRUE_AT_SYNC - timedelta(seconds=600)
    corrected = journal.correct_times(point)
    outbox.retime(point.correct)
    journal.close()

    truth = TRUE_AT_SYNC - timedelta(minutes=5)
    this_boot, other_boot = events
    assert [e.event_id for e in corrected] == [this_boot.event_id]
    reopened = Journal(path)
    stored = reopened.get(this_boot.event_id)
    assert stored is not None
    assert stored.event.seq == this_boot.seq and stored.event.time_source is TimeSource.CORRECTED
    assert abs(stored.event.occurred_at - truth) < MS
    outbox.requeue_all()  # the reconnect: everything unacknowledged is sent again
    resent = {e.event_id: e.to_message(attempt=2) for e, _ in outbox.take_due()}
    assert resent[this_boot.event_id]["time_source"] == "corrected"
    assert resent[this_boot.event_id]["seq"] == this_boot.seq
    assert abs(datetime.fromisoformat(resent[this_boot.event_id]["occurred_at"]) - truth) < MS
    validate("event", resent[this_boot.event_id])
    # An event of an earlier boot: its monotonic time counts from another zero, so it is not "corrected".
    kept = reopened.get(other_boot.event_id)
    assert kept is not None and kept.event.time_source is TimeSource.MONOTONIC
    assert kept.event.occurred_at == other_boot.occurred_at
    assert resent[other_boot.event_id]["time_source"] == "monotonic"
    reopened.close()


def test_a_journal_from_before_time_sources_opens_with_trusted_wall_times(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    old_schema = _SCHEMA.replace(
        ",\n    boot_id           TEXT,\n    time_source       TEXT NOT NULL DEFAULT 'wall'", ""
    )
    assert "boot_id" not in old_schema
    with sqlite3.connect(path) as db:
        db.executescript(old_schema)
        db.execute(
            "INSERT INTO events (event_id, type, priority, hub_id, household_id, county, occurred_at,"
            " observed_mono_ns, journaled_mono_ns, details) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                "0190a6c2-7d4e-7b3a-8f00-1234567890ab",
                "alarm.fire",
                0,
                "hub-0001",
                "hh-0001",
                "c",
                TRUE_AT_SYNC.isoformat(),
                1,
                1,
                "{}",
            ),
        )
    journal = Journal(path)
    [event] = journal.unacknowledged()
    assert (event.time_source, event.boot_id, event.occurred_at) == (TimeSource.WALL, None, TRUE_AT_SYNC)
    journal.close()


# --- DC-09 ---------------------------------------------------------------------------------------


class Receiver:
    """A DC-09 receiver that keeps every frame; with `nak_with`, it NAKs the first with its clock."""

    def __init__(self, nak_with: datetime | None = None) -> None:
        self.frames: list[bytes] = []
        self.nak_with = nak_with

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        frame = await reader.readuntil(CR)
        self.frames.append(frame)
        if self.nak_with is not None and len(self.frames) == 1:
            body = f'"NAK"0000R0L0A0[]_{self.nak_with:%H:%M:%S,%m-%d-%Y}'
        else:
            body = f'"ACK"{parse_frame(frame).sequence}R1L0#1234[]'
        raw = body.encode()
        writer.write(LF + f"{crc16_arc(raw):04X}{len(raw):04X}".encode() + raw + CR)
        await writer.drain()
        writer.close()


def _dc09_path(port: int, sync: TimeSync) -> Dc09Path:
    config = Dc09UplinkConfig(type="dc09", host="127.0.0.1", port=port, account="1234", receiver="1", timeout_s=2)
    return Dc09Path(config, {}, clock_trusted=lambda: sync.trusted)


async def test_a_dc09_frame_carries_no_timestamp_until_the_clock_is_synchronised() -> None:
    flag = Flag()
    sync = TimeSync(flag)
    async with Receiver() as receiver:
        path = _dc09_path(receiver.port, sync)
        assert await path.deliver(sync.stamp(_pulled_at(time.monotonic_ns())).with_seq(1)) == "ack"
        flag.synchronised = True
        sync.check()
        assert await path.deliver(sync.stamp(_pulled_at(time.monotonic_ns())).with_seq(2)) == "ack"
    unsynced, synced = (parse_frame(frame) for frame in receiver.frames)
    assert unsynced.timestamp is None
    assert synced.timestamp is not None and abs(synced.timestamp - datetime.now(UTC)) < timedelta(seconds=2)


async def test_a_nak_gives_the_receivers_clock_to_a_hub_that_has_none() -> None:
    receiver_clock = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=3)  # the receiver's own idea
    sync = TimeSync(Flag())
    async with Receiver(nak_with=receiver_clock) as receiver:
        path = _dc09_path(receiver.port, sync)
        assert await path.deliver(sync.stamp(_pulled_at(time.monotonic_ns())).with_seq(1)) == "ack"
    first, resend = (parse_frame(frame) for frame in receiver.frames)
    assert first.timestamp is None
    assert resend.timestamp is not None and abs(resend.timestamp - receiver_clock) < timedelta(seconds=2)
