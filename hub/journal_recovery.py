"""A damaged journal: finding the damage at start, and saving what can still be read from it.

`find_damage` runs SQLite's `PRAGMA quick_check` on the journal before the hub opens it (a file
whose header still opens can have broken pages in the middle that only a query would hit, maybe
in the middle of an alarm). `set_aside` moves a damaged file (with its WAL) out of the way, kept
for a person to look at. `salvage` reads what it can from the file set aside, read-only: every
event row it can reach, walking the table by sequence number and stepping over unreadable pages;
the unacknowledged ones are carried into the new journal by `carry_over` with their own event
ids and sequence numbers, so they are still sent and the centre drops any it already has. What
could not be read is said, in sequence numbers, for the fault the hub reports.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hub.journal import _ADDED_COLUMNS, _COLUMNS, Journal, JournalError, JournalRecord, _record

T = TypeVar("T")

# Problems quick_check lists at most (it stops there: a badly damaged file is not read whole).
_CHECK_LIMIT = 5
# A sequence number above every real one, for a journal whose highest number cannot be read.
_NO_BOUND = 1 << 62
# Unreadable sequence ranges named in the fault at most.
_RANGES_REPORTED = 10


class JournalDamaged(JournalError):
    """The journal opens but SQLite's own check finds it damaged."""


@dataclass(frozen=True)
class Salvage:
    """What could be read from a damaged journal.

    `unacknowledged`: events the centre had not confirmed, exactly as journaled. `rows_read`: every
    event row read (acknowledged ones are at the centre and not carried over). `last_seq`: the
    highest sequence number the journal had handed out, None if unreadable. `unreadable`: ranges of
    sequence numbers (first, last) whose rows could not be read (some may have been deleted before).
    `lost_unacknowledged`: sequence numbers of unacknowledged events known (from the index) but not
    readable. `error`: the file could not be read at all, and why."""

    unacknowledged: list[JournalRecord] = field(default_factory=list)
    rows_read: int = 0
    last_seq: int | None = None
    unreadable: list[tuple[int, int]] = field(default_factory=list)
    lost_unacknowledged: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def alarms(self) -> int:
        return sum(1 for record in self.unacknowledged if record.event.type.is_alarm)

    def summary(self) -> str:
        """One sentence for a person: what was recovered and what was lost."""
        if self.error is not None:
            return f"nothing could be read from it ({self.error}); events not yet acknowledged then are lost"
        parts = [
            f"recovered {len(self.unacknowledged)} unacknowledged event(s) ({self.alarms} alarm(s)) with their"
            " ids and sequence numbers"
        ]
        if self.lost_unacknowledged:
            parts.append(
                f"{len(self.lost_unacknowledged)} unacknowledged event(s) could not be read"
                f" (seq {', '.join(map(str, self.lost_unacknowledged[:_RANGES_REPORTED]))})"
            )
        if self.unreadable:
            ranges = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in self.unreadable[:_RANGES_REPORTED])
            parts.append(f"rows with seq {ranges} could not be read (those unacknowledged are lost)")
        if not self.lost_unacknowledged and not self.unreadable:
            parts.append("nothing else was lost")
        if self.last_seq is not None:
            parts.append(f"the last sequence number was {self.last_seq}")
        return "; ".join(parts)

    def details(self) -> dict[str, Any]:
        """The same for the centre, as fields of the fault event."""
        return {
            "recovered": len(self.unacknowledged),
            "recovered_alarms": self.alarms,
            "lost_unacknowledged": len(self.lost_unacknowledged),
            "unreadable_seqs": [list(pair) for pair in self.unreadable[:_RANGES_REPORTED]],
            "last_seq": self.last_seq,
        }


def is_corruption(exc: BaseException | None) -> bool:
    """Whether SQLite says a file itself is damaged (not a database, malformed), as opposed to
    locked, forbidden or failing for now."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or (
        isinstance(exc, sqlite3.DatabaseError) and ("malformed" in str(exc) or "not a database" in str(exc))
    )


def find_damage(path: Path) -> str | None:
    """What SQLite's quick check finds wrong with the journal at `path`; None when it is sound,
    absent, or cannot be checked now (locked, forbidden: opening it will say so)."""
    if not path.is_file():
        return None
    try:
        with read_only(path) as db:
            problems = [row[0] for row in db.execute(f"PRAGMA quick_check({_CHECK_LIMIT})").fetchall()]
    except sqlite3.Error as exc:
        return str(exc) if is_corruption(exc) else None
    if problems == ["ok"]:
        return None
    return "; ".join(" ".join(str(p).split()) for p in problems)


def set_aside(path: Path) -> Path:
    """Move a damaged journal and its WAL and index out of the way (kept for a person); returns
    the new name of the database file."""
    aside = path.with_name(f"{path.name}.damaged-{int(time.time())}")
    for suffix in ("", "-wal", "-shm"):
        damaged = path.with_name(path.name + suffix)
        if damaged.exists():
            damaged.replace(aside.with_name(aside.name + suffix))
    return aside


def carry_over(aside: Path, path: Path) -> Salvage:
    """Salvage what can be read from the damaged journal `aside` into the new journal at `path`:
    its unacknowledged events, and a sequence floor at its last number. Returns what was saved."""
    found = salvage(aside)
    journal = Journal(path)
    try:
        journal.take_over(found.unacknowledged)
        if found.last_seq is not None:
            journal.start_sequence_after(found.last_seq)
    finally:
        journal.close()
    return found


def salvage(path: Path) -> Salvage:
    """Read what can be read from a damaged journal, without changing the file."""
    try:
        with read_only(path) as db:
            db.execute("PRAGMA writable_schema = ON")  # a file cut short: read the pages it still has
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # a destroyed header fails here
            indexed = _attempt(lambda: _unacknowledged_seqs(db)) or []
            known_last = _known_last(db)
            rows, unreadable = _scan(db, _columns(db), known_last or _NO_BOUND)
    except sqlite3.Error as exc:
        return Salvage(error=str(exc))
    records = [record for record in map(_decoded, rows) if record is not None]
    read = {record.event.seq for record in records}
    last = max([known_last or 0, *(row[0] for row in rows), *indexed]) or None
    return Salvage(
        unacknowledged=[record for record in records if not record.acknowledged],
        rows_read=len(rows),
        last_seq=last,
        unreadable=[(first, end if end != _NO_BOUND else max(first, last or 0)) for first, end in unreadable],
        lost_unacknowledged=sorted(seq for seq in indexed if seq not in read),
    )


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A SQLite file opened read-only, left as it was found: the empty WAL and its index that SQLite
    creates to read a WAL-mode file are removed again when no one else is writing it."""
    wal, index = path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")
    made = [p for p in (wal, index) if not p.exists()]
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        yield db
    finally:
        db.close()
        with contextlib.suppress(OSError):
            if wal in made and wal.stat().st_size == 0:
                for created in made:
                    created.unlink(missing_ok=True)


def _attempt(read: Callable[[], T]) -> T | None:
    try:
        return read()
    except sqlite3.DatabaseError:
        return None


def _unacknowledged_seqs(db: sqlite3.Connection) -> list[int]:
    """The sequence numbers the unacknowledged-events index names (it lives in its own pages)."""
    rows = db.execute("SELECT seq FROM events INDEXED BY events_unacked WHERE acked_at IS NULL").fetchall()
    return [int(row[0]) for row in rows]


def _known_last(db: sqlite3.Connection) -> int | None:
    """The highest number handed out, as the journal recorded it (None: unreadable)."""
    floor = _attempt(lambda: db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone())
    top = _attempt(lambda: db.execute("SELECT max(seq) FROM events").fetchone())
    known = [int(row[0]) for row in (floor, top) if row is not None and row[0] is not None]
    return max(known) if known else None


def _columns(db: sqlite3.Connection) -> str:
    """`_COLUMNS` for this file: a journal from an earlier release lacks the columns added since
    (read as their defaults; a read-only file cannot be given them)."""
    present = {row[1] for row in _attempt(lambda: db.execute("PRAGMA table_info(events)").fetchall()) or []}
    names = [name.strip() for name in _COLUMNS.split(",")]
    if not present:
        return _COLUMNS
    return ", ".join(name if name in present else f"{_default(name)} AS {name}" for name in names)


def _default(column: str) -> str:
    found = re.search(r"DEFAULT (\S+)", _ADDED_COLUMNS.get(column, ""))
    return found.group(1) if found else "NULL"


def _scan(db: sqlite3.Connection, columns: str, high: int) -> tuple[list[tuple[Any, ...]], list[tuple[int, int]]]:
    """Every event row that can be read, by sequence number, stepping over unreadable pages; and
    the ranges of numbers stepped over (first, last)."""
    rows: list[tuple[Any, ...]] = []
    unreadable: list[tuple[int, int]] = []
    after, gap_from = 0, None
    while True:
        try:
            for row in db.execute(f"SELECT {columns} FROM events WHERE seq > ? ORDER BY seq", (after,)):
                if gap_from is not None:
                    unreadable.append((gap_from, row[0] - 1))
                    gap_from = None
                rows.append(row)
                after = row[0]
            break
        except sqlite3.DatabaseError:
            gap_from = gap_from or after + 1
            resume = _resume_after(db, columns, after, high)
            if resume is None:
                break
            after = resume
    if gap_from is not None:
        unreadable.append((gap_from, high))
    return rows, unreadable


def _resume_after(db: sqlite3.Connection, columns: str, after: int, high: int) -> int | None:
    """The lowest number past `after` from which the table can be read again (found by doubling the
    step, then halving back); None if nothing up to `high` can be."""
    step = 1
    while not _readable_after(db, columns, after + step):
        if after + step >= high:
            return None
        step = min(step * 2, high - after)
    bad, good = after, after + step
    while good - bad > 1:
        middle = (bad + good) // 2
        if _readable_after(db, columns, middle):
            good = middle
        else:
            bad = middle
    return good


def _readable_after(db: sqlite3.Connection, columns: str, seq: int) -> bool:
    try:
        db.execute(f"SELECT {columns} FROM events WHERE seq > ? ORDER BY seq LIMIT 1", (seq,)).fetchall()
    except sqlite3.DatabaseError:
        return False
    return True


def _decoded(row: tuple[Any, ...]) -> JournalRecord | None:
    """A row as a record, or None if what was read is not a valid event (a damaged row)."""
    try:
        return _record(row)
    except (ValueError, TypeError, KeyError):
        return None
