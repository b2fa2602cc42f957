"""The Zigbee side of a scenario run: a virtual CC2652 coordinator on a pseudo-terminal
(simulator.znp) hosting the household's IAS Zone devices, their check-ins, and the Zigbee steps.

The hub opens the dongle's stable symlink exactly as it would open /dev/ttyUSB0, and zigpy-znp
speaks real MT frames to it. Devices without a `join` step in the scenario are joined (and
enrolled by the hub) before the timeline starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hub.model import Transport
from simulator.scenario import Scenario, Step
from simulator.znp import VirtualZnp

log = logging.getLogger(__name__)

PULSE_S = 0.5  # an SOS press or a radar's fall sets its alarm bit, then clears it


class ZigbeeRig:
    def __init__(self, scenario: Scenario, workdir: Path, note: Callable[[int, str, str], None]) -> None:
        self.scenario = scenario
        self.options = scenario.zigbee
        self.dongle = VirtualZnp(workdir)
        self._note = note
        self.devices = {d.id: d for d in scenario.devices if d.transport is Transport.ZIGBEE}
        self.joined_by_step = {s.device for s in scenario.steps if s.do == "join"}
        self.bits: dict[str, dict[str, bool]] = {device_id: {} for device_id in self.devices}
        self.silenced: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.dongle.start()
        for index, device in enumerate(self.devices.values()):
            self.dongle.add_device(
                device.ieee or "", 0x1000 + index, device.kind.value, model=f"anju-{device.kind.value}"
            )

    def hub_config(self) -> dict[str, Any]:
        return {
            "port": str(self.dongle.port_path),
            "permit_on_start_s": 254,
            "ping_s": self.options.ping_s,
            "fault_after_s": self.options.fault_after_s,
            "retry_max_s": 1.0,
        }

    async def ready(self) -> None:
        """After the hub is ready: join every device that has no `join` step, then start check-ins."""
        for device_id, device in self.devices.items():
            if device_id not in self.joined_by_step:
                await self._join(device.ieee or "", device_id)
        self._tasks.append(asyncio.create_task(self._checkins()))

    async def _join(self, ieee: str, device_id: str) -> None:
        async with asyncio.timeout(30):
            while not self.dongle.permit_join_open:
                await asyncio.sleep(0.05)
            await self.dongle.join(ieee)
            while not self.dongle.devices[ieee].enrolled:
                await asyncio.sleep(0.05)
        self._note(time.monotonic_ns(), "device", f"{device_id}: joined and enrolled by the hub")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.dongle.stop()

    async def _checkins(self) -> None:
        while True:
            await asyncio.sleep(self.options.heartbeat_s)
            for device_id, device in self.devices.items():
                if device_id not in self.silenced and self.dongle.devices[device.ieee or ""].enrolled:
                    with contextlib.suppress(Exception):  # the dongle may be unplugged: lost, as on air
                        await self.dongle.report_battery(device.ieee or "", 90)

    async def play(self, step: Step) -> int | None:
        """Play one step; returns the monotonic ns of the stimulus for steps that should raise an alarm."""
        if step.radio is not None:
            await self._radio_step(step.radio)
            return None
        assert step.device is not None and step.do is not None
        device = self.devices[step.device]
        ieee = device.ieee or ""
        action = step.do
        if action == "join":
            await self._join(ieee, step.device)
            return None
        if action in ("silence", "resume"):
            (self.silenced.add if action == "silence" else self.silenced.discard)(step.device)
            self._note(
                time.monotonic_ns(),
                "device",
                f"{step.device}: {'stops' if action == 'silence' else 'resumes'} checking in",
            )
            return None
        bits = self.bits[step.device]
        changes = {
            "smoke": {"alarm1": True},
            "clear": {"alarm1": False},
            "press": {"alarm2": True},
            "fall": {"alarm1": True},
            "tamper": {"tamper": True},
            "battery_low": {"battery_low": True},
            "open": {"alarm1": True},
            "close": {"alarm1": False},
            "motion": {"alarm1": True},
        }[action]
        bits.update(changes)
        sent = time.monotonic_ns()
        await self._send_status(ieee, bits)
        self._note(sent, "device", f"{step.device}: {action} (Zone Status Change Notification)")
        if action in ("press", "fall", "motion"):
            self._tasks.append(asyncio.create_task(self._clear_later(ieee, bits, next(iter(changes)))))
        return sent if action in ("press", "fall", "smoke") else None

    async def _send_status(self, ieee: str, bits: dict[str, bool]) -> None:
        with contextlib.suppress(Exception):  # sent while unplugged: the frame is lost
            await self.dongle.zone_status(ieee, **bits)

    async def _clear_later(self, ieee: str, bits: dict[str, bool], bit: str) -> None:
        await asyncio.sleep(PULSE_S)
        bits[bit] = False
        await self._send_status(ieee, bits)

    async def _radio_step(self, fault: str) -> None:
        now = time.monotonic_ns()
        if fault == "unplug":
            await self.dongle.unplug()
            self._note(now, "radio", "Zigbee dongle unplugged")
        elif fault == "replug":
            await self.dongle.replug()
            self._note(now, "radio", "Zigbee dongle plugged in again")
        elif fault == "reset":
            await self.dongle.reset()
            self._note(now, "radio", "Zigbee dongle reset itself (SYS_RESET_IND)")
        elif fault == "garbage":
            await self.dongle.send_garbage(bytes(random.randrange(256) for _ in range(64)) + b"\xfe\x05\x45")
            self._note(now, "radio", "64 random bytes and a truncated frame on the serial line")
        elif fault == "duplicate":
            self.dongle.duplicate_next()
            self._note(now, "radio", "the dongle will send its next device frame twice")
        elif fault == "hang":
            self.dongle.hang(self.options.hang_s)
            self._note(now, "radio", f"Zigbee dongle stops answering for {self.options.hang_s:g} s")
