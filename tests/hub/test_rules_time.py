"""Rules on an injected clock: daily routines across days and a daylight-saving change, clock
jumps, windows resumed after a restart, the hub's own button, and rules files that are wrong.
Time is moved, never slept."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from hub.clock import Clock, SimulatedClock
from hub.config import ConfigError, RulesConfig, load_config
from hub.model import Device, DeviceKind, Event, EventType, Origin, Transport
from hub.rules import Rules

BERLIN = ZoneInfo("Europe/Berlin")
ORIGIN = Origin("hub-1", "hh-1", "minle")
PENDANT = Device("pendant", DeviceKind.PENDANT, Transport.BLE, mac="A4:C1:38:00:00:01")
HUB_BUTTON = Device("hub-button", DeviceKind.HUB_BUTTON, Transport.GPIO, pin=5)
SMOKE = Device("smoke", DeviceKind.SMOKE, Transport.GPIO, pin=23)


class Outputs:
    def __init__(self) -> None:
        self.said: list[str] = []
        self.siren: list[str] = []
        self.pattern: str | None = None
        self.events: list[Event] = []

    def sound(self, pattern: str) -> None:
        self.siren.append(pattern)
        self.pattern = pattern

    def silence(self) -> None:
        self.siren.append("silence")
        self.pattern = None

    def waiting(self) -> None: ...

    def acknowledged(self) -> None: ...

    def say(self, name: str, urgent: bool = False) -> bool:
        self.said.append(name)
        return True

    def emit(self, event: Event, alerted: int | None) -> None:
        self.events.append(event)

    def types(self) -> list[str]:
        return [e.type.value for e in self.events]


class Store:
    def __init__(self) -> None:
        self.windows: dict[str, tuple[datetime, dict[str, Any]]] = {}

    def save(self, window_id: str, deadline: datetime, data: dict[str, Any]) -> None:
        self.windows[window_id] = (deadline, data)

    def delete(self, window_id: str) -> None:
        self.windows.pop(window_id, None)


def make(start: datetime, **rules: Any) -> tuple[Rules, SimulatedClock, Outputs, Store]:
    config = RulesConfig.model_validate({"timezone": str(start.tzinfo), **rules})
    clock = SimulatedClock(start, start.tzinfo)
    out, store = Outputs(), Store()
    devices = {d.id: d for d in (PENDANT, HUB_BUTTON, SMOKE)}
    engine = Rules(ORIGIN, out, out, out, out.emit, config, clock, devices, store)
    return engine, clock, out, store


def press(engine: Rules, device: Device = PENDANT) -> None:
    engine.on_event(ORIGIN.event(EventType.ALARM_EMERGENCY, device, 0, button="press"))


def test_timers_fire_in_order_at_their_own_time() -> None:
    clock = SimulatedClock(datetime(2026, 12, 1, 8, 0, tzinfo=BERLIN))
    seen: list[tuple[str, datetime]] = []
    start = clock.now()
    for name, minutes in (("c", 30), ("a", 10), ("b", 20)):
        clock.call_at(start + timedelta(minutes=minutes), lambda n=name: seen.append((n, clock.now())))
    assert clock.advance(25 * 60) == 2
    assert [n for n, _ in seen] == ["a", "b"]
    assert all(abs((when - start).total_seconds() - m * 60) < 1 for (_, when), m in zip(seen, (10, 20), strict=True))


def test_a_wall_clock_jump_forward_fires_what_fell_due_and_a_jump_back_fires_nothing() -> None:
    class WallClock(Clock):
        def __init__(self) -> None:
            super().__init__(BERLIN)
            self.wall = datetime(2026, 12, 1, 8, 0, tzinfo=BERLIN)

        def now(self) -> datetime:
            return self.wall

    clock = WallClock()
    fired: list[str] = []
    clock.call_at(clock.wall + timedelta(hours=1), lambda: fired.append("09:00"))
    clock.call_at(clock.wall + timedelta(hours=2), lambda: fired.append("10:00"))
    clock.wall -= timedelta(hours=5)  # NTP pulls a Pi without an RTC back
    assert clock.run_due() == 0
    clock.wall += timedelta(hours=7)  # and then forward, past both
    assert clock.run_due() == 2 and fired == ["09:00", "10:00"]


def test_the_checkin_is_at_nine_local_time_every_day_across_the_daylight_saving_change() -> None:
    start = datetime(2026, 3, 27, 8, 0, tzinfo=BERLIN)  # clocks go forward on Sunday 29 March
    engine, clock, out, _ = make(
        start, checkin={"at": "09:00", "answer_min": 30}, inactivity={"enabled": False}, quiet_hours=None
    )
    engine.start()
    greetings: list[datetime] = []
    for day in (27, 28, 29, 30):  # 10:00 local each day; the night of the 28th is an hour shorter
        target = datetime(2026, 3, day, 10, 0, tzinfo=BERLIN)
        clock.advance((target - clock.now()).total_seconds())
        greetings += [e.occurred_at for e in out.events if e.type is EventType.ALARM_CHECKIN_MISSED]
        out.events.clear()
    local = [g.astimezone(BERLIN) for g in greetings]
    assert [(d.day, d.hour, d.minute) for d in local] == [(27, 9, 30), (28, 9, 30), (29, 9, 30), (30, 9, 30)]
    assert out.said.count("checkin_greeting") == 4


def test_a_press_answers_the_checkin_and_a_missed_reminder_is_reported() -> None:
    start = datetime(2026, 12, 1, 8, 0, tzinfo=BERLIN)
    engine, clock, out, store = make(
        start,
        checkin={"at": "09:00"},
        inactivity={"enabled": False},
        reminders=[{"id": "pills", "at": "12:00", "text": "该吃药了", "answer_min": 15}],
    )
    engine.start()
    clock.advance(3600 + 60)
    assert engine.open_windows() == ["checkin:2026-12-01"] and list(store.windows) == ["checkin:2026-12-01"]
    press(engine)
    assert out.types() == ["info.checkin_ok"] and store.windows == {}
    clock.advance(3 * 3600 + 20 * 60)
    assert out.said[-1] == "reminder:pills"
    assert out.types()[-1] == "info.reminder_missed"


def test_a_window_open_at_a_restart_resumes_with_its_deadline() -> None:
    start = datetime(2026, 12, 1, 9, 10, tzinfo=BERLIN)
    engine, clock, out, _ = make(start, inactivity={"enabled": False}, checkin={"enabled": False})
    deadline = start + timedelta(minutes=20)
    engine.start([("checkin:2026-12-01", deadline, {"kind": "checkin"})])
    clock.advance(19 * 60)
    assert out.types() == []
    clock.advance(2 * 60)
    assert out.types()[0] == "alarm.checkin_missed"  # (then fault.uplink: no centre acks here)


def test_an_expired_fall_window_found_at_a_restart_raises_the_alarm_at_once() -> None:
    start = datetime(2026, 12, 1, 9, 0, tzinfo=BERLIN)
    engine, clock, out, _ = make(start, inactivity={"enabled": False}, checkin={"enabled": False})
    data = {"kind": "fall", "device_id": "pendant", "prealarm_id": "x", "details": {}}
    engine.start([("fall:pendant", start - timedelta(seconds=5), data)])
    clock.advance(0.001)
    assert out.types() == ["alarm.fall"] and out.siren[0] == "emergency"


def test_the_hub_button_answers_and_a_long_hold_silences_but_never_a_fire() -> None:
    start = datetime(2026, 12, 1, 9, 0, tzinfo=BERLIN)
    engine, _, out, _ = make(start, inactivity={"enabled": False}, checkin={"enabled": False})
    engine.on_input(HUB_BUTTON, True, 0)
    engine.on_input(HUB_BUTTON, False, 100_000_000)
    assert out.types() == [], "the hub's button is not a call for help"
    engine.on_input(Device("cord", DeviceKind.PULLCORD, Transport.GPIO, pin=17), True, 0)
    assert out.pattern == "emergency"
    engine.on_input(HUB_BUTTON, True, 1_000_000_000)
    engine.on_input(HUB_BUTTON, False, 3_500_000_000)
    assert out.pattern is None, "held 2.5 s: silenced"
    engine.on_input(SMOKE, True, 4_000_000_000)
    engine.on_input(HUB_BUTTON, True, 5_000_000_000)
    engine.on_input(HUB_BUTTON, False, 8_000_000_000)
    assert out.pattern == "fire", "smoke persists: the siren stays on"


@pytest.mark.parametrize(
    ("rules", "says"),
    [
        ('[rules.checkin]\nat = "25:00"\n', "rules.checkin.at: String should match pattern"),
        ('[rules]\nquiet_hours = "21:00-10:00"\n', "rules.checkin.at: the check-in at 09:00 falls in quiet hours"),
        ('[rules]\ntimezone = "Mars/Olympus"\n', "rules.timezone: unknown time zone"),
        ("[rules.fall]\ncancel_s = 5\n", "rules.fall.cancel_s: Input should be greater than or equal to 10"),
        ("[rules.inactivity]\nhourz = 3\n", "rules.inactivity.hourz: unknown key"),
        (
            '[[rules.reminders]]\nid = "a"\nat = "12:00"\ntext = "x"\n[[rules.reminders]]\nid = "a"\nat = "13:00"\n'
            'text = "y"\n',
            "rules.reminders[1].id: reminder id 'a' is used twice",
        ),
    ],
)
def test_a_wrong_rules_file_names_file_line_and_what_to_fix(tmp_path: Path, rules: str, says: str) -> None:
    path = tmp_path / "hub.toml"
    path.write_text('hub_id = "hub-1"\ncounty = "minle"\nhousehold_id = "hh-1"\ndata_dir = "var"\n' + rules)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert says in message, message
    assert message.startswith(f"{path}:"), "the file and a line come first"


def test_the_battery_prompt_is_spoken_once_a_day_and_only_in_waking_hours() -> None:
    start = datetime(2026, 12, 1, 6, 0, tzinfo=BERLIN)
    engine, clock, out, _ = make(
        start, inactivity={"enabled": False, "waking": "07:00-21:00"}, checkin={"enabled": False}
    )
    low = ORIGIN.event(EventType.FAULT_BATTERY_LOW, PENDANT, 0, battery_percent=12)
    engine.on_event(low)
    assert out.said == [], "06:00 is before the waking window"
    clock.advance(2 * 3600)
    engine.on_event(low)
    engine.on_event(low)
    assert out.said == ["battery_low"], "once a day"
    clock.advance(24 * 3600)
    engine.on_event(low)
    assert out.said == ["battery_low", "battery_low"]
    assert out.types().count("fault.battery_low") == 4, "every report still reaches the centre"


def test_a_pendant_fall_nobody_cancels_becomes_an_alarm_with_the_pendants_details() -> None:
    start = datetime(2026, 12, 1, 9, 0, tzinfo=BERLIN)
    engine, clock, out, _ = make(
        start, inactivity={"enabled": False}, checkin={"enabled": False}, fall={"cancel_s": 30}
    )
    engine.on_event(ORIGIN.event(EventType.ALARM_FALL, PENDANT, 0, 7, None, source="pendant fall detector"))
    assert out.types() == ["prealarm.fall"] and out.said == ["fall_prompt"]
    clock.advance(29)
    assert out.types() == ["prealarm.fall"], "still inside the window"
    clock.advance(2)
    fall = out.events[-1]
    assert fall.type is EventType.ALARM_FALL and fall.device_id == "pendant"
    assert fall.details["kind"] == "pendant" and fall.details["source"] == "pendant fall detector"
    assert fall.details["prealarm_id"] == out.events[0].event_id and out.siren == ["emergency"]


def test_only_a_plain_press_answers_and_the_answer_is_spoken() -> None:
    start = datetime(2026, 12, 1, 8, 59, tzinfo=BERLIN)
    engine, clock, out, _ = make(start, checkin={"at": "09:00"}, inactivity={"enabled": False})
    engine.start()
    clock.advance(120)
    engine.on_event(ORIGIN.event(EventType.ALARM_EMERGENCY, PENDANT, 0, button="long_press"))
    assert out.types()[0] == "alarm.emergency", "a long press calls for help even during the check-in"
    press(engine)
    assert "info.checkin_ok" in out.types() and out.said[-1] == "answered"


def test_answering_the_inactivity_prompt_is_not_an_emergency() -> None:
    start = datetime(2026, 12, 1, 8, 0, tzinfo=BERLIN)
    engine, clock, out, _ = make(start, checkin={"enabled": False}, inactivity={"hours": 1, "answer_min": 10})
    engine.start()
    clock.advance(3600 + 60)
    assert out.said == ["inactivity_prompt"]
    press(engine)
    assert out.types() == [] and out.siren == [], "the press answered the prompt"
    clock.advance(15 * 60)
    assert "alarm.inactivity" not in out.types()


def test_one_detector_clearing_does_not_silence_another_that_still_sees_smoke() -> None:
    start = datetime(2026, 12, 1, 9, 0, tzinfo=BERLIN)
    engine, clock, out, _ = make(start, checkin={"enabled": False}, inactivity={"enabled": False})
    kitchen = Device("kitchen", DeviceKind.SMOKE, Transport.GPIO, pin=23)
    bedroom = Device("bedroom", DeviceKind.SMOKE, Transport.GPIO, pin=24)
    engine.on_input(kitchen, True, 0)
    engine.on_input(bedroom, True, 0)
    engine.on_input(kitchen, False, 0)
    assert out.pattern == "fire"
    clock.advance(31)
    assert out.said.count("smoke") == 3, "two alarms and a repeat: the bedroom still smokes"
    engine.on_input(bedroom, False, 0)
    assert out.pattern is None


def test_test_mode_ends_by_itself() -> None:
    start = datetime(2026, 12, 1, 9, 0, tzinfo=BERLIN)
    engine, clock, out, _ = make(start, checkin={"enabled": False}, inactivity={"enabled": False})
    engine.set_test_mode(True, minutes=30)
    press(engine, Device("cord", DeviceKind.PULLCORD, Transport.GPIO, pin=17))
    assert out.types() == ["test.walk"]
    clock.advance(31 * 60)
    press(engine, Device("cord", DeviceKind.PULLCORD, Transport.GPIO, pin=17))
    assert out.types()[-1] == "alarm.emergency" and out.pattern == "emergency"


def test_a_fall_window_lasts_its_30_seconds_whatever_the_wall_clock_does() -> None:
    class JumpyClock(Clock):
        def __init__(self) -> None:
            super().__init__(BERLIN)
            self.wall = datetime(2026, 12, 1, 9, 0, tzinfo=BERLIN)
            self.mono = 1000.0

        def now(self) -> datetime:
            return self.wall

        def monotonic(self) -> float:
            return self.mono

    clock = JumpyClock()
    out = Outputs()
    config = RulesConfig.model_validate(
        {
            "timezone": "Europe/Berlin",
            "checkin": {"enabled": False},
            "inactivity": {"enabled": False},
            "fall": {"cancel_s": 30},
        }
    )
    engine = Rules(ORIGIN, out, out, out, out.emit, config, clock, {PENDANT.id: PENDANT}, Store())
    engine.on_event(ORIGIN.event(EventType.ALARM_FALL, PENDANT, 0))
    clock.wall -= timedelta(hours=1)  # NTP sets the clock back an hour
    clock.mono += 31
    clock.run_due()
    assert out.types() == ["prealarm.fall", "alarm.fall"], "the alarm comes after 30 s, not an hour later"
    engine.on_event(ORIGIN.event(EventType.ALARM_EMERGENCY, PENDANT, 0, button="press"))
    clock.wall -= timedelta(hours=5)
    clock.mono += 20 * 60
    engine.on_event(ORIGIN.event(EventType.ALARM_EMERGENCY, PENDANT, 0, button="long_press"))
    assert out.types()[-1] == "alarm.emergency", "20 real minutes later a long press is a new call, not a cancel"
