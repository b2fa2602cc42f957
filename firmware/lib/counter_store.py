"""The BTHome encryption counter, kept across reboots in a small file and written sparingly.

BTHome's AES-CCM nonce holds the counter, so a counter must never be used twice with one key: the
hub (edge/bthome.py) takes a counter that goes back for a replay. Writing the counter after every
advert would wear the flash out, so counters are reserved in blocks of ``block`` (256): the file
holds a *limit*, and no counter at or above the limit has been used. Before the first advert after
a boot, and whenever the counter reaches the limit, the next limit (the counter rounded up to the
next multiple of ``block``) is written *before* any counter below it is used. After a reboot the
counter starts at the stored limit: it jumps ahead by at most ``block`` and never repeats.

Flash wear: a pendant sends a heartbeat every 5 minutes (288 adverts a day) and a burst of 5
adverts per press or fall; even with 20 events a day that is < 400 adverts, so < 2 writes a day
(plus one per boot), about 600 a year. NOR flash sectors endure >= 100,000 erase cycles, and
littlefs (the ESP32 port's filesystem) spreads writes over its blocks anyway: one sector alone would
last over a century. Writing every advert instead would reach 100,000 writes of one sector in under
a year. Each boot also uses up the rest of a block: 2**32 / 256 is 16.7 million boots before the
uint32 counter wraps (it then starts again at 0, which the hub believes after a few authentic
adverts).

A write is atomic: the new value goes to ``path + ".tmp"``, which is then renamed over ``path``
(littlefs renames over an existing file; FAT does not, so the old file is removed first there).
Reading takes the larger valid value of the two files, so a crash at any point of a write leaves
either the old limit (no counter at or above it was used yet) or the new one. Each file holds the
value twice on one line ("4352 4352\\n"): a torn or damaged write does not parse and is ignored.
A write that fails (flash full, I/O error) is counted in ``write_errors`` and the node goes on
sending: an alarm matters more than a counter the hub may have to re-learn after a reboot.
"""

import os

COUNTER_MODULO = 1 << 32
BLOCK = 256


class CounterStore:
    """``take()`` returns the next encryption counter (uint32), reserving blocks in ``path``."""

    def __init__(self, path: str = "counter", block: int = BLOCK) -> None:
        if block < 1:
            raise ValueError("block must be at least 1")
        self.path = path
        self.block = block
        self.writes = 0
        self.write_errors = 0
        start = self._load()
        self.boot_counter = start
        self._next = start
        self._limit = start
        self._reserve()  # at boot, so a reboot loop without adverts still moves on

    @property
    def next_counter(self) -> int:
        """The counter the next ``take()`` returns."""
        return self._next

    @property
    def limit(self) -> int:
        """The limit held in flash: no counter at or above it has been used."""
        return self._limit

    def take(self) -> int:
        """The next counter, never one used before (also across reboots)."""
        if self._next >= COUNTER_MODULO:  # after ~4e9 adverts: start again (see the module docstring)
            self._next = 0
            self._limit = 0
        if self._next >= self._limit:
            self._reserve()
        counter = self._next
        self._next += 1
        return counter

    def _reserve(self) -> None:
        limit = (self._next // self.block + 1) * self.block
        if limit > COUNTER_MODULO:
            limit = COUNTER_MODULO
        self._limit = limit  # taken even if the write fails: sending goes on
        try:
            self._write(limit)
            self.writes += 1
        except OSError:
            self.write_errors += 1

    def _write(self, value: int) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{value} {value}\n")
        try:
            os.rename(tmp, self.path)
        except OSError:  # FAT: the target exists
            try:
                os.remove(self.path)
            except OSError:
                pass
            os.rename(tmp, self.path)

    def _load(self) -> int:
        best = 0
        for name in (self.path, self.path + ".tmp"):
            value = _read(name)
            if value > best:
                best = value
        return best


def _read(name: str) -> int:
    """The value in one file, or -1 when it is missing or does not parse."""
    try:
        with open(name) as f:
            text = f.read(64)
    except OSError:
        return -1
    if not text.endswith("\n"):
        return -1
    parts = text.split()
    if len(parts) != 2 or parts[0] != parts[1] or not parts[0].isdigit():
        return -1
    value = int(parts[0])
    return value if value <= COUNTER_MODULO else -1
