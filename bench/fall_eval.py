"""Fall detector: tuned and cross-validated on SisFall's training subjects, timed under MicroPython.

Reads the 2,310 recordings of SisFall subjects SA01-SA15 (../shared/data/sisfall-train/; never
any other subject) as the pendant would see them (hub.fall_eval: clipped to +-8 g, averaged down
to 50 Hz), and scores per recording: a fall is detected when the detector fires at all, an
activity is a false alarm when it fires at all.

Tuning is a coarse grid, then a coordinate search from its best point (COARSE, SPACE; Tuner).
Each recording is cut once into the 0.1 s blocks that FallDetector.feed hands to
FallDetector._block, and every parameter set replays those blocks through a fresh detector's own
_block: the firmware's code, not a model of it. A parameter set is scored by min(sensitivity,
specificity), then their sum.

Cross-validation is subject-wise: for each held-out subject (leave-one-subject-out, and also 5
folds of 3 subjects) the parameters are chosen on the other subjects only and scored on the
held-out one; the held-out results are pooled. The parameters chosen on all 15 subjects are the
ones that ship in firmware/lib/fall.py: the script says so when the file's defaults differ.
The shipped defaults are then run through the whole path (FallDetector.feed on every sample)
to confirm the replay, through the real MicroPython unix port on a sample of recordings
(identical first-alarm sample required), and timed there (time.ticks_us).

    python bench/fall_eval.py [--data DIR] [--workers 2] [--record]
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, percentile, record

from firmware.lib import fall
from firmware.lib.fall import FallDetector
from hub.fall_eval import DEFAULT_RATE, find_micropython, first_alarm, load, micropython_first_alarms
from hub.fall_eval import micropython_us_per_sample as mp_us

DATA = Path(
    os.environ.get("ANJU_SISFALL", Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "sisfall-train")
)
RATE = DEFAULT_RATE
TARGETS = {"sensitivity": 0.97, "specificity": 0.97, "us_per_sample": 20.0}
PAPER = "SisFall paper's best threshold (C8): sensitivity 95.5 %, specificity 96.4 %"

# The search space: each parameter's candidate values, and where the coordinate search starts.
SPACE: dict[str, list[float]] = {
    "impact_g2": [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.4],
    "impact_s": [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0],
    "angle_deg": [30, 35, 40, 45, 50, 55, 60],
    "still_g": [0.03, 0.04, 0.05, 0.06, 0.07, 0.08],  # still: below walking slowly (~0.17 g typical)
    "still_s": [0.4, 0.6, 1.0, 1.5, 2.0],
    "settle_s": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    "pre_s": [0.3, 0.5, 1.0, 1.5, 2.0],
    "pre_len_s": [0.3, 0.5, 1.0, 1.5],
    "confirm_s": [0.0, 0.5, 1.0, 2.0, 3.0],
}
# The coarse grid the search starts from (its best point on the training subjects); parameters
# not in it start at START.
COARSE: dict[str, list[float]] = {
    "impact_g2": [0.6, 0.8, 1.0, 1.2],
    "impact_s": [0.3, 0.5, 0.7],
    "angle_deg": [35, 45, 55],
    "still_g": [0.04, 0.06, 0.08],
    "confirm_s": [0.0, 1.0],
}
START = {"still_s": 1.0, "settle_s": 3.0, "pre_s": 1.0, "pre_len_s": 1.0}

ACTIVITIES = {
    "D01": "walking slowly",
    "D02": "walking quickly",
    "D03": "jogging slowly",
    "D04": "jogging quickly",
    "D05": "stairs up and down, slowly",
    "D06": "stairs up and down, quickly",
    "D07": "sit slowly in a half-height chair, get up slowly",
    "D08": "sit quickly in a half-height chair, get up quickly",
    "D09": "sit slowly in a low chair, get up slowly",
    "D10": "sit quickly in a low chair, get up quickly",
    "D11": "sitting, try to get up, collapse into the chair",
    "D12": "sitting, lie down slowly, sit up again",
    "D13": "sitting, lie down quickly, sit up again",
    "D14": "lying on the back, turn to the side and back",
    "D15": "standing, bend at the knees, get up",
    "D16": "standing, bend without bending the knees, get up",
    "D17": "standing, get into a car, sit, get out",
    "D18": "stumble while walking",
    "D19": "gentle jump (reaching for something high)",
    "F01": "forward, slip while walking",
    "F02": "backward, slip while walking",
    "F03": "lateral, slip while walking",
    "F04": "forward, trip while walking",
    "F05": "forward, trip while jogging",
    "F06": "vertical, fainting while walking",
    "F07": "fainting while walking, hands on a table",
    "F08": "forward, trying to get up",
    "F09": "lateral, trying to get up",
    "F10": "forward, trying to sit down",
    "F11": "backward, trying to sit down",
    "F12": "lateral, trying to sit down",
    "F13": "forward while sitting (fainting, falling asleep)",
    "F14": "backward while sitting (fainting, falling asleep)",
    "F15": "lateral while sitting (fainting, falling asleep)",
}


class _Blocks(FallDetector):
    """Collects the sums feed() hands to _block instead of deciding anything."""

    def __init__(self, rate_hz: float) -> None:
        self.blocks: list[tuple[int, int, int, int, int]] = []
        super().__init__(rate_hz)

    def _block(self, sx: int, sy: int, sz: int, sj: int, se: int) -> bool:
        self.blocks.append((sx, sy, sz, sj, se))
        return False


def _load(path: Path) -> tuple[Any, list[tuple[int, int, int, int, int]]]:
    samples = load(path, RATE)
    collector = _Blocks(RATE)
    feed = collector.feed
    for i in range(0, len(samples) - 2, 3):
        feed(samples[i], samples[i + 1], samples[i + 2])
    return samples, collector.blocks


# Filled in the parent before the pool forks; the workers read them.
_BLOCKS: list[list[tuple[int, int, int, int, int]]] = []
_SAMPLES: list[Any] = []


def _replay(params: dict[str, float]) -> bytes:
    """1 per recording where the detector with `params` fires, else 0."""
    fired = bytearray(len(_BLOCKS))
    for index, blocks in enumerate(_BLOCKS):
        step = FallDetector(RATE, **params)._block
        for block in blocks:
            if step(*block):
                fired[index] = 1
                break
    return bytes(fired)


def _after_impact(samples: Any, fired: int) -> float:
    """Seconds from the strongest reading in the 5 s before an alarm (the impact) to the alarm."""
    start = max(0, fired - int(5 * RATE))
    peak = max(
        range(start, fired), key=lambda i: samples[3 * i] ** 2 + samples[3 * i + 1] ** 2 + samples[3 * i + 2] ** 2
    )
    return (fired - peak) / RATE


def _full(index: int) -> int | None:
    return first_alarm(_SAMPLES[index], RATE)


class Tuner:
    """Coordinate search over SPACE, scored on a set of training subjects.

    From the best point of the coarse grid (COARSE, the rest at START), each parameter in turn is
    set to each of its candidate values in SPACE with the others held; a change is kept only when
    it scores strictly better (min(sensitivity, specificity), then their sum); rounds repeat until
    one changes nothing. Ties go to the earlier point. Every parameter set is replayed once (cached
    across folds) over all recordings, in a process pool."""

    def __init__(self, subjects: list[str], codes: list[str], pool: Any) -> None:
        self.subjects = subjects
        self.codes = codes
        self.pool = pool
        self.names = sorted(set(subjects))
        self.cache: dict[tuple[float, ...], tuple[bytes, list[int], list[int]]] = {}
        column = {s: i for i, s in enumerate(self.names)}
        self.column = [column[s] for s in subjects]
        self.is_fall = [c[0] == "F" for c in codes]
        self.n_falls = [0] * len(self.names)
        self.n_acts = [0] * len(self.names)
        for col, fall_ in zip(self.column, self.is_fall, strict=True):
            (self.n_falls if fall_ else self.n_acts)[col] += 1

    @staticmethod
    def key(params: dict[str, float]) -> tuple[float, ...]:
        return tuple(float(params[name]) for name in SPACE)

    def fired(self, params: dict[str, float]) -> bytes:
        return self.cache[self.key(params)][0]

    def evaluate(self, candidates: list[dict[str, float]]) -> None:
        missing = {self.key(c): c for c in candidates if self.key(c) not in self.cache}
        for key, fired in zip(missing, self.pool.map(_replay, list(missing.values()), chunksize=1), strict=True):
            hits = [0] * len(self.names)
            alarms = [0] * len(self.names)
            for col, fall_, f in zip(self.column, self.is_fall, fired, strict=True):
                if f:
                    (hits if fall_ else alarms)[col] += 1
            self.cache[key] = (fired, hits, alarms)

    def score(self, params: dict[str, float], train: set[str]) -> tuple[float, float]:
        _, hits, alarms = self.cache[self.key(params)]
        cols = [i for i, s in enumerate(self.names) if s in train]
        se = sum(hits[i] for i in cols) / sum(self.n_falls[i] for i in cols)
        sp = 1 - sum(alarms[i] for i in cols) / sum(self.n_acts[i] for i in cols)
        return (min(se, sp), se + sp)

    def search(self, train: set[str]) -> dict[str, float]:
        coarse = [START | dict(zip(COARSE, values, strict=True)) for values in itertools.product(*COARSE.values())]
        self.evaluate(coarse)
        current = coarse[0]
        best = self.score(current, train)
        for candidate in coarse[1:]:
            score = self.score(candidate, train)
            if score > best:
                best, current = score, candidate
        changed = True
        while changed:
            changed = False
            for name, values in SPACE.items():
                candidates = [current | {name: v} for v in values]
                self.evaluate(candidates)
                for candidate in candidates:
                    score = self.score(candidate, train)
                    if score > best:
                        best, current, changed = score, candidate, True
        return {name: current[name] for name in SPACE}

    def cross_validate(self, folds: list[list[str]]) -> tuple[list[int], list[dict[str, float]]]:
        """Pooled held-out outcome per recording, and the parameters chosen per fold."""
        pooled = [0] * len(self.codes)
        chosen = []
        for held in folds:
            params = self.search(set(self.names) - set(held))
            chosen.append(params)
            fired = self.fired(params)
            for i, s in enumerate(self.subjects):
                if s in held:
                    pooled[i] = fired[i]
        return pooled, chosen


def rates(codes: list[str], fired: list[int] | bytes) -> dict[str, Any]:
    falls = [f for c, f in zip(codes, fired, strict=True) if c[0] == "F"]
    acts = [f for c, f in zip(codes, fired, strict=True) if c[0] == "D"]
    per_code: dict[str, int] = {}
    for c, f in zip(codes, fired, strict=True):
        per_code[c] = per_code.get(c, 0) + (f if c[0] == "D" else 1 - f)
    return {
        "sensitivity": sum(falls) / len(falls),
        "specificity": 1 - sum(acts) / len(acts),
        "detected": sum(falls),
        "falls": len(falls),
        "false_alarms": sum(acts),
        "activities": len(acts),
        "per_code": per_code,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="SisFall SA01-SA15 (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="processes (default: %(default)s)")
    parser.add_argument("--record", action="store_true", help="write the results into docs/BENCHMARKS.md")
    args = parser.parse_args()

    paths = sorted(p for p in args.data.glob("SA*/*") if p.name[:1] in "FD" and p.is_file())
    if not paths:
        print(f"no SisFall recordings under {args.data} (see its README.md)", file=sys.stderr)
        return 2
    subjects = [p.parent.name for p in paths]  # the folder is the subject
    if any(not ("SA01" <= s <= "SA15") for s in subjects):
        print("only the training subjects SA01-SA15 may be used for tuning", file=sys.stderr)
        return 2
    codes = [p.name[:3] for p in paths]
    ctx = multiprocessing.get_context("fork")

    started = time.perf_counter()
    with ctx.Pool(args.workers) as pool:
        loaded = pool.map(_load, paths, chunksize=16)
    _SAMPLES[:] = [s for s, _ in loaded]
    _BLOCKS[:] = [b for _, b in loaded]
    del loaded
    samples_total = sum(len(s) // 3 for s in _SAMPLES)
    took = time.perf_counter() - started
    print(f"{len(paths)} recordings, {samples_total:,} samples at {RATE:g} Hz, read in {took:.1f} s")

    started = time.perf_counter()
    with ctx.Pool(args.workers) as pool:
        tuner = Tuner(subjects, codes, pool)
        loso_folds = [[s] for s in tuner.names]
        five_folds = [tuner.names[i : i + 3] for i in range(0, len(tuner.names), 3)]
        loso, loso_chosen = tuner.cross_validate(loso_folds)
        five, _ = tuner.cross_validate(five_folds)
        final = tuner.search(set(tuner.names))
        shipped = {name: getattr(fall, name.upper()) for name in SPACE}
        tuner.evaluate([shipped])
    search_s = time.perf_counter() - started
    print(f"{len(tuner.cache)} parameter sets replayed in {search_s:.0f} s")
    cv = rates(codes, loso)
    cv5 = rates(codes, five)
    ships = tuner.key(shipped) == tuner.key(final)

    # The shipped defaults through the whole path: every sample through FallDetector.feed.
    started = time.perf_counter()
    with ctx.Pool(args.workers) as pool:
        firsts = pool.map(_full, range(len(paths)), chunksize=16)
    full = bytes(int(f is not None) for f in firsts)
    full_s = time.perf_counter() - started
    insample = rates(codes, full)
    replay_agrees = tuner.fired(shipped) == full
    latencies = sorted(
        _after_impact(_SAMPLES[i], f) for i, f in enumerate(firsts) if f is not None and codes[i][0] == "F"
    )

    # MicroPython: the same decisions on a sample (the first and the last trial of each code of
    # two subjects), and the time per sample over a long stretch of real recordings.
    micropython = find_micropython()
    mp_line = "MicroPython unix port not found"
    us = None
    if micropython:
        sample = [
            i for i, p in enumerate(paths) if p.parent.name in ("SA01", "SA15") and p.name.endswith("_R01.csv.gz")
        ]
        mp_firsts = micropython_first_alarms([_SAMPLES[i] for i in sample], RATE, micropython)
        same = sum(mp_firsts[k] == firsts[i] for k, i in enumerate(sample))
        mp_line = (
            f"identical first-alarm sample on {same} of {len(sample)} recordings (SA01 and SA15, trial 1 of each code)"
        )
        stretch: list[float] = []
        for i in sorted(sample, key=lambda i: codes[i], reverse=True):
            stretch.extend(_SAMPLES[i])
            if len(stretch) >= 3 * 50_000:
                break
        us = min(mp_us(stretch, RATE, micropython) for _ in range(3))
        mp_samples = len(stretch) // 3
        mp_agrees = same == len(sample)
    else:
        mp_agrees = False

    def pct(x: float) -> str:
        return f"{100 * x:.1f} %"

    def verdict(ok: bool) -> str:
        return "meets" if ok else "MISSES"

    def params_text(p: dict[str, Any]) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in p.items())

    se_ok = cv["sensitivity"] >= TARGETS["sensitivity"]
    sp_ok = cv["specificity"] >= TARGETS["specificity"]
    rows = [
        "| measure | value | target |",
        "|---|---|---|",
        f"| sensitivity, leave-one-subject-out (15 folds), pooled held-out | {pct(cv['sensitivity'])} "
        f"({cv['detected']} of {cv['falls']} falls) | >= 97 %: {verdict(se_ok)} |",
        f"| specificity, leave-one-subject-out (15 folds), pooled held-out | {pct(cv['specificity'])} "
        f"({cv['false_alarms']} false alarms in {cv['activities']} activities) | >= 97 %: {verdict(sp_ok)} |",
        f"| sensitivity / specificity, 5 folds of 3 subjects | {pct(cv5['sensitivity'])} / "
        f"{pct(cv5['specificity'])} | |",
        f"| shipped parameters on all 15 subjects (not held out) | {pct(insample['sensitivity'])} / "
        f"{pct(insample['specificity'])} | |",
        f"| alarm after the impact (the strongest reading in the 5 s before it), p50 / p95 / max | "
        f"{percentile(latencies, 50):.1f} / {percentile(latencies, 95):.1f} / {latencies[-1]:.1f} s | |",
    ]
    if us is not None:
        rows.append(
            f"| MicroPython unix port, per sample (feed loop, {mp_samples:,} real samples, best of 3) | "
            f"{us:.2f} µs | <= 20 µs: {verdict(us <= TARGETS['us_per_sample'])} |"
        )
    rows.append(f"| MicroPython vs CPython decisions | {mp_line} | identical: {verdict(mp_agrees)} |")
    table = "\n".join(rows)

    codes_sorted = sorted(set(codes))
    per = [
        "| code | activity | recordings | false alarms, held out | false alarms, shipped parameters |",
        "|---|---|---|---|---|",
    ]
    per += [
        f"| {c} | {ACTIVITIES.get(c, '')} | {codes.count(c)} | {cv['per_code'][c]} | {insample['per_code'][c]} |"
        for c in codes_sorted
        if c[0] == "D"
    ]
    missed = [
        "| code | fall | recordings | missed, held out | missed, shipped parameters |",
        "|---|---|---|---|---|",
    ]
    missed += [
        f"| {c} | {ACTIVITIES.get(c, '')} | {codes.count(c)} | {cv['per_code'][c]} | {insample['per_code'][c]} |"
        for c in codes_sorted
        if c[0] == "F"
    ]
    fold_choices = {tuner.key(p) for p in loso_chosen}
    notes = [
        f"Parameters chosen on all 15 subjects: {params_text(final)}"
        + (" (the defaults in firmware/lib/fall.py)." if ships else "."),
        f"The 15 leave-one-subject-out folds chose {len(fold_choices)} distinct parameter set(s); "
        f"a coarse grid ({' x '.join(COARSE)}), then a coordinate search over "
        f"{', '.join(f'{k} {v}' for k, v in SPACE.items())}; "
        f"{len(tuner.cache)} parameter sets replayed in {search_s:.0f} s on {args.workers} processes.",
        f"Whole-path check (every sample through FallDetector.feed, {full_s:.0f} s): "
        + ("same decisions as the block replay." if replay_agrees else "DIFFERS from the block replay."),
        "The detector's stages and features were designed looking at these same 15 subjects; only its "
        "parameters are chosen inside the folds, so the held-out figures are optimistic for new people "
        "(the subjects kept aside are the independent test).",
        f"For comparison, the {PAPER}.",
    ]
    if not ships:
        notes.append(
            "WARNING: firmware/lib/fall.py ships "
            + params_text(shipped)
            + "; set its defaults to the chosen parameters and run this again."
        )
    body = (
        f"`python bench/fall_eval.py --workers {args.workers}` on {len(paths)} recordings of SisFall "
        f"SA01-SA15 at {RATE:g} Hz (clipped to +-8 g), scored per recording.\n\n{table}\n\n"
        "False alarms per activity (recordings that alarmed at least once):\n\n"
        + "\n".join(per)
        + "\n\nMissed falls per fall type:\n\n"
        + "\n".join(missed)
        + "\n\n"
        + "\n".join(f"- {n}" for n in notes)
        + "\n"
    )
    print(f"\nMachine: {machine()}\n\n{body}")
    if args.record:
        record("Fall detector (bench/fall_eval.py)", body)
        print("recorded in docs/BENCHMARKS.md")
    ok = se_ok and sp_ok and ships and replay_agrees and mp_agrees and us is not None and us <= 20
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
