"""Typed configuration of a hub (pydantic), loaded from TOML, with errors that say what to fix.

A wrong file never starts a hub half-configured: `load_config` either returns a complete
`HubConfig` or raises `ConfigError` naming the file, the line, the field and what is allowed.
`located_errors` turns a pydantic ValidationError into such lines for any file format; the
scenario loader (YAML) uses it too.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hub.model import Device, DeviceKind, Household, Origin, Transport

Identifier = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
DeviceId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
# BCM numbering: the 28 user GPIOs of the 40-pin header.
BcmPin = Annotated[int, Field(ge=0, le=27)]


class FieldProblem(ValueError):
    """Raised by a model validator about one field inside the model (`loc`, relative to the model),
    so that the error names that field and its line rather than the whole model."""

    def __init__(self, loc: tuple[int | str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Default supervision windows per transport (issue texts): battery BLE devices check in every few
# minutes and are declared offline after 2 h of silence; Zigbee safety devices after 30 min.
DEFAULT_CHECKIN_S = {Transport.BLE: 7200.0, Transport.ZIGBEE: 1800.0}


class DeviceConfig(_Strict):
    id: DeviceId
    kind: DeviceKind
    transport: Transport
    pin: BcmPin | None = None
    room: str | None = None
    mac: Annotated[str, Field(pattern=r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$")] | None = None
    key: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{32}$", description="BTHome bind key, 32 hex digits")] | None = None
    ieee: Annotated[str, Field(pattern=r"^([0-9A-Fa-f]{2}:){7}[0-9A-Fa-f]{2}$")] | None = None
    checkin_s: Annotated[float, Field(ge=1, le=7 * 86400)] | None = None

    @model_validator(mode="after")
    def _transport_fields(self) -> Self:
        if self.transport is Transport.GPIO and self.pin is None:
            raise FieldProblem(("pin",), f"device {self.id!r} uses transport gpio, so it needs `pin` (BCM number 0-27)")
        if self.transport is Transport.BLE and self.mac is None:
            raise FieldProblem(
                ("mac",), f"device {self.id!r} uses transport ble, so it needs `mac` (AA:BB:CC:DD:EE:FF)"
            )
        if self.transport is Transport.ZIGBEE and self.ieee is None:
            raise FieldProblem(
                ("ieee",), f"device {self.id!r} uses transport zigbee, so it needs `ieee` (00:0d:6f:00:0a:90:69:e7)"
            )
        if self.transport is not Transport.ZIGBEE and self.ieee is not None:
            raise FieldProblem(("ieee",), f"`ieee` is for Zigbee devices; {self.id!r} uses {self.transport.value}")
        if self.transport is not Transport.BLE:
            for name in ("mac", "key"):
                if getattr(self, name) is not None:
                    raise FieldProblem((name,), f"`{name}` is for BLE devices; {self.id!r} uses {self.transport.value}")
        if self.transport is not Transport.GPIO and self.pin is not None:
            raise FieldProblem(("pin",), f"`pin` is for GPIO devices; {self.id!r} uses {self.transport.value}")
        return self

    def to_device(self) -> Device:
        return Device(
            self.id,
            self.kind,
            self.transport,
            self.pin,
            self.room,
            mac=self.mac.upper() if self.mac else None,
            key=self.key.lower() if self.key else None,
            ieee=self.ieee.lower() if self.ieee else None,
            checkin_s=self.checkin_s if self.checkin_s is not None else DEFAULT_CHECKIN_S.get(self.transport),
        )


class GpioConfig(_Strict):
    pin_factory: str = Field(
        "default",
        description="gpiozero pin factory: 'default' (lgpio on a Raspberry Pi), 'mock', or 'anju-sim'",
    )
    bounce_ms: int = Field(50, ge=0, le=1000)
    siren_pin: BcmPin | None = 27
    led_pin: BcmPin | None = 22


class BleConfig(_Strict):
    adapter: str = Field("hci0", pattern=r"^hci[0-9]{1,2}$")
    mode: Literal["auto", "passive", "active"] = Field(
        "auto", description="passive scanning where BlueZ supports advertisement monitors (auto), else active"
    )
    silence_restart_s: float = Field(90.0, ge=1, le=3600, description="no advert at all this long: restart the scan")
    retry_max_s: float = Field(30.0, ge=0.1, le=600, description="longest wait between attempts to start a scan")
    battery_low_percent: int = Field(20, ge=1, le=99)
    security_interval_s: float = Field(60.0, ge=0, le=86400, description="at most one security report per device")
    adapter_reset: Literal["auto-recovery", "none"] = Field(
        "auto-recovery", description="how a wedged adapter is reset: bluetooth-auto-recovery, or not at all"
    )


class ZigbeeConfig(_Strict):
    radio: Literal["znp", "ezsp"] = Field("znp", description="znp: TI CC2652 Z-Stack (zigpy-znp); ezsp: bellows")
    port: str = Field("/dev/ttyUSB0", description="the coordinator's serial port")
    baudrate: int = Field(115200, ge=9600, le=1_000_000)
    permit_on_start_s: int = Field(0, ge=0, le=254, description="open joining this long at start (pairing)")
    ping_s: float = Field(30.0, ge=1, le=600, description="watchdog: ping the coordinator this often")
    fault_after_s: float = Field(60.0, ge=0, le=3600, description="report fault.radio after the link is down this long")
    retry_max_s: float = Field(30.0, ge=0.1, le=600)
    duplicate_window_s: float = Field(10.0, ge=0, le=600, description="same ZCL sequence number within: one event")


class AudioConfig(_Strict):
    player: Literal["aplay", "record", "none"] = "aplay"
    voice: str = "cmn"
    aplay_device: str | None = None
    prompts_dir: Path | None = Field(None, description="WAV files named after prompts; they win over espeak-ng")
    cache_dir: Path | None = Field(None, description="where rendered prompts are kept (default: data_dir/prompts)")
    record_file: Path | None = Field(None, description="with player=record: where each playback is written")


class MqttTls(_Strict):
    """Mutual TLS with the county broker: the county CA, and this hub's own key and certificate
    (`anju certs issue HUB_ID`). The hub checks the broker's certificate and host name."""

    ca: Path
    cert: Path
    key: Path


class MqttConfig(_Strict):
    host: str = "127.0.0.1"
    tls: MqttTls | None = None
    port: int = Field(1883, ge=1, le=65535)
    keepalive_s: int = Field(30, ge=5, le=600)
    connect_timeout_s: float = Field(5.0, gt=0, le=120, description="wait this long for the broker's CONNACK")
    down_after_s: float = Field(
        5.0, ge=0, le=600, description="failover: the broker counts as down after this long without a connection"
    )
    heartbeat_s: float = Field(60.0, gt=0, le=3600)
    reconnect_min_s: float = Field(0.5, gt=0, le=60)
    reconnect_max_s: float = Field(30.0, gt=0, le=600)
    command_max_age_s: float = Field(300.0, gt=0, le=86400, description="older commands from the centre are refused")
    command_ca: Path | None = Field(
        None,
        description="the county CA certificate that signs commands (default: tls.ca); "
        "with neither, every command is refused",
    )


class OutboxConfig(_Strict):
    resend_first_s: float = Field(3.0, gt=0, le=600)
    resend_cap_s: float = Field(60.0, gt=0, le=3600)
    jitter: float = Field(0.5, ge=0, le=1)


PhoneNumber = Annotated[str, Field(pattern=r"^\+?[0-9]{3,20}$", description="digits, an optional leading +")]


class Contact(_Strict):
    """Someone to call for the elder: family, a neighbour, the village doctor."""

    name: Annotated[str, Field(min_length=1, max_length=40)]
    phone: PhoneNumber
    relation: Annotated[str, Field(max_length=20)] = ""


class ProfileConfig(_Strict):
    """Who lives here. Personal data: it stays on the hub and in the county's records, never in logs."""

    elder_name: Annotated[str, Field(max_length=40)] = ""
    address: Annotated[str, Field(max_length=120)] = ""
    phone: PhoneNumber | None = None
    contacts: list[Contact] = Field(default_factory=list, max_length=10)


class ApiConfig(_Strict):
    """The installer's web app on the home network (hub.api). There is no default PIN: without
    `pin_hash` (written by `anju provision`, from the PIN printed on the hub's label) it does not start."""

    enabled: bool = False
    host: str = Field("0.0.0.0", description="listen address; clients from outside private networks are refused")
    port: int = Field(8080, ge=1, le=65535)
    pin_hash: str | None = Field(None, description="scrypt hash of the installer PIN (hub.api.security.hash_pin)")
    session_minutes: float = Field(30.0, gt=0, le=24 * 60, description="a session ends after this long idle")


class JournalConfig(_Strict):
    """How much storage the journal may use. Past `100 - reserve_percent` % of `max_mb` (or with
    less than `min_free_mb` left on the disk) acknowledged events are deleted to make room, and if
    that is not enough, info events are dropped (and the hub says so): the rest is kept for alarms
    and faults."""

    max_mb: float = Field(512.0, ge=0.02, le=1_000_000)
    reserve_percent: float = Field(10.0, ge=1, le=90)
    min_free_mb: float = Field(50.0, ge=0, le=1_000_000)


class MqttUplinkConfig(_Strict):
    """The county broker (settings in `[mqtt]`): every event goes here, and its ack makes the record."""

    type: Literal["mqtt"]


class Dc09UplinkConfig(_Strict):
    """A professional alarm receiving centre speaking SIA DC-09 (TCP). Alarms go here when the
    uplinks before it are down, or have not got the centre's ack within `after_s`."""

    type: Literal["dc09"]
    host: str
    port: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = Field("tcp", description="udp: one datagram each way, resent on no answer")
    account: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{3,16}$", description="the account number, 3-16 hex digits")]
    key: str | None = Field(None, description="AES key as the receiver issued it (see key_format); none: plaintext")
    key_format: Literal["hex", "ascii"] = Field(
        "hex", description="hex: 32/48/64 hex digits (as DC-09 receivers issue keys); ascii: the key's characters"
    )
    receiver: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{1,6}$")] | None = None
    prefix: Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{1,6}$")] = "0"
    format: Literal["ADM-CID", "SIA-DCS"] = "SIA-DCS"
    after_s: float = Field(10.0, ge=0, le=3600, description="an alarm without an ack this long goes here too")
    link_test_s: float = Field(60.0, ge=0, le=86400, description="a NULL link test this often (0: none)")
    timeout_s: float = Field(10.0, gt=0, le=120, description="wait this long for the receiver's answer")

    @model_validator(mode="after")
    def _key_fits(self) -> Self:
        if self.key is None:
            return self
        size = len(self.key) // 2 if self.key_format == "hex" else len(self.key.encode())
        if self.key_format == "hex" and not re.fullmatch(r"([0-9A-Fa-f]{2})+", self.key):
            raise FieldProblem(("key",), 'with key_format = "hex" the key is hex digits (32, 48 or 64 of them)')
        if size not in (16, 24, 32):
            raise FieldProblem(("key",), f"an AES key is 16, 24 or 32 bytes; this one is {size} ({self.key_format})")
        return self


class SmsUplinkConfig(_Strict):
    """The last resort: a 4G modem. An alarm no IP uplink has acknowledged within the escalation
    time (`rules.escalation.ack_timeout_s`), or that every IP uplink failed to carry, goes by SMS
    to each number: the centre's first, then the household's contacts."""

    type: Literal["sms"]
    port: str = Field("/dev/ttyUSB2", description="the modem's AT command port")
    baudrate: int = Field(115200, ge=1200, le=4_000_000)
    numbers: list[Annotated[str, Field(pattern=r"^\+?[0-9]{3,20}$")]] = Field(min_length=1)
    status_s: float = Field(60.0, ge=1, le=3600, description="read SIM and signal this often (for the heartbeat)")


UplinkConfig = Annotated[MqttUplinkConfig | Dc09UplinkConfig | SmsUplinkConfig, Field(discriminator="type")]


def _mqtt_only() -> list[UplinkConfig]:
    return [MqttUplinkConfig(type="mqtt")]


HourMinute = Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description='"HH:MM", 24-hour')]
TimeRange = Annotated[
    str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$", description='"HH:MM-HH:MM"')
]


def minutes(hhmm: str) -> int:
    hours, mins = hhmm.split(":")
    return int(hours) * 60 + int(mins)


def in_range(hhmm_range: str, minute_of_day: int) -> bool:
    """Whether a minute of the day falls in "HH:MM-HH:MM" (which may run past midnight)."""
    start, end = (minutes(part) for part in hhmm_range.split("-"))
    return start <= minute_of_day < end if start <= end else minute_of_day >= start or minute_of_day < end


class FallRule(_Strict):
    cancel_s: int = Field(30, ge=10, le=120, description="how long a fallen person has to press 'I am fine'")


class EmergencyRule(_Strict):
    cancel_long_press_s: float = Field(10.0, ge=0, le=60, description="a long press this soon after is a cancel")


class FireRule(_Strict):
    repeat_s: float = Field(30.0, ge=5, le=600, description="the smoke prompt repeats until the smoke clears")


class EscalationRule(_Strict):
    ack_timeout_s: float = Field(60.0, ge=5, le=3600, description="no centre ack this long: say so, fault.uplink")


class InactivityRule(_Strict):
    enabled: bool = True
    hours: float = Field(12.0, gt=0, le=72)
    waking: TimeRange = "07:00-21:00"
    answer_min: float = Field(10.0, gt=0, le=120)


class CheckinRule(_Strict):
    enabled: bool = True
    at: HourMinute = "09:00"
    answer_min: float = Field(30.0, gt=0, le=240)


class Reminder(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
    at: HourMinute
    text: Annotated[str, Field(min_length=1, max_length=200)]
    answer_min: float = Field(15.0, gt=0, le=240)


class RulesConfig(_Strict):
    timezone: str = Field("Asia/Shanghai", description="IANA time zone of the household")
    quiet_hours: TimeRange | None = Field("22:00-07:00", description="no greetings or reminders; alarms always")
    fall: FallRule = FallRule()
    emergency: EmergencyRule = EmergencyRule()
    fire: FireRule = FireRule()
    escalation: EscalationRule = EscalationRule()
    inactivity: InactivityRule = InactivityRule()
    checkin: CheckinRule = CheckinRule()
    reminders: list[Reminder] = []
    battery_prompt: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise FieldProblem(
                ("timezone",), f"unknown time zone {self.timezone!r}; use an IANA name like Asia/Shanghai"
            ) from exc
        quiet = self.quiet_hours
        if quiet and self.checkin.enabled and in_range(quiet, minutes(self.checkin.at)):
            raise FieldProblem(("checkin", "at"), f"the check-in at {self.checkin.at} falls in quiet hours {quiet}")
        seen: set[str] = set()
        for index, reminder in enumerate(self.reminders):
            if reminder.id in seen:
                raise FieldProblem(("reminders", index, "id"), f"reminder id {reminder.id!r} is used twice")
            seen.add(reminder.id)
            if quiet and in_range(quiet, minutes(reminder.at)):
                raise FieldProblem(
                    ("reminders", index, "at"), f"reminder at {reminder.at} falls in quiet hours {quiet}"
                )
        return self

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


class ClockConfig(_Strict):
    mode: Literal["system", "simulated"] = Field("system", description="simulated: scenarios move it with `advance`")
    start: datetime | None = Field(None, description="with mode=simulated: the moment the clock starts at")
    sync: str = Field(
        "kernel",
        pattern=r"^(kernel|assume|file:.+)$",
        description='when the wall clock can be trusted (hub.timesync): "kernel" once the kernel says NTP has'
        ' synchronised it, "assume" from the start, "file:PATH" once PATH exists (simulation)',
    )


class HubConfig(_Strict):
    hub_id: Identifier
    county: Identifier
    household_id: Identifier
    data_dir: Path
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    devices: list[DeviceConfig] = []
    gpio: GpioConfig = GpioConfig()
    ble: BleConfig = BleConfig()
    zigbee: ZigbeeConfig = ZigbeeConfig()
    rules: RulesConfig = RulesConfig()
    clock: ClockConfig = ClockConfig()
    audio: AudioConfig = AudioConfig()
    mqtt: MqttConfig = MqttConfig()
    outbox: OutboxConfig = OutboxConfig()
    journal: JournalConfig = JournalConfig()
    profile: ProfileConfig = ProfileConfig()
    api: ApiConfig = ApiConfig()
    uplinks: list[UplinkConfig] = Field(
        default_factory=_mqtt_only,
        description="the ways out, in order of failover; MQTT (the county's record) must be one of them",
    )

    @model_validator(mode="after")
    def _devices_are_distinct(self) -> Self:
        if self.gpio.siren_pin is not None and self.gpio.siren_pin == self.gpio.led_pin:
            raise FieldProblem(("gpio", "led_pin"), f"the LED and the siren both use pin {self.gpio.led_pin}")
        seen: set[str] = set()
        pins: dict[int, str] = {}
        outputs = {self.gpio.siren_pin: "the siren", self.gpio.led_pin: "the LED"}
        for index, device in enumerate(self.devices):
            if device.id in seen:
                raise FieldProblem(
                    ("devices", index, "id"), f"device id {device.id!r} is used twice; each device needs its own id"
                )
            seen.add(device.id)
            if device.pin is None:
                continue
            where = ("devices", index, "pin")
            if device.pin in pins:
                raise FieldProblem(where, f"devices {pins[device.pin]!r} and {device.id!r} both use pin {device.pin}")
            if device.pin in outputs:
                raise FieldProblem(
                    where, f"device {device.id!r} uses pin {device.pin}, which drives {outputs[device.pin]}"
                )
            pins[device.pin] = device.id
        kinds = [uplink.type for uplink in self.uplinks]
        if "mqtt" not in kinds:
            raise FieldProblem(("uplinks",), 'list {type = "mqtt"}: the county centre keeps its record from it')
        for index, kind in enumerate(kinds):
            if kinds.count(kind) > 1:
                raise FieldProblem(("uplinks", index, "type"), f"uplink {kind!r} is listed twice")
        return self

    def origin(self) -> Origin:
        return Origin(self.hub_id, self.household_id, self.county)

    def household(self) -> Household:
        return Household(self.household_id, self.county, tuple(d.to_device() for d in self.devices))


class ConfigError(ValueError):
    """A configuration or scenario file is wrong; the message names file, line, field and the fix."""


def read_file(path: Path, what: str) -> str:
    """The text of a configuration-like file, or a ConfigError saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{path}: cannot read the {what}: {reason}") from exc


def load_config(path: Path) -> HubConfig:
    text = read_file(path, "configuration")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        config = HubConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("\n".join(located_errors(exc, path, lambda loc: toml_line(text, loc)))) from exc
    if not config.data_dir.is_absolute():
        config = config.model_copy(update={"data_dir": (path.parent / config.data_dir).resolve()})
    return config


def located_errors(exc: ValidationError, path: Path, line_of: Callable[[Sequence[int | str]], int | None]) -> list[str]:
    """One line per problem: `file:line: field: what is wrong (what is allowed)`."""
    lines = []
    for error in exc.errors():
        loc = [part for part in error["loc"] if not (isinstance(part, str) and part.startswith("function-"))]
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, FieldProblem):
            loc += cause.loc
        field = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in loc).replace(".[", "[") or "(top)"
        line = line_of(loc)
        where = f"{path}:{line}" if line else str(path)
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (check its spelling; see --help or docs/ for the keys allowed here)"
        elif error["type"] in ("enum", "literal_error") and "expected" in error.get("ctx", {}):
            message = f"{message}; got {error.get('input')!r}"
        lines.append(f"{where}: {field}: {message}")
    return lines


def toml_line(text: str, loc: Sequence[int | str]) -> int | None:
    """Best-effort line number of a pydantic location in TOML text (tomllib keeps no positions).

    Walks table headers (`[a]`, `[[a]]`, counting array-of-tables entries) and `key =` lines;
    returns the deepest line it could place, or None.
    """
    lines = text.splitlines()
    start, end = 0, len(lines)
    found: int | None = None
    keys = [str(p) for p in loc]
    index = 0
    while index < len(keys):
        key = keys[index]
        nxt = loc[index + 1] if index + 1 < len(loc) else None
        if isinstance(nxt, int):  # array of tables: [[key]] number nxt
            headers = [i for i in range(start, end) if re.match(rf"^\s*\[\[\s*{re.escape(key)}\s*\]\]", lines[i])]
            if nxt < len(headers):
                start = headers[nxt]
                found = start + 1
                end = next((i for i in range(start + 1, len(lines)) if re.match(r"^\s*\[", lines[i])), len(lines))
                index += 2
                continue
        header = next(
            (i for i in range(start, len(lines)) if re.match(rf"^\s*\[\s*{re.escape(key)}\s*\]", lines[i])), None
        )
        assignment = next((i for i in range(start, end) if re.match(rf"^\s*{re.escape(key)}\s*=", lines[i])), None)
        if assignment is not None:
            found = assignment + 1
            start = assignment
        elif header is not None:
            found = header + 1
            start = header
            end = next((i for i in range(header + 1, len(lines)) if re.match(r"^\s*\[", lines[i])), len(lines))
        # else: not in the file (a union's tag such as `dc09` in uplinks[1].dc09.key): look deeper
        index += 1
    return found
