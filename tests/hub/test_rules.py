"""Local rules: an alarm sounds the siren and speaks before the event is handed on; acks are spoken."""

from __future__ import annotations

import time
from typing import Any

import pytest

from hub.model import Device, DeviceKind, Event, EventType, Origin, Priority, Transport
from hub.rules import Rules

HUB, HOUSEHOLD, COUNTY = "hub-0001", "hh-42", "anxi"

CORD = Device("pullcord_bathroom", DeviceKind.PULLCORD, Transport.GPIO, pin=17, room="bathroom")
SMOKE = Device("smoke_kitchen", DeviceKind.SMOKE, Transport.ZIGBEE, room="kitchen")
MOTION = Device("motion_hall", DeviceKind.MOTION, Transport.BLE, room="hall")


class Recorder:
    """One timeline for every output and for emit, so the order of effects can be checked."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.emitted: list[tuple[Event, int | None]] = []

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]

    def emit(self, event: Event, alerted_mono_ns: int | None) -> None:
        self.calls.append(("emit", event.type))
        self.emitted.append((event, alerted_mono_ns))


class FakeSiren:
    def __init__(self, log: Recorder) -> None:
        self._log = log

    def sound(self, pattern: str) -> None:
        self._log.calls.append(("siren.sound", pattern))

    def silence(self) -> None:
        self._log.calls.append(("siren.silence",))


class FakeLed:
    def __init__(self, log: Recorder) -> None:
        self._log = log

    def waiting(self) -> None:
        self._log.calls.append(("led.waiting",))

    def acknowledged(self) -> None:
        self._log.calls.append(("led.acknowledged",))


class FakeVoice:
    def __init__(self, log: Recorder) -> None:
        self._log = log

    def say(self, name: str, urgent: bool = False) -> bool:
        self._log.calls.append(("voice.say", name, urgent))
        return True


@pytest.fixture
def log() -> Recorder:
    return Recorder()


@pytest.fixture
def rules(log: Recorder) -> Rules:
    return Rules(Origin(HUB, HOUSEHOLD, COUNTY), FakeSiren(log), FakeLed(log), FakeVoice(log), log.emit)


def _event(kind: EventType, device: Device = CORD) -> Event:
    return Event(kind, HUB, HOUSEHOLD, COUNTY, device.id)


@pytest.mark.parametrize("kind", [DeviceKind.PULLCORD, DeviceKind.BUTTON, DeviceKind.SOS, DeviceKind.PENDANT])
def test_a_call_for_help_sounds_the_siren_and_speaks_before_anything_is_emitted(
    rules: Rules, log: Recorder, kind: DeviceKind
) -> None:
    device = Device(f"{kind.value}_1", kind, Transport.GPIO, pin=17, room="bathroom")
    observed = time.monotonic_ns()

    rules.on_input(device, True, observed)

    assert log.calls == [
        ("siren.sound", "emergency"),
        ("voice.say", "help_sent", True),
        ("led.waiting",),
        ("emit", EventType.ALARM_EMERGENCY),
    ]
    ((event, alerted),) = log.emitted
    assert event.type is EventType.ALARM_EMERGENCY
    assert event.priority is Priority.ALARM
    assert (event.hub_id, event.household_id, event.county, event.device_id) == (HUB, HOUSEHOLD, COUNTY, device.id)
    assert event.observed_mono_ns == observed
    assert alerted is not None and alerted >= observed
    assert event.details["room"] == "bathroom"
    assert event.details["kind"] == kind.value


def test_alerted_time_is_taken_when_the_siren_has_been_switched_on(rules: Rules, log: Recorder) -> None:
    before = time.monotonic_ns()
    rules.on_input(CORD, True, before - 5_000_000)  # the edge was seen 5 ms before the rules ran
    after = time.monotonic_ns()

    ((event, alerted),) = log.emitted
    assert event.observed_mono_ns == before - 5_000_000
    assert alerted is not None and before <= alerted <= after


def test_releasing_the_cord_emits_nothing_and_leaves_the_siren_sounding(rules: Rules, log: Recorder) -> None:
    rules.on_input(CORD, True, time.monotonic_ns())
    log.calls.clear()
    log.emitted.clear()

    rules.on_input(CORD, False, time.monotonic_ns())

    assert log.emitted == []
    assert log.calls == [], "letting go of the cord must not silence or change anything"


def test_smoke_raises_a_fire_alarm_with_the_fire_siren_and_the_smoke_prompt(rules: Rules, log: Recorder) -> None:
    observed = time.monotonic_ns()

    rules.on_input(SMOKE, True, observed)

    assert log.calls == [
        ("siren.sound", "fire"),
        ("voice.say", "smoke", True),
        ("led.waiting",),
        ("emit", EventType.ALARM_FIRE),
    ]
    ((event, alerted),) = log.emitted
    assert event.type is EventType.ALARM_FIRE
    assert event.device_id == SMOKE.id
    assert event.observed_mono_ns == observed
    assert alerted is not None and alerted >= observed
    assert event.details["transport"] == "zigbee"


def test_smoke_clearing_emits_a_restore_without_touching_the_siren(rules: Rules, log: Recorder) -> None:
    observed = time.monotonic_ns()

    rules.on_input(SMOKE, False, observed)

    assert log.names() == ["emit"]
    ((event, alerted),) = log.emitted
    assert event.type is EventType.RESTORE_FIRE
    assert event.device_id == SMOKE.id
    assert event.observed_mono_ns == observed
    assert alerted is None, "no local alert was raised for a restore"


@pytest.mark.parametrize("active", [True, False])
def test_motion_is_only_activity(rules: Rules, log: Recorder, active: bool) -> None:
    rules.on_input(MOTION, active, time.monotonic_ns())

    assert log.calls == []
    assert log.emitted == []


@pytest.mark.parametrize("kind", [EventType.ALARM_EMERGENCY, EventType.ALARM_FIRE, EventType.ALARM_FALL])
def test_an_acknowledged_alarm_is_announced_and_the_led_goes_steady(
    rules: Rules, log: Recorder, kind: EventType
) -> None:
    rules.on_acknowledged(_event(kind))

    assert ("voice.say", "centre_received", False) in log.calls
    assert ("led.acknowledged",) in log.calls
    assert log.names().count("voice.say") == 1
    assert log.emitted == []


@pytest.mark.parametrize("kind", [EventType.RESTORE_FIRE, EventType.FAULT_BATTERY_LOW, EventType.INFO_CHECKIN_OK])
def test_an_acknowledged_non_alarm_is_not_announced(rules: Rules, log: Recorder, kind: EventType) -> None:
    rules.on_acknowledged(_event(kind))

    assert log.calls == []


def test_silence_command_silences_the_siren(rules: Rules, log: Recorder) -> None:
    rules.on_input(CORD, True, time.monotonic_ns())
    log.calls.clear()

    result = rules.on_command("silence", {})

    assert log.calls == [("siren.silence",)]
    assert result.get("handled", True) is not False


def test_unknown_command_is_not_handled_and_changes_nothing(rules: Rules, log: Recorder) -> None:
    result = rules.on_command("self_destruct", {"now": True})

    assert result["handled"] is False
    assert log.calls == []
