"""GPIO: a pull-cord reaches the handler at once, chatter is debounced, the siren switches on at once.

Pins are gpiozero's own MockFactory (a fresh one per test). Time in the debounce tests is a fake
clock and a fake scheduler moved by the test: nothing here sleeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from gpiozero import Button
from gpiozero.pins.mock import MockFactory, MockPin
from gpiozero.threads import GPIOThread

from edge.gpio import SIREN_PATTERNS, PinInputs, Siren, StatusLed, load_pin_factory
from hub.model import Device, DeviceKind, Transport

CORD_PIN = 17
SMOKE_PIN = 22
SIREN_PIN = 27
LED_PIN = 5
MS = 1_000_000  # ns
T0 = 7_000_000_000  # an arbitrary monotonic start, well away from 0

CORD = Device("pullcord_bathroom", DeviceKind.PULLCORD, Transport.GPIO, pin=CORD_PIN, room="bathroom")
SMOKE = Device("smoke_kitchen", DeviceKind.SMOKE, Transport.GPIO, pin=SMOKE_PIN, room="kitchen")


class TracingPin(MockPin):
    """A mock pin that also remembers which thread made each change of level."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.changes: list[tuple[bool, int]] = []
        super().__init__(*args, **kwargs)

    def _change_state(self, value: bool) -> bool:
        changed = bool(super()._change_state(value))
        if changed:
            self.changes.append((value, threading.get_ident()))
        return changed


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    made = MockFactory(pin_class=TracingPin)
    yield made
    made.close()


@pytest.fixture
def closing(factory: MockFactory) -> Iterator[Callable[[Any], Any]]:
    """Register a device (anything with close()); it is closed at the end of the test, even on failure."""
    opened: list[Any] = []

    def register(thing: Any) -> Any:
        opened.append(thing)
        return thing

    yield register
    # Let go of every cord first: gpiozero's hold thread takes up to a second to stop while a
    # button is still pressed.
    for pin in list(factory.pins.values()):
        if pin.function == "input":
            pin.drive_high()
    for thing in reversed(opened):
        thing.close()


class Calls:
    """The input handler: records every report with the thread it arrived on."""

    def __init__(self) -> None:
        self.reports: list[tuple[Device, bool, int]] = []
        self.threads: list[int] = []

    def __call__(self, device: Device, active: bool, mono_ns: int) -> None:
        self.reports.append((device, active, mono_ns))
        self.threads.append(threading.get_ident())


@dataclass
class Scheduled:
    delay_s: float
    callback: Callable[[], None]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTime:
    """A clock in ns and a scheduler that only records; the test advances time and runs callbacks."""

    def __init__(self, start_ns: int = T0) -> None:
        self.now_ns = start_ns
        self.scheduled: list[Scheduled] = []

    def clock(self) -> int:
        return self.now_ns

    def advance_ms(self, ms: float) -> None:
        self.now_ns += int(ms * MS)

    def schedule(self, delay_s: float, callback: Callable[[], None]) -> Callable[[], None]:
        item = Scheduled(delay_s, callback)
        self.scheduled.append(item)
        return item.cancel

    def pending(self) -> list[Scheduled]:
        return [item for item in self.scheduled if not item.cancelled]

    def run_pending(self) -> None:
        """Run what is due as a timer thread would: each callback once, as if its delay had passed."""
        for item in self.pending():
            item.cancelled = True
            item.callback()


def _blink_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if isinstance(t, GPIOThread) and t.is_alive()}


# --- PinInputs: pull-cords and smoke contacts ---------------------------------------------------


def test_pulling_the_cord_reports_active_at_once_on_the_calling_thread(factory, closing) -> None:
    calls = Calls()
    closing(PinInputs([CORD], calls, pin_factory=factory))

    before = time.monotonic_ns()
    factory.pin(CORD_PIN).drive_low()
    after = time.monotonic_ns()

    assert len(calls.reports) == 1, "the handler must have run before drive_low() returned"
    device, active, mono_ns = calls.reports[0]
    assert device == CORD
    assert active is True
    assert before <= mono_ns <= after, "the default clock is time.monotonic_ns, read at the edge"
    assert calls.threads == [threading.get_ident()]


def test_release_after_the_debounce_window_is_reported_inactive(factory, closing) -> None:
    fake = FakeTime()
    calls = Calls()
    closing(PinInputs([CORD], calls, pin_factory=factory, clock=fake.clock, schedule=fake.schedule))
    pin = factory.pin(CORD_PIN)

    pin.drive_low()
    fake.advance_ms(60)
    pin.drive_high()

    assert calls.reports == [(CORD, True, T0), (CORD, False, T0 + 60 * MS)]
    assert fake.scheduled == [], "edges outside the window need no settle timer"


def test_chatter_within_the_window_gives_one_report(factory, closing) -> None:
    fake = FakeTime()
    calls = Calls()
    closing(PinInputs([CORD], calls, pin_factory=factory, clock=fake.clock, schedule=fake.schedule))
    pin = factory.pin(CORD_PIN)

    pin.drive_low()
    for _ in range(4):  # contact bounce: high/low every 5 ms, ending low (still pulled)
        fake.advance_ms(5)
        pin.drive_high()
        fake.advance_ms(5)
        pin.drive_low()
    assert calls.reports == [(CORD, True, T0)]

    fake.now_ns = T0 + 50 * MS  # the window is over; the settle finds the level already reported
    fake.run_pending()
    assert calls.reports == [(CORD, True, T0)]

    fake.advance_ms(30)  # a real release later on still gets through
    pin.drive_high()
    assert calls.reports == [(CORD, True, T0), (CORD, False, T0 + 80 * MS)]


def test_chatter_ending_released_is_reported_by_the_settle_at_the_end_of_the_window(factory, closing) -> None:
    fake = FakeTime()
    calls = Calls()
    closing(PinInputs([CORD], calls, pin_factory=factory, clock=fake.clock, schedule=fake.schedule))
    pin = factory.pin(CORD_PIN)

    pin.drive_low()
    fake.advance_ms(5)
    pin.drive_high()  # first edge inside the window: 45 ms of it remain
    fake.advance_ms(5)
    pin.drive_low()
    fake.advance_ms(5)
    pin.drive_high()  # ends released, 15 ms into the window

    assert calls.reports == [(CORD, True, T0)], "nothing more is reported inside the window"
    pending = fake.pending()
    assert len(pending) == 1
    assert pending[0].delay_s == pytest.approx(0.045)

    fake.now_ns = T0 + 50 * MS
    fake.run_pending()
    assert calls.reports == [(CORD, True, T0), (CORD, False, T0 + 50 * MS)]


def test_zero_bounce_reports_every_edge(factory, closing) -> None:
    fake = FakeTime()
    calls = Calls()
    closing(PinInputs([CORD], calls, bounce_ms=0, pin_factory=factory, clock=fake.clock, schedule=fake.schedule))
    pin = factory.pin(CORD_PIN)

    for _ in range(3):
        pin.drive_low()
        fake.advance_ms(1)
        pin.drive_high()
        fake.advance_ms(1)

    assert [active for _, active, _ in calls.reports] == [True, False] * 3
    assert fake.scheduled == []


def test_each_gpio_device_reports_on_its_own_pin(factory, closing) -> None:
    fake = FakeTime()
    calls = Calls()
    closing(PinInputs([CORD, SMOKE], calls, pin_factory=factory, clock=fake.clock, schedule=fake.schedule))

    factory.pin(SMOKE_PIN).drive_low()  # the smoke relay closes
    fake.advance_ms(1)
    factory.pin(CORD_PIN).drive_low()  # within the smoke pin's window, but a different pin

    assert calls.reports == [(SMOKE, True, T0), (CORD, True, T0 + 1 * MS)]


def test_non_gpio_devices_and_devices_without_a_pin_are_ignored(factory, closing) -> None:
    calls = Calls()
    radio_cord = Device("pullcord_ble", DeviceKind.PULLCORD, Transport.BLE, pin=CORD_PIN)
    unwired = Device("pullcord_unwired", DeviceKind.PULLCORD, Transport.GPIO, pin=None)
    closing(PinInputs([radio_cord, unwired, SMOKE], calls, pin_factory=factory))

    # Pin 17 was not claimed for the BLE device: another device can still have it.
    closing(Button(CORD_PIN, pin_factory=factory))
    factory.pin(CORD_PIN).drive_low()
    assert calls.reports == []

    factory.pin(SMOKE_PIN).drive_low()
    assert [(device, active) for device, active, _ in calls.reports] == [(SMOKE, True)]


def test_close_cancels_a_pending_settle_and_frees_the_pin(factory) -> None:
    fake = FakeTime()
    calls = Calls()
    inputs = PinInputs([CORD], calls, pin_factory=factory, clock=fake.clock, schedule=fake.schedule)
    pin = factory.pin(CORD_PIN)
    pin.drive_low()
    fake.advance_ms(5)
    pin.drive_high()
    assert len(fake.pending()) == 1

    inputs.close()

    assert fake.pending() == []
    Button(CORD_PIN, pin_factory=factory).close()  # would raise GPIOPinInUse if still held


# --- load_pin_factory ---------------------------------------------------------------------------


def test_default_factory_is_gpiozeros_own() -> None:
    assert load_pin_factory("default") is None


def test_mock_factory_by_name() -> None:
    made = load_pin_factory("mock")
    try:
        assert isinstance(made, MockFactory)
    finally:
        made.close()


def test_simulator_factory_resolves_through_the_entry_point_and_works_unconnected(monkeypatch, closing) -> None:
    from simulator.gpio import ENV_SOCKET, SimulatedPinFactory

    monkeypatch.delenv(ENV_SOCKET, raising=False)
    made = closing(load_pin_factory("anju-sim"))  # registered first, so closed after its devices
    assert type(made) is SimulatedPinFactory

    calls = Calls()
    closing(PinInputs([CORD], calls, pin_factory=made))
    siren = closing(Siren(SIREN_PIN, pin_factory=made))
    made.pin(CORD_PIN).drive_low()
    siren.sound("fire")  # output changes are reported to nobody, without error

    assert [(device, active) for device, active, _ in calls.reports] == [(CORD, True)]
    assert made.pin(SIREN_PIN).state is True
    made.pin(CORD_PIN).drive_high()  # let go before closing (see `closing`)


def test_unknown_factory_name_lists_the_installed_ones() -> None:
    with pytest.raises(ValueError, match="no-such-pins") as raised:
        load_pin_factory("no-such-pins")
    message = str(raised.value)
    for name in ("default", "mock", "anju-sim"):
        assert name in message


# --- Siren --------------------------------------------------------------------------------------


def test_emergency_switches_the_siren_on_before_sound_returns(factory, closing) -> None:
    siren = closing(Siren(SIREN_PIN, pin_factory=factory))
    pin = factory.pin(SIREN_PIN)
    assert pin.state is False
    threads_before = _blink_threads()

    siren.sound("emergency")

    assert pin.state is True
    assert pin.changes[0] == (True, threading.get_ident()), "switched on by sound() itself, not by a blink thread"
    assert siren.is_on
    assert siren.pattern == "emergency"
    assert _blink_threads() - threads_before, "the emergency pattern pulses on a blink thread"


def test_silence_switches_the_siren_off_and_stops_the_pattern(factory, closing) -> None:
    siren = closing(Siren(SIREN_PIN, pin_factory=factory))
    threads_before = _blink_threads()
    siren.sound("emergency")

    siren.silence()

    assert factory.pin(SIREN_PIN).state is False
    assert not siren.is_on
    assert siren.pattern is None
    assert not (_blink_threads() - threads_before), "no blink thread may switch it back on"


def test_fire_is_continuous(factory, closing) -> None:
    _on_s, off_s, count = SIREN_PATTERNS["fire"]
    assert off_s == 0 and count is None, "fire is a steady tone in the pattern table"

    siren = closing(Siren(SIREN_PIN, pin_factory=factory))
    threads_before = _blink_threads()
    siren.sound("fire")

    assert factory.pin(SIREN_PIN).changes == [(True, threading.get_ident())]
    assert not (_blink_threads() - threads_before), "nothing will switch a continuous tone off"


def test_fire_after_emergency_becomes_continuous(factory, closing) -> None:
    siren = closing(Siren(SIREN_PIN, pin_factory=factory))
    threads_before = _blink_threads()
    siren.sound("emergency")
    siren.sound("fire")

    assert factory.pin(SIREN_PIN).state is True
    assert siren.pattern == "fire"
    assert not (_blink_threads() - threads_before), "the emergency pulsing must have stopped"


def test_siren_without_a_pin_is_a_silent_no_op() -> None:
    siren = Siren(None)
    siren.sound("emergency")
    assert siren.pattern == "emergency"
    assert not siren.is_on
    siren.silence()
    assert siren.pattern is None
    siren.close()


# --- StatusLed ----------------------------------------------------------------------------------


def test_led_blinks_while_waiting_and_is_steady_once_acknowledged(factory, closing) -> None:
    led = closing(StatusLed(LED_PIN, pin_factory=factory))
    threads_before = _blink_threads()

    led.waiting()
    assert _blink_threads() - threads_before, "waiting blinks"

    led.acknowledged()
    assert factory.pin(LED_PIN).state is True
    assert not (_blink_threads() - threads_before), "acknowledged is steady, not blinking"

    led.off()
    assert factory.pin(LED_PIN).state is False


def test_led_without_a_pin_is_a_no_op() -> None:
    led = StatusLed(None)
    led.waiting()
    led.acknowledged()
    led.off()
    led.close()


class GroundedPin(TracingPin):
    """A pin wired to ground before the hub starts: a pull-up cannot lift it (a latched cord)."""

    grounded = False

    def _set_pull(self, value: str) -> None:
        super()._set_pull(value)
        if self.grounded:
            self.drive_low()


def test_a_cord_already_pulled_at_start_up_is_reported(closing) -> None:
    """A hub restarting while someone hangs on a latched cord must still raise the alarm."""
    grounded = MockFactory(pin_class=GroundedPin)
    cord_pin = grounded.pin(CORD_PIN)
    cord_pin.grounded = True
    fake, calls = FakeTime(), Calls()
    inputs = closing(PinInputs([CORD, SMOKE], calls, 50, grounded, fake.clock, fake.schedule))
    assert calls.reports == [], "no edge is seen: the level was low before the hub started"
    assert inputs.report_active_at_start() == [CORD]
    assert calls.reports == [(CORD, True, T0)]
    fake.advance_ms(60)
    cord_pin.grounded = False
    cord_pin.drive_high()
    assert calls.reports[-1] == (CORD, False, T0 + 60 * MS), "the release after it is reported as usual"
    inputs.close()
    grounded.close()
