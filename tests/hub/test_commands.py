"""Commands from the centre, against a real private mosquitto and the reference centre.

Signed commands are carried out and answered on `cmd_result` (say is spoken, status and events
return data); unsigned, forged, stale, future, repeated and misaddressed ones are refused,
answered and reported to the centre as `info.command_refused`. A configuration is applied with a
restart, and one that is invalid, or fails at start, leaves the old file byte for byte (rolled
back). Most tests run the hub in this process; the configuration tests run `anju run` as a process,
so its restart loop is the real run_forever. Every answer is checked against the contract.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_bridge import command_cli
from cloud_bridge.certs import CaFiles, init_ca
from cloud_bridge.commands import (
    BadSignature,
    canonical,
    load_ca_public_key,
    new_command,
    sign_command,
    verify_command,
)
from cloud_bridge.contract import ContractError, decode, topic
from cloud_bridge.mqtt import mqtt_client
from edge.audio import MESSAGE_PREFIX, SilentPlayer, VoicePrompts, _QueuedPlayer, clean_message
from hub.config import HubConfig
from hub.model import Event
from hub.service import HubService
from simulator.broker import PrivateBroker, free_port
from simulator.centre import Centre

COUNTY, HUB = "minle", "hub-cmd"
WAIT = 20.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ca(tmp_path: Path) -> CaFiles:
    return init_ca(tmp_path / "ca", COUNTY)


@pytest.fixture
def stranger(tmp_path: Path) -> CaFiles:
    """Another county's CA: its signatures must not count here."""
    return init_ca(tmp_path / "stranger-ca", "elsewhere")


def settings_for(tmp_path: Path, broker: PrivateBroker, prompt_cache: Path, ca: CaFiles) -> dict[str, Any]:
    return {
        "hub_id": HUB,
        "county": COUNTY,
        "household_id": "hh-cmd",
        "data_dir": str(tmp_path / "hub"),
        "gpio": {"pin_factory": "mock"},
        "audio": {"player": "record", "cache_dir": str(prompt_cache)},
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
            "command_ca": str(ca.cert),
        },
        "outbox": {"resend_first_s": 0.5, "resend_cap_s": 1.0},
        "clock": {"sync": "assume"},  # the hub judges a command's age by its clock (see the unsynced test)
        "devices": [{"id": "cord", "kind": "pullcord", "transport": "gpio", "pin": 17}],
    }


class Desk:
    """The centre's command desk: publishes commands, collects the hub's answers (each checked
    against the contract)."""

    def __init__(self, broker: PrivateBroker) -> None:
        self.broker = broker
        self.answers: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.ready = asyncio.Event()
        self._changed = asyncio.Event()
        self._client: Any = None

    async def run(self) -> None:
        async with mqtt_client(self.broker.host, self.broker.port, f"desk-{uuid.uuid4().hex[:8]}") as client:
            await client.subscribe(topic(COUNTY, HUB, "cmd_result"), qos=1)
            self._client = client
            self.ready.set()
            async for message in client.messages:
                try:
                    self.answers.append(decode("cmd_result", message.payload))  # type: ignore[arg-type]
                except ContractError as exc:
                    self.violations.append(str(exc))
                self._changed.set()

    async def publish(self, message: dict[str, Any] | bytes) -> None:
        payload = message if isinstance(message, bytes) else json.dumps(message, ensure_ascii=False).encode()
        await self._client.publish(topic(COUNTY, HUB, "cmd"), payload, qos=1)

    async def answer(self, cmd_id: str | None, after: int = 0, timeout: float = WAIT) -> dict[str, Any]:
        """The first answer naming `cmd_id` among those from index `after` on."""
        async with asyncio.timeout(timeout):
            while True:
                found = [a for a in self.answers[after:] if a["cmd_id"] == cmd_id]
                if found:
                    return found[0]
                self._changed.clear()
                await self._changed.wait()

    async def send(self, message: dict[str, Any]) -> dict[str, Any]:
        after = len(self.answers)
        await self.publish(message)
        return await self.answer(message.get("cmd_id"), after)


def signed(ca: CaFiles, command: str, args: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    message = new_command(HUB, command, args) | fields
    return sign_command(ca.key, message)


async def until(condition: Callable[[], Any], timeout: float = WAIT) -> Any:
    async with asyncio.timeout(timeout):
        while not (value := condition()):
            await asyncio.sleep(0.02)
    return value


class Hub:
    """A hub service in this process, its centre and a command desk."""

    def __init__(self, service: HubService, centre: Centre, desk: Desk) -> None:
        self.service = service
        self.centre = centre
        self.desk = desk

    async def pull(self) -> None:
        pin = self.service.inputs._inputs[0].button.pin
        pin.drive_low()
        await asyncio.sleep(0.12)  # held past the 50 ms debounce, as a person pulls
        pin.drive_high()

    def centre_events(self, event_type: str) -> list[dict[str, Any]]:
        return [r for r in self.centre.store.events() if r["type"] == event_type]

    async def refused(self, cmd_id: str | None) -> Event:
        """The `info.command_refused` event the hub journaled for `cmd_id`."""
        async with asyncio.timeout(WAIT):
            while True:
                for record in await self.service.journal.recent(100):
                    event = record.event
                    if event.type.value == "info.command_refused" and event.details["cmd_id"] == cmd_id:
                        return event
                await asyncio.sleep(0.02)

    def played(self) -> list[dict[str, Any]]:
        path = self.service.config.data_dir / "prompts-played.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
async def start(
    tmp_path: Path, broker: PrivateBroker, prompt_cache: Path, ca: CaFiles
) -> AsyncIterator[Callable[..., Awaitable[Hub]]]:
    background: list[asyncio.Task[Any]] = []
    services: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
    centre = Centre(broker.host, broker.port, tmp_path / "centre.sqlite3")
    desk = Desk(broker)
    background += [asyncio.create_task(centre.run()), asyncio.create_task(desk.run())]

    async def starter(**overrides: Any) -> Hub:
        for stop, task in services:  # a restart: the running service stops first
            stop.set()
            await asyncio.wait_for(task, WAIT)
        services.clear()
        settings = settings_for(tmp_path, broker, prompt_cache, ca) | overrides
        service = HubService(HubConfig.model_validate(settings))
        stop = asyncio.Event()
        services.append((stop, asyncio.create_task(service.run(stop))))
        await asyncio.wait_for(service.ready.wait(), WAIT)
        await asyncio.wait_for(service.uplink.connected.wait(), WAIT)
        await asyncio.wait_for(centre.connected.wait(), WAIT)
        await asyncio.wait_for(desk.ready.wait(), WAIT)
        return Hub(service, centre, desk)

    yield starter
    for stop, _ in services:
        stop.set()
    await asyncio.wait([task for _, task in services], timeout=WAIT)
    for task in background:
        task.cancel()
    await asyncio.gather(*background, return_exceptions=True)
    assert desk.violations == [], "every answer must match the contract"


# --- carried out -------------------------------------------------------------------------------


async def test_a_signed_say_is_spoken_in_the_hubs_voice(start: Any, ca: CaFiles) -> None:
    hub = await start()
    command = signed(ca, "say", {"text": "王奶奶，\x07请按时\n吃药。\u202e"})
    answer = await hub.desk.send(command)
    assert (answer["outcome"], answer["code"]) == ("ok", "done")
    assert answer["data"] == {"text": "王奶奶，请按时 吃药。"}, "control characters are gone"
    name = f"{MESSAGE_PREFIX}{command['cmd_id']}"
    (line,) = await until(lambda: [p for p in hub.played() if p["prompt"] == name])
    voice = VoicePrompts(SilentPlayer(), hub.service.config.data_dir)
    assert line["bytes"] == len(voice.render_message("王奶奶，请按时 吃药。")), "that text, in the hub's voice"


async def test_status_events_and_silence_return_their_data(start: Any, ca: CaFiles) -> None:
    hub = await start()
    await hub.pull()
    await until(lambda: hub.centre_events("alarm.emergency"))
    assert hub.service.siren.pattern == "emergency"

    status = await hub.desk.send(signed(ca, "status"))
    assert status["outcome"] == "ok"
    assert status["data"]["hub_id"] == HUB and status["data"]["uplink_connected"] is True
    assert set(status["data"]) == set(await hub.service._status({})), "the control socket's status"

    events = await hub.desk.send(signed(ca, "events", {"limit": 5}))
    assert events["outcome"] == "ok"
    (alarm,) = [e for e in events["data"]["events"] if e["type"] == "alarm.emergency"]
    assert alarm["device_id"] == "cord" and alarm["seq"] >= 1
    assert len(events["data"]["events"]) <= 5

    silence = await hub.desk.send(signed(ca, "silence"))
    assert (silence["outcome"], silence["data"]) == ("ok", {"silenced": True})
    assert hub.service.siren.pattern is None


async def test_a_test_call_answers_per_path(start: Any, ca: CaFiles) -> None:
    hub = await start()
    answer = await hub.desk.send(signed(ca, "test", {"wait_s": 10}))
    assert (answer["outcome"], answer["code"]) == ("ok", "done")
    assert [(p["path"], p["ok"]) for p in answer["data"]["paths"]] == [("mqtt", True)]
    await until(lambda: hub.centre_events("test.call"))


async def test_a_command_with_arguments_of_another_command_is_refused(start: Any, ca: CaFiles) -> None:
    hub = await start()
    answer = await hub.desk.send(signed(ca, "silence", {"text": "hello"}))
    assert (answer["outcome"], answer["code"]) == ("refused", "bad_args")
    assert "text" in answer["reason"]


# --- refused, answered and reported ------------------------------------------------------------


async def _refused(hub: Hub, message: dict[str, Any] | bytes, code: str, cmd_id: str | None) -> dict[str, Any]:
    after = len(hub.desk.answers)
    await hub.desk.publish(message)
    answer = await hub.desk.answer(cmd_id, after)
    assert (answer["outcome"], answer["code"]) == ("refused", code), answer
    journaled = await hub.refused(cmd_id)
    assert journaled.details["code"] == code
    await until(lambda: journaled.event_id in {e["event_id"] for e in hub.centre_events("info.command_refused")})
    return answer


async def test_an_unsigned_command_is_refused_and_reported(start: Any) -> None:
    hub = await start()
    command = new_command(HUB, "silence")
    await hub.pull()
    await until(lambda: hub.centre_events("alarm.emergency"))
    await _refused(hub, command, "unsigned", command["cmd_id"])
    assert hub.service.siren.pattern == "emergency", "the unsigned silence did nothing"


async def test_a_command_signed_by_another_ca_is_refused(start: Any, stranger: CaFiles) -> None:
    hub = await start()
    command = signed(stranger, "say", {"text": "假的"})
    answer = await _refused(hub, command, "bad_signature", command["cmd_id"])
    assert "county CA" in answer["reason"]
    assert not [p for p in hub.played() if p["prompt"].startswith(MESSAGE_PREFIX)]


async def test_a_command_changed_after_signing_is_refused(start: Any, ca: CaFiles) -> None:
    hub = await start()
    command = signed(ca, "say", {"text": "你好"})
    command["args"]["text"] = "快开门"
    await _refused(hub, command, "bad_signature", command["cmd_id"])


async def test_a_replayed_command_is_refused_even_after_a_restart(start: Any, ca: CaFiles) -> None:
    hub = await start()
    command = signed(ca, "status")
    assert (await hub.desk.send(command))["outcome"] == "ok"
    await _refused(hub, command, "replayed", command["cmd_id"])
    hub = await start()  # a new service on the same data directory
    answer = await hub.desk.send(command)
    assert (answer["outcome"], answer["code"]) == ("refused", "replayed")


async def test_stale_and_future_commands_are_refused_by_the_hubs_clock(start: Any, ca: CaFiles) -> None:
    hub = await start()
    now = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    hub.service.commands.now = lambda: now
    limit = hub.service.config.mqtt.command_max_age_s

    def at(moment: datetime) -> dict[str, Any]:
        return signed(ca, "status", issued_at=moment.isoformat().replace("+00:00", "Z"))

    old = at(now - timedelta(seconds=limit + 1))
    await _refused(hub, old, "stale", old["cmd_id"])
    ahead = at(now + timedelta(seconds=31))
    await _refused(hub, ahead, "future", ahead["cmd_id"])
    for fine in (at(now - timedelta(seconds=limit - 1)), at(now + timedelta(seconds=29))):
        assert (await hub.desk.send(fine))["outcome"] == "ok"


async def test_with_its_clock_not_synchronised_the_hub_takes_only_commands_newer_than_the_last(
    start: Any, ca: CaFiles, tmp_path: Path
) -> None:
    """After a power cut a Pi's clock may be anything until NTP answers: the age of a command cannot
    be judged, so a command is taken if it is newer than the newest carried out (a replay of an older
    one is refused), whatever the hub's clock says."""
    hub = await start(clock={"sync": f"file:{tmp_path / 'never-synchronised'}"})
    assert not hub.service.timesync.trusted
    hub.service.commands.now = lambda: datetime(1970, 1, 1, tzinfo=UTC)  # where a Pi without RTC may start

    def at(moment: datetime) -> dict[str, Any]:
        return signed(ca, "status", issued_at=moment.isoformat().replace("+00:00", "Z"))

    real = datetime.now(UTC)
    first, older, newer = at(real - timedelta(seconds=5)), at(real - timedelta(seconds=60)), at(real)
    assert (await hub.desk.send(first))["outcome"] == "ok", "not refused as 'future' by a clock in 1970"
    answer = await _refused(hub, older, "stale", older["cmd_id"])
    assert "not synchronised" in answer["reason"]
    assert (await hub.desk.send(newer))["outcome"] == "ok"
    hub = await start(clock={"sync": f"file:{tmp_path / 'never-synchronised'}"})  # restarted: it remembers
    replayed_order = at(real - timedelta(seconds=1))
    await _refused(hub, replayed_order, "stale", replayed_order["cmd_id"])


async def test_a_command_for_another_hub_is_refused(start: Any, ca: CaFiles) -> None:
    hub = await start()
    command = sign_command(ca.key, new_command("hub-other", "silence"))
    await _refused(hub, command, "other_hub", command["cmd_id"])


async def test_a_malformed_command_is_refused_and_the_hub_carries_on(start: Any, ca: CaFiles) -> None:
    hub = await start()
    await _refused(hub, b"\xff not json", "malformed", None)
    broken = signed(ca, "status") | {"command": "self-destruct"}
    await _refused(hub, broken, "malformed", broken["cmd_id"])
    assert (await hub.desk.send(signed(ca, "status")))["outcome"] == "ok"


# --- the verifier never crashes -----------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=st.dictionaries(st.text(max_size=12), _json, max_size=8), signature=_json)
def test_the_verifier_refuses_anything_unsigned_with_bad_signature_only(
    ca: CaFiles, message: dict[str, Any], signature: Any
) -> None:
    key = load_ca_public_key(ca.cert)
    with pytest.raises(BadSignature):
        verify_command(message | {"signature": signature}, key)
    with pytest.raises(BadSignature):
        verify_command({k: v for k, v in message.items() if k != "signature"}, key)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=40), limit=st.integers(min_value=1, max_value=100))
def test_a_signature_covers_every_field(ca: CaFiles, text: str, limit: int) -> None:
    key = load_ca_public_key(ca.cert)
    command = sign_command(ca.key, new_command(HUB, "events", {"limit": limit}) | {"note": text})
    verify_command(json.loads(json.dumps(command)), key)  # survives the trip through JSON
    for changed in ({"limit": limit % 100 + 1}, {}):
        with pytest.raises(BadSignature):
            verify_command(command | {"args": changed}, key)
    assert canonical(command) == canonical({k: command[k] for k in reversed(list(command))})


# --- the voice: a centre's message never delays an alarm prompt ---------------------------------


class GatedPlayer(_QueuedPlayer):
    """Plays into a list; the first playback waits for `gate`; `_interrupt` cuts the playing one."""

    def __init__(self) -> None:
        self.heard: list[str] = []
        self.gate = threading.Event()
        self.started = threading.Event()
        self.cut = threading.Event()
        super().__init__()

    def _render(self, name: str, wav: bytes) -> None:
        self.started.set()
        if not self.gate.is_set():
            self.gate.wait(WAIT)
            if self.cut.is_set():
                self.heard.append(f"{name} (cut)")
                return
        self.heard.append(name)

    def _interrupt(self) -> bool:
        if self.gate.is_set():
            return False
        self.cut.set()
        self.gate.set()
        return True


def test_a_prompt_queued_after_a_message_goes_first() -> None:
    player = GatedPlayer()
    player.play("message:m1", b"", False)  # playing: waits at the gate
    assert player.started.wait(WAIT)
    player.play("message:m2", b"", False)
    player.play("centre_received", b"", False)
    player.gate.set()
    player.close()
    assert player.heard == ["message:m1", "centre_received", "message:m2"]


def test_an_alarm_prompt_cuts_a_message_which_is_said_again_after_it() -> None:
    player = GatedPlayer()
    player.play("message:m1", b"", False)
    assert player.started.wait(WAIT)
    player.play("message:m2", b"", False)
    player.play("help_sent", b"", True)  # an alarm: at once, and nothing the centre said is dropped
    player.close()
    assert player.heard == ["message:m1 (cut)", "help_sent", "message:m1", "message:m2"]


def test_a_message_is_cleaned_and_capped() -> None:
    assert clean_message("a\x00b\tc\r\nd\u200b e\u202e") == "ab c d e"
    assert len(clean_message("长" * 500)) == 200
    assert clean_message("\x1b[31m") == "[31m"


# --- a new configuration: applied with a restart, or rolled back byte for byte -------------------


def hub_toml(tmp_path: Path, broker: PrivateBroker, prompt_cache: Path, ca: CaFiles, extra: str = "") -> str:
    return f"""hub_id = "{HUB}"
county = "{COUNTY}"
household_id = "hh-cmd"
data_dir = "{tmp_path / "hub"}"

[gpio]
pin_factory = "mock"

[audio]
player = "record"
cache_dir = "{prompt_cache}"

[mqtt]
host = "{broker.host}"
port = {broker.port}
reconnect_min_s = 0.1
reconnect_max_s = 0.5
command_ca = "{ca.cert}"

[[devices]]
id = "cord"
kind = "pullcord"
transport = "gpio"
pin = 17
{extra}"""


class HubProcess:
    """`anju run --config FILE` as a separate process, as systemd would start it."""

    def __init__(self, config: Path, log: Path) -> None:
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hub.cli", "run", "--config", str(config)],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.log = log

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


async def up(desk: Desk, ca: CaFiles, hub: HubProcess) -> None:
    """Wait until the hub answers a status command. (Until it first subscribes, the broker keeps
    no session for it and drops what is published: so ask again each second.)"""
    async with asyncio.timeout(60):
        while True:
            assert hub.process.poll() is None, hub.log.read_text()[-3000:]
            probe = signed(ca, "status")
            await desk.publish(probe)
            with contextlib.suppress(TimeoutError):
                await desk.answer(probe["cmd_id"], timeout=1.0)
                return


@pytest.fixture
async def running_hub(
    tmp_path: Path, broker: PrivateBroker, prompt_cache: Path, ca: CaFiles
) -> AsyncIterator[tuple[Path, Desk, Centre, HubProcess]]:
    config = tmp_path / "hub.toml"
    config.write_text(hub_toml(tmp_path, broker, prompt_cache, ca))
    centre = Centre(broker.host, broker.port, tmp_path / "centre.sqlite3")
    desk = Desk(broker)
    tasks = [asyncio.create_task(centre.run()), asyncio.create_task(desk.run())]
    await asyncio.wait_for(desk.ready.wait(), WAIT)
    hub = HubProcess(config, tmp_path / "hub.log")
    try:
        await up(desk, ca, hub)
        await asyncio.wait_for(centre.connected.wait(), WAIT)
        yield config, desk, centre, hub
    finally:
        hub.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert desk.violations == []


async def test_a_signed_configuration_is_applied_with_a_restart(
    running_hub: Any, tmp_path: Path, broker: PrivateBroker, prompt_cache: Path, ca: CaFiles
) -> None:
    config, desk, _, hub = running_hub
    before = config.read_bytes()
    new = hub_toml(
        tmp_path,
        broker,
        prompt_cache,
        ca,
        '\n[[devices]]\nid = "cord-kitchen"\nkind = "pullcord"\ntransport = "gpio"\npin = 23\n',
    )
    answer = await desk.send(signed(ca, "config", {"toml": new, "trial_s": 30}))
    assert (answer["outcome"], answer["code"]) == ("ok", "done"), hub.log.read_text()[-3000:]
    assert answer["data"]["devices"] == ["cord", "cord-kitchen"], "the new device is there"
    assert config.read_text() == new
    assert config.with_name("hub.toml.last-good").read_bytes() == before
    assert not config.with_name("hub.toml.trial.json").exists()
    assert "starts again" in hub.log.read_text(), "the service restarted"
    status = await desk.send(signed(ca, "status"))
    assert status["outcome"] == "ok" and status["data"]["uplink_connected"] is True


async def test_a_bad_configuration_is_refused_or_rolled_back_and_the_old_file_stays(
    running_hub: Any, tmp_path: Path, broker: PrivateBroker, prompt_cache: Path, ca: CaFiles
) -> None:
    config, desk, centre, hub = running_hub
    before = config.read_bytes()

    invalid = hub_toml(tmp_path, broker, prompt_cache, ca).replace("pin = 17", "pin = 99")
    answer = await desk.send(signed(ca, "config", {"toml": invalid}))
    assert (answer["outcome"], answer["code"]) == ("refused", "bad_config")
    assert "devices[0].pin" in answer["reason"]
    assert config.read_bytes() == before

    other = hub_toml(tmp_path, broker, prompt_cache, ca).replace(f'hub_id = "{HUB}"', 'hub_id = "hub-else"')
    answer = await desk.send(signed(ca, "config", {"toml": other}))
    assert (answer["outcome"], answer["code"]) == ("refused", "other_hub")

    no_dongle = hub_toml(
        tmp_path,
        broker,
        prompt_cache,
        ca,
        f'\n[zigbee]\nport = "{tmp_path / "no-such-dongle"}"\n\n[[devices]]\nid = "smoke"\nkind = "smoke"\n'
        'transport = "zigbee"\nieee = "00:12:4b:00:1c:dd:ee:01"\n',
    )
    answer = await desk.send(signed(ca, "config", {"toml": no_dongle, "trial_s": 30}))
    assert (answer["outcome"], answer["code"]) == ("failed", "rolled_back"), hub.log.read_text()[-3000:]
    assert "no-such-dongle" in answer["reason"]
    assert config.read_bytes() == before, "the old file, byte for byte"

    closed_port = free_port()
    unreachable = hub_toml(tmp_path, broker, prompt_cache, ca).replace(f"port = {broker.port}", f"port = {closed_port}")
    answer = await desk.send(signed(ca, "config", {"toml": unreachable, "trial_s": 2}))
    assert (answer["outcome"], answer["code"]) == ("failed", "rolled_back")
    assert f"connect to the broker 127.0.0.1:{closed_port} within 2 s" in answer["reason"]
    assert config.read_bytes() == before

    rolled_back = await until(lambda: [r for r in centre.store.events() if r["type"] == "info.config_rolled_back"])
    assert len(rolled_back) >= 1
    status = await desk.send(signed(ca, "status"))
    assert status["outcome"] == "ok" and status["data"]["uplink_connected"] is True, "the hub still works"
    with contextlib.suppress(FileNotFoundError):
        assert not config.with_name("hub.toml.trial.json").exists()


# --- a configuration that would cut the hub off, or one on top of another, never starts -----------


def _on_trial(hub: Hub, tmp_path: Path, broker: PrivateBroker, prompt_cache: Path, ca: CaFiles) -> asyncio.Event:
    """Give the in-process hub what run_forever gives it: its file, a ConfigTrial and a restart
    (here it only records that the hub asked for one)."""
    from hub.config_store import ConfigStore
    from hub.config_trial import ConfigTrial

    path = tmp_path / "hub.toml"
    path.write_text(hub_toml(tmp_path, broker, prompt_cache, ca))
    restarted = asyncio.Event()
    hub.service.commands.trial = ConfigTrial(ConfigStore(path))
    hub.service.commands.restart = restarted.set
    return restarted


async def _answer_or_restart(hub: Hub, message: dict[str, Any], restarted: asyncio.Event) -> dict[str, Any] | None:
    """The hub's answer to a config command, or None if it restarted to try the configuration."""
    after = len(hub.desk.answers)
    await hub.desk.publish(message)
    answer = asyncio.create_task(hub.desk.answer(message["cmd_id"], after))
    restart = asyncio.create_task(restarted.wait())
    done, pending = await asyncio.wait({answer, restart}, timeout=WAIT, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return answer.result() if answer in done else None


async def test_a_configuration_that_would_cut_the_hub_off_is_refused(
    start: Any, tmp_path: Path, broker: PrivateBroker, prompt_cache: Path, ca: CaFiles
) -> None:
    hub = await start()
    restarted = _on_trial(hub, tmp_path, broker, prompt_cache, ca)
    config = tmp_path / "hub.toml"
    before = config.read_bytes()
    current = hub_toml(tmp_path, broker, prompt_cache, ca)

    elsewhere = current.replace(f'data_dir = "{tmp_path / "hub"}"', f'data_dir = "{tmp_path / "elsewhere"}"')
    answer = await _answer_or_restart(hub, signed(ca, "config", {"toml": elsewhere}), restarted)
    assert answer is not None, "the hub restarted on an empty journal, leaving its unacknowledged alarms behind"
    assert (answer["outcome"], answer["code"]) == ("refused", "bad_config")
    assert "data_dir" in answer["reason"]

    deaf = current.replace(f'command_ca = "{ca.cert}"', f'command_ca = "{tmp_path / "no-such-ca.crt"}"')
    answer = await _answer_or_restart(hub, signed(ca, "config", {"toml": deaf}), restarted)
    assert answer is not None, "the hub would refuse every later command, even the one that fixes it"
    assert (answer["outcome"], answer["code"]) == ("refused", "bad_config")
    assert "no-such-ca.crt" in answer["reason"]

    assert not restarted.is_set() and config.read_bytes() == before
    assert not config.with_name("hub.toml.trial.json").exists()


async def test_a_second_configuration_is_refused_until_the_first_has_its_answer(
    start: Any, tmp_path: Path, broker: PrivateBroker, prompt_cache: Path, ca: CaFiles
) -> None:
    hub = await start()
    restarted = _on_trial(hub, tmp_path, broker, prompt_cache, ca)
    config = tmp_path / "hub.toml"
    before = config.read_bytes()
    unreachable = hub_toml(tmp_path, broker, prompt_cache, ca).replace(f"port = {broker.port}", f"port = {free_port()}")
    first = signed(ca, "config", {"toml": unreachable, "trial_s": 5})
    assert await _answer_or_restart(hub, first, restarted) is None, "the first one is being tried"

    # A second one, before the restart or while the first is on trial: had it been written, the
    # untried first file would have become the "last good" one, and the roll-back its prisoner.
    second = signed(ca, "config", {"toml": hub_toml(tmp_path, broker, prompt_cache, ca, "\n# second\n")})
    answer = await hub.desk.send(second)
    assert (answer["outcome"], answer["code"]) == ("refused", "busy")
    assert first["cmd_id"] in answer["reason"]
    assert config.with_name("hub.toml.last-good").read_bytes() == before, "the file that worked"
    assert json.loads(config.with_name("hub.toml.trial.json").read_text())["cmd_id"] == first["cmd_id"]
    assert config.read_text() == unreachable


async def test_a_message_being_rendered_does_not_hold_up_the_centres_acks(
    start: Any, tmp_path: Path, ca: CaFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await start()
    espeak = shutil.which("espeak-ng")
    assert espeak is not None
    gate, started, bin_dir = tmp_path / "gate", tmp_path / "espeak-started", tmp_path / "bin"
    os.mkfifo(gate)
    bin_dir.mkdir()
    slow = bin_dir / "espeak-ng"  # espeak-ng that waits (a loaded Pi, a long text) until the test opens the gate
    slow.write_text(f'#!/bin/sh\n: > "{started}"\ncat "{gate}" > /dev/null\nexec "{espeak}" "$@"\n')
    slow.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    say = signed(ca, "say", {"text": "请稍等"})
    after = len(hub.desk.answers)
    await hub.desk.publish(say)
    try:
        await until(started.exists)
        await hub.pull()
        await until(lambda: hub.service._acknowledged)  # the alarm's ack, read while the voice renders
        assert not [a for a in hub.desk.answers[after:] if a["cmd_id"] == say["cmd_id"]]
    finally:
        await asyncio.to_thread(lambda: gate.open("w").close())  # let espeak-ng go on
    answer = await hub.desk.answer(say["cmd_id"], after)
    assert (answer["outcome"], answer["code"]) == ("ok", "done")


async def test_a_deeply_nested_command_is_refused_without_dropping_the_connection(
    start: Any, ca: CaFiles, caplog: pytest.LogCaptureFixture
) -> None:
    hub = await start()
    await _refused(hub, b"[" * 100_000 + b"]" * 100_000, "malformed", None)
    assert "uplink failed" not in caplog.text, "the session the alarms go over stayed up"
    assert (await hub.desk.send(signed(ca, "status")))["outcome"] == "ok"


# --- `anju command`: the centre's side ----------------------------------------------------------


async def test_the_command_line_signs_sends_and_prints_the_answer(
    start: Any, ca: CaFiles, broker: PrivateBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = await start()
    parser = argparse.ArgumentParser(prog="anju")
    command_cli.add_parser(parser.add_subparsers(dest="command"))
    common = ["command", "--ca", str(ca.cert.parent), "--hub", f"{COUNTY}/{HUB}", "--port", str(broker.port)]

    args = parser.parse_args([*common, "--json", "say", "开门了"])
    assert await asyncio.to_thread(command_cli.main, args) == 0
    answer = json.loads(capsys.readouterr().out)
    assert (answer["command"], answer["outcome"], answer["data"]) == ("say", "ok", {"text": "开门了"})
    await until(lambda: [p for p in hub.played() if p["prompt"] == f"{MESSAGE_PREFIX}{answer['cmd_id']}"])

    args = parser.parse_args([*common, "events", "--limit", "3"])
    assert await asyncio.to_thread(command_cli.main, args) == 0
    assert capsys.readouterr().out.startswith("ok (done): the last")

    args = parser.parse_args([*common, "events", "--limit", "0"])
    assert await asyncio.to_thread(command_cli.main, args) == 2
    assert "--limit 0" in capsys.readouterr().err
