"""The reference monitoring centre: subscribes to every hub's events, keeps one record per event id
however often it arrives, acknowledges every copy, and watches that every hub is still there.

Several centre workers (processes, or machines) share the load through the MQTT 5 shared
subscriptions `$share/centre/anju/v1/+/+/event`, `.../events` and `.../heartbeat`, and share one
store (simulator/centre_store.py): a SQLite file, or PostgreSQL. Statuses (retained birth and last
will) go to every worker, in order, so none misses a hub's state.

Group commit: messages are decoded and checked on the event loop and queued; one writer task
commits whatever is queued in one transaction (in a thread, so the loop keeps reading), then
publishes the acks. An event is committed (fsync) before its ack is published, so an acknowledged
alarm is never lost by the centre either. A lone event (`event`) is answered by an `ack`; a batch
(`events`, up to 100) is stored whole in a savepoint and answered by one `acks` naming every item,
or, if it cannot be stored, by nothing (the hub resends).

Offline hubs: a hub whose last will arrived and that is not back within `offline_grace_s`, or that
missed 3 heartbeats, raises a `hub.offline` alarm of the centre's own (one, whichever worker finds
it), and `hub.online` when it is heard again. `anju centre` runs it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import random
import ssl
import time
from pathlib import Path
from typing import Any

import aiomqtt

from cloud_bridge.contract import ContractError, decode, topic
from cloud_bridge.mqtt import mqtt_client
from simulator.centre_store import CentreStore, Outcome, Received, Unit, seconds_since

__all__ = ["Centre", "CentreStore", "Received"]

log = logging.getLogger(__name__)

SHARE_GROUP = "centre"
EVENT_FILTER = f"$share/{SHARE_GROUP}/anju/v1/+/+/event"
EVENTS_FILTER = f"$share/{SHARE_GROUP}/anju/v1/+/+/events"
STATUS_FILTER = "anju/v1/+/+/status"
HEARTBEAT_FILTER = f"$share/{SHARE_GROUP}/anju/v1/+/+/heartbeat"

WRITE_MAX = 500  # messages in one group commit
SWEEP_S = 5.0  # look for hubs gone silent this often
ACKS_IN_FLIGHT = 2000  # acks published and not yet PUBACKed by the broker (a storm's worth)


class Inbox:
    """What a worker has received and not yet committed: alarms ahead of everything else, so a storm
    of statuses and heartbeats (a district reconnecting at once) never delays one."""

    def __init__(self) -> None:
        self._alarms: collections.deque[Unit] = collections.deque()
        self._rest: collections.deque[Unit] = collections.deque()
        self._ready = asyncio.Event()

    def put(self, unit: Unit) -> None:
        urgent = unit.kind == "event" and unit.body.get("priority") == "alarm"
        (self._alarms if urgent else self._rest).append(unit)
        self._ready.set()

    async def take(self, most: int) -> list[Unit]:
        """Wait for something, then take up to `most`: every queued alarm first, then the rest in order."""
        while not (self._alarms or self._rest):
            self._ready.clear()
            await self._ready.wait()
        units: list[Unit] = []
        for queue in (self._alarms, self._rest):
            while queue and len(units) < most:
                units.append(queue.popleft())
        return units


class Centre:
    def __init__(
        self,
        host: str,
        port: int,
        db: Path | str,
        centre_id: str = "centre-1",
        acknowledge: bool = True,
        tls: ssl.SSLContext | None = None,
        *,
        heartbeat_s: float = 60.0,
        offline_grace_s: float = 30.0,
        sweep_s: float = SWEEP_S,
        latency_log: Path | None = None,
    ) -> None:
        """`db` is a SQLite file or a `postgresql://` URL. `latency_log`, if given, gets one JSON
        line per stored heartbeat and event: how long after the hub sent it it was committed (for
        bench/fleet.py)."""
        self.host = host
        self.port = port
        self.centre_id = centre_id
        self.acknowledge = acknowledge
        self.tls = tls
        self.sweep_s = sweep_s
        self._acks: set[asyncio.Task[None]] = set()
        self.store = CentreStore(db, heartbeat_s=heartbeat_s, offline_grace_s=offline_grace_s)
        self.connected = asyncio.Event()
        self._latency_log = latency_log.open("a", buffering=1) if latency_log else None

    async def run(self, on_ready: Any = None) -> None:
        """Serve forever, reconnecting with backoff; `on_ready()` is called after the first subscribe."""
        sweeper = asyncio.create_task(self._sweep_forever(), name="centre-offline-sweep")
        try:
            await self._serve(on_ready)
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    async def _serve(self, on_ready: Any) -> None:
        delay = 0.2
        while True:
            try:
                async with mqtt_client(
                    self.host,
                    self.port,
                    f"{self.centre_id}-{os.getpid()}",
                    keepalive=30,
                    tls_context=self.tls,
                    max_inflight_messages=ACKS_IN_FLIGHT,
                ) as client:
                    client.pending_calls_threshold = ACKS_IN_FLIGHT  # acks are sent without waiting (_send_ack)
                    await client.subscribe(
                        [(EVENT_FILTER, 1), (EVENTS_FILTER, 1), (STATUS_FILTER, 1), (HEARTBEAT_FILTER, 0)]
                    )
                    self.connected.set()
                    delay = 0.2
                    log.info("centre %s listening on %s:%d", self.centre_id, self.host, self.port)
                    if on_ready is not None:
                        on_ready()
                        on_ready = None
                    inbox = Inbox()
                    writer = asyncio.create_task(self._write_forever(client, inbox), name="centre-writer")
                    try:
                        async for message in client.messages:
                            unit = self._unit(message)
                            if unit is not None:
                                inbox.put(unit)
                            if writer.done():  # a bug, not the database: let it be seen
                                writer.result()
                    finally:  # whatever was queued and not committed is not acked: the hubs resend it
                        writer.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await writer
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                log.warning("centre lost the broker: %s; retrying", exc)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, 2.0)

    def _unit(self, message: aiomqtt.Message) -> Unit | None:
        """The message checked against the contract and its topic, or None (logged) if it is not fit."""
        parts = str(message.topic).split("/")
        if len(parts) != 5:
            return None
        _, _, county, hub_id, kind = parts
        try:
            body = decode(kind, message.payload)
        except ContractError as exc:
            log.warning("dropped a malformed %s from %s: %s", kind, hub_id, exc)
            return None
        if body["hub_id"] != hub_id:
            log.warning("dropped a %s on %s's topic claiming to be from %s", kind, hub_id, body["hub_id"])
            return None
        if kind == "events":
            strangers = {e["hub_id"] for e in body["events"]} - {hub_id}
            if strangers:
                log.warning("dropped a batch on %s's topic holding events of %s", hub_id, ", ".join(sorted(strangers)))
                return None
        if kind not in ("event", "events", "heartbeat", "status"):
            return None
        return Unit(kind, county, hub_id, body, retained=bool(message.retain), received_ns=time.monotonic_ns())

    async def _write_forever(self, client: aiomqtt.Client, inbox: Inbox) -> None:
        """Group commit: take what is queued (alarms first, up to WRITE_MAX), commit it at once, ack it."""
        while True:
            units = await inbox.take(WRITE_MAX)
            outcomes = await asyncio.to_thread(self.store.write, units, self.centre_id)
            for unit, outcome in zip(units, outcomes, strict=True):
                self._answer(client, unit, outcome)
            if self._latency_log is not None:
                self._log_latencies(units, outcomes)

    def _answer(self, client: aiomqtt.Client, unit: Unit, outcome: Outcome) -> None:
        body, hub_id = unit.body, unit.hub_id
        if isinstance(outcome, Exception):  # not stored, so not acknowledged: the hub will send it again
            what = {"event": f"event {body.get('event_id')}", "events": f"a batch of {len(body.get('events', []))}"}
            log.error(
                "could not store %s from %s (%s)%s",
                what.get(unit.kind, f"the {unit.kind}"),
                hub_id,
                outcome,
                "; not acknowledged" if unit.kind in what else "",
            )
            return
        if unit.kind == "event":
            (received,) = outcome
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
                self._send_ack(client, topic(unit.county, hub_id, "ack"), ack)
        elif unit.kind == "events":
            events: list[dict[str, Any]] = body["events"]
            if log.isEnabledFor(logging.INFO):
                copies = sum(r.duplicate for r in outcome)
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
                        for e, r in zip(events, outcome, strict=True)
                    ],
                }
                self._send_ack(client, topic(unit.county, hub_id, "acks"), acks)
        elif unit.kind == "status":
            log.info("hub %s is %s", hub_id, body["state"])

    def _log_latencies(self, units: list[Unit], outcomes: list[Outcome]) -> None:
        """One line per stored heartbeat and event: `latency_s` from when the hub sent it (its own
        clock; the same machine in a fleet run), `centre_s` from when this worker read it off the
        broker to its commit (the centre's own part)."""
        assert self._latency_log is not None
        now, now_ns = time.time(), time.monotonic_ns()
        for unit, outcome in zip(units, outcomes, strict=True):
            if isinstance(outcome, Exception) or unit.kind not in ("heartbeat", "event"):
                continue
            sent = unit.body["at"] if unit.kind == "heartbeat" else unit.body["occurred_at"]
            line = {
                "kind": unit.kind,
                "t": now,
                "latency_s": round(seconds_since(sent), 6),
                "centre_s": round((now_ns - unit.received_ns) / 1e9, 6),
                "hub": unit.hub_id,
            }
            self._latency_log.write(json.dumps(line) + "\n")

    async def _sweep_forever(self) -> None:
        """Every `sweep_s`, raise the centre's own alarm for each hub that has gone (see the store)."""
        while True:
            await asyncio.sleep(self.sweep_s)
            try:
                alarms = await asyncio.to_thread(self.store.sweep, self.centre_id)
            except self.store.errors as exc:
                log.error("offline sweep failed (%s); trying again in %g s", exc, self.sweep_s)
                continue
            for alarm in alarms:
                log.warning("ALARM hub %s/%s offline: %s", alarm.county, alarm.hub_id, alarm.reason)

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
