"""The one vocabulary of the hub: events, their priorities and alarm-centre codes, devices, households.

Every edge adapter (GPIO, BLE, Zigbee) produces the same `Event`; the rules, the journal, the
outbox and every uplink (MQTT, SIA DC-09, SMS) read it. Each event type carries its Ademco
Contact ID code and its SIA code so any monitoring centre can read it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any

from uuid6 import uuid7


class Priority(IntEnum):
    """Delivery order: a lower value leaves the outbox first. A backlog never delays an alarm."""

    ALARM = 0
    FAULT = 1
    INFO = 2

    @property
    def label(self) -> str:
        return self.name.lower()


class TimeSource(StrEnum):
    """Where an event's `occurred_at` comes from (hub.timesync owns the judgement).

    WALL: the hub's wall clock, synchronised when the event happened. MONOTONIC: the wall clock was
    not synchronised yet (a Pi without a real-time clock, after a power cut): `occurred_at` is the
    hub's unsynchronised reading and must not be shown as the time; `observed_mono_ns` and `boot_id`
    place the event. CORRECTED: such an event whose `occurred_at` was recomputed when the clock became
    synchronised in the same boot."""

    WALL = "wall"
    MONOTONIC = "monotonic"
    CORRECTED = "corrected"


class EventType(StrEnum):
    ALARM_EMERGENCY = "alarm.emergency"
    ALARM_FIRE = "alarm.fire"
    ALARM_FALL = "alarm.fall"
    ALARM_INACTIVITY = "alarm.inactivity"
    ALARM_CHECKIN_MISSED = "alarm.checkin_missed"
    PREALARM_FALL = "prealarm.fall"
    CANCEL_EMERGENCY = "cancel.emergency"
    CANCEL_FALL = "cancel.fall"
    RESTORE_FIRE = "restore.fire"
    RESTORE_DEVICE_OFFLINE = "restore.device_offline"
    RESTORE_BATTERY_LOW = "restore.battery_low"
    RESTORE_TAMPER = "restore.tamper"
    RESTORE_RADIO = "restore.radio"
    RESTORE_POWER = "restore.power"
    RESTORE_UPLINK = "restore.uplink"
    RESTORE_DEVICE = "restore.device"
    FAULT_DEVICE_OFFLINE = "fault.device_offline"
    FAULT_BATTERY_LOW = "fault.battery_low"
    FAULT_TAMPER = "fault.tamper"
    FAULT_RADIO = "fault.radio"
    FAULT_POWER = "fault.power"
    FAULT_UPLINK = "fault.uplink"
    FAULT_DEVICE = "fault.device"
    INFO_CHECKIN_OK = "info.checkin_ok"
    INFO_REMINDER_ACK = "info.reminder_ack"
    INFO_REMINDER_MISSED = "info.reminder_missed"
    INFO_COMMISSIONED = "info.commissioned"
    INFO_COMMAND_REFUSED = "info.command_refused"
    INFO_CONFIG_ROLLED_BACK = "info.config_rolled_back"
    TEST_WALK = "test.walk"
    TEST_CALL = "test.call"

    @property
    def spec(self) -> EventSpec:
        return EVENT_SPECS[self]

    @property
    def priority(self) -> Priority:
        return EVENT_SPECS[self].priority

    @property
    def is_alarm(self) -> bool:
        return self.value.startswith("alarm.")


@dataclass(frozen=True)
class EventSpec:
    """How one event type is ranked and coded for alarm centres.

    `contact_id` is the three-digit Ademco Contact ID event code and `qualifier` its qualifier
    (1 = new event, 3 = restore); `sia` is the SIA two-letter event code. None means the type
    has no standard code: it travels over MQTT only and is never sent as a DC-09 alarm.
    """

    priority: Priority
    contact_id: str | None
    qualifier: int
    sia: str | None
    summary: str


_A, _F, _I = Priority.ALARM, Priority.FAULT, Priority.INFO

# Contact ID codes from SIA DC-05 appendix C; SIA codes from the SIA DC-04/DC-07 event code list
# (checked against pysiaalarm's table). Where no standard code fits exactly, the nearest one is used
# and the device id (zone) and the MQTT/SIA-DCS text say the rest: alarm.fall travels as medical
# 100/MA, alarm.checkin_missed as "fail to report in" 102 with SIA NA. A wireless device's battery is
# 384/XT (302/YT would mean the hub's own battery). cancel.* and prealarm.* ride at alarm priority:
# they qualify an alarm the centre is acting on.
EVENT_SPECS: dict[EventType, EventSpec] = {
    EventType.ALARM_EMERGENCY: EventSpec(_A, "100", 1, "MA", "personal emergency call (pull-cord, SOS)"),
    EventType.ALARM_FIRE: EventSpec(_A, "111", 1, "FA", "smoke detected"),
    EventType.ALARM_FALL: EventSpec(_A, "100", 1, "MA", "fall detected, not cancelled"),
    EventType.ALARM_INACTIVITY: EventSpec(_A, "641", 1, "NA", "no activity in waking hours"),
    EventType.ALARM_CHECKIN_MISSED: EventSpec(_A, "102", 1, "NA", "daily check-in not answered"),
    EventType.PREALARM_FALL: EventSpec(_A, None, 1, None, "possible fall, cancel window open"),
    EventType.CANCEL_EMERGENCY: EventSpec(_A, "406", 1, "OC", "the person cancelled an emergency call"),
    EventType.CANCEL_FALL: EventSpec(_I, "406", 1, "OC", "the person cancelled a fall pre-alarm"),
    EventType.RESTORE_FIRE: EventSpec(_F, "111", 3, "FH", "smoke cleared"),
    EventType.RESTORE_DEVICE_OFFLINE: EventSpec(_F, "381", 3, "UJ", "device heard again"),
    EventType.RESTORE_BATTERY_LOW: EventSpec(_F, "384", 3, "XR", "device battery restored"),
    EventType.RESTORE_TAMPER: EventSpec(_F, "144", 3, "TR", "tamper cleared"),
    EventType.RESTORE_RADIO: EventSpec(_F, "333", 3, "ER", "hub radio working again"),
    EventType.RESTORE_POWER: EventSpec(_F, "301", 3, "AR", "mains power restored"),
    EventType.RESTORE_UPLINK: EventSpec(_F, "350", 3, "YK", "link to the centre restored"),
    EventType.RESTORE_DEVICE: EventSpec(_F, "380", 3, "UJ", "device trouble cleared"),
    EventType.FAULT_DEVICE_OFFLINE: EventSpec(_F, "381", 1, "UY", "device silent past its check-in window"),
    EventType.FAULT_BATTERY_LOW: EventSpec(_F, "384", 1, "XT", "device battery low"),
    EventType.FAULT_TAMPER: EventSpec(_F, "144", 1, "TA", "device opened or tampered with"),
    EventType.FAULT_RADIO: EventSpec(_F, "333", 1, "ET", "hub radio (BLE adapter, Zigbee dongle) failed"),
    EventType.FAULT_POWER: EventSpec(_F, "301", 1, "AT", "mains power lost, hub on battery"),
    EventType.FAULT_UPLINK: EventSpec(_F, "350", 1, "YC", "link to the centre failed"),
    EventType.FAULT_DEVICE: EventSpec(_F, "380", 1, "UT", "device reports trouble"),
    EventType.INFO_CHECKIN_OK: EventSpec(_I, None, 1, None, "daily check-in answered"),
    EventType.INFO_REMINDER_ACK: EventSpec(_I, None, 1, None, "reminder acknowledged"),
    EventType.INFO_REMINDER_MISSED: EventSpec(_I, None, 1, None, "reminder not acknowledged"),
    EventType.INFO_COMMISSIONED: EventSpec(_I, "306", 1, "YG", "household commissioned by an installer"),
    EventType.INFO_COMMAND_REFUSED: EventSpec(_I, None, 1, None, "a command from the centre was refused"),
    EventType.INFO_CONFIG_ROLLED_BACK: EventSpec(
        _I, None, 1, None, "a configuration from the centre failed its checks; the previous one runs again"
    ),
    EventType.TEST_WALK: EventSpec(_I, "611", 1, "TP", "walk-test trigger"),
    EventType.TEST_CALL: EventSpec(_I, "601", 1, "RX", "test call to the centre"),
}

assert set(EVENT_SPECS) == set(EventType), "every event type needs a spec"


class DeviceKind(StrEnum):
    PULLCORD = "pullcord"
    SMOKE = "smoke"
    PENDANT = "pendant"
    BUTTON = "button"
    SOS = "sos"
    RADAR = "radar"
    CONTACT = "contact"
    MOTION = "motion"
    POWER = "power"  # a UPS HAT's "mains lost" signal on a GPIO input
    HUB_BUTTON = "hub_button"  # the hub's own button: "I am fine", and held, silence


class Transport(StrEnum):
    GPIO = "gpio"
    BLE = "ble"
    ZIGBEE = "zigbee"


@dataclass(frozen=True)
class Device:
    id: str
    kind: DeviceKind
    transport: Transport
    pin: int | None = None
    room: str | None = None
    mac: str | None = None  # BLE address, upper case
    key: str | None = None  # BTHome AES key, 32 hex digits
    ieee: str | None = None  # Zigbee IEEE address, lower case, colon separated
    checkin_s: float | None = None  # supervision window: silence past it means the device is offline


@dataclass(frozen=True)
class Household:
    id: str
    county: str
    devices: tuple[Device, ...] = ()

    def device(self, device_id: str) -> Device | None:
        return next((d for d in self.devices if d.id == device_id), None)


def new_event_id() -> str:
    """A time-ordered UUIDv7: stable across resends, sortable, unique without coordination."""
    return str(uuid7())


@dataclass(frozen=True)
class Event:
    """Something that happened in the home, as every part of the hub sees it.

    `seq` is the hub's own sequence number, assigned once by the journal; `device_counter` is the
    device's own counter (BTHome packet id, ZCL sequence number) when it has one.
    `observed_mono_ns` is `time.monotonic_ns()` when the hub first saw the stimulus, `boot_id` the
    kernel's id of the boot that clock counts from (None: not judged yet), `time_source` whether
    `occurred_at` can be trusted (`TimeSource`; hub.timesync stamps it).
    """

    type: EventType
    hub_id: str
    household_id: str
    county: str
    device_id: str | None = None
    event_id: str = field(default_factory=new_event_id)
    seq: int | None = None
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    observed_mono_ns: int = field(default_factory=time.monotonic_ns)
    device_counter: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    boot_id: str | None = None
    time_source: TimeSource = TimeSource.WALL

    @property
    def priority(self) -> Priority:
        return self.type.priority

    def with_seq(self, seq: int) -> Event:
        return dataclasses.replace(self, seq=seq)

    def to_message(self, attempt: int, sent_at: datetime | None = None) -> dict[str, Any]:
        """The `event` message of the centre contract (cloud_bridge/contract/schemas/event.json)."""
        if self.seq is None:
            raise ValueError(f"event {self.event_id} has no sequence number: journal it before sending")
        spec = self.type.spec
        return {
            "schema": "anju.event/1",
            "event_id": self.event_id,
            "seq": self.seq,
            "hub_id": self.hub_id,
            "household_id": self.household_id,
            "county": self.county,
            "device_id": self.device_id,
            "type": self.type.value,
            "priority": self.priority.label,
            "contact_id": spec.contact_id,
            "qualifier": spec.qualifier,
            "sia_code": spec.sia,
            "occurred_at": _iso(self.occurred_at),
            "sent_at": _iso(sent_at or datetime.now(UTC)),
            "attempt": attempt,
            "device_counter": self.device_counter,
            "details": self.details,
            "time_source": self.time_source.value,
            "mono_ms": self.observed_mono_ns // 1_000_000,
            "boot_id": self.boot_id,
            "sent_mono_ms": time.monotonic_ns() // 1_000_000,
        }


@dataclass(frozen=True)
class Origin:
    """The hub, household and county an event comes from; makes events for its devices."""

    hub_id: str
    household_id: str
    county: str

    def event(
        self,
        type: EventType,
        device: Device | None,
        observed_mono_ns: int | None = None,
        device_counter: int | None = None,
        occurred_at: datetime | None = None,
        /,
        **details: Any,
    ) -> Event:
        described: dict[str, Any] = {}
        if device is not None:
            described = {"kind": device.kind.value, "transport": device.transport.value}
            if device.room:
                described["room"] = device.room
        described.update(details)
        return Event(
            type,
            self.hub_id,
            self.household_id,
            self.county,
            device.id if device else None,
            observed_mono_ns=observed_mono_ns if observed_mono_ns is not None else time.monotonic_ns(),
            device_counter=device_counter,
            occurred_at=occurred_at or datetime.now(UTC),
            details=described,
        )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_now() -> str:
    return _iso(datetime.now(UTC))
