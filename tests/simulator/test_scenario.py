"""Scenario files: the bundled ones load; a wrong one is refused with file:line: field: and what to fix."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

import simulator
from hub.config import ConfigError
from hub.model import DeviceKind, EventType, Transport
from simulator.scenario import bundled, load_scenario

SCENARIO_DIR = Path(simulator.__file__).parent / "scenarios"

HEAD = """\
name: test
household: {id: hh-0001, county: minle}
devices:
  - {id: cord-bath, kind: pullcord, transport: gpio, pin: 17}
  - {id: smoke-hall, kind: smoke, transport: zigbee, ieee: "00:0d:6f:00:0a:90:69:e7"}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _line(path: Path, needle: str) -> int:
    return next(n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in line)


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_scenario(path)
    return str(info.value)


def test_the_bundled_bathroom_cord_scenario_loads() -> None:
    path = bundled("bathroom-cord")
    assert path.is_file()
    scenario = load_scenario(path)
    assert scenario.name == "bathroom-cord"
    assert (scenario.household.id, scenario.household.county) == ("hh-0001", "minle")
    assert scenario.effective_hub_id == "hub-hh-0001"
    (cord,) = scenario.devices
    assert (cord.id, cord.kind, cord.transport, cord.pin) == ("cord-bath", DeviceKind.PULLCORD, Transport.GPIO, 17)
    steps = scenario.ordered_steps()
    assert [s.at for s in steps] == sorted(s.at for s in steps)
    assert [(s.device, s.do) for s in steps if s.device] == [("cord-bath", "pull"), ("cord-bath", "pull")]
    assert any(s.broker == "down" for s in steps) and any(s.hub == "kill" for s in steps)
    (expectation,) = scenario.expect
    assert expectation.event is EventType.ALARM_EMERGENCY
    assert (expectation.device, expectation.count, expectation.delivered) == ("cord-bath", 2, True)


@pytest.mark.parametrize("path", sorted(SCENARIO_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_scenario_loads(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    assert scenario.expect, "a shipped scenario must check something"


def test_there_are_shipped_scenarios_and_bundled_finds_each() -> None:
    names = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))
    assert "bathroom-cord" in names
    for name in names:
        assert bundled(name).resolve() == (SCENARIO_DIR / f"{name}.yaml").resolve()


def test_a_good_scenario_orders_its_steps_by_time(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEAD
        + textwrap.dedent(
            """\
        steps:
          - {at: 3.0, uplink: up}
          - {at: 1.0, device: cord-bath, do: pull}
          - {at: 2.0, uplink: down}
        expect:
          - {event: alarm.emergency, device: cord-bath, count: 1}
        """
        ),
    )
    scenario = load_scenario(path)
    assert [s.at for s in scenario.ordered_steps()] == [1.0, 2.0, 3.0]
    assert scenario.steps[1].hold == 0.3


def test_a_step_naming_an_unknown_device_is_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEAD + "steps:\n  - {at: 1.0, device: cord-bath, do: pull}\n  - {at: 2.0, device: cord-bed, do: pull}\n",
    )
    message = _error(path)
    assert message.startswith(str(path))
    assert "'cord-bed'" in message and "cord-bath" in message  # the wrong name and the known ones


def test_a_step_naming_an_unknown_device_names_its_line_and_field(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEAD + "steps:\n  - {at: 1.0, device: cord-bath, do: pull}\n  - {at: 2.0, device: cord-bed, do: pull}\n",
    )
    message = _error(path)
    assert re.match(rf"{re.escape(str(path))}:{_line(path, 'cord-bed')}: steps\[1\]", message), message


def test_a_step_with_both_device_and_uplink_names_its_line_and_field(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEAD + "steps:\n  - {at: 1.0, uplink: down}\n  - {at: 2.0, device: cord-bath, do: pull, uplink: down}\n",
    )
    message = _error(path)
    assert message.startswith(f"{path}:{_line(path, 'do: pull')}: steps[1]: ")
    assert "exactly one of" in message


def test_a_step_with_nothing_to_do_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + "steps:\n  - {at: 1.0}\n")
    message = _error(path)
    assert message.startswith(f"{path}:{_line(path, 'at: 1.0')}: steps[0]: ")
    assert "exactly one of" in message


def test_a_step_doing_what_the_device_cannot_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + "steps:\n  - {at: 1.0, device: cord-bath, do: smoke}\n")
    message = _error(path)
    assert message.startswith(str(path))
    assert "'cord-bath'" in message and "'smoke'" in message
    assert "pull, release" in message  # what it can do


def test_a_device_step_without_do_names_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + "steps:\n  - {at: 1.0, device: cord-bath}\n")
    message = _error(path)
    assert message.startswith(f"{path}:{_line(path, 'at: 1.0')}: steps[0]: ")
    assert "needs `do`" in message


def test_a_step_doing_what_the_device_cannot_names_its_line_and_field(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEAD + "steps:\n  - {at: 1.0, device: cord-bath, do: pull}\n  - {at: 2.0, device: cord-bath, do: smoke}\n",
    )
    message = _error(path)
    assert re.match(rf"{re.escape(str(path))}:{_line(path, 'do: smoke')}: steps\[1\]", message), message


def test_an_unknown_event_type_in_expect_names_its_line_and_the_allowed_types(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEAD
        + textwrap.dedent(
            """\
        expect:
          - device: cord-bath
            event: alarm.emergancy
        """
        ),
    )
    message = _error(path)
    assert message.startswith(f"{path}:{_line(path, 'alarm.emergancy')}: expect[0].event: ")
    assert "'alarm.emergancy'" in message and "'alarm.emergency'" in message


def test_a_misspelled_key_names_its_line_and_field(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        HEAD
        + textwrap.dedent(
            """\
        steps:
          - at: 1.0
            device: cord-bath
            dooo: pull
        """
        ),
    )
    message = _error(path)
    assert message.startswith(f"{path}:{_line(path, 'dooo')}: steps[0].dooo: unknown key")


def test_a_misspelled_top_level_key_names_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + "expects: []\n")
    assert _error(path).startswith(f"{path}:{_line(path, 'expects')}: expects: unknown key")


@pytest.mark.parametrize("text", ["- just\n- a list\n", "just a string\n", ""])
def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)
    message = _error(path)
    assert message.startswith(f"{path}:1: ")
    assert "mapping" in message


def test_invalid_yaml_says_so_with_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, HEAD + "steps:\n  - {at: 1.0, device: cord-bath, do: pull\nexpect: []\n")
    message = _error(path)
    assert message.startswith(f"{path}: not valid YAML")
    assert f"line {_line(path, 'do: pull')}" in message


def test_a_missing_scenario_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert _error(path).startswith(f"{path}: cannot read the scenario")


def test_uplink_steps_and_expectations_need_their_uplink(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: x\nhousehold: {id: hh-1, county: minle}\n"
        "devices:\n  - {id: cord-bath, kind: pullcord, transport: gpio, pin: 17}\n"
        "steps:\n  - {at: 1.0, modem: no_signal}\n"
    )
    with pytest.raises(ConfigError, match=r"s.yaml:6: steps\[0\].modem: no sms uplink"):
        load_scenario(path)
    path.write_text(
        "name: x\nhousehold: {id: hh-1, county: minle}\n"
        "devices:\n  - {id: cord-bath, kind: pullcord, transport: gpio, pin: 17}\n"
        "uplinks:\n  - {type: mqtt}\n  - {type: sms, numbers: ['+8612345678901']}\n"
        "steps:\n  - {at: 1.0, uplink: flaky, path: mqtt}\n  - {at: 2.0, modem: no_signal}\n"
        "expect:\n  - {sms: true, count: 1}\n"
    )
    scenario = load_scenario(path)
    assert [s.uplink or s.modem for s in scenario.steps] == ["flaky", "no_signal"]
    assert scenario.uplink("sms").numbers == ["+8612345678901"]
