"""The rules engine alone: events per second through hub.rules with 50 devices and every rule on,
and the time from an event reaching the rules to the siren output switching on (p50/p99/max).

The rules run as in the hub (edge.gpio.Siren on gpiozero's MockFactory pins, a recording voice,
a simulated clock with the daily check-in, a reminder, inactivity, fire repeats and escalation
scheduled); `emit` hands events to a list instead of the journal, so the figure is the rules'
own cost. A mix of pendant presses, falls, smoke, motion, battery and tamper reports from 50
devices is fed in, and the clock is advanced now and then so windows open and expire.

    python bench/rules.py [--events 20000] [--record]
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, percentile, record
from gpiozero.pins.mock import MockFactory

from edge.gpio import Siren
from hub.clock import SimulatedClock
from hub.config import RulesConfig
from hub.model import Device, DeviceKind, Event, EventType, Origin, Transport
from hub.rules import Rules

TARGET_P99_MS = 5.0


class Quiet:
    def say(self, name: str, urgent: bool = False) -> bool:
        return True

    def waiting(self) -> None: ...

    def acknowledged(self) -> None: ...


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000, help="events to feed (default: %(default)s)")
    parser.add_argument("--record", action="store_true", help="write the results into docs/BENCHMARKS.md")
    args = parser.parse_args()
    random.seed(7)
    kinds = [DeviceKind.PENDANT] * 20 + [DeviceKind.SMOKE] * 10 + [DeviceKind.MOTION] * 15 + [DeviceKind.SOS] * 5
    devices = [Device(f"d{i:02d}", kind, Transport.BLE, mac=f"A4:C1:38:00:01:{i:02X}") for i, kind in enumerate(kinds)]
    origin = Origin("hub-bench", "hh-bench", "bench")
    zone = ZoneInfo("Asia/Shanghai")
    config = RulesConfig.model_validate(
        {
            "reminders": [{"id": "pills", "at": "12:00", "text": "该吃药了"}],
            "fall": {"cancel_s": 30},
        }
    )
    clock = SimulatedClock(datetime(2026, 12, 1, 8, 0, tzinfo=zone), zone)
    factory = MockFactory()
    siren = Siren(27, factory)
    pin = factory.pin(27)
    emitted: list[Event] = []
    voice = Quiet()
    engine = Rules(
        origin, siren, voice, voice, lambda e, a: emitted.append(e), config, clock, {d.id: d for d in devices}
    )
    engine.start()
    events = []
    for _ in range(args.events):
        device = random.choice(devices)
        if device.kind in (DeviceKind.PENDANT, DeviceKind.SOS):
            kind = random.choice([EventType.ALARM_EMERGENCY, EventType.ALARM_FALL, EventType.FAULT_BATTERY_LOW])
        elif device.kind is DeviceKind.SMOKE:
            kind = random.choice([EventType.ALARM_FIRE, EventType.RESTORE_FIRE, EventType.FAULT_TAMPER])
        else:
            kind = EventType.RESTORE_DEVICE_OFFLINE
        events.append(origin.event(kind, device, 0, None, None, button="press"))
    to_siren: list[float] = []
    answered = 0
    logging.disable(logging.WARNING)  # the rules log every alarm; here that would be the cost measured
    started = time.perf_counter()
    for index, event in enumerate(events):
        if event.type in (EventType.ALARM_EMERGENCY, EventType.ALARM_FIRE):
            siren.silence()
            t0 = time.perf_counter_ns()
            engine.on_event(event)
            took = (time.perf_counter_ns() - t0) / 1e6
            if pin.state:
                to_siren.append(took)
            else:
                answered += 1  # a pendant press that answered an open window ("I am fine"): no siren
        elif event.device_id and event.type is EventType.RESTORE_DEVICE_OFFLINE:
            engine.on_activity(engine.devices[event.device_id])
        else:
            engine.on_event(event)
        if index % 500 == 499:
            clock.advance(600)  # ten minutes: windows expire, routines come due
    elapsed = time.perf_counter() - started
    siren.close()
    rate = len(events) / elapsed
    p99 = percentile(to_siren, 99)
    table = "\n".join(
        [
            "| measure | value | target |",
            "|---|---|---|",
            f"| events through the rules | {len(events)} in {elapsed:.2f} s = {rate:,.0f}/s | |",
            f"| events emitted (journal-bound) | {len(emitted)}; presses that answered a window: {answered} | |",
            f"| event -> siren output on, p50 / p99 / max | {percentile(to_siren, 50):.3f} / {p99:.3f} / "
            f"{max(to_siren):.3f} ms (n = {len(to_siren)}) | p99 <= {TARGET_P99_MS:g} ms: "
            f"{'meets' if p99 <= TARGET_P99_MS else 'MISSES'} |",
        ]
    )
    print(f"Machine: {machine()}\n\n{table}")
    if args.record:
        record("Rules (bench/rules.py)", f"`python bench/rules.py --events {args.events}`\n\n{table}\n")
        print("\nrecorded in docs/BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
