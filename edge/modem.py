"""An asyncio driver for a 4G modem (Quectel EC2x/EG25, SIMCom SIM76xx/A76xx) that sends alarm SMS.

The modem is a serial port speaking AT commands from 3GPP TS 27.007 (general: ``AT``, ``AT+CPIN?``,
``AT+CSQ``, ``AT+CREG?``/``AT+CEREG?``, ``AT+CMEE``) and TS 27.005 (SMS in text mode:
``AT+CMGF=1``, ``AT+CSCS``, ``AT+CSMP``, ``AT+CMGS``). It is the hub's last way out when every IP
uplink is down, so every exchange has a timeout and every failure is a :class:`ModemError` that
names the command and quotes what the modem answered.

Chinese text goes out in UCS-2: after ``AT+CSCS="UCS2"`` the destination number and the text are
both written as UCS-2 big-endian hex (``"+86138"`` -> ``002B003800360031003300380``...), and
``AT+CSMP=17,167,0,8`` sets the data coding scheme to UCS-2 (8) so the phone shows Chinese rather
than hex; one such SMS holds 70 UCS-2 characters. Sending is ``AT+CMGS="<number>"``, wait for the
``> `` prompt, the text, Ctrl-Z (0x1A); the modem answers ``+CMGS: <mr>`` and ``OK`` or
``+CMS ERROR: <n>`` (TS 27.005 section 3.2.5; codes below 128 are the network's RP causes from
TS 24.011).

The serial port is opened with ``serialx`` (the asyncio serial library zigpy uses). Lines from the
modem are split on CR/LF; anything that is not part of the answer to the current command (noise,
unsolicited result codes such as ``RING`` or ``+CMTI``, stale bytes from an earlier timeout) is
dropped before the next command is sent or ignored while its answer is read.

Use::

    modem = Modem("/dev/ttyUSB2")
    await modem.open()
    status = await modem.status()          # ModemStatus(sim="READY", signal_dbm=-67, registered=True)
    mr = await modem.send_sms("+8613800138000", "【安居】紧急呼叫…")
    await modem.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass

import serialx

log = logging.getLogger(__name__)

CTRL_Z = b"\x1a"
ESC = b"\x1b"
#: Characters in one UCS-2 SMS (140 octets / 2).
UCS2_SMS_MAX = 70

#: +CMS ERROR codes (TS 27.005 3.2.5; 0..127 are TS 24.011 RP causes) an alarm sender meets.
CMS_ERRORS: dict[int, str] = {
    1: "unassigned (unallocated) number",
    8: "operator determined barring",
    10: "call barred",
    21: "short message transfer rejected",
    27: "destination out of service",
    28: "unidentified subscriber",
    29: "facility rejected",
    30: "unknown subscriber",
    38: "network out of order",
    41: "temporary failure",
    42: "congestion",
    47: "resources unavailable",
    50: "requested facility not subscribed",
    69: "requested facility not implemented",
    96: "invalid message",
    111: "protocol error",
    300: "ME failure",
    301: "SMS service of ME reserved",
    302: "operation not allowed",
    303: "operation not supported",
    304: "invalid PDU mode parameter",
    305: "invalid text mode parameter",
    310: "SIM not inserted",
    311: "SIM PIN required",
    313: "SIM failure",
    314: "SIM busy",
    315: "SIM wrong",
    320: "memory failure",
    322: "memory full",
    330: "SMSC address unknown",
    331: "no network service",
    332: "network timeout",
    340: "no +CNMA acknowledgement expected",
    500: "unknown error",
}

#: +CME ERROR codes (TS 27.007 9.2) met on the commands this driver sends.
CME_ERRORS: dict[int, str] = {
    0: "phone failure",
    3: "operation not allowed",
    4: "operation not supported",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    30: "no network service",
    31: "network timeout",
    100: "unknown",
}

SETTLE_S = 0.2  # a modem answers an ESC within this
_FINAL_OK = "OK"
_FINAL_ERRORS = ("ERROR", "NO CARRIER", "COMMAND NOT SUPPORT", "TOO MANY PARAMETERS")
_ERROR_RE = re.compile(r"^\+(CME|CMS) ERROR:\s*(.*)$")
_PROMPT = "\x00PROMPT"  # a token no modem line can be (NULs are dropped from lines)


class ModemError(Exception):
    """A command failed: ``command`` is what was sent, ``answer`` what the modem said (if anything)."""

    def __init__(self, command: str, answer: str, message: str | None = None) -> None:
        self.command = command
        self.answer = answer
        super().__init__(message or f"modem: {command} failed: {answer or 'no answer'}")


class ModemTimeout(ModemError):
    """The modem did not finish answering ``command`` in time."""


@dataclass(frozen=True)
class ModemStatus:
    """What the heartbeat reports about the SMS path.

    ``sim`` is the ``+CPIN`` state (``READY``, ``SIM PIN``, ``SIM PUK``), ``NOT INSERTED`` for
    ``+CME ERROR: 10``, or ``ERROR: <answer>``; ``signal_dbm`` is None when the modem does not
    know (``+CSQ: 99``); ``registered`` is None when the modem answered neither ``+CREG?`` nor
    ``+CEREG?``.
    """

    sim: str
    signal_dbm: int | None
    registered: bool | None


def explain_error(line: str) -> str:
    """``+CMS ERROR: 38`` -> ``+CMS ERROR: 38 (network out of order)``; other lines unchanged."""
    match = _ERROR_RE.match(line)
    if not match:
        return line
    kind, code = match.groups()
    if not code.strip().isdigit():
        return line  # verbose (AT+CMEE=2) answers explain themselves
    table = CMS_ERRORS if kind == "CMS" else CME_ERRORS
    meaning = table.get(int(code))
    return f"{line} ({meaning})" if meaning else line


def rssi_to_dbm(rssi: int) -> int | None:
    """TS 27.007 8.5: 0 is -113 dBm or less, 31 is -51 dBm or more, 2 dBm a step; 99 is unknown."""
    if 0 <= rssi <= 31:
        return -113 + 2 * rssi
    return None


def ucs2_hex(text: str) -> str:
    """``"+86"`` -> ``"002B00380036"``: UTF-16 big-endian hex, as TS 27.007 ``"UCS2"`` expects."""
    return text.encode("utf-16-be").hex().upper()


def ucs2_length(text: str) -> int:
    """Length in UCS-2 code units (a character outside the BMP counts twice)."""
    return len(text.encode("utf-16-be")) // 2


class _LineProtocol(asyncio.Protocol):
    """Splits the byte stream into lines and hands them to a queue; spots the ``> `` prompt."""

    def __init__(self) -> None:
        self.lines: asyncio.Queue[str | None] = asyncio.Queue()
        self.buffer = bytearray()
        self.want_prompt = False
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            cut = next((i for i, b in enumerate(self.buffer) if b in (0x0D, 0x0A)), -1)
            if cut < 0:
                break
            raw = bytes(self.buffer[:cut])
            del self.buffer[: cut + 1]
            line = raw.replace(b"\x00", b"").decode("utf-8", errors="replace").strip()
            if line:
                self.lines.put_nowait(line)
        if self.want_prompt and self.buffer.lstrip().startswith(b">"):
            self.buffer.clear()
            self.want_prompt = False
            self.lines.put_nowait(_PROMPT)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lines.put_nowait(None)
        if not self.closed.done():
            self.closed.set_result(None)

    def discard(self) -> None:
        """Drop everything received so far: stale answers, noise, unsolicited codes."""
        self.buffer.clear()
        while not self.lines.empty():
            if self.lines.get_nowait() is None:
                self.lines.put_nowait(None)  # keep "port closed" visible
                return


class Modem:
    """One 4G modem on a serial port. Commands are serialised: one exchange at a time."""

    def __init__(
        self,
        port: str,
        baudrate: int = 115200,
        *,
        command_timeout: float = 5.0,
        sms_timeout: float = 60.0,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.command_timeout = command_timeout
        #: From Ctrl-Z to ``+CMGS``: the network round trip; real modules allow up to 60-120 s.
        self.sms_timeout = sms_timeout
        self._transport: asyncio.BaseTransport | None = None
        self._protocol: _LineProtocol | None = None
        self._lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()
        self._unsettled = False

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the port and set the modem up: echo off, numeric error codes, text mode."""
        async with self._open_lock:  # the status poll and an alarm SMS may both open it
            if self._transport is None:
                await self._open()

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, protocol = await serialx.create_serial_connection(
                loop, _LineProtocol, self.port, baudrate=self.baudrate
            )
        except (OSError, ValueError) as exc:
            raise ModemError("open", str(exc), f"modem: cannot open {self.port}: {exc}") from exc
        assert isinstance(protocol, _LineProtocol)
        self._transport, self._protocol = transport, protocol
        try:
            self._write(ESC)  # a modem left in SMS text entry (a crash mid-send) leaves it here
            await self.command("ATE0")
            await self.command("AT+CMEE=1")
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        transport, protocol = self._transport, self._protocol
        self._transport = self._protocol = None
        if transport is None or protocol is None:
            return
        transport.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(protocol.closed), 2.0)

    async def __aenter__(self) -> Modem:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- public API -----------------------------------------------------------------------------

    async def status(self) -> ModemStatus:
        """SIM state, signal strength and network registration, for the heartbeat. Raises
        :class:`ModemError` only when the modem does not answer at all."""
        await self.command("AT")
        try:
            cpin = await self.command("AT+CPIN?", expect="+CPIN:")
            sim = cpin[0].split(":", 1)[1].strip() if cpin else "UNKNOWN"
        except ModemTimeout:
            raise
        except ModemError as exc:
            sim = "NOT INSERTED" if _is_error(exc.answer, "CME", 10) else f"ERROR: {exc.answer}"
        signal_dbm: int | None = None
        with contextlib.suppress(ValueError, IndexError):
            csq = await self.command("AT+CSQ", expect="+CSQ:")
            signal_dbm = rssi_to_dbm(int(csq[0].split(":", 1)[1].split(",")[0]))
        registered: bool | None = None
        for query, prefix in (("AT+CEREG?", "+CEREG:"), ("AT+CREG?", "+CREG:")):
            try:
                reg = await self.command(query, expect=prefix)
            except ModemTimeout:
                raise
            except ModemError:
                continue
            with contextlib.suppress(ValueError, IndexError):
                stat = int(reg[0].split(":", 1)[1].split(",")[1])
                registered = bool(registered) or stat in (1, 5)  # 1 home, 5 roaming
        return ModemStatus(sim=sim, signal_dbm=signal_dbm, registered=registered)

    async def send_sms(self, number: str, text: str) -> int:
        """Send one UCS-2 SMS; returns the message reference the modem gives (``+CMGS: <mr>``).

        Raises :class:`ModemError` (SIM not ready, ``+CMS ERROR``, no prompt) or
        :class:`ModemTimeout`; raises ValueError for a text that does not fit one SMS.
        """
        if not number or not re.fullmatch(r"\+?[0-9]{3,20}", number):
            raise ValueError(f"not a phone number: {number!r}")
        if ucs2_length(text) > UCS2_SMS_MAX:
            raise ValueError(f"SMS text is {ucs2_length(text)} UCS-2 characters; one SMS holds {UCS2_SMS_MAX}")
        cpin = await self.command("AT+CPIN?", expect="+CPIN:")
        sim = cpin[0].split(":", 1)[1].strip() if cpin else "UNKNOWN"
        if sim != "READY":
            raise ModemError("AT+CPIN?", cpin[0] if cpin else "", f"modem: AT+CPIN? says SIM is {sim}, not READY")
        await self.command("AT+CMGF=1")
        await self.command('AT+CSCS="UCS2"')
        await self.command("AT+CSMP=17,167,0,8")  # first octet SMS-SUBMIT, validity 24 h, DCS 8 = UCS-2
        command = f'AT+CMGS="{ucs2_hex(number)}"'
        answer = await self._cmgs(command, ucs2_hex(text))
        for line in answer:
            if line.startswith("+CMGS:"):
                with contextlib.suppress(ValueError):
                    return int(line.split(":", 1)[1].split(",")[0])
        raise ModemError(command, " | ".join(answer), f"modem: {command} gave no message reference: {answer}")

    # -- the exchange ---------------------------------------------------------------------------

    async def command(self, command: str, *, expect: str | None = None, timeout: float | None = None) -> list[str]:
        """Send one AT command; return its information lines (those starting with ``expect`` if
        given, else all lines but the echo) once ``OK`` arrives."""
        async with self._lock:
            await self._settle()
            protocol = self._start(command)
            return await self._answer(protocol, command, expect, timeout or self.command_timeout)

    async def _settle(self) -> None:
        """After an exchange cut short, let the modem's late answer arrive; `_start` then drops it."""
        if self._unsettled:
            self._unsettled = False
            await asyncio.sleep(SETTLE_S)

    def _start(self, command: str) -> _LineProtocol:
        if self._transport is None or self._protocol is None:
            raise ModemError(command, "", f"modem: {command}: the port {self.port} is not open")
        self._protocol.discard()
        log.debug("modem <- %s", command)
        assert isinstance(self._transport, asyncio.WriteTransport)
        self._transport.write(command.encode("ascii") + b"\r")
        return self._protocol

    def _write(self, data: bytes) -> None:
        assert isinstance(self._transport, asyncio.WriteTransport)
        self._transport.write(data)

    async def _answer(self, protocol: _LineProtocol, command: str, expect: str | None, timeout: float) -> list[str]:
        info: list[str] = []
        heard: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    line = await protocol.lines.get()
                    if line is None:
                        raise ModemError(command, " | ".join(heard), f"modem: {command}: port closed")
                    if line == _PROMPT:
                        continue
                    log.debug("modem -> %s", line)
                    heard.append(line)
                    if line == command:  # echo (before ATE0 took effect)
                        continue
                    if line == _FINAL_OK:
                        return info
                    if line in _FINAL_ERRORS or _ERROR_RE.match(line):
                        raise ModemError(command, explain_error(line))
                    if expect is None or line.startswith(expect):
                        info.append(line)
        except TimeoutError:
            raise ModemTimeout(
                command,
                " | ".join(heard),
                f"modem: {command}: no final answer in {timeout:g} s (heard: {' | '.join(heard) or 'nothing'})",
            ) from None

    async def _cmgs(self, command: str, payload: str) -> list[str]:
        async with self._lock:
            await self._settle()
            protocol = self._start(command)
            protocol.want_prompt = True
            heard: list[str] = []
            try:
                async with asyncio.timeout(self.command_timeout):
                    while True:
                        line = await protocol.lines.get()
                        if line is None:
                            raise ModemError(command, " | ".join(heard), f"modem: {command}: port closed")
                        if line == _PROMPT:
                            break
                        heard.append(line)
                        if line in _FINAL_ERRORS or _ERROR_RE.match(line):
                            raise ModemError(command, explain_error(line))
            except TimeoutError:
                protocol.want_prompt = False
                self._write(ESC)  # leave text entry in case the prompt came late
                raise ModemTimeout(
                    command, " | ".join(heard), f"modem: {command}: no '> ' prompt in {self.command_timeout:g} s"
                ) from None
            except BaseException:  # cancelled while waiting for the prompt: never leave the modem in text entry
                protocol.want_prompt = False
                with contextlib.suppress(ModemError, OSError, AssertionError):
                    self._write(ESC)
                self._unsettled = True  # its answer to the ESC is still to come: let it pass first
                raise
            self._write(payload.encode("ascii") + CTRL_Z)
            try:
                return await self._answer(protocol, command, "+CMGS:", self.sms_timeout)
            except ModemTimeout:
                self._write(ESC)
                raise


def _is_error(answer: str, kind: str, code: int) -> bool:
    match = _ERROR_RE.match(answer.split(" (", 1)[0])
    return bool(match and match.group(1) == kind and match.group(2).strip() == str(code))
