"""The reference monitoring centre: subscribes to every hub's events, keeps one record per event id
however often it arrives, and acknowledges every copy.

Several centre processes share the load through the MQTT 5 shared subscriptions
`$share/centre/anju/v1/+/+/event` and `.../events`; they may share one SQLite file (WAL, busy
timeout) because the event id is the primary key. An event is committed (fsync) before its ack is
published, so an acknowledged alarm is never lost by the centre either. A lone event (`event`) is
answered by an `ack`; a batch (`events`, up to 100) is stored in one transaction and answered by
one `acks` message naming every item, or, if the transaction fails, by nothing (the hub resends).
`anju centre` runs it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sqlite3
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from cloud_bridge.contract import ContractError, decode, topic
from cloud_bridge.mqtt import mqtt_client
from hub.model import iso_now

log = logging.getLogger(__name__)

SHARE_GROUP = "centre"
EVENT_FILTER = f"$share/{SHARE_GROUP}/anju/v1/+/+/event"
EVENTS_FILTER = f"$share/{SHARE_GROUP}/anju/v1/+/+/events"
STATUS_FILTER = "anju/v1/+/+/status"
HEARTBEAT_FILTER = f"$share/{SHARE_GROUP}/anju/v1/+/+/heartbeat"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id               TEXT PRIMARY KEY,
    hub_id                 TEXT NOT NULL,
    county                 TEXT NOT NULL,
    seq                    INTEGER NOT NULL,
    type                   TEXT NOT NULL,
    priority               TEXT NOT NULL,
    device_id              TEXT,
    occurred_at            TEXT NOT NULL,
    first_received_at      TEXT NOT NULL,
    first_received_mono_ns INTEGER NOT NULL,
    received_by            TEXT NOT NULL,
    copies                 INTEGER NOT NULL DEFAULT 1,
    message                TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_hub ON events (hub_id, seq);
CREATE TABLE IF NOT EXISTS hubs (
    hub_id            TEXT PRIMARY KEY,
    county            TEXT NOT NULL,
    state             TEXT,
    state_at          TEXT,
    last_heartbeat_at TEXT,
    heartbeat         TEXT
);
"""


@dataclass(frozen=True)
class Received:
    copies: int
    first_received_at: str

    @property
    def duplicate(self) -> bool:
        return self.copies > 1


class CentreStore:
    """The centre's SQLite file. One record per event id; `copies` counts how often it arrived."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def record_event(self, message: dict[str, Any], received_by: str) -> Received:
        row = self._db.execute(
            "INSERT INTO events (event_id, hub_id, county, seq, type, priority, device_id, occurred_at,"
            " first_received_at, first_received_mono_ns, received_by, message)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT (event_id) DO UPDATE SET copies = copies + 1 RETURNING copies, first_received_at",
            (
                message["event_id"],
                message["hub_id"],
                message["county"],
                message["seq"],
                message["type"],
                message["priority"],
                message["device_id"],
                message["occurred_at"],
                iso_now(),
                time.monotonic_ns(),
                received_by,
                json.dumps(message, ensure_ascii=False),
            ),
        ).fetchone()
        return Received(int(row[0]), str(row[1]))

    def record_events(self, messages: list[dict[str, Any]], received_by: str) -> list[Received]:
        """Store a batch in one transaction (one fsync): all of it, or, raising, none of it.

        One `Received` per message, in order, as `record_event` would give for each in turn: an id
        the store had already, or that came earlier in the same batch, is a duplicate."""
        ids = [message["event_id"] for message in messages]
        now, mono_ns = iso_now(), time.monotonic_ns()
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # the write lock first: another worker cannot slip in between
        try:
            marks = ",".join("?" * len(set(ids)))
            known = {
                row[0]: (int(row[1]), str(row[2]))
                for row in db.execute(
                    f"SELECT event_id, copies, first_received_at FROM events WHERE event_id IN ({marks})",
                    list(dict.fromkeys(ids)),
                )
            }
            db.executemany(
                "INSERT INTO events (event_id, hub_id, county, seq, type, priority, device_id, occurred_at,"
                " first_received_at, first_received_mono_ns, received_by, message)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (event_id) DO UPDATE SET copies = copies + 1",
                [
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
                    )
                    for m in messages
                ],
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        received: list[Received] = []
        for event_id in ids:
            copies, first = known.get(event_id, (0, now))
            known[event_id] = (copies + 1, first)
            received.append(Received(copies + 1, first))
        return received

    def record_status(self, hub_id: str, county: str, state: str) -> None:
        self._db.execute(
            "INSERT INTO hubs (hub_id, county, state, state_at) VALUES (?,?,?,?)"
            " ON CONFLICT (hub_id) DO UPDATE SET state = excluded.state, state_at = excluded.state_at",
            (hub_id, county, state, iso_now()),
        )

    def record_heartbeat(self, hub_id: str, county: str, heartbeat: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT INTO hubs (hub_id, county, last_heartbeat_at, heartbeat) VALUES (?,?,?,?)"
            " ON CONFLICT (hub_id) DO UPDATE SET last_heartbeat_at = excluded.last_heartbeat_at,"
            " heartbeat = excluded.heartbeat",
            (hub_id, county, iso_now(), json.dumps(heartbeat)),
        )

    def events(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT event_id, hub_id, seq, type, device_id, copies, first_received_mono_ns, received_by"
            " FROM events ORDER BY hub_id, seq"
        ).fetchall()
        keys = ("event_id", "hub_id", "seq", "type", "device_id", "copies", "first_received_mono_ns", "received_by")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def close(self) -> None:
        self._db.close()


class Centre:
    def __init__(
        self,
        host: str,
        port: int,
        db_path: Path,
        centre_id: str = "centre-1",
        acknowledge: bool = True,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.centre_id = centre_id
        self.acknowledge = acknowledge
        self.tls = tls
        self._acks: set[asyncio.Task[None]] = set()
        self.store = CentreStore(db_path)
        self.connected = asyncio.Event()

    async def run(self, on_ready: Any = None) -> None:
        """Serve forever, reconnecting with backoff; `on_ready()` is called after the first subscribe."""
        delay = 0.2
        while True:
            try:
                async with mqtt_client(
                    self.host, self.port, f"{self.centre_id}-{os.getpid()}", keepalive=30, tls_context=self.tls
                ) as client:
                    await client.subscribe(
                        [(EVENT_FILTER, 1), (EVENTS_FILTER, 1), (STATUS_FILTER, 1), (HEARTBEAT_FILTER, 0)]
                    )
                    self.connected.set()
                    delay = 0.2
                    log.info("centre %s listening on %s:%d", self.centre_id, self.host, self.port)
                    if on_ready is not None:
                        on_ready()
                        on_ready = None
                    async for message in client.messages:
                        await self._handle(client, message)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                log.warning("centre lost the broker: %s; retrying", exc)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, 2.0)

    async def _publish_ack(self, client: aiomqtt.Client, ack_topic: str, ack: dict[str, Any]) -> None:
        try:
            await client.publish(ack_topic, json.dumps(ack).encode(), qos=1)
        except aiomqtt.MqttError as exc:
            what = ack["event_id"] if "event_id" in ack else f"a batch of {len(ack['acks'])}"
            log.warning("ack for %s not sent (%s); the hub will send the event(s) again", what, exc)

    def _send_ack(self, client: aiomqtt.Client, ack_topic: str, ack: dict[str, Any]) -> None:
        # Not awaited: waiting for each ack's PUBACK would cap the centre at one round trip per
        # message. The events are committed already; a lost ack only means a resend.
        task = asyncio.create_task(self._publish_ack(client, ack_topic, ack))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _handle(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        parts = str(message.topic).split("/")
        if len(parts) != 5:
            return
        _, _, county, hub_id, kind = parts
        try:
            body = decode(kind, message.payload)
        except ContractError as exc:
            log.warning("dropped a malformed %s from %s: %s", kind, hub_id, exc)
            return
        if body["hub_id"] != hub_id:
            log.warning("dropped a %s on %s's topic claiming to be from %s", kind, hub_id, body["hub_id"])
            return
        if kind == "event":
            try:
                received = self.store.record_event(body, self.centre_id)
            except sqlite3.Error as exc:  # not stored, so not acknowledged: the hub will send it again
                log.error("could not store event %s from %s (%s); not acknowledged", body["event_id"], hub_id, exc)
                return
            log.info(
                "%s %s #%d from %s%s",
                body["type"],
                body["device_id"],
                body["seq"],
                hub_id,
                " (duplicate)" if received.duplicate else "",
            )
            if self.acknowledge:
                ack = {
                    "schema": "anju.ack/1",
                    "event_id": body["event_id"],
                    "seq": body["seq"],
                    "hub_id": hub_id,
                    "centre_id": self.centre_id,
                    "received_at": received.first_received_at,
                    "duplicate": received.duplicate,
                }
                self._send_ack(client, topic(county, hub_id, "ack"), ack)
        elif kind == "events":
            events: list[dict[str, Any]] = body["events"]
            strangers = {e["hub_id"] for e in events} - {hub_id}
            if strangers:
                log.warning("dropped a batch on %s's topic holding events of %s", hub_id, ", ".join(sorted(strangers)))
                return
            try:
                stored = self.store.record_events(events, self.centre_id)
            except sqlite3.Error as exc:  # none stored, so none acknowledged: the hub will send them again
                log.error("could not store a batch of %d from %s (%s); none acknowledged", len(events), hub_id, exc)
                return
            if log.isEnabledFor(logging.INFO):
                copies = sum(r.duplicate for r in stored)
                log.info(
                    "batch of %d from %s, #%d..#%d%s",
                    len(events),
                    hub_id,
                    min(e["seq"] for e in events),
                    max(e["seq"] for e in events),
                    f" ({copies} duplicate)" if copies else "",
                )
            if self.acknowledge:
                acks = {
                    "schema": "anju.acks/1",
                    "hub_id": hub_id,
                    "centre_id": self.centre_id,
                    "acks": [
                        {
                            "event_id": e["event_id"],
                            "seq": e["seq"],
                            "received_at": r.first_received_at,
                            "duplicate": r.duplicate,
                        }
                        for e, r in zip(events, stored, strict=True)
                    ],
                }
                self._send_ack(client, topic(county, hub_id, "acks"), acks)
        elif kind in ("status", "heartbeat"):
            try:
                if kind == "status":
                    self.store.record_status(hub_id, county, body["state"])
                    log.info("hub %s is %s", hub_id, body["state"])
                else:
                    self.store.record_heartbeat(hub_id, county, body)
            except sqlite3.Error as exc:
                log.error("could not store the %s of %s: %s", kind, hub_id, exc)
