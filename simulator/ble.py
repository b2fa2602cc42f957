"""A small fake ``bluetoothd`` on a private D-Bus, so the hub's unmodified bleak/BlueZ code hears
BTHome adverts with no radio.

:class:`FakeBluez` starts a private ``dbus-daemon`` (Debian package ``dbus``) configured like a
system bus on ``unix:path=<workdir>/system_bus_socket``, owns ``org.bluez`` on it and exports
exactly what bleak's BlueZ backend (bleak 3.1, ``bleak/backends/bluezdbus``) uses:

* ``org.freedesktop.DBus.ObjectManager`` at ``/``: ``GetManagedObjects`` and the
  ``InterfacesAdded`` / ``InterfacesRemoved`` signals, sent from ``/`` as bluetoothd sends them.
* ``/org/bluez/hci0`` with ``org.bluez.Adapter1`` (``Address``, ``Powered``, ``Roles`` with
  ``central`` -- bleak's default-adapter choice reads both --, ``Discovering`` …;
  ``StartDiscovery``, ``StopDiscovery``, ``SetDiscoveryFilter``, ``GetDiscoveryFilters``,
  ``RemoveDevice``). Discovery is per client as in bluetoothd: a second ``StartDiscovery`` from the
  same client is ``InProgress``, ``StopDiscovery`` without one is ``Failed``, and a client that
  leaves the bus loses its session and its monitors.
* With ``passive=True``, ``org.bluez.AdvertisementMonitorManager1`` (``RegisterMonitor``,
  ``UnregisterMonitor``, ``SupportedMonitorTypes = ["or_patterns"]``). After ``RegisterMonitor``
  the fake reads the application's monitors through its ObjectManager (``GetManagedObjects`` and
  its ``InterfacesAdded``: bleak exports its monitor only *after* registering), reads ``Type`` and
  ``Patterns``, calls ``Activate`` and, for each device whose advert matches one of the
  or-patterns, ``DeviceFound(device)``.
* ``org.bluez.Device1`` objects ``/org/bluez/hci0/dev_AA_BB_CC_DD_EE_FF``, created on a device's
  first advert (``InterfacesAdded`` with ``Address``, ``AddressType``, ``Alias``, ``Name`` when
  known, ``RSSI``, ``ServiceData`` as ``a{sv}`` keyed by the 128-bit UUID with ``ay`` values, …);
  later adverts are ``PropertiesChanged`` on the device. bleak turns both into detection
  callbacks, in active and in passive mode. ``Properties.Get``/``GetAll`` work on devices.

Adverts flow only while some client is discovering (active scanning) or an activated monitor's
or-patterns match the advert (passive scanning); otherwise :meth:`FakeBluez.advertise` drops them
and returns ``False``, as bluetoothd would not see them.

Like bluetoothd, a later advert only produces a signal for what changed: ``ServiceData`` and
``ManufacturerData`` when their bytes differ (or always, when a discovering client asked for
``DuplicateData=True`` in ``SetDiscoveryFilter``; bleak asks for ``False``), ``RSSI`` when it moved
(by any amount under a filtered discovery, which bleak's active scan always is; by 8 dBm or more
otherwise). So a byte-identical radio duplicate at the same RSSI reaches bleak *not at all*, and
an old advert replayed after a newer one does. ``duplicate_data=True`` forces a full signal for
every advert (the fake then behaves like ``DuplicateData=True``).

Fault injection: :meth:`FakeBluez.remove_adapter` / :meth:`FakeBluez.restore_adapter` (the
adapter and its devices disappear as when the USB dongle or the UART resets),
:meth:`FakeBluez.fail_start_discovery`, :meth:`FakeBluez.fail_register_monitor`,
:meth:`FakeBluez.send_garbage_properties` (wrong D-Bus types in a ``PropertiesChanged``) and
:meth:`FakeBluez.remove_device` (bluetoothd forgetting a temporary device).

Run ``python -m simulator.ble --help`` to start one by hand.

This module deliberately avoids ``from __future__ import annotations``: dbus-fast reads the D-Bus
signatures of the exported methods and properties from their annotations at runtime.
"""

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid as uuid_mod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from dbus_fast import Message, MessageFlag, MessageType, NameFlag, RequestNameReply, Variant, unpack_variants
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusBool, DBusDict, DBusObjectPath, DBusSignature, DBusStr, DBusUInt32
from dbus_fast.errors import DBusError
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_method, dbus_property

log = logging.getLogger(__name__)

BLUEZ_SERVICE = "org.bluez"
ADAPTER_PATH = "/org/bluez/hci0"
DEVICE_PATH_PREFIX = ADAPTER_PATH + "/dev_"
ADAPTER_INTERFACE = "org.bluez.Adapter1"
DEVICE_INTERFACE = "org.bluez.Device1"
MONITOR_MANAGER_INTERFACE = "org.bluez.AdvertisementMonitorManager1"
MONITOR_INTERFACE = "org.bluez.AdvertisementMonitor1"
OBJECT_MANAGER_INTERFACE = "org.freedesktop.DBus.ObjectManager"
PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"
INTROSPECTABLE_INTERFACE = "org.freedesktop.DBus.Introspectable"
DBUS_SERVICE = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"

BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"
BTHOME_UUID = "0000fcd2" + BASE_UUID_SUFFIX

# bluetoothd's error texts (src/error.c)
_ERROR_TEXTS = {
    "org.bluez.Error.InProgress": "Operation already in progress",
    "org.bluez.Error.NotReady": "Resource Not Ready",
    "org.bluez.Error.Failed": "Operation failed",
    "org.bluez.Error.Busy": "Operation currently not available",
    "org.bluez.Error.NotSupported": "Operation is not supported",
    "org.bluez.Error.InvalidArguments": "Invalid arguments in method call",
    "org.bluez.Error.AlreadyExists": "Already Exists",
    "org.bluez.Error.DoesNotExist": "Does Not Exist",
    "org.bluez.Error.NotPermitted": "Operation Not Permitted",
}

DISCOVERY_FILTER_KEYS = ["UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable", "Pattern"]

# bluetoothd only reports an RSSI change of 8 dBm or more, unless a filtered discovery is running
RSSI_THRESHOLD = 8

# dbus-fast 5.2 treats EAGAIN on its socket as fatal (it drops the connection when a burst fills
# the socket buffer, ~200 KB). So after this many messages the fake waits until dbus-daemon has
# read them all (a round trip to the daemon) before it sends more.
_MESSAGES_PER_ROUND_TRIP = 32

# What send_garbage_properties() sends by default: a string RSSI and ServiceData of the wrong type.
GARBAGE_PROPERTIES: dict[str, Variant] = {
    "RSSI": Variant("s", "-60 dBm"),
    "ServiceData": Variant("as", [BTHOME_UUID]),
}

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<!-- written by simulator.ble: a private system-like bus for a fake bluetoothd; allows everything -->
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
  <limit name="max_incoming_bytes">1000000000</limit>
  <limit name="max_outgoing_bytes">1000000000</limit>
  <limit name="max_message_size">134217728</limit>
  <limit name="max_replies_per_connection">100000</limit>
  <limit name="max_match_rules_per_connection">100000</limit>
  <limit name="max_connections_per_user">1024</limit>
</busconfig>
"""


class FakeBluezError(RuntimeError):
    pass


class Advert(NamedTuple):
    """One advert for :meth:`FakeBluez.advertise_many`; plain tuples in this order work too."""

    mac: str
    service_data: Mapping[str, bytes]
    rssi: int = -60
    name: str | None = None


def full_uuid(uuid: str) -> str:
    """``"fcd2"``, ``"0000fcd2"`` or a 128-bit UUID -> the lower-case 128-bit form BlueZ uses."""
    text = uuid.strip().lower()
    if len(text) in (4, 8):
        int(text, 16)  # ValueError if not hex
        return text.rjust(8, "0") + BASE_UUID_SUFFIX
    return str(uuid_mod.UUID(text))


def device_path(mac: str) -> str:
    return DEVICE_PATH_PREFIX + _normal_mac(mac).replace(":", "_")


def _normal_mac(mac: str) -> str:
    text = mac.strip().upper().replace("-", ":")
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789ABCDEF" for c in p) for p in parts):
        raise ValueError(f"not a MAC address: {mac!r}")
    return text


def _address_type(mac: str) -> str:
    # a static random address has the two most significant bits set
    return "random" if int(mac[:2], 16) & 0xC0 == 0xC0 else "public"


def _error(name: str, text: str | None = None) -> DBusError:
    return DBusError(name, text or _ERROR_TEXTS.get(name, name.rsplit(".", 1)[-1]))


def _ad_structures(
    service_data: Mapping[str, bytes],
    manufacturer_data: Mapping[int, bytes],
    uuids: Sequence[str],
    name: str | None,
) -> list[tuple[int, bytes]]:
    """The advert's AD structures (type, data), rebuilt for matching advertisement-monitor patterns."""
    structs: list[tuple[int, bytes]] = [(0x01, b"\x06")]
    short = [u for u in uuids if u.startswith("0000") and u.endswith(BASE_UUID_SUFFIX)]
    if short:
        structs.append((0x03, b"".join(int(u[4:8], 16).to_bytes(2, "little") for u in short)))
    long = [u for u in uuids if u not in short]
    if long:
        structs.append((0x07, b"".join(uuid_mod.UUID(u).bytes[::-1] for u in long)))
    if name:
        structs.append((0x09, name.encode()))
    for uuid, data in service_data.items():
        if uuid.endswith(BASE_UUID_SUFFIX) and uuid.startswith("0000"):
            structs.append((0x16, int(uuid[4:8], 16).to_bytes(2, "little") + data))
        elif uuid.endswith(BASE_UUID_SUFFIX):
            structs.append((0x20, int(uuid[:8], 16).to_bytes(4, "little") + data))
        else:
            structs.append((0x21, uuid_mod.UUID(uuid).bytes[::-1] + data))
    for company, data in manufacturer_data.items():
        structs.append((0xFF, company.to_bytes(2, "little") + data))
    return structs


@dataclass
class _Monitor:
    app: "_App"
    path: str
    patterns: list[tuple[int, int, bytes]]
    found: set[str] = field(default_factory=set)

    def matches(self, structs: list[tuple[int, bytes]]) -> bool:
        for start, ad_type, content in self.patterns:
            end = start + len(content)
            for kind, data in structs:
                if kind == ad_type and data[start:end] == content:
                    return True
        return False


@dataclass
class _App:
    sender: str
    path: str
    match_rule: str
    monitors: dict[str, _Monitor] = field(default_factory=dict)


@dataclass
class _Device:
    mac: str
    path: str
    props: dict[str, Variant]
    service_data: dict[str, bytes]
    manufacturer_data: dict[int, bytes]
    rssi: int
    name: str | None
    dirty: bool = False  # after garbage was sent, the next advert repeats every advert property


class _Bus(MessageBus):
    """dbus-fast announces exported interfaces itself, from their own path; bluetoothd announces
    them from ``/``, and so does :class:`FakeBluez`, so dbus-fast's announcements are switched off."""

    def _emit_interface_added(self, path: str, interface: ServiceInterface) -> None:
        return None

    def _emit_interface_removed(self, path: str, removed_interfaces: list[str]) -> None:
        return None


class _Adapter1(ServiceInterface):
    def __init__(self, fake: "FakeBluez") -> None:
        super().__init__(ADAPTER_INTERFACE)
        self._fake = fake

    def _get(self, name: str) -> Any:
        return self._fake._adapter_props[name].value

    @dbus_method()
    def StartDiscovery(self) -> None:
        self._fake._start_discovery(self._fake._caller)

    @dbus_method()
    def StopDiscovery(self) -> None:
        self._fake._stop_discovery(self._fake._caller)

    @dbus_method()
    def SetDiscoveryFilter(self, properties: DBusDict) -> None:
        self._fake._set_discovery_filter(self._fake._caller, properties)

    @dbus_method()
    def GetDiscoveryFilters(self) -> Annotated[list[str], DBusSignature("as")]:
        return list(DISCOVERY_FILTER_KEYS)

    @dbus_method()
    def RemoveDevice(self, device: DBusObjectPath) -> None:
        self._fake._remove_device_by_path(device)

    @dbus_property(PropertyAccess.READ)
    def Address(self) -> DBusStr:
        return str(self._get("Address"))

    @dbus_property(PropertyAccess.READ)
    def AddressType(self) -> DBusStr:
        return str(self._get("AddressType"))

    @dbus_property(PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return str(self._get("Name"))

    @dbus_property()
    def Alias(self) -> DBusStr:
        return str(self._get("Alias"))

    @Alias.setter  # type: ignore[no-redef]
    def Alias(self, value: DBusStr) -> None:
        self._fake._set_adapter_props({"Alias": Variant("s", value or self._get("Name"))})

    @dbus_property(PropertyAccess.READ)
    def Class(self) -> DBusUInt32:
        return int(self._get("Class"))

    @dbus_property()
    def Powered(self) -> DBusBool:
        return bool(self._get("Powered"))

    @Powered.setter  # type: ignore[no-redef]
    def Powered(self, value: DBusBool) -> None:
        self._fake._set_powered(bool(value))

    @dbus_property(PropertyAccess.READ)
    def PowerState(self) -> DBusStr:
        return str(self._get("PowerState"))

    @dbus_property(PropertyAccess.READ)
    def Discoverable(self) -> DBusBool:
        return bool(self._get("Discoverable"))

    @dbus_property(PropertyAccess.READ)
    def DiscoverableTimeout(self) -> DBusUInt32:
        return int(self._get("DiscoverableTimeout"))

    @dbus_property(PropertyAccess.READ)
    def Pairable(self) -> DBusBool:
        return bool(self._get("Pairable"))

    @dbus_property(PropertyAccess.READ)
    def PairableTimeout(self) -> DBusUInt32:
        return int(self._get("PairableTimeout"))

    @dbus_property(PropertyAccess.READ)
    def Discovering(self) -> DBusBool:
        return bool(self._get("Discovering"))

    @dbus_property(PropertyAccess.READ)
    def UUIDs(self) -> Annotated[list[str], DBusSignature("as")]:
        return list(self._get("UUIDs"))

    @dbus_property(PropertyAccess.READ)
    def Modalias(self) -> DBusStr:
        return str(self._get("Modalias"))

    @dbus_property(PropertyAccess.READ)
    def Roles(self) -> Annotated[list[str], DBusSignature("as")]:
        return list(self._get("Roles"))

    @dbus_property(PropertyAccess.READ)
    def ExperimentalFeatures(self) -> Annotated[list[str], DBusSignature("as")]:
        return list(self._get("ExperimentalFeatures"))


class _AdvertisementMonitorManager1(ServiceInterface):
    def __init__(self, fake: "FakeBluez") -> None:
        super().__init__(MONITOR_MANAGER_INTERFACE)
        self._fake = fake

    @dbus_method()
    def RegisterMonitor(self, application: DBusObjectPath) -> None:
        self._fake._register_monitor(self._fake._caller, application)

    @dbus_method()
    def UnregisterMonitor(self, application: DBusObjectPath) -> None:
        self._fake._unregister_monitor(self._fake._caller, application)

    @dbus_property(PropertyAccess.READ)
    def SupportedMonitorTypes(self) -> Annotated[list[str], DBusSignature("as")]:
        return ["or_patterns"]

    @dbus_property(PropertyAccess.READ)
    def SupportedFeatures(self) -> Annotated[list[str], DBusSignature("as")]:
        return []


class FakeBluez:
    """A fake bluetoothd on a private bus. ``async with FakeBluez() as bluez: ...`` or
    ``await start()`` / ``await stop()``; point ``DBUS_SYSTEM_BUS_ADDRESS`` at :attr:`address`
    before bleak connects (bleak keeps one connection per event loop)."""

    def __init__(
        self,
        workdir: str | Path | None = None,
        *,
        passive: bool = True,
        adapter_address: str = "00:1A:7D:DA:71:13",
        adapter_name: str = "anju-hub",
        duplicate_data: bool | None = None,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else None
        self.passive = passive
        self.adapter_address = _normal_mac(adapter_address)
        self.adapter_name = adapter_name
        self.duplicate_data = duplicate_data

        self._process: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None  # only when workdir is too deep for an AF_UNIX path
        self._bus: _Bus | None = None
        self._address: str | None = None
        self._caller: str = ""  # sender of the method call being dispatched to an interface
        self._adapter = _Adapter1(self)
        self._monitor_manager = _AdvertisementMonitorManager1(self)
        self._adapter_present = False
        self._adapter_props: dict[str, Variant] = {}
        self._devices: dict[str, _Device] = {}  # by MAC
        self._devices_by_path: dict[str, _Device] = {}
        self._sessions: set[str] = set()  # clients discovering
        self._filters: dict[str, dict[str, Any]] = {}  # client -> discovery filter
        self._apps: dict[tuple[str, str], _App] = {}  # (client, root path) -> monitor application
        self._start_failures: list[str] = []
        self._register_failures: list[str] = []
        self._state_changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_send: asyncio.Future[Any] | None = None
        self._unconfirmed = 0  # messages sent since dbus-daemon last confirmed reading ours
        self._send_lock = asyncio.Lock()

        # counters
        self.start_discovery_calls = 0
        self.stop_discovery_calls = 0
        self.register_monitor_calls = 0
        self.adverts_delivered = 0  # adverts that produced a signal
        self.adverts_unchanged = 0  # seen by the "radio", nothing changed, so no signal
        self.adverts_dropped = 0  # not scanning, filtered out, or no adapter
        self.monitor_activations = 0  # Activate calls the application answered
        self.device_found_calls = 0

    # ---- life cycle -------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The bus address, for ``DBUS_SYSTEM_BUS_ADDRESS``."""
        if self._address is None:
            raise FakeBluezError("FakeBluez is not started")
        return self._address

    @property
    def socket_path(self) -> Path:
        if self._socket_dir is not None:
            return self._socket_dir / "system_bus_socket"
        assert self.workdir is not None
        return self.workdir / "system_bus_socket"

    async def __aenter__(self) -> "FakeBluez":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _spawn_daemon(self) -> subprocess.Popen[bytes]:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="anju-bluez-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        if len(os.fsencode(self.workdir / "system_bus_socket")) >= 100:  # AF_UNIX paths: 107 bytes
            self._socket_dir = Path(tempfile.mkdtemp(prefix="anju-bluez-"))
        socket_path = self.socket_path
        socket_path.unlink(missing_ok=True)
        daemon = shutil.which("dbus-daemon")
        if daemon is None:
            raise FakeBluezError("dbus-daemon not found: install the Debian package 'dbus'")
        config = self.workdir / "bus.conf"
        config.write_text(_BUS_CONFIG.format(socket=socket_path))
        with (self.workdir / "dbus-daemon.log").open("ab") as log_file:
            return subprocess.Popen(
                [daemon, "--nofork", "--nopidfile", "--nosyslog", "--print-address", f"--config-file={config}"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log_file,
            )

    async def start(self) -> "FakeBluez":
        if self._bus is not None:
            return self
        self._process = self._spawn_daemon()
        assert self._process.stdout is not None
        try:
            printed = await asyncio.wait_for(asyncio.to_thread(self._process.stdout.readline), 10)
        except TimeoutError:
            self._kill_daemon()
            raise FakeBluezError("dbus-daemon did not print its address within 10 s") from None
        if not printed.strip():
            self._kill_daemon()
            raise FakeBluezError(f"dbus-daemon failed to start; see {self.workdir}/dbus-daemon.log")
        self._address = f"unix:path={self.socket_path}"
        try:
            bus = _Bus(bus_address=self._address)
            await bus.connect()
            self._bus = bus
            reply = await bus.request_name(BLUEZ_SERVICE, NameFlag.DO_NOT_QUEUE)
            if reply != RequestNameReply.PRIMARY_OWNER:
                raise FakeBluezError(f"could not own {BLUEZ_SERVICE}: {reply}")
            bus.add_message_handler(self._on_message)
            await self._add_match(
                f"type='signal',sender='{DBUS_SERVICE}',interface='{DBUS_SERVICE}',member='NameOwnerChanged'"
            )
            self._export_adapter()
        except BaseException:
            await self.stop()
            raise
        log.info("fake bluetoothd on %s", self._address)
        return self

    def _kill_daemon(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    async def stop(self) -> None:
        """Disconnect, end the dbus-daemon, remove the socket (and the workdir if it was ours)."""
        for task in list(self._tasks):
            task.cancel()
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bus.wait_for_disconnect(), 2)
        await asyncio.to_thread(self._kill_daemon)
        self._address = None
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        if self.workdir is not None:
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
                self.workdir = None
            else:
                self.socket_path.unlink(missing_ok=True)
        self._adapter_present = False
        self._devices.clear()
        self._devices_by_path.clear()
        self._sessions.clear()
        self._apps.clear()

    # ---- state --------------------------------------------------------------------------------

    @property
    def adapter_present(self) -> bool:
        return self._adapter_present

    @property
    def discovering(self) -> bool:
        return self._adapter_present and bool(self._sessions)

    @property
    def monitors_registered(self) -> int:
        """Monitor applications currently registered (bleak registers one per passive scanner)."""
        return len(self._apps)

    @property
    def monitors_active(self) -> int:
        """Monitors read from the applications and activated."""
        return sum(len(app.monitors) for app in self._apps.values())

    @property
    def scanning(self) -> bool:
        """Whether adverts can flow: some client discovering, or an activated monitor."""
        return self._adapter_present and bool(self._sessions or self.monitors_active)

    @property
    def devices(self) -> list[str]:
        """MAC addresses of the Device1 objects that exist now."""
        return list(self._devices)

    def _notify(self) -> None:
        self._state_changed.set()
        self._state_changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[["FakeBluez"], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate(self)`` holds (checked after every state change of the fake:
        discovery started or stopped, monitor activated or gone, adapter removed or restored)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the fake bluetoothd did not reach the expected state in time")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._state_changed.wait(), remaining)

    async def wait_scanning(self, timeout: float = 5.0) -> None:
        """Wait until adverts can flow (a passive scanner's monitor is activated a moment after
        ``BleakScanner.start()`` returns, as with bluetoothd)."""
        await self.wait_for(lambda fake: fake.scanning, timeout)

    # ---- fault injection ----------------------------------------------------------------------

    def fail_start_discovery(self, error: str = "org.bluez.Error.InProgress", times: int = 1) -> None:
        """The next ``times`` StartDiscovery calls fail with ``error``."""
        self._start_failures.extend([error] * times)

    def fail_register_monitor(self, error: str = "org.bluez.Error.Failed", times: int = 1) -> None:
        """The next ``times`` RegisterMonitor calls fail with ``error``."""
        self._register_failures.extend([error] * times)

    async def remove_adapter(self) -> None:
        """hci0 disappears: its devices and then the adapter are removed (InterfacesRemoved),
        discovery sessions end and monitors are released."""
        if not self._adapter_present:
            return
        async with self._send_lock:
            for device in list(self._devices.values()):
                self._drop_device(device)
                if self._unconfirmed >= _MESSAGES_PER_ROUND_TRIP:
                    await self._flush()
            for app in list(self._apps.values()):
                self._drop_app(app, release=True)
            self._sessions.clear()
            self._filters.clear()
            self._require_bus().unexport(ADAPTER_PATH)
            self._adapter_present = False
            self._emit(
                Message.new_signal(
                    "/",
                    OBJECT_MANAGER_INTERFACE,
                    "InterfacesRemoved",
                    "oas",
                    [ADAPTER_PATH, [*self._adapter_interfaces(), PROPERTIES_INTERFACE, INTROSPECTABLE_INTERFACE]],
                )
            )
            self._notify()
            await self._flush()

    async def restore_adapter(self) -> None:
        """hci0 comes back, powered, not discovering, with no devices (they reappear on their
        next advert, as bluetoothd forgets devices it has only seen advertising)."""
        if self._adapter_present:
            return
        async with self._send_lock:
            self._export_adapter()
            self._emit(
                Message.new_signal(
                    "/", OBJECT_MANAGER_INTERFACE, "InterfacesAdded", "oa{sa{sv}}", self._adapter_entry()
                )
            )
            self._notify()
            await self._flush()

    async def send_garbage_properties(self, mac: str, properties: Mapping[str, Variant] | None = None) -> None:
        """A PropertiesChanged on an existing device with wrong D-Bus types (by default a string
        RSSI and ServiceData as an array of strings). The fake's own record of the device is not
        changed, and its next advert re-sends every advert property so a client can recover."""
        device = self._devices.get(_normal_mac(mac))
        if device is None:
            raise KeyError(f"no device {mac}: advertise it first")
        device.dirty = True
        changed = dict(properties if properties is not None else GARBAGE_PROPERTIES)
        async with self._send_lock:
            self._emit(
                Message.new_signal(
                    device.path, PROPERTIES_INTERFACE, "PropertiesChanged", "sa{sv}as", [DEVICE_INTERFACE, changed, []]
                )
            )
            await self._flush()

    async def remove_device(self, mac: str) -> None:
        """bluetoothd forgets a device (it does so with temporary devices not seen for a while)."""
        device = self._devices.get(_normal_mac(mac))
        if device is not None:
            async with self._send_lock:
                self._drop_device(device)
                await self._flush()

    # ---- adverts ------------------------------------------------------------------------------

    async def advertise(
        self,
        mac: str,
        service_data: Mapping[str, bytes],
        rssi: int = -60,
        name: str | None = None,
        *,
        manufacturer_data: Mapping[int, bytes] | None = None,
        uuids: Sequence[str] = (),
    ) -> bool:
        """One advert as the radio hears it. ``service_data`` keys may be ``"fcd2"`` or full UUIDs.
        Returns whether it produced a signal (False: not scanning, filtered out, or nothing changed)."""
        async with self._send_lock:
            emitted = self._advertise_now(mac, service_data, rssi, name, manufacturer_data or {}, uuids)
            await self._flush()
        return emitted

    async def advertise_many(self, items: Iterable[Advert | tuple[Any, ...]]) -> int:
        """Many adverts with no pause between them (for load). Signals are written back to back and
        the fake only waits for dbus-daemon to have read them, every few dozen messages. Returns
        how many produced a signal."""
        emitted = 0
        async with self._send_lock:
            for item in items:
                advert = item if isinstance(item, Advert) else Advert(*item)
                if self._advertise_now(advert.mac, advert.service_data, advert.rssi, advert.name, {}, ()):
                    emitted += 1
                if self._unconfirmed >= _MESSAGES_PER_ROUND_TRIP:
                    await self._flush()
            await self._flush()
        return emitted

    def _advertise_now(
        self,
        mac: str,
        service_data: Mapping[str, bytes],
        rssi: int,
        name: str | None,
        manufacturer_data: Mapping[int, bytes],
        uuids: Sequence[str],
    ) -> bool:
        mac = _normal_mac(mac)
        sd = {full_uuid(key): bytes(value) for key, value in service_data.items()}
        md = {int(company): bytes(value) for company, value in manufacturer_data.items()}
        uuid_list = [full_uuid(u) for u in uuids]
        if not self._adapter_present or not self._adapter_props["Powered"].value:
            self.adverts_dropped += 1
            return False

        discovered = any(self._filter_passes(client, mac, name, rssi, sd, uuid_list) for client in self._sessions)
        matched: list[_Monitor] = []
        if self._apps:
            structs = _ad_structures(sd, md, uuid_list, name)
            matched = [m for app in self._apps.values() for m in app.monitors.values() if m.matches(structs)]
        if not discovered and not matched:
            self.adverts_dropped += 1
            return False

        device = self._devices.get(mac)
        emitted = True
        if device is None:
            device = self._new_device(mac, sd, md, uuid_list, rssi, name)
            self._emit(
                Message.new_signal(
                    "/",
                    OBJECT_MANAGER_INTERFACE,
                    "InterfacesAdded",
                    "oa{sa{sv}}",
                    [
                        device.path,
                        {DEVICE_INTERFACE: device.props, PROPERTIES_INTERFACE: {}, INTROSPECTABLE_INTERFACE: {}},
                    ],
                )
            )
        else:
            changed = self._changes(device, sd, md, rssi, name)
            if changed:
                self._emit(
                    Message.new_signal(
                        device.path,
                        PROPERTIES_INTERFACE,
                        "PropertiesChanged",
                        "sa{sv}as",
                        [DEVICE_INTERFACE, changed, []],
                    )
                )
            else:
                emitted = False
        for monitor in matched:
            if device.path not in monitor.found:
                monitor.found.add(device.path)
                self._call_no_reply(
                    monitor.app.sender, monitor.path, MONITOR_INTERFACE, "DeviceFound", "o", [device.path]
                )
                self.device_found_calls += 1
        if emitted:
            self.adverts_delivered += 1
        else:
            self.adverts_unchanged += 1
        return emitted

    def _filter_passes(
        self, client: str, mac: str, name: str | None, rssi: int, sd: dict[str, bytes], uuids: list[str]
    ) -> bool:
        flt = self._filters.get(client)
        if not flt:
            return True
        if flt.get("Transport") == "bredr":
            return False
        wanted = flt.get("UUIDs")
        # bluetoothd matches the advert's UUID lists only, not service-data UUIDs (src/eir.c keeps
        # those apart), so a BTHome advert without a UUID list fails a UUIDs filter
        if wanted and not ({full_uuid(u) for u in wanted} & set(uuids)):
            return False
        threshold = flt.get("RSSI")
        if threshold is not None and rssi < threshold:
            return False
        pattern = flt.get("Pattern")
        return not pattern or mac.startswith(pattern.upper()) or (name or "").startswith(pattern)

    def _duplicates_wanted(self) -> bool:
        if self.duplicate_data is not None:
            return self.duplicate_data
        return any(
            self._filters[client].get("DuplicateData", True) for client in self._sessions if client in self._filters
        )

    def _filtered_discovery(self) -> bool:
        return any(self._filters.get(client) for client in self._sessions)

    def _new_device(
        self, mac: str, sd: dict[str, bytes], md: dict[int, bytes], uuids: list[str], rssi: int, name: str | None
    ) -> _Device:
        path = device_path(mac)
        props: dict[str, Variant] = {
            "Address": Variant("s", mac),
            "AddressType": Variant("s", _address_type(mac)),
        }
        if name:
            props["Name"] = Variant("s", name)
        props.update(
            {
                "Alias": Variant("s", name or mac.replace(":", "-")),
                "Paired": Variant("b", False),
                "Bonded": Variant("b", False),
                "Trusted": Variant("b", False),
                "Blocked": Variant("b", False),
                "LegacyPairing": Variant("b", False),
                "RSSI": Variant("n", rssi),
                "Connected": Variant("b", False),
                "UUIDs": Variant("as", uuids),
                "Adapter": Variant("o", ADAPTER_PATH),
                "ServicesResolved": Variant("b", False),
                "AdvertisingFlags": Variant("ay", b"\x06"),
            }
        )
        if md:
            props["ManufacturerData"] = Variant("a{qv}", {k: Variant("ay", v) for k, v in md.items()})
        if sd:
            props["ServiceData"] = Variant("a{sv}", {k: Variant("ay", v) for k, v in sd.items()})
        device = _Device(mac, path, props, dict(sd), dict(md), rssi, name)
        self._devices[mac] = device
        self._devices_by_path[path] = device
        return device

    def _changes(
        self, device: _Device, sd: dict[str, bytes], md: dict[int, bytes], rssi: int, name: str | None
    ) -> dict[str, Variant]:
        """What bluetoothd would signal for this advert, applied to the device's record."""
        dirty, device.dirty = device.dirty, False
        full = dirty or self._duplicates_wanted()
        changed: dict[str, Variant] = {}
        if name and (name != device.name or full):
            device.name = name
            changed["Name"] = device.props["Name"] = Variant("s", name)
            changed["Alias"] = device.props["Alias"] = Variant("s", name)
        if sd and (full or any(device.service_data.get(k) != v for k, v in sd.items())):
            device.service_data = dict(sd) if full else {**device.service_data, **sd}
            changed["ServiceData"] = device.props["ServiceData"] = Variant(
                "a{sv}", {k: Variant("ay", v) for k, v in device.service_data.items()}
            )
        if md and (full or any(device.manufacturer_data.get(k) != v for k, v in md.items())):
            device.manufacturer_data = dict(md) if full else {**device.manufacturer_data, **md}
            changed["ManufacturerData"] = device.props["ManufacturerData"] = Variant(
                "a{qv}", {k: Variant("ay", v) for k, v in device.manufacturer_data.items()}
            )
        threshold = 1 if self._filtered_discovery() else RSSI_THRESHOLD
        if dirty or abs(rssi - device.rssi) >= threshold:
            device.rssi = rssi
            changed["RSSI"] = device.props["RSSI"] = Variant("n", rssi)
        return changed

    # ---- D-Bus plumbing -----------------------------------------------------------------------

    def _require_bus(self) -> _Bus:
        if self._bus is None:
            raise FakeBluezError("FakeBluez is not started")
        return self._bus

    def _emit(self, message: Message) -> None:
        bus = self._require_bus()
        self._last_send = bus.send(message)
        self._unconfirmed += 1

    async def _flush(self) -> None:
        """Wait until everything sent so far is written to the bus socket and, after a burst,
        until dbus-daemon has read it (so the socket buffer never fills, see above)."""
        last, self._last_send = self._last_send, None
        if last is not None:
            await last
        if self._unconfirmed >= _MESSAGES_PER_ROUND_TRIP:
            self._unconfirmed = 0
            await self._require_bus().call(
                Message(destination=DBUS_SERVICE, path=DBUS_PATH, interface=DBUS_SERVICE, member="GetId")
            )

    def _call_no_reply(
        self, destination: str, path: str, interface: str, member: str, signature: str, body: list[Any]
    ) -> None:
        self._emit(
            Message(
                destination=destination,
                path=path,
                interface=interface,
                member=member,
                signature=signature,
                body=body,
                flags=MessageFlag.NO_REPLY_EXPECTED,
            )
        )

    async def _add_match(self, rule: str) -> None:
        reply = await self._require_bus().call(
            Message(
                destination=DBUS_SERVICE,
                path=DBUS_PATH,
                interface=DBUS_SERVICE,
                member="AddMatch",
                signature="s",
                body=[rule],
            )
        )
        if reply is None or reply.message_type != MessageType.METHOD_RETURN:
            raise FakeBluezError(f"AddMatch {rule!r} failed: {reply.body if reply else None}")

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("fake bluetoothd task failed", exc_info=task.exception())

    def _adapter_interfaces(self) -> list[str]:
        return [ADAPTER_INTERFACE, MONITOR_MANAGER_INTERFACE] if self.passive else [ADAPTER_INTERFACE]

    def _export_adapter(self) -> None:
        bus = self._require_bus()
        self._adapter_props = {
            "Address": Variant("s", self.adapter_address),
            "AddressType": Variant("s", "public"),
            "Name": Variant("s", self.adapter_name),
            "Alias": Variant("s", self.adapter_name),
            "Class": Variant("u", 0x7C0000),
            "Powered": Variant("b", True),
            "PowerState": Variant("s", "on"),
            "Discoverable": Variant("b", False),
            "DiscoverableTimeout": Variant("u", 180),
            "Pairable": Variant("b", False),
            "PairableTimeout": Variant("u", 0),
            "Discovering": Variant("b", False),
            "UUIDs": Variant("as", ["00001800-0000-1000-8000-00805f9b34fb", "00001801-0000-1000-8000-00805f9b34fb"]),
            "Modalias": Variant("s", "usb:v1D6Bp0246d054F"),
            "Roles": Variant("as", ["central", "peripheral"]),
            "ExperimentalFeatures": Variant("as", []),
        }
        bus.export(ADAPTER_PATH, self._adapter)
        if self.passive:
            bus.export(ADAPTER_PATH, self._monitor_manager)
        self._adapter_present = True

    def _adapter_entry(self) -> list[Any]:
        interfaces: dict[str, dict[str, Variant]] = {ADAPTER_INTERFACE: dict(self._adapter_props)}
        if self.passive:
            interfaces[MONITOR_MANAGER_INTERFACE] = {
                "SupportedMonitorTypes": Variant("as", ["or_patterns"]),
                "SupportedFeatures": Variant("as", []),
            }
        interfaces[PROPERTIES_INTERFACE] = {}
        interfaces[INTROSPECTABLE_INTERFACE] = {}
        return [ADAPTER_PATH, interfaces]

    def _managed_objects(self) -> dict[str, dict[str, dict[str, Variant]]]:
        objects: dict[str, dict[str, dict[str, Variant]]] = {}
        if self._adapter_present:
            path, interfaces = self._adapter_entry()
            objects[path] = interfaces
            for device in self._devices.values():
                objects[device.path] = {
                    DEVICE_INTERFACE: device.props,
                    PROPERTIES_INTERFACE: {},
                    INTROSPECTABLE_INTERFACE: {},
                }
        return objects

    def _set_adapter_props(self, changed: dict[str, Variant]) -> None:
        self._adapter_props.update(changed)
        if self._adapter_present:
            self._emit(
                Message.new_signal(
                    ADAPTER_PATH,
                    PROPERTIES_INTERFACE,
                    "PropertiesChanged",
                    "sa{sv}as",
                    [ADAPTER_INTERFACE, changed, []],
                )
            )

    def _set_powered(self, on: bool) -> None:
        if on == self._adapter_props["Powered"].value:
            return
        changed = {"Powered": Variant("b", on), "PowerState": Variant("s", "on" if on else "off")}
        if not on:
            self._sessions.clear()
            changed["Discovering"] = Variant("b", False)
        self._set_adapter_props(changed)
        self._notify()

    def _on_message(self, msg: Message) -> Message | bool | None:
        kind = msg.message_type
        if kind is MessageType.METHOD_CALL:
            self._caller = msg.sender or ""
            path = msg.path or ""
            if path == "/" and msg.member == "GetManagedObjects" and msg.interface in (None, OBJECT_MANAGER_INTERFACE):
                return Message.new_method_return(msg, "a{oa{sa{sv}}}", [self._managed_objects()])
            if path.startswith(DEVICE_PATH_PREFIX):
                device = self._devices_by_path.get(path)
                if device is not None:
                    return self._device_call(msg, device)
            if path == ADAPTER_PATH and not self._adapter_present:
                return Message.new_error(
                    msg, "org.freedesktop.DBus.Error.UnknownObject", f"No such object path '{path}'"
                )
            return None
        if kind is MessageType.SIGNAL:
            if msg.member == "NameOwnerChanged" and msg.sender == DBUS_SERVICE:
                name, _old, new = msg.body
                if not new and name.startswith(":"):
                    self._client_gone(name)
            elif msg.interface == OBJECT_MANAGER_INTERFACE and msg.sender:
                self._app_signal(msg)
        return None

    def _device_call(self, msg: Message, device: _Device) -> Message:
        if msg.interface == PROPERTIES_INTERFACE:
            if msg.member == "GetAll" and msg.signature == "s":
                props = device.props if msg.body[0] == DEVICE_INTERFACE else {}
                return Message.new_method_return(msg, "a{sv}", [props])
            if msg.member == "Get" and msg.signature == "ss":
                interface, name = msg.body
                if interface == DEVICE_INTERFACE and name in device.props:
                    return Message.new_method_return(msg, "v", [device.props[name]])
                return Message.new_error(msg, "org.freedesktop.DBus.Error.InvalidArgs", f"No such property '{name}'")
            if msg.member == "Set":
                return Message.new_error(msg, "org.freedesktop.DBus.Error.PropertyReadOnly", "Property is read-only")
        if msg.interface in (None, INTROSPECTABLE_INTERFACE) and msg.member == "Introspect":
            xml = (
                '<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN" '
                '"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">'
                f'<node><interface name="{INTROSPECTABLE_INTERFACE}"/><interface name="{PROPERTIES_INTERFACE}"/>'
                f'<interface name="{DEVICE_INTERFACE}"/></node>'
            )
            return Message.new_method_return(msg, "s", [xml])
        # Connect, Pair, ... : the simulator's devices only advertise
        return Message.new_error(msg, "org.bluez.Error.NotSupported", _ERROR_TEXTS["org.bluez.Error.NotSupported"])

    def _drop_device(self, device: _Device) -> None:
        self._devices.pop(device.mac, None)
        self._devices_by_path.pop(device.path, None)
        for app in self._apps.values():
            for monitor in app.monitors.values():
                monitor.found.discard(device.path)
        self._emit(
            Message.new_signal(
                "/",
                OBJECT_MANAGER_INTERFACE,
                "InterfacesRemoved",
                "oas",
                [device.path, [DEVICE_INTERFACE, PROPERTIES_INTERFACE, INTROSPECTABLE_INTERFACE]],
            )
        )

    def _remove_device_by_path(self, path: str) -> None:
        device = self._devices_by_path.get(path)
        if device is None:
            raise _error("org.bluez.Error.DoesNotExist")
        self._drop_device(device)

    # discovery

    def _start_discovery(self, client: str) -> None:
        self.start_discovery_calls += 1
        if self._start_failures:
            raise _error(self._start_failures.pop(0))
        if not self._adapter_props["Powered"].value:
            raise _error("org.bluez.Error.NotReady")
        if client in self._sessions:
            raise _error("org.bluez.Error.InProgress")
        was = self.discovering
        self._sessions.add(client)
        if not was:
            self._set_adapter_props({"Discovering": Variant("b", True)})
        self._notify()

    def _stop_discovery(self, client: str) -> None:
        self.stop_discovery_calls += 1
        if not self._adapter_props["Powered"].value:
            raise _error("org.bluez.Error.NotReady")
        if client not in self._sessions:
            raise _error("org.bluez.Error.Failed", "No discovery started")
        self._end_session(client)

    def _end_session(self, client: str) -> None:
        self._sessions.discard(client)
        self._filters.pop(client, None)
        if not self._sessions and self._adapter_present:
            self._set_adapter_props({"Discovering": Variant("b", False)})
        self._notify()

    def _set_discovery_filter(self, client: str, properties: dict[str, Variant]) -> None:
        types = {
            "UUIDs": "as",
            "RSSI": "n",
            "Pathloss": "q",
            "Transport": "s",
            "DuplicateData": "b",
            "Discoverable": "b",
        }
        types["Pattern"] = "s"
        flt: dict[str, Any] = {}
        for key, variant in properties.items():
            if key not in types or not isinstance(variant, Variant) or variant.signature != types[key]:
                raise _error("org.bluez.Error.InvalidArguments")
            flt[key] = variant.value
        if "RSSI" in flt and "Pathloss" in flt:
            raise _error("org.bluez.Error.InvalidArguments")
        if flt.get("Transport", "auto") not in ("auto", "bredr", "le"):
            raise _error("org.bluez.Error.InvalidArguments")
        if flt:
            self._filters[client] = flt
        else:
            self._filters.pop(client, None)

    # advertisement monitors

    def _register_monitor(self, client: str, application: str) -> None:
        self.register_monitor_calls += 1
        if self._register_failures:
            raise _error(self._register_failures.pop(0))
        if not application.startswith("/"):
            raise _error("org.bluez.Error.InvalidArguments")
        key = (client, application)
        if key in self._apps:
            raise _error("org.bluez.Error.AlreadyExists")
        rule = f"type='signal',sender='{client}',interface='{OBJECT_MANAGER_INTERFACE}',path_namespace='{application}'"
        app = _App(client, application, rule)
        self._apps[key] = app
        # The match rule is sent before this method's reply, so the application's InterfacesAdded
        # (bleak exports its monitor when the reply arrives) cannot slip past it.
        self._call_no_reply(DBUS_SERVICE, DBUS_PATH, DBUS_SERVICE, "AddMatch", "s", [rule])
        self._spawn(self._read_monitors(app))
        self._notify()

    async def _read_monitors(self, app: _App) -> None:
        reply = await self._require_bus().call(
            Message(
                destination=app.sender, path=app.path, interface=OBJECT_MANAGER_INTERFACE, member="GetManagedObjects"
            )
        )
        if reply is None or reply.message_type != MessageType.METHOD_RETURN:
            log.debug("GetManagedObjects on %s %s failed", app.sender, app.path)
            return
        for path, interfaces in reply.body[0].items():
            self._maybe_add_monitor(app, path, interfaces)

    def _app_signal(self, msg: Message) -> None:
        apps = [app for app in self._apps.values() if app.sender == msg.sender]
        if not apps:
            return
        path = msg.body[0]
        for app in apps:
            if path != app.path and not path.startswith(app.path.rstrip("/") + "/"):
                continue
            if msg.member == "InterfacesAdded":
                self._maybe_add_monitor(app, path, msg.body[1])
            elif msg.member == "InterfacesRemoved" and MONITOR_INTERFACE in msg.body[1]:
                if app.monitors.pop(path, None) is not None:
                    self._notify()

    def _maybe_add_monitor(self, app: _App, path: str, interfaces: dict[str, dict[str, Variant]]) -> None:
        if (
            MONITOR_INTERFACE not in interfaces
            or path in app.monitors
            or self._apps.get((app.sender, app.path)) is not app
        ):
            return
        props = unpack_variants(interfaces[MONITOR_INTERFACE])
        patterns: list[tuple[int, int, bytes]] = []
        valid = props.get("Type") == "or_patterns"
        for pattern in props.get("Patterns") or []:
            try:
                start, ad_type, content = int(pattern[0]), int(pattern[1]), bytes(pattern[2])
            except (TypeError, ValueError, IndexError):
                valid = False
                break
            if not content or start + len(content) > 31:
                valid = False
                break
            patterns.append((start, ad_type, content))
        if not valid or not patterns:
            log.debug("monitor %s %s refused: %r", app.sender, path, props)
            self._call_no_reply(app.sender, path, MONITOR_INTERFACE, "Release", "", [])
            return
        app.monitors[path] = _Monitor(app, path, patterns)
        self._spawn(self._activate(app.sender, path))
        self._notify()

    async def _activate(self, client: str, path: str) -> None:
        # bluetoothd does not wait for this answer; the fake does, to count it (a test can then
        # tell that the client's monitor object really is there)
        reply = await self._require_bus().call(
            Message(destination=client, path=path, interface=MONITOR_INTERFACE, member="Activate")
        )
        if reply is not None and reply.message_type == MessageType.METHOD_RETURN:
            self.monitor_activations += 1
        else:
            log.debug("Activate on %s %s failed: %s", client, path, reply.body if reply else None)
        self._notify()

    def _unregister_monitor(self, client: str, application: str) -> None:
        app = self._apps.get((client, application))
        if app is None:
            raise _error("org.bluez.Error.DoesNotExist")
        self._drop_app(app, release=True)
        self._notify()

    def _drop_app(self, app: _App, *, release: bool) -> None:
        self._apps.pop((app.sender, app.path), None)
        if release and self._bus is not None:
            for path in app.monitors:
                self._call_no_reply(app.sender, path, MONITOR_INTERFACE, "Release", "", [])
            self._call_no_reply(DBUS_SERVICE, DBUS_PATH, DBUS_SERVICE, "RemoveMatch", "s", [app.match_rule])
        app.monitors.clear()

    def _client_gone(self, client: str) -> None:
        if client in self._sessions:
            self._end_session(client)
        self._filters.pop(client, None)
        for app in [app for app in self._apps.values() if app.sender == client]:
            self._drop_app(app, release=False)
            self._notify()


# ---- a tiny command line for a person ------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.ble",
        description="Start a fake bluetoothd on a private D-Bus and print the address to export as "
        "DBUS_SYSTEM_BUS_ADDRESS. Optionally let a virtual BTHome device send heartbeats. Ctrl-C stops it.",
    )
    parser.add_argument("--workdir", type=Path, help="where the bus socket goes (default: a new /tmp directory)")
    parser.add_argument("--active-only", action="store_true", help="no AdvertisementMonitorManager1 (old BlueZ)")
    parser.add_argument("--heartbeat", metavar="MAC", help="a virtual BTHome device that sends heartbeats")
    parser.add_argument("--key", help="its 16-byte key as 32 hex digits (default: plaintext)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between heartbeats (default 5)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    return 0


async def _serve(args: argparse.Namespace) -> None:
    from simulator.bthome import SERVICE_UUID, VirtualBthomeDevice

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with FakeBluez(args.workdir, passive=not args.active_only) as bluez:
        print(f"DBUS_SYSTEM_BUS_ADDRESS={bluez.address}", flush=True)
        device = (
            VirtualBthomeDevice(args.heartbeat, bytes.fromhex(args.key) if args.key else None)
            if args.heartbeat
            else None
        )
        while not stop.is_set():
            if device is not None:
                sent = await bluez.advertise(device.mac, {SERVICE_UUID: device.heartbeat()})
                log.info("heartbeat from %s %s", device.mac, "delivered" if sent else "not heard (nobody scanning)")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.interval)


if __name__ == "__main__":
    raise SystemExit(main())
