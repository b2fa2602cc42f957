"""Check-in windows on an injected clock: silence past the window is one fault; the next word restores."""

from __future__ import annotations

from hub.model import Device, DeviceKind, EventType, Origin, Transport
from hub.supervision import Supervisor

S = 1_000_000_000
ORIGIN = Origin("hub-1", "hh-1", "minle")
PENDANT = Device("pendant", DeviceKind.PENDANT, Transport.BLE, mac="A4:C1:38:00:00:01", checkin_s=60)
CORD = Device("cord", DeviceKind.PULLCORD, Transport.GPIO, pin=17)


class Clock:
    def __init__(self) -> None:
        self.now = 100 * S

    def __call__(self) -> int:
        return self.now


def test_silence_past_the_window_is_one_fault_and_the_next_advert_restores() -> None:
    clock = Clock()
    supervisor = Supervisor(ORIGIN, [PENDANT, CORD], clock)
    clock.now += 59 * S
    assert supervisor.check() == []
    clock.now += 2 * S
    (fault,) = supervisor.check()
    assert (fault.type, fault.device_id, fault.details["checkin_s"]) == (EventType.FAULT_DEVICE_OFFLINE, "pendant", 60)
    clock.now += 600 * S
    assert supervisor.check() == [], "reported once, not again every check"
    (restore,) = supervisor.heard("pendant")
    assert restore.type is EventType.RESTORE_DEVICE_OFFLINE
    assert supervisor.heard("pendant") == []
    assert supervisor.heard("cord") == [], "a wired device has no check-in window"


def test_a_device_heard_in_time_never_goes_offline_and_the_next_check_is_scheduled() -> None:
    clock = Clock()
    supervisor = Supervisor(ORIGIN, [PENDANT], clock)
    for _ in range(10):
        clock.now += 50 * S
        supervisor.heard("pendant")
        assert supervisor.check() == []
    assert 0.2 <= supervisor.seconds_until_next_check() <= 60
    clock.now += 30 * S
    assert abs(supervisor.seconds_until_next_check() - 30) < 0.01
