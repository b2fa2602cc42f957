"""A stand-in for MicroPython's ``machine`` on the unix port, for the firmware tests only.

Just what the nodes use, with knobs for the tests: ``set_level(pin, level)`` drives an input pin;
``I2C.attach(address, device)`` puts a device on every bus (``device.read(register, n)`` and
``device.write(register, data)``), a missing address raising OSError(ENODEV) as the real bus does;
``set_microvolts(pin, uv)`` sets what an ``ADC`` reads; ``RTC().memory()`` keeps its bytes
until ``reset_all()`` (a simulated reboot keeps them, as the chip does); ``lightsleep`` records each call in
``sleeps`` and calls ``sleep_hook(ms)`` (a test's clock) if set; ``WDT.feeds`` counts feeds.
"""

_levels = {}  # pin number -> level (0/1)
_microvolts = {}  # pin number -> ADC reading
_devices = {}  # I2C address -> device
sleeps = []
sleep_hook = None
resets = 0
_rtc_memory = [b""]  # survives a simulated reboot, as the real RTC memory does


def set_level(pin, level):
    _levels[pin] = 1 if level else 0


def set_microvolts(pin, uv):
    _microvolts[pin] = uv


def reset_all():
    """Forget every pin, ADC reading, device and recorded sleep (between tests)."""
    global sleep_hook, resets
    _levels.clear()
    _microvolts.clear()
    _devices.clear()
    _rtc_memory[0] = b""
    sleeps.clear()
    sleep_hook = None
    resets = 0
    WDT.feeds = 0


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 2
    PULL_DOWN = 1
    IRQ_FALLING = 2
    IRQ_RISING = 1

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self.id = id
        self.mode = mode
        self.pull = pull
        if value is not None:
            set_level(id, value)
        elif id not in _levels:
            _levels[id] = 1 if pull == Pin.PULL_UP else 0

    def value(self, x=None):
        if x is None:
            return _levels.get(self.id, 0)
        set_level(self.id, x)
        return None

    def __repr__(self):
        return f"Pin({self.id})"


class I2C:
    def __init__(self, id=-1, *, scl=None, sda=None, freq=400000, timeout=50000):
        self.id = id
        self.freq = freq

    @staticmethod
    def attach(address, device):
        _devices[address] = device

    def _device(self, address):
        try:
            return _devices[address]
        except KeyError:
            raise OSError(19) from None  # ENODEV: nobody acknowledged the address

    def readfrom_mem(self, addr, memaddr, nbytes, *, addrsize=8):
        data = bytes(self._device(addr).read(memaddr, nbytes))
        if len(data) != nbytes:
            raise AssertionError(f"the test device gave {len(data)} bytes for {nbytes}")
        return data

    def writeto_mem(self, addr, memaddr, buf, *, addrsize=8):
        self._device(addr).write(memaddr, bytes(buf))

    def scan(self):
        return sorted(_devices)


class ADC:
    ATTN_0DB = 0
    ATTN_2_5DB = 1
    ATTN_6DB = 2
    ATTN_11DB = 3

    def __init__(self, pin, *, atten=0):
        self.pin = pin.id if isinstance(pin, Pin) else pin
        self.atten = atten

    def read_uv(self):
        return _microvolts.get(self.pin, 0)


class RTC:
    def __init__(self, id=0):
        self.id = id

    def memory(self, data=None):
        if data is None:
            return _rtc_memory[0]
        if len(data) > 2048:
            raise ValueError("RTC memory holds 2048 bytes")
        _rtc_memory[0] = bytes(data)
        return None


class WDT:
    feeds = 0

    def __init__(self, *, id=0, timeout=5000):
        self.timeout = timeout

    def feed(self):
        WDT.feeds += 1


def lightsleep(time_ms=None):
    sleeps.append(time_ms)
    if sleep_hook is not None:
        sleep_hook(time_ms)


def reset():
    global resets
    resets += 1
    raise SystemExit("machine.reset()")
