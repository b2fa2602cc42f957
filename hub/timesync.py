"""Whether the hub's wall clock can be trusted yet, and the moment it became so.

This module owns that one question. A Raspberry Pi has no real-time clock: after a power cut it
boots with a wrong wall clock (1970, or the last shutdown time fake-hwclock saved) until NTP has
synchronised it, minutes later or, without a network, never. Until then an event's wall time is a
guess; its monotonic time is not.

- Sources (`[clock] sync` in the configuration, `source_from_config`): "kernel" asks the Linux kernel
  (`kernel_clock_synchronised`: `adjtimex(2)` in read-only mode, no privilege needed); "assume" trusts
  the clock from the start (a machine whose clock is known good); "file:PATH" trusts it once PATH
  exists (simulation: a scenario starts unsynchronised and "synchronises" at a step by creating it).
  The kernel probe is hand-written with ctypes because neither the standard library nor any
  maintained package offers adjtimex/ntp_adjtime.
- `TimeSync` polls its source every POLL_S seconds on the asyncio loop (one system call each; no
  busy polling) until the first "synchronised", then takes the `SyncPoint` (wall and monotonic time
  read together, with the boot id) and tells its listeners, once. The clock stays trusted for the
  rest of the run: the kernel sets STA_UNSYNC again after hours without an NTP server, but a clock
  that was disciplined does not jump away meanwhile.
- `TimeSync.stamp` marks a new event with the boot id and its `TimeSource` (wall, or monotonic while
  unsynchronised); `SyncPoint.correct` gives a monotonic event of the same boot its true time,
  wall_at_sync − (mono_at_sync − event_mono). An event from an earlier boot keeps its mark: its
  monotonic time counts from another zero.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import dataclasses
import functools
import logging
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hub.model import Event, TimeSource

log = logging.getLogger(__name__)

POLL_S = 10.0
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
TIME_ERROR = 5  # adjtimex's answer when the kernel's clock is not synchronised
STA_UNSYNC = 0x0040  # the status bit the kernel (and NTP daemons) keep set until it is

# A source answers whether the wall clock is synchronised now; None: it cannot tell.
Source = Callable[[], bool | None]


class _Timex(ctypes.Structure):
    """Linux's `struct timex` (<sys/timex.h>); `long` is the word size, as for the `adjtimex` symbol."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


@functools.cache
def _adjtimex() -> Any:
    """libc's adjtimex, looked up once: `find_library` runs `ldconfig` (a process) on every call,
    which polled every POLL_S cost an idle hub more CPU than everything else it does."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        adjtimex = libc.adjtimex
    except (OSError, AttributeError):
        return None
    adjtimex.argtypes = [ctypes.POINTER(_Timex)]
    adjtimex.restype = ctypes.c_int
    return adjtimex


def kernel_clock_synchronised() -> bool | None:
    """Whether the Linux kernel says its clock is NTP-synchronised; None when it cannot be asked
    (not Linux, no libc, the call refused). Reads only (modes = 0): no CAP_SYS_TIME needed."""
    adjtimex = _adjtimex()
    if adjtimex is None:
        return None
    timex = _Timex()
    state = adjtimex(ctypes.byref(timex))
    if state < 0:
        return None
    return state != TIME_ERROR and not timex.status & STA_UNSYNC


def read_boot_id() -> str:
    """This boot's id from the kernel; without one (not Linux), a random id for this process, so
    that monotonic times from an earlier run are never taken for this run's (the safe side)."""
    try:
        return BOOT_ID_FILE.read_text().strip()
    except OSError:
        return str(uuid.uuid4())


def source_from_config(spec: str) -> Source:
    """The source `[clock] sync` names: "kernel", "assume" or "file:PATH"."""
    if spec == "kernel":
        return kernel_clock_synchronised
    if spec == "assume":
        return lambda: True
    if spec.startswith("file:") and len(spec) > len("file:"):
        flag = Path(spec.removeprefix("file:"))
        return flag.exists
    raise ValueError(f'clock sync must be "kernel", "assume" or "file:PATH", not {spec!r}')


@dataclass(frozen=True)
class SyncPoint:
    """The moment the wall clock became trustworthy: `wall` and `mono_ns` read together, in `boot_id`."""

    boot_id: str
    wall: datetime
    mono_ns: int

    @property
    def offset(self) -> datetime:
        """wall − monotonic: the wall time at which this boot's monotonic clock read zero."""
        return self.wall - timedelta(microseconds=self.mono_ns / 1000)

    def wall_at(self, mono_ns: int) -> datetime:
        """The true wall time of a monotonic moment of this boot."""
        return self.offset + timedelta(microseconds=mono_ns / 1000)

    def correct(self, event: Event) -> Event:
        """`event` with its true occurred_at if it is a monotonic event of this boot; else unchanged
        (a wall or corrected event; a monotonic one from an earlier boot keeps its mark)."""
        if event.time_source is not TimeSource.MONOTONIC or event.boot_id != self.boot_id:
            return event
        return dataclasses.replace(
            event, occurred_at=self.wall_at(event.observed_mono_ns), time_source=TimeSource.CORRECTED
        )


class TimeSync:
    """Watches `source` until the wall clock is synchronised, then holds the `SyncPoint`.

    `wall` and `mono_ns` are the clocks read at the sync point (injected in tests)."""

    def __init__(
        self,
        source: Source,
        *,
        boot_id: str | None = None,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        mono_ns: Callable[[], int] = time.monotonic_ns,
        poll_s: float = POLL_S,
    ) -> None:
        self.source = source
        self.boot_id = boot_id or read_boot_id()
        self.poll_s = poll_s
        self.sync: SyncPoint | None = None
        self._wall = wall
        self._mono_ns = mono_ns
        self._listeners: list[Callable[[SyncPoint], None]] = []

    @property
    def trusted(self) -> bool:
        """Whether the wall clock is synchronised (and so `datetime.now` is the time)."""
        return self.sync is not None

    def on_sync(self, listener: Callable[[SyncPoint], None]) -> None:
        """Call `listener` once, when the clock becomes synchronised (at once if it is already)."""
        self._listeners.append(listener)
        if self.sync is not None:
            listener(self.sync)

    def check(self) -> SyncPoint | None:
        """Ask the source (until it has said yes once); the sync point, or None while unsynchronised."""
        if self.sync is not None:
            return self.sync
        answer = self.source()
        if answer is None:
            log.warning("cannot tell whether the wall clock is synchronised (no adjtimex here): trusting it")
        elif not answer:
            return None
        mono = self._mono_ns()
        self.sync = SyncPoint(self.boot_id, self._wall(), mono)
        log.info("wall clock synchronised: %s at monotonic %.3f s", self.sync.wall.isoformat(), mono / 1e9)
        for listener in self._listeners:
            listener(self.sync)
        return self.sync

    async def run(self) -> None:
        """Poll every `poll_s` until synchronised; then nothing is left to watch for this run."""
        if self.check() is None:
            log.warning("the wall clock is not synchronised yet: events carry their monotonic time until it is")
        while True:  # one adjtimex every poll_s: cheap, and no busy loop
            if self.check() is not None:
                break
            await asyncio.sleep(self.poll_s)
        await asyncio.Event().wait()  # parked: a task that ended would be restarted by the service

    def stamp(self, event: Event) -> Event:
        """A new event with this boot's id and whether its wall time can be trusted; an event judged
        before (it has a boot id) is only corrected if the clock has been synchronised since."""
        if event.boot_id is None:
            trusted = self.sync is not None and event.observed_mono_ns >= self.sync.mono_ns
            source = TimeSource.WALL if trusted else TimeSource.MONOTONIC
            event = dataclasses.replace(event, boot_id=self.boot_id, time_source=source)
        return self.sync.correct(event) if self.sync is not None else event
