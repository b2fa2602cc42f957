"""Supervision: every radio device has a check-in window; silence past it is a fault.

A device is heard when an authenticated advert or frame arrives from it. `check` reports
`fault.device_offline` once when a device has been silent longer than its window (counting from
the hub's start for a device never heard), and `heard` reports `restore.device_offline` when an
offline device speaks again. Pure logic on an injected monotonic clock (ns); edge/ble.py and
edge/zigbee.py feed it, the service runs `check` periodically.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from hub.model import Device, Event, EventType, Origin


class Supervisor:
    def __init__(self, origin: Origin, devices: Iterable[Device], clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.origin = origin
        self._clock = clock
        start = clock()
        self._devices = {d.id: d for d in devices if d.checkin_s}
        self._last_heard = dict.fromkeys(self._devices, start)
        self._offline: set[str] = set()

    def heard(self, device_id: str, mono_ns: int | None = None) -> list[Event]:
        device = self._devices.get(device_id)
        if device is None:
            return []
        now = self._clock() if mono_ns is None else mono_ns
        self._last_heard[device_id] = now
        if device_id not in self._offline:
            return []
        self._offline.discard(device_id)
        return [self.origin.event(EventType.RESTORE_DEVICE_OFFLINE, device, now)]

    def check(self) -> list[Event]:
        now = self._clock()
        events = []
        for device_id, device in self._devices.items():
            assert device.checkin_s is not None
            silent_s = (now - self._last_heard[device_id]) / 1e9
            if device_id not in self._offline and silent_s > device.checkin_s:
                self._offline.add(device_id)
                events.append(
                    self.origin.event(
                        EventType.FAULT_DEVICE_OFFLINE,
                        device,
                        now,
                        silent_s=round(silent_s, 1),
                        checkin_s=device.checkin_s,
                    )
                )
        return events

    def seconds_until_next_check(self) -> float:
        """When the next device could pass its window (at least 0.2 s, at most 60 s from now)."""
        now = self._clock()
        waits = [
            (self._last_heard[i] - now) / 1e9 + (d.checkin_s or 0)
            for i, d in self._devices.items()
            if i not in self._offline
        ]
        return min(60.0, max(0.2, min(waits, default=60.0)))

    def offline(self) -> frozenset[str]:
        return frozenset(self._offline)
