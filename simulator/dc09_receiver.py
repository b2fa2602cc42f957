"""A stand-in for a professional alarm receiving centre: a SIA DC-09 receiver over TCP, for the
scenario runner and the fault tests.

This module owns the receiving end of the DC-09 uplink in simulation: listening on a loopback port,
accepting one account (plain, or AES-encrypted with a key given as ASCII characters or as hex),
answering every frame, and recording what was received — in memory (`Dc09Receiver.signals`), and
optionally as one JSON line per signal in a record file that a scenario report reads afterwards
(`read_record`). `python -m simulator.dc09_receiver` runs one from the command line.

Every frame is parsed, checked and answered by pysiaalarm, an independent DC-09 implementation, and
never by `cloud_bridge.dc09`: a receiver built on our own parser would agree with our transmitter's
mistakes. pysiaalarm's quirks, which a transmitter under test has to live with:

- it takes the AES key as its ASCII characters, so a hex key can be used only when every byte is
  printable ASCII (`pysiaalarm_key`);
- frames must carry a receiver number (`R…`), or its answers are malformed;
- it hands over only the frames it ACKs: a bad CRC, an unknown account, a stale timestamp (outside
  -40 s / +20 s) or an unknown SIA code are answered with NAK or DUH and never recorded;
- it maps ADM-CID codes to SIA codes, and an ADM-CID code it does not know to "YN";
- it reports a NULL link test as code "RP".
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from pysiaalarm import SIAAccount, SIAEvent
from pysiaalarm.aio import SIAClient
from pysiaalarm.aio.client import SIAClientTCP

__all__ = ["Dc09Receiver", "ReceivedSignal", "main", "pysiaalarm_key", "read_record"]

log = logging.getLogger(__name__)

_HEX = re.compile(r"[0-9A-Fa-f]+")
_ZONE = re.compile(r"\d+")
_AES_KEY_SIZES = (16, 24, 32)


@dataclass(frozen=True)
class ReceivedSignal:
    """One frame pysiaalarm accepted (and ACKed), as it understood it.

    `code` is the SIA code ("MA", "FA", "RP" for a NULL link test; pysiaalarm maps ADM-CID event
    codes to SIA codes). `contact_id` is the 3-digit ADM-CID event code (None for other formats).
    `zone` is the zone number as sent: the ADM-CID `ZZZ`, or the number after the SIA-DCS code
    (None for NULL and when absent).
    """

    mono_ns: int  # time.monotonic_ns() when pysiaalarm handed the signal over
    account: str
    code: str | None
    contact_id: str | None
    message_type: str  # "SIA-DCS", "ADM-CID" or "NULL"
    sequence: str
    zone: str | None
    encrypted: bool
    valid: bool

    @property
    def is_link_test(self) -> bool:
        return self.message_type == "NULL" or self.code == "RP"

    def __str__(self) -> str:
        parts = [self.message_type, f"#{self.account}", f"seq {self.sequence}", f"code {self.code}"]
        if self.contact_id is not None:
            parts.append(f"cid {self.contact_id}")
        if self.zone is not None:
            parts.append(f"zone {self.zone}")
        if self.encrypted:
            parts.append("encrypted")
        if not self.valid:
            parts.append("INVALID")
        return " ".join(parts)


def pysiaalarm_key(key: str, key_format: Literal["hex", "ascii"]) -> str:
    """The AES key as pysiaalarm takes it: its 16, 24 or 32 bytes as ASCII characters.

    `ascii` keys are checked and returned as they are; `hex` keys (32, 48 or 64 hex digits, as DC-09
    receivers issue them) are converted, which works only when every byte is printable ASCII.
    Raises ValueError saying what is wrong.
    """
    if key_format == "ascii":
        if not key.isascii() or not key.isprintable() or len(key) not in _AES_KEY_SIZES:
            raise ValueError(
                f"an ascii DC-09 key must be 16, 24 or 32 printable ASCII characters, got {len(key)} characters"
            )
        return key
    if key_format == "hex":
        if len(key) not in (32, 48, 64) or not _HEX.fullmatch(key):
            raise ValueError(f"a hex DC-09 key must be 32, 48 or 64 hex digits, got {len(key)} characters")
        raw = bytes.fromhex(key)
        bad = [i for i, byte in enumerate(raw) if not 0x20 <= byte <= 0x7E]
        if bad:
            raise ValueError(
                f"pysiaalarm cannot use this hex key: it takes the AES key as ASCII characters, and byte {bad[0]} "
                f"(0x{raw[bad[0]]:02X}) and {len(bad) - 1} other(s) are not printable ASCII (0x20-0x7E). "
                "Choose a key whose every byte is printable ASCII (for example the hex of 16 ASCII characters: "
                "'ANJU-TEST-KEY-16' is 414E4A552D544553542D4B45592D3136), or give the key as its ASCII characters "
                "with key_format 'ascii'."
            )
        return raw.decode("ascii")
    raise ValueError(f"key_format must be 'hex' or 'ascii', not {key_format!r}")


def _signal_from_event(event: SIAEvent) -> ReceivedSignal:
    """Our record of one pysiaalarm event, from its fields only."""
    kind = event.message_type
    message_type = str(getattr(kind, "value", kind))
    zone: str | None = None
    contact_id: str | None = None
    if message_type == "ADM-CID":
        contact_id = event.event_type  # `EEE` of `Q EEE GG ZZZ`
        zone = event.ri  # pysiaalarm keeps the ADM-CID zone `ZZZ` in ri
    elif message_type == "SIA-DCS":
        # In SIA-DCS `ri` is the area (partition); the zone is the number after the code, which
        # pysiaalarm leaves at the start of `message`.
        number = _ZONE.match(event.message or "")
        zone = number.group(0) if number else None
    return ReceivedSignal(
        mono_ns=time.monotonic_ns(),
        account=event.account or "",
        code=event.code,
        contact_id=contact_id,
        message_type=message_type,
        sequence=event.sequence or "",
        zone=zone,
        encrypted=bool(event.encrypted),
        valid=bool(event.valid_message),
    )


def read_record(path: Path) -> list[ReceivedSignal]:
    """The signals a receiver appended to its record file, in order."""
    with path.open(encoding="utf-8") as lines:
        return [ReceivedSignal(**json.loads(line)) for line in lines if line.strip()]


_Waiter = tuple[Callable[[ReceivedSignal], bool], "asyncio.Future[ReceivedSignal]"]


class Dc09Receiver:
    """A DC-09 receiver (TCP) for one account, built on pysiaalarm, recording what it receives.

    `port=0` picks a free port at the first `start()`; `port` then holds it, and a restart after
    `stop()` listens on the same port again (a receiver outage in a fault test). `stop()` closes the
    listening socket and every open connection. `on_signal` is called for each signal after it is
    recorded.
    """

    def __init__(
        self,
        account: str,
        *,
        key: str | None = None,
        key_format: Literal["hex", "ascii"] = "ascii",
        host: str = "127.0.0.1",
        port: int = 0,
        record_file: Path | None = None,
        on_signal: Callable[[ReceivedSignal], None] | None = None,
    ) -> None:
        if not 3 <= len(account) <= 16 or not _HEX.fullmatch(account):
            raise ValueError(f"account must be 3-16 hex digits, got {account!r}")
        self.account = account.upper()
        self._key = pysiaalarm_key(key, key_format) if key is not None else None
        self.host = host
        self.port = port
        self.record_file = record_file
        self.signals: list[ReceivedSignal] = []
        self._on_signal = on_signal
        self._client: SIAClientTCP | None = None
        self._connections: dict[asyncio.Task[object], asyncio.StreamWriter] = {}
        self._waiters: list[_Waiter] = []

    @property
    def running(self) -> bool:
        return self._client is not None

    @property
    def encrypted(self) -> bool:
        """True when the account has a key: frames must then be encrypted with it."""
        return self._key is not None

    async def start(self) -> None:
        """Listen on `host:port` (a free port the first time when `port` is 0)."""
        if self._client is not None:
            raise RuntimeError("the DC-09 receiver is already running")
        if self.record_file is not None:
            self.record_file.parent.mkdir(parents=True, exist_ok=True)
        # pysiaalarm's SIAClient picks its TCP subclass in __new__; a stopped one cannot be started
        # again (its shutdown flag stays set), so every start makes a new one.
        client = SIAClient(self.host, self.port, [SIAAccount(self.account, self._key)], self._handle)  # type: ignore[abstract]
        assert isinstance(client, SIAClientTCP)
        # Track each connection's handler so that stop() can end connections a transmitter keeps
        # open; pysiaalarm's own stop only closes the listening socket.
        handle_line = client.sia_server.handle_line

        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._connections[task] = writer
            try:
                await handle_line(reader, writer)
            finally:
                self._connections.pop(task, None)

        client.sia_server.handle_line = tracked  # type: ignore[method-assign]
        await client.async_start(reuse_address=True)
        assert client.server is not None
        self.port = client.server.sockets[0].getsockname()[1]
        self._client = client
        log.info("DC-09 receiver for account %s listening on %s:%d", self.account, self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and close every open connection. Does nothing when not running."""
        client, self._client = self._client, None
        if client is None:
            return
        await client.async_stop()
        # Closing a connection's transport makes pysiaalarm's handler read EOF and finish on its
        # own (cancelling it instead makes Python 3.11's asyncio log a spurious error).
        connections = dict(self._connections)
        for writer in connections.values():
            writer.close()
        if connections:
            _, stuck = await asyncio.wait(connections, timeout=1.0)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        self._connections.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.stop()

    def alarms(self) -> list[ReceivedSignal]:
        """Every signal but NULL link tests (pysiaalarm's "RP"), in order."""
        return [received for received in self.signals if not received.is_link_test]

    async def wait_for(self, predicate: Callable[[ReceivedSignal], bool], timeout: float) -> ReceivedSignal:
        """The first signal, already received or arriving within `timeout` seconds, that `predicate`
        accepts. Raises TimeoutError listing what was received instead."""
        for received in self.signals:
            if predicate(received):
                return received
        future: asyncio.Future[ReceivedSignal] = asyncio.get_running_loop().create_future()
        waiter: _Waiter = (predicate, future)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            seen = "; ".join(str(received) for received in self.signals[-10:]) or "nothing"
            raise TimeoutError(
                f"no matching DC-09 signal for account {self.account} within {timeout} s; "
                f"{len(self.signals)} received (last 10: {seen})"
            ) from None
        finally:
            self._waiters.remove(waiter)

    async def _handle(self, event: SIAEvent) -> None:
        """pysiaalarm's callback, after it has sent its ACK."""
        received = _signal_from_event(event)
        self.signals.append(received)
        if self.record_file is not None:
            self._append_record(self.record_file, received)
        for predicate, future in list(self._waiters):
            if future.done():
                continue
            try:
                if predicate(received):
                    future.set_result(received)
            except Exception as exc:
                future.set_exception(exc)
        if self._on_signal is not None:
            self._on_signal(received)

    @staticmethod
    def _append_record(path: Path, received: ReceivedSignal) -> None:
        with path.open("a", encoding="utf-8") as record:
            record.write(json.dumps(dataclasses.asdict(received)) + "\n")


# ---------------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.dc09_receiver",
        description="Run a SIA DC-09 alarm receiver (pysiaalarm, over TCP) for one account until SIGTERM or "
        "Ctrl-C, printing one line per signal it accepts. Frames it refuses (bad CRC, unknown account, a "
        "timestamp more than 40 s old or 20 s ahead, unknown code) are answered with NAK or DUH and logged "
        "on stderr, not printed. Point the hub's alarm-centre uplink at HOST:PORT with the same account "
        "and key, and a receiver number (R...) set.",
        epilog="example: python -m simulator.dc09_receiver --port 12000 --account 1234 "
        "--key 414E4A552D544553542D4B45592D3136 --key-format hex --record var/dc09.jsonl",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port to listen on; 0 picks a free one, printed at start (default: 0)"
    )
    parser.add_argument("--account", required=True, help="the account number the transmitter uses: 3-16 hex digits")
    parser.add_argument(
        "--key",
        help="AES key for encrypted frames (omit for plain frames): 16/24/32 ASCII characters, or with "
        "--key-format hex 32/48/64 hex digits whose bytes are printable ASCII (pysiaalarm's limit)",
    )
    parser.add_argument(
        "--key-format",
        choices=["hex", "ascii"],
        default="ascii",
        help="how --key is written (default: %(default)s); must match the transmitter's setting",
    )
    parser.add_argument(
        "--record", type=Path, metavar="FILE", help="append each signal to FILE as one JSON line (for reports)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        receiver = Dc09Receiver(
            args.account,
            key=args.key,
            key_format=args.key_format,
            host=args.host,
            port=args.port,
            record_file=args.record,
            on_signal=lambda received: print(received, flush=True),
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(_serve(receiver))
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(receiver: Dc09Receiver) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with receiver:
        encrypted = "encrypted" if receiver.encrypted else "plain"
        print(
            f"DC-09 receiver listening on {receiver.host}:{receiver.port} for account {receiver.account} ({encrypted})",
            flush=True,
        )
        await stop.wait()
    print(f"stopped after {len(receiver.signals)} signal(s), {len(receiver.alarms())} alarm(s)", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
