"""`anju decode bthome`: the bthome.io example decodes; a wrong key is one line and exit 2."""

from __future__ import annotations

import json

import pytest

from hub.cli import main
from simulator.bthome import VirtualBthomeDevice

SPEC = "41a47266c95f730011223378237214"  # bthome.io's encryption example
SPEC_MAC = "54:48:E6:8F:80:A5"
SPEC_KEY = "231d39c1d7cc1ab1aee224cd096db932"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["decode", "bthome", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_published_encrypted_example(capsys) -> None:
    code, out, _ = run(capsys, SPEC, "--mac", SPEC_MAC, "--key", SPEC_KEY, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["encrypted"] is True and result["trigger_based"] is False
    assert result["values"] == {"temperature": 25.06, "humidity": 50.55}
    assert result["counter"] == 0x33221100 and result["events"] == []


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ((SPEC, "--mac", SPEC_MAC, "--key", "00" * 16), "bad MIC"),
        ((SPEC, "--mac", "11:22:33:44:55:66", "--key", SPEC_KEY), "bad MIC"),
        ((SPEC,), "give the device's key"),
        ((SPEC, "--key", "abcd"), "16 (32 hex digits)"),
        (("zz",), "non-hexadecimal"),
        (("2001",), "only version 2"),
        (("41a472", "--key", SPEC_KEY), "too short"),
        (("",), "no service data"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, args: tuple[str, ...], reason: str) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2 and out == ""
    assert reason in err and err.count("\n") == 1, err


def test_a_pendant_press_and_battery_in_plain_words(capsys) -> None:
    pendant = VirtualBthomeDevice("A4:C1:38:00:00:09", bytes.fromhex(SPEC_KEY))
    pendant.battery_level(87)
    press = pendant.press()
    code, out, _ = run(capsys, press.hex(), "--mac", "A4:C1:38:00:00:09", "--key", SPEC_KEY, "--json")
    result = json.loads(out)
    assert code == 0 and result["trigger_based"] is True and result["events"] == ["press"]
    assert isinstance(result["packet_id"], int)
    code, out, _ = run(capsys, pendant.battery_level(42).hex(), "--mac", "A4:C1:38:00:00:09", "--key", SPEC_KEY)
    assert code == 0 and "battery: 42" in out and "encrypted: True" in out


REFERENCE_DC09 = 'F4D20029"SIA-DCS"0001RF3L77#1234[#1234|NRR|Atest]'  # the reference line


def test_decode_dc09_reference_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "dc09", REFERENCE_DC09, "--json"]) == 0
    fields = json.loads(capsys.readouterr().out)
    assert fields["message_id"] == "SIA-DCS" and fields["account"] == "1234" and fields["sequence"] == "0001"
    assert fields["receiver"] == "F3" and fields["prefix"] == "77" and fields["data"].startswith("#1234|NRR|Atest")


def test_decode_dc09_bad_crc_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "dc09", REFERENCE_DC09.replace("F4D2", "F4D3")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CRC mismatch" in err
