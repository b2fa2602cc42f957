"""`anju doctor` against a simulated household: the private mosquitto, the fake BlueZ on its own
D-Bus, the virtual CC2652 and the virtual 4G modem on ptys, the DC-09 receiver, simulated pins.

With the hub running the doctor asks it and leaves its radios alone; with the hub stopped it
probes them itself (SYS_PING / SYS_VERSION, a BLE scan, AT commands). A broker that cannot be
reached, or a dongle pulled out, is a FAIL with its fix and exit status 1; a bad file is 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import tty
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import yaml

from hub import doctor
from simulator.runner import ScenarioRunner
from simulator.scenario import Scenario, Step

HOUSEHOLD = """
name: doctor
household: {id: hh-0042, county: minle}
devices:
  - {id: cord-bath, kind: pullcord, transport: gpio, pin: 17, room: bathroom}
  - {id: pendant, kind: pendant, transport: ble, mac: "A4:C1:38:00:00:42", key: 231d39c1d7cc1ab1aee224cd096db932}
  - {id: smoke-kitchen, kind: smoke, transport: zigbee, ieee: "00:0d:6f:00:0a:90:69:e7"}
uplinks:
  - {type: mqtt}
  - {type: dc09, account: "1234", key: "ANJU-TEST-KEY-16", key_format: ascii, receiver: "1", format: SIA-DCS}
  - {type: sms, numbers: ["+8612345678901"]}
steps: []
"""


async def _doctor(config: Path, capsys: pytest.CaptureFixture[str], *, as_json: bool = False) -> tuple[int, str]:
    status = await asyncio.to_thread(doctor.main, argparse.Namespace(config=config, json=as_json))
    return status, capsys.readouterr().out


def _line(output: str, check: str) -> str:
    """The report's line for one check (`ok    zigbee   …`, `FAIL  device pendant  …`)."""
    return next(line for line in output.splitlines() if line[6:].startswith(check + " "))


@pytest.fixture
async def household(tmp_path: Path, prompt_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    runner = ScenarioRunner(Scenario.model_validate(yaml.safe_load(HOUSEHOLD)), tmp_path / "run", prompt_cache)
    await runner.start()
    assert runner.ble is not None
    for name, value in runner.ble.env().items():  # the doctor finds BlueZ where the hub does
        monkeypatch.setenv(name, value)
    try:
        yield runner
    finally:
        await runner.stop()


async def test_with_the_hub_running_it_is_asked_and_a_broker_out_of_reach_fails(
    household: ScenarioRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    config = household.workdir / "hub.toml"
    status, out = await _doctor(config, capsys)
    assert status == 0, out
    assert "hub hub-hh-0042, running" in out
    assert "the running hub is connected to the coordinator" in _line(out, "zigbee")
    assert "firmware Z-Stack" in _line(out, "zigbee")
    assert "the running hub scans on hci0" in _line(out, "bluetooth")
    assert "the running hub's modem" in _line(out, "modem") and "SIM READY" in _line(out, "modem")
    assert "CONNECT accepted" in _line(out, "broker") and "the running hub is connected" in out
    assert "NULL link test acknowledged" in _line(out, "dc09")
    assert "last heard" in _line(out, "device smoke-kitchen")
    assert out.rstrip().endswith("all is well")

    await household.play(Step(at=0, uplink="down", path="mqtt"))  # the home's route to the broker goes
    status, out = await _doctor(config, capsys)
    assert status == 1
    broker = _line(out, "broker")
    assert broker.startswith("FAIL") and "check the network" in broker, broker
    assert _line(out, "dc09").startswith("ok")  # the other way out still works

    status, out = await _doctor(config, capsys, as_json=True)
    document = json.loads(out)
    assert status == 1 and document["schema"] == "anju.doctor/1" and document["ok"] is False
    assert document["hub_running"] is True
    failed = [c for c in document["checks"] if c["status"] == "fail"]
    assert [c["check"] for c in failed] == ["broker"] and failed[0]["fix"]


async def test_without_the_hub_the_radios_are_probed_and_a_missing_dongle_fails(
    household: ScenarioRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    config = household.workdir / "hub.toml"
    assert household._hub is not None
    await household._hub.stop()  # the radios stay; the hub no longer owns them
    status, out = await _doctor(config, capsys)
    assert status == 0, out
    assert "hub hub-hh-0042, not running" in out
    assert "answers SYS_PING; Z-Stack 2.7.1" in _line(out, "zigbee")
    assert "hci0 scanning (passive)" in _line(out, "bluetooth")
    assert "SIM READY, signal -67 dBm, registered" in _line(out, "modem")
    assert "quick_check ok" in _line(out, "journal")

    assert household.zigbee is not None
    await household.zigbee.play(Step(at=0, radio="unplug"))
    status, out = await _doctor(config, capsys)
    assert status == 1
    zigbee = _line(out, "zigbee")
    assert zigbee.startswith("FAIL") and "no serial port" in zigbee
    assert "plug the Zigbee dongle into a USB port; `ls -l /dev/serial/by-id`" in zigbee


async def test_a_wrong_configuration_exits_2_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('hub_id = "hub-1"\ncounty = "minle"\nhousehold_id = "hh-1"\ndata_dir = "d"\n[mqtt]\nport = 0\n')
    status = await asyncio.to_thread(doctor.main, argparse.Namespace(config=config, json=False))
    assert status == 2
    assert f"{config}:6: mqtt.port" in capsys.readouterr().err


def _pty() -> tuple[int, int, str]:
    """A pseudo-terminal as a serial port: the far end (the dongle), the port as the hub holds it
    open, and the port's name."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave, os.ttyname(slave)


def _sent_to(master: int) -> bytes:
    try:
        return os.read(master, 4096)
    except BlockingIOError:
        return b""


async def test_a_hub_that_does_not_answer_keeps_its_serial_ports_to_itself(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub that is busy or hung still has the Zigbee coordinator and the modem open. The doctor
    once took "no answer on the control socket within 3 s" for "no hub" and sent SYS_PING and AT
    commands down the same ports: two readers of one tty each get part of the other's frames."""
    monkeypatch.setattr(doctor, "STATUS_TIMEOUT_S", 0.2)
    coordinator, hub_zigbee, zigbee_port = _pty()
    modem, hub_modem, modem_port = _pty()
    data = tmp_path / "hub"
    data.mkdir()
    config = tmp_path / "hub.toml"
    raw = {
        "hub_id": "hub-busy",
        "county": "minle",
        "household_id": "hh-busy",
        "data_dir": str(data),
        "gpio": {"pin_factory": "mock"},
        "audio": {"player": "record"},
        "mqtt": {"host": "127.0.0.1", "port": 9, "connect_timeout_s": 1},
        "zigbee": {"port": zigbee_port},
        "uplinks": [{"type": "mqtt"}, {"type": "sms", "port": modem_port, "numbers": ["+8612345678901"]}],
        "devices": [{"id": "smoke", "kind": "smoke", "transport": "zigbee", "ieee": "00:0d:6f:00:0a:90:69:e7"}],
    }
    config.write_text(tomli_w.dumps(raw))
    busy_hub = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # listens, never answers
    busy_hub.bind(str(data / "control.sock"))
    busy_hub.listen()
    try:
        status, out = await _doctor(config, capsys)
        document_status, document = await _doctor(config, capsys, as_json=True)
    finally:
        busy_hub.close()
        sent = _sent_to(coordinator) + _sent_to(modem)
        for fd in (coordinator, hub_zigbee, modem, hub_modem):
            os.close(fd)

    assert sent == b"", "nothing was written to the hub's serial ports"
    assert status == 1 and "hub hub-busy, there, but not answering" in out
    for check in ("zigbee", "modem", "gpio"):
        line = _line(out, check)
        assert line.startswith("FAIL") and "not probed: a hub listens on" in line, line
    assert "run `anju doctor` again in a minute" in _line(out, "zigbee")
    report = json.loads(document)
    assert document_status == 1 and report["hub_running"] is True and report["hub_answered"] is False


def test_the_journal_check_is_cut_short_on_a_large_journal_and_never_advises_deleting_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """quick_check reads the whole journal (hundreds of MB on a hub that has run for a while): it
    now stops at its share of the check's time instead of leaving a thread the doctor waits for at
    exit. And a damaged journal's fix was "delete it", which loses the unacknowledged alarms the hub
    would carry over itself at its next start."""
    data = tmp_path / "hub"
    data.mkdir()
    config = doctor.load_config(_minimal_config(tmp_path, data))
    path = data / "journal.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, details TEXT)")
        db.executemany("INSERT INTO events (details) VALUES (?)", (("x" * 400,) for _ in range(20_000)))

    with monkeypatch.context() as short:
        short.setattr(doctor, "CHECK_TIMEOUT_S", 0.0)  # as if the file were far larger than this one
        cut = doctor._journal(config)
    assert cut.status == "warn" and "quick_check not finished within 0 s" in cut.found, cut
    assert doctor._journal(config).status == "ok"

    with path.open("r+b") as file:  # a page in the middle overwritten
        file.seek(4096 * 200)
        file.write(bytes(range(256)) * 16)
    damaged = doctor._journal(config)
    assert damaged.status == "fail" and damaged.fix is not None
    assert "restart the hub" in damaged.fix and "delete it;" not in damaged.fix


def _minimal_config(tmp_path: Path, data: Path) -> Path:
    path = tmp_path / "hub.toml"
    raw = {"hub_id": "hub-1", "county": "minle", "household_id": "hh-1", "data_dir": str(data)}
    path.write_text(tomli_w.dumps(raw))
    return path
