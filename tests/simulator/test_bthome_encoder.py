"""The BTHome v2 encoder against the specification, and bthome-ble as an independent reader.

Expected bytes are written by hand from bthome.io (the object tables' examples and the
encryption page's worked example), not produced by the encoder under test.
"""

from __future__ import annotations

import itertools

import pytest
from bthome_ble import BTHomeBluetoothDeviceData
from habluetooth import BluetoothServiceInfoBleak
from sensor_state_data import DeviceKey, SensorUpdate

from simulator import bthome
from simulator.bthome import VirtualBthomeDevice, service_data

SPEC_KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
SPEC_MAC = "54:48:E6:8F:80:A5"
WRONG_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
MAC = "A4:C1:38:00:00:01"
KEY = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# ---- the published encryption example -------------------------------------------------------


def test_published_encryption_example_byte_for_byte() -> None:
    # bthome.io/encryption: temperature 25.06 °C (02 CA09) and humidity 50.55 % (03 BF13), key
    # 231d39c1…32, MAC 5448E68F80A5, nonce 5448e68f80a5 d2fc 41 00112233; the advert's service data
    # is d2fc 41 a47266c95f73 00112233 78237214. The page calls the counter "0x00112233" but writes
    # its bytes 00 11 22 33 into the nonce; as a uint32 little-endian those bytes are 0x33221100.
    data = service_data([h("03 BF13"), bthome.temperature(25.06)], mac=SPEC_MAC, key=SPEC_KEY, counter=0x33221100)
    assert data == h("41 a47266c95f73 00112233 78237214")


def test_nonce_layout() -> None:
    assert bthome.nonce(SPEC_MAC, 0x41, 0x33221100) == h("5448e68f80a5 d2fc 41 00112233")


def test_published_plaintext_example_sorted_by_object_id() -> None:
    # bthome.io/format: 0A16D2FC 40 02C409 03BF13 -> temperature 25.00 °C, humidity 50.55 %.
    # Given out of order, the encoder sorts the objects by id.
    assert service_data([h("03 BF13"), bthome.temperature(25.0)], mac=SPEC_MAC) == h("40 02C409 03BF13")


# ---- objects against the specification tables -----------------------------------------------


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (bthome.packet_id(9), "0009"),
        (bthome.packet_id(255), "00FF"),
        (bthome.battery(97), "0161"),
        (bthome.battery(0), "0100"),
        (bthome.temperature(25.06), "02CA09"),
        (bthome.temperature(-5.5), "02DAFD"),  # -550 = 0xFDDA
        (bthome.binary(bthome.SMOKE, True), "2901"),
        (bthome.binary(bthome.SMOKE, False), "2900"),
        (bthome.binary(bthome.TAMPER, True), "2B01"),
        (bthome.binary(bthome.MOTION, True), "2101"),
        (bthome.binary(bthome.OCCUPANCY, False), "2300"),
        (bthome.binary(bthome.OPENING, True), "1101"),
        (bthome.binary(bthome.BATTERY_LOW, True), "1501"),
        (bthome.button("none"), "3A00"),
        (bthome.button("press"), "3A01"),
        (bthome.button("double_press"), "3A02"),
        (bthome.button("triple_press"), "3A03"),
        (bthome.button("long_press"), "3A04"),
        (bthome.button("long_double_press"), "3A05"),
        (bthome.button("long_triple_press"), "3A06"),
        (bthome.button("hold_press"), "3A80"),
    ],
)
def test_object_bytes(obj: bytes, expected: str) -> None:
    assert obj == h(expected)


def test_object_ids() -> None:
    assert (bthome.SMOKE, bthome.TAMPER, bthome.MOTION, bthome.OCCUPANCY, bthome.OPENING, bthome.BATTERY_LOW) == (
        0x29,
        0x2B,
        0x21,
        0x23,
        0x11,
        0x15,
    )


@pytest.mark.parametrize(
    "bad",
    [
        lambda: bthome.packet_id(256),
        lambda: bthome.battery(101),
        lambda: bthome.temperature(400.0),
        lambda: bthome.binary(0x12, True),  # CO2, not binary
        lambda: bthome.button("squeeze"),
        lambda: service_data([bthome.battery(1)], mac="not a mac", key=KEY),
        lambda: service_data([bthome.battery(1)], mac=MAC, key=b"short"),
        lambda: service_data([bthome.battery(1)], mac=MAC, key=KEY, counter=1 << 32),
    ],
)
def test_bad_input_is_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        bad()  # type: ignore[operator]


def test_device_information_byte() -> None:
    assert service_data([bthome.button("press")], mac=MAC) == h("40 3A01")
    assert service_data([bthome.button("press")], mac=MAC, trigger_based=True) == h("44 3A01")
    assert service_data([bthome.button("press")], mac=MAC, key=KEY)[0] == 0x41
    assert service_data([bthome.button("press")], mac=MAC, key=KEY, trigger_based=True)[0] == 0x45


def test_encrypted_layout_counter_and_mic() -> None:
    data = service_data([bthome.packet_id(3), bthome.battery(50)], mac=MAC, key=KEY, counter=0x01020304)
    # info + 4 bytes of ciphertext (two 2-byte objects) + counter LE + MIC
    assert len(data) == 1 + 4 + 4 + 4
    assert data[5:9] == h("04030201")


# ---- the virtual device (plaintext, so the bytes can be written by hand) ---------------------


def test_plain_device_adverts() -> None:
    dev = VirtualBthomeDevice(MAC, None)
    assert dev.press() == h("44 0000 3A01")
    assert dev.double_press() == h("44 0001 3A02")
    assert dev.long_press() == h("44 0002 3A04")
    assert dev.fall() == h("44 0003 3A00 3A01")  # button 1 "none", button 2 "press"
    assert dev.smoke(True) == h("44 0004 2901")
    assert dev.smoke(False) == h("44 0005 2900")
    assert dev.tamper(True) == h("44 0006 2B01")
    assert dev.motion(True) == h("44 0007 2101")
    assert dev.opening(False) == h("44 0008 1100")
    assert dev.battery_level(15) == h("40 0009 010F")
    assert dev.heartbeat() == h("40 000A 010F")  # battery + packet id, not trigger based
    assert dev.replay(0) == h("44 0000 3A01")
    assert dev.replay() == h("40 000A 010F")
    assert dev.plaintext() == h("44 000B 3A01")
    assert dev.packet_id == 0x0B  # plaintext() did not consume a packet id


def test_packet_id_wraps() -> None:
    dev = VirtualBthomeDevice(MAC, None)
    for _ in range(256):
        dev.heartbeat()
    assert dev.heartbeat() == h("40 0000 0164")


def test_encrypted_device_counter_and_replay() -> None:
    dev = VirtualBthomeDevice(MAC, KEY, start_counter=7)
    first = dev.press()
    second = dev.heartbeat()
    assert first[0] == 0x45 and second[0] == 0x41
    assert first[-8:-4] == h("07000000") and second[-8:-4] == h("08000000")
    assert dev.replay(0) == first
    spoofed = dev.spoof(WRONG_KEY)
    assert spoofed[-8:-4] == h("09000000")  # the counter the device will use next
    genuine = dev.press()
    assert genuine[-8:-4] == h("09000000")
    assert spoofed != genuine and len(spoofed) == len(genuine)
    assert dev.sent == [first, second, genuine]


def test_no_replay_before_anything_was_sent() -> None:
    with pytest.raises(IndexError):
        VirtualBthomeDevice(MAC, KEY).replay()


# ---- bthome-ble, the reference decoder, reads what we write ---------------------------------

_clock = itertools.count(1000, 10)  # seconds apart: bthome-ble's packet-id filter looks at time


def decode(parser: BTHomeBluetoothDeviceData, data: bytes, mac: str = MAC) -> SensorUpdate:
    # built as bthome-ble's own tests build it (tests/test_parser.py, bytes_to_service_info)
    info = BluetoothServiceInfoBleak(
        name="Anju pendant",
        address=mac,
        rssi=-60,
        manufacturer_data={},
        service_data={bthome.SERVICE_UUID: data},
        service_uuids=[],
        source="",
        device=None,  # type: ignore[arg-type]
        advertisement=None,
        connectable=False,
        time=float(next(_clock)),
        tx_power=None,
    )
    return parser.update(info)


def events(update: SensorUpdate) -> dict[str, str]:
    return {key.key: event.event_type for key, event in update.events.items()}


def test_bthome_ble_reads_the_published_example() -> None:
    data = service_data([bthome.temperature(25.06), h("03 BF13")], mac=SPEC_MAC, key=SPEC_KEY, counter=0x33221100)
    update = decode(BTHomeBluetoothDeviceData(SPEC_KEY), data, mac=SPEC_MAC)
    assert update.entity_values[DeviceKey("temperature")].native_value == 25.06
    assert update.entity_values[DeviceKey("humidity")].native_value == 50.55


def test_bthome_ble_reads_battery_smoke_buttons_and_fall() -> None:
    dev = VirtualBthomeDevice(MAC, KEY)
    parser = BTHomeBluetoothDeviceData(KEY)

    update = decode(parser, dev.battery_level(42))
    assert update.entity_values[DeviceKey("battery")].native_value == 42
    assert update.entity_values[DeviceKey("packet_id")].native_value == 0
    assert parser.bindkey_verified and not parser.sleepy_device

    update = decode(parser, dev.smoke(True))
    assert update.binary_entity_values[DeviceKey("smoke")].native_value is True
    assert parser.sleepy_device  # the trigger-based flag
    update = decode(parser, dev.smoke(False))
    assert update.binary_entity_values[DeviceKey("smoke")].native_value is False

    assert events(decode(parser, dev.press())) == {"button": "press"}
    assert events(decode(parser, dev.double_press())) == {"button": "double_press"}
    assert events(decode(parser, dev.long_press())) == {"button": "long_press"}
    # the fall convention: button_1 "none" fires nothing, button_2 is pressed
    assert events(decode(parser, dev.fall())) == {"button_2": "press"}

    update = decode(parser, dev.tamper(True))
    assert update.binary_entity_values[DeviceKey("tamper")].native_value is True
    update = decode(parser, dev.motion(True))
    assert update.binary_entity_values[DeviceKey("motion")].native_value is True
    update = decode(parser, dev.opening(True))
    assert update.binary_entity_values[DeviceKey("opening")].native_value is True
    update = decode(parser, dev.heartbeat())
    assert update.entity_values[DeviceKey("battery")].native_value == 42
    assert parser.encryption_counter == dev.counter - 1


def test_bthome_ble_rejects_a_spoofed_advert() -> None:
    dev = VirtualBthomeDevice(MAC, KEY)
    fresh = BTHomeBluetoothDeviceData(KEY)
    update = decode(fresh, dev.spoof(WRONG_KEY))
    assert events(update) == {}
    assert not fresh.bindkey_verified

    parser = BTHomeBluetoothDeviceData(KEY)
    assert events(decode(parser, dev.press())) == {"button": "press"}
    assert events(decode(parser, dev.spoof(WRONG_KEY))) == {}
    assert parser.decryption_failed
    # the genuine next advert, same counter as the spoof, still gets through
    assert events(decode(parser, dev.press())) == {"button": "press"}


def test_bthome_ble_reads_a_plain_device() -> None:
    dev = VirtualBthomeDevice(MAC, None)
    parser = BTHomeBluetoothDeviceData()
    assert events(decode(parser, dev.press())) == {"button": "press"}
    assert events(decode(parser, dev.fall())) == {"button_2": "press"}
