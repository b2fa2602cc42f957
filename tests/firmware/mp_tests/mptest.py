"""A tiny test runner for scripts run by the real MicroPython (unix port); see tests/firmware/test_nodes.py.

``run(globals())`` calls every ``test_*`` function (sorted by name), printing
``ok NAME`` or the traceback, and exits with status 1 if any failed. ``Clock`` is an injected
millisecond clock; ``TMP`` is a scratch directory the CPython side makes for each run.
"""

import os
import sys

TMP = os.getenv("ANJU_TMP") or "/tmp"


class Clock:
    def __init__(self, ms=0):
        self.ms = ms

    def __call__(self):
        return self.ms

    def advance(self, ms):
        self.ms += ms


def eq(actual, expected, what=""):
    if actual != expected:
        raise AssertionError(f"{what or 'value'}: {actual!r} != {expected!r}")


def fresh(path):
    """``path`` in TMP, with whatever an earlier test left there removed."""
    full = TMP + "/" + path
    for name in (full, full + ".tmp"):
        try:
            os.remove(name)
        except OSError:
            pass
    return full


def run(names):
    failed = 0
    tests = [(name, value) for name, value in names.items() if name.startswith("test_") and callable(value)]
    # MicroPython's globals() keep no definition order: the names say the order where it matters
    tests.sort(key=lambda pair: pair[0])
    for name, test in tests:
        try:
            test()
        except Exception as exc:
            failed += 1
            print("FAIL", name)
            sys.print_exception(exc)
        else:
            print("ok", name)
    print(f"{len(tests) - failed} passed, {failed} failed")
    if failed:
        sys.exit(1)
