"""What one of Anju's own devices says on the radio, and when: a pure, clock-driven state machine.

The pendant and the pull-cord node both run it (firmware/pendant/main.py, firmware/pullcord/main.py);
it knows nothing of pins or radios, so the tests drive it with a fake clock, on CPython and on the
MicroPython unix port.

* An event (``press(kind)`` for the SOS button or the cord, ``fall()`` for the pendant's detector)
  is sent as a *burst*: ``burst_count`` adverts spread over ``burst_span_ms`` (5 over 1 s), all with
  the same packet id, so a lost packet loses nothing; the hub's decoder (bthome-ble) drops the
  repeats by packet id, and the first one heard raises the alarm.
* Each new message (an event or a heartbeat) takes the next packet id (object 0x00, 0..255,
  wrapping), in the order the messages go on the air. The hub's decoder drops a packet id that is
  not ahead of the last one it took, for 4 s after it: a node that restarts (a watchdog or
  brown-out reset) should go on from where it was, so main.py keeps the next packet id in the RTC
  memory (``drivers.PacketIdMemory``), which survives every reset but a power cut, and passes it as
  ``packet_id``.
* Every advert takes a new encryption counter from ``store`` (BTHome's counter must increase per
  advert; the store keeps it across reboots).
* A heartbeat (packet id and battery %, not trigger-based) goes out at start-up and then every
  ``heartbeat_s`` seconds, so the hub's supervision hears the device; it waits while a burst is
  on the air. Events never wait for a heartbeat.
* An event that arrives during a burst is queued and sent after it (bursts never interleave: an
  older packet id heard after a newer one would be dropped by the hub as stale). The same event
  already waiting in the queue is not queued twice.

What the hub expects (edge/bthome.py, simulator/bthome.py): press, double_press, long_press as a
0x3A button event on the first button; a fall as two 0x3A objects, "none" then "press" (the hub maps
``button_2`` press on a pendant to ``alarm.fall``); battery 0x01 in %.

``tick()`` returns the service data of the adverts due now (at most one); the caller puts each on
the air and keeps it there while ``on_air()`` is true (each advert is held ``burst_span_ms /
(burst_count - 1)`` ms, 250 ms by default), then stops advertising. ``idle_ms()`` tells how long
the caller may sleep before the next ``tick()``.

Objects are given to the encoder as ``(object_id, value)`` pairs, which firmware/lib/bthome.py
encodes; ``encoder.encrypt(objects, counter, trigger_based)`` is ``bthome.Encryptor``'s signature
(``Plaintext(bthome.encode)`` wraps the unencrypted encoder the same way).
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    Objects = list[tuple[int, Any]]

    class Encoder(Protocol):
        def encrypt(self, objects: Objects, counter: int, trigger_based: bool = False) -> bytes: ...

    class Counters(Protocol):
        def take(self) -> int: ...


PACKET_ID = 0x00
BATTERY = 0x01
BUTTON = 0x3A

PRESS_KINDS = ("press", "double_press", "triple_press", "long_press", "hold_press")
FALL = "fall"

HEARTBEAT_S = 300  # 5 minutes; the hub declares a BLE device offline after 2 h of silence
BURST_COUNT = 5
BURST_SPAN_MS = 1000


class Plaintext:
    """An unencrypted encoder with the Encryptor's signature: ``Plaintext(bthome.encode)``."""

    def __init__(self, encode: "Callable[..., bytes]") -> None:
        self._encode = encode  # encode(objects, trigger_based=...)

    def encrypt(self, objects: "Objects", counter: int, trigger_based: bool = False) -> bytes:
        return self._encode(objects, trigger_based=trigger_based)


class Node:
    def __init__(
        self,
        encoder: "Encoder",
        store: "Counters | None",
        clock_ms: "Callable[[], int]",
        battery: "Callable[[], int]",
        heartbeat_s: int = HEARTBEAT_S,
        burst_count: int = BURST_COUNT,
        burst_span_ms: int = BURST_SPAN_MS,
        packet_id: int = 0,
    ) -> None:
        if burst_count < 1 or burst_span_ms < 0 or heartbeat_s <= 0:
            raise ValueError("burst_count >= 1, burst_span_ms >= 0 and heartbeat_s > 0")
        self._encoder = encoder
        self._store = store
        self._clock = clock_ms
        self._battery = battery
        self.heartbeat_ms = int(heartbeat_s * 1000)
        self.burst_count = burst_count
        # the time between two adverts of a burst; each advert is held on the air that long
        self.gap_ms = burst_span_ms // (burst_count - 1) if burst_count > 1 else burst_span_ms
        self.hold_ms = self.gap_ms if self.gap_ms > 0 else 100
        self.packet_id = packet_id & 0xFF  # the packet id of the next message
        self.sent = 0  # adverts sent since start
        self._queue: list[str] = []  # events waiting for the burst on the air to end
        self._objects: Objects | None = None  # the message on the air now
        self._trigger = False
        self._left = 0  # adverts of it still to send
        now = clock_ms()
        self._due = now  # when its next advert is due
        self._free_at = now  # when the radio is free for the next message
        self._air_until = now
        self._heartbeat_due = now  # a heartbeat at start-up

    # ---- inputs ------------------------------------------------------------------------------

    def press(self, kind: str = "press") -> None:
        """The SOS button (pendant) or the cord (pull-cord node): press, double_press, long_press ..."""
        if kind not in PRESS_KINDS:
            raise ValueError("unknown press " + repr(kind))
        self._event(kind)

    def fall(self) -> None:
        """The pendant's fall detector confirmed a fall."""
        self._event(FALL)

    def _event(self, kind: str) -> None:
        if kind not in self._queue:
            self._queue.append(kind)

    # ---- outputs -----------------------------------------------------------------------------

    def tick(self) -> list[bytes]:
        """The service data (for UUID 0xFCD2) of the adverts due now: none or one."""
        now = self._clock()
        if self._objects is None and now >= self._free_at:
            if self._queue:
                self._start(_event_objects(self._queue.pop(0)), True, self.burst_count, now)
            elif now >= self._heartbeat_due:
                self._start([(BATTERY, self._battery_percent())], False, 1, now)
                self._heartbeat_due += self.heartbeat_ms
                if now >= self._heartbeat_due:  # slept through some: the next one from now
                    self._heartbeat_due = now + self.heartbeat_ms
        objects = self._objects
        if objects is None or now < self._due:
            return []
        counter = self._store.take() if self._store is not None else 0
        data = self._encoder.encrypt(objects, counter, self._trigger)
        self.sent += 1
        self._left -= 1
        self._air_until = now + self.hold_ms
        if self._left > 0:
            # the next advert of the burst; when the loop was late, still keep this one on the air
            due = self._due + self.gap_ms
            soonest = now + self.hold_ms // 2
            self._due = due if due > soonest else soonest
        else:
            self._objects = None
            self._free_at = self._air_until
        return [data]

    def on_air(self) -> bool:
        """True while the last advert should stay on the air."""
        return self._clock() < self._air_until

    def busy(self) -> bool:
        """True while a message is being sent or events wait."""
        return self._objects is not None or bool(self._queue)

    def idle_ms(self) -> int:
        """How long until something is due (an advert, the end of one on the air, a heartbeat)."""
        now = self._clock()
        if self._objects is not None:
            wake = self._due
        elif self._queue:
            wake = self._free_at
        else:
            wake = self._heartbeat_due
            if self._free_at > wake:
                wake = self._free_at
        if now < self._air_until < wake:
            wake = self._air_until
        return wake - now if wake > now else 0

    # ---- internals ---------------------------------------------------------------------------

    def _start(self, objects: "Objects", trigger_based: bool, count: int, now: int) -> None:
        message: Objects = [(PACKET_ID, self.packet_id)]
        message.extend(objects)  # (MicroPython has no [x, *rest])
        self._objects = message
        self.packet_id = (self.packet_id + 1) & 0xFF
        self._trigger = trigger_based
        self._left = count
        self._due = now

    def _battery_percent(self) -> int:
        percent = int(self._battery())
        return 0 if percent < 0 else 100 if percent > 100 else percent


def _event_objects(kind: str) -> "Objects":
    if kind == FALL:  # Anju convention: button 1 "none", button 2 "press"
        return [(BUTTON, "none"), (BUTTON, "press")]
    return [(BUTTON, kind)]
