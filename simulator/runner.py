"""Plays a scenario against real processes and reports what happened.

It starts a private mosquitto on a free port, the reference centre (`anju centre`) and the hub
(`anju run`) as separate processes, the hub configured with simulated pins (`anju-sim`) and a
recording voice player. The hub reaches the broker through a TCP proxy (simulator.proxy) so a step
can take the home's network down, black-hole it or make it flaky; a scenario with `uplinks` also
gets a pysiaalarm DC-09 receiver (behind its own proxy) and a virtual 4G modem on a pty. Then it
plays the timeline: drives pins, stops and restarts the broker, SIGKILLs and restarts the hub.
When every journaled event is acknowledged (or `settle` runs out) it reads the hub's journal,
the centre's database, the recorded prompts, DC-09 signals and SMS, and checks the expectations.
The result's JSON shape is documented in docs/scenario-json.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import tomli_w
from paho.mqtt.subscribeoptions import SubscribeOptions

from cloud_bridge.mqtt import mqtt_client
from hub.api.security import hash_pin
from hub.control import request as control_request
from hub.control import socket_path
from hub.model import EventType, Transport
from simulator.ble_rig import BleRig
from simulator.broker import PrivateBroker, free_port
from simulator.dc09_receiver import Dc09Receiver
from simulator.gpio import ENV_SOCKET, PinBench
from simulator.modem import VirtualModem
from simulator.proxy import TcpProxy
from simulator.scenario import IMMEDIATE_ALARM_STIMULI, Scenario, Step
from simulator.tap import ContractTap
from simulator.zigbee_rig import ZigbeeRig

SIREN_PIN = 27
QUIET_S = 0.5
LED_PIN = 22


def default_prompt_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "anju" / "prompts"


@dataclass
class Stimulus:
    device: str
    action: str
    mono_ns: int
    walk_test: bool = False  # in the household's test mode: a chirp and test.walk, not an alarm


@dataclass
class Timeline:
    t0_ns: int = 0
    entries: list[tuple[int, str, str]] = field(default_factory=list)  # (mono_ns, source, text)
    echo: Callable[[str], None] | None = None

    def add(self, mono_ns: int, source: str, text: str) -> None:
        self.entries.append((mono_ns, source, text))
        if self.echo is not None:
            self.echo(self.format_entry(mono_ns, source, text))

    def format_entry(self, mono_ns: int, source: str, text: str) -> str:
        return f"{(mono_ns - self.t0_ns) / 1e9:8.3f} s  {source:<8} {text}"

    def sorted(self) -> list[tuple[int, str, str]]:
        return sorted(self.entries, key=lambda entry: entry[0])


class ChildProcess:
    """A child process that announces readiness with sd_notify on its own datagram socket."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.workdir = workdir
        self.env = env
        self.notify_path = workdir / f"{name}.notify"
        self.log_path = workdir / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 30.0) -> None:
        self.notify_path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(self.notify_path))
        sock.setblocking(False)
        env = {**os.environ, **self.env, "NOTIFY_SOCKET": str(self.notify_path), "PYTHONUNBUFFERED": "1"}
        log = self.log_path.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdout=log, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL, env=env
        )
        log.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    recv = asyncio.ensure_future(loop.sock_recv(sock, 4096))
                    died = asyncio.ensure_future(self.process.wait())
                    done, _ = await asyncio.wait({recv, died}, return_when=asyncio.FIRST_COMPLETED)
                    if recv in done:
                        died.cancel()
                        if b"READY=1" in recv.result():
                            return
                        continue
                    recv.cancel()
                    raise RuntimeError(
                        f"{self.name} exited with status {self.process.returncode} before it was"
                        f" ready; see {self.log_path}:\n{self.tail()}"
                    )
        except TimeoutError:
            raise RuntimeError(f"{self.name} was not ready within {timeout} s; see {self.log_path}") from None
        finally:
            sock.close()

    def peak_rss_mb(self) -> float | None:
        """The process's peak resident memory so far (VmHWM), while it runs."""
        if self.process is None or self.process.returncode is not None:
            return None
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def kill(self) -> None:
        if self.process and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self) -> None:
        if self.process and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=10)
            except TimeoutError:
                await self.kill()


class ScenarioRunner:
    def __init__(
        self,
        scenario: Scenario,
        workdir: Path,
        prompt_cache: Path | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.workdir = workdir
        self.prompt_cache = prompt_cache or default_prompt_cache()
        self.timeline = Timeline(echo=echo)
        self.stimuli: list[Stimulus] = []
        self.hub_data = workdir / "hub"
        self.prompts_file = workdir / "prompts-played.jsonl"
        self.centre_db = workdir / "centre.sqlite3"
        self.hub_peak_rss_mb: float | None = None
        self.tap = ContractTap("127.0.0.1", 0)
        self.ble: BleRig | None = None
        self.zigbee: ZigbeeRig | None = None
        self.proxies: dict[str, TcpProxy] = {}
        self.dc09: Dc09Receiver | None = None
        self.modem: VirtualModem | None = None
        self._noise: asyncio.Task[None] | None = None
        self._walk_test = False
        self._broker: PrivateBroker | None = None
        self._bench: PinBench | None = None
        self._centre: ChildProcess | None = None
        self._hub: ChildProcess | None = None
        self._tap_task: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()
        self.api_port: int | None = None  # the installer web app's port, with `api` in the scenario

    def _hub_config(self, broker: PrivateBroker) -> Path:
        scenario = self.scenario
        config: dict[str, Any] = {
            "hub_id": scenario.effective_hub_id,
            "county": scenario.household.county,
            "household_id": scenario.household.id,
            "data_dir": str(self.hub_data),
            "log_level": "INFO",
            "gpio": {"pin_factory": "anju-sim", "siren_pin": SIREN_PIN, "led_pin": LED_PIN},
            "audio": {"player": "record", "record_file": str(self.prompts_file), "cache_dir": str(self.prompt_cache)},
            "mqtt": {
                "host": broker.host,
                "port": self.proxies["mqtt"].port,
                "heartbeat_s": 5.0,
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 1.0,
                "connect_timeout_s": 2.0,
                "down_after_s": 1.0,
            },
            "outbox": {"resend_first_s": 2.0, "resend_cap_s": 10.0},
            "journal": {
                "max_mb": scenario.journal.max_kb / 1024,
                "reserve_percent": scenario.journal.reserve_percent,
                "min_free_mb": 0,
            },
            "devices": [
                device.model_dump(mode="json", exclude_none=True)
                for device in scenario.devices
                if device.id not in scenario.unpaired
            ],
            "ble": self.ble.hub_config() if self.ble is not None else {},
            "zigbee": self.zigbee.hub_config() if self.zigbee is not None else {},
            "rules": (
                scenario.rules.model_dump(mode="json")
                if scenario.rules is not None
                else {"checkin": {"enabled": False}, "inactivity": {"enabled": False}}
            ),
            # The simulated household's clock is synchronised from the start, whatever this machine's
            # kernel says (a VM's often never is); a scenario about an unsynchronised clock would set
            # sync = "file:PATH" and create PATH at a step (hub.timesync).
            "clock": (
                {"mode": "simulated", "start": scenario.clock.start.isoformat(), "sync": "assume"}
                if scenario.clock
                else {"mode": "system", "sync": "assume"}
            ),
        }
        uplinks: list[dict[str, Any]] = [{"type": "mqtt"}]
        if scenario.uplinks is not None:
            uplinks = []
            for uplink in scenario.uplinks:
                spec = uplink.model_dump(mode="json", exclude_none=True)
                if uplink.type == "dc09":
                    spec.update(host="127.0.0.1", port=self.proxies["dc09"].port, timeout_s=2.0)
                elif uplink.type == "sms":
                    assert self.modem is not None
                    spec.update(port=str(self.modem.port_path), status_s=2.0)
                uplinks.append(spec)
        config["uplinks"] = uplinks
        if scenario.api is not None:
            self.api_port = free_port()
            config["api"] = {
                "enabled": True,
                "host": "127.0.0.1",
                "port": self.api_port,
                "pin_hash": hash_pin(scenario.api.pin),
            }
        path = self.workdir / "hub.toml"
        path.write_bytes(tomli_w.dumps(config).encode())
        return path

    async def run(self) -> dict[str, Any]:
        started = time.monotonic()
        try:
            await self.start()
            for step in self.scenario.ordered_steps():
                delay = self.timeline.t0_ns / 1e9 + step.at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.play(step)
            await self._settle()
            if self._releases:
                await asyncio.gather(*self._releases)
            assert self._hub is not None
            self.hub_peak_rss_mb = self._hub.peak_rss_mb()
        finally:
            await self.stop()
        self.timeline.echo = None  # what follows is reconstructed from the records, not live
        assert self._bench is not None
        result = self._result(self._bench)
        result["duration_s"] = round(time.monotonic() - started, 3)
        return result

    async def start(self) -> None:
        """Start the broker, the rigs, the centre and the hub; return when the hub is ready. (`run`
        does this, plays the timeline and stops; a test driving the hub by hand calls `start`,
        `play` and `stop` itself.)"""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._broker = broker = PrivateBroker(self.workdir / "broker")
        self._bench = bench = PinBench(self.workdir / "gpio.sock")
        cli = [sys.executable, "-m", "hub.cli"]
        self._centre = centre = ChildProcess(
            "centre", [*cli, "centre", "--port", "0", "--db", str(self.centre_db)], self.workdir, {}
        )
        self._hub = hub = ChildProcess(
            "hub", [*cli, "run", "--config", "-"], self.workdir, {ENV_SOCKET: str(bench.path)}
        )
        self.ble = BleRig(self.scenario, self.workdir / "bluez", self.timeline.add) if self.scenario.has_ble() else None
        self.zigbee = (
            ZigbeeRig(self.scenario, self.workdir / "znp", self.timeline.add) if self.scenario.has_zigbee() else None
        )
        if self.ble is not None:
            await self.ble.start()
            hub.env.update(self.ble.env())
        if self.zigbee is not None:
            await self.zigbee.start()
        broker.start()
        await self._start_uplinks(broker)
        self.tap = ContractTap(broker.host, broker.port)
        self._tap_task = asyncio.create_task(self.tap.run())
        await asyncio.wait_for(self.tap.subscribed.wait(), 10)
        centre.argv[centre.argv.index("0")] = str(broker.port)
        hub.argv[-1] = str(self._hub_config(broker))
        await bench.start()
        await centre.start()
        await hub.start()
        await asyncio.wait_for(bench.connected.wait(), 10)
        if self.zigbee is not None:
            await self.zigbee.ready()
        self.timeline.t0_ns = time.monotonic_ns()
        self.timeline.add(
            self.timeline.t0_ns,
            "runner",
            f"hub {self.scenario.effective_hub_id} ready; broker on port {broker.port}",
        )

    async def play(self, step: Step) -> None:
        """Play one step now."""
        assert self._broker and self._bench and self._hub and self._centre, "start() first"
        await self._play(step, self._broker, self._bench, self._hub, self._centre, self._releases)

    async def stop(self) -> None:
        for task in self._releases:
            task.cancel()
        if self._hub is not None:
            await self._hub.stop()
        await asyncio.sleep(0.2)  # let the tap see the hub's last messages
        if self._tap_task is not None:
            self._tap_task.cancel()
        if self._centre is not None:
            await self._centre.stop()
        if self._noise is not None:
            self._noise.cancel()
        if self._broker is not None:
            self._broker.stop()
        for proxy in self.proxies.values():
            await proxy.stop()
        if self.dc09 is not None:
            await self.dc09.stop()
        if self.modem is not None:
            await self.modem.stop()
        if self._bench is not None:
            await self._bench.close()
        if self.ble is not None:
            await self.ble.stop()
        if self.zigbee is not None:
            await self.zigbee.stop()

    async def _start_uplinks(self, broker: PrivateBroker) -> None:
        """The proxies in front of the broker and the DC-09 receiver, the receiver, the modem."""
        self.proxies["mqtt"] = TcpProxy(broker.host, broker.port, seed=1)
        await self.proxies["mqtt"].start()
        dc09 = self.scenario.uplink("dc09")
        if dc09 is not None:
            self.dc09 = Dc09Receiver(
                dc09.account, key=dc09.key, key_format=dc09.key_format, record_file=self.workdir / "dc09.jsonl"
            )
            await self.dc09.start()
            self.proxies["dc09"] = TcpProxy("127.0.0.1", self.dc09.port, seed=2)
            await self.proxies["dc09"].start()
        if self.scenario.uplink("sms") is not None:
            self.modem = VirtualModem(self.workdir / "modem")
            await self.modem.start()

    async def _network(self, step: Step) -> None:
        assert step.uplink is not None
        names = [step.path] if step.path else list(self.proxies)
        for name in names:
            await self.proxies[name].set_mode(step.uplink)
        what = {
            "down": "down (connections refused)",
            "up": "up again",
            "blackhole": "black-holed (nothing gets through, nothing is refused)",
            "flaky": "flaky (delays, dropped connections)",
        }[step.uplink]
        self.timeline.add(time.monotonic_ns(), "network", f"{' and '.join(names)} network {what}")

    def _modem(self, step: Step) -> None:
        assert self.modem is not None
        if step.modem == "no_signal":
            self.modem.no_signal()
        elif step.modem == "no_sim":
            self.modem.no_sim()
        else:
            self.modem.recover()
        self.timeline.add(time.monotonic_ns(), "modem", f"modem: {step.modem}")

    async def _play(
        self,
        step: Step,
        broker: PrivateBroker,
        bench: PinBench,
        hub: ChildProcess,
        centre: ChildProcess,
        releases: set[asyncio.Task[None]],
    ) -> None:
        add = self.timeline.add
        if step.advance is not None or step.mode is not None:
            message = (
                {"cmd": "advance", "seconds": step.advance_s}
                if step.advance is not None
                else {"cmd": "test_mode", "on": step.mode == "test"}
            )
            answer = await asyncio.to_thread(control_request, socket_path(self.hub_data), message)
            if not answer.get("ok"):
                raise RuntimeError(f"the hub refused {message}: {answer.get('error')}")
            if step.mode is not None:
                self._walk_test = step.mode == "test"
            text = (
                f"clock advanced {step.advance} to {answer['now']} ({answer['timers_fired']} timer(s) fired)"
                if step.advance is not None
                else f"test mode {'on' if step.mode == 'test' else 'off'}"
            )
            add(time.monotonic_ns(), "runner", text)
            return
        device_config = next((d for d in self.scenario.devices if d.id == step.device), None)
        if step.radio is not None or (device_config is not None and device_config.transport is Transport.ZIGBEE):
            assert self.zigbee is not None
            stimulus = await self.zigbee.play(step)
            if stimulus is not None and step.device is not None and step.do is not None:
                self.stimuli.append(Stimulus(step.device, step.do, stimulus, self._walk_test))
            return
        if step.ble is not None or (device_config is not None and device_config.transport is Transport.BLE):
            assert self.ble is not None
            stimulus = await self.ble.play(step)
            if stimulus is not None and step.device is not None and step.do is not None:
                self.stimuli.append(Stimulus(step.device, step.do, stimulus, self._walk_test))
            return
        if step.device is not None and step.do is not None:
            device = next(d for d in self.scenario.devices if d.id == step.device)
            assert device.pin is not None
            if step.do in ("pull", "press", "smoke", "mains_lost"):
                sent = await bench.drive(device.pin, 0)
                self.stimuli.append(Stimulus(device.id, step.do, sent, self._walk_test))
                add(sent, "device", f"{device.id}: {step.do} (GPIO{device.pin} low)")
                if step.do not in ("smoke", "mains_lost"):
                    task = asyncio.create_task(self._release(bench, device.pin, step.hold))
                    releases.add(task)
            else:
                sent = await bench.drive(device.pin, 1)
                add(sent, "device", f"{device.id}: {step.do} (GPIO{device.pin} high)")
        elif step.uplink is not None:
            await self._network(step)
        elif step.modem is not None:
            self._modem(step)
        elif step.acks is not None:
            self._noise = asyncio.create_task(_duplicate_acks(broker, self.scenario.effective_hub_id))
            add(time.monotonic_ns(), "network", "from now on every ack arrives twice, and acks for unknown events too")
        elif step.journal is not None:
            await hub.stop()
            bench.connected.clear()
            _damage_journal(self.hub_data / "journal.sqlite3", step.journal)
            await hub.start()
            await asyncio.wait_for(bench.connected.wait(), 10)
            add(time.monotonic_ns(), "hub", f"hub stopped, its journal {step.journal}d, hub started again")
        elif step.broker in ("down", "kill"):
            broker.stop(kill=step.broker == "kill")
            what = "killed (SIGKILL)" if step.broker == "kill" else "stopped"
            add(time.monotonic_ns(), "network", f"broker {what}: the hub's uplink is down")
        elif step.broker == "up":
            broker.start()
            add(time.monotonic_ns(), "network", "broker started again")
        elif step.hub in ("kill", "restart"):
            if step.hub == "kill":
                await hub.kill()
                add(time.monotonic_ns(), "hub", "SIGKILL: hub process killed")
            else:
                await hub.stop()
                add(time.monotonic_ns(), "hub", "SIGTERM: hub process stopped")
            bench.connected.clear()
            await hub.start()
            await asyncio.wait_for(bench.connected.wait(), 10)
            add(time.monotonic_ns(), "hub", "hub process started again and ready")
        elif step.centre is not None:
            await centre.stop()
            if "--no-ack" in centre.argv:
                centre.argv.remove("--no-ack")
            if step.centre == "down":
                add(time.monotonic_ns(), "centre", "centre stopped")
                return
            if step.centre == "no_ack":
                centre.argv.append("--no-ack")
            await centre.start()
            add(
                time.monotonic_ns(),
                "centre",
                "centre restarted" + (", storing but never acknowledging" if step.centre == "no_ack" else ""),
            )

    async def _release(self, bench: PinBench, pin: int, hold: float) -> None:
        await asyncio.sleep(hold)
        with contextlib.suppress(RuntimeError):  # the hub may be down just then: the pin floats high anyway
            await bench.drive(pin, 1)

    async def _settle(self) -> None:
        """Wait until the hub has journaled every stimulus and the centre acknowledged everything.

        The last step's consequences (a restore, a security report) may still be on their way, so
        the runner waits QUIET_S after the last step before it trusts "everything is acknowledged".
        """
        expected_alarms = sum(1 for s in self.stimuli if s.action in IMMEDIATE_ALARM_STIMULI and not s.walk_test)
        await asyncio.sleep(QUIET_S)
        deadline = time.monotonic() + self.scenario.settle
        settled_since: float | None = None
        while time.monotonic() < deadline:
            # Windows first, journal second: a fall window that just closed has raised its alarm,
            # which may still be on its way to the journal; so "settled" must also hold QUIET_S.
            windows_open = await self._fall_windows()
            records = _read_rows(self.hub_data / "journal.sqlite3", "SELECT type, acked_at FROM events")
            alarms = sum(1 for type_, _ in records if type_.startswith("alarm."))
            if alarms >= expected_alarms and all(acked for _, acked in records) and not windows_open:
                settled_since = settled_since or time.monotonic()
                if time.monotonic() - settled_since >= QUIET_S:
                    return
            else:
                settled_since = None
            await asyncio.sleep(0.05)
        self.timeline.add(time.monotonic_ns(), "runner", f"settle time ({self.scenario.settle} s) ran out")

    async def _fall_windows(self) -> bool:
        """Whether the hub still has a fall's cancel window open (its alarm may yet come)."""
        try:
            status = await asyncio.to_thread(control_request, socket_path(self.hub_data), {"cmd": "status"}, 2.0)
        except OSError:
            return False
        return any(window.startswith("fall:") for window in status.get("open_windows", []))

    def _result(self, bench: PinBench) -> dict[str, Any]:
        journal = _read_rows(
            self.hub_data / "journal.sqlite3",
            "SELECT event_id, seq, type, priority, device_id, observed_mono_ns, alerted_mono_ns,"
            " journaled_mono_ns, acked_mono_ns, hub_id FROM events ORDER BY seq",
        )
        centre_rows = _read_rows(
            self.centre_db, "SELECT event_id, hub_id, seq, type, device_id, copies, first_received_mono_ns FROM events"
        )
        by_id = {row[0]: row for row in centre_rows}
        failover: dict[str, list[str]] = {}
        for event_id, via, acknowledged in _read_rows(
            self.hub_data / "journal.sqlite3", "SELECT event_id, via, acknowledged FROM deliveries ORDER BY at"
        ):
            failover.setdefault(event_id, []).append(via if acknowledged else f"{via} (sent)")
        by_seq: dict[tuple[str, int], int] = {}
        for row in centre_rows:
            by_seq[(row[1], row[2])] = by_seq.get((row[1], row[2]), 0) + 1
        add = self.timeline.add
        events = []
        for event_id, seq, type_, priority, device, observed, alerted, journaled, acked, hub_id in journal:
            stimulus = self._stimulus_for(device, observed)
            centre = by_id.get(event_id)
            copies = centre[5] if centre else 0
            label = f"{type_} #{seq}"
            if alerted:
                add(alerted, "hub", f"{label}: siren on, voice prompt queued")
            add(journaled, "journal", f"{label} committed (fsync)")
            if centre:
                add(centre[6], "centre", f"{label} received" + (f" ({copies} copies, 1 record)" if copies > 1 else ""))
            if acked:
                add(acked, "hub", f"{label}: centre's ack journaled")
            events.append(
                {
                    "event_id": event_id,
                    "seq": seq,
                    "type": type_,
                    "device": device,
                    "priority": ("alarm", "fault", "info")[priority],
                    "local_alert_ms": _ms(alerted, stimulus),
                    "delivered": bool(acked) and centre is not None,
                    "ack_ms": _ms(acked, stimulus),
                    "centre_copies": copies,
                    "centre_records": max(by_seq.get((hub_id, seq), 0), 1 if centre else 0),
                    "failover": failover.get(event_id, []),
                }
            )
        prompts = []
        if self.prompts_file.exists():
            for line in self.prompts_file.read_text().splitlines():
                played = json.loads(line)
                prompts.append(played["prompt"])
                add(played["mono_ns"], "voice", f"prompt {played['prompt']} played")
        for mono_ns, hub_id, state, reason in self.tap.status_changes:
            add(mono_ns, "uplink", f"hub {hub_id} {state}" + (f" ({reason})" if reason else ""))
        for change in _siren_onsets(bench):
            add(change, "siren", "siren output on")
        dc09 = [] if self.dc09 is None else self.dc09.alarms()
        for signal_ in dc09:
            add(signal_.mono_ns, "dc09", f"receiver got {signal_.message_type} {signal_.code} seq {signal_.sequence}")
        sent = [] if self.modem is None else self.modem.sent
        for message in sent:
            add(message.mono_ns, "sms", f"SMS to {message.number}: {message.text}")
        sms = [{"number": m.number, "text": m.text} for m in sent]
        expectations = [
            self._check_path(expectation, dc09, sms)
            if expectation.dc09 is not None or expectation.sms is not None
            else self._check(expectation, events, centre_rows)
            for expectation in self.scenario.expect
        ]
        violations = self.tap.violations
        return {
            "scenario": self.scenario.name,
            "ok": all(item["ok"] for item in expectations) and not violations,
            "contract": {"messages": dict(self.tap.counts), "violations": violations},
            "hub_peak_rss_mb": None if self.hub_peak_rss_mb is None else round(self.hub_peak_rss_mb, 1),
            "events": events,
            "dc09": [
                {"code": x.code, "contact_id": x.contact_id, "sequence": x.sequence, "format": x.message_type}
                for x in dc09
            ],
            "sms": sms,
            "expectations": expectations,
            "prompts": prompts,
            "timeline": [
                {"t_s": round((t - self.timeline.t0_ns) / 1e9, 4), "source": source, "text": text}
                for t, source, text in self.timeline.sorted()
            ],
        }

    def _check_prompt(self, expectation: Any) -> dict[str, Any]:
        played = _prompts_played(self.prompts_file).count(expectation.prompt)
        ok = played == expectation.count if expectation.count is not None else played > 0
        spec = expectation.model_dump(mode="json", exclude_none=True)
        wanted = f"{expectation.count}" if expectation.count is not None else "at least once"
        return {
            "expect": spec,
            "ok": ok,
            "detail": f"prompt {expectation.prompt} played {played} time(s)" + ("" if ok else f" — expected {wanted}"),
        }

    def _check_path(self, expectation: Any, dc09: list[Any], sms: list[dict[str, Any]]) -> dict[str, Any]:
        """A `dc09` or `sms` expectation: what the alarm receiver or the modem got."""
        if expectation.dc09 is not None:
            got = sum(1 for x in dc09 if expectation.dc09 in (x.code, x.contact_id))
            what = f"the DC-09 receiver got {got} signal(s) coded {expectation.dc09}"
        else:
            got = len(sms)
            what = f"the modem sent {got} SMS"
        ok = got == expectation.count if expectation.count is not None else got > 0
        wanted = f"{expectation.count}" if expectation.count is not None else "at least one"
        return {
            "expect": expectation.model_dump(mode="json", exclude_none=True),
            "ok": ok,
            "detail": what + ("" if ok else f" — expected {wanted}"),
        }

    def _stimulus_for(self, device: str | None, observed_mono_ns: int) -> Stimulus | None:
        earlier = [s for s in self.stimuli if s.device == device and s.mono_ns <= observed_mono_ns]
        return earlier[-1] if earlier else None

    def _check(
        self, expectation: Any, events: list[dict[str, Any]], centre_rows: list[tuple[Any, ...]]
    ) -> dict[str, Any]:
        if expectation.prompt is not None:
            return self._check_prompt(expectation)
        kind = EventType(expectation.event).value
        matching = [e for e in events if e["type"] == kind and (expectation.device in (None, e["device"]))]
        at_centre = [r for r in centre_rows if r[3] == kind and (expectation.device in (None, r[4]))]
        delivered = sum(1 for e in matching if e["delivered"])
        copies = sum(r[5] for r in at_centre)
        problems = []
        if expectation.count is not None and len(matching) != expectation.count:
            problems.append(f"expected {expectation.count}, the hub journaled {len(matching)}")
        if expectation.count is None and not matching:
            problems.append("the hub journaled none")
        if expectation.delivered is True and delivered != len(matching):
            problems.append(f"only {delivered} of {len(matching)} acknowledged by the centre")
        if expectation.delivered is False and delivered:
            problems.append(f"{delivered} delivered, expected none")
        if expectation.delivered and len(at_centre) != len(matching):
            problems.append(f"the centre holds {len(at_centre)} records for {len(matching)} events")
        who = f" from {expectation.device}" if expectation.device else ""
        detail = (
            f"{len(matching)} {kind}{who} journaled, {delivered} acknowledged; the centre holds "
            f"{len(at_centre)} record(s) from {copies} cop{'y' if copies == 1 else 'ies'}"
        )
        spec = expectation.model_dump(mode="json", exclude_none=True)
        return {
            "expect": spec,
            "ok": not problems,
            "detail": detail + ("" if not problems else " — " + "; ".join(problems)),
        }


async def _duplicate_acks(broker: PrivateBroker, hub_id: str) -> None:
    """Every ack the centre sends the hub is sent again, each followed by an ack for an event id the
    hub never had: the hub must count each alarm once and ignore what it does not know."""
    options = SubscribeOptions(qos=1, noLocal=True)
    while True:
        with contextlib.suppress(aiomqtt.MqttError):
            async with mqtt_client(broker.host, broker.port, f"ack-noise-{os.getpid()}") as client:
                await client.subscribe(f"anju/v1/+/{hub_id}/ack", options=options)
                await client.subscribe(f"anju/v1/+/{hub_id}/acks", options=options)
                async for message in client.messages:
                    payload = message.payload if isinstance(message.payload, bytes) else b""
                    await client.publish(str(message.topic), payload, qos=1)
                    if str(message.topic).endswith("/ack"):
                        unknown = {**json.loads(payload), "event_id": str(uuid.uuid4())}
                        await client.publish(str(message.topic), json.dumps(unknown).encode(), qos=1)
        await asyncio.sleep(0.2)


def _damage_journal(path: Path, how: str) -> None:
    """Delete the journal (and its WAL), or overwrite its first pages with noise."""
    if how == "delete":
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        return
    with path.open("r+b") as journal:
        journal.write(b"this is not a database any more " * 256)


def _prompts_played(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]


def _siren_onsets(bench: PinBench) -> list[int]:
    """Times the siren went on after having been off for at least 2 s (the start of each sounding)."""
    onsets, last_off = [], None
    for change in bench.outputs:
        if change.pin != SIREN_PIN:
            continue
        if change.level and (last_off is None or change.mono_ns - last_off > 2_000_000_000 or not onsets):
            onsets.append(change.mono_ns)
        if not change.level:
            last_off = change.mono_ns
    return onsets


def _ms(later: int | None, stimulus: Stimulus | None) -> float | None:
    if later is None or stimulus is None:
        return None
    return round((later - stimulus.mono_ns) / 1e6, 3)


def _read_rows(path: Path, query: str) -> list[tuple[Any, ...]]:
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        try:
            return db.execute(query).fetchall()
        except sqlite3.OperationalError:
            return []  # the hub has not created its tables yet


def format_report(result: dict[str, Any]) -> str:
    """The human-readable account printed by `anju simulate` and `anju demo`."""
    lines = [f"Scenario {result['scenario']}", ""]
    lines += [f"{entry['t_s']:8.3f} s  {entry['source']:<8} {entry['text']}" for entry in result["timeline"]]
    lines += ["", "Events:"]
    for event in result["events"]:
        alert = "—" if event["local_alert_ms"] is None else f"{event['local_alert_ms']:.1f} ms"
        ack = "—" if event["ack_ms"] is None else f"{event['ack_ms']:.1f} ms"
        lines.append(
            f"  #{event['seq']:<3} {event['type']:<18} {event['device'] or '-':<12} local alert {alert:>9}"
            f"   acked after {ack:>10}   centre: {event['centre_records']} record, {event['centre_copies']} copies"
            + (f"   also via {', '.join(event['failover'])}" if event.get("failover") else "")
        )
    lines += ["", "Expectations:"]
    for item in result["expectations"]:
        lines.append(f"  [{'ok' if item['ok'] else 'FAILED'}] {item['detail']}")
    contract = result["contract"]
    lines += [
        "",
        f"Contract: {sum(contract['messages'].values())} messages checked against the schemas"
        f" ({', '.join(f'{k} {v}' for k, v in sorted(contract['messages'].items()))});"
        f" {len(contract['violations'])} violation(s)",
    ]
    lines += [f"  ! {violation}" for violation in contract["violations"][:20]]
    lines += ["", "All expectations held." if result["ok"] else "Some expectations FAILED."]
    return "\n".join(lines)


async def run_scenario(
    scenario: Scenario,
    workdir: Path | None = None,
    echo: Callable[[str], None] | None = None,
    prompt_cache: Path | None = None,
) -> dict[str, Any]:
    if workdir is not None:
        return await ScenarioRunner(scenario, workdir, prompt_cache, echo).run()
    with tempfile.TemporaryDirectory(prefix="anju-scenario-") as tmp:
        return await ScenarioRunner(scenario, Path(tmp), prompt_cache, echo).run()
