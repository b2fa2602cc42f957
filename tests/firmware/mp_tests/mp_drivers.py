"""drivers.py on the real MicroPython, with the stand-in machine and bluetooth modules."""

import bluetooth
import drivers
import machine
from drivers import LIPO_CURVE, Battery, Button, PacketIdMemory, Radio, percent_of
from machine import ADC, RTC, Pin
from mptest import Clock, eq, fresh, run

PIN = 27


def button(long_ms=2000, level=1):
    machine.reset_all()
    machine.set_level(PIN, level)
    clock = Clock()
    return Button(Pin(PIN, Pin.IN, Pin.PULL_UP), clock, long_ms=long_ms), clock


def play(btn, clock, levels, step_ms=10):
    """Set the pin to each level in turn, one poll every step_ms; returns [(ms, event)]."""
    events = []
    for level in levels:
        machine.set_level(PIN, level)
        event = btn.poll()
        if event is not None:
            events.append((clock.ms, event))
        clock.advance(step_ms)
    return events


def test_button_press_is_debounced():
    btn, clock = button()
    bouncy = [0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # 200 ms held, bouncing first
    release = [1, 0, 1, 1, 1, 1, 1, 1]
    levels = [1, 1]
    levels.extend(bouncy)
    levels.extend(release)
    events = play(btn, clock, levels)
    eq([event for _, event in events], ["press"], "one press for one bouncy push")
    eq(events[0][0], 270, "on the release, once it stayed released for 30 ms (from 240)")


def test_button_glitch_is_ignored():
    btn, clock = button()
    eq(play(btn, clock, [1, 0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1]), [], "20 ms low is not a press")


def test_button_long_press_while_held():
    btn, clock = button(long_ms=2000)
    events = play(btn, clock, [0] * 250 + [1] * 10)
    eq([event for _, event in events], ["long_press"], "long press only, nothing on the release")
    eq(events[0][0], 2000, "as soon as held 2 s (from the first low reading)")
    eq(btn.active(), False, "released")


def test_button_active_and_settling():
    btn, clock = button()
    play(btn, clock, [1, 1])
    eq((btn.active(), btn.settling()), (False, False), "idle")
    play(btn, clock, [0])
    eq((btn.active(), btn.settling()), (False, True), "a change being debounced")
    play(btn, clock, [0, 0, 0, 0])
    eq((btn.active(), btn.settling()), (True, False), "held")


def test_pull_cord_press_at_once():
    btn, clock = button(long_ms=None)
    events = play(btn, clock, [1, 1] + [0] * 500 + [1] * 5)
    eq(events, [(50, "press")], "on the pull once debounced, nothing while latched or on release")


def test_cord_already_pulled_at_start():
    btn, clock = button(long_ms=None, level=0)
    eq(play(btn, clock, [0] * 10), [(30, "press")], "a pull before start-up still alarms")


def test_battery_percent():
    machine.reset_all()
    machine.set_microvolts(35, 1_900_000)  # 3.8 V through a 1:2 divider
    battery = Battery(ADC(Pin(35), atten=ADC.ATTN_11DB), divider=2.0)
    eq(battery.millivolts(), 3800, "mV")
    eq(battery.percent(), 55, "3.8 V")
    eq(percent_of(4300, LIPO_CURVE), 100, "above full")
    eq(percent_of(3000, LIPO_CURVE), 0, "below empty")
    eq(percent_of(3650, LIPO_CURVE), 20, "interpolated")


def test_radio_advertises_non_connectable_and_stops():
    bluetooth.reset_all()
    clock = Clock(5)
    bluetooth.clock = clock
    radio = Radio(bluetooth.BLE())
    eq(radio.mac, bluetooth.MAC, "the controller's address, for the nonce")
    radio.stop()
    eq(bluetooth.adverts, [], "nothing to stop")
    radio.advertise(b"\x02\x01\x06")
    clock.advance(250)
    radio.stop()
    radio.stop()
    eq(bluetooth.adverts, [(5, 100_000, b"\x02\x01\x06", False), (255, None, None, True)], "on, then off once")


def test_packet_id_memory():
    machine.reset_all()
    eq(PacketIdMemory(RTC()).load(), 0, "nothing there yet")
    memory = PacketIdMemory(RTC())
    memory.save(7)
    memory.save(7)
    eq(RTC().memory(), b"AJ\x07", "written")
    eq(PacketIdMemory(RTC()).load(), 7, "after a reset")
    RTC().memory(b"something else")
    eq(PacketIdMemory(RTC()).load(), 0, "someone else's bytes")


def test_load_config():
    path = fresh("config.json")
    eq(drivers.load_config(path), {}, "missing")
    with open(path, "w") as f:
        f.write('{"key": "00112233445566778899aabbccddeeff", "heartbeat_s": 120}')
    eq(drivers.load_config(path)["heartbeat_s"], 120, "read")
    with open(path, "w") as f:
        f.write("{not json")
    eq(drivers.load_config(path), {}, "unreadable")


def test_uptime_grows():
    uptime = drivers.Uptime()
    first = uptime.now()
    import time

    time.sleep_ms(5)
    eq(uptime.now() - first >= 5, True, "ms since start")


run(globals())
