"""Local rules: what the hub does on its own, at once, when a device reports something.

Local first: for an alarm the siren is switched on and the voice prompt queued before anything
touches disk or network; the event is then handed to `emit` (journal, then outbox). When the
centre acknowledges an alarm the hub says so aloud. Issue [4] grows this into the full rule set
(cancel windows, inactivity, check-ins, reminders) on an injected clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from hub.model import Device, DeviceKind, Event, EventType, Origin

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


CALL_FOR_HELP = frozenset({DeviceKind.PULLCORD, DeviceKind.BUTTON, DeviceKind.SOS, DeviceKind.PENDANT})

# What the hub does in the room, at once, for each alarm: (siren pattern, voice prompt).
LOCAL_ALERTS: dict[EventType, tuple[str, str]] = {
    EventType.ALARM_EMERGENCY: ("emergency", "help_sent"),
    EventType.ALARM_FALL: ("emergency", "help_sent"),
    EventType.ALARM_FIRE: ("fire", "smoke"),
}


def _safely(output: str, action: Callable[..., Any], *args: Any) -> None:
    """Drive one local output; a failing output (a GPIO write error) is logged, never raised, so
    the other outputs and the report to the centre still happen."""
    try:
        action(*args)
    except Exception:
        log.exception("the %s failed", output)


class Rules:
    def __init__(self, origin: Origin, siren: SirenOutput, led: LedOutput, voice: Voice, emit: Emit) -> None:
        self.origin = origin
        self.siren = siren
        self.led = led
        self.voice = voice
        self._emit = emit

    def on_input(self, device: Device, active: bool, observed_mono_ns: int) -> None:
        """A debounced GPIO edge (on the event loop thread): a pull-cord or button, or a smoke relay."""
        kind: EventType | None = None
        if device.kind in CALL_FOR_HELP:
            kind = EventType.ALARM_EMERGENCY if active else None
        elif device.kind is DeviceKind.SMOKE:
            kind = EventType.ALARM_FIRE if active else EventType.RESTORE_FIRE
        if kind is None:
            log.debug("activity from %s", device.id)
            return
        self.on_event(self.origin.event(kind, device, observed_mono_ns))

    def on_event(self, event: Event) -> None:
        """An event from any edge adapter. Alarms sound and speak first, then everything is emitted."""
        alert = LOCAL_ALERTS.get(event.type)
        if alert is None:
            self._emit(event, None)
            return
        pattern, prompt = alert
        alerted: int | None = None
        try:
            _safely("siren", self.siren.sound, pattern)
            alerted = time.monotonic_ns()
            _safely("voice", self.voice.say, prompt, True)
            _safely("LED", self.led.waiting)
            log.warning("%s from %s: siren %s, prompt %s", event.type.value, event.device_id, pattern, prompt)
        finally:
            self._emit(event, alerted)  # whatever the outputs did, the centre hears of it

    def on_acknowledged(self, event: Event) -> None:
        """The centre has the event (first ack only)."""
        if event.type.is_alarm:
            self.voice.say("centre_received")
            self.led.acknowledged()

    def on_command(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """A command from the centre that the rules own. Returns what happened, for the log."""
        if command == "silence":
            self.siren.silence()
            return {"silenced": True}
        return {"handled": False}
