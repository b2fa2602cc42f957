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
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloud_bridge.failover import Failover
from cloud_bridge.mqtt import MqttUplink
from cloud_bridge.outbox import Outbox, RetryPolicy
from edge.audio import PROMPTS, AplayPlayer, Player, RecordingPlayer, SilentPlayer, VoicePrompts
from edge.gpio import PinInputs, Siren, StatusLed, load_pin_factory
from edge.zigbee import ZigbeeRadio
from hub.clock import Clock, SimulatedClock, SystemClock
from hub.commands import Commands
from hub.config import AudioConfig, ConfigError, Dc09UplinkConfig, HubConfig, SmsUplinkConfig
from hub.control import ControlServer, socket_path
from hub.device_book import DeviceBook
from hub.journal import AsyncJournal, JournalError, JournalFull
from hub.journal_recovery import JournalDamaged, find_damage, finish_interrupted, is_corruption, recover
from hub.model import Device, Event, EventType, Priority, Transport
from hub.notify import sd_notify
from hub.rules import Rules
from hub.supervision import Supervisor
from hub.timesync import SyncPoint, TimeSync, source_from_config

log = logging.getLogger(__name__)

VERSION = "0.1.0"
PROVISIONAL_AFTER_S = 1.0
PROVISIONAL_SEQ_BASE = 1 << 50


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
        self.commands = Commands(self)  # the centre's commands: signature, replay, dispatch (hub.commands)
        self._acknowledged: dict[str, str] = {}  # recently acknowledged event id -> the path that did it
        self._info_dropped = 0
        self.event_listeners: list[Callable[[Event], None]] = []  # every event as it is raised (walk test)
        self.extra_handlers: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {}  # hub.installer
        self.book = DeviceBook()
        self._ack_waiters: dict[str, asyncio.Future[str]] = {}
        self._storage_fault_said = False
        self.ready = asyncio.Event()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        stop = stop or asyncio.Event()
        data_dir = config.data_dir
        with contextlib.suppress(OSError):  # a read-only data partition must not keep the siren off
            data_dir.mkdir(parents=True, exist_ok=True)
        origin = config.origin()
        household = config.household()
        self._journal_ready = asyncio.Event()

        # 1. Local first: outputs, rules, prompts, inputs. Nothing here needs the disk or the network.
        factory = load_pin_factory(config.gpio.pin_factory)
        self.siren = Siren(config.gpio.siren_pin, factory)
        self.led = StatusLed(config.gpio.led_pin, factory)
        self.voice = VoicePrompts(
            _player(config.audio, data_dir),
            config.audio.cache_dir or data_dir / "prompts",
            config.audio.voice,
            config.audio.prompts_dir,
        )
        self.clock = make_clock(config)
        self.timesync = TimeSync(source_from_config(config.clock.sync))
        self.timesync.check()  # events raised from here on know whether their wall time is trusted
        self.rules = Rules(
            origin,
            self.siren,
            self.led,
            self.voice,
            self._emit,
            config.rules,
            self.clock,
            {d.id: d for d in household.devices},
            _JournalWindows(self),
        )
        texts = {**PROMPTS, **{f"reminder:{r.id}": r.text for r in config.rules.reminders}}
        missing = await asyncio.to_thread(self.voice.prepare, texts)
        if missing:
            log.error("voice prompts missing: %s (alarms still sound the siren)", ", ".join(missing))

        def from_pin_thread(device: Device, active: bool, mono_ns: int) -> None:
            loop.call_soon_threadsafe(self.rules.on_input, device, active, mono_ns)

        self.inputs = PinInputs(household.devices, from_pin_thread, config.gpio.bounce_ms, factory)
        self.inputs.report_active_at_start()

        # 2. The journal (events raised meanwhile wait for it in _record), then the outbox.
        self.journal = await self._open_journal(data_dir / "journal.sqlite3")
        retry = RetryPolicy(config.outbox.resend_first_s, config.outbox.resend_cap_s, config.outbox.jitter)
        self.outbox = Outbox(retry)
        backlog = await self.journal.unacknowledged()
        self.outbox.extend(backlog)
        if backlog:
            log.warning("%d event(s) from before the restart still await the centre; resending", len(backlog))
        self.failover = self._failover(config)
        deliveries = await self.journal.deliveries([e.event_id for e in backlog if e.type.is_alarm])
        for event in backlog:
            paths = deliveries.get(event.event_id, {})
            done_via = next((path for path, acknowledged in paths.items() if acknowledged), None)
            self.failover.track(event, done_via=done_via, sms_sent="sms" in paths)
            if done_via is not None:  # acknowledged before the restart: not again, no escalation
                self._acknowledged[event.event_id] = done_via
        self._journal_ready.set()
        self.timesync.on_sync(self._on_clock_synced)  # at once if synchronised already
        self.rules.start(await self.journal.windows())
        self.rules.watch_pending([e for e in backlog if e.event_id not in self._acknowledged])

        # 3. Radios, supervision, the local control socket and the uplink: each restarted if it dies.
        self.supervisor = Supervisor(origin, household.devices)
        forever = [self._forever("supervision", self._supervise), self._forever("clock-sync", self.timesync.run)]
        if isinstance(self.clock, SimulatedClock):
            forever.append(self._forever("simulated-clock", lambda: keep_simulated_time(config, self.clock)))
        heard = lambda device, ns: self._events(self.supervisor.heard(device.id, ns))  # noqa: E731
        ble_devices = [d for d in household.devices if d.transport is Transport.BLE]
        # The radios run for the household's devices, and for pairing new ones while the installer's
        # web app is on (bleak and bthome-ble load only then).
        if ble_devices or config.api.enabled:
            from edge.ble import BleRadio
            from edge.bthome import BthomeInterpreter

            ble_config = config.ble
            interpreter = BthomeInterpreter(
                origin,
                ble_devices,
                ble_config.battery_low_percent,
                ble_config.security_interval_s,
                on_activity=lambda device, ns: self.rules.on_activity(device, ns),
                on_heard=heard,
                on_reading=self._reading,
            )
            # A radio started only for pairing (no BLE devices yet) reports its faults to the log alone.
            report = self._radio("ble") if ble_devices else _log_radio("ble")
            self.ble = BleRadio(ble_config, interpreter, self._events, report)
            forever.append(self._forever("ble", self.ble.run))
        zigbee_devices = [d for d in household.devices if d.transport is Transport.ZIGBEE]
        if zigbee_devices or (config.api.enabled and await asyncio.to_thread(os.path.exists, config.zigbee.port)):
            self.zigbee = ZigbeeRadio(
                config.zigbee,
                origin,
                zigbee_devices,
                data_dir,
                self._events,
                self._radio("zigbee") if zigbee_devices else _log_radio("zigbee"),
                on_heard=heard,
                on_activity=lambda device, ns: self.rules.on_activity(device, ns),
                on_reading=self._reading,
            )
            forever.append(self._forever("zigbee", self.zigbee.run))
        self.control = ControlServer(
            socket_path(data_dir),
            {
                "permit": self._permit,
                "status": self._status,
                "advance": self._advance,
                "test_mode": self._test_mode,
                **self.extra_handlers,
            },
        )
        with contextlib.suppress(OSError):
            await self.control.start()
        self.uplink = MqttUplink(
            config.mqtt,
            config.hub_id,
            config.county,
            self.outbox,
            self._on_ack,
            self._on_command,
            VERSION,
            heartbeat_extra=self.failover.heartbeat if self.failover.active else None,
            on_bad_command=self.commands.on_bad_command,
        )
        forever.append(self._forever("mqtt-uplink", self.uplink.run))
        if self.failover.active:
            forever.append(self._forever("failover", self.failover.run))
        sd_notify("READY=1")
        self.ready.set()
        log.info(
            "hub %s ready: %d device(s), %d event(s) pending", config.hub_id, len(config.devices), len(self.outbox)
        )
        try:
            await stop.wait()
        finally:
            for task in forever:
                task.cancel()
            await asyncio.gather(*forever, return_exceptions=True)
            if self._tasks:  # events still being journaled get a moment, not for ever (a full disk)
                await asyncio.wait(self._tasks, timeout=5)
                for task in self._tasks:
                    task.cancel()
            await self.control.close()
            await self.failover.close()
            self.inputs.close()
            self.siren.close()
            self.led.close()
            self.voice.close()
            self.journal.close()
            _mark_closed_cleanly(self.journal)

    def _failover(self, config: HubConfig) -> Failover:
        """DC-09 and SMS behind the MQTT uplink, in the order `uplinks` lists them."""
        dc09 = next((u for u in config.uplinks if isinstance(u, Dc09UplinkConfig)), None)
        sms = next((u for u in config.uplinks if isinstance(u, SmsUplinkConfig)), None)
        dc09_path = sms_path = None
        if dc09 is not None:  # cryptography and the modem driver load only for a hub that uses them
            from cloud_bridge.dc09_uplink import Dc09Path

            zones = {device.id: index for index, device in enumerate(config.devices, start=1)}
            dc09_path = Dc09Path(dc09, zones, clock_trusted=lambda: self.timesync.trusted)
        if sms is not None:
            from cloud_bridge.sms import SmsPath

            sms_path = SmsPath(sms, config.rules.timezone)
        return Failover(
            order=[uplink.type for uplink in config.uplinks],
            # MQTT counts as down only after `down_after_s` without a connection: a start or a broker
            # restart must not send every pending alarm to DC-09 or by SMS before MQTT had a chance.
            primary_up=lambda: not hasattr(self, "uplink") or self.uplink.down_for() < config.mqtt.down_after_s,
            dc09=dc09_path,
            sms=sms_path,
            clock=self.clock,
            sms_after_s=config.rules.escalation.ack_timeout_s,
            on_delivered=self._on_delivered,
        )

    def _forever(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run a long-lived part of the hub; if it ever ends or fails, log it for a person and restart it."""

        async def keep_running() -> None:
            while True:
                try:
                    await run()
                    log.critical("%s stopped by itself; restarting it", name)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.critical("%s failed; restarting it in 1 s", name, exc_info=True)
                await asyncio.sleep(1.0)

        return asyncio.create_task(keep_running(), name=name)

    async def _open_journal(self, path: Path) -> AsyncJournal:
        """The journal. It is checked first (`PRAGMA quick_check`); a damaged file is moved aside, a
        new one started and what can be read from the old one carried over (hub.journal_recovery:
        unacknowledged events keep their ids and sequence numbers, so they are still sent); a
        journal that has gone (the marker says one was made here) is reported; with no writable
        disk at all, a journal in memory (alarms still flow; a restart would lose what is pending).
        A journal started afresh numbers its events from the current time in milliseconds (or above
        the damaged one's last number, if higher), so its sequence numbers never repeat those the
        centre has already had from the lost one."""
        marker = path.with_name(path.name + ".created")
        options = self.config.journal
        settings = {
            "max_bytes": int(options.max_mb * 1024 * 1024),
            "reserve_fraction": options.reserve_percent / 100,
            "min_free_bytes": int(options.min_free_mb * 1024 * 1024),
        }
        problem: str | None = None
        action = ""
        recovery: dict[str, Any] = {}  # what was carried over from a damaged journal, for the fault
        with contextlib.suppress(OSError):  # a recovery a crash cut short (hub.journal_recovery)
            if finished := await asyncio.to_thread(finish_interrupted, path):
                problem, action = f"the journal {path} was damaged", finished
                log.critical("%s; %s", problem, action)
        if await asyncio.to_thread(_journal_lost, path, marker):
            problem = f"the journal {path} has gone (deleted?); events not yet acknowledged then are lost"
            action = "a new one was started"
            log.critical("%s; %s", problem, action)
        try:
            # The whole-file check costs seconds on a large journal (the centre hears nothing until
            # the journal is open; the siren does not wait), so it runs only after a stop that was
            # not clean: a power cut, a crash, a kill. That is when a file gets damaged.
            closed_cleanly = await asyncio.to_thread(_take_clean_mark, path)
            damage = None if closed_cleanly else await asyncio.to_thread(find_damage, path)
            if damage is not None:
                raise JournalDamaged(f"the journal {path} is damaged: {damage}")
            journal = await asyncio.to_thread(lambda: AsyncJournal(path, **settings))  # type: ignore[arg-type]
        except JournalFull as exc:  # a full disk, not a damaged file: keep it, run in memory
            log.critical("%s: keeping events in memory only until there is room", exc)
            problem, action = str(exc), "kept in memory only (disk full)"
            journal = await asyncio.to_thread(AsyncJournal, Path(":memory:"))
        except JournalError as exc:
            log.critical("%s", exc)
            problem = str(exc)
            if not _is_corrupt(exc):  # locked, no permission, I/O: the file may be fine; never set it aside
                log.critical("the journal cannot be opened now; events are kept in memory until the next start")
                journal = await asyncio.to_thread(AsyncJournal, Path(":memory:"))
                fault = self.config.origin().event(
                    EventType.FAULT_DEVICE, None, component="journal", problem=problem, action="kept in memory only"
                )
                self._background(self._report_after_open(fault))
                return journal
            try:
                aside, saved = await asyncio.to_thread(recover, path)
                journal = await asyncio.to_thread(lambda: AsyncJournal(path, **settings))  # type: ignore[arg-type]
                log.critical("the damaged journal was moved to %s; a new one was started: %s", aside, saved.summary())
                action = f"moved aside to {aside.name}; {saved.summary()}"
                recovery = saved.details()
            except (OSError, JournalError) as again:
                log.critical("no journal can be written in %s (%s): keeping events in memory only", path.parent, again)
                journal = await asyncio.to_thread(AsyncJournal, Path(":memory:"))
                action = "kept in memory only"
        if problem is not None:
            await journal.start_sequence_after(int(time.time() * 1000))
            fault = self.config.origin().event(
                EventType.FAULT_DEVICE, None, component="journal", problem=problem, action=action, **recovery
            )
            self._background(self._report_after_open(fault))
        await asyncio.to_thread(_mark_journal_created, path, marker)
        return journal

    async def _report_after_open(self, fault: Event) -> None:
        await self._journal_ready.wait()
        self.rules.on_event(fault)

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

    async def _advance(self, request: dict[str, Any]) -> dict[str, Any]:
        """Simulation only: move the hub's clock forward; every timer that falls due fires, in order."""
        if not isinstance(self.clock, SimulatedClock):
            raise RuntimeError("the clock can only be advanced with clock.mode = simulated")
        fired = self.clock.advance(float(request["seconds"]))
        with contextlib.suppress(OSError):
            await asyncio.to_thread(_clock_file(self.config).write_text, self.clock.now().isoformat())
        return {"now": self.clock.now().isoformat(), "timers_fired": fired}

    async def _test_mode(self, request: dict[str, Any]) -> dict[str, Any]:
        on = request.get("on")
        if not isinstance(on, bool):
            raise ValueError('test_mode needs "on": true or false')
        self.rules.set_test_mode(on, float(request.get("minutes", 60)))
        return {"test_mode": self.rules.test_mode}

    async def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        ble, zigbee = getattr(self, "ble", None), getattr(self, "zigbee", None)
        return {
            "hub_id": self.config.hub_id,
            "uplink_connected": self.uplink.connected.is_set(),
            **self.failover.heartbeat(),  # `uplinks`, and `modem` (SIM, signal) with an SMS uplink
            "pending": self.outbox.pending_counts(),
            "ble": None
            if ble is None
            else {
                "radio_ok": ble.radio_ok,
                "mode": ble.mode,
                "adverts": ble.adverts,
                "scan_restarts": ble.restarts,
                "adapter_resets": ble.resets,
            },
            "zigbee": None
            if zigbee is None
            else {
                "radio_ok": zigbee.radio_ok,
                "connected": zigbee.app is not None,
                "firmware": None if zigbee.app is None else zigbee.app.state.node_info.version,
            },
            "offline_devices": sorted(self.supervisor.offline()),
            "last_seen": {d.id: r.last_seen for d in self.config.devices if (r := self.book.get(d.id)) is not None},
            "clock": self.clock.now().isoformat(),
            "clock_synchronised": self.timesync.trusted,
            "open_windows": self.rules.open_windows(),
            "test_mode": self.rules.test_mode,
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

    def _reading(self, device: Device, signal: str | None, battery: float | None) -> None:
        self.book.heard(device.id, signal, battery)

    def report_event(self, event_type: EventType, /, **details: Any) -> None:
        """An event the hub raises about itself (commissioning), through the rules like any other."""
        self.rules.on_event(self.config.origin().event(event_type, None, **details))

    async def test_call(self, wait_s: float) -> list[Any]:
        """A `test.call` over every configured uplink; per path, whether it got through."""
        from hub.installer import PathResult

        event = self.timesync.stamp(self.config.origin().event(EventType.TEST_CALL, None, reason="installer test call"))
        journaled = await self.journal.append(event)
        acked = asyncio.get_running_loop().create_future()
        self._ack_waiters[journaled.event_id] = acked
        self.outbox.add(journaled)
        results: list[PathResult] = []
        try:
            others = await self.failover.test_call(journaled)
            try:
                await asyncio.wait_for(asyncio.shield(acked), wait_s)
                results.append(PathResult("mqtt", True, "the centre acknowledged it", datetime.now(UTC)))
            except TimeoutError:
                results.append(PathResult("mqtt", False, f"no ack from the centre within {wait_s:g} s", None))
        finally:
            self._ack_waiters.pop(journaled.event_id, None)
        results += [PathResult(path, ok, detail, datetime.now(UTC) if ok else None) for path, ok, detail in others]
        return results

    def _emit(self, event: Event, alerted_mono_ns: int | None) -> None:
        event = self.timesync.stamp(event)
        for listener in self.event_listeners:
            try:
                listener(event)
            except Exception:  # a listener (a web page) must never stop an event
                log.exception("an event listener failed")
        task = asyncio.get_running_loop().create_task(self._record(event, alerted_mono_ns))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, event: Event, alerted_mono_ns: int | None) -> None:
        """Durable before reported: journal (fsync), then queue for the uplink. Never gives up.

        If the journal has not taken an alarm within PROVISIONAL_AFTER_S (a full, failing or just
        slow disk), the alarm leaves anyway with a provisional sequence number from a range of its
        own (PROVISIONAL_SEQ_BASE + milliseconds since the epoch) and the same event id; it is still
        journaled as soon as the disk allows, with the ack it got meanwhile. Being heard beats
        being on disk.
        """
        await self._journal_ready.wait()
        started = time.monotonic()
        delay = 0.1
        sent_provisionally = False
        while True:
            event = self.timesync.stamp(event)  # corrected, if the clock was synchronised meanwhile
            attempt = asyncio.ensure_future(self.journal.append(event, alerted_mono_ns))
            if event.type.is_alarm and not sent_provisionally:
                wait_s = max(0.0, PROVISIONAL_AFTER_S - (time.monotonic() - started))
                done, _ = await asyncio.wait({attempt}, timeout=wait_s)
                if not done:
                    log.critical("the journal has not taken %s within %g s", event.event_id, PROVISIONAL_AFTER_S)
                    self._send_provisionally(event)
                    sent_provisionally = True
            try:
                journaled = await attempt
                break
            except JournalFull as exc:
                if event.priority is Priority.INFO:  # the room left is kept for alarms and faults
                    self._dropped_info(event, exc)
                    return
                log.critical("%s; the %s is held in memory and retried in %.1f s", exc, event.type.value, delay)
            except JournalError as exc:
                log.critical("%s; the event is held in memory and retried in %.1f s", exc, delay)
            if event.type.is_alarm and not sent_provisionally and time.monotonic() - started >= PROVISIONAL_AFTER_S:
                self._send_provisionally(event)
                sent_provisionally = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        if not sent_provisionally:
            journaled = self.timesync.stamp(journaled)  # synchronised while on its way to the disk
            self.outbox.add(journaled)
            self.failover.track(journaled)
        elif event.event_id not in self.outbox:  # acknowledged while it was not on disk: say so there too
            via = self._acknowledged.get(event.event_id, "mqtt")
            self._journal_later(self.journal.mark_acked(event.event_id, via))
        if event.priority is Priority.INFO and self._storage_fault_said:  # room again: say so
            self._storage_fault_said = False
            restore = self.config.origin().event(
                EventType.RESTORE_DEVICE, None, component="journal", info_dropped=self._info_dropped
            )
            self.rules.on_event(restore)

    def _on_clock_synced(self, sync: SyncPoint) -> None:
        """The wall clock is synchronised: every event of this boot raised before gets its true time,
        in what is queued and tracked at once, and in the journal (hub.timesync owns the formula)."""
        self.outbox.retime(sync.correct)
        self.failover.retime(sync.correct)

        async def correct_journal() -> None:
            try:
                corrected = await self.journal.correct_times(sync)
            except (JournalError, RuntimeError) as exc:  # RuntimeError: the journal closed (shutting down)
                log.error("%s; after a restart these events are corrected again, or keep their mark", exc)
                return
            if corrected:
                log.warning(
                    "%d event(s) raised before the clock was synchronised now carry their true time",
                    len(corrected),
                )

        self._background(correct_journal())

    def _send_provisionally(self, event: Event) -> None:
        provisional = event.with_seq(PROVISIONAL_SEQ_BASE + int(time.time() * 1000))
        log.critical(
            "sending %s %s before it is on disk (provisional seq %d)",
            event.type.value,
            event.event_id,
            provisional.seq,
            extra={"EVENT_ID": event.event_id},
        )
        self.outbox.add(provisional)
        self.failover.track(provisional)

    def _dropped_info(self, event: Event, full: JournalFull) -> None:
        """An info event the full journal refused: dropped, counted, and said once per episode."""
        self._info_dropped += 1
        log.error(
            "storage full: %s %s dropped (%d info event(s) dropped so far)",
            event.type.value,
            event.event_id,
            self._info_dropped,
        )
        if self._storage_fault_said:
            return
        self._storage_fault_said = True
        usage = full.usage
        fault = self.config.origin().event(
            EventType.FAULT_DEVICE,
            None,
            component="journal",
            problem="storage full: info events are dropped, alarms and faults are kept",
            used_bytes=None if usage is None else usage.used_bytes,
            max_bytes=None if usage is None else usage.max_bytes,
            disk_free_bytes=None if usage is None else usage.disk_free_bytes,
        )
        self.rules.on_event(fault)

    async def _on_ack(self, event_id: str, ack: dict[str, Any]) -> None:
        event = self.outbox.ack(event_id)
        if event is None:
            log.debug("ack for %s ignored: not pending (already acknowledged or unknown)", event_id)
            return
        log.info("centre acknowledged %s #%s", event.type.value, event.seq, extra={"EVENT_ID": event_id})
        waiter = self._ack_waiters.get(event_id)
        if waiter is not None and not waiter.done():
            waiter.set_result("mqtt")
        self._on_delivered(event, "mqtt", True)
        self._journal_later(self.journal.mark_acked(event_id, "mqtt"))

    def _on_delivered(self, event: Event, via: str, acknowledged: bool) -> None:
        """A path carried `event`: the first acknowledgement on any path tells the person and ends
        failover; a later one from another path is recorded and changes nothing else."""
        if via != "mqtt":
            self._journal_later(self.journal.mark_delivered(event.event_id, via, acknowledged))
        if not acknowledged:
            return
        first = self._acknowledged.get(event.event_id, via)
        if event.type.is_alarm:  # only alarms can be acknowledged twice (failover): only they are kept
            self._acknowledged.setdefault(event.event_id, via)
            while len(self._acknowledged) > 10_000:
                del self._acknowledged[next(iter(self._acknowledged))]
        self.failover.delivered(event.event_id, via)
        if first != via:
            log.info("%s #%s also acknowledged over %s (first over %s)", event.type.value, event.seq, via, first)
            return
        if via != "mqtt":
            log.warning("%s #%s acknowledged over %s", event.type.value, event.seq, via)
        self.rules.on_acknowledged(event)  # first: the person hears it even if the disk is failing

    def _journal_later(self, write: Awaitable[Any]) -> None:
        """Journal an ack in the background: acks arriving together commit together."""

        async def journal_it() -> None:
            try:
                await write
            except (JournalError, RuntimeError) as exc:  # RuntimeError: the journal closed (shutting down)
                log.error("%s; after a restart the event is sent again and the centre drops the copy", exc)

        self._background(journal_it())

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` beside the caller; shutdown gives it a moment to finish (see `run`)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_command(self, cmd: dict[str, Any]) -> None:
        """A command from the centre: checked (signature, hub, age, replay) and carried out by hub.commands."""
        await self.commands.on_command(cmd)


def _log_radio(name: str) -> Callable[[bool, str], None]:
    def report(working: bool, reason: str) -> None:
        (log.info if working else log.warning)(
            "%s radio (for pairing only) %s: %s", name, "works" if working else "failed", reason
        )

    return report


def _is_corrupt(exc: JournalError) -> bool:
    """Whether the file itself is damaged (its quick check failed, or SQLite says: not a database,
    malformed), as opposed to locked, forbidden or failing for now."""
    return isinstance(exc, JournalDamaged) or is_corruption(exc.__cause__)


def _clean_mark(path: Path) -> Path:
    return path.with_name(path.name + ".closed-cleanly")


def _mark_closed_cleanly(journal: AsyncJournal) -> None:
    """Leave a mark that the journal was closed in order (the next start may skip its check)."""
    if journal.path.name != ":memory:":
        with contextlib.suppress(OSError):
            _clean_mark(journal.path).touch()


def _take_clean_mark(path: Path) -> bool:
    """Whether the last run closed the journal in order; the mark is removed, so a crash from now
    on leaves none."""
    mark = _clean_mark(path)
    try:
        mark.unlink()
    except OSError:
        return False
    return path.exists()


def _journal_lost(path: Path, marker: Path) -> bool:
    """Whether a journal was made here before (its marker is there) and has gone since."""
    return marker.exists() and not path.exists()


def _mark_journal_created(path: Path, marker: Path) -> None:
    with contextlib.suppress(OSError):
        if not marker.exists() and path.exists():
            marker.write_text(f"journal created {datetime.now(UTC).isoformat()}\n")


def make_clock(config: HubConfig) -> Clock:
    """The system clock; or, in simulation, a clock that starts at `clock.start` and, after a restart,
    goes on from where the last run left it (a simulated hub must not travel back in time)."""
    zone = config.rules.zone()
    if config.clock.mode != "simulated":
        return SystemClock(zone)
    start = config.clock.start or datetime.now(zone)
    with contextlib.suppress(OSError, ValueError):
        start = max(start, datetime.fromisoformat(_clock_file(config).read_text().strip()))
    return SimulatedClock(start, zone)


def _clock_file(config: HubConfig) -> Path:
    return config.data_dir / "simulated-clock.txt"


async def keep_simulated_time(config: HubConfig, clock: Clock) -> None:
    """Write a simulated clock's time down every second, for the next start (see make_clock)."""
    while True:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(_clock_file(config).write_text, clock.now().isoformat())
        await asyncio.sleep(1.0)


class _JournalWindows:
    """The rules' open windows, saved in the journal (in the background: a rule never waits for disk)."""

    def __init__(self, service: HubService) -> None:
        self._service = service

    def save(self, window_id: str, deadline: datetime, data: dict[str, Any]) -> None:
        self._spawn(lambda: self._service.journal.save_window(window_id, deadline, data))

    def delete(self, window_id: str) -> None:
        self._spawn(lambda: self._service.journal.delete_window(window_id))

    def _spawn(self, action: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            await self._service._journal_ready.wait()
            try:
                await action()
            except JournalError as exc:
                log.error("%s (the window still runs in memory)", exc)

        task = asyncio.get_running_loop().create_task(run())
        self._service._tasks.add(task)
        task.add_done_callback(self._service._tasks.discard)


def run_forever(config_path: Path) -> None:
    """Run the hub until SIGTERM or SIGINT; with `[api] enabled`, also the installer's web app.

    When the installer changes the configuration (a device paired), the service stops and starts
    again with the new file; the web app and its sessions stay up. A file that has become invalid
    meanwhile is logged and the hub goes on with the configuration it has. A configuration the
    centre sent is on trial, and rolled back if the hub does not come up with it (hub.config_trial).
    """
    from hub import watchdog
    from hub.config_store import ConfigStore
    from hub.config_trial import ConfigTrial
    from hub.installer import Installer

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, watchdog.stopping, stop)
        watchdog.enable_tracebacks_on_abort()
        current: list[HubService] = []  # systemd's watchdog pings from this loop (hub.watchdog)
        pinger = asyncio.create_task(watchdog.heartbeat(lambda: watchdog.status_line(current[-1] if current else None)))
        store = ConfigStore(config_path)
        installer = Installer(store)
        trial = ConfigTrial(store, stop)
        config = trial.config_to_start()
        web: asyncio.Task[None] | None = None
        if config.api.enabled:
            from hub.api.server import serve

            web = asyncio.create_task(serve(installer, config.api), name="installer-web-app")
        try:
            while not stop.is_set():
                service = HubService(config)
                current[:] = [service]
                installer.attach(service)
                trial.attach(service, installer.reload_requested)
                installer.reload_requested.clear()
                ended = asyncio.Event()
                watcher = asyncio.create_task(_first_of(stop, installer.reload_requested, then=ended))
                try:
                    await service.run(ended)
                except Exception as exc:
                    if not trial.failed_at_start(exc):
                        raise
                finally:
                    watcher.cancel()
                if stop.is_set():
                    break
                try:
                    config = store.load()
                    log.warning("configuration changed: the hub service starts again with it")
                except ConfigError as exc:
                    log.error("the changed configuration is not valid, keeping the running one: %s", exc)
        finally:
            if web is not None:
                web.cancel()
                await asyncio.gather(web, return_exceptions=True)
            pinger.cancel()

    asyncio.run(main())


async def _first_of(*events: asyncio.Event, then: asyncio.Event) -> None:
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    then.set()
