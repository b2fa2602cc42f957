"""BTHome v2 advertisements for the simulator's virtual devices (bthome.io/format, bthome.io/encryption).

The bytes come from ``firmware.lib.bthome``, the encoder Anju's own pendant and pull-cord node run
under MicroPython (AES-CCM written by hand on AES-ECB there), so a simulated device sends exactly
what a real one does. This module keeps the simulator's API on top of it: string MAC addresses,
optional keys, a virtual device with its packet id and counter, and the faults.

This module only *encodes*. It never calls a decoder (neither ours nor bthome-ble), so a
misreading of the specification in the hub cannot cancel itself out here; the tests compare its
bytes with hand-written hex from the specification's tables and with the published encryption
example.

The wire format, as the specification gives it:

* The bytes live in the Service Data AD element for the 16-bit UUID 0xFCD2 (``d2 fc`` on the air).
  :func:`service_data` returns what follows the UUID: the device-information byte, then the
  objects (plaintext), or ciphertext + counter (uint32 LE) + MIC (4 bytes) when encrypted.
* Device-information byte: bit 0 encryption, bit 2 trigger-based device (sends at irregular
  intervals), bits 5-7 the version (2). Bits 1, 3, 4 are reserved and left 0.
* Each object is its id byte followed by its value, little-endian; objects are sent in ascending
  object-id order. Two objects with the same id are allowed (a second button is the second 0x3A
  object, a receiver numbers them ``button_1``, ``button_2``); their relative order is kept.
* Encryption is AES-CCM with a 16-byte key and a 4-byte MIC, no associated data. The 13-byte
  nonce is MAC (6 bytes, in the order it is written, ``54:48:E6:8F:80:A5`` -> ``5448e68f80a5``)
  + UUID ``d2 fc`` + device-information byte + counter (uint32 little-endian).

Anju convention for falls: a pendant reports a detected fall as a ``press`` event on a *second*
button object. Its advert carries two 0x3A objects, the first with event 0x00 ("none": nothing
happened on the SOS button) and the second with 0x01 ("press"). A receiver that follows the
specification sees ``button_1`` silent and ``button_2`` pressed; the hub maps ``button_2`` press on
a pendant to ``alarm.fall`` and ``button``/``button_1`` press to ``alarm.emergency``.

:class:`VirtualBthomeDevice` keeps the per-device state a real sensor keeps: the packet id
(object 0x00, 0..255, +1 per new event, so a receiver can drop radio duplicates) and the
encryption counter (+1 per advert sent, so a receiver can refuse replays). It also produces the
faults the hub must survive: a byte-for-byte replay of an earlier advert, a spoof (right address,
same next counter, wrong key) and a plaintext advert from a device that should encrypt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from firmware.lib import bthome as firmware
from firmware.lib.bthome import (
    BATTERY,
    BATTERY_LOW,
    BUTTON,
    BUTTON_EVENTS,
    COUNTER_MODULO,
    INFO_ENCRYPTED,
    INFO_TRIGGER_BASED,
    INFO_VERSION_2,
    KEY_LENGTH,
    MIC_LENGTH,
    MOTION,
    OCCUPANCY,
    OPENING,
    PACKET_ID,
    SMOKE,
    TAMPER,
    TEMPERATURE,
    UUID16,
    UUID16_LE,
    battery,
    binary,
    packet_id,
    temperature,
)

__all__ = [
    "BATTERY",
    "BATTERY_LOW",
    "BINARY_OBJECT_IDS",
    "BUTTON",
    "BUTTON_EVENTS",
    "COUNTER_MODULO",
    "INFO_ENCRYPTED",
    "INFO_TRIGGER_BASED",
    "INFO_VERSION_2",
    "KEY_LENGTH",
    "MIC_LENGTH",
    "MOTION",
    "OCCUPANCY",
    "OPENING",
    "PACKET_ID",
    "SERVICE_UUID",
    "SMOKE",
    "TAMPER",
    "TEMPERATURE",
    "UUID16",
    "UUID16_LE",
    "VirtualBthomeDevice",
    "battery",
    "binary",
    "button",
    "mac_bytes",
    "nonce",
    "packet_id",
    "service_data",
    "temperature",
]

SERVICE_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"

# The binary-sensor ids of the specification: 0x0F generic boolean, 0x10 power, 0x11 opening,
# 0x15 battery low ... 0x2D window. (0x12-0x14 are CO2, TVOC and moisture, not binary.)
BINARY_OBJECT_IDS = frozenset(i for i in range(0x100) if firmware.is_binary(i))

_MAC_RE = re.compile(r"^[0-9A-Fa-f]{2}([:-]?)(?:[0-9A-Fa-f]{2}\1){4}[0-9A-Fa-f]{2}$")


def mac_bytes(mac: str) -> bytes:
    """``"54:48:E6:8F:80:A5"`` (or with ``-`` or no separators) -> ``b"\\x54\\x48\\xe6\\x8f\\x80\\xa5"``."""
    if not _MAC_RE.match(mac):
        raise ValueError(f"not a MAC address: {mac!r} (expected six hex pairs, e.g. AA:BB:CC:DD:EE:FF)")
    return firmware.mac_bytes(mac)


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_LENGTH:
        raise ValueError(f"a BTHome key is {KEY_LENGTH} bytes (32 hex digits), got {len(key)} bytes")
    return bytes(key)


def nonce(mac: str, device_info: int, counter: int) -> bytes:
    """The 13-byte AES-CCM nonce: MAC + ``d2 fc`` + device-information byte + counter (uint32 LE)."""
    return firmware.nonce(mac_bytes(mac), device_info, counter)


def service_data(
    objects: Sequence[bytes],
    *,
    mac: str,
    key: bytes | None = None,
    counter: int = 0,
    trigger_based: bool = False,
) -> bytes:
    """Service data for UUID 0xFCD2: the device-information byte, then the objects.

    ``objects`` are already-encoded objects (id byte + value, see the helpers); they are sent
    sorted by object id, as the specification asks, keeping the order of objects with the same id.
    With ``key`` the objects are encrypted and followed by ``counter`` (uint32 LE) and the 4-byte MIC.
    """
    address = mac_bytes(mac)
    if key is None:
        return firmware.encode(objects, trigger_based=trigger_based)
    return _encryptor(_check_key(key), address).encrypt(objects, counter, trigger_based=trigger_based)


@lru_cache(maxsize=256)
def _encryptor(key: bytes, mac: bytes) -> firmware.Encryptor:
    return firmware.Encryptor(key, mac)  # the AES key schedule once per device, not per advert


def button(event: str) -> bytes:
    """Object 0x3A, button event: none, press, double_press, triple_press, long_press,
    long_double_press, long_triple_press, hold_press."""
    if not isinstance(event, str):
        raise ValueError(f"a button event is named, got {event!r}")
    return firmware.button(event)


# ---- a virtual device ------------------------------------------------------------------------


class VirtualBthomeDevice:
    """A BTHome v2 sensor: pendant, SOS button, pull-cord node or smoke detector.

    Every method returns the service-data bytes of one advert (for UUID 0xFCD2) and records it in
    :attr:`sent`. Each new event takes the next packet id (0..255, wrapping); with a key, each
    advert takes the next encryption counter (uint32, wrapping). Event adverts set the
    trigger-based flag; :meth:`heartbeat` and :meth:`battery_level` do not.
    """

    def __init__(self, mac: str, key: bytes | None, start_counter: int = 1) -> None:
        mac_bytes(mac)  # validate early
        self.mac = mac.upper()
        self.key = _check_key(key) if key is not None else None
        if not 0 <= start_counter < COUNTER_MODULO:
            raise ValueError(f"the encryption counter is a uint32, got {start_counter}")
        self.counter = start_counter  # the counter of the next advert
        self.packet_id = 0  # the packet id of the next event
        self.battery = 100
        self.sent: list[bytes] = []

    def _advert(self, objects: Sequence[bytes], *, trigger_based: bool) -> bytes:
        data = service_data(
            [packet_id(self.packet_id), *objects],
            mac=self.mac,
            key=self.key,
            counter=self.counter,
            trigger_based=trigger_based,
        )
        self.packet_id = (self.packet_id + 1) % 256
        if self.key is not None:
            self.counter = (self.counter + 1) % COUNTER_MODULO
        self.sent.append(data)
        return data

    # button events
    def press(self) -> bytes:
        return self._advert([button("press")], trigger_based=True)

    def double_press(self) -> bytes:
        return self._advert([button("double_press")], trigger_based=True)

    def long_press(self) -> bytes:
        return self._advert([button("long_press")], trigger_based=True)

    def fall(self) -> bytes:
        """Anju convention: button 1 "none", button 2 "press" (see the module docstring)."""
        return self._advert(firmware.fall_objects(), trigger_based=True)

    # binary sensors
    def smoke(self, on: bool) -> bytes:
        return self._advert([binary(SMOKE, on)], trigger_based=True)

    def tamper(self, on: bool) -> bytes:
        return self._advert([binary(TAMPER, on)], trigger_based=True)

    def motion(self, on: bool) -> bytes:
        return self._advert([binary(MOTION, on)], trigger_based=True)

    def opening(self, open: bool) -> bytes:
        return self._advert([binary(OPENING, open)], trigger_based=True)

    # measurements
    def battery_level(self, pct: int) -> bytes:
        """Report a new battery level (also used by later heartbeats)."""
        self.battery = battery(pct)[1]
        return self._advert([battery(pct)], trigger_based=False)

    def heartbeat(self) -> bytes:
        """The periodic check-in: battery and packet id, not trigger based."""
        return self._advert([battery(self.battery)], trigger_based=False)

    # faults
    def replay(self, index: int = -1) -> bytes:
        """An earlier advert, byte for byte (a replay attack, or a radio duplicate for index -1)."""
        if not self.sent:
            raise IndexError("this device has sent nothing yet")
        return self.sent[index]

    def spoof(self, wrong_key: bytes, objects: Sequence[bytes] | None = None) -> bytes:
        """What an attacker with the right address but the wrong key sends: the next packet id and
        the next counter, a button press by default, encrypted with ``wrong_key``. The device's own
        state does not change and the advert is not recorded in :attr:`sent`."""
        return service_data(
            [packet_id(self.packet_id), *(objects if objects is not None else [button("press")])],
            mac=self.mac,
            key=_check_key(wrong_key),
            counter=self.counter,
            trigger_based=True,
        )

    def plaintext(self, objects: Sequence[bytes] | None = None) -> bytes:
        """An unencrypted advert with the right address and the next packet id (a button press by
        default): what a keyed device must never be believed to send. State does not change."""
        return service_data(
            [packet_id(self.packet_id), *(objects if objects is not None else [button("press")])],
            mac=self.mac,
            trigger_based=True,
        )
