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

from hub.model import Device, DeviceKind, Event, EventType

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


class Rules:
    def __init__(
        self,
        hub_id: str,
        household_id: str,
        county: str,
        siren: SirenOutput,
        led: LedOutput,
        voice: Voice,
        emit: Emit,
    ) -> None:
        self._ids = (hub_id, household_id, county)
        self.siren = siren
        self.led = led
        self.voice = voice
        self._emit = emit

    def on_input(self, device: Device, active: bool, observed_mono_ns: int) -> None:
        """A debounced input edge from an edge adapter (on the event loop thread)."""
        if device.kind in CALL_FOR_HELP:
            if active:
                self._alarm(EventType.ALARM_EMERGENCY, device, observed_mono_ns, "emergency", "help_sent")
        elif device.kind is DeviceKind.SMOKE:
            if active:
                self._alarm(EventType.ALARM_FIRE, device, observed_mono_ns, "fire", "smoke")
            else:
                self._emit(self._event(EventType.RESTORE_FIRE, device, observed_mono_ns), None)
        else:
            log.debug("activity from %s", device.id)

    def _alarm(self, kind: EventType, device: Device, observed_mono_ns: int, pattern: str, prompt: str) -> None:
        self.siren.sound(pattern)
        alerted = time.monotonic_ns()
        self.voice.say(prompt, urgent=True)
        self.led.waiting()
        event = self._event(kind, device, observed_mono_ns)
        log.warning("%s from %s (%s): siren %s, prompt %s", kind.value, device.id, device.kind.value, pattern, prompt)
        self._emit(event, alerted)

    def _event(self, kind: EventType, device: Device, observed_mono_ns: int) -> Event:
        hub_id, household_id, county = self._ids
        details: dict[str, Any] = {"kind": device.kind.value, "transport": device.transport.value}
        if device.room:
            details["room"] = device.room
        return Event(kind, hub_id, household_id, county, device.id, observed_mono_ns=observed_mono_ns, details=details)

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
