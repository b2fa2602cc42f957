"""What the hub last heard from each device, for people: when, how strong, how much battery.

The radios report every frame they accept (`heard`); the installer's device list and the walk
test read it. It is a view, not a record: it starts empty at every start of the hub.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Reading:
    last_seen: float  # time.time()
    signal: str | None = None  # "-67 dBm", "LQI 180 / -60 dBm"
    battery_percent: float | None = None


class DeviceBook:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._readings: dict[str, Reading] = {}

    def heard(self, device_id: str, signal: str | None = None, battery_percent: float | None = None) -> None:
        reading = self._readings.get(device_id)
        if reading is None:
            self._readings[device_id] = Reading(self._clock(), signal, battery_percent)
            return
        reading.last_seen = self._clock()
        if signal is not None:
            reading.signal = signal
        if battery_percent is not None:
            reading.battery_percent = battery_percent

    def get(self, device_id: str) -> Reading | None:
        return self._readings.get(device_id)
