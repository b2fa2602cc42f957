"""A simulated pendant's fall goes through the firmware's detector: a recorded fall (or, without
the SisFall data, a synthetic one) is confirmed, and standing still is not."""

from __future__ import annotations

from array import array

import pytest

from firmware.lib.fall import FallDetector
from simulator import fall_motion


def _fires(samples: array[float]) -> bool:
    detector = FallDetector(fall_motion.RATE_HZ)
    return any(detector.feed(samples[i], samples[i + 1], samples[i + 2]) for i in range(0, len(samples) - 2, 3))


def test_the_synthetic_fall_is_confirmed_and_standing_is_not() -> None:
    assert _fires(fall_motion.synthetic_fall())
    assert not _fires(array("d", [0.0, 1.0, 0.0] * 50 * 20))


def test_the_recorded_fall_is_confirmed_when_the_data_is_here() -> None:
    samples, source = fall_motion.fall_samples()
    if not source.startswith("SisFall"):
        pytest.skip("../shared/data/sisfall-train/ is not on this machine: the synthetic fall is used")
    after = fall_motion.detected_after()
    assert after is not None and 3 < after < len(samples) / 3 / fall_motion.RATE_HZ
