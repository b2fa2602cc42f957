"""A journal damaged on disk: the hub finds it at start, sets it aside, carries the unacknowledged
events it can still read into a new journal (same ids, same sequence numbers), numbers new events
above the old ones, and tells the centre what was recovered and what was lost.

The journals are real SQLite files, damaged as storage damages them: pages overwritten in the
middle, the file cut short, the header destroyed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from hub.config import load_config
from hub.journal import Journal, JournalRecord
from hub.journal_recovery import carry_over, find_damage, finish_interrupted, recover, salvage, set_aside
from hub.model import Event, EventType
from hub.service import HubService
from simulator.broker import PrivateBroker
from simulator.centre import Centre

REPO = Path(__file__).resolve().parents[2]
PAGE = 4096
EVENTS = 400
# Events the centre has not acknowledged: alarms near the start and the end, one in the middle.
UNACKED = {3, 7, 200, 390, 398}


def _event(n: int) -> Event:
    kind = EventType.ALARM_EMERGENCY if n in UNACKED else EventType.INFO_CHECKIN_OK
    return Event(kind, "hub-rec", "hh-rec", "minle", "cord", details={"note": f"row-{n:04d}", "pad": "x" * 150})


def _history(path: Path) -> dict[int, Event]:
    """A journal of EVENTS events, all acknowledged but UNACKED; returns them by sequence number."""
    journal = Journal(path)
    events = {}
    for n in range(1, EVENTS + 1):
        stored = journal.append(_event(n))
        assert stored.seq == n
        events[n] = stored
        if n not in UNACKED:
            journal.mark_acked(stored.event_id, "mqtt")
    journal.close()  # checkpointed: everything is in the main file
    return events


def _page_of(path: Path, n: int) -> int:
    """The page holding event number n's row (its details are stored only there)."""
    offset = path.read_bytes().index(f'"row-{n:04d}"'.encode())
    return offset // PAGE


def _overwrite_pages(path: Path, first: int, count: int) -> None:
    noise = bytes((i * 151 + 17) % 256 for i in range(PAGE * count))
    with path.open("r+b") as file:
        file.seek(first * PAGE)
        file.write(noise)


def _records(path: Path) -> list[JournalRecord]:
    journal = Journal(path)
    try:
        return journal.records()
    finally:
        journal.close()


def test_a_sound_journal_passes_the_check(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    assert find_damage(path) is None, "no journal yet is not damage"
    _history(path)
    assert find_damage(path) is None


def test_pages_overwritten_in_the_middle_are_found_and_stepped_over(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    events = _history(path)
    damaged_page = _page_of(path, 200)
    _overwrite_pages(path, damaged_page, 1)
    Journal(path).close()  # the header is fine: the file still opens as if nothing were wrong

    assert find_damage(path) is not None
    found = salvage(path)

    kept = {r.event.seq: r.event for r in found.unacknowledged}
    assert set(kept) == UNACKED - {200}, "every unacknowledged alarm outside the damaged page is read"
    assert all(kept[seq] == events[seq] for seq in kept), "exactly as journaled: same id, seq, time, details"
    assert found.lost_unacknowledged == [200], "the index still names the alarm whose row is gone"
    ((first, last),) = found.unreadable
    assert first <= 200 <= last and last - first < 40, "only about one page of rows is lost"
    assert found.rows_read >= EVENTS - 40
    assert found.last_seq == EVENTS
    assert "1 unacknowledged event(s) could not be read (seq 200)" in found.summary()


def test_a_journal_cut_short_gives_what_it_still_has(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    events = _history(path)
    cut = _page_of(path, 250) * PAGE
    with path.open("r+b") as file:
        file.truncate(cut)

    assert find_damage(path) is not None
    found = salvage(path)
    kept = {r.event.seq: r.event for r in found.unacknowledged}
    assert {3, 7, 200} <= set(kept), "the alarms before the cut are there"
    assert all(kept[seq] == events[seq] for seq in kept)
    assert found.last_seq is not None and found.last_seq >= 249


def test_a_destroyed_header_loses_the_events_but_not_the_hub(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    _history(path)
    _overwrite_pages(path, 0, 2)

    assert find_damage(path) is not None
    found = salvage(path)
    assert found.error is not None and found.unacknowledged == [] and found.last_seq is None
    assert "events not yet acknowledged then are lost" in found.summary()

    aside = set_aside(path)
    carry_over(aside, path)
    journal = Journal(path)
    assert journal.records() == [] and journal.last_sequence() == 0, "a new, empty journal"
    journal.close()
    assert aside.exists(), "the damaged file is kept for a person"


def test_the_carried_over_journal_resends_and_numbers_above_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    events = _history(path)
    _overwrite_pages(path, _page_of(path, 100), 2)
    before = path.read_bytes()

    aside = set_aside(path)
    saved = carry_over(aside, path)

    assert aside.read_bytes() == before, "salvage reads the file set aside, never changes it"
    journal = Journal(path)
    try:
        pending = journal.unacknowledged()
        assert {e.seq for e in pending} == UNACKED
        assert all(e == events[e.seq] for e in pending), "same ids, seqs and details: the centre de-duplicates"
        new = journal.append(_event(9999))
        assert new.seq == EVENTS + 1, "the sequence goes on above the damaged journal's last number"
    finally:
        journal.close()
    assert saved.details()["recovered"] == len(UNACKED)


# -- through the hub service ---------------------------------------------------------------------


def _write_config(tmp_path: Path, broker: PrivateBroker, prompt_cache: Path) -> Path:
    path = tmp_path / "hub.toml"
    raw = {
        "hub_id": "hub-rec",
        "county": "minle",
        "household_id": "hh-rec",
        "data_dir": str(tmp_path / "hub"),
        "gpio": {"pin_factory": "mock"},
        "audio": {"player": "record", "cache_dir": str(prompt_cache)},
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "outbox": {"resend_first_s": 0.5, "resend_cap_s": 1.0},
        "devices": [{"id": "cord", "kind": "pullcord", "transport": "gpio", "pin": 17}],
    }
    path.write_text(tomli_w.dumps(raw))
    os.chmod(path, 0o600)
    return path


@pytest.fixture
async def centre(tmp_path: Path, broker: PrivateBroker) -> AsyncIterator[Centre]:
    running = Centre(broker.host, broker.port, tmp_path / "centre.sqlite3")
    task = asyncio.create_task(running.run())
    await asyncio.wait_for(running.connected.wait(), 10)
    yield running
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _records_at(centre: Centre, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(20):
        while len(records := centre.store.events()) < count:
            await asyncio.sleep(0.05)
    return records


@pytest.mark.parametrize("damage", ["pages", "header"])
async def test_the_hub_starts_on_a_damaged_journal_and_sends_what_was_saved(
    damage: str, tmp_path: Path, broker: PrivateBroker, prompt_cache: Path, centre: Centre
) -> None:
    config_path = _write_config(tmp_path, broker, prompt_cache)
    config_before = config_path.read_bytes()
    data = tmp_path / "hub"
    data.mkdir()
    journal_path = data / "journal.sqlite3"
    events = _history(journal_path)
    if damage == "pages":
        _overwrite_pages(journal_path, _page_of(journal_path, 150), 2)
    else:
        _overwrite_pages(journal_path, 0, 1)
    expected_alarms = len(UNACKED) if damage == "pages" else 0

    service = HubService(load_config(config_path))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.ready.wait(), 20)
        records = await _records_at(centre, expected_alarms + 1)  # the alarms and the fault
        pin = service.inputs._inputs[0].button.pin
        pin.drive_low()
        records = await _records_at(centre, expected_alarms + 2)
        pin.drive_high()
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)

    alarms = {r["event_id"]: r["seq"] for r in records if r["type"] == "alarm.emergency"}
    old = {events[seq].event_id: seq for seq in UNACKED}
    if damage == "pages":
        assert {i: s for i, s in alarms.items() if i in old} == old, "the unacknowledged alarms, same ids and seqs"
    new_seq = next(seq for event_id, seq in alarms.items() if event_id not in old)
    assert new_seq > max(EVENTS, int(time.time() * 1000) - 60_000), "no sequence number the centre had is reused"
    with contextlib.closing(sqlite3.connect(tmp_path / "centre.sqlite3")) as db:
        (message,) = db.execute("SELECT message FROM events WHERE type = 'fault.device'").fetchone()
    details = json.loads(message)["details"]
    assert details["component"] == "journal" and "damaged" in details["problem"]
    if damage == "pages":
        assert details["recovered"] == len(UNACKED) and details["recovered_alarms"] == len(UNACKED)
        assert "recovered 5 unacknowledged event(s)" in details["action"]
    else:
        assert "events not yet acknowledged then are lost" in details["action"]
    assert config_path.read_bytes() == config_before, "the configuration is not touched"
    assert list(data.glob("journal.sqlite3.damaged-*")), "the damaged file is kept for a person"


def test_a_journal_from_an_earlier_release_is_salvaged_too(tmp_path: Path) -> None:
    """A file written before columns were added to the journal (a hub damaged before its first
    start after an update) is read with those columns' defaults."""
    path = tmp_path / "journal.sqlite3"
    events = _history(path)
    with contextlib.closing(sqlite3.connect(path)) as db:
        for column in ("boot_id", "time_source"):
            db.execute(f"ALTER TABLE events DROP COLUMN {column}")
        db.commit()
    _overwrite_pages(path, _page_of(path, 100), 1)

    found = salvage(path)
    assert {r.event.seq for r in found.unacknowledged} == UNACKED
    assert all(r.event.event_id == events[r.event.seq].event_id for r in found.unacknowledged)


def test_what_failover_paths_and_rules_recorded_is_carried_over_too(tmp_path: Path) -> None:
    """An alarm a DC-09 receiver acknowledged must not be sent there, or by SMS, again after a
    recovery (the hub escalates an alarm with no delivery recorded), and a fall's open cancel
    window must still end in an alarm: both were left behind with the damaged file."""
    path = tmp_path / "journal.sqlite3"
    events = _history(path)
    journal = Journal(path)
    journal.mark_delivered(events[390].event_id, "dc09", True)
    journal.mark_delivered(events[398].event_id, "sms", False)
    journal.mark_delivered(events[10].event_id, "dc09", True)  # acknowledged over MQTT too: not carried
    deadline = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    journal.save_window("fall:pendant", deadline, {"kind": "fall", "device": "pendant"})
    journal.close()
    _overwrite_pages(path, _page_of(path, 100), 1)

    aside, saved = recover(path)

    assert aside.exists() and saved.details()["recovered"] == len(UNACKED)
    journal = Journal(path)
    try:
        carried = journal.deliveries([e.event_id for e in events.values()])
        assert carried == {events[390].event_id: {"dc09": True}, events[398].event_id: {"sms": False}}
        assert journal.windows() == [("fall:pendant", deadline, {"kind": "fall", "device": "pendant"})]
    finally:
        journal.close()


_CRASH_IN_RECOVERY = """
import os, signal, sys
import hub.journal, hub.journal_recovery

def crash(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if sys.argv[1] == "after-set-aside":
    real = hub.journal_recovery.set_aside
    def set_aside(path):
        aside = real(path)
        crash()
    hub.journal_recovery.set_aside = set_aside
else:
    hub.journal.Journal.start_sequence_after = crash
from hub.service import run_forever
run_forever(__import__("pathlib").Path(sys.argv[2]))
"""


@pytest.mark.parametrize("moment", ["after-set-aside", "while-writing-the-new-journal"])
async def test_a_crash_during_recovery_loses_no_unacknowledged_alarm_and_reuses_no_number(
    moment: str, tmp_path: Path, broker: PrivateBroker, prompt_cache: Path, centre: Centre
) -> None:
    """A power cut while the hub recovers its damaged journal. Once the damaged file had been moved
    aside before anything was carried over: the next start found no journal, reported it gone and
    began an empty one, and the unacknowledged alarms stayed in the file set aside for ever; cut
    after the events were carried but before the sequence floor, new events reused numbers."""
    config_path = _write_config(tmp_path, broker, prompt_cache)
    data = tmp_path / "hub"
    data.mkdir()
    journal_path = data / "journal.sqlite3"
    events = _history(journal_path)
    (data / "journal.sqlite3.created").write_text("journal created before\n")
    _overwrite_pages(journal_path, _page_of(journal_path, 150), 2)

    crashed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _CRASH_IN_RECOVERY, moment, str(config_path)],
        cwd=REPO,
        capture_output=True,
        timeout=60,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode(errors="replace")

    service = HubService(load_config(config_path))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.ready.wait(), 20)
        await _records_at(centre, len(UNACKED) + 1)  # the alarms and the fault
        pin = service.inputs._inputs[0].button.pin
        pin.drive_low()
        records = await _records_at(centre, len(UNACKED) + 2)
        pin.drive_high()
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)

    alarms = {r["event_id"]: r["seq"] for r in records if r["type"] == "alarm.emergency"}
    old = {events[seq].event_id: seq for seq in UNACKED}
    assert {i: s for i, s in alarms.items() if i in old} == old, "every unacknowledged alarm, same id and seq"
    (new_seq,) = [seq for event_id, seq in alarms.items() if event_id not in old]
    assert new_seq > EVENTS, "no sequence number the centre had is reused"
    faults = [r for r in records if r["type"] == "fault.device"]
    assert len(faults) == 1 and "has gone" not in json.dumps(faults)
    assert not list(data.glob("journal.sqlite3.recovering*")), "nothing half-done is left"
    assert len(list(data.glob("journal.sqlite3.damaged-*[0-9]"))) == 1, "the damaged file is kept for a person"


def test_finish_interrupted_has_nothing_to_do_on_a_sound_journal(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    assert finish_interrupted(path) is None
    _history(path)
    assert finish_interrupted(path) is None and find_damage(path) is None


async def test_only_a_stop_that_was_not_clean_costs_the_whole_file_check_at_the_next_start(
    tmp_path: Path, broker: PrivateBroker, prompt_cache: Path, centre: Centre
) -> None:
    """A clean stop leaves a mark and the next start skips the check (it reads the whole file:
    seconds on a large journal, during which the centre hears nothing); the start takes the mark
    away at once, so a power cut or a crash from then on means a check next time."""
    config_path = _write_config(tmp_path, broker, prompt_cache)
    mark = tmp_path / "hub" / "journal.sqlite3.closed-cleanly"
    for run in range(2):
        service = HubService(load_config(config_path))
        stop = asyncio.Event()
        task = asyncio.create_task(service.run(stop))
        try:
            await asyncio.wait_for(service.ready.wait(), 20)
            assert not mark.exists(), "while the hub runs there is no mark: a crash now means a check"
        finally:
            stop.set()
            await asyncio.wait_for(task, 15)
        assert mark.exists(), f"run {run}: a clean stop leaves the mark"
    # Damage found after a clean stop (bit rot) is not looked for; after an unclean one it is:
    _overwrite_pages(tmp_path / "hub" / "journal.sqlite3", 1, 1)
    mark.unlink()  # the stop before the damage was a power cut
    service = HubService(load_config(config_path))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        await asyncio.wait_for(service.ready.wait(), 20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert list((tmp_path / "hub").glob("journal.sqlite3.damaged-*")), "checked, found damaged, set aside"
