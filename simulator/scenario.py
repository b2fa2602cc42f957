"""Scenario files: a household, its devices, a timeline of steps and the expectations to check.

    name: bathroom-cord
    household: {id: hh-0001, county: minle}
    devices:
      - {id: cord-bath, kind: pullcord, transport: gpio, pin: 17}
    steps:
      - {at: 1.0, device: cord-bath, do: pull}
      - {at: 2.0, broker: down}        # the broker process stops (up: starts again, same port)
      - {at: 3.0, uplink: down}        # the home's internet goes (a proxy refuses; blackhole, flaky)
      - {at: 6.0, uplink: up}
      - {at: 6.5, modem: no_signal}    # the virtual 4G modem loses its signal (ok: back)
      - {at: 7.0, hub: kill}           # SIGKILL the hub process, then start it again
      - {at: 8.0, centre: no_ack}      # restart the centre so that it stores events but never acks
      - {at: 9.0, centre: up}          # (and `centre: down` stops it)
    expect:
      - {event: alarm.emergency, device: cord-bath, count: 2, delivered: true}

`load_scenario` validates everything before anything runs; a mistake is reported with the file,
the line, the field and what is allowed (hub.config.located_errors).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hub.config import (
    ConfigError,
    DeviceConfig,
    FieldProblem,
    Identifier,
    RulesConfig,
    located_errors,
    read_file,
)
from hub.model import DeviceKind, EventType, Transport

# What each device kind can be made to do, per transport.
GPIO_ACTIONS: dict[DeviceKind, frozenset[str]] = {
    DeviceKind.PULLCORD: frozenset({"pull", "release"}),
    DeviceKind.BUTTON: frozenset({"press", "release"}),
    DeviceKind.SOS: frozenset({"press", "release"}),
    DeviceKind.SMOKE: frozenset({"smoke", "clear"}),
    DeviceKind.POWER: frozenset({"mains_lost", "mains_back"}),
    DeviceKind.HUB_BUTTON: frozenset({"press", "release"}),
}
_BLE_COMMON = frozenset({"battery", "silence", "resume", "replay", "spoof", "rssi", "plaintext", "tamper"})
_BLE_BUTTONS = frozenset({"press", "double_press", "long_press"})
BLE_ACTIONS: dict[DeviceKind, frozenset[str]] = {
    DeviceKind.PENDANT: _BLE_COMMON | _BLE_BUTTONS | {"fall"},
    DeviceKind.BUTTON: _BLE_COMMON | _BLE_BUTTONS,
    DeviceKind.PULLCORD: _BLE_COMMON | _BLE_BUTTONS,
    DeviceKind.SOS: _BLE_COMMON | _BLE_BUTTONS,
    DeviceKind.SMOKE: _BLE_COMMON | {"smoke", "clear"},
    DeviceKind.MOTION: _BLE_COMMON | {"motion"},
    DeviceKind.CONTACT: _BLE_COMMON | {"open", "close"},
}
_ZIGBEE_COMMON = frozenset({"join", "tamper", "battery_low", "silence", "resume"})
ZIGBEE_ACTIONS: dict[DeviceKind, frozenset[str]] = {
    DeviceKind.SMOKE: _ZIGBEE_COMMON | {"smoke", "clear"},
    DeviceKind.SOS: _ZIGBEE_COMMON | {"press", "fall"},
    DeviceKind.RADAR: _ZIGBEE_COMMON | {"fall"},
    DeviceKind.CONTACT: _ZIGBEE_COMMON | {"open", "close"},
    DeviceKind.MOTION: _ZIGBEE_COMMON | {"motion"},
}
# Steps that are a person or a fire asking for help: the runner expects an alarm from each.
ALARM_STIMULI = frozenset({"pull", "press", "double_press", "long_press", "fall", "smoke"})
# ... of which these raise their alarm at once (a fall first opens its cancel window).
IMMEDIATE_ALARM_STIMULI = ALARM_STIMULI - {"fall"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HouseholdSpec(_Strict):
    id: Identifier
    county: Identifier


class Step(_Strict):
    at: Annotated[float, Field(ge=0, le=86_400, description="seconds after the hub is first ready")]
    device: str | None = None
    do: str | None = None
    hold: Annotated[float, Field(gt=0, le=60)] = 0.3
    value: float | None = Field(None, description="for `battery` (percent) and `rssi` (dBm)")
    uplink: Literal["up", "down", "blackhole", "flaky"] | None = Field(
        None, description="the network between the hub and its uplinks (a TCP proxy in front of each)"
    )
    path: Literal["mqtt", "dc09"] | None = Field(None, description="with `uplink`: only this path (default: all)")
    broker: Literal["up", "down", "kill"] | None = Field(
        None, description="stop (SIGTERM), kill (SIGKILL) or start the broker process itself"
    )
    acks: Literal["duplicate"] | None = Field(
        None, description="from now on every ack reaches the hub twice, with acks for unknown event ids among them"
    )
    journal: Literal["delete", "corrupt"] | None = Field(
        None, description="stop the hub, delete or corrupt its journal file, start it again"
    )
    modem: Literal["ok", "no_signal", "no_sim"] | None = None
    hub: Literal["kill", "restart"] | None = None
    centre: Literal["down", "up", "no_ack"] | None = None
    ble: Literal["adapter_gone", "adapter_back", "in_progress", "garbage"] | None = None
    radio: Literal["unplug", "replug", "reset", "hang", "garbage", "duplicate"] | None = None
    advance: (
        Annotated[str, Field(pattern=r"^(\d+(\.\d+)?[hms])+$", description='e.g. "13h", "10m", "1h30m"')] | None
    ) = None
    mode: Literal["test", "normal"] | None = Field(None, description="the household's walk-test mode")

    @property
    def advance_s(self) -> float:
        assert self.advance is not None
        units = {"h": 3600.0, "m": 60.0, "s": 1.0}
        return sum(float(number) * units[unit] for number, unit in re.findall(r"(\d+(?:\.\d+)?)([hms])", self.advance))

    @model_validator(mode="after")
    def _one_action(self) -> Self:
        actions = [
            name
            for name in (
                "device",
                "uplink",
                "broker",
                "modem",
                "acks",
                "journal",
                "hub",
                "centre",
                "ble",
                "radio",
                "advance",
                "mode",
            )
            if getattr(self, name) is not None
        ]
        if len(actions) != 1:
            raise ValueError(
                "a step needs exactly one of `device` (with `do`), `uplink`, `broker`, `modem`, `acks`, `journal`,"
                " `hub`, `centre`,"
                " `ble`, `radio`, `advance` or `mode`;"
                f" this one has {actions or 'none'}"
            )
        if self.path is not None and self.uplink is None:
            raise ValueError("`path` goes with `uplink` (which path's network to change)")
        if self.device is not None and self.do is None:
            raise ValueError(f"step for device {self.device!r} needs `do` (what the device does)")
        if self.device is None and self.do is not None:
            raise ValueError("`do` needs `device`")
        return self


class Expectation(_Strict):
    event: EventType | None = None
    prompt: str | None = Field(None, description="a voice prompt that must have been played (count: how often)")
    dc09: str | None = Field(None, description='a code the DC-09 receiver must have got: SIA ("MA") or Contact ID')
    sms: bool | None = Field(None, description="true: alarm SMS must have been sent (count: how many)")
    device: str | None = None
    count: Annotated[int, Field(ge=0)] | None = None
    delivered: bool | None = None

    @model_validator(mode="after")
    def _one_subject(self) -> Self:
        subjects = [name for name in ("event", "prompt", "dc09", "sms") if getattr(self, name) is not None]
        if len(subjects) != 1:
            raise ValueError("an expectation names exactly one of `event`, `prompt`, `dc09` or `sms`")
        return self


class MqttUplinkSpec(_Strict):
    type: Literal["mqtt"]


class Dc09UplinkSpec(_Strict):
    """A DC-09 uplink to a pysiaalarm receiver the runner starts (host and port are the runner's)."""

    type: Literal["dc09"]
    host: str | None = Field(None, description="ignored: the runner's receiver is used")
    port: int | None = Field(None, description="ignored: the runner's receiver is used")
    account: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{3,16}$")] = "1234"
    key: str | None = None
    key_format: Literal["hex", "ascii"] = "ascii"
    receiver: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{1,6}$")] = "1"
    prefix: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{1,6}$")] = "0"
    format: Literal["ADM-CID", "SIA-DCS"] = "SIA-DCS"
    after_s: float = Field(3.0, ge=0, le=3600)
    link_test_s: float = Field(5.0, ge=0, le=3600)


class SmsUplinkSpec(_Strict):
    type: Literal["sms"]
    numbers: list[Annotated[str, Field(pattern=r"^\+?[0-9]{3,20}$")]] = Field(min_length=1)


UplinkSpec = Annotated[MqttUplinkSpec | Dc09UplinkSpec | SmsUplinkSpec, Field(discriminator="type")]


class ClockSpec(_Strict):
    start: datetime = Field(description="the hub's wall clock when the scenario starts, with its UTC offset")


class BleOptions(_Strict):
    passive: bool = Field(True, description="the fake BlueZ offers advertisement monitors (passive scanning)")
    heartbeat_s: float = Field(1.0, gt=0, le=3600, description="each BLE device's periodic advert")
    silence_restart_s: float = Field(5.0, ge=1, le=3600, description="the hub's BLE watchdog, for the scenario")
    strangers: int = Field(0, ge=0, le=5000, description="unknown devices advertising all the time")


class ZigbeeOptions(_Strict):
    heartbeat_s: float = Field(1.0, gt=0, le=3600, description="each Zigbee device's check-in report")
    ping_s: float = Field(2.0, ge=1, le=600, description="the hub's coordinator watchdog, for the scenario")
    fault_after_s: float = Field(3.0, ge=0, le=3600, description="the hub's fault.radio delay, for the scenario")
    hang_s: float = Field(10.0, gt=0, le=600, description="how long `radio: hang` stops the dongle answering")


class JournalOptions(_Strict):
    max_kb: float = Field(512 * 1024, ge=20, description="the hub's journal budget, to make a disk fill up")
    reserve_percent: float = Field(10.0, ge=1, le=90)


class ApiOptions(_Strict):
    pin: str = Field(pattern=r"^[0-9]{4,12}$", description="the installer PIN the hub's web app accepts")


class Scenario(_Strict):
    name: str
    description: str | None = None
    household: HouseholdSpec
    hub_id: Identifier | None = None
    devices: list[DeviceConfig]
    steps: list[Step] = []
    expect: list[Expectation] = []
    ble: BleOptions = BleOptions()
    zigbee: ZigbeeOptions = ZigbeeOptions()
    rules: RulesConfig | None = Field(None, description="the household's rules (default: alarms only, no routines)")
    clock: ClockSpec | None = None
    journal: JournalOptions = JournalOptions()
    api: ApiOptions | None = Field(None, description="serve the installer's web app (on a free loopback port)")
    unpaired: list[str] = Field(
        default_factory=list, description="devices that exist (they advertise, they can join) but the hub does not know"
    )
    uplinks: list[UplinkSpec] | None = Field(None, description="the hub's uplinks in order (default: MQTT alone)")
    settle: Annotated[float, Field(gt=0, le=600, description="seconds to wait after the last step")] = 20.0

    @model_validator(mode="after")
    def _references(self) -> Self:
        devices = {d.id: d for d in self.devices}
        for index, step in enumerate(self.steps):
            if step.device is None:
                continue
            device = devices.get(step.device)
            if device is None:
                raise FieldProblem(
                    ("steps", index, "device"),
                    f"step at {step.at} names device {step.device!r}, which is not in `devices`"
                    f" (known: {', '.join(devices) or 'none'})",
                )
            table = {Transport.GPIO: GPIO_ACTIONS, Transport.BLE: BLE_ACTIONS, Transport.ZIGBEE: ZIGBEE_ACTIONS}.get(
                device.transport, {}
            )
            allowed = table.get(device.kind, frozenset())
            if step.do not in allowed:
                raise FieldProblem(
                    ("steps", index, "do"),
                    f"device {device.id!r} ({device.kind.value} on {device.transport.value}) cannot"
                    f" {step.do!r}; it can: {', '.join(sorted(allowed)) or 'nothing yet'}",
                )
        for index, device_id in enumerate(self.unpaired):
            if device_id not in devices:
                raise FieldProblem(("unpaired", index), f"{device_id!r} is not in `devices`")
        kinds = [uplink.type for uplink in self.uplinks or []]
        for index, step in enumerate(self.steps):
            if step.path == "dc09" and "dc09" not in kinds:
                raise FieldProblem(("steps", index, "path"), "no dc09 uplink is listed in `uplinks`")
            if step.modem is not None and "sms" not in kinds:
                raise FieldProblem(("steps", index, "modem"), "no sms uplink (modem) is listed in `uplinks`")
        for index, expectation in enumerate(self.expect):
            for needs, kind in (("dc09", "dc09"), ("sms", "sms")):
                if getattr(expectation, needs) is not None and kind not in kinds:
                    raise FieldProblem(("expect", index, needs), f"no {kind} uplink is listed in `uplinks`")
            if expectation.device is not None and expectation.device not in devices:
                raise FieldProblem(
                    ("expect", index, "device"),
                    f"expectation names device {expectation.device!r}, which is not in `devices`",
                )
        return self

    def uplink(self, kind: str) -> Any:
        return next((uplink for uplink in self.uplinks or [] if uplink.type == kind), None)

    def has_ble(self) -> bool:
        return any(d.transport is Transport.BLE for d in self.devices)

    def has_zigbee(self) -> bool:
        return any(d.transport is Transport.ZIGBEE for d in self.devices)

    @property
    def effective_hub_id(self) -> str:
        return self.hub_id or f"hub-{self.household.id}"

    def ordered_steps(self) -> list[Step]:
        return sorted(self.steps, key=lambda step: step.at)


def load_scenario(path: Path) -> Scenario:
    text = read_file(path, "scenario")
    try:
        raw = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}:1: a scenario is a mapping with name, household, devices, steps, expect")
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(located_errors(exc, path, lambda loc: yaml_line(root, loc)))) from exc


def yaml_line(root: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """The 1-based line of the deepest YAML node that `loc` reaches."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((value for key, value in node.value if getattr(key, "value", None) == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


def bundled(name: str) -> Path:
    """A scenario shipped in simulator/scenarios/ (`name` without .yaml)."""
    return Path(str(files("simulator") / "scenarios" / f"{name}.yaml"))
