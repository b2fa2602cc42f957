"""The pull-cord node's hardware: an ESP32, the cord's switch, a LiPo cell.

Wiring (an ESP32-WROOM module): the cord's switch from GPIO 27 to ground (internal pull-up; 27 is
an RTC GPIO, so a pull wakes the chip from light sleep through ext0); the battery through two equal
resistors to GPIO 35 (ADC1: ADC2 cannot be read while the radio is on). Everything else is in
firmware/lib (drivers.py, node.py, bthome.py).
"""

import time

import bluetooth
import esp32
import machine
from drivers import Battery, Button, PacketIdMemory, Radio
from machine import ADC, Pin

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

CORD_PIN = 27
BATTERY_PIN = 35
WATCHDOG_MS = 30_000


class Board:
    """The pull-cord node's parts, made from ``machine``, ``esp32`` and ``bluetooth``."""

    def __init__(self, clock_ms: "Callable[[], int]") -> None:
        self.wdt = machine.WDT(timeout=WATCHDOG_MS)
        self.cord_pin = Pin(CORD_PIN, Pin.IN, Pin.PULL_UP)
        # a pull is an alarm at once (no long press): many cords latch until reset by hand
        self.cord = Button(self.cord_pin, clock_ms, long_ms=None)
        self.battery = Battery(ADC(Pin(BATTERY_PIN), atten=ADC.ATTN_11DB))
        self.radio = Radio(bluetooth.BLE())
        self.packet_ids = PacketIdMemory(machine.RTC())

    def sleep(self, ms: int) -> None:
        """Wait ``ms``. While nothing is on the air, light sleep that a change of the cord ends:
        a pull (the pin goes low) or, while the cord is held, its release (so a latched cord does
        not wake the chip over and over)."""
        self.wdt.feed()
        if ms <= 0:
            return
        if self.radio.advertising:  # light sleep would stop the advertising
            time.sleep_ms(ms)
            return
        level = esp32.WAKEUP_ANY_HIGH if self.cord.active() else esp32.WAKEUP_ALL_LOW
        esp32.wake_on_ext0(self.cord_pin, level)
        machine.lightsleep(ms)
