"""A typical household's hub, run as in the field, for the resource benchmarks (start-up, idle CPU,
disk writes): what they share, so each starts the hub one way and reads /proc one way.

`HouseholdHub` is the scenario runner of `anju simulate` (simulator.runner.ScenarioRunner: a private
mosquitto, the reference centre, the real hub as a separate `anju run --config` process with
simulated pins, the fake bluetoothd on a private D-Bus and a virtual CC2652 on a pty), except that
the hub runs with its own default timings (MQTT heartbeat every 60 s, keepalive 30 s, resend
back-off, BLE watchdog 90 s, Zigbee ping 30 s) instead of the runner's test-speed ones. The
household (`household_scenario`): a bathroom pull-cord and the UPS's mains-lost line on GPIO, a
BTHome pendant and a BTHome pull-cord node on BLE, a smoke alarm on Zigbee; the BLE nodes advertise
a heartbeat every 300 s (the firmware's HEARTBEAT_S) and the smoke alarm checks in every 300 s,
unless a benchmark asks for faster traffic.

Not a script: imported by bench/startup.py, bench/idle_cpu.py and bench/disk_writes.py.
"""

from __future__ import annotations

import asyncio
import os
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from simulator.broker import PrivateBroker
from simulator.runner import ScenarioRunner
from simulator.scenario import Scenario

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FIELD_HEARTBEAT_S = 300.0  # firmware/lib/node.py HEARTBEAT_S; also the smoke alarm's check-in here
CORD_PIN, UPS_PIN = 17, 24
# The runner's test-speed settings, dropped so the hub uses its defaults (hub/config.py).
_TEST_SPEED = {
    "mqtt": ("heartbeat_s", "reconnect_min_s", "reconnect_max_s", "connect_timeout_s", "down_after_s"),
    "ble": ("silence_restart_s", "security_interval_s", "retry_max_s"),
    "zigbee": ("ping_s", "fault_after_s", "retry_max_s"),
}


def household_scenario(
    ble: bool = True, zigbee: bool = True, device_heartbeat_s: float = FIELD_HEARTBEAT_S, strangers: int = 0
) -> Scenario:
    """Five devices (GPIO always; BLE and Zigbee unless turned off), no timeline: the benchmark drives it."""
    devices: list[dict[str, Any]] = [
        {"id": "cord-bath", "kind": "pullcord", "transport": "gpio", "pin": CORD_PIN},
        {"id": "ups", "kind": "power", "transport": "gpio", "pin": UPS_PIN},
    ]
    if ble:
        devices += [
            {
                "id": "pendant",
                "kind": "pendant",
                "transport": "ble",
                "mac": "A4:C1:38:5A:10:01",
                "key": "231d39c1d7cc1ab1aee224cd096db932",
            },
            {
                "id": "cord-bed",
                "kind": "pullcord",
                "transport": "ble",
                "mac": "A4:C1:38:5A:10:02",
                "key": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            },
        ]
    if zigbee:
        devices.append(
            {"id": "smoke-kitchen", "kind": "smoke", "transport": "zigbee", "ieee": "00:0d:6f:00:0b:10:00:01"}
        )
    return Scenario.model_validate(
        {
            "name": "bench-household",
            "household": {"id": "hh-bench", "county": "bench"},
            "devices": devices,
            "ble": {"heartbeat_s": device_heartbeat_s, "strangers": strangers},
            "zigbee": {"heartbeat_s": device_heartbeat_s},
        }
    )


class HouseholdHub(ScenarioRunner):
    """The scenario runner with the hub at field timings. `start()`, then `hub_pid`, `restart_hub()`,
    `wait_online()`, `play()` and `stop()`. `mqtt` overrides [mqtt] settings (e.g. heartbeat_s)."""

    def __init__(self, scenario: Scenario, workdir: Path, mqtt: dict[str, Any] | None = None) -> None:
        super().__init__(scenario, workdir)
        self.mqtt_overrides = mqtt or {}

    def _hub_config(self, broker: PrivateBroker) -> Path:
        path = super()._hub_config(broker)
        config = tomllib.loads(path.read_text())
        for section, keys in _TEST_SPEED.items():
            for key in keys:
                config.get(section, {}).pop(key, None)
        config.pop("outbox", None)
        config["mqtt"].update(self.mqtt_overrides)
        path.write_bytes(tomli_w.dumps(config).encode())
        return path

    @property
    def hub_pid(self) -> int:
        assert self._hub is not None and self._hub.process is not None, "start() first"
        return self._hub.process.pid

    def check_alive(self) -> None:
        """Raise, with the end of the hub's log, if the hub process has exited."""
        assert self._hub is not None and self._hub.process is not None, "start() first"
        if self._hub.process.returncode is not None or not Path(f"/proc/{self.hub_pid}").exists():
            raise RuntimeError(f"the hub exited ({self._hub.process.returncode}); {self.hub_log}:\n{self._hub.tail()}")

    @property
    def hub_log(self) -> Path:
        assert self._hub is not None
        return self._hub.log_path

    async def restart_hub(self) -> float:
        """SIGTERM the hub, start it again; returns seconds from exec to its READY=1 (sd_notify)."""
        assert self._hub is not None and self._bench is not None, "start() first"
        await self._hub.stop()
        self._bench.connected.clear()
        started = time.monotonic()
        await self._hub.start()
        ready = time.monotonic() - started
        await asyncio.wait_for(self._bench.connected.wait(), 10)
        return ready

    async def wait_acked(self) -> None:
        """Until every stimulus played so far is journaled and every journaled event acknowledged
        (the runner's settling: the scenario's `settle` seconds at most)."""
        await self._settle()

    async def wait_online(self, since_ns: int, timeout: float = 30.0) -> float:
        """Seconds from `since_ns` (monotonic) until the centre's side saw the hub's retained
        `online` status (published when its MQTT connection is up), as the contract tap receives it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for mono_ns, _hub, state, _reason in self.tap.status_changes:
                if state == "online" and mono_ns >= since_ns:
                    return (mono_ns - since_ns) / 1e9
            await asyncio.sleep(0.005)
        raise TimeoutError(f"the hub did not come online within {timeout} s; see {self.hub_log}")


def proc_status(path: Path) -> dict[str, str]:
    """A /proc/.../status file as a dict of its fields."""
    return {key: value.strip() for key, _, value in (line.partition(":") for line in path.read_text().splitlines())}


def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of the process, in MiB."""
    status = proc_status(Path(f"/proc/{pid}/status"))
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread), in seconds (/proc/PID/stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def context_switches(pid: int) -> tuple[int, int, int]:
    """(voluntary, involuntary, threads), summed over /proc/PID/task/*: each voluntary switch is a wakeup."""
    voluntary = involuntary = threads = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = proc_status(task / "status")
        except OSError:
            continue  # the thread ended meanwhile
        voluntary += int(status["voluntary_ctxt_switches"])
        involuntary += int(status["nonvoluntary_ctxt_switches"])
        threads += 1
    return voluntary, involuntary, threads


def proc_io(pid: int) -> dict[str, int]:
    """/proc/PID/io: rchar, wchar (bytes passed to write()), write_bytes (bytes the block layer is to write)."""
    return {
        k: int(v) for k, _, v in (line.partition(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    }


def tree_bytes(path: Path) -> int:
    """Bytes in the files under `path` (their apparent sizes)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
