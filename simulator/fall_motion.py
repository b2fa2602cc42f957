"""The motion a simulated pendant feels when its wearer falls, and the firmware's verdict on it.

A scenario's `do: fall` on a BLE pendant does what the real pendant does: the accelerometer
samples (50 Hz, in g) go through the firmware's own `FallDetector` (firmware/lib/fall.py), and
only when it confirms a fall does the pendant send its fall burst. The samples are a real fall:
a SisFall recording (`F..` code, from ../shared/data/sisfall-train/ or $ANJU_SISFALL) when the
data is on the machine; otherwise a synthetic fall made here (standing, a short free fall, an
impact, then lying still), which the detector also confirms. The recording is fed as fast as
the detector takes it, not in real time: the scenario's clock is not slowed by the seconds a
detector waits to see the wearer stay down.
"""

from __future__ import annotations

import math
import os
from array import array
from functools import cache
from pathlib import Path

from firmware.lib.fall import FallDetector

RATE_HZ = 50
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sisfall-train"
RECORDING = "SA01/F01_SA01_R01.csv.gz"  # a forward fall while walking (SisFall's F01)


@cache
def fall_samples() -> tuple[array[float], str]:
    """Flat [x0, y0, z0, x1, …] in g at 50 Hz, and where they came from."""
    data = Path(os.environ.get("ANJU_SISFALL", DEFAULT_DATA))
    path = data / RECORDING
    if path.exists():
        from hub.fall_eval import load

        return load(path, RATE_HZ), f"SisFall {path.name}"
    return synthetic_fall(), "a synthetic fall"


def synthetic_fall() -> array[float]:
    """3 s standing (1 g down the y axis, a little sway), 0.4 s of free fall, a 0.2 s impact,
    then 12 s lying on the side (gravity along x)."""
    samples = array("d")
    for i in range(3 * RATE_HZ):
        samples.extend((0.02 * math.sin(i / 7), 1.0, 0.03))
    for _ in range(int(0.4 * RATE_HZ)):
        samples.extend((0.05, 0.15, 0.05))
    for i in range(int(0.2 * RATE_HZ)):
        samples.extend((3.5 - i * 0.2, -2.0 + i * 0.2, 1.5))
    for _ in range(12 * RATE_HZ):
        samples.extend((1.0, 0.05, 0.05))
    return samples


def detected_after() -> float | None:
    """Seconds of motion the firmware's detector needs to confirm the fall (None: it never does)."""
    samples, _ = fall_samples()
    detector = FallDetector(RATE_HZ)
    for i in range(0, len(samples) - 2, 3):
        if detector.feed(samples[i], samples[i + 1], samples[i + 2]):
            return (i // 3 + 1) / RATE_HZ
    return None
