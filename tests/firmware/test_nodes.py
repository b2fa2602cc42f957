"""The pendant's and the pull-cord node's firmware: node.py, counter_store.py, drivers.py, hw.py, main.py.

* On the real MicroPython (the unix port, `micropython` in the venv): the scripts in mp_tests/ run
  the node state machine, the counter store, the drivers and each node's hw.py and main.py against
  the stand-ins in stubs/ (`machine`, `bluetooth`, `esp32`), with MICROPYPATH laid out as the
  ESP32's filesystem is: stubs, firmware/lib and the node's own directory side by side.
* On CPython: the same node.py with the real encoder (firmware/lib/bthome.py) and counter store,
  its adverts fed to the hub's interpreter (edge/bthome.py) through a radio that loses and repeats
  packets; and the encrypted adverts the pendant made under MicroPython, read by the hub.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.bthome import BTHOME_UUID, BthomeInterpreter
from firmware.lib import bthome
from firmware.lib.counter_store import CounterStore
from firmware.lib.drivers import LIPO_CURVE, Button, percent_of
from firmware.lib.node import Node, Plaintext
from hub.model import Device, DeviceKind, Event, Origin, Transport

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MICROPYTHON = Path(sys.executable).with_name("micropython")

ORIGIN = Origin("hub-1", "hh-1", "minle")
KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
MP_MAC = "54:48:E6:8F:80:A5"  # the stand-in BLE's address (tests/firmware/stubs/bluetooth.py)
PENDANT = Device("pendant", DeviceKind.PENDANT, Transport.BLE, mac="A4:C1:38:00:00:01", key=KEY.hex())
PULLCORD = Device("cord", DeviceKind.PULLCORD, Transport.BLE, mac="A4:C1:38:00:00:02", key=KEY.hex())

SCRIPTS = {"mp_node": None, "mp_drivers": None, "mp_pendant": "pendant", "mp_pullcord": "pullcord"}


def run_micropython(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    node = SCRIPTS[script]
    path = [HERE / "stubs", ROOT / "firmware" / "lib"] + ([ROOT / "firmware" / node] if node else [])
    env = {"MICROPYPATH": os.pathsep.join(str(p) for p in path), "ANJU_TMP": str(tmp_path), "PATH": os.defpath}
    return subprocess.run(
        [str(MICROPYTHON), str(HERE / "mp_tests" / f"{script}.py")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_on_micropython(script: str, tmp_path: Path) -> None:
    result = run_micropython(script, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed, 0 failed" in result.stdout


# ---- the hub reads what the nodes send ----------------------------------------------------------


class Hub:
    """The hub's BTHome interpreter for one device, with a clock in ms (as the node's)."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.ms = 0
        self.batteries: list[float | None] = []
        self.heard: list[int] = []  # ms of each advert the hub took (authentic, new counter)
        self.interpreter = BthomeInterpreter(
            ORIGIN,
            [device],
            clock=lambda: 1_000_000 + self.ms / 1000,
            on_reading=lambda _d, _s, battery: self.batteries.append(battery),
            on_heard=lambda _d, ns: self.heard.append(ns // 1_000_000),
        )
        self.events: list[Event] = []

    def hear(self, data: bytes, ms: int) -> None:
        self.ms = ms
        assert self.device.mac is not None
        self.events += self.interpreter.feed(self.device.mac, {BTHOME_UUID: data}, -60, ms * 1_000_000)

    def summary(self) -> list[tuple[str, object]]:
        return [(e.type.value, e.details.get("button") or e.details.get("reason")) for e in self.events]


class Radio:
    """Between node and hub: each advert heard ``repeats`` times while on the air, unless lost."""

    def __init__(self, hub: Hub, lose: Callable[[int], bool] = lambda _i: False, repeats: int = 2) -> None:
        self.hub = hub
        self.lose = lose
        self.repeats = repeats
        self.sent = 0

    def carry(self, adverts: list[bytes], ms: int) -> None:
        for data in adverts:
            index = self.sent
            self.sent += 1
            if self.lose(index):
                continue
            for repeat in range(self.repeats):
                self.hub.hear(data, ms + 100 * repeat)


class Clock:
    def __init__(self) -> None:
        self.ms = 0

    def __call__(self) -> int:
        return self.ms


def node_for(device: Device, clock: Clock, store_path: Path, battery: int = 80, packet_id: int = 0) -> Node:
    assert device.mac is not None
    encryptor = bthome.Encryptor(KEY, device.mac)
    return Node(encryptor, CounterStore(str(store_path)), clock, lambda: battery, packet_id=packet_id)


def run_for(node: Node, clock: Clock, radio: Radio, ms: int, step_ms: int = 20) -> None:
    end = clock.ms + ms
    while clock.ms < end:
        radio.carry(node.tick(), clock.ms)
        clock.ms += step_ms


def test_each_event_is_one_alarm_though_packets_are_lost_and_repeated(tmp_path: Path) -> None:
    hub, clock = Hub(PENDANT), Clock()
    node = node_for(PENDANT, clock, tmp_path / "counter")
    # adverts 1-3 of the first burst and 7-10 of the second are lost: the rest get through, twice
    radio = Radio(hub, lose=lambda i: i in (1, 2, 3, 7, 8, 9, 10))
    run_for(node, clock, radio, 1000)  # the start-up heartbeat (advert 0)
    node.press("press")
    run_for(node, clock, radio, 5000)
    node.fall()
    run_for(node, clock, radio, 5000)
    node.press("long_press")
    node.press("double_press")
    run_for(node, clock, radio, 5000)
    assert hub.summary() == [
        ("alarm.emergency", "press"),
        ("alarm.fall", None),
        ("alarm.emergency", "long_press"),
        ("alarm.emergency", "double_press"),
    ]
    assert hub.batteries[0] == 80


def test_heartbeats_keep_the_hub_hearing_and_report_a_low_battery(tmp_path: Path) -> None:
    hub, clock = Hub(PULLCORD), Clock()
    assert PULLCORD.mac is not None
    level = [50]
    node = Node(
        bthome.Encryptor(KEY, PULLCORD.mac), CounterStore(str(tmp_path / "c")), clock, lambda: level[0], heartbeat_s=60
    )
    radio = Radio(hub, repeats=1)
    run_for(node, clock, radio, 130_000, step_ms=100)
    assert hub.heard == [0, 60_000, 120_000]
    level[0] = 15
    run_for(node, clock, radio, 60_000, step_ms=100)
    assert hub.summary() == [("fault.battery_low", None)]
    node.press()
    run_for(node, clock, radio, 2000)
    assert hub.summary()[-1] == ("alarm.emergency", "press")


def test_a_reboot_jumps_the_counter_ahead_and_the_hub_never_sees_a_replay(tmp_path: Path) -> None:
    hub, clock = Hub(PULLCORD), Clock()
    radio = Radio(hub)
    packet_id = 0  # what the RTC memory keeps across a reset
    for _boot in range(3):
        node = node_for(PULLCORD, clock, tmp_path / "counter", packet_id=packet_id)
        node.press()  # pulled at once: a reset in the middle of an emergency
        run_for(node, clock, radio, 1300)
        packet_id = node.packet_id
        clock.ms += 500  # the reset: well inside the hub's 4 s packet-id window
    assert hub.summary() == [("alarm.emergency", "press")] * 3
    assert hub.interpreter.counts["security_replay"] == 0
    assert hub.interpreter.counts["accepted"] == 18  # each boot: 5 + 1 adverts, all authentic, new counters


def test_why_the_packet_id_survives_a_reset(tmp_path: Path) -> None:
    # Starting again from packet id 0 within 4 s of the last advert, the hub's decoder would take
    # the new adverts for stale ones: the alarm after the reset would be lost.
    hub, clock = Hub(PULLCORD), Clock()
    radio = Radio(hub)
    for _boot in range(2):
        node = node_for(PULLCORD, clock, tmp_path / "counter")
        node.press()
        run_for(node, clock, radio, 1300)
        clock.ms += 500
    assert hub.summary() == [("alarm.emergency", "press")]


def test_plaintext_node_for_a_hub_without_a_key() -> None:
    device = Device("cord", DeviceKind.PULLCORD, Transport.BLE, mac="A4:C1:38:00:00:03")
    hub, clock = Hub(device), Clock()
    node = Node(Plaintext(bthome.encode), None, clock, lambda: 90)
    node.press()
    run_for(node, clock, Radio(hub), 2000)
    assert hub.summary() == [("alarm.emergency", "press")]


def test_pendant_adverts_made_by_micropython_raise_the_alarms(tmp_path: Path) -> None:
    result = run_micropython("mp_pendant", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line.split() for line in result.stdout.splitlines()]
    assert ["MAC", MP_MAC.replace(":", "").lower()] in lines
    adverts = [(int(ms), bytes.fromhex(data)) for tag, ms, data in (x for x in lines if x[0] == "ADVERT")]
    device = Device("pendant", DeviceKind.PENDANT, Transport.BLE, mac=MP_MAC, key=KEY.hex())
    hub = Hub(device)
    for ms, data in adverts:
        hub.hear(data, ms)
        hub.hear(data, ms + 100)  # on the air for 250 ms: heard again
    assert hub.summary() == [("alarm.emergency", "press"), ("alarm.emergency", "long_press"), ("alarm.fall", None)]
    assert hub.batteries[0] == 70
    assert hub.interpreter.counts["accepted"] == len(adverts)


def test_node_and_drivers_on_cpython() -> None:
    # the same modules import and run under CPython (the simulator's devices could use them)
    clock = Clock()
    levels = iter([1, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])

    class FakePin:
        def value(self) -> int:
            return next(levels)

    button = Button(FakePin(), clock)  # type: ignore[arg-type]
    events = []
    for _ in range(12):
        events.append(button.poll())
        clock.ms += 10
    assert [e for e in events if e] == ["press"]
    assert percent_of(3800, LIPO_CURVE) == 55
    with pytest.raises(ValueError):
        Node(Plaintext(bthome.encode), None, clock, lambda: 1, burst_count=0)
    with pytest.raises(ValueError):
        Node(Plaintext(bthome.encode), None, clock, lambda: 1).press("wave")
