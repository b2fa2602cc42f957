"""`anju fleet`: many simulated households against one mosquitto and the reference centre, measured.

It starts a private mosquitto, `--centre-workers` centre processes sharing the load through the
MQTT 5 shared subscription and one store (SQLite, or PostgreSQL with `--db postgresql://…`), and
`--processes` hub processes (simulator/fleet_worker.py) holding `--hubs` hubs between them, each our
real cloud_bridge. Then, on the timeline of `--duration`:

- the hubs come up evenly over `--ramp-s` and send heartbeats every `--heartbeat-s` from then on;
- at 30 % of the duration, `--storm K` alarms within one second, each from a different hub
  (with `--kill-centre-worker`, one centre worker is SIGKILLed in the middle of it);
- at 60 %, with `--reconnect-storm`, a district power cut: every hub's connection reset at once,
  the line dead for 2 s (longer while the hub processes take in thousands of resets), and 100
  alarms raised within a second of its return; "settled" is every hub connected again and every
  alarm acknowledged.

The result: alarm ack latency (raised on the hub → the centre's ack back at the hub) p50/p99/max,
heartbeat latency (sent → committed at the centre), alarms lost (never acknowledged, or not in the
centre's store) and doubled (two records for one alarm), how the centre workers shared the
records, CPU and peak memory of the broker, each centre worker and the hub processes, the
reconnect storm's settling time, and a PNG plot of latency over time. Sizes and timings are
decided here; each piece's behaviour is its own module's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from simulator.broker import PrivateBroker
from simulator.centre_store import CentreStore
from simulator.runner import ChildProcess
from simulator.stats import latency_summary

COUNTY = "fleet"
CUT_DOWN_S = 2.0  # how long the district's line is dead in a reconnect storm
RECONNECT_ALARMS = 100  # raised as the line returns
SETTLE_LIMIT_S = 180.0  # give up waiting for the fleet to settle after this long
STOP_S = 30.0  # a hub process that has not stopped its hubs by then is killed


@dataclass
class FleetOptions:
    hubs: int = 100
    duration_s: float = 60.0
    storm: int = 0
    reconnect_storm: bool = False
    heartbeat_s: float = 60.0
    ramp_s: float | None = None  # default: min(heartbeat_s, 60)
    processes: int = 4
    centre_workers: int = 2
    db: str | None = None  # default: a SQLite file in the work directory
    kill_centre_worker: bool = False
    resend_first_s: float = 3.0
    keepalive_s: int = 30
    plot: Path | None = None
    seed: int = 1


class ProcessMeter:
    """CPU seconds and peak resident memory of a running process, from /proc."""

    def __init__(self, name: str, pid: int) -> None:
        self.name, self.pid = name, pid
        self._last_cpu = 0.0
        self._start_cpu = self.cpu_s()
        self._start = time.monotonic()
        self.end_cpu: float | None = None
        self.end: float | None = None
        self.peak_rss_mb: float | None = None

    def cpu_s(self) -> float:
        """CPU seconds so far; once the process is gone, the last figure read."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return self._last_cpu
        self._last_cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return self._last_cpu

    def finish(self) -> None:
        """Read the figures now (while the process still runs); only the first call counts, so a
        process measured just before it is killed keeps the window it ran in."""
        if self.end is not None:
            return
        self.end_cpu, self.end = self.cpu_s(), time.monotonic()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_mb = int(line.split()[1]) / 1024

    def summary(self) -> dict[str, Any]:
        wall = (self.end or time.monotonic()) - self._start
        cpu = (self.end_cpu if self.end_cpu is not None else self.cpu_s()) - self._start_cpu
        return {
            "process": self.name,
            "cpu_pct": round(100 * cpu / wall, 1) if wall > 0 else None,
            "peak_rss_mb": None if self.peak_rss_mb is None else round(self.peak_rss_mb, 1),
        }


class HubProcess:
    """One fleet_worker child and its line-by-line JSON conversation."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, spec: dict[str, Any], log_path: Path) -> HubProcess:
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "simulator.fleet_worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                limit=64 * 1024 * 1024,  # its results are one long line
            )
        worker = cls(process)
        ready = await worker._send(spec)
        if not ready.get("ready"):
            raise RuntimeError(f"a fleet worker did not start; see {log_path}")
        return worker

    async def _send(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin and self.process.stdout
        async with self._lock:
            self.process.stdin.write((json.dumps(message) + "\n").encode())
            await self.process.stdin.drain()
            line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"fleet worker {self.process.pid} ended (exit {self.process.returncode})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def ask(self, command: str, **fields: Any) -> dict[str, Any]:
        return await self._send({"cmd": command, **fields})

    async def stop(self) -> None:
        """Ask it to stop its hubs (each says `offline`); kill it if it has not within STOP_S."""
        with contextlib.suppress(RuntimeError, ConnectionError, TimeoutError):
            await asyncio.wait_for(self.ask("stop"), STOP_S)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    """(first index, count) for each of `parts` nearly equal shares of range(total)."""
    base, extra = divmod(total, parts)
    shares, first = [], 0
    for part in range(parts):
        count = base + (part < extra)
        shares.append((first, count))
        first += count
    return shares


class Fleet:
    def __init__(self, options: FleetOptions, workdir: Path, say: Callable[[str], None]) -> None:
        self.o = options
        self.workdir = workdir
        self.say = say
        self.rng = random.Random(options.seed)
        self.broker = PrivateBroker(workdir / "broker")
        self.db = options.db or str(workdir / "centre.sqlite3")
        self.centres: list[ChildProcess] = []
        self.workers: list[tuple[HubProcess, int, int]] = []  # (process, first index, count)
        self.meters: list[ProcessMeter] = []
        self.marks: dict[str, float] = {}  # what happened when (monotonic)
        self.killed_centre: str | None = None

    def _fresh_store(self) -> None:
        """Every figure is this run's: the fleet's own SQLite file and latency logs from an earlier run
        in the same --workdir go; a --db that holds an earlier run is refused (its hubs have the
        same ids and sequence numbers, so its alarms would count as doubled, its hubs as offline)."""
        for n in range(self.o.centre_workers):
            (self.workdir / f"centre-{n + 1}.latency.jsonl").unlink(missing_ok=True)
        if self.o.db is None:
            for suffix in ("", "-wal", "-shm"):
                Path(self.db + suffix).unlink(missing_ok=True)
            return
        store = CentreStore(self.db)
        try:
            if store.holds(COUNTY):
                raise RuntimeError(
                    f"the --db store holds an earlier fleet run (county {COUNTY!r}), which would count in this "
                    "run's figures (its alarms as doubled, its hubs as offline); give --db an empty database"
                )
        finally:
            store.close()

    async def start(self) -> None:
        self._fresh_store()
        self.broker.start()
        for n in range(self.o.centre_workers):
            name = f"centre-{n + 1}"
            argv = [sys.executable, "-m", "hub.cli", "centre", "--port", str(self.broker.port), "--db", self.db]
            argv += ["--centre-id", name, "--log-level", "WARNING", "--heartbeat-s", str(self.o.heartbeat_s)]
            argv += ["--latency-log", str(self.workdir / f"{name}.latency.jsonl")]
            centre = ChildProcess(name, argv, self.workdir, {})
            await centre.start()
            self.centres.append(centre)
        ramp = self.o.ramp_s if self.o.ramp_s is not None else min(self.o.heartbeat_s, 60.0)
        for n, (first, count) in enumerate(_split(self.o.hubs, min(self.o.processes, self.o.hubs))):
            spec = {
                "host": self.broker.host,
                "port": self.broker.port,
                "county": COUNTY,
                "first": first,
                "count": count,
                "heartbeat_s": self.o.heartbeat_s,
                "keepalive_s": self.o.keepalive_s,
                "resend_first_s": self.o.resend_first_s,
                "ramp_s": ramp,
            }
            worker = await HubProcess.start(spec, self.workdir / f"hubs-{n + 1}.log")
            self.workers.append((worker, first, count))
        self.marks["start"] = time.monotonic()
        self.started_wall = time.time()

    def _meter(self) -> None:
        assert self.broker._process is not None
        self.meters = [ProcessMeter("mosquitto", self.broker._process.pid)]
        self.meters += [ProcessMeter(c.name, c.process.pid) for c in self.centres if c.process]
        self.meters += [ProcessMeter(f"hubs-{n + 1}", w.process.pid) for n, (w, _, _) in enumerate(self.workers)]

    async def status(self) -> dict[str, int]:
        answers = await asyncio.gather(*(w.ask("status") for w, _, _ in self.workers))
        return {key: sum(a[key] for a in answers) for key in ("connected", "raised", "acked", "scheduled")}

    async def alarms_due(self) -> int:
        """Alarms raised so far plus those asked for and still to be raised (spread over a second)."""
        status = await self.status()
        return status["raised"] + status["scheduled"]

    async def wait_for(self, what: str, done: Callable[[dict[str, int]], bool], limit_s: float) -> float | None:
        """Poll the workers until `done(status)`; the seconds it took, or None if it never was."""
        start = time.monotonic()
        while time.monotonic() - start < limit_s:
            status = await self.status()
            self.say(
                f"{what}: {status['connected']}/{self.o.hubs} hubs connected, "
                f"{status['acked']}/{status['raised']} alarms acknowledged"
            )
            if done(status):
                return time.monotonic() - start
            await asyncio.sleep(0.25)
        return None

    async def raise_alarms(self, count: int, label: str, at: float) -> None:
        chosen = self.rng.sample(range(self.o.hubs), min(count, self.o.hubs))
        for worker, first, size in self.workers:
            mine = [i for i in chosen if first <= i < first + size]
            if mine:
                await worker.ask("alarms", at=at, spread_s=1.0, hubs=mine, label=label)

    async def play(self) -> dict[str, Any]:
        o = self.o
        ramp_s = o.ramp_s if o.ramp_s is not None else min(o.heartbeat_s, 60.0)
        connected = await self.wait_for("coming up", lambda s: s["connected"] == o.hubs, ramp_s + 120)
        if connected is None:
            raise RuntimeError(f"the fleet did not connect within {ramp_s + 120:.0f} s; see {self.workdir}")
        self.marks["all_connected"] = time.monotonic()
        self._meter()
        begin = self.marks["all_connected"]
        settle: float | None = None
        if o.storm:
            storm_at = begin + 0.3 * o.duration_s
            await self._until(storm_at - 1.0, "heartbeats")
            self.marks["storm"] = storm_at
            await self.raise_alarms(o.storm, "storm", storm_at)
            if o.kill_centre_worker and len(self.centres) > 1:
                await self._until(storm_at + 0.3, "storm")
                victim = self.centres[0]
                await self.kill_centre(victim)
                self.marks["centre_killed"] = time.monotonic()
                self.say(f"SIGKILLed {victim.name} in the middle of the storm")
        if o.reconnect_storm:
            await self._until(begin + 0.6 * o.duration_s, "heartbeats")
            self.marks["cut"] = time.monotonic()
            await asyncio.gather(*(w.ask("cut", down_s=CUT_DOWN_S) for w, _, _ in self.workers))
            self.marks["line_back"] = time.monotonic()
            await self.raise_alarms(RECONNECT_ALARMS, "reconnect", self.marks["line_back"])
            total = await self.alarms_due()  # the alarms just asked for too: settled means acked
            after = await self.wait_for(
                "reconnecting",
                lambda s: s["connected"] == o.hubs and s["acked"] >= total,
                SETTLE_LIMIT_S,
            )
            settle = None if after is None else time.monotonic() - self.marks["cut"]
        await self._until(begin + o.duration_s, "heartbeats")
        for meter in self.meters:
            meter.finish()
        due = await self.alarms_due()
        await self.wait_for("last acks", lambda s: s["acked"] >= due, 120)
        self.marks["end"] = time.monotonic()
        results = await asyncio.gather(*(w.ask("results") for w, _, _ in self.workers))
        return self._summary(results, settle)

    async def kill_centre(self, victim: ChildProcess) -> None:
        """SIGKILL a centre worker, its CPU and memory read first (afterwards /proc has nothing)."""
        for meter in self.meters:
            if meter.name == victim.name:
                meter.finish()
        await victim.kill()
        self.killed_centre = victim.name

    async def _until(self, moment: float, what: str) -> None:
        while (left := moment - time.monotonic()) > 0:
            status = await self.status()
            self.say(
                f"{what}: {status['connected']}/{self.o.hubs} connected, {status['acked']}/{status['raised']} "
                f"alarms acknowledged, {left:.0f} s to the next step"
            )
            await asyncio.sleep(min(left, 1.0))

    def _summary(self, results: list[dict[str, Any]], settle: float | None) -> dict[str, Any]:
        alarms = [a for r in results for a in r["alarms"]]
        store = CentreStore(self.db)
        try:
            rows = store.event_rows([a["event_id"] for a in alarms])
            records = {row["event_id"]: row for row in rows}
            doubled = store.doubled_alarms(COUNTY)
            centre_alarms = [a for a in store.centre_alarms() if a["county"] == COUNTY]
        finally:
            store.close()
        start = self.marks["start"]
        by_label: dict[str, list[dict[str, Any]]] = {}
        for alarm in alarms:
            by_label.setdefault(alarm["label"], []).append(alarm)
        latency = {label: _latency([a for a in items]) for label, items in by_label.items()}
        unacked = [a for a in alarms if a["acked"] is None]
        missing = [a for a in alarms if a["event_id"] not in records]
        heartbeats = self._heartbeat_latencies()
        shares: dict[str, int] = {}
        for row in rows:
            shares[row["received_by"]] = shares.get(row["received_by"], 0) + 1
        summary = {
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.o).items()},
            "hubs": self.o.hubs,
            "connect_s": round(self.marks["all_connected"] - start, 1),
            "alarms": {"raised": len(alarms), "latency_ms": latency, "centre_ms": self._centre_part()},
            "heartbeats": heartbeats,
            "lost": len({a["event_id"] for a in unacked} | {a["event_id"] for a in missing}),
            "doubled": doubled,
            "repeated_acks": sum(max(0, a["acks"] - 1) for a in alarms),
            "records_by_centre_worker": dict(sorted(shares.items())),
            "centre_worker_killed": self.killed_centre,
            "reconnect_settle_s": None if settle is None else round(settle, 1),
            "centre_alarms": {
                kind: sum(a["kind"] == kind for a in centre_alarms) for kind in ("hub.offline", "hub.online")
            },
            "processes": [m.summary() for m in self.meters]
            + [{"process": "hubs (all)", "peak_rss_mb": round(sum(r["peak_rss_mb"] for r in results), 1)}],
            "marks_s": {k: round(v - start, 2) for k, v in self.marks.items()},
            "db": "postgresql" if self.db.startswith("postgres") else "sqlite",
        }
        if self.o.plot is not None:
            from simulator.fleet_plot import plot

            series = {
                label: [(a["raised"] - start, 1000 * (a["acked"] - a["raised"])) for a in items if a["acked"]]
                for label, items in by_label.items()
            }
            plot(self.o.plot, series, self._heartbeat_points(), self.marks, summary)
            summary["plot"] = str(self.o.plot)
        return summary

    def _centre_part(self) -> dict[str, Any]:
        """Of the alarms' latency, the centre's own part: read off the broker -> committed."""
        values = [1000 * x["centre_s"] for x in self._latency_lines("event") if "centre_s" in x]
        return latency_summary(values)

    def _latency_lines(self, kind: str = "heartbeat") -> list[dict[str, Any]]:
        lines = []
        for centre in self.centres:
            path = self.workdir / f"{centre.name}.latency.jsonl"
            with contextlib.suppress(OSError):
                for line in path.read_text().splitlines():
                    with contextlib.suppress(ValueError):
                        lines.append(json.loads(line))
        return [x for x in lines if x.get("kind") == kind]

    def _heartbeat_latencies(self) -> dict[str, Any]:
        """The heartbeats committed in the measured window: every hub up, then --duration (not the
        wait for the last acks after it)."""
        begin = self.started_wall + (self.marks["all_connected"] - self.marks["start"])
        end = begin + self.o.duration_s
        values = [1000 * x["latency_s"] for x in self._latency_lines() if begin <= x["t"] <= end]
        return {"stored": len(values), "latency_ms": latency_summary(values)}

    def _heartbeat_points(self) -> list[tuple[float, float]]:
        return [(x["t"] - self.started_wall, 1000 * x["latency_s"]) for x in self._latency_lines()]

    async def stop(self) -> None:
        await asyncio.gather(*(w.stop() for w, _, _ in self.workers), return_exceptions=True)
        await asyncio.gather(*(c.stop() for c in self.centres), return_exceptions=True)
        self.broker.stop()


def _latency(alarms: list[dict[str, Any]]) -> dict[str, Any]:
    values = [1000 * (a["acked"] - a["raised"]) for a in alarms if a["acked"] is not None]
    return {"n": len(alarms), **latency_summary(values)}


async def run_fleet(
    options: FleetOptions, workdir: Path | None = None, say: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the fleet and return its summary (see the module docstring)."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="anju-fleet-")))
        workdir.mkdir(parents=True, exist_ok=True)
        fleet = Fleet(options, workdir, say or (lambda _: None))
        try:
            await fleet.start()
            return await fleet.play()
        finally:
            await fleet.stop()
