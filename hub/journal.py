"""The hub's journal: one SQLite file (WAL mode) holding every event and whether the centre has it.

It is the only writer of the hub's durable state. An event is committed with a full sync
(`synchronous=FULL`: the WAL is fsynced on every commit) before any uplink may send it; its
`seq` is the per-hub sequence number (SQLite AUTOINCREMENT: strictly increasing, never reused).
After a crash or a restart `unacknowledged()` returns every event the centre has not confirmed.

`Journal` is synchronous and owned by one thread; `AsyncJournal` runs it on a dedicated worker
thread so that fsync never stalls the event loop (and so never delays a siren).

Storage running out (a small SD card, a log that filled the disk) must not silence an alarm:

- `max_bytes` is the database's size budget, enforced by SQLite itself (`PRAGMA max_page_count`): a
  write past it fails exactly as on a full disk. The WAL file comes on top of it (up to the
  autocheckpoint size, about 4 MB) and so does the `-shm` index (32 KiB).
- Info events are refused before the store is full: the last `reserve_fraction` of the budget and the
  last `min_free_bytes` of the file system are kept for alarms and faults. Before refusing, the journal
  deletes acknowledged events (they are at the centre already), oldest first, in bounded batches.
- Acks that cannot be recorded for want of room delete their events instead: a journal full of
  unacknowledged alarms frees room as the centre acknowledges them.
- A write that fails because the budget or the disk is exhausted (SQLITE_FULL, ENOSPC, EFBIG: the
  file size limit) raises `JournalFull`; any other failure `JournalError`. A failed write is rolled
  back and leaves the journal usable: the next write succeeds once there is room again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from hub.model import Event, EventType, Priority, TimeSource
from hub.timesync import SyncPoint

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id          TEXT NOT NULL UNIQUE,
    type              TEXT NOT NULL,
    priority          INTEGER NOT NULL,
    hub_id            TEXT NOT NULL,
    household_id      TEXT NOT NULL,
    county            TEXT NOT NULL,
    device_id         TEXT,
    device_counter    INTEGER,
    occurred_at       TEXT NOT NULL,
    observed_mono_ns  INTEGER NOT NULL,
    alerted_mono_ns   INTEGER,
    journaled_mono_ns INTEGER NOT NULL,
    details           TEXT NOT NULL,
    acked_at          TEXT,
    acked_mono_ns     INTEGER,
    ack_via           TEXT,
    boot_id           TEXT,
    time_source       TEXT NOT NULL DEFAULT 'wall'
);
CREATE INDEX IF NOT EXISTS events_unacked ON events (priority, seq) WHERE acked_at IS NULL;
CREATE TABLE IF NOT EXISTS windows (
    id        TEXT PRIMARY KEY,
    deadline  TEXT NOT NULL,
    data      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    event_id      TEXT NOT NULL,
    via           TEXT NOT NULL,
    acknowledged  INTEGER NOT NULL,
    at            TEXT NOT NULL,
    PRIMARY KEY (event_id, via)
);
"""

T = TypeVar("T")

_COLUMNS = (
    "seq, event_id, type, hub_id, household_id, county, device_id, device_counter, occurred_at,"
    " observed_mono_ns, alerted_mono_ns, journaled_mono_ns, details, acked_at, acked_mono_ns, ack_via,"
    " boot_id, time_source"
)
_PLACEHOLDERS = ",".join("?" * (_COLUMNS.count(",") + 1))  # one per column of _COLUMNS
# Columns added after the first release, with their definitions: an older journal file gets them at open.
_ADDED_COLUMNS = {"boot_id": "TEXT", "time_source": "TEXT NOT NULL DEFAULT 'wall'"}


# The smallest budget accepted, in pages: the schema alone takes 7 (4 KiB each by default).
MIN_PAGES = 16
# Acknowledged events deleted per transaction when making room, and transactions per call at most:
# making room never holds the journal's thread (and so the next alarm) for long.
_PRUNE_BATCH = 256
_PRUNE_MAX_BATCHES = 16
# Out of room below the budget (a full disk): pages to free in the database before trying again.
_PRUNE_HEADROOM_PAGES = 16
# An I/O error with less free disk space than this is taken for a full disk.
_NEARLY_FULL_DISK = 1 << 20
# The largest single write SQLite makes (a page of the largest size, with a WAL frame header).
_MAX_WRITE = 65536 + 24
# How many refused info event ids are remembered so that a retried event is counted once.
_REFUSED_IDS_KEPT = 4096
_FULL_ERRNOS = frozenset(
    code for code in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None)) if code is not None
)


class JournalError(RuntimeError):
    """The journal file cannot be opened or written; the message says which file and why."""


@dataclass(frozen=True)
class JournalUsage:
    """How full the journal is. `used_bytes` counts the database's pages in use (not its free list);
    `max_bytes` is the configured budget (None: no budget); `disk_free_bytes` what the file system
    has left for this user (None: unknown); `info_refused` how many info events were not kept since
    the journal was opened (each event id counted once, however often it is retried)."""

    used_bytes: int
    max_bytes: int | None
    disk_free_bytes: int | None
    info_refused: int


class JournalFull(JournalError):
    """Storage is exhausted: an info event refused to keep the reserve for alarms and faults, or a
    write that failed for want of room (the size budget, a full disk, the file size limit)."""

    def __init__(self, message: str, usage: JournalUsage | None = None) -> None:
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class JournalRecord:
    """An event as the journal holds it, with what happened to it on this hub."""

    event: Event
    alerted_mono_ns: int | None
    journaled_mono_ns: int
    acked_at: str | None
    acked_mono_ns: int | None
    ack_via: str | None

    @property
    def acknowledged(self) -> bool:
        return self.acked_at is not None


class Journal:
    """The journal on one SQLite file.

    `max_bytes`: the database's size budget (None: as large as the disk allows); at least
    `MIN_PAGES` pages. `reserve_fraction` of it and `min_free_bytes` of free disk space are kept for
    alarms and faults: info events are refused (`JournalFull`) rather than eat into them.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int | None = None,
        reserve_fraction: float = 0.1,
        min_free_bytes: int = 0,
    ) -> None:
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)):
            raise ValueError(f"journal max size must be a whole number of bytes, not {max_bytes!r}")
        if max_bytes is not None and max_bytes < MIN_PAGES * 512:  # 512: SQLite's smallest page
            raise ValueError(f"journal max size {max_bytes} bytes is too small: at least {MIN_PAGES} pages are needed")
        if not 0.0 <= reserve_fraction < 1.0:
            raise ValueError(f"journal reserve fraction must be in [0, 1), not {reserve_fraction!r}")
        if min_free_bytes < 0:
            raise ValueError(f"journal minimum free disk space must not be negative, not {min_free_bytes!r}")
        self.path = path
        self.max_bytes = max_bytes
        self.reserve_fraction = reserve_fraction
        self.min_free_bytes = min_free_bytes
        self._refused: dict[str, None] = {}  # info event ids refused, oldest first (bounded)
        self._info_refused = 0
        existed = path.exists()
        db = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
            if max_bytes is not None and max_bytes // self._page_size < MIN_PAGES:
                raise ValueError(
                    f"journal max size {max_bytes} bytes is too small for {path}: at least {MIN_PAGES} pages"
                    f" of {self._page_size} bytes ({MIN_PAGES * self._page_size} bytes) are needed"
                )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
            _add_columns(db)
            if max_bytes is not None:
                # SQLite never lowers the limit below the file's current size: a file already larger than
                # the budget keeps its size (pages freed by pruning are reused) and info stays refused.
                db.execute(f"PRAGMA max_page_count = {max_bytes // self._page_size}").fetchone()
        except (sqlite3.Error, OSError) as exc:
            if db is not None:
                db.close()
            if _is_full_error(exc, path):
                raise JournalFull(f"cannot open the journal {path}: {exc}: free disk space") from exc
            raise JournalError(f"cannot open the journal {path}: {exc}") from exc
        except ValueError:
            if db is not None:
                db.close()
            if not existed and path.is_file() and path.stat().st_size == 0:
                path.unlink()  # the empty file SQLite created for the check
            raise
        self._db = db

    def close(self) -> None:
        self._db.close()

    def usage(self) -> JournalUsage:
        """How full the journal is: two PRAGMAs and a statvfs, cheap enough for every append."""
        try:
            used = self._used_bytes()
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read the size of the journal {self.path}: {exc}") from exc
        return JournalUsage(used, self.max_bytes, self._disk_free(), self._info_refused)

    def append(self, event: Event, alerted_mono_ns: int | None = None) -> Event:
        """Commit `event` durably and return it with its sequence number.

        Appending an event id that is already journaled returns the stored event unchanged.
        Raises `JournalFull` for an info event that would eat into the reserve kept for alarms and
        faults, and for any event when the budget or the disk is exhausted.
        """
        try:
            existing = self.get(event.event_id)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot write event {event.event_id} to {self.path}: {exc}") from exc
        if existing is not None:
            return existing.event
        details = json.dumps(event.details, ensure_ascii=False, sort_keys=True)
        row = (
            event.event_id,
            event.type.value,
            int(event.priority),
            event.hub_id,
            event.household_id,
            event.county,
            event.device_id,
            event.device_counter,
            event.occurred_at.astimezone(UTC).isoformat(),
            event.observed_mono_ns,
            alerted_mono_ns,
            time.monotonic_ns(),
            details,
            event.boot_id,
            event.time_source.value,
        )
        info = event.priority == Priority.INFO
        try:
            if info:
                self._admit_info(event, _estimated_bytes(event, details))
            cursor = self._write(
                f"write event {event.event_id}",
                lambda: self._db.execute(
                    "INSERT INTO events (event_id, type, priority, hub_id, household_id, county, device_id,"
                    " device_counter, occurred_at, observed_mono_ns, alerted_mono_ns, journaled_mono_ns, details,"
                    " boot_id, time_source) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    row,
                ),
            )
        except JournalFull:
            if info:
                self._count_refused(event.event_id)
            raise
        seq = cursor.lastrowid
        assert seq is not None
        return event.with_seq(seq)

    def mark_acked(self, event_id: str, via: str, at: datetime | None = None) -> JournalRecord | None:
        """Record the centre's acknowledgement. Returns the record if this ack was the first, else None.

        With no room left to record it, the event is deleted instead (it is at the centre)."""
        moment = (at or datetime.now(UTC)).astimezone(UTC).isoformat()
        try:
            cursor = self._write(
                f"record the ack of {event_id}",
                lambda: self._db.execute(
                    "UPDATE events SET acked_at = ?, acked_mono_ns = ?, ack_via = ?"
                    " WHERE event_id = ? AND acked_at IS NULL",
                    (moment, time.monotonic_ns(), via, event_id),
                ),
            )
        except JournalFull:
            return self._delete_acked([(event_id, via)], moment)[0]
        if cursor.rowcount == 0:
            return None
        return self.get(event_id)

    def mark_acked_many(self, acks: list[tuple[str, str]]) -> list[JournalRecord | None]:
        """Several acks in one transaction (one fsync): a drain of thousands of acks keeps up.

        With no room left to record them, the events are deleted instead (they are at the centre)."""
        moment = datetime.now(UTC).isoformat()

        def update_all() -> list[bool]:
            newly: list[bool] = []
            self._db.execute("BEGIN")
            for event_id, via in acks:
                cursor = self._db.execute(
                    "UPDATE events SET acked_at = ?, acked_mono_ns = ?, ack_via = ?"
                    " WHERE event_id = ? AND acked_at IS NULL",
                    (moment, time.monotonic_ns(), via, event_id),
                )
                newly.append(cursor.rowcount > 0)
            self._db.execute("COMMIT")
            return newly

        try:
            newly = self._write(f"record {len(acks)} ack(s)", update_all)
        except JournalFull:
            return self._delete_acked(acks, moment)
        return [self.get(event_id) if new else None for (event_id, _), new in zip(acks, newly, strict=True)]

    def _delete_acked(self, acks: list[tuple[str, str]], moment: str) -> list[JournalRecord | None]:
        """No room to mark events acknowledged: delete them instead. They are at the centre, and a
        journal full of unacknowledged events has nothing else to free (marking needs room, deleting
        frees it). Returns the records as marking them would have; they are no longer stored."""

        def delete_all() -> list[JournalRecord | None]:
            deleted: list[JournalRecord | None] = []
            self._db.execute("BEGIN")
            for event_id, via in acks:
                record = self.get(event_id)
                if record is None or record.acknowledged:
                    deleted.append(None)
                    continue
                self._db.execute("DELETE FROM events WHERE event_id = ?", (event_id,))
                deleted.append(
                    dataclasses.replace(record, acked_at=moment, acked_mono_ns=time.monotonic_ns(), ack_via=via)
                )
            self._db.execute("COMMIT")
            return deleted

        return self._write(f"delete {len(acks)} acknowledged event(s) to make room", delete_all)

    def get(self, event_id: str) -> JournalRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM events WHERE event_id = ?", (event_id,)).fetchone()
        return _record(row) if row else None

    def unacknowledged(self) -> list[Event]:
        """Every event the centre has not confirmed, alarms first, oldest first within a priority."""
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM events WHERE acked_at IS NULL ORDER BY priority, seq"
        ).fetchall()
        return [_record(row).event for row in rows]

    def records(self) -> list[JournalRecord]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM events ORDER BY seq").fetchall()
        return [_record(row) for row in rows]

    def recent(self, limit: int) -> list[JournalRecord]:
        """The `limit` most recent events still in the journal, oldest first."""
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM events ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [_record(row) for row in reversed(rows)]

    def save_window(self, window_id: str, deadline: datetime, data: dict[str, Any]) -> None:
        """A rule's open window (a fall's cancel window, a check-in): it survives a restart."""
        encoded = json.dumps(data, ensure_ascii=False)
        self._write(
            f"save window {window_id}",
            lambda: self._db.execute(
                "INSERT OR REPLACE INTO windows (id, deadline, data) VALUES (?,?,?)",
                (window_id, deadline.isoformat(), encoded),
            ),
        )

    def delete_window(self, window_id: str) -> None:
        self._write(
            f"close window {window_id}", lambda: self._db.execute("DELETE FROM windows WHERE id = ?", (window_id,))
        )

    def start_sequence_after(self, seq: int) -> None:
        """Number the next event above `seq`: for a journal started over after the old one was lost,
        so that the centre never sees a sequence number twice."""

        def raise_floor() -> None:
            self._db.execute("BEGIN")
            cursor = self._db.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'events'", (seq,))
            if cursor.rowcount == 0:
                self._db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (seq,))
            self._db.execute("COMMIT")

        self._write("raise the sequence floor", raise_floor)

    def last_sequence(self) -> int:
        """The highest sequence number handed out or reserved (the floor), 0 for a new journal;
        events deleted since still count."""
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return int(row[0]) if row else 0

    def take_over(self, records: list[JournalRecord]) -> int:
        """Keep events salvaged from a damaged journal exactly as they were: the same event ids and
        sequence numbers (a resend carries both unchanged, so the centre drops what it has).
        Ids or numbers already here are skipped. Returns how many were added."""

        def insert_all() -> int:
            added = 0
            self._db.execute("BEGIN")
            for record in records:
                cursor = self._db.execute(
                    f"INSERT OR IGNORE INTO events ({_COLUMNS}, priority) VALUES ({_PLACEHOLDERS}, ?)",
                    (*_row(record), int(record.event.priority)),
                )
                added += cursor.rowcount
            self._db.execute("COMMIT")
            return added

        return self._write(f"take over {len(records)} salvaged event(s)", insert_all)

    def correct_times(self, sync: SyncPoint) -> list[Event]:
        """The wall clock has become synchronised: give every event of this boot that carries only its
        monotonic time its true occurred_at (`SyncPoint.correct`), acknowledged or not, in one
        transaction. Ids and sequence numbers do not change; events of earlier boots keep their mark.
        Returns the corrected events (for the outbox to resend them corrected)."""

        def correct_all() -> list[Event]:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM events WHERE time_source = ? AND boot_id = ? ORDER BY seq",
                (TimeSource.MONOTONIC.value, sync.boot_id),
            ).fetchall()
            corrected = [sync.correct(_record(row).event) for row in rows]
            self._db.execute("BEGIN")
            for event in corrected:
                self._db.execute(
                    "UPDATE events SET occurred_at = ?, time_source = ? WHERE event_id = ?",
                    (event.occurred_at.astimezone(UTC).isoformat(), event.time_source.value, event.event_id),
                )
            self._db.execute("COMMIT")
            return corrected

        return self._write("correct the times of events raised before the clock was synchronised", correct_all)

    def mark_delivered(self, event_id: str, via: str, acknowledged: bool) -> bool:
        """Record that a failover path (dc09, sms) carried an event; True the first time for that path.
        (The county centre's ack over MQTT is `mark_acked`.)"""
        moment = datetime.now(UTC).isoformat()
        cursor = self._write(
            f"record the {via} delivery of {event_id}",
            lambda: self._db.execute(
                "INSERT OR IGNORE INTO deliveries (event_id, via, acknowledged, at) VALUES (?,?,?,?)",
                (event_id, via, int(acknowledged), moment),
            ),
        )
        return cursor.rowcount > 0

    def deliveries(self, event_ids: list[str]) -> dict[str, dict[str, bool]]:
        """For each event id that a failover path carried: {path: acknowledged}."""
        found: dict[str, dict[str, bool]] = {}
        for start in range(0, len(event_ids), 500):
            chunk = event_ids[start : start + 500]
            rows = self._db.execute(
                f"SELECT event_id, via, acknowledged FROM deliveries WHERE event_id IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for event_id, via, acknowledged in rows:
                found.setdefault(event_id, {})[via] = bool(acknowledged)
        return found

    def windows(self) -> list[tuple[str, datetime, dict[str, Any]]]:
        rows = self._db.execute("SELECT id, deadline, data FROM windows ORDER BY deadline").fetchall()
        return [(row[0], datetime.fromisoformat(row[1]), json.loads(row[2])) for row in rows]

    def pending_counts(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT priority, COUNT(*) FROM events WHERE acked_at IS NULL GROUP BY priority"
        ).fetchall()
        counts = {"alarm": 0, "fault": 0, "info": 0}
        labels = {0: "alarm", 1: "fault", 2: "info"}
        for priority, count in rows:
            counts[labels[priority]] = count
        return counts

    # -- room -------------------------------------------------------------------------------------

    def _used_bytes(self) -> int:
        page_count = self._db.execute("PRAGMA page_count").fetchone()[0]
        freelist_count = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(page_count - freelist_count) * self._page_size

    def _disk_free(self) -> int | None:
        try:
            return shutil.disk_usage(self.path.parent).free
        except OSError:
            return None

    def _info_limit(self) -> int | None:
        """The bytes info events may fill: the budget less the reserve for alarms and faults."""
        if self.max_bytes is None:
            return None
        return int(self.max_bytes * (1.0 - self.reserve_fraction))

    def _admit_info(self, event: Event, need: int) -> None:
        """Raise JournalFull unless an info event of about `need` bytes leaves the reserve intact;
        delete acknowledged events first if that makes room within the budget."""
        limit = self._info_limit()
        if limit is None and self.min_free_bytes == 0:
            return
        try:
            used = self._used_bytes()
            pruned = 0
            if limit is not None and used + need > limit:
                pruned = self._prune_acked(limit - need)
                used = self._used_bytes()
        except sqlite3.Error as exc:
            raise JournalError(f"cannot write event {event.event_id} to {self.path}: {exc}") from exc
        free = self._disk_free()
        over_budget = limit is not None and used + need > limit
        low_disk = self.min_free_bytes > 0 and free is not None and free - need < self.min_free_bytes
        if not over_budget and not low_disk:
            return
        reasons = []
        if over_budget:
            assert self.max_bytes is not None and limit is not None
            reasons.append(
                f"{used} of {self.max_bytes} bytes used, the last {self.max_bytes - limit} kept for alarms and faults"
            )
        if low_disk:
            reasons.append(f"{free} bytes free on disk, the last {self.min_free_bytes} kept for alarms and faults")
        if pruned:
            reasons.append(f"{pruned} acknowledged event(s) deleted, not enough")
        self._count_refused(event.event_id)
        usage = JournalUsage(used, self.max_bytes, free, self._info_refused)
        raise JournalFull(
            f"info event {event.event_id} ({event.type.value}) was not kept: the journal {self.path} is within"
            f" its reserve ({'; '.join(reasons)}): free disk space or raise the journal's max size",
            usage,
        )

    def _prune_acked(self, target_used: int) -> int:
        """Delete acknowledged events, oldest first, in bounded batches, until at most `target_used`
        bytes are in use, none is left, or the batches for one call are spent. Returns how many."""
        deleted = 0
        for _ in range(_PRUNE_MAX_BATCHES):
            if self._used_bytes() <= target_used:
                break
            try:
                cursor = self._db.execute(
                    "DELETE FROM events WHERE seq IN"
                    " (SELECT seq FROM events WHERE acked_at IS NOT NULL ORDER BY seq LIMIT ?)",
                    (_PRUNE_BATCH,),
                )
            except sqlite3.Error:
                self._rollback()
                break  # the write that needed the room reports the failure
            if cursor.rowcount <= 0:
                break
            deleted += cursor.rowcount
        if deleted:
            with contextlib.suppress(sqlite3.Error):  # failover records of events no longer kept
                self._db.execute("DELETE FROM deliveries WHERE event_id NOT IN (SELECT event_id FROM events)")
        return deleted

    def _write(self, what: str, write: Callable[[], T]) -> T:
        """Run `write` (one transaction); roll back on failure. Out of room, delete acknowledged events
        and try once more; then raise JournalFull. Any other failure raises JournalError."""
        failure: sqlite3.Error
        try:
            return write()
        except sqlite3.Error as exc:
            self._rollback()
            if not _is_full_error(exc, self.path):
                raise JournalError(f"cannot {what} in {self.path}: {exc}") from exc
            failure = exc
        try:
            used, limit = self._used_bytes(), self._info_limit()
            # Restore the reserve if it is spent; else make a little room (a full disk, not the budget).
            target = limit if limit is not None and used > limit else used - _PRUNE_HEADROOM_PAGES * self._page_size
            pruned = self._prune_acked(target)
        except sqlite3.Error:
            pruned = 0
        if pruned:
            try:
                return write()
            except sqlite3.Error as exc:
                self._rollback()
                if not _is_full_error(exc, self.path):
                    raise JournalError(f"cannot {what} in {self.path}: {exc}") from exc
                failure = exc
        usage = self._usage_or_none()
        numbers = ""
        if usage is not None:
            budget = f" of {usage.max_bytes}" if usage.max_bytes is not None else ""
            free = f"; {usage.disk_free_bytes} bytes free on disk" if usage.disk_free_bytes is not None else ""
            numbers = f" ({usage.used_bytes}{budget} bytes used{free})"
        raise JournalFull(
            f"cannot {what} in {self.path}: {failure}{numbers}: free disk space or raise the journal's max size",
            usage,
        ) from failure

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _usage_or_none(self) -> JournalUsage | None:
        try:
            return self.usage()
        except JournalError:
            return None

    def _count_refused(self, event_id: str) -> None:
        """Count an info event not kept, once however often it is retried (ids remembered: bounded)."""
        if event_id in self._refused:
            return
        self._info_refused += 1
        self._refused[event_id] = None
        if len(self._refused) > _REFUSED_IDS_KEPT:
            del self._refused[next(iter(self._refused))]


def _estimated_bytes(event: Event, details: str) -> int:
    """About how many bytes an event takes in the table and its indexes (an over-estimate)."""
    text = (event.event_id, event.type.value, event.hub_id, event.household_id, event.county, event.device_id or "")
    return sum(len(t.encode()) for t in text) + len(details.encode()) + len(event.event_id) + 200


def _is_full_error(exc: BaseException, path: Path) -> bool:
    """Whether a failed write failed for want of room: SQLITE_FULL (the budget, or ENOSPC), an OS error
    ENOSPC/EFBIG/EDQUOT, or an I/O error on a file at the file size limit or on a nearly full disk
    (SQLite reports EFBIG and EDQUOT as plain I/O errors)."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if (code is not None and code & 0xFF == sqlite3.SQLITE_FULL) or "database or disk is full" in str(exc):
        return True
    if (code is not None and code & 0xFF == sqlite3.SQLITE_IOERR) or "disk I/O error" in str(exc):
        return _storage_exhausted(path)
    return False


def _storage_exhausted(path: Path) -> bool:
    try:
        if shutil.disk_usage(path.parent).free < _NEARLY_FULL_DISK:
            return True
    except OSError:
        pass
    limit = _file_size_limit()
    if limit is None:
        return False
    for name in (str(path), f"{path}-wal", f"{path}-journal"):
        try:
            if os.stat(name).st_size + _MAX_WRITE >= limit:
                return True
        except OSError:
            continue
    return False


def _file_size_limit() -> int | None:
    """This process's file size limit (RLIMIT_FSIZE), None if unlimited."""
    try:
        import resource
    except ImportError:  # not on Unix
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY or soft < 0 else soft


def _add_columns(db: sqlite3.Connection) -> None:
    """Give a journal file from an earlier release the columns added since (its rows keep the defaults:
    their wall times were taken as trusted then)."""
    present = {row[1] for row in db.execute("PRAGMA table_info(events)")}
    for name, definition in _ADDED_COLUMNS.items():
        if name not in present:
            db.execute(f"ALTER TABLE events ADD COLUMN {name} {definition}")


def _row(record: JournalRecord) -> tuple[Any, ...]:
    """A record as the columns `_COLUMNS` name, in order: the inverse of `_record`."""
    event = record.event
    return (
        event.seq,
        event.event_id,
        event.type.value,
        event.hub_id,
        event.household_id,
        event.county,
        event.device_id,
        event.device_counter,
        event.occurred_at.astimezone(UTC).isoformat(),
        event.observed_mono_ns,
        record.alerted_mono_ns,
        record.journaled_mono_ns,
        json.dumps(event.details, ensure_ascii=False, sort_keys=True),
        record.acked_at,
        record.acked_mono_ns,
        record.ack_via,
        event.boot_id,
        event.time_source.value,
    )


def _record(row: tuple[Any, ...]) -> JournalRecord:
    (
        seq,
        event_id,
        type_,
        hub_id,
        household_id,
        county,
        device_id,
        device_counter,
        occurred_at,
        observed_mono_ns,
        alerted_mono_ns,
        journaled_mono_ns,
        details,
        acked_at,
        acked_mono_ns,
        ack_via,
        boot_id,
        time_source,
    ) = row
    event = Event(
        type=EventType(type_),
        hub_id=hub_id,
        household_id=household_id,
        county=county,
        device_id=device_id,
        event_id=event_id,
        seq=seq,
        occurred_at=datetime.fromisoformat(occurred_at),
        observed_mono_ns=observed_mono_ns,
        device_counter=device_counter,
        details=json.loads(details),
        boot_id=boot_id,
        time_source=TimeSource(time_source),
    )
    return JournalRecord(event, alerted_mono_ns, journaled_mono_ns, acked_at, acked_mono_ns, ack_via)


class AsyncJournal:
    """The journal for asyncio code: every call runs on one dedicated thread, in order.

    Takes the same options as `Journal`."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int | None = None,
        reserve_fraction: float = 0.1,
        min_free_bytes: int = 0,
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._acks: list[tuple[str, str, asyncio.Future[JournalRecord | None]]] = []
        self._ack_flusher: asyncio.Task[None] | None = None
        try:
            self._journal = self._executor.submit(
                functools.partial(
                    Journal,
                    path,
                    max_bytes=max_bytes,
                    reserve_fraction=reserve_fraction,
                    min_free_bytes=min_free_bytes,
                )
            ).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    @property
    def path(self) -> Path:
        return self._journal.path

    @property
    def max_bytes(self) -> int | None:
        return self._journal.max_bytes

    @property
    def reserve_fraction(self) -> float:
        return self._journal.reserve_fraction

    @property
    def min_free_bytes(self) -> int:
        return self._journal.min_free_bytes

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def append(self, event: Event, alerted_mono_ns: int | None = None) -> Event:
        return await self._run(self._journal.append, event, alerted_mono_ns)

    async def mark_acked(self, event_id: str, via: str) -> JournalRecord | None:
        """Acks arriving together are committed together (group commit): one fsync for a batch."""
        future: asyncio.Future[JournalRecord | None] = asyncio.get_running_loop().create_future()
        self._acks.append((event_id, via, future))
        if self._ack_flusher is None or self._ack_flusher.done():
            self._ack_flusher = asyncio.get_running_loop().create_task(self._flush_acks())
        return await future

    async def _flush_acks(self) -> None:
        while self._acks:
            batch, self._acks = self._acks, []
            try:
                records = await self._run(self._journal.mark_acked_many, [(i, v) for i, v, _ in batch])
            except Exception as exc:  # whatever it is, every waiting ack hears it (none waits for ever)
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, _, future), record in zip(batch, records, strict=True):
                if not future.done():
                    future.set_result(record)

    async def unacknowledged(self) -> list[Event]:
        return await self._run(self._journal.unacknowledged)

    async def pending_counts(self) -> dict[str, int]:
        return await self._run(self._journal.pending_counts)

    async def usage(self) -> JournalUsage:
        return await self._run(self._journal.usage)

    async def save_window(self, window_id: str, deadline: datetime, data: dict[str, Any]) -> None:
        await self._run(self._journal.save_window, window_id, deadline, data)

    async def delete_window(self, window_id: str) -> None:
        await self._run(self._journal.delete_window, window_id)

    async def windows(self) -> list[tuple[str, datetime, dict[str, Any]]]:
        return await self._run(self._journal.windows)

    async def start_sequence_after(self, seq: int) -> None:
        await self._run(self._journal.start_sequence_after, seq)

    async def mark_delivered(self, event_id: str, via: str, acknowledged: bool) -> bool:
        return await self._run(self._journal.mark_delivered, event_id, via, acknowledged)

    async def deliveries(self, event_ids: list[str]) -> dict[str, dict[str, bool]]:
        return await self._run(self._journal.deliveries, event_ids)

    async def correct_times(self, sync: SyncPoint) -> list[Event]:
        return await self._run(self._journal.correct_times, sync)

    async def recent(self, limit: int) -> list[JournalRecord]:
        return await self._run(self._journal.recent, limit)

    def close(self) -> None:
        self._executor.submit(self._journal.close).result()
        self._executor.shutdown(wait=True)
