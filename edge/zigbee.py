"""Zigbee: IAS Zone smoke alarms, SOS buttons and fall radars on a coordinator, through zigpy.

The radio library is configuration (`zigbee.radio`): zigpy-znp for a TI CC2652 running Z-Stack,
or bellows for Silicon Labs EZSP where installed. zigpy keeps the network settings, the device
database and periodic network backups in the hub's data directory (`zigbee.db`); a replaced, blank
dongle is given the most recent backup, so devices need no re-pairing. The hub also writes the
backup as JSON (`zigbee-network-backup.json`) for `anju backup`.

On join, after zigpy's interview, an IAS Zone device is enrolled: the hub writes its own IEEE
into `IAS_CIE_Address` (0x0010), answers each Zone Enroll Request with an Enroll Response (and
sends one unasked, for devices that use auto-enroll-response), and asks for battery reports.
Zone Status Change Notifications and ZoneStatus reads become events (edge/ias_zone.py).

The link: zigpy's watchdog pings the coordinator every `ping_s`; a failed ping, a port that
vanishes or a dongle that resets is a lost connection. The hub reconnects with backoff for ever,
reports `fault.radio` once the link has been down `fault_after_s` and its restore on return, and
after every (re)connection reads the zone status of every IAS device it knows, so a smoke alarm
raised while the dongle was out is not lost. Nothing here ever ends the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.ias_zone import KIND_FOR_ZONE, IasInterpreter
from hub.config import ZigbeeConfig
from hub.model import Device, DeviceKind, Event, Origin, Transport

log = logging.getLogger(__name__)

IAS_ZONE = 0x0500
POWER_CONFIGURATION = 0x0001
ZONE_STATUS_CHANGE = 0x00
ZONE_ENROLL_REQUEST = 0x01
RADIO_MODULES = {"znp": "zigpy_znp.zigbee.application", "ezsp": "bellows.zigbee.application"}


class _ClusterListener:
    """zigpy calls these by name for every cluster of a device: commands and attribute updates."""

    def __init__(self, radio: ZigbeeRadio, device: Any, cluster: Any) -> None:
        self._radio = radio
        self._device = device
        self._cluster = cluster

    def cluster_command(self, tsn: int, command_id: int, args: Any) -> None:
        self._radio.command(self._device, self._cluster, tsn, command_id, args)

    def attribute_updated(self, attrid: int, value: Any, timestamp: Any = None) -> None:
        self._radio.attribute(self._device, self._cluster, attrid, value)

    def attribute_reported(self, event: Any) -> None:
        value = getattr(event, "value", getattr(event, "raw_value", None))
        self._radio.attribute(self._device, self._cluster, int(event.attribute_id), value)

    def general_command(self, *args: Any, **kwargs: Any) -> None:
        self._radio.heard(self._device)


POWER_CONFIGURATION = 0x0001
BATTERY_PERCENTAGE = 0x0021  # battery_percentage_remaining


class ZigbeeRadio:
    def __init__(
        self,
        config: ZigbeeConfig,
        origin: Origin,
        devices: list[Device],
        data_dir: Path,
        on_events: Callable[[list[Event]], None],
        on_radio: Callable[[bool, str], None],
        on_heard: Callable[[Device, int], None] | None = None,
        on_activity: Callable[[Device, int], None] | None = None,
        on_reading: Callable[[Device, str | None, float | None], None] | None = None,
    ) -> None:
        self.config = config
        self.origin = origin
        self.data_dir = data_dir
        self._registry = {d.ieee: d for d in devices if d.ieee}
        self._on_events = on_events
        self._on_radio = on_radio
        self._on_heard = on_heard
        self._on_reading = on_reading
        self.joined_unknown: dict[str, tuple[Device, float]] = {}  # ieee -> (device, time.time()): to pair
        self.ias = IasInterpreter(origin, config.duplicate_window_s, on_activity)
        self.app: Any = None
        self._lost = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._attached: set[tuple[str, int, int]] = set()
        self._zone_ids: dict[str, int] = {}
        self.radio_ok = True
        self._down_since: float | None = None
        self._fault_timer: asyncio.TimerHandle | None = None

    # -- the link ------------------------------------------------------------------------------

    def _zigpy_config(self) -> dict[str, Any]:
        return {
            "device": {"path": self.config.port, "baudrate": self.config.baudrate},
            "database_path": str(self.data_dir / "zigbee.db"),
            "ota": {"enabled": False},
            "topology_scan_enabled": False,
            "startup_energy_scan": False,
            "watchdog_enabled": True,
            "backup_enabled": True,
        }

    async def run(self) -> None:
        """Keep the coordinator up for ever; returns only when cancelled."""
        module = importlib.import_module(RADIO_MODULES[self.config.radio])
        # zigpy reads the watchdog period once, before the first ping: set it on the class.
        app_class: Any = type(
            "AnjuZigbeeApplication", (module.ControllerApplication,), {"_watchdog_period": self.config.ping_s}
        )
        delay = 0.5
        first = True
        while True:
            started = time.monotonic()
            try:
                app = await app_class.new(self._zigpy_config(), auto_form=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._link_down(f"coordinator on {self.config.port} not answering: {exc}")
                log.warning("Zigbee coordinator on %s: %s; retrying in %.1f s", self.config.port, exc, delay)
                await asyncio.sleep(delay)
                delay = min(self.config.retry_max_s, delay * 2)
                continue
            delay = 0.5
            log.info(
                "Zigbee coordinator up on %s in %.2f s (%d device(s) known)",
                self.config.port,
                time.monotonic() - started,
                len(app.devices) - 1,
            )
            try:
                await self._serve(app, first)
                first = False
            finally:
                self.app = None
                with contextlib.suppress(Exception):
                    await app.shutdown()

    async def _serve(self, app: Any, first: bool) -> None:
        self.app = app
        self._lost.clear()
        self._attached.clear()
        app.add_listener(self)
        self._watch_for_resets(app)
        for device in list(app.devices.values()):
            self._attach(device)
        self._link_up()
        await self._save_backup(app)
        await self._read_zone_status(app)
        if first and self.config.permit_on_start_s:
            await app.permit(self.config.permit_on_start_s)
            log.info("Zigbee joining open for %d s", self.config.permit_on_start_s)
        await self._lost.wait()

    def _watch_for_resets(self, app: Any) -> None:
        """A dongle that resets by itself (brown-out, firmware watchdog) forgets the running network
        until the host commissions it again; zigpy-znp only logs the SYS_RESET_IND, so the hub
        treats it as a lost link and starts the coordinator afresh."""
        znp = getattr(app, "_znp", None)
        if znp is None:
            return
        import zigpy_znp.commands as commands

        def reset(indication: Any) -> None:
            self.connection_lost(RuntimeError(f"the coordinator reset itself ({getattr(indication, 'Reason', '?')})"))

        znp.callback_for_response(commands.SYS.ResetInd.Callback(partial=True), reset)

    def connection_lost(self, exc: Exception | None) -> None:
        """zigpy: the port vanished, the dongle reset, or a watchdog ping failed."""
        log.warning("Zigbee coordinator link lost: %s", exc)
        self._link_down(f"link lost: {exc}")
        self._lost.set()

    def _link_down(self, reason: str) -> None:
        if self._down_since is not None:
            return
        self._down_since = time.monotonic()
        loop = asyncio.get_running_loop()
        self._fault_timer = loop.call_later(self.config.fault_after_s, self._report_fault, reason)

    def _report_fault(self, reason: str) -> None:
        if self._down_since is not None and self.radio_ok:
            self.radio_ok = False
            self._on_radio(False, f"Zigbee coordinator down for {self.config.fault_after_s:g} s: {reason}")

    def _link_up(self) -> None:
        self._down_since = None
        if self._fault_timer is not None:
            self._fault_timer.cancel()
            self._fault_timer = None
        if not self.radio_ok:
            self.radio_ok = True
            self._on_radio(True, "Zigbee coordinator answering again")

    async def _save_backup(self, app: Any) -> None:
        try:
            backup = await app.backups.create_backup(load_devices=True)
            path = self.data_dir / "zigbee-network-backup.json"
            partial = path.with_suffix(".partial")
            await asyncio.to_thread(partial.write_text, json.dumps(backup.as_dict(), indent=1))
            await asyncio.to_thread(partial.replace, path)
        except Exception as exc:
            log.error("Zigbee network backup failed: %s", exc)

    async def _read_zone_status(self, app: Any) -> None:
        """After every (re)connection: an alarm raised while the dongle was out is read, not lost."""
        for device in list(app.devices.values()):
            cluster = _ias_cluster(device)
            if cluster is None:
                continue
            try:
                values, _ = await asyncio.wait_for(cluster.read_attributes(["zone_status"], allow_cache=False), 10)
            except Exception as exc:
                log.warning("could not read the zone status of %s: %s", device.ieee, exc)
                continue
            if "zone_status" in values:
                self._zone(device, int(values["zone_status"]), None)

    # -- devices -------------------------------------------------------------------------------

    def device_joined(self, device: Any) -> None:
        log.info("Zigbee device %s joined (nwk 0x%04x)", device.ieee, device.nwk)

    def device_initialized(self, device: Any, *args: Any, **kwargs: Any) -> None:
        log.info("Zigbee device %s interviewed: %s %s", device.ieee, device.manufacturer, device.model)
        self._attach(device)
        if _ias_cluster(device) is not None:
            self._spawn(self._enroll(device))

    def device_left(self, device: Any) -> None:
        log.warning("Zigbee device %s left the network", device.ieee)

    def _attach(self, device: Any) -> None:
        for endpoint_id, endpoint in getattr(device, "endpoints", {}).items():
            if endpoint_id == 0:
                continue
            for cluster in endpoint.in_clusters.values():
                key = (str(device.ieee), endpoint_id, cluster.cluster_id)
                if key not in self._attached:
                    self._attached.add(key)
                    listener = _ClusterListener(self, device, cluster)
                    cluster.add_listener(listener)
                    with contextlib.suppress(AttributeError):  # zigpy >= 0.70 reports attributes as events
                        cluster.on_event("attribute_report", listener.attribute_reported)

    async def _enroll(self, device: Any) -> None:
        cluster = _ias_cluster(device)
        if cluster is None or self.app is None:
            return
        zone_id = self._zone_ids.setdefault(str(device.ieee), len(self._zone_ids) + 1)
        try:
            await cluster.write_attributes({"cie_addr": self.app.state.node_info.ieee})
            await cluster.enroll_response(0, zone_id)
            values, _ = await cluster.read_attributes(["zone_type", "zone_status"], allow_cache=False)
            power = device.endpoints[cluster.endpoint.endpoint_id].in_clusters.get(POWER_CONFIGURATION)
            if power is not None:
                await power.bind()
                await power.configure_reporting("battery_percentage_remaining", 3600, 21600, 2)
        except Exception as exc:
            log.error("enrolling Zigbee device %s failed: %s", device.ieee, exc)
            return
        zone_type = values.get("zone_type")
        await asyncio.to_thread(self._register, device, zone_type, zone_id)
        log.info("Zigbee device %s enrolled: zone type 0x%04x, zone id %d", device.ieee, int(zone_type or 0), zone_id)
        if "zone_status" in values:
            self._zone(device, int(values["zone_status"]), None)

    def _register(self, device: Any, zone_type: Any, zone_id: int) -> None:
        """Add the device to the hub's Zigbee registry file (zone type, model, manufacturer)."""
        path = self.data_dir / "zigbee-devices.json"
        try:
            registry = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            registry = {}
        registry[str(device.ieee)] = {
            "zone_type": None if zone_type is None else int(zone_type),
            "zone_id": zone_id,
            "model": device.model,
            "manufacturer": device.manufacturer,
            "configured_as": self._device(device).id,
        }
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(registry, indent=1, sort_keys=True))
        partial.replace(path)

    def _device(self, zigpy_device: Any) -> Device:
        """The household's device for a zigpy device; an unconfigured IAS device still counts."""
        ieee = str(zigpy_device.ieee).lower()
        known = self._registry.get(ieee)
        if known is not None:
            return known
        cluster = _ias_cluster(zigpy_device)
        zone_type = None if cluster is None else cluster.get("zone_type")
        kind = KIND_FOR_ZONE.get(int(zone_type), DeviceKind.SOS) if zone_type is not None else DeviceKind.SOS
        device = Device(f"zb-{ieee.replace(':', '')[-8:]}", kind, Transport.ZIGBEE, ieee=ieee, checkin_s=None)
        self._registry[ieee] = device
        self.joined_unknown[ieee] = (device, time.time())
        log.warning(
            "Zigbee device %s is not in the household configuration; reporting it as %s (%s)",
            ieee,
            device.id,
            kind.value,
        )
        return device

    # -- frames from devices -------------------------------------------------------------------

    def heard(self, zigpy_device: Any, battery: float | None = None) -> None:
        device = self._device(zigpy_device)
        if self._on_heard is not None:
            self._on_heard(device, time.monotonic_ns())
        if self._on_reading is not None:
            lqi, rssi = getattr(zigpy_device, "lqi", None), getattr(zigpy_device, "rssi", None)
            signal = " / ".join(
                text
                for text in (f"LQI {lqi}" if lqi is not None else "", f"{rssi} dBm" if rssi is not None else "")
                if text
            )
            self._on_reading(device, signal or None, battery)

    def command(self, zigpy_device: Any, cluster: Any, tsn: int, command_id: int, args: Any) -> None:
        self.heard(zigpy_device)
        if cluster.cluster_id != IAS_ZONE:
            return
        if command_id == ZONE_STATUS_CHANGE:
            status = args[0] if isinstance(args, list | tuple) else getattr(args, "zone_status", 0)
            self._zone(zigpy_device, int(status), tsn)
        elif command_id == ZONE_ENROLL_REQUEST:
            zone_id = self._zone_ids.setdefault(str(zigpy_device.ieee), len(self._zone_ids) + 1)
            self._spawn(cluster.enroll_response(0, zone_id))

    def attribute(self, zigpy_device: Any, cluster: Any, attrid: int, value: Any) -> None:
        battery = None
        if cluster.cluster_id == POWER_CONFIGURATION and attrid == BATTERY_PERCENTAGE and isinstance(value, int):
            battery = value / 2  # ZCL: half-percent units
        self.heard(zigpy_device, battery)
        if cluster.cluster_id == IAS_ZONE and attrid == 0x0002 and value is not None:  # ZoneStatus
            self._zone(zigpy_device, int(value), None)

    def _zone(self, zigpy_device: Any, status: int, tsn: int | None) -> None:
        events = self.ias.zone_status(self._device(zigpy_device), status, tsn, time.monotonic_ns())
        if events:
            self._on_events(events)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def permit(self, seconds: int) -> None:
        if self.app is None:
            raise RuntimeError("the Zigbee coordinator is not connected")
        await self.app.permit(seconds)


def _ias_cluster(device: Any) -> Any:
    for endpoint_id, endpoint in getattr(device, "endpoints", {}).items():
        if endpoint_id != 0 and IAS_ZONE in getattr(endpoint, "in_clusters", {}):
            return endpoint.in_clusters[IAS_ZONE]
    return None
