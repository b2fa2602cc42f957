"""The pendant (firmware/pendant) on the real MicroPython, its hardware played by the stand-ins.

Besides its own checks it prints ``ADVERT <ms> <hex>`` for the adverts of an encrypted run (start-up
heartbeat, an SOS press, a long press, a fall); tests/firmware/test_nodes.py feeds them to the hub's
interpreter (edge/bthome.py) to see the alarms the hub raises.
"""

import struct

import bluetooth
import hw
import machine
from main import PERIOD_MS, Pendant
from mptest import Clock, eq, fresh, run

KEY = "231d39c1d7cc1ab1aee224cd096db932"
UPRIGHT = (0.0, 0.0, 1.0)
IMPACT = (0.5, 3.5, 2.0)
LYING = (1.0, 0.0, 0.05)


class FakeLis3dh:
    """An LIS3DH on the bus: WHO_AM_I, the control registers, and samples (in g) to hand out."""

    def __init__(self, identity=0x33):
        self.identity = identity
        self.writes = []
        self.samples = []
        self.reads = 0

    def read(self, register, n):
        if register == 0x0F:
            return bytes([self.identity])
        if register == 0x28 | 0x80 and n == 6:
            g = self.samples.pop(0) if len(self.samples) > 1 else (self.samples[0] if self.samples else UPRIGHT)
            self.reads += 1
            return struct.pack("<hhh", *[round(v / 0.004) << 4 for v in g])
        raise AssertionError(f"unexpected read of register 0x{register:02x}")

    def write(self, register, data):
        self.writes.append((register, data))


def setup(accel=True):
    machine.reset_all()
    bluetooth.reset_all()
    clock = Clock(1000)
    bluetooth.clock = clock
    machine.set_microvolts(hw.BATTERY_PIN, 1_950_000)  # 3.9 V: 70 %
    device = FakeLis3dh()
    if accel:
        machine.I2C.attach(0x18, device)
    return clock, device


def service_data(advert):
    """The BTHome service data in an AD payload (after the d2 fc UUID)."""
    i = 0
    while i < len(advert):
        length, kind = advert[i], advert[i + 1]
        if kind == 0x16 and advert[i + 2 : i + 4] == b"\xd2\xfc":
            return advert[i + 4 : i + 1 + length]
        i += 1 + length
    raise AssertionError("no BTHome service data")


def steps(pendant, clock, n, button=None):
    """n passes of the loop, 20 ms apart; ``button`` (a list of pin levels) played one per pass."""
    for i in range(n):
        if button is not None and i < len(button):
            machine.set_level(hw.BUTTON_PIN, button[i])
        eq(pendant.step(), PERIOD_MS, "paced at 50 Hz")
        clock.advance(PERIOD_MS)


def on_air():
    """(ms, service data) for each advert put on the air, and the times advertising stopped."""
    starts = [(ms, service_data(data)) for ms, _, data, _ in bluetooth.adverts if data is not None]
    stops = [ms for ms, interval, _, _ in bluetooth.adverts if interval is None]
    return starts, stops


def test_lis3dh_setup_and_reading():
    setup()
    device = FakeLis3dh()
    machine.I2C.attach(0x19, device)
    accel = hw.Lis3dh(machine.I2C(0), address=0x19)
    eq(device.writes, [(0x23, b"\xa8"), (0x20, b"\x47")], "+-8 g high resolution, then 50 Hz XYZ")
    device.samples = [(1.0, -2.5, 0.004)]
    x, y, z = accel.read_g()
    eq((round(x, 3), round(y, 3), round(z, 3)), (1.0, -2.5, 0.004), "g, negative too")


def test_lis3dh_wrong_chip():
    setup(accel=False)
    machine.I2C.attach(0x18, FakeLis3dh(identity=0x44))
    try:
        hw.Lis3dh(machine.I2C(0))
    except OSError:
        pass
    else:
        raise AssertionError("a chip that is not an LIS3DH must not be used")


def test_board_without_accelerometer_still_sends_sos():
    clock, _ = setup(accel=False)
    board = hw.Board(clock)
    eq(board.accel, None, "no accelerometer answered")
    pendant = Pendant(board, clock, {})
    steps(pendant, clock, 100, button=[1] * 5 + [0] * 10 + [1] * 85)
    starts, _ = on_air()
    kinds = [data[-2:] for _, data in starts]
    eq(kinds.count(b"\x3a\x01"), 5, "the press burst, plain")


def test_press_burst_plain():
    clock, _ = setup()
    pendant = Pendant(hw.Board(clock), clock, {"heartbeat_s": 600})
    steps(pendant, clock, 20)  # start-up heartbeat on and off the air
    starts, stops = on_air()
    eq([data for _, data in starts], [b"\x40\x00\x00\x01\x46"], "heartbeat: packet id 0, battery 70 %")
    eq(stops, [1260], "off the air after 250 ms (next loop pass)")
    bluetooth.adverts.clear()
    steps(pendant, clock, 100, button=[0] * 8 + [1] * 92)
    starts, stops = on_air()
    eq(len(starts), 5, "a burst of 5")
    eq({data for _, data in starts}, {b"\x44\x00\x01\x3a\x01"}, "trigger-based, packet id 1, press, every time")
    times = [ms for ms, _ in starts]
    eq(
        [times[i + 1] - times[i] for i in range(len(times) - 1)],
        [260, 240, 260, 240],
        "about 250 ms apart (20 ms loop)",
    )
    eq(len(stops), 1, "advertising stops once, after the burst")
    eq(bluetooth.adverts[0][1], 100_000, "100 ms advertising interval while on the air")


def test_fall_burst():
    clock, device = setup()
    pendant = Pendant(hw.Board(clock), clock, {"heartbeat_s": 600})
    device.samples = [UPRIGHT] * 150 + [IMPACT] * 3 + [LYING] * 200
    steps(pendant, clock, 20)
    bluetooth.adverts.clear()
    steps(pendant, clock, 330)
    starts, _ = on_air()
    eq({data for _, data in starts}, {b"\x44\x00\x01\x3a\x00\x3a\x01"}, "button 1 none, button 2 press")
    eq(len(starts), 5, "one burst")
    eq(pendant.accel_errors, 0, "no bus errors")


def test_sleep_light_only_off_the_air():
    clock, _ = setup()
    board = hw.Board(clock)
    board.sleep(15)
    eq(machine.sleeps, [15], "light sleep while nothing is on the air")
    board.radio.advertise(b"\x02\x01\x06")
    board.sleep(1)
    eq(machine.sleeps, [15], "plain sleep while advertising")
    eq(machine.WDT.feeds, 2, "the watchdog fed on each pass")


def test_zz_encrypted_adverts_for_the_hub():
    clock, device = setup()
    path = fresh("pendant-counter")
    pendant = Pendant(hw.Board(clock), clock, {"key": KEY, "counter_path": path, "heartbeat_s": 600})
    device.samples = [UPRIGHT] * 400 + [IMPACT] * 3 + [LYING] * 200
    button = [1] * 10 + [0] * 8 + [1] * 100 + [0] * 110 + [1] * 100
    steps(pendant, clock, 600, button=button)
    starts, _ = on_air()
    counters = [struct.unpack("<I", data[-8:-4])[0] for _, data in starts]
    eq(counters, list(range(len(counters))), "a new counter per advert")
    eq({data[0] for _, data in starts}, {0x41, 0x45}, "encrypted; heartbeat plain-timed, events trigger-based")
    eq(len(starts), 16, "heartbeat + 3 bursts")
    print("MAC", bluetooth.MAC.hex())
    for ms, data in starts:
        print("ADVERT", ms, data.hex())


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
    eq(sent[0][-5:], b"\x40\x00\x00\x01" + bytes([70]), "plain (no config.json), packet id 0, battery")
    eq(bluetooth.adverts[-1][1], None, "then off the air before the light sleep")


run(globals())
