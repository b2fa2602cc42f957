"""`anju decode znp`: the issue's reference frames, decoded with zigpy-znp's and zigpy's parsers."""

from __future__ import annotations

import json
import struct

import pytest

from edge.mt_decode import FrameError, decode_mt_frame
from hub.cli import main


def frame(cmd0: int, cmd1: int, data: bytes) -> bytes:
    body = bytes([len(data), cmd0, cmd1]) + data
    fcs = 0
    for byte in body:
        fcs ^= byte
    return b"\xfe" + body + bytes([fcs])


def af_incoming(zcl: bytes, cluster: int = 0x0500, src: int = 0x1234) -> bytes:
    head = struct.pack("<HHHBBBBBIBB", 0, cluster, src, 1, 1, 0, 100, 0, 0, 0, len(zcl))
    return frame(0x44, 0x81, head + zcl + struct.pack("<HB", src, 0))


def test_sys_ping_and_its_reply() -> None:
    ping = decode_mt_frame(bytes.fromhex("FE00210120"))
    assert (ping["type"], ping["subsystem"], ping["command"]) == ("SREQ", "SYS", "SYS_Ping_Req")
    reply = decode_mt_frame(bytes.fromhex("FE0261011100 73".replace(" ", "")))
    assert reply["type"] == "SRSP" and reply["fields"]["Capabilities"] == "SYS|ZDO"


def test_end_device_announce() -> None:
    result = decode_mt_frame(bytes.fromhex("FE0D45C1341234 12E769900A006F0D00807F".replace(" ", "")))
    assert result["command"] == "ZDO_EndDeviceAnnceInd_Callback"
    assert result["fields"]["NWK"] == "0x1234"
    assert result["fields"]["IEEE"] == "00:0d:6f:00:0a:90:69:e7"


def test_zone_status_change_notification_names_its_bits() -> None:
    result = decode_mt_frame(af_incoming(bytes.fromhex("094B00260000000000")))
    zcl = result["zcl"]
    assert zcl["tsn"] == 0x4B and zcl["command"] == "status_change_notification"
    assert zcl["fields"]["zone_status"] == 0x0026
    assert zcl["zone_status_bits"] == ["alarm2", "tamper", "restore_reports"]


def test_other_clusters_carry_no_zcl_decoding() -> None:
    assert "zcl" not in decode_mt_frame(af_incoming(b"\x18\x01\x0a\x21\x00\x20\x64", cluster=0x0001))


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (bytes.fromhex("FE00210121"), "bad FCS"),
        (bytes.fromhex("FE01210120"), "length byte says 1"),
        (bytes.fromhex("FF00210120"), "SOF 0xFE"),
        (bytes.fromhex("FE0021"), "at least 5 bytes"),
    ],
)
def test_bad_frames_say_what_is_wrong(data: bytes, says: str) -> None:
    with pytest.raises(FrameError, match=says):
        decode_mt_frame(data)


def test_cli_json_and_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "znp", "FE 00 21 01 20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["command"] == "SYS_Ping_Req"
    assert main(["decode", "znp", "FE 00 21 01 21"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("anju decode znp: bad FCS") and err.count("\n") == 1


def test_arbitrary_bytes_never_raise_anything_but_frame_error() -> None:
    import random

    rng = random.Random(7)
    for _ in range(3000):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        if rng.random() < 0.5 and data:
            data = b"\xfe" + bytes([max(0, len(data) - 4) % 256]) + data[2:]
        try:
            decode_mt_frame(data)
        except FrameError:
            pass
