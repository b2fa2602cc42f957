"""What both nodes' hardware layers share: a debounced button, the battery gauge, the BLE advertiser,
an uptime clock, the packet id kept in RTC memory, and the device's settings and encoder.

They are handed their ``machine`` and ``bluetooth`` objects (a ``Pin``, an ``ADC``, a ``BLE``, an
``RTC``) by each node's hw.py, so nothing here imports ``machine``: the same code runs under the tests' stand-ins
on the MicroPython unix port. Times are the node's uptime in ms (``Uptime.now``), a plain integer
that does not wrap like ``time.ticks_ms`` does (every 2**30 ms, 12.4 days, on the ESP32).
"""

import json
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from bluetooth import BLE
    from counter_store import CounterStore
    from machine import ADC, RTC, Pin
    from node import Encoder


class Uptime:
    """Milliseconds since start as an ever-growing integer, built on ``time.ticks_ms``/``ticks_diff``.

    Call ``now()`` at least once every 2**29 ms (6 days) so no wrap of the ticks is missed; the main
    loops call it many times a second.
    """

    def __init__(self) -> None:
        self._last = time.ticks_ms()
        self._ms = 0

    def now(self) -> int:
        ticks = time.ticks_ms()
        self._ms += time.ticks_diff(ticks, self._last)
        self._last = ticks
        return self._ms


class Button:
    """A push button or pull-cord switch on a ``Pin``, debounced by polling.

    ``poll()`` returns an event name when one is recognised, else None:
    * with ``long_ms`` (the pendant's SOS button): "press" when released before ``long_ms``,
      "long_press" as soon as it has been held ``long_ms`` (nothing more on its release);
    * with ``long_ms=None`` (a pull-cord): "press" as soon as it is pulled, nothing on release.
    A level counts once it has been read unchanged for ``debounce_ms``: contact bounce and glitches
    shorter than that are ignored. ``active_low``: pressed reads 0 (a switch to ground with the
    pull-up on). ``active()`` tells whether it is held now (debounced) and ``settling()`` whether a
    change is being debounced, so a node that sleeps long knows when to poll again soon.
    """

    def __init__(
        self,
        pin: "Pin",
        clock_ms: "Callable[[], int]",
        active_low: bool = True,
        debounce_ms: int = 30,
        long_ms: "int | None" = 2000,
    ) -> None:
        self._pin = pin
        self._clock = clock_ms
        self._active_low = active_low
        self.debounce_ms = debounce_ms
        self.long_ms = long_ms
        now = clock_ms()
        self._raw = self._read()
        self._changed_at = now
        # released to begin with: a cord already pulled (or a button held) at start-up is an event
        # once debounced; a missed alarm is worse than a repeated one
        self._stable = False
        self._pressed_at = now
        self._reported = False

    def _read(self) -> bool:
        level = self._pin.value()
        return (level == 0) if self._active_low else (level != 0)

    def active(self) -> bool:
        """Held now (debounced)."""
        return self._stable

    def settling(self) -> bool:
        """The last reading differs from the debounced level: poll again soon."""
        return self._raw != self._stable

    def poll(self) -> "str | None":
        now = self._clock()
        raw = self._read()
        if raw != self._raw:
            self._raw = raw
            self._changed_at = now
            return None
        if raw != self._stable and now - self._changed_at >= self.debounce_ms:
            self._stable = raw
            if raw:  # pressed (debounced)
                self._pressed_at = self._changed_at
                self._reported = False
                if self.long_ms is None:
                    self._reported = True
                    return "press"
            else:  # released
                if not self._reported:
                    self._reported = True
                    return "press"
            return None
        long_ms = self.long_ms
        if self._stable and not self._reported and long_ms is not None and now - self._pressed_at >= long_ms:
            self._reported = True
            return "long_press"
        return None


# A single-cell lithium battery (LiPo / Li-ion) under a light load: (millivolts, percent), rising.
LIPO_CURVE = (
    (3300, 0),
    (3500, 5),
    (3600, 10),
    (3700, 30),
    (3750, 45),
    (3800, 55),
    (3900, 70),
    (4000, 82),
    (4100, 92),
    (4200, 100),
)


class Battery:
    """The battery voltage through a resistor divider on an ADC pin, as a percentage.

    ``divider`` is Vbattery / Vpin (2.0 for two equal resistors). ``adc.read_uv()`` is the ESP32's
    calibrated reading in microvolts (set the attenuation to 11 dB for up to ~2.5 V at the pin).
    The percentage interpolates ``curve`` ((mV, %) points, rising), clamped to 0..100.
    """

    def __init__(self, adc: "ADC", divider: float = 2.0, curve: "tuple[tuple[int, int], ...]" = LIPO_CURVE) -> None:
        self._adc = adc
        self.divider = divider
        self.curve = curve

    def millivolts(self, samples: int = 8) -> int:
        total = 0
        for _ in range(samples):
            total += self._adc.read_uv()
        return int(total * self.divider / samples / 1000)

    def percent(self) -> int:
        return percent_of(self.millivolts(), self.curve)


def percent_of(millivolts: int, curve: "tuple[tuple[int, int], ...]") -> int:
    low_mv, low_pc = curve[0]
    if millivolts <= low_mv:
        return low_pc
    for high_mv, high_pc in curve[1:]:
        if millivolts <= high_mv:
            return low_pc + (high_pc - low_pc) * (millivolts - low_mv) // (high_mv - low_mv)
        low_mv, low_pc = high_mv, high_pc
    return low_pc


class Radio:
    """Puts adverts on the air with ``BLE.gap_advertise`` and takes them off.

    Adverts are non-connectable (nobody can connect and so silence the device) at ``interval_us``:
    100 ms, the shortest a Bluetooth 4.2 controller (the ESP32's) allows for them; an advert held
    250 ms goes out 2 or 3 times on each of the three advertising channels.
    """

    def __init__(self, ble: "BLE", interval_us: int = 100_000) -> None:
        self._ble = ble
        self.interval_us = interval_us
        ble.active(True)
        self.mac = bytes(ble.config("mac")[1])  # (address type, 6 bytes): the nonce's MAC
        self.advertising = False

    def advertise(self, payload: bytes) -> None:
        self._ble.gap_advertise(self.interval_us, payload, connectable=False)
        self.advertising = True

    def stop(self) -> None:
        if self.advertising:
            # None stops advertising (the stubs type the interval as int only)
            self._ble.gap_advertise(None)  # type: ignore[arg-type]
            self.advertising = False


class PacketIdMemory:
    """The next packet id, kept in the RTC memory (RAM that survives resets and light and deep
    sleep, not a power cut: no flash wear). ``load()`` is 0 when nothing valid is there."""

    MAGIC = b"AJ"

    def __init__(self, rtc: "RTC") -> None:
        self._rtc = rtc
        self._saved = -1

    def load(self) -> int:
        data = self._rtc.memory()
        if len(data) >= 3 and data[:2] == self.MAGIC:
            self._saved = data[2]
            return data[2]
        return 0

    def save(self, packet_id: int) -> None:
        if packet_id != self._saved:
            self._rtc.memory(self.MAGIC + bytes([packet_id & 0xFF]))
            self._saved = packet_id


def load_config(path: str = "config.json") -> "dict[str, Any]":
    """The device's settings, from a JSON file written when it is provisioned; {} when missing or
    unreadable (the node then still runs, unencrypted, with the defaults)."""
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def encoder_for(config: "dict[str, Any]", mac: bytes) -> "tuple[Encoder, CounterStore | None]":
    """With a key in ``config``: bthome.Encryptor for ``mac`` and the counter kept in flash
    (``counter_path``, "counter" by default). Without one, or with one that is not 32 hex digits:
    the plain encoder and no counter (the hub that holds a key then reports tampering, a fault an
    installer sees, rather than a node that never starts)."""
    import bthome  # on the device (/lib); not needed by the rest of this module
    from counter_store import CounterStore
    from node import Plaintext

    key = config.get("key")
    if isinstance(key, str):
        try:
            encryptor = bthome.Encryptor(bytes.fromhex(key), mac)
        except ValueError:
            pass
        else:
            return encryptor, CounterStore(config.get("counter_path", "counter"))
    return Plaintext(bthome.encode), None
