"""BTHome adverts to events: the household's devices only, keyed devices encrypted only, state
changes once, security problems reported (rate limited) and never as alarms; never an exception.

Adverts come from simulator.bthome, written from the BTHome specification, not from a decoder.
"""

from __future__ import annotations

import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.bthome import BTHOME_UUID, BthomeInterpreter
from hub.model import Device, DeviceKind, EventType, Origin, Transport
from simulator.bthome import VirtualBthomeDevice

ORIGIN = Origin("hub-1", "hh-1", "minle")
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
PENDANT = Device("pendant", DeviceKind.PENDANT, Transport.BLE, mac="A4:C1:38:00:00:01", key=KEY.hex(), checkin_s=7200)
SMOKE = Device("smoke", DeviceKind.SMOKE, Transport.BLE, mac="A4:C1:38:00:00:02", key=KEY.hex())
BUTTON = Device("button", DeviceKind.BUTTON, Transport.BLE, mac="A4:C1:38:00:00:03")  # no key: plaintext allowed
MOTION = Device("hall", DeviceKind.MOTION, Transport.BLE, mac="A4:C1:38:00:00:04", key=KEY.hex())


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


def make(**options: object) -> tuple[BthomeInterpreter, Clock, list[tuple[str, int]]]:
    clock = Clock()
    seen: list[tuple[str, int]] = []
    interpreter = BthomeInterpreter(
        ORIGIN,
        [PENDANT, SMOKE, BUTTON, MOTION],
        clock=clock,
        on_activity=lambda d, ns: seen.append(("activity:" + d.id, ns)),
        on_heard=lambda d, ns: seen.append(("heard:" + d.id, ns)),
        **options,  # type: ignore[arg-type]
    )
    return interpreter, clock, seen


def feed(interpreter: BthomeInterpreter, device: Device, data: bytes, ns: int = 10**12, rssi: int = -60):
    assert device.mac is not None
    return interpreter.feed(device.mac, {BTHOME_UUID: data}, rssi, ns)


def types(events) -> list[str]:
    return [e.type.value for e in events]


def test_an_encrypted_pendant_press_is_an_emergency_once_per_burst() -> None:
    interpreter, _, seen = make()
    pendant = VirtualBthomeDevice(PENDANT.mac or "", KEY)
    press = pendant.press()
    (event,) = feed(interpreter, PENDANT, press, ns=5)
    assert (event.type, event.device_id, event.observed_mono_ns) == (EventType.ALARM_EMERGENCY, "pendant", 5)
    assert event.details["button"] == "press" and event.details["transport"] == "ble"
    assert event.device_counter is not None
    assert feed(interpreter, PENDANT, press) == [], "the same advert again (a burst) is not a second alarm"
    assert ("heard:pendant", 5) in seen


def test_pendant_fall_and_double_press() -> None:
    interpreter, clock, _ = make()
    pendant = VirtualBthomeDevice(PENDANT.mac or "", KEY)
    assert types(feed(interpreter, PENDANT, pendant.fall())) == ["alarm.fall"]
    clock.t += 5
    assert types(feed(interpreter, PENDANT, pendant.double_press())) == ["alarm.emergency"]


def test_a_replayed_advert_is_a_security_event_not_an_alarm() -> None:
    interpreter, clock, _ = make()
    pendant = VirtualBthomeDevice(PENDANT.mac or "", KEY)
    first = pendant.press()
    feed(interpreter, PENDANT, first)
    clock.t += 5
    feed(interpreter, PENDANT, pendant.heartbeat())
    clock.t += 5
    (event,) = feed(interpreter, PENDANT, first, ns=2 * 10**12)
    assert event.type is EventType.FAULT_TAMPER and event.details["reason"] == "replay"
    assert interpreter.counts["security_replay"] == 1


def test_a_spoofed_or_plaintext_advert_from_a_keyed_device_is_a_security_event() -> None:
    interpreter, _, _ = make(security_interval_s=0)
    pendant = VirtualBthomeDevice(PENDANT.mac or "", KEY)
    (spoof,) = feed(interpreter, PENDANT, pendant.spoof(bytes(16)))
    assert spoof.type is EventType.FAULT_TAMPER and spoof.details["reason"] == "bad_mic"
    (plain,) = feed(interpreter, PENDANT, pendant.plaintext())
    assert plain.type is EventType.FAULT_TAMPER and plain.details["reason"] == "plaintext"
    assert types(feed(interpreter, PENDANT, pendant.press())) == ["alarm.emergency"], "the real key still works"


def test_security_events_are_rate_limited_per_device() -> None:
    interpreter, _, _ = make(security_interval_s=60)
    pendant = VirtualBthomeDevice(PENDANT.mac or "", KEY)
    reports = [feed(interpreter, PENDANT, pendant.spoof(bytes(16)), ns=i * 10**9) for i in range(10)]
    assert [len(r) for r in reports] == [1] + [0] * 9
    (later,) = feed(interpreter, PENDANT, pendant.spoof(bytes(16)), ns=61 * 10**9)
    assert later.details["suppressed_since_last_report"] == 9


def test_a_device_without_key_may_send_plaintext() -> None:
    interpreter, _, _ = make()
    button = VirtualBthomeDevice(BUTTON.mac or "", None)
    assert types(feed(interpreter, BUTTON, button.press())) == ["alarm.emergency"]


def test_smoke_and_tamper_report_changes_only() -> None:
    interpreter, clock, _ = make()
    smoke = VirtualBthomeDevice(SMOKE.mac or "", KEY)
    assert types(feed(interpreter, SMOKE, smoke.smoke(True))) == ["alarm.fire"]
    clock.t += 5
    assert types(feed(interpreter, SMOKE, smoke.smoke(True))) == [], "smoke still there: no second alarm"
    clock.t += 5
    assert types(feed(interpreter, SMOKE, smoke.smoke(False))) == ["restore.fire"]
    clock.t += 5
    assert types(feed(interpreter, SMOKE, smoke.tamper(True))) == ["fault.tamper"]
    clock.t += 5
    assert types(feed(interpreter, SMOKE, smoke.tamper(False))) == ["restore.tamper"]


def test_battery_low_once_and_restore_with_hysteresis() -> None:
    interpreter, clock, _ = make(battery_low_percent=20)
    pendant = VirtualBthomeDevice(PENDANT.mac or "", KEY)
    results = []
    for level in (50, 19, 15, 22, 26, 10):
        clock.t += 5
        results.append(types(feed(interpreter, PENDANT, pendant.battery_level(level))))
    assert results == [[], ["fault.battery_low"], [], [], ["restore.battery_low"], ["fault.battery_low"]]


def test_motion_is_activity_not_an_event() -> None:
    interpreter, _, seen = make()
    hall = VirtualBthomeDevice(MOTION.mac or "", KEY)
    assert feed(interpreter, MOTION, hall.motion(True), ns=77) == []
    assert ("activity:hall", 77) in seen


def test_strangers_cost_a_lookup_and_nothing_else(caplog) -> None:
    interpreter, _, _ = make()
    caplog.set_level(logging.DEBUG)
    stranger = VirtualBthomeDevice("11:22:33:44:55:66", None)
    assert interpreter.feed("11:22:33:44:55:66", {BTHOME_UUID: stranger.press()}, -70, 1) == []
    assert interpreter.counts["stranger"] == 1
    assert caplog.records == []


def test_malformed_data_is_counted_and_logged_once_a_minute(caplog) -> None:
    interpreter, _, _ = make()
    for ns in (1, 2, 3):
        assert feed(interpreter, PENDANT, b"\x41\x00", ns=ns) == []
    assert feed(interpreter, PENDANT, b"\x20\x01\x64", ns=4) == [], "BTHome v1 header"
    assert interpreter.counts["truncated"] == 3 and interpreter.counts["wrong_version"] == 1
    assert sum("dropped" in r.message for r in caplog.records) == 1


@settings(max_examples=400, deadline=None)
@given(
    data=st.binary(max_size=64),
    which=st.sampled_from([PENDANT, SMOKE, BUTTON, MOTION]),
    service_key=st.sampled_from([BTHOME_UUID, "0000fcd3-0000-1000-8000-00805f9b34fb"]),
    rssi=st.one_of(st.none(), st.integers(-127, 20)),
)
def test_arbitrary_bytes_never_raise_and_never_raise_an_alarm_from_a_keyed_device(data, which, service_key, rssi):
    interpreter, _, _ = make()
    assert which.mac is not None
    events = interpreter.feed(which.mac, {service_key: data}, rssi, 1)
    if which.key is not None:
        assert all(not e.type.is_alarm for e in events), "random bytes cannot pass AES-CCM"


@settings(max_examples=200, deadline=None)
@given(garbage=st.one_of(st.text(), st.integers(), st.lists(st.integers(0, 255)), st.none()))
def test_garbage_property_types_never_raise(garbage) -> None:
    interpreter, _, _ = make()
    assert interpreter.feed(PENDANT.mac or "", {BTHOME_UUID: garbage}, garbage, 1) == []  # type: ignore[dict-item]


def test_a_counter_restart_is_believed_after_three_authentic_adverts_and_then_alarms_flow() -> None:
    interpreter, clock, _ = make(security_interval_s=0)
    before = VirtualBthomeDevice(PENDANT.mac or "", KEY, start_counter=5000)
    feed(interpreter, PENDANT, before.heartbeat())
    after = VirtualBthomeDevice(PENDANT.mac or "", KEY, start_counter=1)  # a new battery, counter from 1
    results = []
    for _ in range(3):
        clock.t += 5
        results.append(types(feed(interpreter, PENDANT, after.heartbeat())))
    assert results[:2] == [["fault.tamper"], ["fault.tamper"]], "replays until confirmed"
    assert results[2][0] == "fault.tamper"
    clock.t += 5
    assert types(feed(interpreter, PENDANT, after.press())) == ["alarm.emergency"]


def test_one_replayed_old_advert_never_rebaselines_the_counter() -> None:
    interpreter, clock, _ = make(security_interval_s=0)
    pendant = VirtualBthomeDevice(PENDANT.mac or "", KEY)
    old = [pendant.heartbeat() for _ in range(3)]
    for data in old:
        clock.t += 5
        feed(interpreter, PENDANT, data)
    clock.t += 5
    feed(interpreter, PENDANT, pendant.heartbeat())
    for data in (old[0], old[0], old[0]):
        clock.t += 5
        (event,) = feed(interpreter, PENDANT, data)
        assert event.details["reason"] == "replay"
