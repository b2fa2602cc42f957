"""systemd's watchdog for the hub: WATCHDOG=1 pings from the event loop, STATUS= lines, STOPPING=1.

Under `WatchdogSec=` systemd sets $WATCHDOG_USEC (and $WATCHDOG_PID, the process meant to ping);
if no WATCHDOG=1 arrives within that time it aborts the hub (SIGABRT, then SIGKILL) and
`Restart=always` starts it again. `heartbeat` pings every WATCHDOG_USEC/2 from a task on the
hub's own asyncio loop, never from a thread: the pin edges, the rules, the siren and the uplink
all run on that loop, so a loop that is stuck (a blocking call, a deadlock, an endless loop in a
callback) stops the pings and gets the hub restarted, while a thread would go on pinging for a
hub that can no longer sound an alarm.

It deliberately checks nothing else. The journal's writer thread being slow (a full or failing
SD card) is not a reason to restart: the alarm path already sends an alarm provisionally when the
journal does not take it within a second (hub.service `_record`), and a restart would only take
the siren and the uplink away for the seconds it takes. A loop that wakes the ping late (it was
blocked for a while, but not long enough for systemd) is logged, so a person can see it coming.

`enable_tracebacks_on_abort` makes the SIGABRT that systemd sends print every thread's Python
stack to stderr (the journal) before the process ends: where the hub was stuck, for a person.

For tests only: with $ANJU_TEST_HANG_ON_SIGUSR2=1 in the environment, SIGUSR2 blocks the event
loop for good (a faithful hang: threads go on, the loop does not). The service unit never sets
it, and nothing else in the hub reads it.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from hub.notify import sd_notify

log = logging.getLogger(__name__)

HANG_HOOK_ENV = "ANJU_TEST_HANG_ON_SIGUSR2"


def interval_s(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between pings (half of systemd's WatchdogSec), or None when no watchdog is asked
    for, or it is meant for another process ($WATCHDOG_PID names a different pid)."""
    environ = os.environ if environ is None else environ
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return usec / 1_000_000 / 2


async def heartbeat(status: Callable[[], str], interval: float | None = None) -> None:
    """Ping systemd's watchdog every `interval` seconds (default: from the environment) and tell
    it the hub's status (`systemctl status anju-hub` shows it) whenever it changes. Runs until
    cancelled; returns at once when there is no watchdog and no notify socket."""
    interval = interval_s() if interval is None else interval
    if interval is None and not os.environ.get("NOTIFY_SOCKET"):
        return
    period = interval if interval is not None else 30.0  # status lines only: a person reads them
    said = ""
    due = time.monotonic()
    while True:
        late = time.monotonic() - due
        if interval is not None:
            sd_notify("WATCHDOG=1")
            if late > interval / 2:
                log.warning(
                    "the event loop was blocked for %.1f s (the watchdog restarts the hub at %.1f s)",
                    late,
                    2 * interval,
                )
        line = _safe(status)
        if line != said:
            sd_notify(f"STATUS={line}")
            said = line
        due = time.monotonic() + period
        await asyncio.sleep(period)


def status_line(service: Any) -> str:
    """A short line for a person, e.g. "3 devices, uplink mqtt ok, 0 pending" (`service` is the
    running hub.service.HubService, or None before there is one)."""
    if service is None or not service.ready.is_set():
        return "starting"
    devices = len(service.config.devices)
    line = f"{devices} device{'' if devices == 1 else 's'}"
    line += f", uplink mqtt {'ok' if service.uplink.connected.is_set() else 'down'}, {len(service.outbox)} pending"
    offline = len(service.supervisor.offline())
    return line + (f", {offline} offline" if offline else "")


def stopping(stop: asyncio.Event | None = None) -> None:
    """Tell systemd the hub is shutting down on purpose (SIGTERM), then set `stop`."""
    sd_notify("STOPPING=1\nSTATUS=stopping")
    if stop is not None:
        stop.set()


def enable_tracebacks_on_abort() -> None:
    """On SIGABRT (systemd's watchdog signal), SIGSEGV and the like, write every thread's stack to
    stderr first; and, in tests that ask for it, install the hang hook (see the module's text)."""
    if not faulthandler.is_enabled():
        faulthandler.enable(file=sys.stderr, all_threads=True)
    if os.environ.get(HANG_HOOK_ENV) == "1":
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, _hang_the_loop_for_a_test)


def _hang_the_loop_for_a_test() -> None:
    log.warning("%s: blocking the event loop for good (a test's simulated hang)", HANG_HOOK_ENV)
    while True:
        time.sleep(3600)


def _safe(status: Callable[[], str]) -> str:
    try:
        return status()
    except Exception as exc:  # a status line must never stop the pings
        return f"status unavailable ({type(exc).__name__})"
