"""The MQTT uplink to the county broker (aiomqtt): events out, acks and commands in.

Topics are those of the contract (cloud_bridge/contract): `anju/v1/{county}/{hub_id}/{kind}`.
On every connection the hub publishes a retained `online` status (its last will is a retained
`offline`), subscribes to its own `ack`, `acks` and `cmd`, and makes every unacknowledged event
due at once. Events go out at QoS 1, most urgent first, each resent with the same id until an ack
names it (timing in cloud_bridge.outbox): an alarm always alone on `event`, the moment it is due;
every other event in an `events` batch of whatever else is due with it (up to BATCH_MAX; the hub
never waits to fill one), which is how a backlog of 100,000 drains at thousands a second. A
heartbeat reports what is still pending. The connection is retried forever with capped
exponential backoff and jitter, cut short by a new alarm; a malformed or unknown ack or command is logged and dropped,
never raised (a malformed command is also handed to `on_bad_command`, so the hub can answer it).
Answers to commands (`send_result`) wait in memory until a connection takes them, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud_bridge.contract import BATCH_MAX, ContractError, decode, topic
from cloud_bridge.outbox import Outbox
from hub.config import MqttConfig
from hub.model import Priority, iso_now

log = logging.getLogger(__name__)

# paho-mqtt leaves Nagle's algorithm on. An MQTT client that writes two small packets in a row (a
# PUBACK, then its own PUBLISH) then waits for the peer's delayed TCP ACK: ~40 ms on every ack.
NO_DELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


def tls_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """Mutual TLS: trust only the county CA (host name checked), present our own certificate."""
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    return context


OPERATION_TIMEOUT_S = 10.0  # a subscribe's SUBACK, a publish's PUBACK


class _Client(aiomqtt.Client):
    """aiomqtt's client, except that a connection closed before the broker's CONNACK fails the
    connect at once. aiomqtt ignores such a close and waits out its whole timeout: behind a load
    balancer, or a line that resets every connection while it comes back, each attempt then cost
    `connect_timeout_s`, and an alarm raised meanwhile waited for it. (aiomqtt 2.x keeps the
    pending CONNACK in `_connected`; if that ever changes, this falls back to aiomqtt's way.)"""

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any = None) -> None:
        connected = getattr(self, "_connected", None)
        if isinstance(connected, asyncio.Future) and not connected.done():
            connected.set_exception(
                aiomqtt.MqttError(f"the connection closed before the broker answered ({reason_code})")
            )
            return
        super()._on_disconnect(client, userdata, flags, reason_code, properties)


def mqtt_client(host: str, port: int, identifier: str, **options: Any) -> aiomqtt.Client:
    """An MQTT 5 client as every part of Anju opens one: TCP_NODELAY, a 10 s operation timeout, and
    a connection closed before the CONNACK failing at once (`_Client`)."""
    return _Client(
        host,
        port,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=NO_DELAY,
        **{"timeout": OPERATION_TIMEOUT_S, **options},
    )


# Tuned with bench/outbox_drain.py (docs/BENCHMARKS.md). The ack window bounds how much backlog can
# sit in the broker's and the centre's queues ahead of a new alarm: ~4 batches, a few tens of ms of
# the centre's work, while still keeping the centre busy (its next batch is always queued).
MAX_IN_FLIGHT = 8  # messages (an alarm, a batch) published and awaiting their PUBACK at once
ACK_WINDOW = 400  # events sent and awaiting the centre's ack; past it, only alarms are sent
# With the window full and a backlog ready, the only thing that frees the window without waking the
# send loop is an unacknowledged event's resend coming due; look for that this often (cheaply).
RESEND_POLL_S = 0.25

# A persistent session: acks and commands published while the hub is away wait for it at the broker.
SESSION_EXPIRY_S = 86_400


def _session_expiry(seconds: int) -> Properties:
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = seconds
    return properties


def raise_if_cancelled() -> None:
    """Re-raise a cancellation that an awaited aiomqtt call swallowed.

    On Python 3.11 `asyncio.wait_for` (which aiomqtt awaits each publish with) returns normally
    when its inner future completes in the same loop turn as the cancellation, losing it; a
    shutdown would then hang. Call this after each publish in a loop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _until_one_fails(*work: Coroutine[Any, Any, None]) -> None:
    """Run `work` together until one of them raises; then cancel the rest and raise that error.

    Not a TaskGroup: on Python 3.11 a TaskGroup whose child fails while the parent waits in its
    `__aexit__` leaves a cancel request on the parent (fixed in 3.12). The uplink's next session
    then took that for a shutdown (`raise_if_cancelled`) and the hub never reconnected."""
    tasks = [asyncio.create_task(w) for w in work]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


AckHandler = Callable[[str, dict[str, Any]], Awaitable[None]]
CommandHandler = Callable[[dict[str, Any]], Awaitable[None]]
BadCommandHandler = Callable[[bytes, ContractError], Awaitable[None]]
RESULTS_KEPT = 100  # command results waiting for a connection; past it the oldest is dropped
HeartbeatExtra = Callable[[], dict[str, Any]]


class MqttUplink:
    def __init__(
        self,
        config: MqttConfig,
        hub_id: str,
        county: str,
        outbox: Outbox,
        on_ack: AckHandler,
        on_command: CommandHandler,
        version: str = "",
        *,
        heartbeat_extra: HeartbeatExtra | None = None,
        on_bad_command: BadCommandHandler | None = None,
    ) -> None:
        """`on_ack(event_id, ack)` is called for every ack, alone or an item of `acks` (then with the
        message's `hub_id` and `centre_id` added); `heartbeat_extra()`, if given, returns fields
        merged into every heartbeat (`uplinks`, `modem`: see the heartbeat schema)."""
        self.config = config
        self.hub_id = hub_id
        self.county = county
        self.outbox = outbox
        self._on_ack = on_ack
        self._on_command = on_command
        self._version = version
        self._heartbeat_extra = heartbeat_extra
        self._on_bad_command = on_bad_command
        self._results: deque[dict[str, Any]] = deque(maxlen=RESULTS_KEPT)
        self._result_ready = asyncio.Event()
        self._beat_now = asyncio.Event()
        self._wake = asyncio.Event()
        outbox.on_change(self._wake.set)
        self._alarm_raised = asyncio.Event()
        outbox.on_alarm(self._alarm_raised.set)
        self.connected = asyncio.Event()
        self._down_since: float | None = time.monotonic()  # not connected yet counts from the start
        self._started = time.monotonic()
        self._heartbeats = 0
        self._dropped_logged: dict[str, float] = {}

    def down_for(self) -> float:
        """Seconds since the broker was last connected (or since the start); 0 while connected."""
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    def send_result(self, message: dict[str, Any]) -> None:
        """Publish a `cmd_result` (QoS 1) as soon as the broker is connected; never blocks."""
        self._results.append(message)
        self._result_ready.set()

    def heartbeat_now(self) -> None:
        """Send the next heartbeat at once rather than at its time."""
        self._beat_now.set()

    def _topic(self, kind: str) -> str:
        return topic(self.county, self.hub_id, kind)

    def _status(self, state: str, **extra: Any) -> bytes:
        message = {"schema": "anju.status/1", "hub_id": self.hub_id, "state": state, **extra}
        return json.dumps(message).encode()

    async def run(self) -> None:
        """Stay connected forever; returns only when cancelled."""
        delay = self.config.reconnect_min_s
        while True:
            self._alarm_raised.clear()  # an alarm from now on cuts the next backoff short
            try:
                await self._session()
            except aiomqtt.MqttError as exc:
                log.warning("broker %s:%d unreachable or lost: %s", self.config.host, self.config.port, exc)
            except Exception:  # never let the uplink end: log it for a person, reconnect
                log.exception("the MQTT uplink failed; reconnecting")
            if self.connected.is_set():
                delay = self.config.reconnect_min_s  # it was up: start the backoff afresh
                self.connected.clear()
                self._down_since = time.monotonic()
            await self._back_off(delay * (0.5 + random.random() / 2))
            delay = min(self.config.reconnect_max_s, delay * 2)

    async def _back_off(self, seconds: float) -> None:
        """Wait before the next attempt to connect; a new alarm cuts the wait short, so an alarm never
        sits out a backoff that grew while the line was dead. (At most one attempt per alarm; the
        backoff still spaces the attempts while nothing urgent waits.)"""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._alarm_raised.wait(), seconds)

    async def _session(self) -> None:
        will = aiomqtt.Will(
            self._topic("status"), self._status("offline", reason="connection lost"), qos=1, retain=True
        )
        try:
            async with mqtt_client(
                self.config.host,
                self.config.port,
                self.hub_id,
                will=will,
                keepalive=self.config.keepalive_s,
                tls_context=(
                    tls_context(self.config.tls.ca, self.config.tls.cert, self.config.tls.key)
                    if self.config.tls
                    else None
                ),
                clean_start=False,
                properties=_session_expiry(SESSION_EXPIRY_S),
                max_inflight_messages=MAX_IN_FLIGHT + 4,  # + status and heartbeats: ours is the limit
                # aiomqtt ignores a connection closed before the CONNACK and waits out its timeout
                # (a load balancer or proxy in front of a broker that is down accepts, then closes):
                # so a short timeout for the CONNACK, the usual one for everything after it.
                timeout=self.config.connect_timeout_s,
            ) as client:
                client.timeout = OPERATION_TIMEOUT_S
                client.pending_calls_threshold = MAX_IN_FLIGHT + 4  # aiomqtt warns past it
                await client.subscribe([(self._topic(kind), 1) for kind in ("ack", "acks", "cmd")])
                raise_if_cancelled()  # a restart just after connecting must not be lost (see there)
                await client.publish(
                    self._topic("status"),
                    self._status("online", at=iso_now(), version=self._version),
                    qos=1,
                    retain=True,
                )
                raise_if_cancelled()
                log.info("connected to broker %s:%d", self.config.host, self.config.port)
                self.connected.set()
                self._down_since = None
                self.outbox.requeue_all()
                try:
                    await _until_one_fails(
                        self._send_loop(client),
                        self._heartbeat_loop(client),
                        self._receive_loop(client),
                        self._result_loop(client),
                    )
                except asyncio.CancelledError:
                    # A clean shutdown discards the last will, so say `offline` ourselves.
                    with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                        offline = self._status("offline", at=iso_now(), reason="hub stopped")
                        await client.publish(self._topic("status"), offline, qos=1, retain=True, timeout=2)
                    raise
        except* Exception as group:
            raise group.exceptions[0] from None

    async def _send_loop(self, client: aiomqtt.Client) -> None:
        """Publish due events, most urgent first, with up to MAX_IN_FLIGHT messages awaiting their PUBACK.

        Each free slot takes one alarm if one is due (alone on `event`, whatever the ack window);
        else, within the ack window, every other event due right now, up to BATCH_MAX, as one
        `events` batch. A batch is taken when a slot is free, never ahead, so a new alarm is next
        as soon as a slot frees, however long the backlog behind it."""
        event_topic, events_topic = self._topic("event"), self._topic("events")
        slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        in_flight: set[asyncio.Task[None]] = set()
        failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def publish(to: str, payload: bytes) -> None:
            try:
                await client.publish(to, payload, qos=1)
            except aiomqtt.MqttError as exc:
                if not failed.done():
                    failed.set_result(exc)
            finally:
                slots.release()

        def send(to: str, message: dict[str, Any]) -> None:
            task = asyncio.create_task(publish(to, json.dumps(message, ensure_ascii=False).encode()))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)

        try:
            while True:
                await slots.acquire()
                due = self.outbox.take_due(limit=1, most=Priority.ALARM)
                room = ACK_WINDOW - self.outbox.awaiting_ack()
                if not due and room > 0:
                    # Beyond ACK_WINDOW events awaiting their ack only alarms go out: a backlog must not
                    # pile up in the broker's and the centre's queues ahead of the next alarm.
                    due = self.outbox.take_due(limit=min(BATCH_MAX, room))
                if not due:
                    slots.release()
                    self._wake.clear()
                    waiter: asyncio.Future[Any] = asyncio.ensure_future(self._wake.wait())
                    wait_s = self.outbox.seconds_until_due()
                    if wait_s == 0 and room <= 0:
                        # Ready events wait for the window: an ack or a new event wakes us, an alarm's
                        # resend coming due does not, so look again after a short while.
                        wait_s = RESEND_POLL_S
                    done, _ = await asyncio.wait([waiter, failed], timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                    raise_if_cancelled()
                    if failed in done:
                        raise failed.result()
                    continue
                # Alarms alone, first. (The second take_due holds one only if its resend came due in
                # between: it still goes alone, in a slot of its own.)
                batch: list[dict[str, Any]] = []
                resends = 0
                slot_held = True
                for event, attempt in due:
                    if event.priority > Priority.ALARM:
                        batch.append(event.to_message(attempt))
                        resends += attempt > 1
                        continue
                    if attempt > 1:
                        log.info("resending %s #%s (attempt %d)", event.type.value, event.seq, attempt)
                    if not slot_held:
                        await slots.acquire()
                    send(event_topic, event.to_message(attempt))
                    slot_held = False
                if batch:
                    if resends:
                        log.info("resending %d event(s) in a batch of %d", resends, len(batch))
                    if not slot_held:
                        await slots.acquire()
                    send(events_topic, {"schema": "anju.events/1", "hub_id": self.hub_id, "events": batch})
                if failed.done():
                    raise failed.result()
        finally:
            for task in in_flight:
                task.cancel()

    async def _heartbeat_loop(self, client: aiomqtt.Client) -> None:
        while True:
            self._heartbeats += 1
            oldest = self.outbox.oldest_pending_at()
            now = datetime.now(UTC)
            message = self._extra_heartbeat_fields()
            message |= {
                "schema": "anju.heartbeat/1",
                "hub_id": self.hub_id,
                "seq": self._heartbeats,
                "at": iso_now(),
                "interval_s": self.config.heartbeat_s,
                "uptime_s": round(time.monotonic() - self._started, 3),
                "pending": self.outbox.pending_counts(),
                "oldest_pending_s": None if oldest is None else round(max(0.0, (now - oldest).total_seconds()), 3),
            }
            await client.publish(self._topic("heartbeat"), json.dumps(message).encode(), qos=0)
            raise_if_cancelled()
            self._beat_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), self.config.heartbeat_s)

    async def _result_loop(self, client: aiomqtt.Client) -> None:
        """Publish command results in order; one leaves the queue only once the broker has it."""
        to = self._topic("cmd_result")
        while True:
            while self._results:
                first = self._results[0]
                await client.publish(to, json.dumps(first, ensure_ascii=False).encode(), qos=1)
                raise_if_cancelled()
                if self._results and self._results[0] is first:
                    self._results.popleft()
            self._result_ready.clear()
            await self._result_ready.wait()

    def _extra_heartbeat_fields(self) -> dict[str, Any]:
        if self._heartbeat_extra is None:
            return {}
        try:
            return dict(self._heartbeat_extra())
        except Exception:  # a failing reporter must not stop the heartbeat itself
            log.exception("heartbeat_extra failed; heartbeat sent without its fields")
            return {}

    async def _receive_loop(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            kind = str(message.topic).rsplit("/", 1)[-1]
            try:
                body = decode(kind, message.payload)
            except ContractError as exc:
                self._log_dropped(kind, f"malformed {kind} dropped: {exc}")
                if kind == "cmd" and self._on_bad_command is not None:
                    await self._handle(kind, "(malformed)", self._on_bad_command(_raw(message.payload), exc))
                continue
            if kind in ("ack", "acks") and body["hub_id"] != self.hub_id:
                self._log_dropped(kind, f"{kind} for another hub ({body['hub_id']}) dropped")
                continue
            if kind == "ack":
                await self._handle(kind, body["event_id"], self._on_ack(body["event_id"], body))
            elif kind == "acks":
                extra = {"hub_id": body["hub_id"], "centre_id": body["centre_id"]}
                for item in body["acks"]:
                    await self._handle(kind, item["event_id"], self._on_ack(item["event_id"], item | extra))
            elif kind == "cmd":
                await self._handle(kind, body["cmd_id"], self._on_command(body))

    async def _handle(self, kind: str, what: str, handler: Awaitable[None]) -> None:
        try:
            await handler
        except Exception:  # a handler's failure (a journal error, say) must not end the uplink
            log.exception("handling %s %s failed; the uplink carries on", kind, what)

    def _log_dropped(self, kind: str, text: str) -> None:
        """Log a dropped message, at most once a minute per kind at warning level."""
        now = time.monotonic()
        if now - self._dropped_logged.get(kind, -1e9) > 60:
            self._dropped_logged[kind] = now
            log.warning(text)
        else:
            log.debug(text)


def _raw(payload: Any) -> bytes:
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()
