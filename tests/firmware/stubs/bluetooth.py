"""A stand-in for MicroPython's ``bluetooth`` on the unix port, for the firmware tests only.

``BLE.gap_advertise`` records ``(ms, interval_us, adv_data, connectable)`` in ``adverts`` (adv_data
None: advertising stopped), ``ms`` from ``clock()``, which a test sets to its own clock.
"""

MAC = b"\x54\x48\xe6\x8f\x80\xa5"
adverts = []
clock = None


def reset_all():
    global clock
    adverts.clear()
    clock = None


class BLE:
    def __init__(self):
        self._active = False

    def active(self, active=None):
        if active is None:
            return self._active
        self._active = bool(active)
        return None

    def config(self, *names, **settings):
        if names == ("mac",):
            return (0, MAC)
        if names:
            raise ValueError("unknown config " + repr(names))
        return None

    def gap_advertise(self, interval_us, adv_data=None, *, resp_data=None, connectable=True):
        if not self._active:
            raise OSError(1)  # the real one fails while BLE is off
        ms = clock() if clock is not None else 0
        data = None if interval_us is None or adv_data is None else bytes(adv_data)
        adverts.append((ms, interval_us, data, connectable))
