"""`anju fall-eval`: the pendant's fall detector run over recorded accelerometer files.

Each recording is read as the SisFall dataset keeps it (ADXL345 counts at 200 Hz, +-16 g, 13 bit:
g = counts * 32 / 8192), either SisFall's own text (nine comma-separated columns per line ending
in `;`, the first three being the ADXL345) or the `.csv.gz` of shared/data (three columns). The
samples are clipped to the pendant accelerometer's +-8 g, averaged down to the pendant's rate
(a boxcar over each output period: a simple anti-aliasing filter and decimation in one) and fed,
one recording at a time, to a fresh `firmware.lib.fall.FallDetector`, the pendant's own code.

A recording is labelled by its file name as SisFall names them: `F01`..`F15` falls, `D01`..`D19`
activities of daily living; it scores per recording: a fall counts as detected when the detector
fires at least once, an activity as a false alarm when it fires at all.

    anju fall-eval FILE... [--rate HZ] [--json]

With --json it prints one JSON object per file, `{"file": ..., "alarm": bool, "first_alarm_s":
float|null}`, then one summary object (sensitivity, specificity, false alarms per activity code).
Exit status: 0 done, 2 a file could not be read (each such file is named on stderr, with its line).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from array import array
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from firmware.lib.fall import FallDetector

SOURCE_HZ = 200  # SisFall's sampling rate
COUNTS_PER_G = 256  # ADXL345 at +-16 g, 13 bit: 8192 counts over 32 g
RANGE_G = 8  # the pendant's accelerometer clips here
DEFAULT_RATE = 50.0
_LABEL = re.compile(r"^([FD])(\d\d)")


class RecordingError(Exception):
    """A file that cannot be read as a recording; str() is `file:line: what is wrong`."""

    def __init__(self, path: Path | str, message: str, line: int | None = None) -> None:
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


def read_counts(path: Path | str) -> list[tuple[int, int, int]]:
    """The ADXL345 columns of a recording: (x, y, z) counts per 200 Hz sample."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig")
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise RecordingError(path, f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    except UnicodeDecodeError:
        raise RecordingError(path, "not a text recording (expected comma-separated ADXL345 counts)") from None
    samples: list[tuple[int, int, int]] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip().rstrip(";").strip()
        if not line:
            continue
        columns = line.split(",")
        if len(columns) < 3:
            raise RecordingError(path, f"expected at least 3 comma-separated columns, found {len(columns)}", number)
        try:
            samples.append((int(columns[0]), int(columns[1]), int(columns[2])))
        except ValueError:
            shown = ",".join(c.strip() for c in columns[:3])
            raise RecordingError(
                path, f"the first three columns must be integer counts, not {shown!r}", number
            ) from None
    if not samples:
        raise RecordingError(path, "no samples")
    return samples


def resample(counts: Sequence[tuple[int, int, int]], rate: float = DEFAULT_RATE) -> array[float]:
    """200 Hz counts -> `rate` Hz in g, flat [x0, y0, z0, x1, ...]: each source sample clipped to
    +-8 g, then every output period the mean of the source samples in it (a boxcar anti-alias)."""
    if not 0 < rate <= SOURCE_HZ:
        raise ValueError(f"the rate must be above 0 and at most {SOURCE_HZ} Hz, not {rate:g}")
    limit = RANGE_G * COUNTS_PER_G
    ratio = SOURCE_HZ / rate
    out = array("d")
    total = int(len(counts) / ratio + 1e-9)
    start = 0
    for j in range(total):
        end = int((j + 1) * ratio + 1e-9)
        sx = sy = sz = 0
        for x, y, z in counts[start:end]:
            sx += -limit if x < -limit else limit if x > limit else x
            sy += -limit if y < -limit else limit if y > limit else y
            sz += -limit if z < -limit else limit if z > limit else z
        scale = (end - start) * COUNTS_PER_G
        out.extend((sx / scale, sy / scale, sz / scale))
        start = end
    return out


def load(path: Path | str, rate: float = DEFAULT_RATE) -> array[float]:
    """A recording as the pendant would see it: flat g samples at `rate` Hz."""
    return resample(read_counts(path), rate)


def first_alarm(samples: Sequence[float], rate: float = DEFAULT_RATE, **params: Any) -> int | None:
    """Feed flat g samples to a fresh FallDetector; the number of samples fed when it first fired."""
    detector = FallDetector(rate, **params)
    feed = detector.feed
    for i in range(0, len(samples) - 2, 3):
        if feed(samples[i], samples[i + 1], samples[i + 2]):
            return i // 3 + 1
    return None


def label(path: Path | str) -> str | None:
    """The SisFall activity code (`F01`, `D13` ...) of a file name, or None."""
    match = _LABEL.match(Path(path).name)
    return match.group(0) if match else None


def evaluate_file(path: Path | str, rate: float = DEFAULT_RATE) -> dict[str, Any]:
    fired = first_alarm(load(path, rate), rate)
    return {"file": str(path), "alarm": fired is not None, "first_alarm_s": None if fired is None else fired / rate}


def evaluate(files: Iterable[Path | str], rate: float = DEFAULT_RATE) -> list[dict[str, Any]]:
    """One `{"file", "alarm", "first_alarm_s"}` per file; RecordingError for a bad file."""
    return [evaluate_file(path, rate) for path in files]


def summarize(results: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sensitivity over the `F..` files, specificity over the `D..` files, false alarms per code."""
    falls = detected = activities = false_alarms = unlabelled = 0
    by_code: dict[str, int] = {}
    for result in results:
        code = label(result["file"])
        if code is None:
            unlabelled += 1
        elif code[0] == "F":
            falls += 1
            detected += bool(result["alarm"])
        else:
            activities += 1
            if result["alarm"]:
                false_alarms += 1
                by_code[code] = by_code.get(code, 0) + 1
    return {
        "summary": True,
        "falls": falls,
        "falls_detected": detected,
        "sensitivity": round(detected / falls, 4) if falls else None,
        "activities": activities,
        "false_alarms": false_alarms,
        "specificity": round(1 - false_alarms / activities, 4) if activities else None,
        "false_alarms_by_activity": dict(sorted(by_code.items())),
        "unlabelled": unlabelled,
    }


FIRMWARE_LIB = Path(__file__).resolve().parent.parent / "firmware" / "lib"

# Runs in the MicroPython unix port: firmware/lib/fall.py fed the same IEEE doubles as CPython.
_MICROPYTHON_SCRIPT = """
import sys, array, time
sys.path.insert(0, sys.argv[1])
from fall import FallDetector
rate = float(sys.argv[2])
mode = sys.argv[3]
for name in sys.argv[4:]:
    with open(name, "rb") as f:
        s = array.array("d", f.read())
    if mode == "alarms":
        d = FallDetector(rate)
        feed = d.feed
        first = -1
        for i in range(0, len(s) - 2, 3):
            if feed(s[i], s[i + 1], s[i + 2]):
                first = i // 3 + 1
                break
        print(first)
    else:
        d = FallDetector(rate)
        feed = d.feed
        n = len(s) // 3
        t = time.ticks_us()
        for i in range(0, 3 * n, 3):
            feed(s[i], s[i + 1], s[i + 2])
        print(time.ticks_diff(time.ticks_us(), t) / n)
"""


def find_micropython() -> str | None:
    """The MicroPython unix port: next to this Python (the venv's `micropython`), else on PATH."""
    beside = Path(sys.executable).with_name("micropython")
    return str(beside) if beside.exists() else shutil.which("micropython")


def _run_micropython(
    recordings: Sequence[Sequence[float]], rate: float, mode: str, micropython: str | None, timeout: float
) -> list[str]:
    binary = micropython or find_micropython()
    if binary is None:
        raise FileNotFoundError("the MicroPython unix port (micropython) is not installed")
    with tempfile.TemporaryDirectory(prefix="anju-fall-") as tmp:
        script = os.path.join(tmp, "run.py")
        Path(script).write_text(_MICROPYTHON_SCRIPT)
        names = []
        for i, samples in enumerate(recordings):
            name = os.path.join(tmp, f"{i}.f64")
            Path(name).write_bytes(array("d", samples).tobytes())
            names.append(name)
        done = subprocess.run(
            [binary, "-X", "heapsize=64M", script, str(FIRMWARE_LIB), repr(float(rate)), mode, *names],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    lines = done.stdout.split()
    if done.returncode != 0 or len(lines) != len(recordings):
        raise RuntimeError(
            f"micropython failed (status {done.returncode}): {(done.stderr or done.stdout).strip()[-2000:]}"
        )
    return lines


def micropython_first_alarms(
    recordings: Sequence[Sequence[float]],
    rate: float = DEFAULT_RATE,
    micropython: str | None = None,
    timeout: float = 600,
) -> list[int | None]:
    """`first_alarm` of each recording (flat g samples), computed by the real MicroPython unix port
    running firmware/lib/fall.py with its default parameters."""
    lines = _run_micropython(recordings, rate, "alarms", micropython, timeout)
    return [None if int(line) < 0 else int(line) for line in lines]


def micropython_us_per_sample(
    samples: Sequence[float], rate: float = DEFAULT_RATE, micropython: str | None = None, timeout: float = 600
) -> float:
    """Microseconds per feed() under the MicroPython unix port (time.ticks_us around the loop:
    the loop, the indexing and the call included), over one fresh detector fed `samples`."""
    return float(_run_micropython([samples], rate, "time", micropython, timeout)[0])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `anju fall-eval` on `parser` (the CLI's sub-command parser)."""
    parser.description = (
        "Run the pendant's fall detector (firmware/lib/fall.py) over recordings: SisFall text files or\n"
        "the .csv.gz of shared/data (ADXL345 counts at 200 Hz), clipped to +-8 g and resampled to the\n"
        "pendant's rate, each through a fresh detector. Files named F.. are falls, D.. activities."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="recordings (.txt, .csv or .csv.gz)")
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        metavar="HZ",
        help="the pendant's sampling rate, at most 200 (default: %(default)g)",
    )
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per file, then a summary object (JSON lines)"
    )


def main(args: argparse.Namespace) -> int:
    """Run `anju fall-eval`: 0 done, 2 bad usage or a file that could not be read."""
    rate = float(args.rate)
    if not 0 < rate <= SOURCE_HZ:
        print(f"anju fall-eval: --rate must be above 0 and at most {SOURCE_HZ} Hz, not {rate:g}", file=sys.stderr)
        return 2
    results = []
    status = 0
    for path in args.files:
        try:
            result = evaluate_file(path, rate)
        except RecordingError as exc:
            print(f"anju fall-eval: {exc}", file=sys.stderr)
            status = 2
            continue
        results.append(result)
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            when = "-" if result["first_alarm_s"] is None else f"{result['first_alarm_s']:.2f} s"
            print(f"{'FALL ' if result['alarm'] else 'quiet'}  {when:>9}  {result['file']}", flush=True)
    summary = summarize(results)
    if args.json:
        print(json.dumps(summary))
    else:
        print(_summary_text(summary))
    return status


def _summary_text(summary: dict[str, Any]) -> str:
    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f} %"

    lines = [
        f"falls detected: {summary['falls_detected']} of {summary['falls']} "
        f"(sensitivity {share(summary['sensitivity'])})",
        f"activities with a false alarm: {summary['false_alarms']} of {summary['activities']} "
        f"(specificity {share(summary['specificity'])})",
    ]
    if summary["false_alarms_by_activity"]:
        lines.append(
            "false alarms per activity: "
            + ", ".join(f"{code} {n}" for code, n in summary["false_alarms_by_activity"].items())
        )
    if summary["unlabelled"]:
        lines.append(f"files not named F.. or D..: {summary['unlabelled']} (not scored)")
    return "\n".join(lines)


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="anju fall-eval")
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
