"""The pendant's fall detector (firmware/lib/fall.py) and `anju fall-eval` (hub/fall_eval.py).

Synthetic signals for the stages (standing, falling, jogging, jumping, sitting down, lying down),
memory and clipping; a few SisFall recordings from ../shared/data/sisfall-train/ for the command
and for MicroPython-vs-CPython agreement (skipped when the data or MicroPython is absent). The
cross-validated figures come from bench/fall_eval.py, not from here.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware.lib.fall import FallDetector
from hub import fall_eval
from hub.fall_eval import RecordingError

RATE = 50
DATA = Path(
    os.environ.get("ANJU_SISFALL", Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sisfall-train")
)
needs_data = pytest.mark.skipif(
    not (DATA / "SA01").is_dir(),
    reason=f"SisFall training recordings not found at {DATA} (see the README there); not copied into the repo",
)
needs_micropython = pytest.mark.skipif(
    fall_eval.find_micropython() is None, reason="the MicroPython unix port (`micropython`) is not installed"
)

Sample = tuple[float, float, float]


def noise(seed: int = 1) -> Iterator[float]:
    """Deterministic small noise in g (+-0.01)."""
    state = seed
    while True:
        state = (state * 1103515245 + 12345) % 2**31
        yield (state / 2**31 - 0.5) * 0.02


def hold(vector: Sample, seconds: float, jitter: Iterator[float]) -> list[Sample]:
    return [
        (vector[0] + next(jitter), vector[1] + next(jitter), vector[2] + next(jitter))
        for _ in range(int(seconds * RATE))
    ]


UPRIGHT = (0.0, -1.0, 0.0)  # as SisFall's waist sensor reads gravity when standing
LYING = (0.0, 0.05, 1.0)


def fall_signal(lying_s: float = 10.0) -> tuple[list[Sample], int]:
    """Standing, 0.4 s of near free fall, a 3.5 g impact, then lying still. Also the impact's index."""
    jitter = noise()
    signal = hold(UPRIGHT, 5, jitter)
    signal += hold((0.1, -0.2, 0.1), 0.4, jitter)
    impact = len(signal)
    signal += [(1.2, -2.0, 2.6), (0.8, -2.6, 2.3), (0.5, -1.0, 1.8), (0.2, 0.4, 1.4), (0.1, 0.2, 1.2)]
    signal += hold(LYING, lying_s, jitter)
    return signal, impact


def run(signal: list[Sample], detector: FallDetector | None = None) -> list[int]:
    """Indices of the samples at which feed() returned True."""
    detector = detector or FallDetector(RATE)
    return [i for i, (x, y, z) in enumerate(signal) if detector.feed(x, y, z)]


def flat(signal: list[Sample]) -> list[float]:
    return [v for sample in signal for v in sample]


# --- synthetic signals ----------------------------------------------------------------------------


def test_standing_still_never_alarms() -> None:
    assert run(hold(UPRIGHT, 120, noise())) == []


def test_a_fall_alarms_once_within_the_confirmation_time() -> None:
    signal, impact = fall_signal()
    fired = run(signal)
    assert len(fired) == 1
    assert 0 < (fired[0] - impact) / RATE <= 3.0


def test_lying_down_without_an_impact_does_not_alarm() -> None:
    jitter = noise()
    signal = hold(UPRIGHT, 5, jitter)
    signal += [
        (math.sin(a) * 0.0, -math.cos(a), math.sin(a)) for a in (i / 75 * math.pi / 2 for i in range(75))
    ]  # 1.5 s from upright to lying
    signal += hold(LYING, 10, jitter)
    assert run(signal) == []


def test_jogging_does_not_alarm() -> None:
    jitter = noise()
    signal = hold(UPRIGHT, 3, jitter)
    for i in range(60 * RATE):  # 2.5 steps a second, 1 +- 1.4 g vertically, some sway
        t = i / RATE
        signal.append(
            (0.3 * math.sin(math.pi * 2.5 * t), -1.0 - 1.4 * math.sin(2 * math.pi * 2.5 * t), 0.2 + next(jitter))
        )
    signal += hold(UPRIGHT, 10, jitter)
    assert run(signal) == []


def test_jumping_and_landing_upright_does_not_alarm() -> None:
    jitter = noise()
    signal = hold(UPRIGHT, 3, jitter)
    for _ in range(5):
        signal += hold((0.0, -1.8, 0.1), 0.2, jitter)  # push off
        signal += hold((0.0, 0.0, 0.0), 0.3, jitter)  # in the air
        signal += [(0.3, -4.0, 0.5), (0.2, -3.0, 0.3), (0.1, -1.6, 0.2)]  # landing
        signal += hold(UPRIGHT, 2, jitter)
    assert run(signal) == []


def test_sitting_down_hard_does_not_alarm() -> None:
    jitter = noise()
    signal = hold(UPRIGHT, 3, jitter)
    signal += hold((0.0, -0.4, 0.1), 0.3, jitter)
    signal += [(0.4, -3.2, 0.8), (0.3, -2.4, 0.6), (0.2, -1.5, 0.4)]
    signal += hold((0.0, -0.94, 0.34), 10, jitter)  # sitting: the trunk 20 degrees back
    assert run(signal) == []


def test_a_fall_and_getting_straight_up_does_not_alarm() -> None:
    signal, _ = fall_signal(lying_s=0.3)
    jitter = noise(7)
    signal += [(0.3 * math.sin(i / 3), -0.5 - 0.5 * math.sin(i / 5), 0.5) for i in range(RATE)]  # getting up
    signal += hold(UPRIGHT, 10, jitter)
    assert run(signal) == []


def test_reset_forgets_the_event_and_the_history() -> None:
    signal, impact = fall_signal()
    detector = FallDetector(RATE)
    run(signal[: impact + 10], detector)  # the impact, not yet confirmed
    detector.reset()
    assert run(signal[impact + 10 :], detector) == []
    detector.reset()
    assert run(signal, detector) == run(signal)  # as good as new


def test_other_rates_detect_the_fall_too() -> None:
    signal, impact = fall_signal()
    for rate, step in ((25, 2), (50, 1)):
        fired = run(signal[::step], FallDetector(rate))
        assert len(fired) == 1 and (fired[0] * step - impact) / RATE <= 3.0
    with pytest.raises(ValueError):
        FallDetector(0)


def test_readings_beyond_8_g_are_clipped() -> None:
    signal, impact = fall_signal()
    harder = list(signal)
    for i in range(impact, impact + 3):  # the same impact as a +-16 g sensor would read it
        x, y, z = signal[i]
        harder[i] = (6 * x, 6 * y, 6 * z)

    def clip(v: float) -> float:
        return max(-8.0, min(8.0, v))

    clipped = [(clip(x), clip(y), clip(z)) for x, y, z in harder]
    assert clipped != harder
    a, b = FallDetector(RATE), FallDetector(RATE)
    assert [a.feed(*s) for s in harder] == [b.feed(*s) for s in clipped]
    assert (a._we, a._wj, a._wx, a._wy, a._wz) == (b._we, b._wj, b._wx, b._wy, b._wz)
    counts = [(5000, -5000, 0)] * 4  # 19.5 g at 200 Hz: the pendant's accelerometer reads 8 g
    assert list(fall_eval.resample(counts, 50)) == [8.0, -8.0, 0.0]


def test_memory_stays_constant_over_100k_samples() -> None:
    signal, _ = fall_signal()
    jog = [(0.3 * math.sin(i / 6), -1.0 - 1.4 * math.sin(i / 3), 0.2) for i in range(2000)]
    stream = signal + jog  # a fall, then jogging: every state, over and over
    detector = FallDetector(RATE)
    feed = detector.feed
    alarms = 0

    def feed_for(samples: int) -> int:
        """Bytes allocated from fall.py and still alive, after `samples` more samples."""
        nonlocal alarms
        for i in range(samples):
            x, y, z = stream[i % len(stream)]
            alarms += feed(x, y, z)
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*fall.py")])
        return sum(stat.size for stat in snapshot.statistics("filename"))

    tracemalloc.start()
    try:
        warm = feed_for(len(stream))
        middle = feed_for(50_000)
        end = feed_for(50_000)
    finally:
        tracemalloc.stop()
    # the same number of small ints alive throughout; only their sizes may differ a little
    assert abs(middle - warm) < 2048 and abs(end - middle) < 2048, (warm, middle, end)
    assert alarms >= 100_000 // len(stream)  # the falls in the stream kept being detected
    assert all(len(ring) == detector._n for ring in (detector._rx, detector._ry, detector._rz, detector._rj))


# --- reading recordings, anju fall-eval ------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="anju fall-eval")
    fall_eval.add_arguments(parser)
    return parser.parse_args(argv)


def test_sisfall_text_and_csv_gz_read_the_same(tmp_path: Path) -> None:
    rows = [(17, -179, -99), (20, -260, -12), (-3, -258, 4), (1, -256, 0)]
    text = tmp_path / "D01_SA01_R01.txt"
    text.write_text("".join(f"  {x}, {y}, {z}, -18, -504, -352, 76, -697, -279;\n" for x, y, z in rows) + "\n")
    packed = tmp_path / "D01_SA01_R01.csv.gz"
    packed.write_bytes(gzip.compress("".join(f"{x},{y},{z}\n" for x, y, z in rows).encode()))
    assert fall_eval.read_counts(text) == fall_eval.read_counts(packed) == rows
    assert list(fall_eval.load(text)) == [35 / 1024, -953 / 1024, -107 / 1024]


def test_bad_files_are_named_with_their_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    short = tmp_path / "F01_SA01_R01.txt"
    short.write_text("1,2,3;\n4,5;\n")
    words = tmp_path / "F02_SA01_R01.csv"
    words.write_text("1,2,3\n4,x,6\n")
    empty = tmp_path / "D01_SA01_R01.csv"
    empty.write_text("\n")
    binary = tmp_path / "D02_SA01_R01.csv.gz"
    binary.write_bytes(b"\x1f\x8b\x08broken")
    missing = tmp_path / "D03_SA01_R01.csv"
    with pytest.raises(RecordingError, match=r"F01_SA01_R01\.txt:2: expected at least 3"):
        fall_eval.read_counts(short)
    assert fall_eval.main(parse([str(p) for p in (short, words, empty, binary, missing)] + ["--json"])) == 2
    out, err = capsys.readouterr()
    assert f"{words}:2: the first three columns must be integer counts" in err
    assert f"{empty}: no samples" in err
    assert f"{binary}: cannot read" in err
    assert f"{missing}: cannot read" in err
    assert "Traceback" not in err
    assert json.loads(out.splitlines()[-1])["falls"] == 0  # the summary still comes


def test_rate_out_of_range_is_bad_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert fall_eval.main(parse(["x.csv", "--rate", "400"])) == 2
    assert "--rate must be above 0 and at most 200" in capsys.readouterr().err


@needs_data
def test_fall_eval_json_lines_on_recordings(capsys: pytest.CaptureFixture[str]) -> None:
    files = [DATA / "SA01" / "F01_SA01_R01.csv.gz", DATA / "SA02" / "D07_SA02_R01.csv.gz"]
    assert fall_eval.main(parse([*map(str, files), "--json"])) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    fall, sitting, summary = lines
    assert set(fall) == {"file", "alarm", "first_alarm_s"} and fall["file"] == str(files[0])
    assert fall["alarm"] is True and 0 < fall["first_alarm_s"] <= 15
    assert sitting == {"file": str(files[1]), "alarm": False, "first_alarm_s": None}
    assert summary["sensitivity"] == 1.0 and summary["specificity"] == 1.0
    assert summary["falls"] == 1 and summary["activities"] == 1 and summary["false_alarms_by_activity"] == {}
    assert fall_eval.evaluate(files) == lines[:2]

    assert fall_eval.main(parse([*map(str, files)])) == 0  # the same, for a person
    text = capsys.readouterr().out
    assert "sensitivity 100.0 %" in text and "specificity 100.0 %" in text


# --- MicroPython ---------------------------------------------------------------------------------


@needs_micropython
def test_micropython_decides_like_cpython_on_synthetic_signals() -> None:
    signals = [fall_signal()[0], fall_signal(lying_s=0.3)[0], hold(UPRIGHT, 20, noise(3))]
    recordings = [flat(s) for s in signals]
    expected = [fall_eval.first_alarm(r, RATE) for r in recordings]
    assert expected[0] is not None and expected[1] is None and expected[2] is None
    assert fall_eval.micropython_first_alarms(recordings, RATE) == expected


@needs_micropython
@needs_data
def test_micropython_decides_like_cpython_on_recordings() -> None:
    names = [
        "SA01/F01_SA01_R01",
        "SA03/F13_SA03_R02",
        "SA05/F11_SA05_R04",
        "SA07/D13_SA07_R01",
        "SA09/D14_SA09_R03",
        "SA11/D03_SA11_R01",  # 100 s of jogging
        "SA14/D19_SA14_R05",
    ]
    recordings = [fall_eval.load(DATA / f"{name}.csv.gz") for name in names]
    expected = [fall_eval.first_alarm(r, RATE) for r in recordings]
    assert any(e is not None for e in expected) and any(e is None for e in expected)
    assert fall_eval.micropython_first_alarms(recordings, RATE) == expected
