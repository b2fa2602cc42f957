"""The hub's local control socket: a unix socket in the data directory (mode 0600, root or the hub's
own user only) taking one JSON request per line, for the installer's tools on the hub itself.

    {"cmd": "permit", "seconds": 120}     open Zigbee joining (pairing) for that long
    {"cmd": "status"}                     what the hub is doing: radios, pending events

`anju pair zigbee --config FILE --seconds N` uses it; the installer's web app (issue [6]) will
call the same handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def socket_path(data_dir: Path) -> Path:
    return data_dir / "control.sock"


class ControlServer:
    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self._handlers = handlers
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write((json.dumps(await self._answer(line)) + "\n").encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            handler = self._handlers[request["cmd"]]
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": f'unknown request; send one of {sorted(self._handlers)} as {{"cmd": …}}'}
        try:
            return {"ok": True, **await handler(request)}
        except Exception as exc:
            log.warning("control request %s failed: %s", request.get("cmd"), exc)
            return {"ok": False, "error": str(exc)}

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)


def request(path: Path, message: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request to a running hub (for the CLI); raises OSError when no hub listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall((json.dumps(message) + "\n").encode())
        with contextlib.closing(sock.makefile("rb")) as stream:
            answer: dict[str, Any] = json.loads(stream.readline())
    return answer
