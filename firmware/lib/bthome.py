"""BTHome v2 adverts for Anju's own devices (the pendant and the pull-cord node), plain or encrypted.

The same code runs on the devices (MicroPython on the ESP32) and in CPython, where the simulator's
virtual devices send its bytes and the tests decode them with bthome-ble, the hub's decoder. It
is pure logic: no clock, no randomness, no radio; the caller keeps the packet id and the counter.

API::

    encode(objects, *, trigger_based=False) -> bytes   plain service data (for UUID 0xFCD2)
    Encryptor(key, mac).encrypt(objects, counter, trigger_based=False) -> bytes
                                                       the same, AES-CCM encrypted
    advertising_payload(service_data, name=None) -> bytes
                                                       the whole AD payload for BLE.gap_advertise

``objects`` is a list whose items are either an encoded object (bytes: the object id, then its
value), as the helpers ``packet_id(n)``, ``battery(percent)``, ``temperature(celsius)``,
``humidity(percent)``, ``voltage(volts)``, ``binary(object_id, on)``, ``button(event)`` and
``fall_objects()`` return, or a pair ``(object_id, value)`` that ``object_bytes`` encodes the same
way. Also here: ``mac_bytes``, ``nonce`` and ``ccm_encrypt`` (generic AES-CCM on ``aes_backend``).
For example, a pull-cord pulled::

    enc = Encryptor(key, mac)                              # key: 16 bytes; mac: 6 bytes or "AA:BB:.."
    data = enc.encrypt([packet_id(7), button("press")], counter, trigger_based=True)
    ble.gap_advertise(100_000, advertising_payload(data))

Invalid input raises ValueError with a message saying what is wrong.

The format (bthome.io/format, bthome.io/encryption):

* Service data for the 16-bit UUID 0xFCD2 (``d2 fc`` on the air): the device-information byte,
  then the objects, or when encrypted: ciphertext, counter (uint32 little-endian, in clear), MIC.
* Device-information byte: bit 0 encryption, bit 2 trigger-based (sends at irregular intervals),
  bits 5-7 the version, 2. The others are reserved, 0.
* An object is its id byte and its value, little-endian. Objects go in ascending id order; objects
  with the same id keep their order (the second 0x3A object is ``button_2`` for a receiver).
* Encryption: AES-CCM, 16-byte key, 4-byte MIC, no associated data; the 13-byte nonce is the MAC
  (6 bytes as written, ``54:48:E6:8F:80:A5`` -> ``5448e68f80a5``) + ``d2 fc`` + the
  device-information byte + the counter (uint32 little-endian).

Anju's vocabulary, which the hub's interpreter (edge/bthome.py) reads: an SOS press, double or
long press is a 0x3A button event on the first button; a pendant's fall is a ``press`` on a second
button object after a first one with ``none`` (``fall_objects()``); smoke 0x29, tamper 0x2B, motion 0x21,
opening 0x11, battery low 0x15 are binary sensors; battery 0x01 in %; packet id 0x00.
"""

import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    # as on the device (firmware/typecheck.py checks it against the ESP32 stubs); for the project's
    # mypy, which meets this module as firmware.lib.bthome, it is a missing module (Any)
    from aes_backend import BlockCipher, ecb

    Object = bytes | bytearray | tuple[int, object]
else:
    try:
        from .aes_backend import ecb  # CPython: imported as firmware.lib.bthome
    except ImportError:
        from aes_backend import ecb  # MicroPython: /lib (firmware/lib) is on sys.path

UUID16 = 0xFCD2
UUID16_LE = b"\xd2\xfc"  # as on the air and in the nonce

# Device-information byte
INFO_ENCRYPTED = 0x01
INFO_TRIGGER_BASED = 0x04
INFO_VERSION_2 = 0x40  # 2 << 5

KEY_LENGTH = 16
MAC_LENGTH = 6
MIC_LENGTH = 4
COUNTER_MODULO = 1 << 32
ADV_MAX = 31  # a legacy advertisement's payload

# Object ids (bthome.io/format)
PACKET_ID = 0x00
BATTERY = 0x01
TEMPERATURE = 0x02
HUMIDITY = 0x03
VOLTAGE = 0x0C
OPENING = 0x11
BATTERY_LOW = 0x15
MOTION = 0x21
OCCUPANCY = 0x23
SMOKE = 0x29
TAMPER = 0x2B
BUTTON = 0x3A

# Measurements: object id -> (value bytes, struct format, multiplier: the value sent is
# round(value * multiplier), i.e. the specification's factor 0.01 is multiplier 100).
_MEASUREMENTS = {
    PACKET_ID: (1, "<B", 1),
    BATTERY: (1, "<B", 1),
    TEMPERATURE: (2, "<h", 100),
    HUMIDITY: (2, "<H", 100),
    VOLTAGE: (2, "<H", 1000),
}
_LIMITS = {"<B": (0, 0xFF), "<h": (-0x8000, 0x7FFF), "<H": (0, 0xFFFF)}

# Button events (object 0x3A)
BUTTON_EVENTS = {
    "none": 0x00,
    "press": 0x01,
    "double_press": 0x02,
    "triple_press": 0x03,
    "long_press": 0x04,
    "long_double_press": 0x05,
    "long_triple_press": 0x06,
    "hold_press": 0x80,
}


def is_binary(object_id: int) -> bool:
    """The binary-sensor ids: 0x0F generic boolean, 0x10 power, 0x11 opening, 0x15 battery low ...
    0x2D window (0x12-0x14 are CO2, TVOC and moisture, not binary)."""
    return object_id in (0x0F, 0x10, 0x11) or 0x15 <= object_id <= 0x2D


def _value_length(object_id: int) -> int:
    """The value's length in bytes for the ids this module encodes, -1 for others."""
    if object_id in _MEASUREMENTS:
        return _MEASUREMENTS[object_id][0]
    if object_id == BUTTON or is_binary(object_id):
        return 1
    return -1


# ---- objects ---------------------------------------------------------------------------------


def measurement(object_id: int, value: float) -> bytes:
    """A numeric object: packet id 0x00, battery 0x01 (%), temperature 0x02 (°C, 0.01),
    humidity 0x03 (%, 0.01), voltage 0x0C (V, 0.001)."""
    if object_id not in _MEASUREMENTS:
        raise ValueError(f"0x{object_id:02X} is not a measurement this encoder knows")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"object 0x{object_id:02X} needs a number, got {value!r}")
    _, fmt, multiplier = _MEASUREMENTS[object_id]
    raw = round(value * multiplier)
    low, high = _LIMITS[fmt]
    if not low <= raw <= high:
        raise ValueError(f"{value!r} does not fit object 0x{object_id:02X} ({low}..{high} after scaling)")
    return bytes([object_id]) + struct.pack(fmt, raw)


def packet_id(n: int) -> bytes:
    """Object 0x00, packet id, uint8: +1 per new event so a receiver can drop radio duplicates."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 0xFF:
        raise ValueError(f"a packet id is 0..255, got {n!r}")
    return bytes([PACKET_ID, n])


def battery(percent: float) -> bytes:
    """Object 0x01, battery, uint8, %."""
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
        raise ValueError(f"a battery level is 0..100 %, got {percent!r}")
    return measurement(BATTERY, percent)


def temperature(celsius: float) -> bytes:
    """Object 0x02, temperature, sint16, factor 0.01 °C."""
    return measurement(TEMPERATURE, celsius)


def humidity(percent: float) -> bytes:
    """Object 0x03, humidity, uint16, factor 0.01 %."""
    return measurement(HUMIDITY, percent)


def voltage(volts: float) -> bytes:
    """Object 0x0C, voltage, uint16, factor 0.001 V."""
    return measurement(VOLTAGE, volts)


def binary(object_id: int, on: bool) -> bytes:
    """A binary-sensor object, uint8: 0 off/clear/closed, 1 on/detected/open."""
    if not isinstance(object_id, int) or not is_binary(object_id):
        raise ValueError(f"{object_id!r} is not a BTHome binary-sensor object id")
    return bytes([object_id, 1 if on else 0])


def button(event: "str | int") -> bytes:
    """Object 0x3A, a button event by name (none, press, double_press, triple_press, long_press,
    long_double_press, long_triple_press, hold_press) or by its code."""
    if isinstance(event, str) and event in BUTTON_EVENTS:
        return bytes([BUTTON, BUTTON_EVENTS[event]])
    if isinstance(event, int) and not isinstance(event, bool) and event in BUTTON_EVENTS.values():
        return bytes([BUTTON, event])
    raise ValueError("unknown button event " + repr(event) + "; one of " + ", ".join(BUTTON_EVENTS))


def fall_objects() -> "list[bytes]":
    """Anju's fall report: button 1 ``none`` (the SOS button did nothing), button 2 ``press``. The
    hub reads ``button_2`` pressed on a pendant as a fall, ``button``/``button_1`` as an SOS call."""
    return [button("none"), button("press")]


def object_bytes(object_id: int, value: object) -> bytes:
    """The object ``(object_id, value)`` encoded: a measurement, a binary sensor or a button."""
    if isinstance(object_id, bool) or not isinstance(object_id, int) or not 0 <= object_id <= 0xFF:
        raise ValueError(f"an object id is 0..255, got {object_id!r}")
    if object_id == BUTTON:
        return button(value)  # type: ignore[arg-type]  # button() checks it
    if is_binary(object_id):
        if not isinstance(value, (bool, int)):
            raise ValueError(f"binary object 0x{object_id:02X} needs True/False, got {value!r}")
        return binary(object_id, bool(value))
    if object_id == PACKET_ID:
        return packet_id(value)  # type: ignore[arg-type]  # packet_id() checks it
    if object_id == BATTERY:
        return battery(value)  # type: ignore[arg-type]  # battery() checks it
    return measurement(object_id, value)  # type: ignore[arg-type]  # measurement() checks it


def _payload(objects: "Sequence[Object]") -> bytes:
    """The objects encoded and sorted by id; objects with the same id keep their order."""
    encoded = []
    for index, item in enumerate(objects):
        if isinstance(item, (bytes, bytearray)):
            if len(item) < 1:
                raise ValueError("an object needs at least its object id byte")
            length = _value_length(item[0])
            if length >= 0 and len(item) != 1 + length:
                raise ValueError(f"object 0x{item[0]:02X} has a {length}-byte value, got {len(item) - 1} bytes")
            data = bytes(item)
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            data = object_bytes(item[0], item[1])
        else:
            raise ValueError(f"an object is encoded bytes or a pair (object_id, value), got {item!r}")
        encoded.append((data[0] << 16 | index, data))  # MicroPython's sort is not stable
    encoded.sort(key=lambda pair: pair[0])
    return b"".join([data for _, data in encoded])


def device_info(encrypted: bool, trigger_based: bool) -> int:
    """The device-information byte (version 2)."""
    return INFO_VERSION_2 | (INFO_ENCRYPTED if encrypted else 0) | (INFO_TRIGGER_BASED if trigger_based else 0)


def encode(objects: "Sequence[Object]", *, trigger_based: bool = False) -> bytes:
    """Plain service data: the device-information byte, then the objects in ascending id order."""
    return bytes([device_info(False, trigger_based)]) + _payload(objects)


# ---- encryption ------------------------------------------------------------------------------


def mac_bytes(mac: "bytes | bytearray | str") -> bytes:
    """A MAC address as 6 bytes in written order: ``"54:48:E6:8F:80:A5"`` (or with ``-``, or no
    separator) or 6 bytes (as ``BLE.config("mac")[1]`` gives them) -> ``b"\\x54\\x48..."``."""
    if isinstance(mac, (bytes, bytearray)):
        if len(mac) != MAC_LENGTH:
            raise ValueError(f"a MAC address is 6 bytes, got {len(mac)}")
        return bytes(mac)
    if isinstance(mac, str):
        text = mac
        if len(text) == 17 and text[2] in ":-" and all(text[i] == text[2] for i in range(2, 17, 3)):
            text = "".join(text[i : i + 2] for i in range(0, 17, 3))
        if len(text) == 12 and all(c in "0123456789abcdefABCDEF" for c in text):
            return bytes.fromhex(text)
    raise ValueError(f"not a MAC address: {mac!r} (expected six hex pairs, e.g. AA:BB:CC:DD:EE:FF)")


def nonce(mac: "bytes | bytearray | str", info: int, counter: int) -> bytes:
    """The 13-byte AES-CCM nonce: MAC + ``d2 fc`` + device-information byte + counter (uint32 LE)."""
    return mac_bytes(mac) + UUID16_LE + bytes([info]) + struct.pack("<I", _check_counter(counter))


def _check_counter(counter: int) -> int:
    if isinstance(counter, bool) or not isinstance(counter, int) or not 0 <= counter < COUNTER_MODULO:
        raise ValueError(f"the encryption counter is a uint32, got {counter!r}")
    return counter


# AES-CCM (RFC 3610, NIST SP 800-38C), written here on a single AES block function because no
# MicroPython library does CCM: MicroPython's cryptolib has ECB, CBC and (some ports) CTR only.
# CBC-MAC over B0 (flags, nonce, message length), the associated data and the message gives the tag;
# CTR with counter blocks A_i (flags L-1, nonce, i) encrypts the message from A_1 and the tag with
# A_0. BTHome uses a 13-byte nonce (L = 2), a 4-byte tag (M = 4) and no associated data.


def _xor_encrypt(aes: "BlockCipher", state: bytearray, data: bytes) -> None:
    """CBC-MAC: for each 16-byte block of ``data`` (the last zero-padded), state = E(state ^ block)."""
    for start in range(0, len(data), 16):
        for i, byte in enumerate(data[start : start + 16]):
            state[i] ^= byte
        state[:] = aes.encrypt(bytes(state))


def ccm_encrypt(aes: "BlockCipher", nonce: bytes, data: bytes, aad: bytes = b"", tag_length: int = MIC_LENGTH) -> bytes:
    """AES-CCM: ``data`` encrypted, followed by the ``tag_length``-byte tag (as AESCCM.encrypt).

    ``aes`` encrypts one block (``aes_backend.ecb(key)``); ``nonce`` is 7..13 bytes (L = 15 - its
    length); ``tag_length`` is 4, 6, ..., 16.
    """
    n = len(nonce)
    if not 7 <= n <= 13:
        raise ValueError(f"a CCM nonce is 7..13 bytes, got {n}")
    if tag_length not in (4, 6, 8, 10, 12, 14, 16):
        raise ValueError(f"a CCM tag is 4, 6, ..., 16 bytes, got {tag_length!r}")
    q = 15 - n  # L, the size of the length field
    if q < 8 and len(data) >> (8 * q):
        raise ValueError(f"{len(data)} bytes do not fit a {q}-byte CCM length field")
    # the tag: CBC-MAC over B0, the encoded associated data, the message
    block = bytearray(16)
    block[0] = (0x40 if aad else 0) | ((tag_length - 2) // 2) << 3 | (q - 1)
    block[1 : 1 + n] = nonce
    block[16 - q :] = len(data).to_bytes(q, "big")
    cbc = bytearray(aes.encrypt(bytes(block)))
    if aad:
        if len(aad) < 0xFF00:
            head = len(aad).to_bytes(2, "big")
        elif len(aad) >> 32 == 0:
            head = b"\xff\xfe" + len(aad).to_bytes(4, "big")
        else:
            raise ValueError("associated data of 2**32 bytes or more is not supported")
        _xor_encrypt(aes, cbc, head + bytes(aad))
    _xor_encrypt(aes, cbc, data)
    # CTR: A_0 encrypts the tag, A_1... the message
    block[0] = q - 1
    out = bytearray(data)
    for i in range(0, (len(data) + 15) // 16 + 1):
        block[16 - q :] = i.to_bytes(q, "big")
        stream = aes.encrypt(bytes(block))
        if i == 0:
            for j in range(tag_length):
                cbc[j] ^= stream[j]
            continue
        start = (i - 1) * 16
        for j in range(min(16, len(out) - start)):
            out[start + j] ^= stream[j]
    return bytes(out) + bytes(cbc[:tag_length])


class Encryptor:
    """Encrypts BTHome service data with a device's key (16 bytes) for its MAC address.

    The AES key schedule is made once. ``encrypt`` is deterministic: the caller owns the counter
    and must never reuse one with the same key (+1 per advert; keep it across restarts, or the hub
    sees a replay until it has heard a few authentic adverts).
    """

    def __init__(self, key: "bytes | bytearray", mac: "bytes | bytearray | str") -> None:
        if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_LENGTH:
            raise ValueError(f"a BTHome key is {KEY_LENGTH} bytes (32 hex digits)")
        self.mac = mac_bytes(mac)
        self._aes = ecb(bytes(key))

    def encrypt(self, objects: "Sequence[Object]", counter: int, trigger_based: bool = False) -> bytes:
        """Service data: device-information byte, ciphertext, counter (uint32 LE), 4-byte MIC."""
        info = device_info(True, trigger_based)
        sealed = ccm_encrypt(self._aes, nonce(self.mac, info, counter), _payload(objects))
        return bytes([info]) + sealed[:-MIC_LENGTH] + struct.pack("<I", counter) + sealed[-MIC_LENGTH:]


# ---- the advert ------------------------------------------------------------------------------


def advertising_payload(service_data: bytes, name: "str | None" = None) -> bytes:
    """The advert's AD structures, for ``bluetooth.BLE.gap_advertise``: flags 0x06 (LE general
    discoverable, no BR/EDR), the complete local name (if given) and the service data for UUID
    0xFCD2, in the order of the specification's example. At most 31 bytes."""
    if not isinstance(service_data, (bytes, bytearray)) or len(service_data) < 1:
        raise ValueError("service data is at least the device-information byte")
    payload = b"\x02\x01\x06"
    if name:
        encoded = name.encode()
        payload += bytes([len(encoded) + 1, 0x09]) + encoded
    payload += bytes([len(service_data) + 3, 0x16]) + UUID16_LE + bytes(service_data)
    if len(payload) > ADV_MAX:
        raise ValueError(f"the advert is {len(payload)} bytes, a legacy advert holds {ADV_MAX}")
    return payload
