"""Local rules: what the hub does on its own, at once, for each kind of danger and each quiet day.

Local first: for an alarm the siren is switched on and the voice prompt queued before anything
touches disk or network; every event is then handed to `emit` (journal, then outbox).

- Emergency (pull-cord, SOS, pendant press): `alarm.emergency` at once, siren "emergency", prompt
  "help_sent". A long press on the same device within `emergency.cancel_long_press_s` adds
  `cancel.emergency` (the alarm itself stands at the centre).
- Fire: `alarm.fire`, a steady siren, the smoke prompt repeated every `fire.repeat_s` until
  `restore.fire` or the centre silences it.
- Fall: `prealarm.fall` at once and the fall prompt; a press on the person's pendant (or the hub's
  own button) within `fall.cancel_s` gives `cancel.fall`, otherwise `alarm.fall`. A pull-cord or
  SOS device used meanwhile raises `alarm.emergency` as always.
- Escalation: an alarm without the centre's ack after `escalation.ack_timeout_s` -> "still
  calling" and `fault.uplink` (once per outage; `restore.uplink` when acks come again).
- Inactivity: no activity for `inactivity.hours` inside the waking window -> a prompt; no press
  within `answer_min` -> `alarm.inactivity`.
- Daily check-in and reminders: a greeting or a reminder's text at their time; a press ->
  `info.checkin_ok` / `info.reminder_ack`, none in time -> `alarm.checkin_missed` /
  `info.reminder_missed`. Quiet hours hold greetings and reminders, never alarms.
- Test mode (the installer's walk test): device triggers become `test.walk`, a chirp and
  "test_ok", no siren.

Everything runs on an injected clock (hub.clock); open windows are saved through a `WindowStore`
and resumed after a restart with their original deadlines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as day_time
from functools import partial
from typing import Any, Protocol

from hub.clock import Clock, Timer
from hub.config import RulesConfig, in_range, minutes
from hub.model import Device, DeviceKind, Event, EventType, Origin, Transport

log = logging.getLogger(__name__)

Emit = Callable[[Event, int | None], None]
"""Hand an event over for journaling and reporting, with the monotonic ns its local alert began."""


class SirenOutput(Protocol):
    def sound(self, pattern: str) -> None: ...

    def silence(self) -> None: ...


class LedOutput(Protocol):
    def waiting(self) -> None: ...

    def acknowledged(self) -> None: ...


class Voice(Protocol):
    def say(self, name: str, urgent: bool = False) -> bool: ...


class WindowStore(Protocol):
    def save(self, window_id: str, deadline: datetime, data: dict[str, Any]) -> None: ...

    def delete(self, window_id: str) -> None: ...


CALL_FOR_HELP = frozenset({DeviceKind.PULLCORD, DeviceKind.BUTTON, DeviceKind.SOS, DeviceKind.PENDANT})

# What the hub does in the room, at once, for each alarm: (siren pattern, voice prompt).
LOCAL_ALERTS: dict[EventType, tuple[str, str]] = {
    EventType.ALARM_EMERGENCY: ("emergency", "help_sent"),
    EventType.ALARM_FALL: ("emergency", "help_sent"),
    EventType.ALARM_FIRE: ("fire", "smoke"),
    EventType.ALARM_INACTIVITY: ("emergency", "help_sent"),
}
HOLD_TO_SILENCE_S = 2.0
LOCAL_SILENCE_S = 300.0
TEST_MODE_MAX_MIN = 60.0
ANSWERING_PRESS = "press"  # only a plain press says "I am fine"; long, double, hold presses call for help
TEST_TRIGGERS = frozenset(
    {EventType.ALARM_EMERGENCY, EventType.ALARM_FALL, EventType.ALARM_FIRE, EventType.FAULT_TAMPER}
)


def _safely(output: str, action: Callable[..., Any], *args: Any) -> None:
    """Drive one local output; a failing output (a GPIO write error) is logged, never raised, so
    the other outputs and the report to the centre still happen."""
    try:
        action(*args)
    except Exception:
        log.exception("the %s failed", output)


def answers_windows(device: Device | None) -> bool:
    """The person's pendant, or the hub's own button (a GPIO button), says "I am fine"."""
    if device is None:
        return False
    return device.kind is DeviceKind.PENDANT or (
        device.kind is DeviceKind.BUTTON and device.transport is Transport.GPIO
    )


@dataclass
class _Window:
    id: str
    kind: str  # fall, inactivity, checkin, reminder
    deadline: datetime
    data: dict[str, Any]
    timer: Timer | None = None


class Rules:
    def __init__(
        self,
        origin: Origin,
        siren: SirenOutput,
        led: LedOutput,
        voice: Voice,
        emit: Emit,
        config: RulesConfig | None = None,
        clock: Clock | None = None,
        devices: dict[str, Device] | None = None,
        windows: WindowStore | None = None,
    ) -> None:
        from hub.clock import SystemClock

        self.origin = origin
        self.siren = siren
        self.led = led
        self.voice = voice
        self._emit = emit
        self.config = config or RulesConfig()
        self.clock = clock or SystemClock(self.config.zone())
        self.devices = devices or {}
        self._store = windows
        self.test_mode = False
        self._windows: dict[str, _Window] = {}
        self._last_help: dict[str, float] = {}  # device -> clock.monotonic() of its last alarm.emergency
        self._fire_repeat: Timer | None = None
        self._escalations: dict[str, Timer] = {}
        self._uplink_fault = False
        self._battery_said: dict[str, str] = {}  # device -> the date its battery prompt was spoken
        self._daily: list[Timer] = []
        self.last_activity = self.clock.now()
        self._inactivity_timer: Timer | None = None
        self._button_down: int | None = None
        self._smoky: set[str] = set()  # smoke detectors reporting smoke now
        self._test_mode_timer: Timer | None = None

    # -- start-up -------------------------------------------------------------------------------

    def start(self, saved: list[tuple[str, datetime, dict[str, Any]]] = ()) -> None:  # type: ignore[assignment]
        """Schedule the daily rules and resume the windows a restart interrupted."""
        for window_id, deadline, data in saved:
            window = _Window(window_id, data["kind"], deadline, data)
            self._open(window, persist=False)
            log.warning("resumed the %s window %s (deadline %s)", window.kind, window_id, deadline.isoformat())
        if self.config.checkin.enabled:
            self._daily_at(self.config.checkin.at, self._checkin)
        for reminder in self.config.reminders:
            self._daily_at(reminder.at, partial(self._remind, reminder.id, reminder.text, reminder.answer_min))
        if self.config.inactivity.enabled:
            self._schedule_inactivity()

    def _daily_at(self, hhmm: str, action: Callable[[], None]) -> None:
        def fire() -> None:
            action()
            self._daily_at(hhmm, action)

        self._daily.append(self.clock.call_at(self._next(hhmm), fire))

    def _next(self, hhmm: str) -> datetime:
        now = self.clock.local()
        hour, minute = divmod(minutes(hhmm), 60)
        today = datetime.combine(now.date(), day_time(hour, minute), tzinfo=self.clock.tz)
        return (
            today
            if today > now
            else datetime.combine(now.date() + timedelta(days=1), day_time(hour, minute), tzinfo=self.clock.tz)
        )

    # -- from the edges --------------------------------------------------------------------------

    def on_input(self, device: Device, active: bool, observed_mono_ns: int) -> None:
        """A debounced GPIO edge (on the event loop thread): a pull-cord, the hub's own button, a smoke relay."""
        if device.kind is DeviceKind.HUB_BUTTON:
            self._hub_button(device, active, observed_mono_ns)
            return
        kind: EventType | None = None
        if device.kind in CALL_FOR_HELP:
            kind = EventType.ALARM_EMERGENCY if active else None
        elif device.kind is DeviceKind.SMOKE:
            kind = EventType.ALARM_FIRE if active else EventType.RESTORE_FIRE
        elif device.kind is DeviceKind.POWER:
            kind = EventType.FAULT_POWER if active else EventType.RESTORE_POWER
        if kind is None:
            if active:
                self.on_activity(device, observed_mono_ns)
            return
        details: dict[str, Any] = {"button": "press"} if kind is EventType.ALARM_EMERGENCY else {}
        self.on_event(self.origin.event(kind, device, observed_mono_ns, None, None, **details))

    def _hub_button(self, device: Device, active: bool, observed_mono_ns: int) -> None:
        """The hub's own button (kind `hub_button`), decided on release: a short press says "I am
        fine" to an open window; held for HOLD_TO_SILENCE_S it silences the siren that is sounding
        (never while there is smoke; after LOCAL_SILENCE_S it sounds again if an alarm still waits
        for the centre). It is not a call for help: the cords, pendants and SOS buttons are."""
        if active:
            self._button_down = observed_mono_ns
            return
        held_s = (observed_mono_ns - (self._button_down or observed_mono_ns)) / 1e9
        self._button_down = None
        self.on_activity(device)
        if held_s < HOLD_TO_SILENCE_S:
            event = self.origin.event(EventType.ALARM_EMERGENCY, device, observed_mono_ns, None, None, button="press")
            if not self._answer(event):
                log.info("hub button pressed; no window open")
            return
        if self._smoky:
            log.warning("hub button held %.1f s: the siren stays on while there is smoke", held_s)
            return
        silenced = getattr(self.siren, "pattern", None)
        log.warning("hub button held %.1f s: siren silenced for %g s", held_s, LOCAL_SILENCE_S)
        _safely("siren", self.siren.silence)

        def sound_again() -> None:
            if self._escalations and silenced and getattr(self.siren, "pattern", None) is None:
                log.warning("an alarm still waits for the centre: the siren sounds again")
                _safely("siren", self.siren.sound, silenced)

        self.clock.call_later(LOCAL_SILENCE_S, sound_again)

    def on_activity(self, device: Device | None = None, observed_mono_ns: int | None = None) -> None:
        """Motion, a door, a press: the person is up and about."""
        self.last_activity = self.clock.now()
        window = self._first_open("inactivity")
        if window is not None:
            self._close(window)
        if self.config.inactivity.enabled:
            self._schedule_inactivity()

    def on_event(self, event: Event) -> None:
        """An event from any edge adapter."""
        device = self.devices.get(event.device_id or "")
        if self.test_mode and event.device_id and event.type in TEST_TRIGGERS:
            self._walk_test(event)
            return
        if event.type is EventType.ALARM_EMERGENCY:
            self._emergency(event, device)
        elif event.type is EventType.ALARM_FALL and not event.details.get("after_prealarm"):
            self._prealarm(event)
        elif event.type is EventType.ALARM_FIRE:
            self._smoky.add(event.device_id or "")
            self._alert(event)
            self._repeat_smoke()
        elif event.type is EventType.RESTORE_FIRE:
            self._smoky.discard(event.device_id or "")
            if not self._smoky:
                self._stop_fire()
            self._emit(event, None)
        elif event.type is EventType.FAULT_BATTERY_LOW:
            self._emit(event, None)
            self._battery_prompt(event)
        elif event.type in LOCAL_ALERTS:
            self._alert(event)
        else:
            self._emit(event, None)

    # -- the rules -------------------------------------------------------------------------------

    def _emergency(self, event: Event, device: Device | None) -> None:
        now = self.clock.monotonic()
        key = event.device_id or ""
        last = self._last_help.get(key)
        follow_up = self.config.emergency.cancel_long_press_s
        if event.details.get("button") == "long_press" and last is not None and now - last <= follow_up:
            log.info("long press on %s within %g s of its alarm: cancel.emergency", key, follow_up)
            self._emit(self._derived(event, EventType.CANCEL_EMERGENCY), None)
            return
        answered = (
            answers_windows(device) and event.details.get("button", "press") == ANSWERING_PRESS and self._answer(event)
        )
        self.on_activity(device)  # after the answer: a press must not close the window it answers
        if answered:
            return
        self._last_help[key] = now
        self._alert(event)

    def _alert(self, event: Event) -> None:
        """Siren and prompt first, then the report; an alarm is watched until the centre acks it."""
        pattern, prompt = LOCAL_ALERTS.get(event.type, ("emergency", "help_sent"))
        alerted: int | None = None
        try:
            _safely("siren", self.siren.sound, pattern)
            alerted = time.monotonic_ns()
            _safely("voice", self.voice.say, prompt, True)
            _safely("LED", self.led.waiting)
            log.warning("%s from %s: siren %s, prompt %s", event.type.value, event.device_id, pattern, prompt)
        finally:
            self._emit(event, alerted)  # whatever the outputs did, the centre hears of it
        if event.type.is_alarm:
            self._watch_ack(event)

    def _prealarm(self, event: Event) -> None:
        window_id = f"fall:{event.device_id}"
        if window_id in self._windows:
            return  # one fall at a time per device: the window is already open
        prealarm = self._derived(event, EventType.PREALARM_FALL)
        _safely("voice", self.voice.say, "fall_prompt", True)
        _safely("LED", self.led.waiting)
        self._emit(prealarm, None)
        deadline = self.clock.now() + timedelta(seconds=self.config.fall.cancel_s)
        data = {
            "kind": "fall",
            "device_id": event.device_id,
            "prealarm_id": prealarm.event_id,
            "details": event.details,
        }
        self._open(_Window(window_id, "fall", deadline, data))

    def _answer(self, event: Event) -> bool:
        """A press from the person's pendant: does it answer an open window? Most urgent first."""
        for kind in ("fall", "inactivity", "checkin", "reminder"):
            window = self._first_open(kind)
            if window is None:
                continue
            self._close(window)
            if kind == "fall":
                self._emit(
                    self._derived(event, EventType.CANCEL_FALL, prealarm_id=window.data.get("prealarm_id")), None
                )
            elif kind == "checkin":
                self._emit(self._derived(event, EventType.INFO_CHECKIN_OK), None)
            elif kind == "reminder":
                self._emit(self._derived(event, EventType.INFO_REMINDER_ACK, reminder=window.data["reminder"]), None)
            log.info("press on %s answered the %s window", event.device_id, kind)
            _safely("voice", self.voice.say, "answered", False)
            return True
        return False

    def _expired(self, window: _Window) -> None:
        self._close(window)
        device = self.devices.get(window.data.get("device_id") or "")
        if window.kind == "fall":
            event = self._new(
                EventType.ALARM_FALL,
                device,
                after_prealarm=True,
                prealarm_id=window.data.get("prealarm_id"),
                **window.data.get("details", {}),
            )
            self._alert(event)
        elif window.kind == "inactivity":
            self._alert(self._new(EventType.ALARM_INACTIVITY, inactive_h=round(self._inactive_hours(), 2)))
        elif window.kind == "checkin":
            event = self._new(EventType.ALARM_CHECKIN_MISSED)
            self._emit(event, None)
            self._watch_ack(event)
        elif window.kind == "reminder":
            self._emit(self._new(EventType.INFO_REMINDER_MISSED, reminder=window.data["reminder"]), None)

    def _checkin(self) -> None:
        self._speak_routine("checkin_greeting")
        deadline = self.clock.now() + timedelta(minutes=self.config.checkin.answer_min)
        window_id = f"checkin:{self.clock.local().date().isoformat()}"
        self._open(_Window(window_id, "checkin", deadline, {"kind": "checkin"}))

    def _remind(self, reminder_id: str, text: str, answer_min: float) -> None:
        self._speak_routine(f"reminder:{reminder_id}")
        deadline = self.clock.now() + timedelta(minutes=answer_min)
        window_id = f"reminder:{reminder_id}:{self.clock.local().date().isoformat()}"
        self._open(_Window(window_id, "reminder", deadline, {"kind": "reminder", "reminder": reminder_id}))

    def _speak_routine(self, prompt: str) -> None:
        quiet = self.config.quiet_hours
        now = self.clock.local()
        if quiet and in_range(quiet, now.hour * 60 + now.minute):
            log.info("prompt %s held: quiet hours %s", prompt, quiet)
            return
        _safely("voice", self.voice.say, prompt, False)

    def _inactive_hours(self) -> float:
        return (self.clock.now() - self.last_activity).total_seconds() / 3600

    def _schedule_inactivity(self) -> None:
        if self._inactivity_timer is not None:
            self._inactivity_timer.cancel()
        due = self.last_activity + timedelta(hours=self.config.inactivity.hours)
        self._inactivity_timer = self.clock.call_at(due, self._check_inactivity)

    def _check_inactivity(self) -> None:
        self._inactivity_timer = None
        rule = self.config.inactivity
        now = self.clock.local()
        if self._first_open("inactivity") is not None:
            return
        if not in_range(rule.waking, now.hour * 60 + now.minute):
            start = rule.waking.split("-")[0]
            self._inactivity_timer = self.clock.call_at(self._next(start), self._check_inactivity)
            return
        if self._inactive_hours() < rule.hours:
            self._schedule_inactivity()
            return
        log.warning("no activity for %.1f h: asking for a press", self._inactive_hours())
        _safely("voice", self.voice.say, "inactivity_prompt", False)
        deadline = now + timedelta(minutes=rule.answer_min)
        self._open(_Window(f"inactivity:{now.isoformat()}", "inactivity", deadline, {"kind": "inactivity"}))

    def _repeat_smoke(self) -> None:
        if self._fire_repeat is not None:
            self._fire_repeat.cancel()

        def again() -> None:
            if getattr(self.siren, "pattern", None) != "fire":
                _safely("siren", self.siren.sound, "fire")
            _safely("voice", self.voice.say, "smoke", True)
            self._fire_repeat = self.clock.call_later(self.config.fire.repeat_s, again)

        self._fire_repeat = self.clock.call_later(self.config.fire.repeat_s, again)

    def _stop_fire(self) -> None:
        if self._fire_repeat is not None:
            self._fire_repeat.cancel()
            self._fire_repeat = None
        if getattr(self.siren, "pattern", None) == "fire":
            _safely("siren", self.siren.silence)

    def _battery_prompt(self, event: Event) -> None:
        if not self.config.battery_prompt:
            return
        now = self.clock.local()
        today = now.date().isoformat()
        waking = self.config.inactivity.waking
        if self._battery_said.get(event.device_id or "") == today or not in_range(waking, now.hour * 60 + now.minute):
            return
        self._battery_said[event.device_id or ""] = today
        _safely("voice", self.voice.say, "battery_low", False)

    def _watch_ack(self, event: Event) -> None:
        def escalate() -> None:
            self._escalations.pop(event.event_id, None)
            log.error(
                "no ack from the centre for %s %s after %g s",
                event.type.value,
                event.event_id,
                self.config.escalation.ack_timeout_s,
            )
            _safely("voice", self.voice.say, "still_calling", True)
            if not self._uplink_fault:
                self._uplink_fault = True
                self._emit(
                    self._new(
                        EventType.FAULT_UPLINK,
                        waiting_event=event.event_id,
                        waited_s=self.config.escalation.ack_timeout_s,
                    ),
                    None,
                )

        self._escalations[event.event_id] = self.clock.call_later(self.config.escalation.ack_timeout_s, escalate)

    def _walk_test(self, event: Event) -> None:
        _safely("siren", self.siren.sound, "chirp")
        _safely("voice", self.voice.say, "test_ok", False)
        self._emit(self._derived(event, EventType.TEST_WALK, trigger=event.type.value), None)

    # -- windows -----------------------------------------------------------------------------------

    def _open(self, window: _Window, persist: bool = True) -> None:
        # A window opened now runs on elapsed time (a clock set back or forward does not stretch
        # or cut it); one resumed after a restart can only go by the wall deadline it saved.
        expire = lambda: self._expired(window)  # noqa: E731
        if persist:
            seconds = (window.deadline - self.clock.now()).total_seconds()
            window.timer = self.clock.call_later(max(0.0, seconds), expire)
        else:
            window.timer = self.clock.call_at(window.deadline, expire)
        self._windows[window.id] = window
        if persist and self._store is not None:
            self._store.save(window.id, window.deadline, window.data)

    def _close(self, window: _Window) -> None:
        if window.timer is not None:
            window.timer.cancel()
        self._windows.pop(window.id, None)
        if self._store is not None:
            self._store.delete(window.id)

    def _first_open(self, kind: str) -> _Window | None:
        return min((w for w in self._windows.values() if w.kind == kind), key=lambda w: w.deadline, default=None)

    def watch_pending(self, backlog: list[Event]) -> None:
        """After a restart: alarms still unacknowledged are watched again, and an unacknowledged
        fault.uplink means the outage is still open (its restore will follow the next ack)."""
        for event in backlog:
            if event.type.is_alarm:
                self._watch_ack(event)
            elif event.type is EventType.FAULT_UPLINK:
                self._uplink_fault = True

    def open_windows(self) -> list[str]:
        return sorted(self._windows)

    def _derived(self, event: Event, kind: EventType, /, **details: Any) -> Event:
        device = self.devices.get(event.device_id or "")
        return self.origin.event(
            kind, device, event.observed_mono_ns, event.device_counter, self.clock.now(), **{**event.details, **details}
        )

    def _new(self, event_type: EventType, device: Device | None = None, /, **details: Any) -> Event:
        """An event the rules themselves raise, stamped with the rules' clock."""
        return self.origin.event(event_type, device, None, None, self.clock.now(), **details)

    # -- from the centre -----------------------------------------------------------------------------

    def on_acknowledged(self, event: Event) -> None:
        """The centre has the event (first ack only)."""
        timer = self._escalations.pop(event.event_id, None)
        if timer is not None:
            timer.cancel()
        if event.type.is_alarm:
            _safely("voice", self.voice.say, "centre_received", False)
            _safely("LED", self.led.acknowledged)
        if self._uplink_fault and event.type is not EventType.FAULT_UPLINK:
            self._uplink_fault = False
            self._emit(self._new(EventType.RESTORE_UPLINK), None)

    def on_command(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """A command from the centre that the rules own. Returns what happened, for the log."""
        if command == "silence":
            self._smoky.clear()  # the centre knows; a new smoke report sounds again
            if self._fire_repeat is not None:
                self._fire_repeat.cancel()
                self._fire_repeat = None
            _safely("siren", self.siren.silence)
            return {"silenced": True}
        return {"handled": False}

    def set_test_mode(self, on: bool, minutes: float = TEST_MODE_MAX_MIN) -> None:
        """The installer's walk test; it ends by itself after `minutes`, so a forgotten test mode
        never turns a real call for help into a chirp."""
        if self._test_mode_timer is not None:
            self._test_mode_timer.cancel()
            self._test_mode_timer = None
        self.test_mode = on
        if on:
            self._test_mode_timer = self.clock.call_later(minutes * 60, lambda: self.set_test_mode(False))
        log.warning("test mode %s", f"on for {minutes:g} min: device triggers are walk-test events" if on else "off")
