"""The benchmark suite (`make bench`): runs every bench/ script with --record, then writes the
summary table at the top of docs/BENCHMARKS.md, one row per measure with a target or a headline
figure: path, measure, figure, target, meets?

Each script still writes its own section of docs/BENCHMARKS.md (bench/common.record, with the
exact command and machine); this runner points ANJU_BENCH_RESULTS at a temporary directory, where
`record` also leaves each section as JSON, and builds the summary from those: from the rows a
script gives (`record(..., summary=[summary_row(...)])`) or else from every table row of its
section whose last cell says "meets" or "MISSES" (and sentences "...: X (target T: meets)"). A
script that fails, or records nothing, gets a FAILED row; the suite goes on and exits 1 at the end.

bench/fleet.py joins the suite as soon as it exists (it calls `record("Fleet (bench/fleet.py)", ...)`
like the others; no change here is needed). The default settings are each script's documented
ones, except disk_writes' 60 s windows (the scripts' single run times add up to roughly 12 minutes
on the 2-core development machine); `--quick` runs each with a smaller load, to try the suite out:
the figures are then noisier, and each section's command says which load it ran. `--only` runs
some scripts and keeps the other rows of the summary as they were; `--summary-only` runs nothing
and rebuilds the summary from the sections in the document.

    python bench/run_all.py [--quick] [--only startup idle_cpu ...] [--list] [--summary-only]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCHMARKS, RESULTS_ENV, machine

BENCH = Path(__file__).resolve().parent
SUMMARY = "Summary (make bench)"
NOT_YET = "not written yet"
# (script, arguments for the suite, arguments with --quick). Order: the alarm paths first.
SCRIPTS: list[tuple[str, list[str], list[str]]] = [
    ("alarm_latency", [], ["--alarms", "40"]),
    ("ble_latency", [], ["--alarms", "20"]),
    ("zigbee_latency", [], ["--alarms", "40", "--startups", "2"]),
    ("ble_ingest", [], ["--seconds", "3"]),
    ("rules", [], ["--events", "5000"]),
    ("outbox_drain", [], ["--events", "10000", "--alarms", "3"]),
    ("startup", [], ["--starts", "2", "--settle", "2"]),
    ("idle_cpu", [], ["--seconds", "20", "--settle", "5"]),
    ("disk_writes", ["--seconds", "60"], ["--seconds", "20", "--alarms", "2", "--infos", "4"]),
    ("provision_import", [], ["--households", "100"]),
    ("fall_eval", [], []),
    ("fleet", [], []),  # the lead's; run when bench/fleet.py exists
]
# Rows with no target that the summary shows all the same (a measure named in the issue), by script.
ALSO = {
    "zigbee_latency": ("centre's ack",),
    "rules": ("events through the rules",),
    "startup": ("exec ->",),
    "idle_cpu": ("wakeups",),
}


def parse_rows(body: str, also: tuple[str, ...] = ()) -> list[dict[str, object]]:
    """Summary rows from a section's markdown: table rows whose last cell is a verdict (or whose
    first cell contains one of `also`), and sentences of the form `Name: figure (target T: meets)`."""
    rows: list[dict[str, object]] = []
    header: list[str] | None = None
    for line in body.splitlines():
        if not line.startswith("|"):
            header = None
            for name, figure, target, verdict in re.findall(
                r"([A-Z][^.:|]*?): ([^(|:]+?) \(target ([^:]+): (meets|MISSES)\)", line
            ):
                rows.append({"measure": name, "figure": figure, "target": target, "meets": verdict == "meets"})
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if all(set(cell) <= set("-: ") for cell in cells):
            continue
        verdict = re.search(r"\b(meets|MISSES)\b", cells[-1])
        if verdict is None and not any(text in cells[0] for text in also):
            continue
        middle = list(zip(header[1:-1], cells[1:-1], strict=False))
        figure = (
            middle[0][1]
            if len(middle) == 1
            else ", ".join(f"{name} {cell}" for name, cell in middle if cell and name not in ("n",))
        )
        rows.append(
            {
                "measure": cells[0],
                "figure": figure,
                "target": re.sub(r":\s*(meets|MISSES)\s*$", "", cells[-1]).strip(),
                "meets": None if verdict is None else verdict.group(1) == "meets",
            }
        )
    return rows


def summary_table(
    outcomes: list[tuple[str, dict[str, object] | None, str]], header: str, keep_previous: bool = True
) -> str:
    """The summary section's text. A script that did not run this time keeps its rows from the
    summary now in the document (unless not `keep_previous`), or else gets rows read from its own
    section there."""
    ran = {script for script, _, _ in outcomes}
    kept: list[tuple[str, str]] = []
    for line in previous_rows() if keep_previous else []:
        found = re.search(r"`bench/(\w+)\.py`", line)
        if found and found.group(1) not in ran:
            kept.append((found.group(1), line))
    earlier = {script for script, _ in kept}
    from_doc = [
        (script, section, "")
        for script, _, _ in SCRIPTS
        if script not in ran and script not in earlier
        for section in [recorded_section(script)]
        if section is not None
    ]
    order = [name for name, _, _ in SCRIPTS]
    rows = kept + new_rows(outcomes) + new_rows(from_doc)
    rows.sort(key=lambda item: order.index(item[0]) if item[0] in order else len(order))
    table = ["| path | measure | figure | target | meets? |", "|---|---|---|---|---|"] + [line for _, line in rows]
    return "\n".join([header, "", *table])


def previous_rows() -> list[str]:
    """The table rows of the summary section now in docs/BENCHMARKS.md."""
    match = re.search(rf"^## {re.escape(SUMMARY)}\n(.*?)(?=^## |\Z)", BENCHMARKS.read_text(), re.M | re.S)
    if match is None:
        return []
    return [line for line in match.group(1).splitlines() if line.startswith("| ") and "`bench/" in line]


def recorded_section(script: str) -> dict[str, object] | None:
    """A script's own section as docs/BENCHMARKS.md holds it now, shaped like its JSON result."""
    text = BENCHMARKS.read_text()
    match = re.search(rf"^## ([^\n]*\(bench/{script}\.py\))\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    return None if match is None else {"section": match.group(1), "body": match.group(2), "summary": None}


def new_rows(outcomes: Sequence[tuple[str, dict[str, object] | None, str]]) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    for script, result, problem in outcomes:
        path = f"`bench/{script}.py`"
        if result is None:
            failed = "" if problem == NOT_YET else "**FAILED**"
            lines.append((script, f"| {path} | | {problem} | | {failed} |"))
            continue
        section = str(result["section"]).split(" (bench/")[0]
        given = result.get("summary")
        rows = given if isinstance(given, list) else parse_rows(str(result["body"]), ALSO.get(script, ()))
        if not rows:
            lines.append((script, f"| {section} ({path}) | | no target in this section; see below | | |"))
        for row in rows:
            meets = row.get("meets")
            verdict = "" if meets is None else ("yes" if meets else "**NO**")
            cells = f"| {row['measure']} | {row['figure']} | {row.get('target') or ''} | {verdict} |"
            lines.append((script, f"| {section} ({path}) {cells}"))
    return lines


def write_summary(table: str) -> None:
    """Put the summary section right after the document's introduction (before the first section)."""
    text = BENCHMARKS.read_text()
    block = f"## {SUMMARY}\n\n{table.strip()}\n\n"
    pattern = re.compile(rf"^## {re.escape(SUMMARY)}\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        first = re.search(r"^## ", text, re.M)
        text = text[: first.start()] + block + text[first.start() :] if first else text.rstrip() + "\n\n" + block
    BENCHMARKS.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller load for each script (a try-out)")
    parser.add_argument("--only", nargs="+", metavar="SCRIPT", help="run only these (names without .py)")
    parser.add_argument("--list", action="store_true", help="print the scripts and their arguments, run nothing")
    parser.add_argument(
        "--summary-only",
        action="store_true",
        help="run nothing: rebuild the summary from the scripts' sections now in docs/BENCHMARKS.md",
    )
    args = parser.parse_args()
    chosen = [s for s in SCRIPTS if args.only is None or s[0] in args.only]
    if args.only and len(chosen) != len(set(args.only)):
        parser.error(f"unknown script in --only; known: {', '.join(s[0] for s in SCRIPTS)}")
    if args.list:
        for script, full, quick in chosen:
            print(f"bench/{script}.py --record {' '.join(quick if args.quick else full)}".rstrip())
        return 0
    if args.summary_only:
        header = (
            f"_Rebuilt from the sections below ({datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}); each"
            " section says when and where its figures were measured._"
        )
        write_summary(summary_table([], header, keep_previous=False))
        print(f"summary rebuilt at the top of {BENCHMARKS}")
        return 0
    started = time.monotonic()
    outcomes: list[tuple[str, dict[str, object] | None, str]] = []
    with tempfile.TemporaryDirectory(prefix="anju-bench-results-") as results:
        env = {**os.environ, RESULTS_ENV: results}
        for script, full, quick in chosen:
            path = BENCH / f"{script}.py"
            if not path.exists():
                print(f"\n=== bench/{script}.py: not written yet, skipped", flush=True)
                outcomes.append((script, None, NOT_YET))
                continue
            argv = [sys.executable, str(path), "--record", *(quick if args.quick else full)]
            print(f"\n=== {' '.join(['bench/' + script + '.py', *argv[3:]])}", flush=True)
            before = set(os.listdir(results))
            t0 = time.monotonic()
            status = subprocess.run(argv, env=env, cwd=BENCH.parent).returncode
            new = sorted(set(os.listdir(results)) - before)
            print(f"=== bench/{script}.py: exit {status} after {time.monotonic() - t0:.0f} s", flush=True)
            if not new:
                outcomes.append((script, None, f"exit {status}, nothing recorded"))
                continue
            for name in new:
                outcomes.append((script, json.loads((Path(results) / name).read_text()), ""))
            if status != 0:
                outcomes.append((script, None, f"exit {status} (figures above recorded anyway)"))
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "`python bench/run_all.py --quick` (smaller loads: a try-out)" if args.quick else "`make bench`"
    header = (
        f"_{mode}, {stamp}, {time.monotonic() - started:.0f} s on {machine()}._ Each figure is the headline of"
        " its script's section below, which gives the command and the details."
    )
    if args.only:
        header += f" Only {', '.join(args.only)} ran this time; re-run `make bench` for the whole table."
    table = summary_table(outcomes, header)
    write_summary(table)
    print(f"\n{table}\n\nsummary written at the top of {BENCHMARKS}")
    failed = [script for script, result, problem in outcomes if result is None and problem != NOT_YET]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
