"""Virtual GPIO pins: gpiozero's own MockFactory, driven from outside the hub process.

The hub selects this factory by name (`gpio.pin_factory = "anju-sim"`, a gpiozero entry point)
and never imports it; its code runs unchanged on top. The factory connects to the unix socket in
$ANJU_SIM_GPIO, where the scenario runner's `PinBench` listens. JSON lines both ways:

    runner -> hub   {"pin": 17, "level": 0}                 drive an input pin (0 = pulled to ground)
    hub -> runner   {"pin": 27, "level": 1, "mono_ns": N}   an output pin changed (siren, LED)

A pin is driven on the factory's reader thread, as lgpio calls back on its own thread on a Pi.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin

log = logging.getLogger(__name__)

ENV_SOCKET = "ANJU_SIM_GPIO"


class _ReportingPin(MockPin):
    def _change_state(self, value: bool) -> bool:
        changed = bool(super()._change_state(value))
        if changed and self._function == "output":
            factory = self.factory
            if isinstance(factory, SimulatedPinFactory):
                factory.report({"pin": self.info.name, "level": int(value), "mono_ns": time.monotonic_ns()})
        return changed


class SimulatedPinFactory(MockFactory):
    def __init__(self) -> None:
        super().__init__(pin_class=_ReportingPin)
        self._sock: socket.socket | None = None
        self._send_lock = threading.Lock()
        path = os.environ.get(ENV_SOCKET)
        if not path:
            log.warning("%s is not set: simulated pins are not connected to any simulator", ENV_SOCKET)
            return
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)
        threading.Thread(target=self._read, name="sim-gpio", daemon=True).start()

    def report(self, message: dict[str, Any]) -> None:
        if self._sock is None:
            return
        with self._send_lock:
            try:
                self._sock.sendall((json.dumps(message) + "\n").encode())
            except OSError:
                self._sock = None

    def _read(self) -> None:
        assert self._sock is not None
        stream = self._sock.makefile("rb")
        for line in stream:
            try:
                command = json.loads(line)
                pin = self.pin(f"GPIO{int(command['pin'])}")
                if command["level"]:
                    pin.drive_high()
                else:
                    pin.drive_low()
            except Exception as exc:  # a bad line from the simulator must not kill the pins
                log.error("simulated GPIO: cannot apply %r: %s", line[:200], exc)


@dataclass(frozen=True)
class PinChange:
    pin: int
    level: int
    mono_ns: int


class PinBench:
    """The runner's side: a unix socket the hub's simulated pins connect to (again after a restart)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.outputs: list[PinChange] = []
        self._writer: asyncio.StreamWriter | None = None
        self._server: asyncio.Server | None = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.path))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self.connected.set()
        while line := await reader.readline():
            report = json.loads(line)
            self.outputs.append(
                PinChange(int(str(report["pin"]).removeprefix("GPIO")), report["level"], report["mono_ns"])
            )
        if self._writer is writer:
            self._writer = None
            self.connected.clear()

    async def drive(self, pin: int, level: int) -> int:
        """Set input `pin` to `level`; returns the monotonic ns at which the command left."""
        if self._writer is None:
            raise RuntimeError("no hub is connected to the simulated pins")
        sent = time.monotonic_ns()
        self._writer.write((json.dumps({"pin": pin, "level": level}) + "\n").encode())
        await self._writer.drain()
        return sent

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)
