"""A damaged journal: finding the damage at start, and saving what can still be read from it.

`find_damage` runs SQLite's `PRAGMA quick_check` on the journal before the hub opens it (a file
whose header still opens can have broken pages in the middle that only a query would hit, maybe
in the middle of an alarm). `salvage` reads what it can from a damaged file, read-only: every
event row it can reach, walking the table by sequence number and stepping over unreadable pages;
the unacknowledged ones are carried into a new journal with their own event ids and sequence
numbers, so they are still sent and the centre drops any it already has, together with what the
failover paths recorded about them (an alarm a DC-09 receiver acknowledged is not escalated again)
and the rules' open windows (a fall's cancel window still ends in an alarm). What could not be
read is said, in sequence numbers, for the fault the hub reports.

`recover` does it so that a crash or power cut at any moment loses nothing: the new journal is
written whole beside the damaged one (`journal.sqlite3.recovering-partial`, renamed
`journal.sqlite3.recovering` once complete) before the damaged file is moved aside (`set_aside`,
kept for a person) and the new one renamed into its place. `finish_interrupted`, which the hub
runs first at every start, completes a recovery cut short after the new journal was whole, or
throws away a half-written one (the damaged file is then untouched, and is recovered again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from hub.files import fsync_directory
from hub.journal import _ADDED_COLUMNS, _COLUMNS, Journal, JournalError, JournalRecord, _record

T = TypeVar("T")
log = logging.getLogger(__name__)

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
    readable. `error`: the file could not be read at all, and why. `deliveries`: (event id, path,
    acknowledged) of the unacknowledged events a failover path carried; `windows`: the rules' open
    windows (id, deadline, data as stored); both empty when their pages cannot be read."""

    unacknowledged: list[JournalRecord] = field(default_factory=list)
    rows_read: int = 0
    last_seq: int | None = None
    unreadable: list[tuple[int, int]] = field(default_factory=list)
    lost_unacknowledged: list[int] = field(default_factory=list)
    error: str | None = None
    deliveries: list[tuple[str, str, bool]] = field(default_factory=list)
    windows: list[tuple[str, str, str]] = field(default_factory=list)

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
    the new name of the database file (never one a file set aside before already has)."""
    stamp, n = int(time.time()), 0
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    while any(aside.with_name(aside.name + suffix).exists() for suffix in _SQLITE_SUFFIXES):
        n += 1
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    _move(path, aside)
    return aside


def recover(path: Path) -> tuple[Path, Salvage]:
    """Replace the damaged journal at `path` by a new one with what can be read from it (see the
    module's text: a crash at any point loses nothing). Returns where the damaged file went, and
    what was saved."""
    found = salvage(path)
    partial = _partial(path)
    _remove(partial)
    _write_new(partial, found)
    _move(partial, recovering(path))  # whole from here on: finish_interrupted puts it in place
    fsync_directory(path.parent)
    aside = _put_in_place(path)
    assert aside is not None  # the damaged file was there: salvage read it
    return aside, found


def recovering(path: Path) -> Path:
    """Where `recover` keeps the new journal, whole, before it takes the damaged one's place."""
    return path.with_name(path.name + ".recovering")


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".recovering-partial")


def _put_in_place(path: Path) -> Path | None:
    """The whole new journal in the damaged one's place; returns where the damaged one went (None:
    a crash had already moved it aside)."""
    aside = None
    if any(path.with_name(path.name + suffix).exists() for suffix in _SQLITE_SUFFIXES):
        aside = set_aside(path)  # all of the damaged file, its WAL too: none is left beside the new one
    _move(recovering(path), path)
    fsync_directory(path.parent)
    return aside


def finish_interrupted(path: Path) -> str | None:
    """Complete a `recover` that a crash cut short, or undo what it had begun. Returns what was
    completed, for the fault the hub reports (None: nothing to report; a half-written new journal
    is only removed, and the damaged file, untouched, is recovered again). Run before anything
    opens the journal."""
    partial = _partial(path)
    if any(partial.with_name(partial.name + suffix).exists() for suffix in _SQLITE_SUFFIXES):
        log.warning("a half-written %s was removed; the journal is checked and recovered again", partial.name)
        _remove(partial)
    if not recovering(path).exists():
        return None
    _put_in_place(path)
    return (
        f"a restart cut its recovery short; the recovered journal ({recovering(path).name}) was put in place,"
        " with the unacknowledged events read from the damaged one"
    )


def carry_over(aside: Path, path: Path) -> Salvage:
    """Salvage what can be read from the damaged journal `aside` into the journal at `path`: its
    unacknowledged events with their deliveries, the rules' windows, and a sequence floor at its
    last number. Returns what was saved."""
    found = salvage(aside)
    _write_new(path, found)
    return found


def carry_into(journal: Journal, found: Salvage) -> int:
    """Put what `salvage` found into `journal`: the unacknowledged events as they were (ids and
    sequence numbers already there are skipped), what the failover paths recorded about them and
    the open windows. Returns how many events were added."""
    added = journal.take_over(found.unacknowledged)
    for event_id, via, acknowledged in found.deliveries:
        journal.mark_delivered(event_id, via, acknowledged)
    for window_id, deadline, data in found.windows:
        try:
            parsed = datetime.fromisoformat(deadline), json.loads(data)
        except (ValueError, TypeError):  # a damaged row: that window is lost, the others are kept
            continue
        journal.save_window(window_id, *parsed)
    return added


def _write_new(path: Path, found: Salvage) -> None:
    journal = Journal(path)
    try:
        carry_into(journal, found)
        if found.last_seq is not None:
            journal.start_sequence_after(found.last_seq)
    finally:
        journal.close()  # the last connection: checkpointed, the WAL gone, everything in the one file


_SQLITE_SUFFIXES = ("", "-wal", "-shm")


def _move(source: Path, dest: Path) -> None:
    """Rename a SQLite file with its WAL and index; the main file last (its WAL is never left
    behind without it)."""
    for suffix in ("-wal", "-shm", ""):
        part = source.with_name(source.name + suffix)
        if part.exists():
            part.replace(dest.with_name(dest.name + suffix))


def _remove(path: Path) -> None:
    for suffix in _SQLITE_SUFFIXES:
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def salvage(path: Path) -> Salvage:
    """Read what can be read from a damaged journal, without changing the file."""
    try:
        with read_only(path) as db:
            db.execute("PRAGMA writable_schema = ON")  # a file cut short: read the pages it still has
            db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # a destroyed header fails here
            indexed = _attempt(lambda: _unacknowledged_seqs(db)) or []
            known_last = _known_last(db)
            rows, unreadable = _scan(db, _columns(db), known_last or _NO_BOUND)
            records = [record for record in map(_decoded, rows) if record is not None]
            pending = [record for record in records if not record.acknowledged]
            deliveries = _attempt(lambda: _deliveries(db, {r.event.event_id for r in pending})) or []
            windows = _attempt(lambda: db.execute("SELECT id, deadline, data FROM windows").fetchall()) or []
    except sqlite3.Error as exc:
        return Salvage(error=str(exc))
    read = {record.event.seq for record in records}
    last = max([known_last or 0, *(row[0] for row in rows), *indexed]) or None
    return Salvage(
        unacknowledged=pending,
        rows_read=len(rows),
        last_seq=last,
        unreadable=[(first, end if end != _NO_BOUND else max(first, last or 0)) for first, end in unreadable],
        lost_unacknowledged=sorted(seq for seq in indexed if seq not in read),
        deliveries=deliveries,
        windows=[(str(w), str(d), str(x)) for w, d, x in windows],
    )


def _deliveries(db: sqlite3.Connection, event_ids: set[str]) -> list[tuple[str, str, bool]]:
    rows = db.execute("SELECT event_id, via, acknowledged FROM deliveries").fetchall()
    return [(str(e), str(via), bool(acked)) for e, via, acked in rows if e in event_ids]


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
