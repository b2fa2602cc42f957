"""SIA DC-09 (SIA over IP) framing for the alarm-centre uplink: building, encrypting, parsing, sending.

This module owns the bytes on the wire between the hub and a DC-09 receiver:

- building messages `<LF><CRC><0LLL>"id"<seq>[R<rcvr>]L<pref>#<acct>[<data>]<timestamp><CR>` in the
  `ADM-CID` (Ademco Contact ID `Q EEE GG ZZZ`), `SIA-DCS` (`N[ri<part>/]<code><zone>`) and `NULL`
  (link test) formats, with CRC-16/ARC and length over the part from the first `"` to before the CR;
- optional AES-128/192/256-CBC encryption (zero IV, random pad, `*` before the id), with the key
  given as hex (as DC-09 receivers issue keys) or as ASCII characters (as pysiaalarm takes them),
  selected explicitly with `key_format`;
- mapping a hub `Event` to a message (`encode_event`) from the codes in `hub.model.EVENT_SPECS`;
- parsing and verifying the receiver's answer (`parse_response`: ACK, NAK with the receiver's
  clock, DUH, RSP);
- a small asyncio TCP transmitter (`Dc09Client`).

It does not own retry, failover or the outbox: the caller decides what an ACK, NAK or DUH means for
the alarm it is delivering (NAK: rebuild stamped with `Dc09Client.timestamp()`, which then follows
the receiver's clock; DUH: report).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from random import Random
from typing import Any, Literal

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hub.model import Event

__all__ = [
    "Dc09Client",
    "Frame",
    "FrameError",
    "KeyFormat",
    "MessageFormat",
    "Response",
    "ResponseKind",
    "adm_cid_data",
    "build_message",
    "crc16_arc",
    "encode_event",
    "null_message",
    "parse_frame",
    "parse_response",
    "sia_dcs_data",
]

MessageFormat = Literal["ADM-CID", "SIA-DCS"]
KeyFormat = Literal["hex", "ascii"]

LF = b"\n"
CR = b"\r"
_TIMESTAMP_FORMAT = "%H:%M:%S,%m-%d-%Y"
_ZERO_IV = bytes(16)
_AES_KEY_SIZES = (16, 24, 32)
# Pad characters may be anything but the three DC-09 delimiters; plain letters and digits are safe
# for every receiver (pysiaalarm decodes the plaintext as ASCII and drops anything else).
_PAD_ALPHABET = string.ascii_letters + string.digits
_HEX = re.compile(r"[0-9A-Fa-f]+")
_TIMESTAMP = re.compile(r"_(\d{2}:\d{2}:\d{2},\d{2}-\d{2}-\d{4})$")


class FrameError(ValueError):
    """A DC-09 frame (or a value meant for one) is malformed; the message says what is wrong."""


class ResponseKind(StrEnum):
    ACK = "ACK"  # accepted: done
    NAK = "NAK"  # rejected (usually the timestamp): adopt the receiver's clock and resend
    DUH = "DUH"  # not understood: report it, do not resend the same message
    RSP = "RSP"  # accepted, with a response in extended data


# ---------------------------------------------------------------------------------------------------
# CRC, keys, encryption


def crc16_arc(data: bytes) -> int:
    """CRC-16/ARC (poly 0x8005 reflected = 0xA001, init 0, no final xor), as DC-09 specifies."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _key_bytes(key: str, key_format: KeyFormat) -> bytes:
    """The AES key: `hex` reads 32/48/64 hex digits; `ascii` takes 16/24/32 characters as bytes."""
    if key_format == "hex":
        if len(key) not in (32, 48, 64) or not _HEX.fullmatch(key):
            raise ValueError(f"a hex DC-09 key must be 32, 48 or 64 hex digits, got {len(key)} characters")
        return bytes.fromhex(key)
    if key_format == "ascii":
        if not key.isascii() or len(key) not in _AES_KEY_SIZES:
            raise ValueError(f"an ascii DC-09 key must be 16, 24 or 32 ASCII characters, got {len(key)}")
        return key.encode("ascii")
    raise ValueError(f"key_format must be 'hex' or 'ascii', not {key_format!r}")


def _aes(key: bytes) -> Cipher[modes.CBC]:
    return Cipher(algorithms.AES(key), modes.CBC(_ZERO_IV))


def _encrypt(plain: str, key: bytes, rng: Random | None) -> str:
    """`<pad>|<plain>` padded at the front to a multiple of 16, AES-CBC encrypted, upper-case hex."""
    body = "|" + plain
    pad_len = 16 - len(body) % 16  # 1..16: there is always at least one pad character
    pad = "".join((rng.choice if rng else secrets.choice)(_PAD_ALPHABET) for _ in range(pad_len))
    encryptor = _aes(key).encryptor()
    cipher = encryptor.update((pad + body).encode("ascii")) + encryptor.finalize()
    return cipher.hex().upper()


def _decrypt(hex_text: str, key: bytes) -> str:
    """The plaintext after the pad: the data from after `[` (pad and its `|` removed)."""
    if not hex_text or len(hex_text) % 32 or not _HEX.fullmatch(hex_text):
        raise FrameError("encrypted data is not hex in whole 16-byte blocks")
    decryptor = _aes(key).decryptor()
    plain = (decryptor.update(bytes.fromhex(hex_text)) + decryptor.finalize()).decode("ascii", "replace")
    # The pad never holds `|`, `[` or `]`: the data starts after the first `|`, or at the first `]`
    # when the sender put no separator (pysiaalarm's encrypted ACK is `000…0]_timestamp`).
    bar, bracket = plain.find("|"), plain.find("]")
    if bracket < 0:
        raise FrameError("decrypted data has no closing ']' (wrong key?)")
    return plain[bar + 1 :] if 0 <= bar < bracket else plain[bracket:]


# ---------------------------------------------------------------------------------------------------
# Building messages


def _hex_field(name: str, value: int | str, max_digits: int) -> str:
    text = f"{value:X}" if isinstance(value, int) else value.upper()
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{name} must not be negative")
    if not 1 <= len(text) <= max_digits or not _HEX.fullmatch(text):
        raise ValueError(f"{name} must be 1-{max_digits} hex digits, got {value!r}")
    return text


def _account(account: str) -> str:
    if not 3 <= len(account) <= 16 or not _HEX.fullmatch(account):
        raise ValueError(f"account must be 3-16 hex digits, got {account!r}")
    return account.upper()


def _format_timestamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("the DC-09 timestamp needs an aware datetime (it is sent in UTC)")
    return "_" + moment.astimezone(UTC).strftime(_TIMESTAMP_FORMAT)


def adm_cid_data(account: str, qualifier: int, code: str, partition: int, zone: int) -> str:
    """The ADM-CID data field without brackets: `#acct|Q EEE GG ZZZ`."""
    if qualifier not in (1, 3, 6):
        raise ValueError(f"Contact ID qualifier must be 1 (new), 3 (restore) or 6 (status), got {qualifier}")
    if len(code) != 3 or not code.isdigit():
        raise ValueError(f"Contact ID event code must be 3 digits, got {code!r}")
    if not 0 <= partition <= 99:
        raise ValueError(f"Contact ID group/partition must be 0-99, got {partition}")
    if not 0 <= zone <= 999:
        raise ValueError(f"Contact ID zone/user must be 0-999, got {zone}")
    return f"#{_account(account)}|{qualifier}{code} {partition:02d} {zone:03d}"


def sia_dcs_data(
    account: str, code: str, zone: int | None = None, partition: int | None = None, text: str | None = None
) -> str:
    """The SIA-DCS data field without brackets: `#acct|N[ri<part>/]<code>[<zone>][|A<text>]`."""
    if len(code) != 2 or not code.isascii() or not code.isalpha() or not code.isupper():
        raise ValueError(f"SIA event code must be two upper-case letters, got {code!r}")
    if text is not None and (not text.isascii() or any(c in "[]|" for c in text) or not text.isprintable()):
        raise ValueError("SIA-DCS text must be printable ASCII without '[', ']' or '|'")
    area = "" if partition is None else f"ri{partition}/"
    number = "" if zone is None else f"{zone:03d}"
    ascii_text = "" if text is None else f"|A{text}"
    return f"#{_account(account)}|N{area}{code}{number}{ascii_text}"


def build_message(
    message_id: Literal["ADM-CID", "SIA-DCS", "NULL"],
    data: str,
    *,
    sequence: int,
    account: str,
    prefix: int | str,
    receiver: int | str | None = None,
    timestamp: datetime | None = None,
    key: str | None = None,
    key_format: KeyFormat = "hex",
    rng: Random | None = None,
) -> bytes:
    """One complete DC-09 frame, LF to CR.

    `data` is what goes between `[` and `]` (empty for NULL). `receiver` and `prefix` are ints
    (written in hex) or hex strings (kept as written). `timestamp` (aware) is written in UTC; None
    leaves it out. With `key` the data, extended data and timestamp are encrypted; `rng` only makes
    the random pad reproducible in tests.
    """
    if not 1 <= sequence <= 9999:
        raise ValueError(f"sequence must be 0001-9999, got {sequence}")
    if any(c in "[]" for c in data) or not data.isascii():
        raise ValueError("data must be ASCII without '[' or ']'")
    header = f"{sequence:04d}"
    if receiver is not None:
        header += "R" + _hex_field("receiver", receiver, 6)
    header += "L" + _hex_field("prefix", prefix, 6) + "#" + _account(account)
    tail = data + "]" + (_format_timestamp(timestamp) if timestamp is not None else "")
    if key is None:
        body = f'"{message_id}"{header}[{tail}'
    else:
        body = f'"*{message_id}"{header}[{_encrypt(tail, _key_bytes(key, key_format), rng)}'
    raw = body.encode("ascii")
    return LF + f"{crc16_arc(raw):04X}0{len(raw):03X}".encode("ascii") + raw + CR


def null_message(
    *,
    sequence: int,
    account: str,
    prefix: int | str,
    receiver: int | str | None = None,
    timestamp: datetime | None = None,
    key: str | None = None,
    key_format: KeyFormat = "hex",
) -> bytes:
    """A `NULL` link-test (supervision) message: empty data `[]`."""
    return build_message(
        "NULL",
        "",
        sequence=sequence,
        account=account,
        prefix=prefix,
        receiver=receiver,
        timestamp=timestamp,
        key=key,
        key_format=key_format,
    )


def encode_event(
    event: Event,
    *,
    account: str,
    receiver: int | str | None,
    prefix: int | str,
    fmt: MessageFormat,
    sequence: int,
    zone: int,
    partition: int = 1,
    key: str | None = None,
    key_format: KeyFormat = "hex",
    timestamp: bool | datetime = True,
    rng: Random | None = None,
) -> bytes:
    """The DC-09 message for one hub event, coded from `event.type.spec`.

    `zone` is the device's zone number (0-999; for ADM-CID the `ZZZ`, for SIA-DCS the number after
    the code), `partition` the Contact ID group / SIA area. `timestamp=True` stamps the send time
    (UTC now); pass a datetime to stamp another moment (e.g. now corrected by the receiver's clock
    offset after a NAK), False to leave it out. Receivers check the stamp against their clock, so it
    is the transmission time, never `event.occurred_at`.
    """
    spec = event.type.spec
    if fmt == "ADM-CID":
        if spec.contact_id is None:
            raise ValueError(f"event type {event.type.value} has no Contact ID code: it is not sent over DC-09")
        data = adm_cid_data(account, spec.qualifier, spec.contact_id, partition, zone)
    elif fmt == "SIA-DCS":
        if spec.sia is None:
            raise ValueError(f"event type {event.type.value} has no SIA code: it is not sent over DC-09")
        data = sia_dcs_data(account, spec.sia, zone=zone, partition=partition)
    else:
        raise ValueError(f"fmt must be 'ADM-CID' or 'SIA-DCS', not {fmt!r}")
    moment = datetime.now(UTC) if timestamp is True else timestamp if isinstance(timestamp, datetime) else None
    return build_message(
        fmt,
        data,
        sequence=sequence,
        account=account,
        prefix=prefix,
        receiver=receiver,
        timestamp=moment,
        key=key,
        key_format=key_format,
        rng=rng,
    )


# ---------------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True)
class Frame:
    """A verified DC-09 frame. `data` is the text after `[` (decrypted when a key was given; None
    when encrypted and no key), up to and including `]`, extended data and timestamp."""

    message_id: str
    encrypted: bool
    sequence: str
    receiver: str | None
    prefix: str | None
    account: str | None
    data: str | None
    timestamp: datetime | None


@dataclass(frozen=True)
class Response:
    """A receiver's answer. `timestamp` is the receiver's clock when it sent one (NAK always does)."""

    kind: ResponseKind
    sequence: str
    encrypted: bool
    account: str | None
    timestamp: datetime | None
    frame: Frame


_ID = re.compile(r'"(\*?)([A-Z0-9-]{3,8})"')
_SEQUENCE = re.compile(r"\d{4}")
_HEADER_FIELD = re.compile(r"([RLA#])([0-9A-Fa-f]{1,16})")


def parse_frame(data: bytes, *, key: str | None = None, key_format: KeyFormat = "hex") -> Frame:
    """Verify and split one frame (`<LF>CRC 0LLL "id" seq [R…] [L…] [#…|A…] [data]<CR>`).

    Raises FrameError naming what is wrong; never anything else, whatever the bytes.
    """
    if not data.startswith(LF):
        raise FrameError("frame does not start with LF")
    if not data.endswith(CR):
        raise FrameError("frame does not end with CR")
    inner = data[1:-1]
    if not inner:
        raise FrameError("empty frame (LF CR only): the receiver discarded the message")
    if len(inner) < 8:
        raise FrameError(f"frame too short for CRC and length: {len(inner)} bytes")
    try:
        head = inner[:8].decode("ascii")
        body = inner[8:].decode("ascii")
    except UnicodeDecodeError as exc:
        raise FrameError("frame is not ASCII") from exc
    if not _HEX.fullmatch(head[:4]):
        raise FrameError(f"CRC field {head[:4]!r} is not 4 hex digits")
    if head[4] != "0" or not _HEX.fullmatch(head[5:]):
        raise FrameError(f"length field {head[4:]!r} is not '0' and 3 hex digits")
    length = int(head[5:], 16)
    if length != len(body):
        raise FrameError(f"length field says {length} bytes, the frame carries {len(body)}")
    crc = crc16_arc(inner[8:])
    if int(head[:4], 16) != crc:
        raise FrameError(f"CRC mismatch: frame says {head[:4].upper()}, computed {crc:04X}")

    id_match = _ID.match(body)
    if not id_match:
        raise FrameError('no "id" after the length field')
    encrypted, message_id = bool(id_match.group(1)), id_match.group(2)
    pos = id_match.end()
    seq_match = _SEQUENCE.match(body, pos)
    if not seq_match:
        raise FrameError("no 4-digit sequence number after the id")
    pos = seq_match.end()
    fields: dict[str, str] = {}
    while pos < len(body) and body[pos] != "[":
        field_match = _HEADER_FIELD.match(body, pos)
        if not field_match or field_match.group(1) in fields:
            raise FrameError(f"unexpected header text {body[pos : pos + 8]!r} before '['")
        fields[field_match.group(1)] = field_match.group(2).upper()
        pos = field_match.end()
    if pos >= len(body):
        raise FrameError("no '[' data field")
    rest = body[pos + 1 :]
    plain: str | None = rest
    if encrypted:
        plain = None
        if key is not None:
            plain = _decrypt(rest, _key_bytes(key, key_format))
    timestamp = None
    if plain is not None:
        if "]" not in plain:
            raise FrameError("data field has no closing ']'")
        stamp = _TIMESTAMP.search(plain)
        if stamp:
            try:
                timestamp = datetime.strptime(stamp.group(1), _TIMESTAMP_FORMAT).replace(tzinfo=UTC)
            except ValueError as exc:
                raise FrameError(f"timestamp {stamp.group(1)!r} is not a valid time") from exc
    return Frame(
        message_id=message_id,
        encrypted=encrypted,
        sequence=seq_match.group(0),
        receiver=fields.get("R"),
        prefix=fields.get("L"),
        account=fields.get("#", fields.get("A")),
        data=plain,
        timestamp=timestamp,
    )


def parse_response(data: bytes, *, key: str | None = None, key_format: KeyFormat = "hex") -> Response:
    """A receiver's ACK / NAK / DUH / RSP, verified (CRC, length, layout). A NAK must carry the
    receiver's timestamp, which the sender adopts. With `key`, an encrypted answer is decrypted and
    its timestamp read; without it the kind is still known (the `*` id is in clear).

    Raises FrameError (a ValueError) naming what is wrong; never anything else, whatever the bytes.
    """
    frame = parse_frame(data, key=key, key_format=key_format)
    try:
        kind = ResponseKind(frame.message_id)
    except ValueError as exc:
        raise FrameError(f"{frame.message_id!r} is not a receiver response (ACK, NAK, DUH, RSP)") from exc
    if kind is ResponseKind.NAK and frame.timestamp is None:
        raise FrameError("NAK without the receiver's timestamp")
    return Response(
        kind=kind,
        sequence=frame.sequence,
        encrypted=frame.encrypted,
        account=frame.account,
        timestamp=frame.timestamp,
        frame=frame,
    )


# ---------------------------------------------------------------------------------------------------
# Transmitter


class _AnswerProtocol(asyncio.DatagramProtocol):
    """Collects the datagrams a DC-09 receiver answers with (UDP transport)."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.answers.put_nowait(data)


class Dc09Client:
    """Sends DC-09 frames to one receiver over TCP (or UDP) and returns its verified answer.

    Over TCP, one connection per message unless `keep_alive`; over UDP, one datagram each way (the
    caller resends when no answer comes in time).

    `timestamp()` is what to stamp a frame with. After a NAK it is the receiver's clock (the time in
    the NAK carried on by our monotonic clock, so a step of our wall clock, NTP synchronising a Pi
    without a real-time clock, does not move it); else our wall clock while `clock_trusted()` says it
    is synchronised; else none at all, as SIA DC-09 allows, rather than a wrong one. An encrypted frame
    must carry one: it gets our unsynchronised clock, the receiver NAKs it with its own, and the
    resend carries that. `clock_offset` is the receiver's clock minus ours (zero before any NAK).
    """

    def __init__(
        self,
        host: str,
        port: int,
        account: str,
        *,
        receiver: int | str | None = None,
        prefix: int | str = 0,
        key: str | None = None,
        key_format: KeyFormat = "hex",
        keep_alive: bool = False,
        transport: Literal["tcp", "udp"] = "tcp",
        clock_trusted: Callable[[], bool] = lambda: True,
    ) -> None:
        self.host = host
        self.transport = transport
        self.port = port
        self.account = _account(account)
        self.receiver = receiver
        self.prefix = prefix
        self.key = key
        self.key_format: KeyFormat = key_format
        if key is not None:
            _key_bytes(key, key_format)  # fail at configuration time, not at the first alarm
        self.keep_alive = keep_alive
        self.clock_trusted = clock_trusted
        self._receiver_clock: tuple[datetime, float] | None = None  # (a NAK's time, our monotonic time then)
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    def receiver_now(self) -> datetime | None:
        """The receiver's clock now, from its last NAK; None before any NAK."""
        if self._receiver_clock is None:
            return None
        told, at = self._receiver_clock
        return told + timedelta(seconds=time.monotonic() - at)

    @property
    def clock_offset(self) -> timedelta:
        receiver = self.receiver_now()
        return timedelta(0) if receiver is None else receiver - datetime.now(UTC)

    def timestamp(self) -> datetime | None:
        """The timestamp for the next frame (see the class docstring); None: send none."""
        receiver = self.receiver_now()
        if receiver is not None:
            return receiver
        if self.clock_trusted() or self.key is not None:
            return datetime.now(UTC)
        return None

    async def send(self, message: bytes, timeout: float = 10.0) -> Response:
        """Write one frame, read the answer up to CR and verify it.

        Raises TimeoutError, OSError (ConnectionError when the receiver hangs up without
        answering) or FrameError (a malformed answer, or one for another sequence number).
        """
        sent = parse_frame(message, key=self.key, key_format=self.key_format)
        if self.transport == "udp":
            return self._verified(sent, await self._exchange_udp(message, timeout))
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await self._connect()
                writer.write(message)
                await writer.drain()
                try:
                    answer = await reader.readuntil(CR)
                except asyncio.IncompleteReadError as exc:
                    raise ConnectionError("the receiver closed the connection without answering") from exc
            # A receiver may put a stray LF before the frame's own LF; the frame starts at the last.
            answer = answer[answer.rfind(LF) :] if LF in answer else answer
            response = parse_response(answer, key=self.key, key_format=self.key_format)
        except BaseException:
            await self.close()
            raise
        if not self.keep_alive:
            await self.close()
        return self._verified(sent, response)

    async def _exchange_udp(self, message: bytes, timeout: float) -> Response:
        """One datagram out, the first well-formed answer back (a stray datagram is skipped)."""
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(_AnswerProtocol, remote_addr=(self.host, self.port))
        try:
            async with asyncio.timeout(timeout):
                transport.sendto(message)
                while True:
                    answer = await protocol.answers.get()
                    answer = answer[answer.rfind(LF) :] if LF in answer else answer
                    try:
                        return parse_response(answer, key=self.key, key_format=self.key_format)
                    except FrameError:
                        continue
        finally:
            transport.close()

    def _verified(self, sent: Frame, response: Response) -> Response:
        if response.kind is ResponseKind.NAK and response.timestamp is not None:
            self._receiver_clock = (response.timestamp, time.monotonic())
        elif response.sequence != sent.sequence and response.kind is not ResponseKind.DUH:
            # (a DUH may not name our sequence: the receiver could not read the message)
            raise FrameError(f"{response.kind} for sequence {response.sequence}, sent {sent.sequence}")
        return response

    async def send_null(self, sequence: int, timeout: float = 10.0) -> Response:
        """A link test: a NULL message stamped with `timestamp()`."""
        message = null_message(
            sequence=sequence,
            account=self.account,
            prefix=self.prefix,
            receiver=self.receiver,
            timestamp=self.timestamp(),
            key=self.key,
            key_format=self.key_format,
        )
        return await self.send(message, timeout)

    async def close(self) -> None:
        if self._streams is None:
            return
        _, writer = self._streams
        self._streams = None
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._streams is not None and not self._streams[1].is_closing():
            return self._streams
        self._streams = await asyncio.open_connection(self.host, self.port)
        return self._streams
