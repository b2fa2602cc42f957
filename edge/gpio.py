"""GPIO: pull-cords and smoke-relay contacts in, siren and status LED out, through gpiozero.

Inputs are wired between the pin and ground: pull-up on, active low. On a Raspberry Pi the pins
come from gpiozero's default pin factory (lgpio); in simulation from a named factory
(`mock`, or the simulator's `anju-sim`), chosen in configuration only.

Debounce is ours, not the pin library's: lgpio's debounce reports an edge only after the level
has been stable for the whole debounce time, which would add 50 ms to every alarm. Here the first
edge is reported at once and the following `bounce_ms` of chatter is ignored; if the level at the
end of that window differs from what was last reported, that final level is reported then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any

from gpiozero import LED, DigitalInputDevice, DigitalOutputDevice
from gpiozero.pins.mock import MockFactory

from hub.model import Device, Transport

log = logging.getLogger(__name__)

InputHandler = Callable[[Device, bool, int], None]
"""Called with the device, whether it is now active (cord pulled, contact closed) and the
monotonic time in ns of the edge. Runs on gpiozero's callback thread: hand it over, do not block."""


def load_pin_factory(name: str) -> Any:
    """The gpiozero pin factory called `name`: None for gpiozero's own default (lgpio on a Pi)."""
    if name == "default":
        return None
    if name == "mock":
        return MockFactory()
    for entry in entry_points(group="gpiozero_pin_factories"):
        if entry.name == name:
            return entry.load()()
    known = sorted({"default", "mock", *(e.name for e in entry_points(group="gpiozero_pin_factories"))})
    raise ValueError(f"unknown gpio.pin_factory {name!r}; installed factories: {', '.join(known)}")


Clock = Callable[[], int]
Scheduler = Callable[[float, Callable[[], None]], Callable[[], None]]
"""Run a callback after a delay (seconds) on some thread; returns a function that cancels it."""


def thread_timer(delay_s: float, callback: Callable[[], None]) -> Callable[[], None]:
    timer = threading.Timer(delay_s, callback)
    timer.daemon = True
    timer.start()
    return timer.cancel


class _DebouncedInput:
    def __init__(
        self,
        device: Device,
        button: DigitalInputDevice,
        bounce_ns: int,
        handler: InputHandler,
        clock: Clock = time.monotonic_ns,
        schedule: Scheduler = thread_timer,
    ) -> None:
        self.device = device
        self.button = button
        self._bounce_ns = bounce_ns
        self._handler = handler
        self._clock = clock
        self._schedule = schedule
        self._lock = threading.Lock()
        self._reported = bool(button.is_active)
        self._window_end = 0
        self._cancel_recheck: Callable[[], None] | None = None
        button.when_activated = lambda: self._edge(True)
        button.when_deactivated = lambda: self._edge(False)

    def _edge(self, active: bool) -> None:
        now = self._clock()
        with self._lock:
            if now < self._window_end:
                if self._cancel_recheck is None:
                    self._cancel_recheck = self._schedule((self._window_end - now) / 1e9, self._settle)
                return
            if active == self._reported:
                return
            self._reported = active
            self._window_end = now + self._bounce_ns
        self._handler(self.device, active, now)

    def report_now(self, active: bool) -> None:
        with self._lock:
            self._reported = active
            now = self._clock()
            self._window_end = now + self._bounce_ns
        self._handler(self.device, active, now)

    def _settle(self) -> None:
        """The debounce window is over: report the level now if it differs from the last report."""
        with self._lock:
            self._cancel_recheck = None
        self._edge(bool(self.button.is_active))

    def close(self) -> None:
        if self._cancel_recheck is not None:
            self._cancel_recheck()
        self.button.close()


class PinInputs:
    """Every GPIO-wired device of the household, reporting debounced edges to `handler`."""

    def __init__(
        self,
        devices: Iterable[Device],
        handler: InputHandler,
        bounce_ms: int = 50,
        pin_factory: Any = None,
        clock: Clock = time.monotonic_ns,
        schedule: Scheduler = thread_timer,
    ) -> None:
        self._inputs: list[_DebouncedInput] = []
        for device in devices:
            if device.transport is not Transport.GPIO or device.pin is None:
                continue
            # Not gpiozero's Button: each Button runs a thread that wakes 10 times a second to watch
            # for a long press, which the hub never uses (bench/idle_cpu.py counted 20 wakeups/s).
            button = DigitalInputDevice(device.pin, pull_up=True, bounce_time=None, pin_factory=pin_factory)
            self._inputs.append(_DebouncedInput(device, button, bounce_ms * 1_000_000, handler, clock, schedule))
            log.info("listening on GPIO%d for %s %s", device.pin, device.kind.value, device.id)

    def report_active_at_start(self) -> list[Device]:
        """Report every input that is already active (a cord pulled and latched, a smoke relay closed)
        as a new activation: a hub that restarts while someone hangs on the cord must still sound."""
        active = []
        for item in self._inputs:
            if item.button.is_active:
                log.warning(
                    "GPIO%s (%s) is active at start-up: treating it as a new activation",
                    item.device.pin,
                    item.device.id,
                )
                item.report_now(True)
                active.append(item.device)
        return active

    def close(self) -> None:
        for item in self._inputs:
            item.close()


# Siren patterns: (on seconds, off seconds); off == 0 means continuous.
SIREN_PATTERNS: dict[str, tuple[float, float, int | None]] = {
    "emergency": (0.5, 0.5, None),
    "fire": (1.0, 0.0, None),
    "chirp": (0.1, 0.1, 1),
}


class Siren:
    """The siren relay. `sound` switches the pin on before it returns, then keeps the pattern going
    on gpiozero's blink thread; `silence` switches it off."""

    def __init__(self, pin: int | None, pin_factory: Any = None) -> None:
        self._out = DigitalOutputDevice(pin, pin_factory=pin_factory) if pin is not None else None
        self.pattern: str | None = None

    def sound(self, pattern: str) -> None:
        on_s, off_s, count = SIREN_PATTERNS[pattern]
        self.pattern = pattern
        if self._out is None:
            return
        self._out.on()
        if off_s > 0:
            self._out.blink(on_time=on_s, off_time=off_s, n=count, background=True)

    def silence(self) -> None:
        self.pattern = None
        if self._out is not None:
            self._out.off()

    @property
    def is_on(self) -> bool:
        return bool(self._out and self._out.value)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()


class StatusLed:
    """The hub's LED: fast blink while an alarm waits for the centre, steady once it has it."""

    def __init__(self, pin: int | None, pin_factory: Any = None) -> None:
        self._led = LED(pin, pin_factory=pin_factory) if pin is not None else None

    def waiting(self) -> None:
        if self._led is not None:
            self._led.blink(on_time=0.1, off_time=0.1, background=True)

    def acknowledged(self) -> None:
        if self._led is not None:
            self._led.on()

    def off(self) -> None:
        if self._led is not None:
            self._led.off()

    def close(self) -> None:
        if self._led is not None:
            self._led.close()
