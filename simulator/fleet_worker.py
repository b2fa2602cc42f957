"""One process of `anju fleet`: a few thousand simulated hubs, each our real cloud_bridge (an
`Outbox`, an `MqttUplink` with its heartbeats, acks, last will and reconnect backoff) with a
virtual pull-cord and no radios.

The hubs reach the broker through one `TcpProxy` per process, so a district's power cut is the
network really going away: `cut` resets every connection at once (RST, as a dead line looks to
the broker, which then publishes each hub's last will) and resets new ones for `down_s`; then the
hubs reconnect with their own backoff.

No journal: a fleet run measures the broker and the centre, and 10,000 SQLite journals fsyncing on
one disk would measure this machine's disk instead of 10,000 homes' SD cards (the journal's own
cost is in bench/alarm_latency.py and bench/outbox_drain.py). Events get their sequence numbers
from a counter, as the journal would give them.

Driven by simulator/fleet.py over stdin/stdout, one JSON object per line:
  in:  {"cmd": "status"} | {"cmd": "alarms", "at": MONO, "spread_s": S, "hubs": [i…], "label": L}
       | {"cmd": "cut", "down_s": S} | {"cmd": "results"} | {"cmd": "stop"}
  out: one JSON line answering each command.
`at` is CLOCK_MONOTONIC, which every process on the machine shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from cloud_bridge.mqtt import MqttUplink
from cloud_bridge.outbox import Outbox, RetryPolicy
from hub.config import MqttConfig
from hub.model import Event, EventType
from simulator.proxy import TcpProxy

log = logging.getLogger(__name__)


@dataclass
class Raised:
    label: str
    hub_id: str
    event_id: str
    raised_mono: float
    acked_mono: float | None = None
    acks: int = 0  # acks naming it (a second is a duplicate answer, never a second alarm)


@dataclass
class FleetHub:
    hub_id: str
    county: str
    uplink: MqttUplink
    outbox: Outbox
    seq: int = 0
    raised: dict[str, Raised] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    def raise_alarm(self, label: str) -> None:
        """A pull on the virtual cord: an alarm into the outbox, as the journal would hand it over."""
        self.seq += 1
        event = Event(EventType.ALARM_EMERGENCY, self.hub_id, f"hh-{self.hub_id}", self.county, "cord-1")
        event = event.with_seq(self.seq)
        self.raised[event.event_id] = Raised(label, self.hub_id, event.event_id, time.monotonic())
        self.outbox.add(event)

    async def on_ack(self, event_id: str, ack: dict[str, Any]) -> None:
        record = self.raised.get(event_id)
        if record is not None:
            record.acks += 1
            if record.acked_mono is None:
                record.acked_mono = time.monotonic()
        self.outbox.ack(event_id)


class Worker:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.proxy = TcpProxy(spec["host"], spec["port"])
        self.hubs: list[FleetHub] = []
        self._timers: set[asyncio.Task[None]] = set()
        self._waiting = 0  # alarms asked for whose moment has not come

    async def start(self) -> None:
        await self.proxy.start()
        spec = self.spec
        config = MqttConfig(
            host="127.0.0.1",
            port=self.proxy.port,
            heartbeat_s=spec["heartbeat_s"],
            keepalive_s=spec["keepalive_s"],
        )
        retry = RetryPolicy(first_s=spec["resend_first_s"])
        for index in range(spec["first"], spec["first"] + spec["count"]):
            hub_id = f"fleet-{index:05d}"
            outbox = Outbox(retry)
            hub = FleetHub(hub_id, spec["county"], None, outbox)  # type: ignore[arg-type]
            hub.uplink = MqttUplink(config, hub_id, spec["county"], outbox, hub.on_ack, _ignore_command, "fleet")
            self.hubs.append(hub)
        self._ramping = asyncio.create_task(self._ramp(spec["ramp_s"]))

    async def _ramp(self, ramp_s: float) -> None:
        """Switch the hubs on evenly over `ramp_s`, as a county's hubs come up over a morning (and so
        their heartbeats spread over the interval, as they do in life)."""
        start = time.monotonic()
        for n, hub in enumerate(self.hubs):
            delay = start + ramp_s * n / max(1, len(self.hubs)) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            hub.task = asyncio.create_task(hub.uplink.run())

    def status(self) -> dict[str, Any]:
        raised = [r for hub in self.hubs for r in hub.raised.values()]
        return {
            "connected": sum(hub.uplink.connected.is_set() for hub in self.hubs),
            "raised": len(raised),
            "acked": sum(r.acked_mono is not None for r in raised),
            "scheduled": self._waiting,  # alarms asked for and not raised yet
        }

    def alarms(self, at: float, spread_s: float, indices: list[int], label: str) -> dict[str, Any]:
        by_index = {int(hub.hub_id.split("-")[1]): hub for hub in self.hubs}
        for index in indices:
            hub = by_index[index]
            self._later(at + random.random() * spread_s, lambda hub=hub: hub.raise_alarm(label))
        return {"scheduled": len(indices)}

    def _later(self, at: float, action: Any) -> None:
        self._waiting += 1

        async def run() -> None:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            self._waiting -= 1  # in the same step as the action: never counted both as waiting and raised
            action()

        task = asyncio.create_task(run())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def cut(self, down_s: float) -> dict[str, Any]:
        """Every connection reset at once, the line dead for `down_s`, then back."""
        cut_at = time.monotonic()
        await self.proxy.set_mode("reset")
        await asyncio.sleep(down_s)
        await self.proxy.set_mode("up")
        return {"cut_at": cut_at, "up_at": time.monotonic()}

    def results(self) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "alarms": [
                {
                    "label": r.label,
                    "hub_id": r.hub_id,
                    "event_id": r.event_id,
                    "raised": r.raised_mono,
                    "acked": r.acked_mono,
                    "acks": r.acks,
                }
                for hub in self.hubs
                for r in hub.raised.values()
            ],
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": usage.ru_maxrss / 1024,
            "pid": os.getpid(),
        }

    async def stop(self) -> None:
        for hub in self.hubs:
            if hub.task is not None:
                hub.task.cancel()
        await asyncio.gather(*(hub.task for hub in self.hubs if hub.task), return_exceptions=True)
        await self.proxy.stop()


async def _ignore_command(command: dict[str, Any]) -> None:
    """Fleet hubs take no commands from the centre."""


async def serve() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    spec = json.loads(await reader.readline())
    worker = Worker(spec)
    await worker.start()
    _answer({"ready": True, "hubs": len(worker.hubs)})
    while line := await reader.readline():
        request = json.loads(line)
        command = request["cmd"]
        if command == "status":
            _answer(worker.status())
        elif command == "alarms":
            _answer(worker.alarms(request["at"], request["spread_s"], request["hubs"], request["label"]))
        elif command == "cut":
            _answer(await worker.cut(request["down_s"]))
        elif command == "results":
            _answer(worker.results())
        elif command == "stop":
            await worker.stop()
            _answer({"stopped": True})
            return
    await worker.stop()  # the parent went away


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
