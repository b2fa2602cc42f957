"""Logging to systemd's journal, structured: one native-protocol datagram per log record.

Under systemd ($JOURNAL_STREAM names our stderr) each record goes to /run/systemd/journal/socket
with its fields: MESSAGE, PRIORITY (syslog level), SYSLOG_IDENTIFIER=anju, LOGGER, CODE_FILE,
CODE_LINE, CODE_FUNC, THREAD_NAME, the hub's HUB_ID, and any upper-case field a record carries
through `extra=` (e.g. `log.info("…", extra={"EVENT_ID": event.event_id})`). So
`journalctl -u anju-hub -p warning` and `journalctl -o json HUB_ID=hub-0001` just work.

Hand-written rather than systemd-python's JournalHandler: that package has no wheels and builds
against libsystemd's headers, which a Raspberry Pi image does not carry. The protocol is small
(systemd's "Native Journal Protocol"): `NAME=value\\n` per field, or for a value with a newline
`NAME\\n` + its length as 64-bit little-endian + the value + `\\n`; a record too large for one
datagram goes as a sealed memfd passed over the socket.

Nothing personal reaches the journal: the handler gets hub.api.security.RedactingFilter like every
other handler (the message and traceback), and redacts the `extra=` field values itself. When the
journal's socket cannot be reached the line goes to stderr with an sd-daemon `<N>` priority
prefix, which journald reads from the service's stderr stream.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import socket
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from hub.api.security import redact

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
_FIELD_NAME = re.compile(r"^[A-Z0-9][A-Z0-9_]*$")


def syslog_priority(levelno: int) -> int:
    """logging's level as a syslog priority: 2 crit, 3 err, 4 warning, 6 info, 7 debug."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def under_journald(environ: Mapping[str, str] | None = None, stream: TextIO | None = None) -> bool:
    """Whether systemd connected `stream` (stderr) to the journal: $JOURNAL_STREAM is "dev:inode"
    of the stream it gave us (a child whose stderr was redirected elsewhere inherits the variable,
    hence the check)."""
    environ = os.environ if environ is None else environ
    stream = sys.stderr if stream is None else stream
    try:
        device, inode = (int(part) for part in environ["JOURNAL_STREAM"].split(":"))
        stat = os.fstat(stream.fileno())
    except (KeyError, ValueError, OSError, AttributeError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


class JournaldHandler(logging.Handler):
    """Sends each record to the journal's native socket; falls back to stderr with a `<N>` prefix."""

    def __init__(
        self,
        socket_path: Path = JOURNAL_SOCKET,
        identifier: str = "anju",
        fields: Mapping[str, str] | None = None,
        fallback: TextIO | None = None,
    ) -> None:
        super().__init__()
        self.socket_path = socket_path
        self.identifier = identifier
        self.fields = {name.upper(): str(value) for name, value in (fields or {}).items()}
        self._fallback = fallback
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            fields = {
                "MESSAGE": message,
                "PRIORITY": str(syslog_priority(record.levelno)),
                "SYSLOG_IDENTIFIER": self.identifier,
                "LOGGER": record.name,
                "CODE_FILE": record.pathname,
                "CODE_LINE": str(record.lineno),
                "CODE_FUNC": record.funcName,
                "THREAD_NAME": record.threadName or "",
                **self.fields,
            }
            for name, value in record.__dict__.items():  # extra={"EVENT_ID": …}
                if _FIELD_NAME.match(name) and name not in fields:
                    fields[name] = redact(str(value))
            self._send(encode(fields))
        except OSError:
            self._to_stderr(record)
        except Exception:
            self.handleError(record)

    def _send(self, datagram: bytes) -> None:
        try:
            self._sock.sendto(datagram, str(self.socket_path))
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):  # too large for one datagram
                raise
            self._send_as_memfd(datagram)

    def _send_as_memfd(self, datagram: bytes) -> None:
        fd = os.memfd_create("anju-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, datagram)
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
            self._sock.sendmsg([], rights, 0, str(self.socket_path))
        finally:
            os.close(fd)

    def _to_stderr(self, record: logging.LogRecord) -> None:
        stream = self._fallback or sys.stderr
        with contextlib.suppress(Exception):
            prefix = f"<{syslog_priority(record.levelno)}>"
            text = self.format(record)
            stream.write("".join(f"{prefix}{line}\n" for line in text.splitlines() or [""]))
            stream.flush()

    def close(self) -> None:
        self._sock.close()
        super().close()


def encode(fields: Mapping[str, str]) -> bytes:
    """Fields in the native journal protocol."""
    out = bytearray()
    for name, value in fields.items():
        data = value.encode("utf-8", errors="replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


def decode(datagram: bytes) -> dict[str, str]:
    """The fields of one native-protocol datagram (the reverse of `encode`, for tests and tools)."""
    fields: dict[str, str] = {}
    at = 0
    while at < len(datagram):
        end = datagram.index(b"\n", at)
        line = datagram[at:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            fields[name.decode()] = value.decode()
            at = end + 1
        else:
            (size,) = struct.unpack("<Q", datagram[end + 1 : end + 9])
            fields[line.decode()] = datagram[end + 9 : end + 9 + size].decode()
            at = end + 9 + size + 1
    return fields
