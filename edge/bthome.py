"""BTHome v2 adverts from the household's BLE devices, turned into events.

Decoding, AES-CCM and the packet-id duplicate filter are the reference implementation's, the
`bthome-ble` library. This module adds what a safety hub needs on top:
- only devices in the household's registry count; strangers are dropped on the first dict look-up;
- a device with a key must send encrypted adverts; a plaintext advert, a wrong key (bad MIC) or an
  encryption counter that goes backwards (a replay) is a security event, `fault.tamper` with a
  reason, never an alarm, reported at most once per device per `security_interval_s`
  (bthome-ble alone would accept a replayed advert whose counter is below 100);
- state changes become events: a button press on a pendant, button or pull-cord node ->
  `alarm.emergency`; the pendant's fall (Anju convention: a `press` on its second button object)
  -> `alarm.fall`; smoke -> `alarm.fire` and `restore.fire`; tamper -> `fault.tamper` and its
  restore; battery below the configured level -> `fault.battery_low` (and restore 5 points above);
  motion, occupancy and opening -> activity (for the inactivity rule), not events.

`feed` never raises: malformed, truncated or random service data, unknown versions and decoder
errors are counted per reason and logged at most once per device per minute.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bleak.backends.device import BLEDevice
from bthome_ble import BTHomeBluetoothDeviceData
from habluetooth import BluetoothServiceInfoBleak

from hub.model import Device, DeviceKind, Event, EventType, Origin

log = logging.getLogger(__name__)

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
CALL_FOR_HELP = frozenset({DeviceKind.PENDANT, DeviceKind.BUTTON, DeviceKind.PULLCORD, DeviceKind.SOS})
HELP_BUTTON_EVENTS = frozenset({"press", "double_press", "triple_press", "long_press", "hold_press"})
ACTIVITY_SENSORS = frozenset({"motion", "occupancy", "opening", "door", "window", "presence", "moving"})
BATTERY_HYSTERESIS = 5
# A device whose counter restarts (a battery change on a device that keeps it in RAM) is believed
# after this many authentic adverts (MIC verified) with increasing counters below the old one; a
# replayed advert alone never is.
RESTART_CONFIRMATIONS = 3

DeviceHandler = Callable[[Device, int], None]
# (device, signal as a person reads it, battery percent): what the installer's device list shows.
ReadingHandler = Callable[[Device, str | None, float | None], None]
"""Called with a device and the monotonic ns of an advert (heard, or activity seen)."""


@dataclass
class _Tracked:
    device: Device
    parser: BTHomeBluetoothDeviceData
    key: bytes | None
    last_counter: int | None = None
    binary: dict[str, bool] = field(default_factory=dict)
    battery_low: bool = False
    last_security_report_ns: int | None = None
    security_suppressed: int = 0
    last_problem_log_ns: int | None = None
    restart_candidates: list[int] = field(default_factory=list)


class BthomeInterpreter:
    def __init__(
        self,
        origin: Origin,
        devices: list[Device],
        battery_low_percent: int = 20,
        security_interval_s: float = 60.0,
        on_activity: DeviceHandler | None = None,
        on_heard: DeviceHandler | None = None,
        clock: Callable[[], float] = time.time,
        on_reading: ReadingHandler | None = None,
    ) -> None:
        self.origin = origin
        self.battery_low_percent = battery_low_percent
        self._security_interval_ns = int(security_interval_s * 1e9)
        self._on_activity = on_activity
        self._on_heard = on_heard
        self._on_reading = on_reading
        self._clock = clock
        self.counts: Counter[str] = Counter()
        self._tracked: dict[str, _Tracked] = {}
        for device in devices:
            if device.mac is None:
                continue
            key = bytes.fromhex(device.key) if device.key else None
            self._tracked[device.mac.upper()] = _Tracked(device, BTHomeBluetoothDeviceData(key), key)

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset(self._tracked)

    def feed(
        self, address: str, service_data: Mapping[str, bytes], rssi: int | None, observed_mono_ns: int
    ) -> list[Event]:
        """One advert as BlueZ reported it. Returns the events it means (often none). Never raises."""
        tracked = self._tracked.get(address) or self._tracked.get(address.upper())
        if tracked is None:
            self.counts["stranger"] += 1
            return []
        try:
            return self._feed(tracked, service_data, rssi, observed_mono_ns)
        except Exception as exc:  # the radio must never take the hub down; count, log, go on
            self._problem(tracked, "decoder_error", observed_mono_ns, f"{type(exc).__name__}: {exc}")
            return []

    def _feed(self, tracked: _Tracked, service_data: Mapping[str, bytes], rssi: int | None, now_ns: int) -> list[Event]:
        data = service_data.get(BTHOME_UUID)
        if not isinstance(data, bytes | bytearray) or len(data) < 1:
            self._problem(tracked, "no_bthome_data", now_ns, "no BTHome service data in the advert")
            return []
        data = bytes(data)
        version = data[0] >> 5
        if version != 2:
            self._problem(tracked, "wrong_version", now_ns, f"BTHome version {version}, expected 2")
            return []
        encrypted = bool(data[0] & 0x01)
        counter: int | None = None
        if tracked.key is not None:
            if not encrypted:
                return self._security(tracked, now_ns, "plaintext", "plaintext advert from a device that has a key")
            if len(data) < 1 + 1 + 8:
                self._problem(tracked, "truncated", now_ns, f"encrypted advert of {len(data)} bytes is too short")
                return []
            counter = int.from_bytes(data[-8:-4], "little")
            if tracked.last_counter is not None:
                if counter == tracked.last_counter:
                    self.counts["repeat"] += 1  # the same advert again (a burst): nothing new
                    return []
                if counter < tracked.last_counter:
                    restarted = self._counter_restarted(tracked, data, counter, rssi)
                    if not restarted:
                        return self._security(
                            tracked,
                            now_ns,
                            "replay",
                            f"encryption counter went back from {tracked.last_counter} to {counter}",
                        )
                    log.warning(
                        "%s restarted its encryption counter (%d -> %d), confirmed by %d authentic adverts",
                        tracked.device.id,
                        tracked.last_counter,
                        counter,
                        RESTART_CONFIRMATIONS,
                    )
                    restart_report = self.origin.event(
                        EventType.FAULT_TAMPER,
                        tracked.device,
                        now_ns,
                        counter,
                        reason="counter_reset",
                        text=f"encryption counter restarted from {tracked.last_counter} at {counter}",
                    )
                    tracked.last_counter = None
                    tracked.parser.reset_encryption_counter()
                    events = self._feed(tracked, service_data, rssi, now_ns)
                    return [restart_report, *events]
            tracked.restart_candidates.clear()

        update = tracked.parser.update(self._service_info(tracked, data, rssi))
        if tracked.key is not None:
            if tracked.parser.decryption_failed:
                return self._security(tracked, now_ns, "bad_mic", "wrong key or damaged advert (bad MIC)")
            tracked.last_counter = counter
        self.counts["accepted"] += 1
        if self._on_heard is not None:
            self._on_heard(tracked.device, now_ns)
        if self._on_reading is not None:
            battery = next(
                (
                    float(v.native_value)
                    for k, v in update.entity_values.items()
                    if k.key == "battery" and isinstance(v.native_value, int | float)
                ),
                None,
            )
            self._on_reading(tracked.device, f"{rssi} dBm" if isinstance(rssi, int) and rssi > -127 else None, battery)
        return self._events(tracked, update, counter, now_ns)

    def _counter_restarted(self, tracked: _Tracked, data: bytes, counter: int, rssi: int | None) -> bool:
        """A lower counter: True once RESTART_CONFIRMATIONS authentic adverts count up from a new start."""
        probe = BTHomeBluetoothDeviceData(tracked.key)  # no counter history: it checks the MIC only
        probe.update(self._service_info(tracked, data, rssi))
        if probe.decryption_failed:
            return False
        candidates = tracked.restart_candidates
        if candidates and counter <= candidates[-1]:
            candidates.clear()
        candidates.append(counter)
        if len(candidates) >= RESTART_CONFIRMATIONS:
            candidates.clear()
            return True
        return False

    def _service_info(self, tracked: _Tracked, data: bytes, rssi: int | None) -> BluetoothServiceInfoBleak:
        address = tracked.device.mac or ""
        return BluetoothServiceInfoBleak(
            name=tracked.device.id,
            address=address,
            rssi=rssi if isinstance(rssi, int) else -127,
            manufacturer_data={},
            service_data={BTHOME_UUID: data},
            service_uuids=[BTHOME_UUID],
            source="hci0",
            device=BLEDevice(address, tracked.device.id, None),
            advertisement=None,
            connectable=False,
            time=self._clock(),
            tx_power=None,
        )

    def _events(self, tracked: _Tracked, update: Any, counter: int | None, now_ns: int) -> list[Event]:
        device = tracked.device
        events: list[Event] = []
        ident = counter if counter is not None else _as_int(tracked.parser.packet_id)

        def add(kind: EventType, **details: Any) -> None:
            events.append(self.origin.event(kind, device, now_ns, ident, **details))

        for key, value in update.events.items():
            name, event_type = key.key, value.event_type
            if device.kind is DeviceKind.PENDANT and name == "button_2" and event_type == "press":
                add(EventType.ALARM_FALL, source="pendant fall detector")
            elif device.kind in CALL_FOR_HELP and name in ("button", "button_1") and event_type in HELP_BUTTON_EVENTS:
                add(EventType.ALARM_EMERGENCY, button=event_type)
        for key, value in update.binary_entity_values.items():
            name, state = key.key, bool(value.native_value)
            before = tracked.binary.get(name)
            tracked.binary[name] = state
            if state == before:
                continue
            if name == "smoke":
                if state:
                    add(EventType.ALARM_FIRE)
                elif before:
                    add(EventType.RESTORE_FIRE)
            elif name == "tamper":
                if state:
                    add(EventType.FAULT_TAMPER, reason="opened")
                elif before:
                    add(EventType.RESTORE_TAMPER)
            elif name == "battery":  # the binary "battery low" object
                self._battery(tracked, state, add, None)
            elif name in ACTIVITY_SENSORS and state and self._on_activity is not None:
                self._on_activity(device, now_ns)
        for key, value in update.entity_values.items():
            if key.key == "battery" and isinstance(value.native_value, int | float):
                percent = float(value.native_value)
                if percent < self.battery_low_percent:
                    self._battery(tracked, True, add, percent)
                elif percent >= self.battery_low_percent + BATTERY_HYSTERESIS:
                    self._battery(tracked, False, add, percent)
        return events

    def _battery(self, tracked: _Tracked, low: bool, add: Callable[..., None], percent: float | None) -> None:
        if low == tracked.battery_low:
            return
        tracked.battery_low = low
        details = {} if percent is None else {"battery_percent": percent}
        add(EventType.FAULT_BATTERY_LOW if low else EventType.RESTORE_BATTERY_LOW, **details)

    def _security(self, tracked: _Tracked, now_ns: int, reason: str, text: str) -> list[Event]:
        self.counts[f"security_{reason}"] += 1
        last = tracked.last_security_report_ns
        if last is not None and now_ns - last < self._security_interval_ns:
            tracked.security_suppressed += 1
            return []
        tracked.last_security_report_ns = now_ns
        suppressed, tracked.security_suppressed = tracked.security_suppressed, 0
        log.warning("security: %s (%s): %s", tracked.device.id, tracked.device.mac, text)
        return [
            self.origin.event(
                EventType.FAULT_TAMPER,
                tracked.device,
                now_ns,
                reason=reason,
                text=text,
                suppressed_since_last_report=suppressed,
            )
        ]

    def _problem(self, tracked: _Tracked, reason: str, now_ns: int, text: str) -> None:
        self.counts[reason] += 1
        last = tracked.last_problem_log_ns
        if last is None or now_ns - last >= 60_000_000_000:
            tracked.last_problem_log_ns = now_ns
            log.warning("BLE advert from %s (%s) dropped: %s", tracked.device.id, tracked.device.mac, text)


def _as_int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) else None


class DecodeError(ValueError):
    """Service data that cannot be decoded for a person: the message is one line saying why."""


def decode_service_data(data: bytes, mac: str = "00:00:00:00:00:00", key: bytes | None = None) -> dict[str, Any]:
    """Decode one advert's BTHome service data (the bytes after the UUID) with bthome-ble.

    Returns {"encrypted", "trigger_based", "packet_id", "counter", "values", "events"}; names are
    bthome.io's in snake case. Raises DecodeError for a wrong key, a bad MIC or unusable data.
    """
    if not data:
        raise DecodeError("no service data")
    version = data[0] >> 5
    if version != 2:
        raise DecodeError(f"BTHome version {version} in the device-info byte 0x{data[0]:02x}; only version 2 is read")
    encrypted = bool(data[0] & 0x01)
    if encrypted and key is None:
        raise DecodeError("the advert is encrypted: give the device's key (--key, 32 hex digits)")
    if encrypted and len(data) < 10:
        raise DecodeError(f"encrypted advert of {len(data)} bytes is too short (needs counter and MIC)")
    parser = BTHomeBluetoothDeviceData(key)
    info = BluetoothServiceInfoBleak(
        name="",
        address=mac.upper(),
        rssi=-127,
        manufacturer_data={},
        service_data={BTHOME_UUID: data},
        service_uuids=[BTHOME_UUID],
        source="decode",
        device=BLEDevice(mac.upper(), None, None),
        advertisement=None,
        connectable=False,
        time=time.time(),
        tx_power=None,
    )
    update = parser.update(info)
    if encrypted and parser.decryption_failed:
        raise DecodeError("bad MIC: wrong key, wrong MAC, or a damaged advert")
    values: dict[str, Any] = {}
    for entity, value in update.entity_values.items():
        if entity.key != "signal_strength":
            values[entity.key] = value.native_value
    for entity, binary in update.binary_entity_values.items():
        values[entity.key] = bool(binary.native_value)
    return {
        "encrypted": encrypted,
        "trigger_based": bool(data[0] & 0x04),
        "packet_id": _as_int(parser.packet_id),
        "counter": int.from_bytes(data[-8:-4], "little") if encrypted else None,
        "values": values,
        "events": [event.event_type for event in update.events.values()],
    }
