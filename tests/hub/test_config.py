"""Hub configuration: a good file loads; a wrong one is refused with file:line: field: and what to fix."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from hub.cli import main
from hub.config import ConfigError, load_config
from hub.model import Device, DeviceKind, Transport

GOOD = """\
hub_id = "hub-0001"
county = "minle"
household_id = "hh-0001"
data_dir = "var/anju"
log_level = "WARNING"

[gpio]
pin_factory = "mock"
bounce_ms = 20
siren_pin = 27
led_pin = 22

[mqtt]
host = "broker.minle.example"
port = 8883

[outbox]
resend_first_s = 2.0
resend_cap_s = 30.0

[[devices]]
id = "cord-bath"
kind = "pullcord"
transport = "gpio"
pin = 17
room = "卫生间"

[[devices]]
id = "smoke-kitchen"
kind = "smoke"
transport = "zigbee"
ieee = "00:0D:6F:00:0A:90:69:E7"
room = "厨房"
"""

HEAD = """\
hub_id = "hub-0001"
county = "minle"
household_id = "hh-0001"
data_dir = "/var/lib/anju"
"""


def _write(tmp_path: Path, text: str, name: str = "hub.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _line(path: Path, needle: str, occurrence: int = 1) -> int:
    """1-based number of the line where `needle` occurs for the `occurrence`-th time."""
    hits = [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line]
    return hits[occurrence - 1]


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_a_good_config_loads_with_data_dir_resolved_against_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    path = _write(folder, GOOD)
    config = load_config(path)
    assert config.data_dir == (folder / "var" / "anju").resolve()
    assert config.data_dir.is_absolute()
    assert (config.hub_id, config.county, config.household_id) == ("hub-0001", "minle", "hh-0001")
    assert config.log_level == "WARNING"
    assert config.gpio.pin_factory == "mock" and config.gpio.bounce_ms == 20
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.keepalive_s) == ("broker.minle.example", 8883, 30)
    assert (config.outbox.resend_first_s, config.outbox.resend_cap_s, config.outbox.jitter) == (2.0, 30.0, 0.5)
    household = config.household()
    assert household.id == "hh-0001" and household.county == "minle"
    assert household.devices == (
        Device("cord-bath", DeviceKind.PULLCORD, Transport.GPIO, 17, "卫生间"),
        Device(
            "smoke-kitchen",
            DeviceKind.SMOKE,
            Transport.ZIGBEE,
            None,
            "厨房",
            ieee="00:0d:6f:00:0a:90:69:e7",
            checkin_s=1800.0,
        ),
    )


def test_an_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, HEAD))
    assert config.data_dir == Path("/var/lib/anju")
    assert config.devices == []
    assert config.gpio.siren_pin == 27  # defaults fill what the file leaves out


def test_unknown_key_in_a_table_names_file_line_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + '\n[mqtt]\nhost = "127.0.0.1"\nhots = "broker"\n')
    message = _error(path)
    assert message.startswith(f"{path}:{_line(path, 'hots =')}: mqtt.hots: unknown key")


def test_wrong_kind_in_the_second_device_names_its_line(tmp_path: Path) -> None:
    text = (
        HEAD
        + '\n[[devices]]\nid = "cord-bath"\nkind = "pullcord"\ntransport = "gpio"\npin = 17\n'
        + '\n[[devices]]\nid = "cord-bed"\nkind = "pullchord"\ntransport = "gpio"\npin = 18\n'
    )
    path = _write(tmp_path, text)
    message = _error(path)
    assert message.startswith(f"{path}:{_line(path, 'pullchord')}: devices[1].kind: ")
    assert "'pullchord'" in message  # what the person wrote
    assert "'pullcord'" in message  # and what is allowed


def test_pin_out_of_range_names_its_line_and_the_limit(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + '\n[[devices]]\nid = "cord-bath"\nkind = "pullcord"\ntransport = "gpio"\npin = 40\n')
    message = _error(path)
    assert message.startswith(f"{path}:{_line(path, 'pin = 40')}: devices[0].pin: ")
    assert "27" in message


def test_gpio_device_without_pin_names_the_device_entry(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + '\n[[devices]]\nid = "cord-bath"\nkind = "pullcord"\ntransport = "gpio"\n')
    message = _error(path)
    assert message.startswith(f"{path}:{_line(path, '[[devices]]')}: devices[0].pin: ")
    assert "'cord-bath'" in message and "pin" in message


def test_several_problems_are_reported_one_per_line(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + 'log_level = "LOUD"\n[mqtt]\nport = 0\n')
    lines = _error(path).splitlines()
    assert lines[0].startswith(f"{path}:{_line(path, 'log_level')}: log_level: ")
    assert lines[1].startswith(f"{path}:{_line(path, 'port = 0')}: mqtt.port: ")
    assert len(lines) == 2


TWO_DEVICES = """
[[devices]]
id = "cord-bath"
kind = "pullcord"
transport = "gpio"
pin = 17

[[devices]]
id = "{id2}"
kind = "pullcord"
transport = "gpio"
pin = {pin2}
"""


def _second_device_block(path: Path) -> range:
    start = _line(path, "[[devices]]", occurrence=2)
    return range(start, start + 5)


def test_duplicate_device_ids_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + TWO_DEVICES.format(id2="cord-bath", pin2=18))
    message = _error(path)
    assert message.startswith(str(path))
    assert "'cord-bath' is used twice" in message


def test_two_devices_on_one_pin_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + TWO_DEVICES.format(id2="cord-bed", pin2=17))
    message = _error(path)
    assert message.startswith(str(path))
    assert "'cord-bath' and 'cord-bed' both use pin 17" in message


def test_a_device_on_the_siren_pin_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + '\n[[devices]]\nid = "cord-bath"\nkind = "pullcord"\ntransport = "gpio"\npin = 27\n')
    message = _error(path)
    assert message.startswith(str(path))
    assert "'cord-bath' uses pin 27, which drives the siren" in message


def test_a_device_on_a_moved_siren_pin_is_refused_and_the_old_one_is_free(tmp_path: Path) -> None:
    device = '\n[[devices]]\nid = "cord-bath"\nkind = "pullcord"\ntransport = "gpio"\npin = {pin}\n'
    path = _write(tmp_path, HEAD + "[gpio]\nsiren_pin = 5\n" + device.format(pin=5))
    assert "drives the siren" in _error(path)
    path = _write(tmp_path, HEAD + "[gpio]\nsiren_pin = 5\n" + device.format(pin=27))
    assert load_config(path).devices[0].pin == 27


def test_siren_and_led_on_one_pin_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + "[gpio]\nsiren_pin = 22\nled_pin = 22\n")
    message = _error(path)
    assert message.startswith(str(path)) and "22" in message


def test_duplicate_device_id_error_names_the_line_and_field_of_the_second_device(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + TWO_DEVICES.format(id2="cord-bath", pin2=18))
    message = _error(path)
    match = re.match(rf"{re.escape(str(path))}:(\d+): devices\[1\]", message)
    assert match, f"expected file:line: devices[1]..., got: {message}"
    assert int(match.group(1)) in _second_device_block(path)


def test_shared_pin_error_names_the_line_and_field_of_the_second_device(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + TWO_DEVICES.format(id2="cord-bed", pin2=17))
    message = _error(path)
    match = re.match(rf"{re.escape(str(path))}:(\d+): devices\[1\]", message)
    assert match, f"expected file:line: devices[1]..., got: {message}"
    assert int(match.group(1)) in _second_device_block(path)


def test_siren_pin_error_names_the_line_and_field_of_the_device(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + '\n[[devices]]\nid = "cord-bath"\nkind = "pullcord"\ntransport = "gpio"\npin = 27\n')
    message = _error(path)
    match = re.match(rf"{re.escape(str(path))}:(\d+): devices\[0\]", message)
    assert match, f"expected file:line: devices[0]..., got: {message}"
    assert int(match.group(1)) in range(_line(path, "[[devices]]"), _line(path, "pin = 27") + 1)


def test_invalid_toml_says_so_and_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + "[gpio\nsiren_pin = 27\n")
    message = _error(path)
    assert message.startswith(f"{path}: not valid TOML: ")
    assert f"line {_line(path, '[gpio')}" in message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "hub.toml"
    message = _error(path)
    assert message.startswith(f"{path}: cannot read the configuration")


def test_cli_config_check_reports_a_bad_file_on_stderr_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, HEAD + '\n[mqtt]\nhots = "broker"\n')
    assert main(["config", "check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"{path}:{_line(path, 'hots')}: mqtt.hots: unknown key")


def test_cli_config_check_reports_a_missing_file_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hub.toml"
    assert main(["config", "check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and str(path) in err


def test_cli_config_check_says_ok_for_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, GOOD)
    assert main(["config", "check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"{path}: ok")
    assert "hub-0001" in out and "2 device(s)" in out


def test_the_documented_example_configuration_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "docs" / "hub.example.toml"
    config = load_config(example)
    assert [d.id for d in config.devices] == ["cord-bath", "cord-bed"]
    assert config.gpio.pin_factory == "default" and config.audio.player == "aplay"


DC09 = """
[[uplinks]]
type = "dc09"
host = "arc.example"
port = 12000
account = "1234"
"""


def test_uplinks_default_to_mqtt_and_load_in_order(tmp_path: Path) -> None:
    assert [u.type for u in load_config(_write(tmp_path, HEAD)).uplinks] == ["mqtt"]
    text = (
        HEAD + '\n[[uplinks]]\ntype = "mqtt"\n' + DC09 + '\n[[uplinks]]\ntype = "sms"\nnumbers = ["+8612345678901"]\n'
    )
    assert [u.type for u in load_config(_write(tmp_path, text)).uplinks] == ["mqtt", "dc09", "sms"]


def test_uplinks_without_mqtt_are_refused(tmp_path: Path) -> None:
    message = _error(_write(tmp_path, HEAD + DC09))
    assert "uplinks" in message and "the county centre keeps its record" in message


def test_a_dc09_key_of_the_wrong_size_names_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + '\n[[uplinks]]\ntype = "mqtt"\n' + DC09 + 'key = "00112233"\n')
    message = _error(path)
    assert f":{_line(path, 'key = ')}:" in message or "uplinks.1.key" in message
    assert "16, 24 or 32 bytes" in message


def test_an_uplink_listed_twice_is_refused(tmp_path: Path) -> None:
    text = HEAD + '\n[[uplinks]]\ntype = "mqtt"\n\n[[uplinks]]\ntype = "mqtt"\n'
    assert "listed twice" in _error(_write(tmp_path, text))
