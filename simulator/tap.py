"""A contract tap: subscribes to every topic of the contract and validates every message seen.

Scenario runs and tests use it to show that each message the hubs and the centre exchange
matches cloud_bridge/contract; it reconnects by itself when the broker is stopped and started.
Besides each message's schema it checks what a schema cannot: the `hub_id` of a message (and of
every event in an `events` batch) is its topic's, and no event of alarm priority is ever batched.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter

import aiomqtt

from cloud_bridge.contract import TOPIC_ROOT, ContractError, decode, kind_of_topic
from cloud_bridge.mqtt import mqtt_client

log = logging.getLogger(__name__)


class ContractTap:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.counts: Counter[str] = Counter()
        self.violations: list[str] = []
        self.subscribed = asyncio.Event()
        self.status_changes: list[tuple[int, str, str, str]] = []  # (mono_ns, hub_id, state, reason)

    async def run(self) -> None:
        while True:
            try:
                async with mqtt_client(
                    self.host, self.port, f"contract-tap-{random.getrandbits(32):08x}", timeout=5
                ) as client:
                    await client.subscribe(f"{TOPIC_ROOT}/#", qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        self.check(str(message.topic), message.payload)
            except aiomqtt.MqttError:
                self.subscribed.clear()
                await asyncio.sleep(0.1)

    def check(self, topic: str, payload: object) -> None:
        kind = kind_of_topic(topic)
        if kind is None:
            self.violations.append(f"{topic}: not a topic of the contract")
            return
        try:
            message = decode(kind, payload)  # type: ignore[arg-type]
        except ContractError as exc:
            self.violations.append(f"{topic}: {exc}")
            return
        self.counts[kind] += 1
        hub_id = topic.split("/")[3]
        if message.get("hub_id", hub_id) != hub_id:
            self.violations.append(f"{topic}: hub_id {message['hub_id']!r} is not the topic's")
        if kind == "events":
            for index, event in enumerate(message["events"]):
                if event["hub_id"] != hub_id:
                    self.violations.append(f"{topic}: $.events[{index}].hub_id {event['hub_id']!r} is not the topic's")
                if event["priority"] == "alarm":
                    self.violations.append(f"{topic}: $.events[{index}] is a {event['type']}: alarms are never batched")
        if kind == "status":
            change = (message["hub_id"], message["state"], message.get("reason", ""))
            if not self.status_changes or self.status_changes[-1][1:] != change:
                self.status_changes.append((time.monotonic_ns(), *change))
