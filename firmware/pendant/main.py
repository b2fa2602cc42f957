"""The pendant's firmware: the SOS button and the fall detector, sent as BTHome v2 adverts.

On the ESP32 (MicroPython): ``/main.py`` and ``/hw.py`` from firmware/pendant, ``/lib/*.py`` from
firmware/lib, and ``/config.json`` written when the pendant is provisioned::

    {"key": "<the BTHome bind key the hub has for this pendant's MAC, 32 hex digits>",
     "name": "<optional: a local name in the advert>", "heartbeat_s": 300}

The loop runs at 50 Hz: one accelerometer sample for the fall detector, one look at the button
(press or long press -> an SOS burst; a fall -> a fall burst), the radio, then light sleep until
the next sample (plain sleep while an advert is on the air). node.py decides what goes on the air.
Without a key (or with a bad one) it sends unencrypted adverts, which a hub that holds a key for it
reports as tampering: a visible fault for the installer rather than a silent pendant.
"""

import sys
import time

import bthome
import drivers
import hw
import machine
from fall import FallDetector
from node import Node

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

RATE_HZ = 50
PERIOD_MS = 1000 // RATE_HZ


class Pendant:
    def __init__(self, board: "hw.Board", clock_ms: "Callable[[], int]", config: "dict[str, Any]") -> None:
        self.board = board
        self._clock = clock_ms
        encoder, store = drivers.encoder_for(config, board.radio.mac)
        self.store = store
        self.node = Node(
            encoder,
            store,
            clock_ms,
            board.battery.percent,
            heartbeat_s=config.get("heartbeat_s", 300),
            packet_id=board.packet_ids.load(),  # go on from before a reset
        )
        self.detector = FallDetector(RATE_HZ)
        self.name = config.get("name")
        self.accel_errors = 0
        self._next = clock_ms()

    def step(self) -> int:
        """One pass of the loop; returns how long to sleep (ms) until the next sample."""
        board = self.board
        node = self.node
        accel = board.accel
        if accel is not None:
            try:
                x, y, z = accel.read_g()
            except OSError:  # a bus glitch: skip the sample
                self.accel_errors += 1
            else:
                if self.detector.feed(x, y, z):
                    node.fall()
        event = board.button.poll()
        if event is not None:
            node.press(event)
        for data in node.tick():
            board.radio.advertise(bthome.advertising_payload(data, self.name))
            board.packet_ids.save(node.packet_id)
        if not node.on_air():
            board.radio.stop()
        now = self._clock()
        self._next += PERIOD_MS
        if self._next < now:  # late (a slow flash write): no catching up
            self._next = now
        return self._next - now


def main() -> None:
    uptime = drivers.Uptime()
    board = hw.Board(uptime.now)
    print("anju pendant", ":".join(f"{b:02X}" for b in board.radio.mac))  # for the installer
    pendant = Pendant(board, uptime.now, drivers.load_config())
    while True:
        board.sleep(pendant.step())


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # never sit in the REPL: say why, then start again
        sys.print_exception(exc)
        time.sleep(1)
        machine.reset()
