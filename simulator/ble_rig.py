"""The BLE side of a scenario run: the fake bluetoothd, the household's virtual BTHome devices,
their heartbeats, strangers advertising nearby, and the BLE steps of the timeline.

Virtual devices build their adverts with the firmware's own encoder (simulator.bthome ->
firmware/lib/bthome.py). Anju's own devices (pendants, pull-cord nodes, SOS and plain buttons)
also run the firmware's node logic (firmware/lib/node.py): a press or a fall is its burst of
trigger-based adverts with one packet id and a new counter each, and its heartbeats carry the
battery, at the node's own pace. A pendant's fall is confirmed first by the firmware's detector
on a recorded fall (simulator.fall_motion). The hub's bleak/BlueZ code receives everything through
the fake `org.bluez` on a private D-Bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from firmware.lib.node import Node
from hub.model import DeviceKind, Transport
from simulator.ble import FakeBluez
from simulator.bthome import VirtualBthomeDevice, service_data
from simulator.fall_motion import detected_after, fall_samples
from simulator.scenario import Scenario, Step

log = logging.getLogger(__name__)

BURST = 3  # third-party devices (smoke, motion, contact): a burst of identical adverts
BURST_GAP_S = 0.1
OUR_KINDS = frozenset({DeviceKind.PENDANT, DeviceKind.PULLCORD, DeviceKind.SOS, DeviceKind.BUTTON})
NODE_EVENTS = frozenset({"press", "double_press", "long_press", "fall"})
NODE_BURST = (3, 200)  # adverts and ms per burst: the firmware's 5 over 1 s, shortened for scenarios


class _SharedCounter:
    """The node's encryption counters, taken from the virtual device (which attack steps also use)."""

    def __init__(self, device: VirtualBthomeDevice) -> None:
        self.device = device

    def take(self) -> int:
        counter = self.device.counter
        self.device.counter = (counter + 1) % (1 << 32)
        return counter


class _DeviceEncoder:
    """The node's encoder: the firmware's, with the virtual device's key and MAC."""

    def __init__(self, device: VirtualBthomeDevice) -> None:
        self.device = device

    def encrypt(self, objects: list[tuple[int, Any]], counter: int, trigger_based: bool = False) -> bytes:
        pairs: Any = objects  # the firmware encoder takes (id, value) pairs as well as encoded objects
        return service_data(
            pairs, mac=self.device.mac, key=self.device.key, counter=counter, trigger_based=trigger_based
        )


class BleRig:
    def __init__(self, scenario: Scenario, workdir: Path, note: Callable[[int, str, str], None]) -> None:
        self.scenario = scenario
        self.options = scenario.ble
        self.bluez = FakeBluez(workdir, passive=self.options.passive)
        self._note = note
        self.devices = {d.id: d for d in scenario.devices if d.transport is Transport.BLE}
        self.virtual = {
            d.id: VirtualBthomeDevice(d.mac or "", bytes.fromhex(d.key) if d.key else None)
            for d in self.devices.values()
        }
        self.rssi = dict.fromkeys(self.devices, -60)
        self.silenced: set[str] = set()
        self.bursting: set[str] = set()  # a device sends its burst before any newer advert, as on air
        self._strangers = [_random_mac() for _ in range(self.options.strangers)]
        self._tasks: list[asyncio.Task[None]] = []
        self.battery = dict.fromkeys(self.devices, 90)
        self.nodes = {
            device_id: Node(
                _DeviceEncoder(self.virtual[device_id]),
                _SharedCounter(self.virtual[device_id]) if self.virtual[device_id].key else None,
                lambda: int(time.monotonic() * 1000),
                lambda device_id=device_id: self.battery[device_id],  # type: ignore[misc]
                heartbeat_s=self.options.heartbeat_s,  # type: ignore[arg-type]
                burst_count=NODE_BURST[0],
                burst_span_ms=NODE_BURST[1],
            )
            for device_id, device in self.devices.items()
            if device.kind in OUR_KINDS
        }
        self._wake = {device_id: asyncio.Event() for device_id in self.nodes}

    async def start(self) -> None:
        await self.bluez.start()
        self._tasks.append(asyncio.create_task(self._heartbeats()))
        for device_id in self.nodes:
            self._tasks.append(asyncio.create_task(self._run_node(device_id)))

    async def _run_node(self, device_id: str) -> None:
        """Put on the air what the node says is due, when it says so (heartbeats, bursts)."""
        node, mac, wake = self.nodes[device_id], self.devices[device_id].mac or "", self._wake[device_id]
        while True:
            for data in node.tick():
                self.virtual[device_id].packet_id = node.packet_id  # attack steps go on from here
                self.virtual[device_id].sent.append(data)  # what an attacker nearby could capture
                if device_id not in self.silenced:
                    await self._send(mac, data, self.rssi[device_id])
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), max(0.005, node.idle_ms() / 1000))

    def env(self) -> dict[str, str]:
        return {"DBUS_SYSTEM_BUS_ADDRESS": self.bluez.address}

    def hub_config(self) -> dict[str, Any]:
        return {
            "adapter_reset": "none",
            "silence_restart_s": self.options.silence_restart_s,
            "security_interval_s": 1,
            "retry_max_s": 1.0,
        }

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.bluez.stop()

    async def _heartbeats(self) -> None:
        stranger = VirtualBthomeDevice("00:00:00:00:00:00", None)
        while True:
            for device_id, device in self.devices.items():
                if device_id in self.nodes:  # its node sends its own heartbeats
                    continue
                if device_id not in self.silenced and device_id not in self.bursting:
                    await self._send(device.mac or "", self.virtual[device_id].heartbeat(), self.rssi[device_id])
            if self._strangers:
                data = stranger.heartbeat()
                await self.bluez.advertise_many([(mac, {"fcd2": data}, -85) for mac in self._strangers])
            await asyncio.sleep(self.options.heartbeat_s)

    async def _send(self, mac: str, data: bytes, rssi: int) -> None:
        with contextlib.suppress(Exception):  # the adapter may be "gone": adverts are lost, as on air
            await self.bluez.advertise(mac, {"fcd2": data}, rssi=rssi)

    async def play(self, step: Step) -> int | None:
        """Play one step; returns the monotonic ns of the stimulus for steps that should raise an alarm."""
        if step.ble is not None:
            await self._adapter_step(step.ble)
            return None
        assert step.device is not None and step.do is not None
        device = self.devices[step.device]
        virtual = self.virtual[step.device]
        mac = device.mac or ""
        action = step.do
        if action in ("silence", "resume"):
            (self.silenced.add if action == "silence" else self.silenced.discard)(step.device)
            self._note(
                time.monotonic_ns(),
                "device",
                f"{step.device}: {'stops' if action == 'silence' else 'resumes'} advertising",
            )
            return None
        if action == "rssi":
            self.rssi[step.device] = int(step.value if step.value is not None else -60)
            return None
        if action == "fall":
            # The pendant's own detector decides, on a recorded fall (simulator.fall_motion).
            confirmed_after = detected_after()
            source = fall_samples()[1]
            if confirmed_after is None:
                self._note(time.monotonic_ns(), "device", f"{step.device}: {source}: the detector did not confirm it")
                return None
            self._note(
                time.monotonic_ns(),
                "device",
                f"{step.device}: {source} through the firmware's fall detector: confirmed after"
                f" {confirmed_after:.1f} s of motion",
            )
        if step.device in self.nodes and action in NODE_EVENTS:
            node = self.nodes[step.device]
            node.fall() if action == "fall" else node.press(action)
            sent = time.monotonic_ns()
            self._wake[step.device].set()
            self._note(sent, "device", f"{step.device}: {action} (the firmware node's burst of BTHome adverts)")
            return sent
        if step.device in self.nodes:  # an attack or a battery step: it goes on from the node's packet id
            virtual.packet_id = self.nodes[step.device].packet_id
            if action == "battery" and step.value is not None:
                self.battery[step.device] = int(step.value)
        data = self._advert(action, step, virtual)
        if step.device in self.nodes:
            self.nodes[step.device].packet_id = virtual.packet_id
        sent = time.monotonic_ns()
        await self._send(mac, data, self.rssi[step.device])
        self._note(sent, "device", f"{step.device}: {action} (BTHome advert, {len(data)} bytes)")
        if action in ("press", "double_press", "long_press", "fall", "smoke"):
            self.bursting.add(step.device)
            self._tasks.append(asyncio.create_task(self._burst(step.device, mac, data, self.rssi[step.device])))
            return sent
        return None

    def _advert(self, action: str, step: Step, virtual: VirtualBthomeDevice) -> bytes:
        if action == "replay":
            return virtual.replay(0)  # an old captured advert, sent again
        if action == "spoof":
            return virtual.spoof(os.urandom(16))
        if action == "plaintext":
            return virtual.plaintext()
        if action == "battery":
            return virtual.battery_level(int(step.value if step.value is not None else 10))
        simple: dict[str, Callable[[], bytes]] = {
            "press": virtual.press,
            "double_press": virtual.double_press,
            "long_press": virtual.long_press,
            "fall": virtual.fall,
            "smoke": lambda: virtual.smoke(True),
            "clear": lambda: virtual.smoke(False),
            "tamper": lambda: virtual.tamper(True),
            "motion": lambda: virtual.motion(True),
            "open": lambda: virtual.opening(True),
            "close": lambda: virtual.opening(False),
        }
        return simple[action]()

    async def _burst(self, device_id: str, mac: str, data: bytes, rssi: int) -> None:
        try:
            for _ in range(BURST - 1):
                await asyncio.sleep(BURST_GAP_S)
                await self._send(mac, data, rssi)
        finally:
            self.bursting.discard(device_id)

    async def _adapter_step(self, fault: str) -> None:
        now = time.monotonic_ns()
        if fault == "adapter_gone":
            await self.bluez.remove_adapter()
            self._note(now, "radio", "BLE adapter removed (InterfacesRemoved hci0)")
        elif fault == "adapter_back":
            await self.bluez.restore_adapter()
            self._note(now, "radio", "BLE adapter back")
        elif fault == "in_progress":
            self.bluez.fail_start_discovery("org.bluez.Error.InProgress", times=3)
            self.bluez.fail_register_monitor("org.bluez.Error.InProgress", times=3)
            self._note(now, "radio", "BlueZ will answer the next 3 scan starts with org.bluez.Error.InProgress")
        elif fault == "garbage":
            first = next(iter(self.devices.values()))
            await self.bluez.send_garbage_properties(first.mac or "")
            self._note(now, "radio", f"garbage D-Bus property types for {first.id}")


def _random_mac() -> str:
    return ":".join(f"{random.randrange(256):02X}" for _ in range(6))
