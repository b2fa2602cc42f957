"""BLE: the household's BTHome devices heard through BlueZ with bleak, and a watchdog for the adapter.

Passive scanning where BlueZ supports advertisement monitors (bleak's `or_patterns` on the
BTHome service data UUID 0xFCD2), active scanning otherwise. The detection callback drops every
stranger on one set look-up before anything else runs (an apartment block has hundreds of
devices advertising); the household's adverts go to edge.bthome.

The watchdog: no advert at all for `silence_restart_s` while devices are expected -> restart the
scan; silent again, or the scan cannot start (BlueZ `InProgress`, `NotReady`, the adapter gone) ->
reset the adapter (the `bluetooth-auto-recovery` library, as Home Assistant does) and report
`fault.radio`; the first advert afterwards reports its restore. Nothing here ever ends the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from bleak import BleakScanner
from bleak.args.bluez import OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from edge.bthome import BTHOME_UUID, BthomeInterpreter
from hub.config import BleConfig
from hub.model import Event

log = logging.getLogger(__name__)

BTHOME_PATTERN = OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xd2\xfc")

RadioHandler = Callable[[bool, str], None]
"""Called with (working, reason) when the radio stops or starts working."""


def _passive_unsupported(exc: Exception) -> bool:
    """bleak's word that this BlueZ has no advertisement monitors (too old, or not --experimental)."""
    text = str(exc)
    return "passive scanning" in text or "AdvertisementMonitorManager1" in text


NEARBY_MAX = 200  # strangers remembered for pairing (the oldest is forgotten first)


class BleRadio:
    def __init__(
        self,
        config: BleConfig,
        interpreter: BthomeInterpreter,
        on_events: Callable[[list[Event]], None],
        on_radio: RadioHandler,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.interpreter = interpreter
        self._on_events = on_events
        self._on_radio = on_radio
        self._clock = clock
        self._known = interpreter.addresses
        self.mode = "passive" if config.mode in ("auto", "passive") else "active"
        self.last_advert = clock()
        self.radio_ok = True
        self.restarts = 0
        self.resets = 0
        self.adverts = 0
        # BTHome devices heard that are not in the household: address -> (RSSI, time.time(), service data)
        self.nearby: dict[str, tuple[int | None, float, bytes]] = {}

    def _scanner(self) -> BleakScanner:
        bluez: Any = {"adapter": self.config.adapter}
        if self.mode == "passive":
            bluez["or_patterns"] = [BTHOME_PATTERN]
        return BleakScanner(self._detected, scanning_mode=self.mode, bluez=bluez)  # type: ignore[arg-type]

    def _detected(self, device: BLEDevice, advertisement: AdvertisementData) -> None:
        """bleak's callback, on the event loop: strangers cost one set look-up."""
        now = time.monotonic_ns()
        self.adverts += 1
        self.last_advert = self._clock()
        if not self.radio_ok:
            self._radio(True, "adverts are arriving again")
        if device.address not in self._known:
            if BTHOME_UUID in advertisement.service_data:  # a device to pair: the installer's list
                self.nearby[device.address] = (
                    advertisement.rssi,
                    time.time(),
                    advertisement.service_data[BTHOME_UUID],
                )
                if len(self.nearby) > NEARBY_MAX:
                    del self.nearby[next(iter(self.nearby))]
            return
        events = self.interpreter.feed(device.address, advertisement.service_data, advertisement.rssi, now)
        if events:
            self._on_events(events)

    def _radio(self, working: bool, reason: str) -> None:
        if working == self.radio_ok:
            return
        self.radio_ok = working
        (log.info if working else log.error)("BLE radio %s: %s", "working" if working else "failed", reason)
        self._on_radio(working, reason)

    async def run(self) -> None:
        """Scan forever; returns only when cancelled."""
        failures = 0
        silent_restarts = 0
        while True:
            scanner = self._scanner()
            try:
                await scanner.start()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.mode == "passive" and self.config.mode == "auto" and _passive_unsupported(exc):
                    log.info("passive BLE scanning unavailable (%s); scanning actively", exc)
                    self.mode = "active"
                    continue
                failures += 1
                self._radio(False, f"scan could not start: {exc}")
                delay = min(self.config.retry_max_s, 0.5 * 2**failures)
                log.warning("BLE scan could not start (%s); attempt %d, retrying in %.1f s", exc, failures, delay)
                if failures >= 2:
                    await self._reset_adapter()
                await asyncio.sleep(delay)
                continue
            failures = 0
            log.info("BLE scanning (%s) on %s for %d device(s)", self.mode, self.config.adapter, len(self._known))
            try:
                await self._watch()
            finally:
                with contextlib.suppress(Exception):
                    await scanner.stop()
            self.restarts += 1
            silent_restarts += 1
            if silent_restarts >= 2:
                self._radio(False, f"no advert for {self.config.silence_restart_s:g} s, even after a restart")
                await self._reset_adapter()
                silent_restarts = 0
            else:
                log.warning("no BLE advert for %g s: restarting the scan", self.config.silence_restart_s)

    async def _watch(self) -> None:
        """Return when no advert at all has arrived for `silence_restart_s` (devices are expected)."""
        self.last_advert = self._clock()
        while True:
            silent = self._clock() - self.last_advert
            if self._known and silent >= self.config.silence_restart_s:
                return
            await asyncio.sleep(max(0.05, min(1.0, self.config.silence_restart_s - silent)))

    async def _reset_adapter(self) -> None:
        self.resets += 1
        if self.config.adapter_reset == "none":
            log.warning("BLE adapter %s not reset (ble.adapter_reset = none)", self.config.adapter)
            return
        try:
            from bluetooth_adapters import get_adapters
            from bluetooth_auto_recovery import recover_adapter

            adapters = get_adapters()
            await adapters.refresh()
            mac = adapters.adapters.get(self.config.adapter, {}).get("address", "00:00:00:00:00:00")
            recovered = await recover_adapter(int(self.config.adapter[3:]), mac)
            log.warning("BLE adapter %s reset: %s", self.config.adapter, "recovered" if recovered else "not recovered")
        except Exception as exc:
            log.error("BLE adapter %s could not be reset: %s", self.config.adapter, exc)
