"""SIA DC-09 framing, encryption and response parsing, and interoperability with pysiaalarm as receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pysiaalarm import SIAAccount, SIAEvent
from pysiaalarm.aio import SIAClient

from cloud_bridge.dc09 import (
    CR,
    LF,
    Dc09Client,
    FrameError,
    ResponseKind,
    build_message,
    crc16_arc,
    encode_event,
    null_message,
    parse_frame,
    parse_response,
    sia_dcs_data,
)
from hub.model import Event, EventType

ACCOUNT = "1234"
WHEN = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
HEX_KEY = "000102030405060708090A0B0C0D0E0F"  # AES-128 as a DC-09 receiver issues it
ASCII_KEY = "ANJU-TEST-KEY-16"  # 16 characters: AES-128 the pysiaalarm way


def _event(type_: EventType) -> Event:
    return Event(type=type_, hub_id="hub-0001", household_id="hh-0001", county="county-01", device_id="d1")


def _frame(body: str) -> bytes:
    """A correctly framed message around `body` (CRC and length computed here, independently)."""
    raw = body.encode("ascii")
    return LF + f"{crc16_arc(raw):04X}{len(raw):04X}".encode() + raw + CR


def _body(message: bytes) -> str:
    return message[9:-1].decode("ascii")


# --- building -------------------------------------------------------------------------------------


def test_reference_line_from_the_issue() -> None:
    message = build_message(
        "SIA-DCS", sia_dcs_data("1234", "RR", text="test"), sequence=1, receiver="F3", prefix="77", account="1234"
    )
    assert message == b'\nF4D20029"SIA-DCS"0001RF3L77#1234[#1234|NRR|Atest]\r'
    assert (
        build_message("SIA-DCS", "#1234|NRR|Atest", sequence=1, receiver=0xF3, prefix=0x77, account="1234") == message
    )


def test_crc16_arc_check_value() -> None:
    assert crc16_arc(b"123456789") == 0xBB3D
    assert crc16_arc(b"") == 0


@pytest.mark.parametrize(
    ("type_", "contact_id"),
    [
        (EventType.ALARM_EMERGENCY, "1100 01 007"),  # medical: new event 100
        (EventType.ALARM_FIRE, "1111 01 007"),  # fire: new event 111
        (EventType.RESTORE_FIRE, "3111 01 007"),  # smoke cleared: restore (qualifier 3) of 111
        (EventType.FAULT_TAMPER, "1144 01 007"),
    ],
)
def test_adm_cid(type_: EventType, contact_id: str) -> None:
    message = encode_event(
        _event(type_), account=ACCOUNT, receiver=1, prefix=2, fmt="ADM-CID", sequence=42, zone=7, timestamp=WHEN
    )
    assert _body(message) == f'"ADM-CID"0042R1L2#1234[#1234|{contact_id}]_05:06:07,03-04-2025'
    assert message[5:9] == f"{len(message) - 10:04X}".encode()
    frame = parse_frame(message)
    assert (frame.message_id, frame.sequence, frame.account, frame.timestamp) == ("ADM-CID", "0042", "1234", WHEN)


def test_sia_dcs() -> None:
    message = encode_event(
        _event(EventType.ALARM_EMERGENCY),
        account="abc123",
        receiver=None,
        prefix="0",
        fmt="SIA-DCS",
        sequence=9999,
        zone=12,
        partition=2,
        timestamp=False,
    )
    assert _body(message) == '"SIA-DCS"9999L0#ABC123[#ABC123|Nri2/MA012]'


def test_null_link_test() -> None:
    assert _body(null_message(sequence=5, account=ACCOUNT, receiver=1, prefix=0)) == '"NULL"0005R1L0#1234[]'


def test_timestamp_defaults_to_now_utc() -> None:
    message = encode_event(
        _event(EventType.ALARM_FIRE), account=ACCOUNT, receiver=1, prefix=0, fmt="SIA-DCS", sequence=1, zone=1
    )
    stamp = parse_frame(message).timestamp
    assert stamp is not None and abs(stamp - datetime.now(UTC)) < timedelta(seconds=2)


@pytest.mark.parametrize("type_", [t for t in EventType if t.spec.contact_id is None])
def test_event_without_code_is_refused(type_: EventType) -> None:
    with pytest.raises(ValueError, match="no Contact ID code"):
        encode_event(_event(type_), account=ACCOUNT, receiver=1, prefix=0, fmt="ADM-CID", sequence=1, zone=1)
    with pytest.raises(ValueError, match="no SIA code"):
        encode_event(_event(type_), account=ACCOUNT, receiver=1, prefix=0, fmt="SIA-DCS", sequence=1, zone=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sequence": 0}, "sequence"),
        ({"sequence": 10000}, "sequence"),
        ({"account": "12"}, "account"),
        ({"account": "12G4"}, "account"),
        ({"prefix": "XYZ"}, "prefix"),
        ({"receiver": "1234567"}, "receiver"),
        ({"key": "00"}, "hex DC-09 key"),
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"sequence": 1, "account": ACCOUNT, "prefix": 0, "receiver": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        build_message("NULL", "", **args)  # type: ignore[arg-type]


# --- encryption -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [HEX_KEY, HEX_KEY + "1011121314151617", HEX_KEY * 2])
def test_encryption_round_trip_hex_keys(key: str) -> None:
    message = encode_event(
        _event(EventType.ALARM_FIRE),
        account=ACCOUNT,
        receiver=1,
        prefix=0,
        fmt="SIA-DCS",
        sequence=3,
        zone=4,
        key=key,
        timestamp=WHEN,
        rng=Random(1),
    )
    body = _body(message)
    assert body.startswith('"*SIA-DCS"0003R1L0#1234[')
    cipher = body.split("[", 1)[1]
    assert len(cipher) % 32 == 0 and cipher == cipher.upper()
    frame = parse_frame(message, key=key)
    assert frame.encrypted and frame.data == "#1234|Nri1/FA004]_05:06:07,03-04-2025" and frame.timestamp == WHEN
    assert parse_frame(message).data is None  # without the key: verified, but not readable


@pytest.mark.parametrize("fmt", ["SIA-DCS", "ADM-CID"])
def test_encryption_decrypted_by_pysiaalarm(fmt: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    message = encode_event(
        _event(EventType.ALARM_EMERGENCY),
        account=ACCOUNT,
        receiver=1,
        prefix=0,
        fmt=fmt,  # type: ignore[arg-type]
        sequence=8,
        zone=5,
        key=ASCII_KEY,
        key_format="ascii",
        timestamp=now,
    )
    line = message.decode("ascii").strip()
    event = SIAEvent.from_line(line, {ACCOUNT: SIAAccount(ACCOUNT, ASCII_KEY)})
    assert event.valid_message  # pysiaalarm's CRC agrees
    assert event.code == "MA"
    assert event.timestamp == now
    assert event.response is not None and event.response.value == "ACK"


def test_hex_and_ascii_keys_differ() -> None:
    """The same 32 characters are a 16-byte key as hex and a 32-byte key as ASCII: not interchangeable."""
    common = {"sequence": 1, "account": ACCOUNT, "prefix": 0, "rng": Random(0)}
    as_hex = build_message("NULL", "", key=HEX_KEY, key_format="hex", **common)  # type: ignore[arg-type]
    common["rng"] = Random(0)
    as_ascii = build_message("NULL", "", key=HEX_KEY, key_format="ascii", **common)  # type: ignore[arg-type]
    assert as_hex != as_ascii
    with pytest.raises(FrameError):
        parse_frame(as_hex, key=HEX_KEY, key_format="ascii")


# --- responses ------------------------------------------------------------------------------------


def test_parse_ack_nak_duh() -> None:
    ack = parse_response(_frame('"ACK"0042R1L0#1234[]'))
    assert (ack.kind, ack.sequence, ack.account, ack.timestamp) == (ResponseKind.ACK, "0042", "1234", None)
    nak = parse_response(_frame('"NAK"0000R0L0A0[]_23:59:58,12-31-2024'))
    assert nak.kind is ResponseKind.NAK
    assert nak.timestamp == datetime(2024, 12, 31, 23, 59, 58, tzinfo=UTC)
    assert parse_response(_frame('"DUH"0042R1L0#1234[]')).kind is ResponseKind.DUH


def test_parse_encrypted_ack_from_pysiaalarm() -> None:
    """pysiaalarm's own encrypted ACK (zero-filled, no `|`): recognised, decrypted, its clock read."""
    message = build_message("NULL", "", sequence=7, account=ACCOUNT, receiver=1, prefix=0, timestamp=datetime.now(UTC),
                            key=ASCII_KEY, key_format="ascii")  # fmt: skip
    event = SIAEvent.from_line(message.decode().strip(), {ACCOUNT: SIAAccount(ACCOUNT, ASCII_KEY)})
    answer = event.create_response()
    response = parse_response(answer, key=ASCII_KEY, key_format="ascii")
    assert response.kind is ResponseKind.ACK and response.encrypted and response.sequence == "0007"
    assert response.timestamp is not None and abs(response.timestamp - datetime.now(UTC)) < timedelta(seconds=5)
    assert parse_response(answer).kind is ResponseKind.ACK  # the kind is readable without the key


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"", "LF"),
        (b'"ACK"', "LF"),
        (b"\n\r", "empty frame"),
        (b"\nABCD0001X", "CR"),
        (b'\nZZZZ0005"ACK"\r', "CRC field"),
        (_frame('"ACK"0042R1L0#1234[]').replace(b"0014", b"0015"), "length"),
        (_frame('"ACK"0042R1L0#1234[]').replace(b"1234", b"1235"), "CRC mismatch"),
        (_frame('"ACK"42R1L0#1234[]'), "sequence"),
        (_frame('"ACK"0042R1L0#1234'), "'\\['"),
        (_frame('"ACK"0042R1L0#1234['), "closing"),
        (_frame('"NAK"0000R0L0A0[]'), "NAK without"),
        (_frame('"SIA-DCS"0042R1L0#1234[]'), "not a receiver response"),
        (_frame('"ACK"0042R1L0#1234[]_25:00:00,01-01-2025'), "timestamp"),
    ],
)
def test_bad_frames_say_what_is_wrong(data: bytes, complaint: str) -> None:
    with pytest.raises(FrameError, match=complaint):
        parse_response(data)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=120) | st.text(max_size=80).map(lambda t: _frame(t.encode("ascii", "ignore").decode())))
def test_parse_response_never_crashes(data: bytes) -> None:
    try:
        parse_response(data, key=HEX_KEY)
    except FrameError:
        pass


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.binary(min_size=16, max_size=64).map(lambda b: b[: len(b) - len(b) % 16].hex()))
def test_parse_encrypted_garbage_never_crashes(cipher: str) -> None:
    try:
        parse_response(_frame(f'"*ACK"0001R1L0#1234[{cipher}'), key=HEX_KEY)
    except FrameError:
        pass


# --- interoperability with pysiaalarm as the receiver ----------------------------------------------


@dataclass
class Receiver:
    port: int
    events: list[SIAEvent] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def next_event(self) -> SIAEvent:
        await asyncio.wait_for(self.arrived.wait(), 2)
        self.arrived.clear()
        return self.events.pop(0)


async def _start_receiver(key: str | None) -> tuple[SIAClient, Receiver]:
    holder: list[Receiver] = []

    async def on_event(event: SIAEvent) -> None:
        holder[0].events.append(event)
        holder[0].arrived.set()

    client = SIAClient("127.0.0.1", 0, [SIAAccount(ACCOUNT, key)], on_event)  # type: ignore[abstract]  # TCP subclass
    await client.async_start()
    assert client.server is not None  # type: ignore[attr-defined]
    port = client.server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    holder.append(Receiver(port))
    return client, holder[0]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    client, running = await _start_receiver(None)
    yield running
    await client.async_stop()


@pytest.fixture
async def encrypted_receiver() -> AsyncIterator[Receiver]:
    client, running = await _start_receiver(ASCII_KEY)
    yield running
    await client.async_stop()


def _sender(port: int, **kwargs: object) -> Callable[..., bytes]:
    def encode(type_: EventType, fmt: str, sequence: int, **extra: object) -> bytes:
        args = {"account": ACCOUNT, "receiver": 1, "prefix": 0, "zone": 3, "sequence": sequence} | kwargs | extra
        return encode_event(_event(type_), fmt=fmt, **args)  # type: ignore[arg-type]

    return encode


@pytest.mark.parametrize("fmt", ["ADM-CID", "SIA-DCS"])
async def test_pysiaalarm_accepts_our_alarms(receiver: Receiver, fmt: str) -> None:
    client = Dc09Client("127.0.0.1", receiver.port, ACCOUNT, receiver=1)
    encode = _sender(receiver.port)
    expected = {EventType.ALARM_EMERGENCY: "MA", EventType.ALARM_FIRE: "FA", EventType.FAULT_TAMPER: "TA"}
    for sequence, (type_, code) in enumerate(expected.items(), start=1):
        response = await client.send(encode(type_, fmt, sequence), timeout=2)
        assert response.kind is ResponseKind.ACK and response.sequence == f"{sequence:04d}"
        event = await receiver.next_event()
        assert event.code == code and event.account == ACCOUNT
        if fmt == "ADM-CID":
            assert (event.event_qualifier, event.event_type, event.ri) == ("1", type_.spec.contact_id, "003")


async def test_pysiaalarm_link_test_and_keep_alive(receiver: Receiver) -> None:
    client = Dc09Client("127.0.0.1", receiver.port, ACCOUNT, receiver=1, keep_alive=True)
    try:
        for sequence in (1, 2):
            assert (await client.send_null(sequence, timeout=2)).kind is ResponseKind.ACK
            assert (await receiver.next_event()).code == "RP"  # pysiaalarm reports NULL as RP
    finally:
        await client.close()


async def test_pysiaalarm_nak_gives_its_clock(receiver: Receiver) -> None:
    client = Dc09Client("127.0.0.1", receiver.port, ACCOUNT, receiver=1)
    stale = datetime.now(UTC) - timedelta(minutes=10)
    message = _sender(receiver.port)(EventType.ALARM_EMERGENCY, "SIA-DCS", 1, timestamp=stale)
    response = await client.send(message, timeout=2)
    assert response.kind is ResponseKind.NAK
    assert response.timestamp is not None and abs(response.timestamp - datetime.now(UTC)) < timedelta(seconds=5)
    assert abs(client.clock_offset) < timedelta(seconds=5)
    assert not receiver.events
    retry = _sender(receiver.port)(
        EventType.ALARM_EMERGENCY, "SIA-DCS", 1, timestamp=datetime.now(UTC) + client.clock_offset
    )
    assert (await client.send(retry, timeout=2)).kind is ResponseKind.ACK


async def test_pysiaalarm_duh_for_unknown_code(receiver: Receiver) -> None:
    client = Dc09Client("127.0.0.1", receiver.port, ACCOUNT, receiver=1)
    message = build_message("SIA-DCS", sia_dcs_data(ACCOUNT, "QQ", zone=1), sequence=4, account=ACCOUNT,
                            receiver=1, prefix=0, timestamp=datetime.now(UTC))  # fmt: skip
    response = await client.send(message, timeout=2)
    assert response.kind is ResponseKind.DUH and response.sequence == "0004"


@pytest.mark.parametrize("fmt", ["ADM-CID", "SIA-DCS"])
async def test_pysiaalarm_accepts_our_encrypted_alarms(encrypted_receiver: Receiver, fmt: str) -> None:
    client = Dc09Client("127.0.0.1", encrypted_receiver.port, ACCOUNT, receiver=1, key=ASCII_KEY, key_format="ascii")
    encode = _sender(encrypted_receiver.port, key=ASCII_KEY, key_format="ascii")
    for sequence, (type_, code) in enumerate([(EventType.ALARM_EMERGENCY, "MA"), (EventType.ALARM_FIRE, "FA")], 1):
        response = await client.send(encode(type_, fmt, sequence), timeout=2)
        assert response.kind is ResponseKind.ACK and response.encrypted
        assert response.timestamp is not None  # the receiver's clock, decrypted from its *ACK
        assert (await encrypted_receiver.next_event()).code == code
    assert (await client.send_null(9, timeout=2)).kind is ResponseKind.ACK


async def test_pysiaalarm_refuses_a_wrong_key(encrypted_receiver: Receiver) -> None:
    wrong = "WRONG-KEY-16CHAR"
    client = Dc09Client("127.0.0.1", encrypted_receiver.port, ACCOUNT, receiver=1, key=wrong, key_format="ascii")
    message = _sender(encrypted_receiver.port, key=wrong, key_format="ascii", rng=Random(3))(
        EventType.ALARM_EMERGENCY, "SIA-DCS", 1
    )
    response = await client.send(message, timeout=2)
    # pysiaalarm cannot parse the garbage the wrong key decrypts to and answers with its format-error
    # NAK (`"NAK"0000L0R0A0[]_…`, prefix before receiver: our parser takes the fields in any order).
    assert response.kind is ResponseKind.NAK
    await asyncio.sleep(0.05)
    assert not encrypted_receiver.events


async def test_pysiaalarm_udp_receiver_acks_our_encrypted_alarm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same frames over UDP: one datagram out, the receiver's ACK datagram back."""
    from pysiaalarm import CommunicationsProtocol
    from pysiaalarm.aio.client import SIAClientUDP
    from pysiaalarm.aio.server import SIAServerUDP

    def connection_made(self: SIAServerUDP, transport: asyncio.BaseTransport) -> None:
        # pysiaalarm 3.2 asserts isinstance(transport, asyncio.DatagramTransport), which Python 3.11's
        # selector datagram transport is not; everything else (parsing, checks, the ACK) is its own.
        self.transport = transport  # type: ignore[assignment]

    monkeypatch.setattr(SIAServerUDP, "connection_made", connection_made)

    got: list[SIAEvent] = []
    arrived = asyncio.Event()

    async def on_event(event: SIAEvent) -> None:
        got.append(event)
        arrived.set()

    server = SIAClient(  # type: ignore[abstract]  # pysiaalarm picks the UDP subclass from `protocol`
        "127.0.0.1", 0, [SIAAccount(ACCOUNT, ASCII_KEY)], on_event, protocol=CommunicationsProtocol.UDP
    )
    assert isinstance(server, SIAClientUDP)
    await server.async_start()
    try:
        assert server.transport is not None
        port = server.transport.get_extra_info("sockname")[1]
        client = Dc09Client("127.0.0.1", port, ACCOUNT, receiver=1, key=ASCII_KEY, key_format="ascii", transport="udp")
        message = _sender(port, key=ASCII_KEY, key_format="ascii")(EventType.ALARM_FIRE, "SIA-DCS", 42)
        response = await client.send(message, timeout=2)
        assert response.kind is ResponseKind.ACK and response.sequence == "0042" and response.encrypted
        await asyncio.wait_for(arrived.wait(), 2)
        assert got[0].code == "FA" and got[0].encrypted
        assert (await client.send_null(43, timeout=2)).kind is ResponseKind.ACK
    finally:
        await server.async_stop()


async def test_udp_without_an_answer_times_out() -> None:
    silent = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    port = silent[0].get_extra_info("sockname")[1]
    client = Dc09Client("127.0.0.1", port, ACCOUNT, receiver=1, transport="udp")
    try:
        with pytest.raises(TimeoutError):
            await client.send_null(1, timeout=0.2)
    finally:
        silent[0].close()
