"""The hub service's composition root: builds the adapters, rules, journal, outbox and uplink, and
wires them in the order the alarm path promises.

    pin edge -> rules (siren, voice: at once) -> journal (fsync) -> outbox -> MQTT -> centre
    centre ack -> outbox (stop resending) -> journal (acked) -> rules ("监控中心已收到")

Start-up order: journal (so unacknowledged events are queued again), then the GPIO inputs and
outputs (a pull-cord works from here on, even with no network), then the voice prompts, then
the uplink. It tells systemd (or the scenario runner) READY=1 once inputs and prompts are live.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from typing import Any

from cloud_bridge.mqtt import MqttUplink
from cloud_bridge.outbox import Outbox, RetryPolicy
from edge.audio import AplayPlayer, Player, RecordingPlayer, SilentPlayer, VoicePrompts
from edge.ble import BleRadio
from edge.bthome import BthomeInterpreter
from edge.gpio import PinInputs, Siren, StatusLed, load_pin_factory
from edge.zigbee import ZigbeeRadio
from hub.config import AudioConfig, HubConfig
from hub.control import ControlServer, socket_path
from hub.journal import AsyncJournal, JournalError
from hub.model import Device, Event, EventType, Transport
from hub.notify import sd_notify
from hub.rules import Rules
from hub.supervision import Supervisor

log = logging.getLogger(__name__)

VERSION = "0.1.0"


def _player(config: AudioConfig, data_dir: Any) -> Player:
    if config.player == "aplay":
        return AplayPlayer(config.aplay_device)
    if config.player == "record":
        return RecordingPlayer(config.record_file or data_dir / "prompts-played.jsonl")
    return SilentPlayer()


class HubService:
    def __init__(self, config: HubConfig) -> None:
        self.config = config
        self._tasks: set[asyncio.Task[Any]] = set()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        stop = stop or asyncio.Event()
        data_dir = config.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)

        self.journal = AsyncJournal(data_dir / "journal.sqlite3")
        retry = RetryPolicy(config.outbox.resend_first_s, config.outbox.resend_cap_s, config.outbox.jitter)
        self.outbox = Outbox(retry)
        backlog = await self.journal.unacknowledged()
        self.outbox.extend(backlog)
        if backlog:
            log.warning("%d event(s) from before the restart still await the centre; resending", len(backlog))

        factory = load_pin_factory(config.gpio.pin_factory)
        self.siren = Siren(config.gpio.siren_pin, factory)
        self.led = StatusLed(config.gpio.led_pin, factory)
        self.voice = VoicePrompts(
            _player(config.audio, data_dir),
            config.audio.cache_dir or data_dir / "prompts",
            config.audio.voice,
            config.audio.prompts_dir,
        )
        self.rules = Rules(config.origin(), self.siren, self.led, self.voice, self._emit)

        def from_pin_thread(device: Device, active: bool, mono_ns: int) -> None:
            loop.call_soon_threadsafe(self.rules.on_input, device, active, mono_ns)

        household = config.household()
        self.inputs = PinInputs(household.devices, from_pin_thread, config.gpio.bounce_ms, factory)
        self.inputs.report_active_at_start()
        origin = config.origin()
        self.supervisor = Supervisor(origin, household.devices)
        radio_tasks = [asyncio.create_task(self._supervise(), name="supervision")]
        ble_devices = [d for d in household.devices if d.transport is Transport.BLE]
        if ble_devices:
            interpreter = BthomeInterpreter(
                origin,
                ble_devices,
                config.ble.battery_low_percent,
                config.ble.security_interval_s,
                on_heard=lambda device, ns: self._events(self.supervisor.heard(device.id, ns)),
            )
            self.ble = BleRadio(config.ble, interpreter, self._events, self._radio("ble"))
            radio_tasks.append(asyncio.create_task(self.ble.run(), name="ble"))
        zigbee_devices = [d for d in household.devices if d.transport is Transport.ZIGBEE]
        if zigbee_devices:
            self.zigbee = ZigbeeRadio(
                config.zigbee,
                origin,
                zigbee_devices,
                data_dir,
                self._events,
                self._radio("zigbee"),
                on_heard=lambda device, ns: self._events(self.supervisor.heard(device.id, ns)),
            )
            radio_tasks.append(asyncio.create_task(self.zigbee.run(), name="zigbee"))
        missing = await asyncio.to_thread(self.voice.prepare)
        if missing:
            log.error("voice prompts missing: %s (alarms still sound the siren)", ", ".join(missing))

        self.control = ControlServer(socket_path(data_dir), {"permit": self._permit, "status": self._status})
        await self.control.start()
        self.uplink = MqttUplink(
            config.mqtt, config.hub_id, config.county, self.outbox, self._on_ack, self._on_command, VERSION
        )
        uplink_task = asyncio.create_task(self.uplink.run(), name="mqtt-uplink")
        sd_notify("READY=1")
        log.info(
            "hub %s ready: %d device(s), %d event(s) pending", config.hub_id, len(config.devices), len(self.outbox)
        )
        try:
            await stop.wait()
        finally:
            for task in (uplink_task, *radio_tasks):
                task.cancel()
            await asyncio.gather(uplink_task, *radio_tasks, return_exceptions=True)
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.control.close()
            self.inputs.close()
            self.siren.close()
            self.led.close()
            self.voice.close()
            self.journal.close()

    async def _permit(self, request: dict[str, Any]) -> dict[str, Any]:
        seconds = int(request.get("seconds", 120))
        if not 1 <= seconds <= 254:
            raise ValueError("seconds must be 1 to 254 (Zigbee's limit for one permit-join)")
        zigbee = getattr(self, "zigbee", None)
        if zigbee is None:
            raise RuntimeError("no Zigbee devices are configured, so the hub runs no coordinator")
        await zigbee.permit(seconds)
        log.info("Zigbee joining open for %d s (local request)", seconds)
        return {"permit_s": seconds}

    async def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        ble, zigbee = getattr(self, "ble", None), getattr(self, "zigbee", None)
        return {
            "hub_id": self.config.hub_id,
            "uplink_connected": self.uplink.connected.is_set(),
            "pending": self.outbox.pending_counts(),
            "ble": None if ble is None else {"radio_ok": ble.radio_ok, "mode": ble.mode, "adverts": ble.adverts},
            "zigbee": None if zigbee is None else {"radio_ok": zigbee.radio_ok, "connected": zigbee.app is not None},
            "offline_devices": sorted(self.supervisor.offline()),
        }

    def _events(self, events: list[Event]) -> None:
        for event in events:
            self.rules.on_event(event)

    def _radio(self, name: str) -> Callable[[bool, str], None]:
        def report(working: bool, reason: str) -> None:
            kind = EventType.RESTORE_RADIO if working else EventType.FAULT_RADIO
            self.rules.on_event(self.config.origin().event(kind, None, radio=name, reason=reason))

        return report

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(self.supervisor.seconds_until_next_check())
            self._events(self.supervisor.check())

    def _emit(self, event: Event, alerted_mono_ns: int | None) -> None:
        task = asyncio.get_running_loop().create_task(self._record(event, alerted_mono_ns))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, event: Event, alerted_mono_ns: int | None) -> None:
        """Durable before reported: journal (fsync), then queue for the uplink. Never gives up."""
        delay = 0.1
        while True:
            try:
                journaled = await self.journal.append(event, alerted_mono_ns)
                break
            except JournalError as exc:
                log.critical("%s; the event is held in memory and retried in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.outbox.add(journaled)

    async def _on_ack(self, event_id: str, ack: dict[str, Any]) -> None:
        event = self.outbox.ack(event_id)
        if event is None:
            log.debug("ack for %s ignored: not pending (already acknowledged or unknown)", event_id)
            return
        await self.journal.mark_acked(event_id, "mqtt")
        log.info("centre acknowledged %s #%s", event.type.value, event.seq)
        self.rules.on_acknowledged(event)

    async def _on_command(self, cmd: dict[str, Any]) -> None:
        result = self.rules.on_command(cmd["command"], cmd.get("args", {}))
        log.info("command %s (%s) from the centre: %s", cmd["command"], cmd["cmd_id"], result)


def run_forever(config: HubConfig) -> None:
    """Run the hub until SIGTERM or SIGINT."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await HubService(config).run(stop)

    asyncio.run(main())
