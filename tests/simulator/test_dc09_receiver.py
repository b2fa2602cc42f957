"""The simulated alarm receiving centre (pysiaalarm underneath) records what our DC-09 transmitter sends."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud_bridge.dc09 import Dc09Client, KeyFormat, MessageFormat, ResponseKind, encode_event
from hub.model import Event, EventType
from simulator.dc09_receiver import Dc09Receiver, ReceivedSignal, main, pysiaalarm_key, read_record

ACCOUNT = "1234"
ASCII_KEY = "ANJU-TEST-KEY-16"  # 16 characters: AES-128 the pysiaalarm way
HEX_KEY = ASCII_KEY.encode("ascii").hex().upper()  # the same 16 bytes as a DC-09 receiver writes them
ZONE = 3


def _event(type_: EventType) -> Event:
    return Event(type=type_, hub_id="hub-0001", household_id="hh-0001", county="county-01", device_id="d1")


def _message(
    type_: EventType, fmt: MessageFormat, sequence: int, key: str | None = None, key_format: KeyFormat = "hex"
) -> bytes:
    # pysiaalarm needs a receiver number on every frame.
    return encode_event(
        _event(type_),
        account=ACCOUNT,
        receiver=1,
        prefix=0,
        fmt=fmt,
        sequence=sequence,
        zone=ZONE,
        key=key,
        key_format=key_format,
    )


def _client(receiver: Dc09Receiver, **kwargs: object) -> Dc09Client:
    return Dc09Client("127.0.0.1", receiver.port, ACCOUNT, receiver=1, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Dc09Receiver]:
    async with Dc09Receiver(ACCOUNT, record_file=tmp_path / "dc09.jsonl") as running:
        yield running


@pytest.mark.parametrize(
    ("type_", "fmt", "code", "contact_id"),
    [
        (EventType.ALARM_EMERGENCY, "ADM-CID", "MA", "100"),  # medical
        (EventType.ALARM_FALL, "ADM-CID", "MA", "100"),  # a fall travels as medical
        (EventType.ALARM_FIRE, "ADM-CID", "FA", "111"),
        (EventType.ALARM_EMERGENCY, "SIA-DCS", "MA", None),
        (EventType.ALARM_FIRE, "SIA-DCS", "FA", None),
    ],
)
async def test_records_alarms(
    receiver: Dc09Receiver, type_: EventType, fmt: MessageFormat, code: str, contact_id: str | None
) -> None:
    assert type_.spec.sia == code  # what hub.model says we send
    response = await _client(receiver).send(_message(type_, fmt, 7), timeout=2)
    assert response.kind is ResponseKind.ACK
    received = await receiver.wait_for(lambda s: s.sequence == "0007", timeout=2)
    assert received == ReceivedSignal(
        mono_ns=received.mono_ns,
        account=ACCOUNT,
        code=code,
        contact_id=contact_id,
        message_type=fmt,
        sequence="0007",
        zone="003",
        encrypted=False,
        valid=True,
    )
    assert receiver.signals == receiver.alarms() == [received]


@pytest.mark.parametrize(("key", "key_format"), [(ASCII_KEY, "ascii"), (HEX_KEY, "hex")])
@pytest.mark.parametrize("fmt", ["ADM-CID", "SIA-DCS"])
async def test_records_encrypted_alarms(key: str, key_format: KeyFormat, fmt: MessageFormat) -> None:
    async with Dc09Receiver(ACCOUNT, key=key, key_format=key_format) as receiver:
        client = _client(receiver, key=key, key_format=key_format)
        response = await client.send(_message(EventType.ALARM_EMERGENCY, fmt, 1, key, key_format), timeout=2)
        assert response.kind is ResponseKind.ACK and response.encrypted
        received = await receiver.wait_for(lambda s: s.code == "MA", timeout=2)
        assert received.encrypted and received.valid and received.zone == "003"
        assert received.contact_id == ("100" if fmt == "ADM-CID" else None)


async def test_wrong_key_is_not_recorded() -> None:
    async with Dc09Receiver(ACCOUNT, key=ASCII_KEY) as receiver:
        wrong = "WRONG-KEY-16CHAR"
        client = _client(receiver, key=wrong, key_format="ascii")
        message = _message(EventType.ALARM_FIRE, "SIA-DCS", 1, wrong, "ascii")
        assert (await client.send(message, timeout=2)).kind is ResponseKind.NAK
        assert receiver.signals == []


async def test_link_test_is_recorded_but_not_an_alarm(receiver: Dc09Receiver) -> None:
    client = _client(receiver, keep_alive=True)
    try:
        assert (await client.send_null(1, timeout=2)).kind is ResponseKind.ACK
        await client.send(_message(EventType.ALARM_FIRE, "SIA-DCS", 2), timeout=2)
        assert (await client.send_null(3, timeout=2)).kind is ResponseKind.ACK
        await receiver.wait_for(lambda s: s.sequence == "0003", timeout=2)
    finally:
        await client.close()
    null = receiver.signals[0]
    assert (null.message_type, null.code, null.sequence) == ("NULL", "RP", "0001")
    assert null.zone is None and null.contact_id is None
    assert [s.sequence for s in receiver.signals] == ["0001", "0002", "0003"]
    assert [(s.sequence, s.code) for s in receiver.alarms()] == [("0002", "FA")]
    assert receiver.signals[0].mono_ns <= receiver.signals[1].mono_ns <= receiver.signals[2].mono_ns


async def test_record_file_has_one_json_line_per_signal(receiver: Dc09Receiver) -> None:
    client = _client(receiver)
    await client.send(_message(EventType.ALARM_EMERGENCY, "ADM-CID", 1), timeout=2)
    await client.send_null(2, timeout=2)
    await client.send(_message(EventType.ALARM_FIRE, "SIA-DCS", 3), timeout=2)
    await receiver.wait_for(lambda s: s.sequence == "0003", timeout=2)
    assert receiver.record_file is not None
    lines = receiver.record_file.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [dataclasses.asdict(s) for s in receiver.signals]
    assert len(lines) == 3
    assert read_record(receiver.record_file) == receiver.signals


async def test_stop_and_start_on_the_same_port(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    receiver = Dc09Receiver(ACCOUNT, record_file=tmp_path / "dc09.jsonl")
    await receiver.start()
    try:
        port = receiver.port
        assert port != 0
        kept = _client(receiver, keep_alive=True)  # a transmitter holding its connection open
        await kept.send(_message(EventType.ALARM_EMERGENCY, "ADM-CID", 1), timeout=2)

        async with asyncio.timeout(1):
            await receiver.stop()  # closes the kept connection too, without waiting for the sender
        assert not receiver.running
        with pytest.raises(OSError):
            await kept.send(_message(EventType.ALARM_EMERGENCY, "ADM-CID", 2), timeout=2)
        with pytest.raises(OSError):
            await _client(receiver).send(_message(EventType.ALARM_EMERGENCY, "ADM-CID", 2), timeout=2)

        await receiver.start()
        assert receiver.port == port
        assert (await kept.send(_message(EventType.ALARM_FIRE, "SIA-DCS", 3), timeout=2)).kind is ResponseKind.ACK
        await receiver.wait_for(lambda s: s.sequence == "0003", timeout=2)
        assert [s.sequence for s in receiver.signals] == ["0001", "0003"]
        assert receiver.record_file is not None and len(read_record(receiver.record_file)) == 2
        await kept.close()
    finally:
        await receiver.stop()
    await receiver.stop()  # stopping twice is harmless
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # closed cleanly, nothing cancelled


async def test_wait_for_times_out_saying_what_arrived(receiver: Dc09Receiver) -> None:
    await _client(receiver).send_null(1, timeout=2)
    await receiver.wait_for(lambda s: s.message_type == "NULL", timeout=2)
    with pytest.raises(TimeoutError, match=r"1 received .*NULL #1234 seq 0001 code RP"):
        await receiver.wait_for(lambda s: s.code == "FA", timeout=0.05)


def test_hex_key_with_unprintable_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match=r"pysiaalarm cannot use this hex key.*byte 0 \(0x00\).*printable ASCII"):
        Dc09Receiver(ACCOUNT, key="000102030405060708090A0B0C0D0E0F", key_format="hex")
    with pytest.raises(ValueError, match="32, 48 or 64 hex digits"):
        Dc09Receiver(ACCOUNT, key="00", key_format="hex")
    with pytest.raises(ValueError, match="16, 24 or 32 printable ASCII"):
        Dc09Receiver(ACCOUNT, key="short")
    with pytest.raises(ValueError, match="account"):
        Dc09Receiver("12G4")
    assert pysiaalarm_key(HEX_KEY, "hex") == pysiaalarm_key(ASCII_KEY, "ascii") == ASCII_KEY


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--port", "--account", "--key", "--key-format", "--record", "printable ASCII", "SIGTERM"):
        assert option in text


async def test_command_line_runs_until_sigterm(tmp_path: Path) -> None:
    record = tmp_path / "dc09.jsonl"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulator.dc09_receiver", "--port", "0", "--account", ACCOUNT,
        "--key", HEX_KEY, "--key-format", "hex", "--record", str(record),
        stdout=asyncio.subprocess.PIPE, env=os.environ | {"PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(10):
            banner = (await process.stdout.readline()).decode()
            assert "listening on 127.0.0.1:" in banner and "encrypted" in banner
            port = int(banner.split("127.0.0.1:")[1].split()[0])
            client = Dc09Client("127.0.0.1", port, ACCOUNT, receiver=1, key=HEX_KEY, key_format="hex")
            await client.send(_message(EventType.ALARM_FIRE, "ADM-CID", 5, HEX_KEY, "hex"), timeout=2)
            line = (await process.stdout.readline()).decode()
            assert line.strip() == "ADM-CID #1234 seq 0005 code FA cid 111 zone 003 encrypted"
            process.send_signal(signal.SIGTERM)
            assert "stopped after 1 signal(s), 1 alarm(s)" in (await process.stdout.read()).decode()
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert [(s.code, s.contact_id) for s in read_record(record)] == [("FA", "111")]
