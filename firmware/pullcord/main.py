"""The pull-cord node's firmware: a pull of the cord sent as a burst of BTHome v2 adverts.

On the ESP32 (MicroPython): ``/main.py`` and ``/hw.py`` from firmware/pullcord, ``/lib/*.py`` from
firmware/lib, and ``/config.json`` written when the node is provisioned::

    {"key": "<the BTHome bind key the hub has for this node's MAC, 32 hex digits>",
     "name": "<optional: a local name in the advert>", "heartbeat_s": 300}

Most of the time the node is in light sleep: until the next heartbeat (at most ``MAX_SLEEP_MS``, so
the watchdog is fed), or until the cord is pulled. While a pull is being debounced or an advert is
on the air it polls every ``POLL_MS``. node.py decides what goes on the air. Without a key (or with
a bad one) it sends unencrypted adverts, which a hub that holds a key for it reports as tampering.
"""

import sys
import time

import bthome
import drivers
import hw
import machine
from node import Node

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

POLL_MS = 10
MAX_SLEEP_MS = 10_000


class PullCord:
    def __init__(self, board: "hw.Board", clock_ms: "Callable[[], int]", config: "dict[str, Any]") -> None:
        self.board = board
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
        self.name = config.get("name")

    def step(self) -> int:
        """One pass of the loop; returns how long to sleep (ms)."""
        board = self.board
        node = self.node
        event = board.cord.poll()
        if event is not None:
            node.press(event)
        for data in node.tick():
            board.radio.advertise(bthome.advertising_payload(data, self.name))
            board.packet_ids.save(node.packet_id)
        if not node.on_air():
            board.radio.stop()
        if board.cord.settling() or node.busy() or node.on_air():
            return POLL_MS
        wait = node.idle_ms()
        return wait if wait < MAX_SLEEP_MS else MAX_SLEEP_MS


def main() -> None:
    uptime = drivers.Uptime()
    board = hw.Board(uptime.now)
    print("anju pullcord", ":".join(f"{b:02X}" for b in board.radio.mac))  # for the installer
    cord = PullCord(board, uptime.now, drivers.load_config())
    while True:
        board.sleep(cord.step())


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # never sit in the REPL: say why, then start again
        sys.print_exception(exc)
        time.sleep(1)
        machine.reset()
