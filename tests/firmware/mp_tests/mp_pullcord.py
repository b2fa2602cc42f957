"""The pull-cord node (firmware/pullcord) on the real MicroPython, its hardware played by the stand-ins.

Its loop is driven the way the device runs it: each pass returns how long to sleep, and the test's
clock moves on by that much (``machine.lightsleep`` advances it through the stand-in's hook, which
ends the sleep early when the cord reaches the level armed with ``esp32.wake_on_ext0``).
"""

import struct

import bluetooth
import esp32
import hw
import machine
from main import MAX_SLEEP_MS, POLL_MS, PullCord
from mptest import Clock, eq, fresh, run

KEY = "231d39c1d7cc1ab1aee224cd096db932"


def setup(config=None, keep_rtc=False):
    rtc = machine.RTC().memory()
    machine.reset_all()
    if keep_rtc:
        machine.RTC().memory(rtc)
    bluetooth.reset_all()
    esp32.reset_all()
    clock = Clock(1000)
    bluetooth.clock = clock
    machine.set_microvolts(hw.BATTERY_PIN, 1_800_000)  # 3.6 V: 10 %
    board = hw.Board(clock)
    return clock, board, PullCord(board, clock, config or {"heartbeat_s": 300})


def loop(cord, board, clock, until_ms, pulls=()):
    """Run the loop until until_ms; the cord is pulled (low) during each (from_ms, to_ms) of pulls.
    Returns the sleeps asked for."""
    asked = []

    def pulled_at(ms):
        for start, end in pulls:
            if start <= ms < end:
                return True
        return False

    def light_sleep(ms):
        # what ext0 does: the sleep ends early when the cord reaches the armed level
        wake_high = esp32.ext0[-1][1] if esp32.ext0 else None
        end = clock.ms + ms
        for start, stop in pulls:
            for edge, high in ((start, False), (stop, True)):
                if clock.ms < edge < end and high == wake_high:
                    end = edge
        clock.ms = end

    machine.sleep_hook = light_sleep
    while clock.ms < until_ms:
        machine.set_level(hw.CORD_PIN, 0 if pulled_at(clock.ms) else 1)
        ms = cord.step()
        asked.append(ms)
        if board.radio.advertising:
            clock.advance(ms)  # the real board sleeps plainly here (time.sleep_ms)
        else:
            board.sleep(ms)  # light sleep: the stand-in's hook moves the clock
    return asked


def adverts():
    """(ms, BTHome service data) of each advert put on the air (no name: flags, then service data)."""
    out = []
    for ms, _, data, _ in bluetooth.adverts:
        if data is not None:
            eq(data[:3] + data[4:7], b"\x02\x01\x06\x16\xd2\xfc", "flags, then service data for 0xFCD2")
            eq(data[3], len(data) - 4, "its length")
            out.append((ms, data[7:]))
    return out


def test_idle_node_sleeps_until_the_heartbeat_in_watchdog_sized_pieces():
    clock, board, cord = setup({"heartbeat_s": 60})
    asked = loop(cord, board, clock, 1000 + 125_000)
    times = [ms for ms, _ in adverts()]
    eq(times, [1000, 61_000, 121_000], "start-up heartbeat, then every 60 s")
    eq(max(asked), MAX_SLEEP_MS, "never longer than the watchdog allows")
    eq(len(machine.sleeps) < 50, True, f"mostly asleep: {len(machine.sleeps)} light sleeps")
    eq(esp32.ext0[-1], (board.cord_pin, esp32.WAKEUP_ALL_LOW), "a pull wakes it")
    eq(adverts()[0][1][-2:], b"\x01\x0a", "battery 10 %")


def test_pull_sends_a_burst_at_once():
    clock, board, cord = setup()
    loop(cord, board, clock, 20_000)
    bluetooth.adverts.clear()
    asked = loop(cord, board, clock, 30_000, pulls=[(25_000, 60_000)])  # pulled and latched
    sent = adverts()
    eq(len(sent), 5, "one burst, though the cord stays pulled")
    eq({data for _, data in sent}, {b"\x44\x00\x01\x3a\x01"}, "trigger-based press, packet id 1")
    eq(sent[0][0] - 25_000 <= 60, True, f"on the air within 60 ms of the pull ({sent[0][0] - 25_000})")
    eq(POLL_MS in asked, True, "polls while debouncing and on the air")
    eq(esp32.ext0[-1], (board.cord_pin, esp32.WAKEUP_ANY_HIGH), "latched: woken by the release, not the level")


def test_counter_survives_a_reboot():
    path = fresh("pullcord-counter")
    config = {"key": KEY, "counter_path": path, "heartbeat_s": 300}
    clock, board, cord = setup(config)
    loop(cord, board, clock, 10_000, pulls=[(2000, 2100)])
    before = [struct.unpack("<I", data[-8:-4])[0] for _, data in adverts()]
    eq(before, list(range(6)), "heartbeat, burst: counters 0..5")
    eq(machine.RTC().memory(), b"AJ\x02", "the next packet id in the RTC memory")
    clock, board, cord = setup(config, keep_rtc=True)  # a reboot: the same flash and RTC memory
    loop(cord, board, clock, 2000)
    after = [struct.unpack("<I", data[-8:-4])[0] for _, data in adverts()]
    eq(after, [256], "the start-up heartbeat after the reboot jumps to the next block")
    eq(cord.node.packet_id, 3, "and packet ids go on from before the reboot")


class Stop(Exception):
    pass


def test_main_starts_and_sends_its_heartbeat():
    setup()
    import main

    def stop(ms):
        raise Stop()

    machine.sleep_hook = stop  # the first light sleep ends the run (after the heartbeat's 250 ms)
    try:
        main.main()
    except Stop:
        pass
    sent = [data for _, interval, data, _ in bluetooth.adverts if interval is not None]
    eq(len(sent), 1, "the start-up heartbeat")
    eq(sent[0][-5:], b"\x40\x00\x00\x01" + bytes([10]), "plain (no config.json), packet id 0, battery")
    eq(bluetooth.adverts[-1][1], None, "then off the air before the light sleep")


run(globals())
