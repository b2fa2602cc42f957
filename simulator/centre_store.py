"""The monitoring centre's records: events (one row per event id), hubs (state, last heartbeat,
when each counts as gone) and the centre's own alarms about hubs (`hub.offline`, `hub.online`).

Two engines behind one class: SQLite (a file path: the default, WAL, fsync on commit; several
workers may share the file) and PostgreSQL (a `postgresql://` URL: what a county runs, and what
several centre machines share). The SQL is the same for both (SQLite ≥ 3.35 and PostgreSQL both
have `ON CONFLICT … RETURNING`); only the placeholder differs. A PostgreSQL connection lost to a
restart or a failover is made again at the next transaction; the one it broke is refused whole.

Writes come in groups (`write`): everything a centre worker received while its last commit ran
is committed in one transaction, so one fsync serves a whole storm of alarms (group commit).
Each message is its own savepoint: a message that cannot be stored is rolled back alone, and is
then not acknowledged (its hub sends it again), while the rest of the group is committed.

Offline supervision lives here too because several workers share it: `sweep` claims, in one
atomic UPDATE, every hub past its deadline (last will + grace, or 3 missed heartbeats), so exactly
one worker raises each `hub.offline` alarm.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.model import iso_now

MISSED_HEARTBEATS = 3  # a hub silent for this many of its heartbeat intervals is offline
CONNECT_TIMEOUT_S = 10  # PostgreSQL: give up a connection attempt after this long

_TABLES = [
    """CREATE TABLE IF NOT EXISTS events (
        event_id               TEXT PRIMARY KEY,
        hub_id                 TEXT NOT NULL,
        county                 TEXT NOT NULL,
        seq                    BIGINT NOT NULL,
        type                   TEXT NOT NULL,
        priority               TEXT NOT NULL,
        device_id              TEXT,
        occurred_at            TEXT NOT NULL,
        first_received_at      TEXT NOT NULL,
        first_received_mono_ns BIGINT NOT NULL,
        received_by            TEXT NOT NULL,
        copies                 INTEGER NOT NULL DEFAULT 1,
        message                TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS events_by_hub ON events (hub_id, seq)",
    """CREATE TABLE IF NOT EXISTS hubs (
        hub_id            TEXT PRIMARY KEY,
        county            TEXT NOT NULL,
        state             TEXT,
        state_at          TEXT,
        last_heartbeat_at TEXT,
        heartbeat         TEXT,
        heartbeat_s       DOUBLE PRECISION,
        offline_after     DOUBLE PRECISION,
        offline_since     TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS hubs_by_deadline ON hubs (offline_after)",
    """CREATE TABLE IF NOT EXISTS centre_alarms (
        alarm_id  TEXT PRIMARY KEY,
        hub_id    TEXT NOT NULL,
        county    TEXT NOT NULL,
        kind      TEXT NOT NULL,
        reason    TEXT NOT NULL,
        raised_at TEXT NOT NULL,
        raised_by TEXT NOT NULL
    )""",
]
# Added by this version to a file an older centre made.
_UPGRADES = [
    ("hubs", "heartbeat_s", "DOUBLE PRECISION"),
    ("hubs", "offline_after", "DOUBLE PRECISION"),
    ("hubs", "offline_since", "TEXT"),
]

_RECORD_EVENT = (
    "INSERT INTO events (event_id, hub_id, county, seq, type, priority, device_id, occurred_at,"
    " first_received_at, first_received_mono_ns, received_by, message)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
    " ON CONFLICT (event_id) DO UPDATE SET copies = events.copies + 1"
    " RETURNING copies, first_received_at"
)


@dataclass(frozen=True)
class Received:
    copies: int
    first_received_at: str

    @property
    def duplicate(self) -> bool:
        return self.copies > 1


@dataclass(frozen=True)
class Unit:
    """One message's worth of writing: an `event`, an `events` batch, a `heartbeat` or a `status`."""

    kind: str
    county: str
    hub_id: str
    body: dict[str, Any]
    retained: bool = False  # a status the broker kept from before this worker subscribed
    received_ns: int = 0  # when the worker read it (CLOCK_MONOTONIC), for its latency log


@dataclass(frozen=True)
class CentreAlarm:
    hub_id: str
    county: str
    kind: str  # hub.offline | hub.online
    reason: str


Outcome = list[Received] | Exception  # per unit: what was stored, or why nothing was


class CentreStore:
    """The centre's database: a SQLite file (`path`) or PostgreSQL (`postgresql://…`).

    Thread-safe (one lock): the centre writes from a worker thread so its event loop never waits
    for a commit."""

    def __init__(
        self, where: Path | str, heartbeat_s: float = 60.0, offline_grace_s: float = 30.0, clock: Any = time.time
    ) -> None:
        """`heartbeat_s` is assumed for hubs whose heartbeats do not say their interval;
        `offline_grace_s` is how long a hub whose last will arrived may take to come back before it
        is offline (a reboot, a district's brief power cut); `clock` gives wall seconds."""
        self.heartbeat_s = heartbeat_s
        self.offline_grace_s = offline_grace_s
        self._clock = clock
        self._lock = threading.Lock()
        text = str(where)
        self._where = text
        self.postgres = text.startswith(("postgresql:", "postgres:"))
        if self.postgres:
            import psycopg

            self._db: Any = psycopg.connect(text, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            self._errors: tuple[type[Exception], ...] = (psycopg.Error,)
        else:
            import sqlite3

            path = Path(text)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._errors = (sqlite3.Error,)
        self._create()

    @property
    def errors(self) -> tuple[type[Exception], ...]:
        """The exceptions that mean "the database refused" (not a bug in the centre)."""
        return self._errors

    # --- plumbing ---------------------------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s") if self.postgres else statement

    def _execute(self, statement: str, params: Sequence[Any] = ()) -> Any:
        return self._db.execute(self._sql(statement), params)

    def _create(self) -> None:
        with self._lock:
            if self.postgres:  # several workers may start at once: one creates, the others wait
                self._execute("SELECT pg_advisory_lock(4242)")
            try:
                for statement in _TABLES:
                    self._execute(statement)
                for table, column, kind in _UPGRADES:
                    if column not in self._columns(table):
                        self._execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            finally:
                if self.postgres:
                    self._execute("SELECT pg_advisory_unlock(4242)")

    def _columns(self, table: str) -> set[str]:
        if self.postgres:
            rows = self._execute("SELECT column_name FROM information_schema.columns WHERE table_name = ?", (table,))
            return {row[0] for row in rows.fetchall()}
        return {row[1] for row in self._db.execute(f"PRAGMA table_info({table})").fetchall()}

    def _begin(self) -> None:
        if self.postgres and self._db.closed:
            # The server restarted or failed over since the last transaction: connect again. (What
            # the lost connection was writing was not acknowledged: the hubs send it again.)
            import psycopg

            self._db = psycopg.connect(self._where, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        # SQLite: take the write lock first, so another worker cannot slip in between.
        self._execute("BEGIN" if self.postgres else "BEGIN IMMEDIATE")

    def _rollback(self) -> None:
        if self.postgres and self._db.closed:
            return  # the connection is gone, and its transaction with it
        in_transaction = (
            self._db.info.transaction_status != 0 if self.postgres else self._db.in_transaction  # 0: idle
        )
        if in_transaction:
            self._execute("ROLLBACK")

    # --- writing ----------------------------------------------------------------------------------

    def write(self, units: Sequence[Unit], received_by: str) -> list[Outcome]:
        """Store `units` in one transaction (one fsync).

        Returns one outcome per unit, in order: the `Received` of each event it carried (empty for
        a heartbeat or status), or the exception that kept it out. The group is tried whole first
        (one statement per message: the usual case, and the fast one in a storm); if the database
        refuses any of it, the group is tried again with each unit in a savepoint of its own, so
        only the refused ones are left out. If the commit itself fails, every unit's outcome is
        that exception: nothing was stored."""
        # Written in one global order (by hub, then event id; a hub's own messages keep theirs):
        # statuses reach every worker, and two PostgreSQL transactions updating the same hubs in
        # different orders would deadlock, costing a second each and the whole group.
        order = sorted(range(len(units)), key=lambda i: (units[i].hub_id, units[i].body.get("event_id", "")))
        outcomes = self._write_ordered([units[i] for i in order], received_by)
        in_place: list[Outcome] = [[] for _ in units]
        for position, i in enumerate(order):
            in_place[i] = outcomes[position]
        return in_place

    def _write_ordered(self, units: Sequence[Unit], received_by: str) -> list[Outcome]:
        now, mono_ns, wall = iso_now(), time.monotonic_ns(), self._clock()
        with self._lock:
            try:
                self._begin()
                outcomes: list[Outcome] = [self._write_unit(unit, received_by, now, mono_ns, wall) for unit in units]
                self._execute("COMMIT")
                return outcomes
            except self._errors as exc:
                self._rollback()
                if len(units) == 1:
                    return [exc]
            except BaseException:
                self._rollback()
                raise
            return self._write_each(units, received_by, now, mono_ns, wall)

    def _write_each(
        self, units: Sequence[Unit], received_by: str, now: str, mono_ns: int, wall: float
    ) -> list[Outcome]:
        """The group again, each unit in a savepoint: the refused ones out, the rest committed."""
        outcomes: list[Outcome] = []
        try:
            self._begin()
            for unit in units:
                self._execute("SAVEPOINT unit")
                try:
                    outcomes.append(self._write_unit(unit, received_by, now, mono_ns, wall))
                    self._execute("RELEASE SAVEPOINT unit")
                except self._errors as exc:
                    self._execute("ROLLBACK TO SAVEPOINT unit")
                    self._execute("RELEASE SAVEPOINT unit")
                    outcomes.append(exc)
            self._execute("COMMIT")
        except self._errors as exc:
            self._rollback()
            return [exc] * len(units)
        except BaseException:
            self._rollback()
            raise
        return outcomes

    def _write_unit(self, unit: Unit, received_by: str, now: str, mono_ns: int, wall: float) -> list[Received]:
        if unit.kind == "event":
            return [self._record(unit.body, received_by, now, mono_ns)]
        if unit.kind == "events":
            return [self._record(message, received_by, now, mono_ns) for message in unit.body["events"]]
        if unit.kind == "heartbeat":
            self._heartbeat(unit, now, wall)
        elif unit.kind == "status":
            self._status(unit, now, wall)
        else:
            raise ValueError(f"unknown unit kind {unit.kind!r}")
        return []

    def _record(self, m: dict[str, Any], received_by: str, now: str, mono_ns: int) -> Received:
        row = self._execute(
            _RECORD_EVENT,
            (
                m["event_id"],
                m["hub_id"],
                m["county"],
                m["seq"],
                m["type"],
                m["priority"],
                m["device_id"],
                m["occurred_at"],
                now,
                mono_ns,
                received_by,
                json.dumps(m, ensure_ascii=False),
            ),
        ).fetchone()
        return Received(int(row[0]), str(row[1]))

    def _heartbeat(self, unit: Unit, now: str, wall: float) -> None:
        interval = float(unit.body.get("interval_s") or self.heartbeat_s)
        offline_since = self._execute(
            "INSERT INTO hubs (hub_id, county, last_heartbeat_at, heartbeat, heartbeat_s, offline_after)"
            " VALUES (?,?,?,?,?,?) ON CONFLICT (hub_id) DO UPDATE SET"
            " last_heartbeat_at = excluded.last_heartbeat_at, heartbeat = excluded.heartbeat,"
            " heartbeat_s = excluded.heartbeat_s, offline_after = excluded.offline_after RETURNING offline_since",
            (unit.hub_id, unit.county, now, json.dumps(unit.body), interval, wall + MISSED_HEARTBEATS * interval),
        ).fetchone()[0]
        if offline_since is not None:
            self._back_online(unit, offline_since, "heartbeat")

    def _status(self, unit: Unit, now: str, wall: float) -> None:
        state = unit.body["state"]
        if unit.retained:
            # A worker that (re)subscribes is handed every hub's retained status again: news only
            # about a hub the store has never heard of. For the others the store knows better (a
            # hub still "online" by its retained birth may have stopped its heartbeats since).
            self._execute(
                "INSERT INTO hubs (hub_id, county, state, state_at, offline_after) VALUES (?,?,?,?,?)"
                " ON CONFLICT (hub_id) DO NOTHING",
                (unit.hub_id, unit.county, state, now, wall + MISSED_HEARTBEATS * self.heartbeat_s),
            )
            return
        if state == "online":
            expected = (wall, MISSED_HEARTBEATS, self.heartbeat_s)  # for the SET clause
            # Until its first heartbeat says otherwise, the hub is expected at the county's interval.
            offline_since = self._execute(
                "INSERT INTO hubs (hub_id, county, state, state_at, offline_after) VALUES (?,?,?,?,?)"
                " ON CONFLICT (hub_id) DO UPDATE SET state = excluded.state, state_at = excluded.state_at,"
                " offline_after = ? + ? * COALESCE(hubs.heartbeat_s, ?) RETURNING offline_since",
                (unit.hub_id, unit.county, state, now, wall + MISSED_HEARTBEATS * self.heartbeat_s, *expected),
            ).fetchone()[0]
            if offline_since is not None:
                self._back_online(unit, offline_since, "online")
        else:  # its last will, or it said goodbye: offline unless it is back within the grace
            deadline = wall + self.offline_grace_s
            self._execute(
                "INSERT INTO hubs (hub_id, county, state, state_at, offline_after) VALUES (?,?,?,?,?)"
                " ON CONFLICT (hub_id) DO UPDATE SET state = excluded.state, state_at = excluded.state_at,"
                " offline_after = CASE WHEN hubs.offline_after IS NULL OR hubs.offline_after > ?"
                " THEN ? ELSE hubs.offline_after END",
                (unit.hub_id, unit.county, state, now, deadline, deadline, deadline),
            )

    def _back_online(self, unit: Unit, offline_since: str, how: str) -> None:
        """A hub marked offline (since `offline_since`) is heard again: `hub.online`, once."""
        claimed = self._execute(  # of several workers hearing it, one records it
            "UPDATE hubs SET offline_since = NULL WHERE hub_id = ? AND offline_since = ?", (unit.hub_id, offline_since)
        )
        if claimed.rowcount == 1:
            self._raise(
                CentreAlarm(unit.hub_id, unit.county, "hub.online", f"{how} again; offline since {offline_since}")
            )

    def _raise(self, alarm: CentreAlarm, by: str = "") -> None:
        self._execute(
            "INSERT INTO centre_alarms (alarm_id, hub_id, county, kind, reason, raised_at, raised_by)"
            " VALUES (?,?,?,?,?,?,?)",
            (str(uuid.uuid4()), alarm.hub_id, alarm.county, alarm.kind, alarm.reason, iso_now(), by),
        )

    def sweep(self, raised_by: str) -> list[CentreAlarm]:
        """Raise `hub.offline` for every hub past its deadline that is not offline already; each is
        claimed by one atomic UPDATE, so of several workers sweeping at once exactly one raises it."""
        wall = self._clock()
        alarms: list[CentreAlarm] = []
        with self._lock:
            try:
                self._begin()
                rows = self._execute(
                    "UPDATE hubs SET offline_since = ? WHERE offline_since IS NULL AND offline_after < ?"
                    " RETURNING hub_id, county, state, last_heartbeat_at, state_at",
                    (iso_now(), wall),
                ).fetchall()
                for hub_id, county, state, last_heartbeat, state_at in rows:
                    if state == "offline":
                        reason = f"last will at {state_at}; not heard from since"
                    else:
                        reason = f"{MISSED_HEARTBEATS} heartbeats missed; last at {last_heartbeat or 'never'}"
                    alarm = CentreAlarm(hub_id, county, "hub.offline", reason)
                    self._raise(alarm, raised_by)
                    alarms.append(alarm)
                self._execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return alarms

    # --- single messages (tests, tools) -------------------------------------------------------------

    def record_event(self, message: dict[str, Any], received_by: str) -> Received:
        (outcome,) = self.write([Unit("event", message["county"], message["hub_id"], message)], received_by)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome[0]

    def record_events(self, messages: list[dict[str, Any]], received_by: str) -> list[Received]:
        """Store a batch in one transaction: all of it, or, raising, none of it. One `Received` per
        message, in order; an id stored before, or earlier in the same batch, is a duplicate."""
        hub = messages[0]["hub_id"] if messages else ""
        county = messages[0]["county"] if messages else ""
        (outcome,) = self.write([Unit("events", county, hub, {"events": messages})], received_by)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    # --- reading ------------------------------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        keys = ("event_id", "hub_id", "seq", "type", "device_id", "copies", "first_received_mono_ns", "received_by")
        with self._lock:
            rows = self._execute(f"SELECT {', '.join(keys)} FROM events ORDER BY hub_id, seq").fetchall()
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def event_rows(self, event_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The records of these event ids (those the centre has)."""
        keys = ("event_id", "hub_id", "seq", "type", "copies", "received_by")
        found: list[dict[str, Any]] = []
        ids = list(event_ids)
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = self._execute(
                    f"SELECT {', '.join(keys)} FROM events WHERE event_id IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
                found += [dict(zip(keys, row, strict=True)) for row in rows]
        return found

    def doubled_alarms(self, county: str) -> int:
        """Alarms recorded twice: more than one record for one hub's sequence number (a resend with a
        new id would be one; the promise is that there are none)."""
        with self._lock:
            row = self._execute(
                "SELECT COUNT(*) FROM (SELECT hub_id, seq FROM events WHERE county = ? AND priority = 'alarm'"
                " GROUP BY hub_id, seq HAVING COUNT(*) > 1) AS doubled",
                (county,),
            ).fetchone()
        return int(row[0])

    def holds(self, county: str) -> bool:
        """Whether anything of `county` (its hubs, their events) is stored already."""
        with self._lock:
            row = self._execute(
                "SELECT EXISTS (SELECT 1 FROM hubs WHERE county = ?) OR EXISTS (SELECT 1 FROM events WHERE county = ?)",
                (county, county),
            ).fetchone()
        return bool(row[0])

    def hubs(self) -> dict[str, dict[str, Any]]:
        keys = ("hub_id", "county", "state", "last_heartbeat_at", "heartbeat_s", "offline_after", "offline_since")
        with self._lock:
            rows = self._execute(f"SELECT {', '.join(keys)} FROM hubs").fetchall()
        return {row[0]: dict(zip(keys, row, strict=True)) for row in rows}

    def centre_alarms(self) -> list[dict[str, Any]]:
        keys = ("hub_id", "county", "kind", "reason", "raised_at", "raised_by")
        with self._lock:
            rows = self._execute(f"SELECT {', '.join(keys)} FROM centre_alarms ORDER BY raised_at").fetchall()
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def seconds_since(iso: str, now: datetime | None = None) -> float:
    """Seconds from an RFC 3339 time (as the hub writes them) to `now` (default: the wall clock)."""
    then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return ((now or datetime.now(UTC)) - then).total_seconds()
