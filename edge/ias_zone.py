"""IAS Zone status to events: what a Zigbee smoke alarm, SOS button or fall radar means.

ZoneStatus bits (ZCL 8.2.2.2.1.3): 0 Alarm1, 1 Alarm2, 2 Tamper, 3 Battery low, 4 Supervision
reports, 5 Restore reports, 6 Trouble, 7 AC mains fault, 8 Test, 9 Battery defect. What Alarm1 and
Alarm2 mean depends on the zone type (or on the device kind the household registry gives):

| zone / kind | Alarm1 | Alarm2 |
|---|---|---|
| fire 0x0028 (`smoke`) | `alarm.fire`, cleared: `restore.fire` | — |
| personal emergency 0x002C (`sos`) | `alarm.fall` | `alarm.emergency` |
| fall radar (`radar`) | `alarm.fall` | — |
| contact 0x0015, motion 0x000D | activity | activity |

For every kind: Tamper -> `fault.tamper` / `restore.tamper`; Battery -> `fault.battery_low` /
`restore.battery_low`; Trouble -> `fault.device` / `restore.device`; Test -> `test.walk`.
Only changes of a bit make events, and a frame repeated with the same ZCL sequence number within
`duplicate_window_s` is one frame. Pure logic: edge/zigbee.py feeds it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hub.model import Device, DeviceKind, Event, EventType, Origin

ALARM1, ALARM2, TAMPER, BATTERY, TROUBLE, TEST = 0x0001, 0x0002, 0x0004, 0x0008, 0x0040, 0x0100

ZONE_FIRE = 0x0028
ZONE_PERSONAL_EMERGENCY = 0x002C
ZONE_CONTACT = 0x0015
ZONE_MOTION = 0x000D

KIND_FOR_ZONE = {
    ZONE_FIRE: DeviceKind.SMOKE,
    ZONE_PERSONAL_EMERGENCY: DeviceKind.SOS,
    ZONE_CONTACT: DeviceKind.CONTACT,
    ZONE_MOTION: DeviceKind.MOTION,
}

_FAULT_BITS = (
    (TAMPER, EventType.FAULT_TAMPER, EventType.RESTORE_TAMPER),
    (BATTERY, EventType.FAULT_BATTERY_LOW, EventType.RESTORE_BATTERY_LOW),
    (TROUBLE, EventType.FAULT_DEVICE, EventType.RESTORE_DEVICE),
)


def alarm_meaning(kind: DeviceKind) -> dict[int, tuple[EventType | None, EventType | None]]:
    """Alarm bit -> (event when it sets, event when it clears); None: activity only."""
    if kind is DeviceKind.SMOKE:
        return {ALARM1: (EventType.ALARM_FIRE, EventType.RESTORE_FIRE)}
    if kind in (DeviceKind.SOS, DeviceKind.PENDANT, DeviceKind.BUTTON):
        return {ALARM1: (EventType.ALARM_FALL, None), ALARM2: (EventType.ALARM_EMERGENCY, None)}
    if kind is DeviceKind.RADAR:
        return {ALARM1: (EventType.ALARM_FALL, None)}
    return {ALARM1: (None, None), ALARM2: (None, None)}


@dataclass
class _Zone:
    device: Device
    status: int = 0
    recent_tsns: dict[int, int] = field(default_factory=dict)  # tsn -> monotonic ns seen


class IasInterpreter:
    def __init__(
        self,
        origin: Origin,
        duplicate_window_s: float = 10.0,
        on_activity: Callable[[Device, int], None] | None = None,
    ) -> None:
        self.origin = origin
        self._window_ns = int(duplicate_window_s * 1e9)
        self._on_activity = on_activity
        self._zones: dict[str, _Zone] = {}
        self.duplicates = 0

    def zone_status(self, device: Device, status: int, tsn: int | None, now_ns: int) -> list[Event]:
        """A Zone Status Change Notification (tsn given) or a read of ZoneStatus (tsn None)."""
        zone = self._zones.setdefault(device.id, _Zone(device))
        if tsn is not None:
            seen = zone.recent_tsns.get(tsn)
            if seen is not None and now_ns - seen <= self._window_ns:
                self.duplicates += 1
                return []
            zone.recent_tsns = {k: v for k, v in zone.recent_tsns.items() if now_ns - v <= self._window_ns}
            zone.recent_tsns[tsn] = now_ns
        before, zone.status = zone.status, status
        rose, fell = status & ~before, before & ~status
        events: list[Event] = []

        def add(kind: EventType) -> None:
            events.append(self.origin.event(kind, device, now_ns, tsn, zone_status=f"0x{status:04x}"))

        for bit, (on_set, on_clear) in alarm_meaning(device.kind).items():
            if rose & bit:
                if on_set is not None:
                    add(on_set)
                elif self._on_activity is not None:
                    self._on_activity(device, now_ns)
            if fell & bit and on_clear is not None:
                add(on_clear)
        for bit, fault, restore in _FAULT_BITS:
            if rose & bit:
                add(fault)
            if fell & bit:
                add(restore)
        if rose & TEST:
            add(EventType.TEST_WALK)
        return events

    def known_status(self, device_id: str) -> int | None:
        zone = self._zones.get(device_id)
        return zone.status if zone else None
