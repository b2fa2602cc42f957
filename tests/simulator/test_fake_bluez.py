"""The fake bluetoothd against bleak's unmodified BlueZ backend (bleak.BleakScanner on Linux).

Each test gets its own private dbus-daemon and, with pytest-asyncio's per-test event loop, its own
bleak BlueZManager (bleak keeps one D-Bus connection per event loop). Waits are event-driven: a
queue fed by the detection callback, the fake's own state changes, or a D-Bus round trip on
bleak's connection (see ``bleak_caught_up``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from bleak import BleakScanner
from bleak.args.bluez import OrPattern, OrPatternLike
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.bluezdbus.manager import get_global_bluez_manager
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakBluetoothNotAvailableError, BleakDBusError, BleakError
from dbus_fast import Message, Variant

from simulator.ble import BTHOME_UUID, Advert, FakeBluez
from simulator.bthome import VirtualBthomeDevice

MAC = "A4:C1:38:00:00:01"
OTHER = "A4:C1:38:00:00:02"
KEY = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
BTHOME_PATTERN: list[OrPatternLike] = [OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xd2\xfc")]
XIAOMI_UUID = "0000fe95-0000-1000-8000-00805f9b34fb"
TIMEOUT = 3.0

Seen = tuple[BLEDevice, AdvertisementData]


@pytest.fixture
async def bluez(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeBluez]:
    async with FakeBluez() as fake:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", fake.address)
        yield fake


@pytest.fixture
async def active_bluez(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeBluez]:
    """An older BlueZ: no AdvertisementMonitorManager1."""
    async with FakeBluez(passive=False) as fake:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", fake.address)
        yield fake


def scanner(queue: asyncio.Queue[Seen], passive: bool = False) -> BleakScanner:
    def seen(device: BLEDevice, adv: AdvertisementData) -> None:
        queue.put_nowait((device, adv))

    if passive:
        return BleakScanner(detection_callback=seen, scanning_mode="passive", bluez={"or_patterns": BTHOME_PATTERN})
    return BleakScanner(detection_callback=seen)


async def next_seen(queue: asyncio.Queue[Seen]) -> Seen:
    return await asyncio.wait_for(queue.get(), TIMEOUT)


async def bleak_caught_up() -> None:
    """A round trip on bleak's own D-Bus connection: the fake wrote its signals before it answers,
    and dbus-daemon keeps their order, so bleak has handled every earlier signal when this returns."""
    manager = await get_global_bluez_manager()
    bus = manager._bus
    assert bus is not None
    reply = await bus.call(
        Message(destination="org.bluez", path="/", interface="org.freedesktop.DBus.Peer", member="Ping")
    )
    assert reply is not None


async def test_active_scan_receives_service_data_and_rssi(bluez: FakeBluez) -> None:
    queue: asyncio.Queue[Seen] = asyncio.Queue()
    dev = VirtualBthomeDevice(MAC, KEY)
    scan = scanner(queue)
    await scan.start()
    try:
        assert bluez.discovering and bluez.start_discovery_calls == 1
        first = dev.press()
        assert await bluez.advertise(MAC, {"fcd2": first}, rssi=-55, name="Anju pendant")
        device, adv = await next_seen(queue)
        assert device.address == MAC
        assert adv.service_data == {BTHOME_UUID: first}
        assert adv.rssi == -55
        assert adv.local_name == "Anju pendant"

        # a second advert from the same device is a PropertiesChanged: an update of the same device
        second = dev.heartbeat()
        assert await bluez.advertise(MAC, {BTHOME_UUID: second}, rssi=-70)
        device2, adv2 = await next_seen(queue)
        assert device2.address == MAC
        assert adv2.service_data == {BTHOME_UUID: second}
        assert adv2.rssi == -70
        assert adv2.local_name == "Anju pendant"
        assert [d.address for d in scan.discovered_devices] == [MAC]
    finally:
        await scan.stop()
    assert not bluez.discovering
    # nobody scans now: the radio hears nothing
    assert not await bluez.advertise(MAC, {"fcd2": dev.press()})
    assert bluez.adverts_dropped == 1


async def test_passive_scan_with_or_patterns(bluez: FakeBluez) -> None:
    queue: asyncio.Queue[Seen] = asyncio.Queue()
    dev = VirtualBthomeDevice(MAC, KEY)
    scan = scanner(queue, passive=True)
    await scan.start()
    try:
        # bluetoothd reads and activates the monitor a moment after RegisterMonitor returns
        await bluez.wait_for(lambda fake: fake.monitor_activations == 1)
        assert bluez.scanning and bluez.monitors_registered == 1 and bluez.monitors_active == 1
        assert not bluez.discovering and bluez.start_discovery_calls == 0

        # a stranger that does not match the or-pattern is not reported in passive mode
        assert not await bluez.advertise(OTHER, {"fe95": b"\x30\x58\x5b\x05\x01"})
        first = dev.press()
        assert await bluez.advertise(MAC, {"fcd2": first}, rssi=-60)
        device, adv = await next_seen(queue)
        assert device.address == MAC and adv.service_data == {BTHOME_UUID: first} and adv.rssi == -60

        second = dev.long_press()
        assert await bluez.advertise(MAC, {"fcd2": second}, rssi=-40)
        device, adv = await next_seen(queue)
        assert device.address == MAC and adv.service_data == {BTHOME_UUID: second} and adv.rssi == -40
        assert queue.empty()
        assert bluez.device_found_calls == 1  # once per device and monitor
    finally:
        await scan.stop()
    assert bluez.monitors_registered == 0 and not bluez.scanning


async def test_passive_scan_needs_the_monitor_manager(active_bluez: FakeBluez) -> None:
    scan = scanner(asyncio.Queue(), passive=True)
    with pytest.raises(BleakError, match="passive scanning on Linux requires BlueZ"):
        await scan.start()


async def test_start_discovery_failure_is_a_bleak_dbus_error(bluez: FakeBluez) -> None:
    bluez.fail_start_discovery("org.bluez.Error.InProgress")
    scan = scanner(asyncio.Queue())
    with pytest.raises(BleakDBusError) as failure:
        await scan.start()
    assert failure.value.dbus_error == "org.bluez.Error.InProgress"
    assert not bluez.discovering
    await scan.start()  # only once
    assert bluez.discovering and bluez.start_discovery_calls == 2
    await scan.stop()


async def test_register_monitor_failure_is_a_bleak_dbus_error(bluez: FakeBluez) -> None:
    bluez.fail_register_monitor("org.bluez.Error.Failed", times=1)
    scan = scanner(asyncio.Queue(), passive=True)
    with pytest.raises(BleakDBusError) as failure:
        await scan.start()
    assert failure.value.dbus_error == "org.bluez.Error.Failed"
    assert bluez.monitors_registered == 0
    await scan.start()
    await bluez.wait_scanning()
    await scan.stop()


async def test_bluetoothd_drops_unchanged_adverts_like_bluez(bluez: FakeBluez) -> None:
    queue: asyncio.Queue[Seen] = asyncio.Queue()
    dev = VirtualBthomeDevice(MAC, KEY)
    scan = scanner(queue)  # bleak asks for DuplicateData=False
    await scan.start()
    try:
        advert = dev.press()
        assert await bluez.advertise(MAC, {"fcd2": advert}, rssi=-60)
        await next_seen(queue)
        # the same bytes at the same RSSI: bluetoothd signals nothing, so bleak calls nobody
        assert not await bluez.advertise(MAC, {"fcd2": advert}, rssi=-60)
        assert bluez.adverts_unchanged == 1
        # the same bytes at another RSSI: an RSSI-only change, with the (unchanged) service data
        assert await bluez.advertise(MAC, {"fcd2": advert}, rssi=-61)
        _, adv = await next_seen(queue)
        assert adv.rssi == -61 and adv.service_data == {BTHOME_UUID: advert}
        # a replay of an older advert differs from the current one, so it is delivered
        dev.heartbeat()
        assert await bluez.advertise(MAC, {"fcd2": dev.replay(-1)}, rssi=-61)
        assert await bluez.advertise(MAC, {"fcd2": dev.replay(0)}, rssi=-61)
        assert (await next_seen(queue))[1].service_data[BTHOME_UUID] == dev.replay(-1)
        assert (await next_seen(queue))[1].service_data[BTHOME_UUID] == dev.replay(0)
    finally:
        await scan.stop()


async def test_duplicate_data_delivers_every_advert(monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeBluez(duplicate_data=True) as fake:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", fake.address)
        queue: asyncio.Queue[Seen] = asyncio.Queue()
        scan = scanner(queue)
        await scan.start()
        advert = VirtualBthomeDevice(MAC, None).press()
        for _ in range(3):
            assert await fake.advertise(MAC, {"fcd2": advert}, rssi=-60)
        for _ in range(3):
            assert (await next_seen(queue))[1].service_data == {BTHOME_UUID: advert}
        await scan.stop()


async def test_service_uuid_filter_matches_uuid_lists_only(bluez: FakeBluez) -> None:
    """bluetoothd's UUIDs discovery filter (and bleak's own service_uuids check) look at the
    advert's UUID list, not at service-data UUIDs: a BTHome advert, which carries no UUID list,
    is filtered out. So a scanner for BTHome must not use service_uuids."""
    queue: asyncio.Queue[Seen] = asyncio.Queue()
    scan = BleakScanner(detection_callback=lambda d, a: queue.put_nowait((d, a)), service_uuids=[BTHOME_UUID])
    await scan.start()
    try:
        assert not await bluez.advertise(OTHER, {XIAOMI_UUID: b"\x30\x58"}, uuids=[XIAOMI_UUID])
        assert not await bluez.advertise(MAC, {"fcd2": b"\x40\x00\x01"})
        assert await bluez.advertise(MAC, {"fcd2": b"\x40\x00\x02"}, uuids=["fcd2"])
        device, adv = await next_seen(queue)
        assert device.address == MAC and adv.service_uuids == [BTHOME_UUID]
    finally:
        await scan.stop()


async def test_adapter_removed_and_restored(bluez: FakeBluez) -> None:
    """What bleak does when hci0 goes away under a running scanner (observed with bleak 3.1):

    * the devices' InterfacesRemoved reach the scanner: ``discovered_devices`` empties;
    * the scanner gets no error and no more adverts: its discovery session died with the adapter;
    * ``BleakScanner.stop()`` then raises BleakDBusError (the adapter object is gone:
      ``org.freedesktop.DBus.Error.UnknownObject``; after the adapter is back:
      ``org.bluez.Error.Failed``, "No discovery started");
    * a new scanner cannot start while it is gone (BleakBluetoothNotAvailableError, "No Bluetooth
      adapters found.") and works again once it is back.
    So a hub must notice the silence itself (a watchdog), drop the old scanner and start a new one.
    """
    queue: asyncio.Queue[Seen] = asyncio.Queue()
    dev = VirtualBthomeDevice(MAC, KEY)
    old = scanner(queue)
    await old.start()
    assert await bluez.advertise(MAC, {"fcd2": dev.press()})
    await next_seen(queue)
    assert len(old.discovered_devices) == 1

    await bluez.remove_adapter()
    await bleak_caught_up()
    assert not bluez.adapter_present and not bluez.discovering and bluez.devices == []
    assert old.discovered_devices == []
    assert not await bluez.advertise(MAC, {"fcd2": dev.press()})
    with pytest.raises(BleakBluetoothNotAvailableError):
        await scanner(asyncio.Queue()).start()
    with pytest.raises(BleakDBusError) as gone:
        await old.stop()
    assert gone.value.dbus_error == "org.freedesktop.DBus.Error.UnknownObject"

    await bluez.restore_adapter()
    await bleak_caught_up()
    assert bluez.adapter_present and not bluez.scanning
    new = scanner(queue)
    await new.start()
    try:
        advert = dev.press()
        assert await bluez.advertise(MAC, {"fcd2": advert})
        _, adv = await next_seen(queue)
        assert adv.service_data == {BTHOME_UUID: advert}
    finally:
        await new.stop()


async def test_adapter_removed_under_a_passive_scanner(bluez: FakeBluez) -> None:
    scan = scanner(asyncio.Queue(), passive=True)
    await scan.start()
    await bluez.wait_scanning()
    await bluez.remove_adapter()
    assert bluez.monitors_registered == 0 and not bluez.scanning
    await bluez.restore_adapter()
    with pytest.raises(BleakDBusError) as failure:
        await scan.stop()  # UnregisterMonitor for an application bluetoothd already released
    assert failure.value.dbus_error == "org.bluez.Error.DoesNotExist"


async def test_garbage_property_types_do_not_break_the_fake(bluez: FakeBluez, caplog: pytest.LogCaptureFixture) -> None:
    """Observed with bleak 3.1: a string RSSI is passed through to the detection callback as it is;
    ServiceData of the wrong D-Bus type makes bleak's own signal handler raise (dbus-fast logs "A
    message handler raised an exception") before any detection callback, and as bleak caches the
    property, every later signal for that device fails the same way until a valid ServiceData
    replaces it (the fake re-sends all advert properties on the device's next advert)."""
    queue: asyncio.Queue[Seen] = asyncio.Queue()
    dev = VirtualBthomeDevice(MAC, KEY)
    scan = scanner(queue)
    await scan.start()
    try:
        assert await bluez.advertise(MAC, {"fcd2": dev.press()})
        await next_seen(queue)

        with pytest.raises(KeyError):
            await bluez.send_garbage_properties(OTHER)  # never advertised
        await bluez.send_garbage_properties(MAC, {"RSSI": Variant("s", "strong")})
        _, adv = await next_seen(queue)
        assert adv.rssi == "strong"

        await bluez.send_garbage_properties(MAC)  # also ServiceData as an array of strings
        await bleak_caught_up()
        assert queue.empty()
        assert "A message handler raised an exception" in caplog.text

        # the fake carries on, and its next advert repairs bleak's cached properties
        advert = dev.heartbeat()
        assert await bluez.advertise(MAC, {"fcd2": advert}, rssi=-60)
        _, adv = await next_seen(queue)
        assert adv.service_data == {BTHOME_UUID: advert} and adv.rssi == -60
    finally:
        await scan.stop()


async def test_remove_device_reaches_bleak(bluez: FakeBluez) -> None:
    queue: asyncio.Queue[Seen] = asyncio.Queue()
    scan = scanner(queue)
    await scan.start()
    try:
        assert await bluez.advertise(MAC, {"fcd2": b"\x40\x00\x01"})
        await next_seen(queue)
        await bluez.remove_device(MAC)
        await bleak_caught_up()
        assert scan.discovered_devices == [] and bluez.devices == []
        assert await bluez.advertise(MAC, {"fcd2": b"\x40\x00\x02"})  # InterfacesAdded again
        assert (await next_seen(queue))[0].address == MAC
    finally:
        await scan.stop()


async def test_advertise_many_500_devices(bluez: FakeBluez) -> None:
    seen: dict[str, int] = {}
    done = asyncio.Event()
    rounds, devices = 4, 500

    def count(device: BLEDevice, adv: AdvertisementData) -> None:
        seen[device.address] = seen.get(device.address, 0) + 1
        if sum(seen.values()) == rounds * devices:
            done.set()

    scan = BleakScanner(detection_callback=count)
    await scan.start()
    try:
        fleet = [VirtualBthomeDevice(f"C0:00:00:00:{i // 256:02X}:{i % 256:02X}", KEY) for i in range(devices)]
        items = [Advert(d.mac, {"fcd2": d.heartbeat()}, -60) for _ in range(rounds) for d in fleet]
        assert await bluez.advertise_many(items) == rounds * devices
        await asyncio.wait_for(done.wait(), 10)
        assert len(seen) == devices and set(seen.values()) == {rounds}
    finally:
        await scan.stop()


def test_cli_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simulator.ble", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
    )
    assert "DBUS_SYSTEM_BUS_ADDRESS" in result.stdout


async def test_workdir_too_deep_for_a_socket_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 90)
    async with FakeBluez(deep) as fake:
        assert len(str(fake.socket_path)) < 100 and fake.socket_path.exists()
        assert (deep / "bus.conf").exists() and (deep / "dbus-daemon.log").exists()
        socket_path = fake.socket_path
    assert not socket_path.exists() and deep.exists()
