"""node.py and counter_store.py on the real MicroPython, with a fake encoder and an injected clock."""

import os

from counter_store import CounterStore
from mptest import Clock, eq, fresh, run
from node import Node


class FakeEncoder:
    """Records what the node asks for; the advert's bytes are just the counter, 4 bytes."""

    def __init__(self):
        self.calls = []

    def encrypt(self, objects, counter, trigger_based=False):
        self.calls.append((list(objects), counter, trigger_based))
        return counter.to_bytes(4, "little")


class Counters:
    def __init__(self, start=0):
        self.next = start

    def take(self):
        self.next += 1
        return self.next - 1


def make(heartbeat_s=300, burst_count=5, burst_span_ms=1000, battery=87, start_ms=0):
    clock = Clock(start_ms)
    encoder = FakeEncoder()
    node = Node(encoder, Counters(), clock, lambda: battery, heartbeat_s, burst_count, burst_span_ms)
    return node, clock, encoder


def drive(node, clock, until_ms, step_ms=10):
    """Tick every step_ms until until_ms; returns [(ms, advert)] and the on-air intervals seen."""
    out = []
    while clock.ms <= until_ms:
        for data in node.tick():
            out.append((clock.ms, data))
        clock.advance(step_ms)
    return out


def test_a_heartbeat_at_start():
    node, clock, encoder = make(battery=64)
    sent = drive(node, clock, 100)
    eq([ms for ms, _ in sent], [0], "one heartbeat at start-up")
    eq(encoder.calls, [([(0x00, 0), (0x01, 64)], 0, False)], "packet id, battery; not trigger-based")


def test_burst_same_packet_id_increasing_counters():
    node, clock, encoder = make()
    drive(node, clock, 10_000)  # the start-up heartbeat out of the way
    encoder.calls.clear()
    clock.ms = 20_000
    node.press("press")
    sent = drive(node, clock, 23_000)
    eq([ms for ms, _ in sent], [20_000, 20_250, 20_500, 20_750, 21_000], "5 adverts over 1 s")
    eq({tuple(objects) for objects, _, _ in encoder.calls}, {((0x00, 1), (0x3A, "press"))}, "one message")
    counters = [counter for _, counter, _ in encoder.calls]
    eq(counters, [1, 2, 3, 4, 5], "a new counter per advert")
    eq({trigger for _, _, trigger in encoder.calls}, {True}, "trigger-based")


def test_on_air_until_the_last_advert_has_been_held():
    node, clock, _ = make()
    drive(node, clock, 10_000)
    clock.ms = 20_000
    node.press()
    air = []
    while clock.ms < 22_000:
        node.tick()
        air.append(node.on_air())
        clock.advance(10)
    first_off = air.index(False)
    eq(first_off * 10, 1250, "held 250 ms after the fifth advert")
    eq(True in air[first_off:], False, "then off")


def test_packet_id_per_event_and_wrap():
    node, clock, encoder = make(heartbeat_s=3600)
    drive(node, clock, 100)
    node.packet_id = 254
    ids = []
    for kind in ("press", "long_press", "double_press"):
        encoder.calls.clear()
        node.press(kind)
        drive(node, clock, clock.ms + 1500)
        ids.append({objects[0] for objects, _, _ in encoder.calls})
        eq({objects[1] for objects, _, _ in encoder.calls}, {(0x3A, kind)}, kind)
    eq(ids, [{(0, 254)}, {(0, 255)}, {(0, 0)}], "one id per event, wrapping at 256")


def test_fall_is_the_second_button():
    node, clock, encoder = make()
    drive(node, clock, 100)
    encoder.calls.clear()
    node.fall()
    drive(node, clock, 2000)
    eq(len(encoder.calls), 5, "a burst")
    eq(encoder.calls[0][0], [(0x00, 1), (0x3A, "none"), (0x3A, "press")], "button 1 none, button 2 press")


def test_events_during_a_burst_wait_and_do_not_repeat():
    node, clock, encoder = make()
    drive(node, clock, 100)
    encoder.calls.clear()
    node.press()
    drive(node, clock, clock.ms + 300)  # two adverts of the press burst on the air
    node.fall()
    node.fall()  # the same event still waiting: once
    node.press("long_press")
    sent = drive(node, clock, clock.ms + 5000)
    messages = []
    for objects, _, _ in encoder.calls:
        if objects not in messages:
            messages.append(objects)
    eq(
        messages,
        [
            [(0, 1), (0x3A, "press")],
            [(0, 2), (0x3A, "none"), (0x3A, "press")],
            [(0, 3), (0x3A, "long_press")],
        ],
        "bursts one after the other, in order",
    )
    eq(len(encoder.calls), 15, "three full bursts")
    times = [ms for ms, _ in sent]
    eq(times[5] - times[4] >= 250, True, "the next burst after the last advert was held")


def test_heartbeat_every_n_minutes_and_after_a_burst():
    node, clock, encoder = make(heartbeat_s=60)
    sent = drive(node, clock, 185_000, step_ms=100)
    eq([ms for ms, _ in sent], [0, 60_000, 120_000, 180_000], "every 60 s")
    ids = [objects[0][1] for objects, _, _ in encoder.calls]
    eq(ids, [0, 1, 2, 3], "a heartbeat is a new message")
    # a press just before a heartbeat is due: the heartbeat waits for the burst
    clock.ms = 239_500
    node.press()
    encoder.calls.clear()
    sent = drive(node, clock, 242_000)
    kinds = [objects[1][0] for objects, _, _ in encoder.calls]
    eq(kinds, [0x3A] * 5 + [0x01], "burst first, then the heartbeat")
    eq(sent[-1][0] >= 239_500 + 1250, True, "heartbeat after the burst left the air")


def test_idle_ms_says_when_to_wake():
    node, clock, _ = make(heartbeat_s=60)
    node.tick()
    eq(node.idle_ms(), 250, "until the start-up heartbeat leaves the air")
    clock.ms = 300
    node.tick()
    eq(node.on_air(), False, "off")
    eq(node.idle_ms(), 60_000 - 300, "then until the next heartbeat")
    node.press()
    eq(node.idle_ms(), 0, "a press is due now")


def test_late_loop_keeps_each_advert_on_the_air():
    node, clock, _ = make()
    drive(node, clock, 100)
    clock.ms = 10_000
    node.press()
    node.tick()
    clock.ms = 11_000  # the loop was stuck for a second
    eq(len(node.tick()), 1, "one advert, not four at once")
    eq(node.tick(), [], "the next one later")
    clock.advance(125)
    eq(len(node.tick()), 1, "after half a gap")


def test_counter_store_reserves_blocks():
    path = fresh("counter")
    store = CounterStore(path, block=256)
    eq(store.writes, 1, "reserved at boot")
    eq(store.limit, 256, "first block")
    counters = [store.take() for _ in range(600)]
    eq(counters, list(range(600)), "0, 1, 2 ...")
    eq(store.writes, 3, "one write per 256 adverts")
    with open(path) as f:
        eq(f.read(), "768 768\n", "the limit in flash")
    eq("counter.tmp" in os.listdir(path.rsplit("/", 1)[0]), False, "the temporary file renamed")


def test_counter_survives_a_reboot_with_a_jump_ahead():
    path = fresh("counter")
    store = CounterStore(path)
    used = [store.take() for _ in range(300)]
    rebooted = CounterStore(path)
    first = rebooted.take()
    eq(first, 512, "the next block after the one in use")
    eq(first > max(used), True, "never a counter used before")
    again = CounterStore(path)  # rebooted again before any advert
    eq(again.take(), 768, "each boot moves on a block")


def test_counter_file_damage_and_torn_writes():
    path = fresh("counter")
    with open(path, "w") as f:
        f.write("1024 1024\n")
    with open(path + ".tmp", "w") as f:
        f.write("12")  # a write torn by a power cut
    eq(CounterStore(path).take(), 1024, "the torn temporary file is ignored")
    with open(path, "w") as f:
        f.write("1280 1280\n")
    with open(path + ".tmp", "w") as f:
        f.write("1536 1536\n")  # written, not yet renamed, when the power went
    eq(CounterStore(path).take(), 1536, "the newer complete value wins")
    with open(path, "w") as f:
        f.write("garbage")
    fresh("counter")
    eq(CounterStore(path).take(), 0, "nothing readable: from 0")


def test_counter_write_failure_does_not_stop_adverts():
    store = CounterStore(fresh("no-such-dir") + "/counter")
    eq(store.write_errors, 1, "counted")
    eq([store.take() for _ in range(3)], [0, 1, 2], "adverts go on")


def test_node_with_the_counter_store():
    path = fresh("counter")
    clock = Clock()
    encoder = FakeEncoder()
    node = Node(encoder, CounterStore(path), clock, lambda: 50)
    node.press()
    drive(node, clock, 2000)
    counters = [counter for _, counter, _ in encoder.calls]
    eq(counters, list(range(6)), "press burst then the start-up heartbeat")
    encoder2 = FakeEncoder()
    node2 = Node(encoder2, CounterStore(path), clock, lambda: 50)
    drive(node2, clock, clock.ms + 100)
    eq(encoder2.calls[0][1], 256, "after a reboot")


run(globals())
