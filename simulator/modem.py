"""A virtual 4G modem (as a Quectel EC2x or SIMCom SIM7600 answers) behind a real pseudo-terminal.

The hub's modem driver opens ``VirtualModem.port_path`` (a stable symlink to the pty slave) as it
opens ``/dev/ttyUSB2`` and speaks AT commands to it. Answers are built here from 3GPP TS 27.007
and TS 27.005, not from the driver, so a misreading in one is not cancelled out by the other:

* result codes in verbose form, each ``\\r\\n<line>\\r\\n``; echo is on until ``ATE0``, as on a
  module fresh from power-up;
* ``AT+CMEE=0|1|2`` decides how ``+CME ERROR`` is reported (plain ``ERROR``, numeric, verbose;
  0 is the power-up default); ``+CMS ERROR: <n>`` is always numeric;
* ``AT``, ``ATE0/1``, ``ATI``, ``AT+CPIN?``, ``AT+CSQ``, ``AT+CREG?``, ``AT+CEREG?``,
  ``AT+CMGF=0|1``, ``AT+CSCS="GSM"|"IRA"|"UCS2"``, ``AT+CSMP=...``, ``AT+CMGS`` (text mode: the
  ``\\r\\n> `` prompt, text until Ctrl-Z sends, ESC cancels); anything else is ``ERROR``.

Every SMS sent is recorded in ``sent`` with its number and text decoded as the network would see
them (UCS-2 hex when ``AT+CSCS="UCS2"``) and the data coding scheme from ``AT+CSMP``.

Faults: ``no_sim()`` (``AT+CPIN?`` -> ``+CME ERROR: 10``, ``AT+CMGS`` -> ``+CMS ERROR: 310``),
``no_signal()`` (``+CSQ: 99,99``, not registered, ``AT+CMGS`` -> ``+CMS ERROR: 38``),
``smsc_unknown()`` (``+CMS ERROR: 330``), ``hang(seconds)`` (input read and ignored),
``send_garbage(data)`` (noise on the line) and ``recover()``.

Use::

    async with VirtualModem(tmp_path / "modem") as sim:   # the driver opens sim.port_path
        ...
        assert sim.sent[0].text == "【安居】火警 …"
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import termios
import time
import tty
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CTRL_Z = 0x1A
ESC = 0x1B

_CME_TEXT = {3: "operation not allowed", 4: "operation not supported", 10: "SIM not inserted"}


@dataclass(frozen=True)
class SentSms:
    """One SMS the virtual modem handed to the network."""

    number: str
    text: str
    dcs: int
    mr: int
    mono_ns: int = 0  # time.monotonic_ns() when the network took it


class VirtualModem:
    """A virtual modem on a pty; ``port_path`` is a stable symlink to the slave side."""

    def __init__(self, state_dir: Path, *, name: str = "ttyModem", rssi: int = 23) -> None:
        self.state_dir = Path(state_dir)
        self.name = name
        self.rssi = rssi  # +CSQ value when the signal is fine: 23 -> -67 dBm
        self.sent: list[SentSms] = []
        self.commands: list[str] = []  # every command line received (not the SMS text)
        self.echo = True
        self.cmee = 0
        self.cmgf = 0
        self.cscs = "IRA"
        self.dcs = 0
        self.sim_present = True
        self.signal = True
        self.smsc_known = True
        self._hang_until = 0.0
        self._mr = 0
        self._text_number: str | None = None  # set while in the ``> `` text-entry state
        self._buffer = bytearray()
        self._master: int | None = None
        self._slave: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def port_path(self) -> Path:
        return self.state_dir / self.name

    async def start(self) -> None:
        if self._master is not None:
            return
        self._loop = asyncio.get_running_loop()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        master, slave = os.openpty()
        tty.setraw(slave, termios.TCSANOW)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        link = self.port_path
        partial = link.with_name(link.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        partial.symlink_to(os.ttyname(slave))
        partial.replace(link)
        self._loop.add_reader(master, self._on_readable)
        log.info("virtual modem on %s -> %s", link, os.ttyname(slave))

    async def stop(self) -> None:
        if self._master is None:
            return
        assert self._loop is not None
        self._loop.remove_reader(self._master)
        os.close(self._master)
        if self._slave is not None:
            os.close(self._slave)
        self._master = self._slave = None
        with contextlib.suppress(FileNotFoundError):
            self.port_path.unlink()

    async def __aenter__(self) -> VirtualModem:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- faults ---------------------------------------------------------------------------------

    def no_sim(self) -> None:
        self.sim_present = False

    def no_signal(self) -> None:
        self.signal = False

    def smsc_unknown(self) -> None:
        self.smsc_known = False

    def hang(self, seconds: float) -> None:
        """Read and ignore everything for ``seconds``."""
        assert self._loop is not None
        self._hang_until = max(self._hang_until, self._loop.time() + seconds)

    @property
    def hung(self) -> bool:
        return self._loop is not None and self._loop.time() < self._hang_until

    def recover(self) -> None:
        """SIM back, signal back, SMSC known, answering again."""
        self.sim_present = self.signal = self.smsc_known = True
        self._hang_until = 0.0

    def send_garbage(self, data: bytes) -> None:
        self._write(data)

    # -- the line -------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._master is None:
            return
        try:
            os.write(self._master, data)  # answers are short; a pty buffers several KiB
        except OSError as exc:
            log.debug("virtual modem: write: %s", exc)

    def _line(self, line: str) -> None:
        self._write(b"\r\n" + line.encode("ascii") + b"\r\n")

    def _on_readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, OSError):
            return
        if self.hung:
            log.debug("virtual modem (hung) ignores %r", data)
            return
        for byte in data:
            self._feed(byte)

    def _feed(self, byte: int) -> None:
        if self._text_number is not None:
            if byte == CTRL_Z:
                text, self._buffer = bytes(self._buffer), bytearray()
                number, self._text_number = self._text_number, None
                self._submit(number, text.decode("ascii", errors="replace").strip())
            elif byte == ESC:
                self._buffer.clear()
                self._text_number = None
                self._line("OK")
            else:
                if self.echo:
                    self._write(bytes([byte]))
                self._buffer.append(byte)
            return
        if byte == ESC:  # outside text entry an ESC cancels nothing: modules ignore it
            return
        if byte == 0x0D:
            raw, self._buffer = bytes(self._buffer), bytearray()
            line = raw.decode("ascii", errors="replace").strip()
            if self.echo:
                self._write(raw + b"\r")
            if line:
                self.commands.append(line)
                self._execute(line)
        elif byte != 0x0A:
            self._buffer.append(byte)

    # -- commands -------------------------------------------------------------------------------

    def _cme(self, code: int) -> None:
        if self.cmee == 0:
            self._line("ERROR")
        elif self.cmee == 1:
            self._line(f"+CME ERROR: {code}")
        else:
            self._line(f"+CME ERROR: {_CME_TEXT.get(code, 'unknown')}")

    def _execute(self, line: str) -> None:
        cmd = line.upper()
        if cmd in ("AT", "ATZ"):
            self._line("OK")
        elif cmd in ("ATE0", "ATE1", "ATE"):
            self.echo = cmd == "ATE1"
            self._line("OK")
        elif cmd == "ATI":
            self._write(b"\r\nQuectel\r\nEC25\r\nRevision: EC25EFAR06A06M4G\r\n\r\nOK\r\n")
        elif m := re.fullmatch(r"AT\+CMEE=([012])", cmd):
            self.cmee = int(m.group(1))
            self._line("OK")
        elif cmd == "AT+CPIN?":
            if not self.sim_present:
                self._cme(10)
            else:
                self._write(b"\r\n+CPIN: READY\r\n\r\nOK\r\n")
        elif cmd == "AT+CSQ":
            rssi = self.rssi if self.signal and self.sim_present else 99
            self._write(f"\r\n+CSQ: {rssi},99\r\n\r\nOK\r\n".encode())
        elif cmd in ("AT+CREG?", "AT+CEREG?"):
            stat = 1 if self.signal and self.sim_present else (2 if self.sim_present else 0)
            self._write(f"\r\n{cmd[2:-1]}: 0,{stat}\r\n\r\nOK\r\n".encode())
        elif m := re.fullmatch(r"AT\+CMGF=([01])", cmd):
            self.cmgf = int(m.group(1))
            self._line("OK")
        elif cmd == "AT+CMGF?":
            self._write(f"\r\n+CMGF: {self.cmgf}\r\n\r\nOK\r\n".encode())
        elif m := re.fullmatch(r'AT\+CSCS="([A-Z0-9]+)"', cmd):
            if m.group(1) in ("GSM", "IRA", "UCS2"):
                self.cscs = m.group(1)
                self._line("OK")
            else:
                self._cme(4)
        elif m := re.fullmatch(r"AT\+CSMP=(\d+),(\d+),(\d+),(\d+)", cmd):
            self.dcs = int(m.group(4))
            self._line("OK")
        elif m := re.fullmatch(r'AT\+CMGS="([^"]*)"(?:,\d+)?', line, flags=re.IGNORECASE):
            self._cmgs(m.group(1))
        else:
            self._line("ERROR")

    def _decode(self, value: str) -> str | None:
        if self.cscs != "UCS2":
            return value
        try:
            return bytes.fromhex(value).decode("utf-16-be")
        except ValueError:
            return None

    def _cmgs(self, number_field: str) -> None:
        if self.cmgf != 1:
            self._line("+CMS ERROR: 304")  # PDU mode wants AT+CMGS=<length>
            return
        if not self.sim_present:
            self._line("+CMS ERROR: 310")
            return
        number = self._decode(number_field)
        if not number or not re.fullmatch(r"\+?[0-9*#]{1,20}", number):
            self._line("+CMS ERROR: 305")
            return
        self._text_number = number
        self._write(b"\r\n> ")

    def _submit(self, number: str, payload: str) -> None:
        if not self.signal:
            self._line("+CMS ERROR: 38")
            return
        if not self.smsc_known:
            self._line("+CMS ERROR: 330")
            return
        text = self._decode(payload)
        if text is None:
            self._line("+CMS ERROR: 305")
            return
        length, limit = (len(text.encode("utf-16-be")) // 2, 70) if self.dcs == 8 else (len(text), 160)
        if length > limit:
            self._line("+CMS ERROR: 305")
            return
        self._mr = (self._mr + 1) % 256
        self.sent.append(SentSms(number=number, text=text, dcs=self.dcs, mr=self._mr, mono_ns=time.monotonic_ns()))
        log.info("virtual modem sends SMS %d to %s: %s", self._mr, number, text)
        self._write(f"\r\n+CMGS: {self._mr}\r\n\r\nOK\r\n".encode())
