"""The hub's journal: one SQLite file (WAL mode) holding every event and whether the centre has it.

It is the only writer of the hub's durable state. An event is committed with a full sync
(`synchronous=FULL`: the WAL is fsynced on every commit) before any uplink may send it; its
`seq` is the per-hub sequence number (SQLite AUTOINCREMENT: strictly increasing, never reused).
After a crash or a restart `unacknowledged()` returns every event the centre has not confirmed.

`Journal` is synchronous and owned by one thread; `AsyncJournal` runs it on a dedicated worker
thread so that fsync never stalls the event loop (and so never delays a siren).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from hub.model import Event, EventType

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
    ack_via           TEXT
);
CREATE INDEX IF NOT EXISTS events_unacked ON events (priority, seq) WHERE acked_at IS NULL;
CREATE TABLE IF NOT EXISTS windows (
    id        TEXT PRIMARY KEY,
    deadline  TEXT NOT NULL,
    data      TEXT NOT NULL
);
"""

_COLUMNS = (
    "seq, event_id, type, hub_id, household_id, county, device_id, device_counter, occurred_at,"
    " observed_mono_ns, alerted_mono_ns, journaled_mono_ns, details, acked_at, acked_mono_ns, ack_via"
)


class JournalError(RuntimeError):
    """The journal file cannot be opened or written; the message says which file and why."""


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
    def __init__(self, path: Path) -> None:
        self.path = path
        db = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            if db is not None:
                db.close()
            raise JournalError(f"cannot open the journal {path}: {exc}") from exc
        self._db = db

    def close(self) -> None:
        self._db.close()

    def append(self, event: Event, alerted_mono_ns: int | None = None) -> Event:
        """Commit `event` durably and return it with its sequence number.

        Appending an event id that is already journaled returns the stored event unchanged.
        """
        try:
            existing = self.get(event.event_id)
            if existing is not None:
                return existing.event
            cursor = self._db.execute(
                "INSERT INTO events (event_id, type, priority, hub_id, household_id, county, device_id,"
                " device_counter, occurred_at, observed_mono_ns, alerted_mono_ns, journaled_mono_ns, details)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
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
                    json.dumps(event.details, ensure_ascii=False, sort_keys=True),
                ),
            )
        except sqlite3.Error as exc:
            raise JournalError(f"cannot write event {event.event_id} to {self.path}: {exc}") from exc
        seq = cursor.lastrowid
        assert seq is not None
        return event.with_seq(seq)

    def mark_acked(self, event_id: str, via: str, at: datetime | None = None) -> JournalRecord | None:
        """Record the centre's acknowledgement. Returns the record if this ack was the first, else None."""
        moment = (at or datetime.now(UTC)).astimezone(UTC).isoformat()
        try:
            cursor = self._db.execute(
                "UPDATE events SET acked_at = ?, acked_mono_ns = ?, ack_via = ?"
                " WHERE event_id = ? AND acked_at IS NULL",
                (moment, time.monotonic_ns(), via, event_id),
            )
        except sqlite3.Error as exc:
            raise JournalError(f"cannot record the ack of {event_id} in {self.path}: {exc}") from exc
        if cursor.rowcount == 0:
            return None
        return self.get(event_id)

    def mark_acked_many(self, acks: list[tuple[str, str]]) -> list[JournalRecord | None]:
        """Several acks in one transaction (one fsync): a drain of thousands of acks keeps up."""
        moment = datetime.now(UTC).isoformat()
        newly: list[bool] = []
        try:
            self._db.execute("BEGIN")
            for event_id, via in acks:
                cursor = self._db.execute(
                    "UPDATE events SET acked_at = ?, acked_mono_ns = ?, ack_via = ?"
                    " WHERE event_id = ? AND acked_at IS NULL",
                    (moment, time.monotonic_ns(), via, event_id),
                )
                newly.append(cursor.rowcount > 0)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise JournalError(f"cannot record {len(acks)} ack(s) in {self.path}: {exc}") from exc
        return [self.get(event_id) if new else None for (event_id, _), new in zip(acks, newly, strict=True)]

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

    def save_window(self, window_id: str, deadline: datetime, data: dict[str, Any]) -> None:
        """A rule's open window (a fall's cancel window, a check-in): it survives a restart."""
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO windows (id, deadline, data) VALUES (?,?,?)",
                (window_id, deadline.isoformat(), json.dumps(data, ensure_ascii=False)),
            )
        except sqlite3.Error as exc:
            raise JournalError(f"cannot save window {window_id} in {self.path}: {exc}") from exc

    def delete_window(self, window_id: str) -> None:
        try:
            self._db.execute("DELETE FROM windows WHERE id = ?", (window_id,))
        except sqlite3.Error as exc:
            raise JournalError(f"cannot close window {window_id} in {self.path}: {exc}") from exc

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
    )
    return JournalRecord(event, alerted_mono_ns, journaled_mono_ns, acked_at, acked_mono_ns, ack_via)


T = TypeVar("T")


class AsyncJournal:
    """The journal for asyncio code: every call runs on one dedicated thread, in order."""

    def __init__(self, path: Path) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._acks: list[tuple[str, str, asyncio.Future[JournalRecord | None]]] = []
        self._ack_flusher: asyncio.Task[None] | None = None
        try:
            self._journal = self._executor.submit(Journal, path).result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    @property
    def path(self) -> Path:
        return self._journal.path

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
            except JournalError as exc:
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

    async def save_window(self, window_id: str, deadline: datetime, data: dict[str, Any]) -> None:
        await self._run(self._journal.save_window, window_id, deadline, data)

    async def delete_window(self, window_id: str) -> None:
        await self._run(self._journal.delete_window, window_id)

    async def windows(self) -> list[tuple[str, datetime, dict[str, Any]]]:
        return await self._run(self._journal.windows)

    def close(self) -> None:
        self._executor.submit(self._journal.close).result()
        self._executor.shutdown(wait=True)
