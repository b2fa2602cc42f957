"""A stand-in for MicroPython's ``esp32`` on the unix port: ``wake_on_ext0`` records its calls."""

WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True
ext0 = []


def wake_on_ext0(pin, level):
    ext0.append((pin, level))


def reset_all():
    ext0.clear()
