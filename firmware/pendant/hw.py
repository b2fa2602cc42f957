"""The pendant's hardware: an ESP32 with an LIS3DH accelerometer, the SOS button, a LiPo cell.

Wiring (an ESP32-WROOM module): LIS3DH on I2C 0 (SDA GPIO 21, SCL GPIO 22, address 0x18: SDO to
ground); the SOS button from GPIO 27 to ground (internal pull-up; 27 is an RTC GPIO, so it can wake
the chip); the battery through two equal resistors to GPIO 35 (ADC1: ADC2 cannot be read while the
radio is on). Everything else is in firmware/lib (drivers.py, node.py, fall.py, bthome.py).
"""

import struct
import time

import bluetooth
import machine
from drivers import Battery, Button, PacketIdMemory, Radio
from machine import ADC, I2C, Pin

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

I2C_ID = 0
SDA_PIN = 21
SCL_PIN = 22
BUTTON_PIN = 27
BATTERY_PIN = 35
LONG_PRESS_MS = 2000
WATCHDOG_MS = 30_000


class Lis3dh:
    """STMicroelectronics LIS3DH over I2C: 50 Hz, +-8 g, high resolution (12 bits, 4 mg a digit).

    ``read_g()`` returns (x, y, z) in g. The output registers hold 16-bit left-justified two's
    complement values; with block data update on, the six bytes always belong to one sample.
    """

    WHO_AM_I = 0x0F
    IDENTITY = 0x33
    CTRL_REG1 = 0x20
    CTRL_REG4 = 0x23
    OUT_X_L = 0x28
    AUTO_INCREMENT = 0x80  # the register address's top bit: read several registers in one go
    ODR_50HZ_XYZ = 0x47  # ODR 0100 (50 Hz), normal power, X, Y and Z on
    BDU_8G_HR = 0xA8  # block data update, full scale 10 (+-8 g), high resolution
    G_PER_DIGIT = 0.004  # +-8 g in high resolution: 4 mg per 12-bit digit

    def __init__(self, i2c: I2C, address: int = 0x18) -> None:
        self._i2c = i2c
        self.address = address
        identity = i2c.readfrom_mem(address, self.WHO_AM_I, 1)[0]
        if identity != self.IDENTITY:
            raise OSError(f"no LIS3DH at 0x{address:02x} (WHO_AM_I 0x{identity:02x})")
        i2c.writeto_mem(address, self.CTRL_REG4, bytes([self.BDU_8G_HR]))
        i2c.writeto_mem(address, self.CTRL_REG1, bytes([self.ODR_50HZ_XYZ]))

    def read_g(self) -> "tuple[float, float, float]":
        data = self._i2c.readfrom_mem(self.address, self.OUT_X_L | self.AUTO_INCREMENT, 6)
        x, y, z = struct.unpack("<hhh", data)
        scale = self.G_PER_DIGIT
        return (x >> 4) * scale, (y >> 4) * scale, (z >> 4) * scale


class Board:
    """The pendant's parts, made from ``machine`` and ``bluetooth``; ``accel`` is None when the
    accelerometer does not answer (the SOS button must work without it)."""

    def __init__(self, clock_ms: "Callable[[], int]") -> None:
        self.wdt = machine.WDT(timeout=WATCHDOG_MS)
        accel: Lis3dh | None = None
        try:
            accel = Lis3dh(I2C(I2C_ID, scl=Pin(SCL_PIN), sda=Pin(SDA_PIN), freq=400_000))
        except OSError:
            pass
        self.accel = accel
        self.button = Button(Pin(BUTTON_PIN, Pin.IN, Pin.PULL_UP), clock_ms, long_ms=LONG_PRESS_MS)
        self.battery = Battery(ADC(Pin(BATTERY_PIN), atten=ADC.ATTN_11DB))
        self.radio = Radio(bluetooth.BLE())
        self.packet_ids = PacketIdMemory(machine.RTC())

    def sleep(self, ms: int) -> None:
        """Wait ``ms``: light sleep while nothing is on the air (it would stop advertising)."""
        self.wdt.feed()
        if ms <= 0:
            return
        if self.radio.advertising:
            time.sleep_ms(ms)
        else:
            machine.lightsleep(ms)
