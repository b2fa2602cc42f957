"""The DC-09 uplink: alarms to one SIA DC-09 receiver, and NULL link tests, for the failover policy
(cloud_bridge.failover). The frames themselves are cloud_bridge.dc09's."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime

from cloud_bridge.dc09 import Dc09Client, FrameError, ResponseKind, encode_event
from cloud_bridge.failover import PathHealth
from hub.config import Dc09UplinkConfig
from hub.model import Event

log = logging.getLogger(__name__)


def dc09_sequence(hub_seq: int) -> int:
    """The DC-09 sequence number (0001-9999) of a hub event: the same on every resend."""
    return (hub_seq - 1) % 9999 + 1


class Dc09Path:
    """Alarms to one DC-09 receiver, one message at a time, with NULL link tests in between."""

    name = "dc09"

    def __init__(
        self, config: Dc09UplinkConfig, zones: dict[str, int], clock_trusted: Callable[[], bool] = lambda: True
    ) -> None:
        self.config = config
        self.zones = zones
        self.client = Dc09Client(
            config.host,
            config.port,
            config.account,
            receiver=config.receiver,
            prefix=config.prefix,
            key=config.key,
            key_format=config.key_format,
            transport=config.protocol,
            clock_trusted=clock_trusted,
        )
        self.health = PathHealth()
        self._lock = asyncio.Lock()
        self._null_sequence = 0
        self._last_traffic = time.monotonic()

    async def deliver(self, event: Event) -> str:
        """Send one alarm; returns "ack", "failed" (try again later) or "refused" (do not retry:
        the event has no code, or the receiver answered DUH)."""
        assert event.seq is not None
        try:
            message = self._encode(event, self.client.timestamp())
        except ValueError as exc:
            log.error("alarm %s cannot go over DC-09: %s", event.event_id, exc)
            return "refused"
        async with self._lock:
            self._last_traffic = time.monotonic()
            try:
                response = await self.client.send(message, self.config.timeout_s)
                if response.kind is ResponseKind.NAK:
                    # The receiver's clock disagrees with ours: stamp with its clock and send again, once.
                    log.warning("DC-09 receiver NAKed %s; resending with its clock", event.event_id)
                    message = self._encode(event, self.client.timestamp())
                    response = await self.client.send(message, self.config.timeout_s)
            except (OSError, TimeoutError, FrameError) as exc:
                self.health.set(False, f"dc09 {self.config.host}:{self.config.port}: {exc or type(exc).__name__}")
                return "failed"
        if response.kind is ResponseKind.ACK:
            self.health.set(True, f"dc09 {self.config.host}:{self.config.port}: alarm acknowledged")
            return "ack"
        if response.kind is ResponseKind.DUH:
            log.error("DC-09 receiver does not understand %s (DUH); not sending it there again", event.event_id)
            self.health.set(False, f"dc09 {self.config.host}:{self.config.port}: DUH (message not understood)")
            return "refused"
        self.health.set(False, f"dc09 {self.config.host}:{self.config.port}: answered {response.kind}")
        return "failed"

    async def link_test(self) -> None:
        """A NULL message, unless an alarm went over the link recently (that proves it as well)."""
        if time.monotonic() - self._last_traffic < self.config.link_test_s and self.health.ok:
            return
        async with self._lock:
            self._null_sequence = self._null_sequence % 9999 + 1
            self._last_traffic = time.monotonic()
            try:
                response = await self.client.send_null(self._null_sequence, self.config.timeout_s)
            except (OSError, TimeoutError, FrameError) as exc:
                self.health.set(False, f"dc09 {self.config.host}:{self.config.port}: link test failed: {exc}")
                return
        ok = response.kind in (ResponseKind.ACK, ResponseKind.NAK)  # a NAK proves the link and sets our clock
        self.health.set(ok, f"dc09 {self.config.host}:{self.config.port}: link test {response.kind}")

    async def run(self) -> None:
        if self.config.link_test_s <= 0:
            return
        while True:
            await self.link_test()
            await asyncio.sleep(self.config.link_test_s)

    def _encode(self, event: Event, stamp: datetime | None) -> bytes:
        """The frame for `event`, stamped with `stamp` (None: no timestamp; see Dc09Client.timestamp)."""
        assert event.seq is not None
        return encode_event(
            event,
            account=self.config.account,
            receiver=self.config.receiver,
            prefix=self.config.prefix,
            fmt=self.config.format,
            sequence=dc09_sequence(event.seq),
            zone=self.zones.get(event.device_id or "", 0),
            key=self.config.key,
            key_format=self.config.key_format,
            timestamp=stamp if stamp is not None else False,
        )
