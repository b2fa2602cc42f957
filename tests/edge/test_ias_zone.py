"""IAS Zone status bits to events, per zone type; repeats of a ZCL sequence number are one frame."""

from __future__ import annotations

from edge.ias_zone import ALARM1, ALARM2, BATTERY, TAMPER, TEST, TROUBLE, IasInterpreter
from hub.model import Device, DeviceKind, Origin, Transport

ORIGIN = Origin("hub-1", "hh-1", "minle")
SMOKE = Device("smoke", DeviceKind.SMOKE, Transport.ZIGBEE, ieee="00:0d:6f:00:0a:90:69:e7")
SOS = Device("sos", DeviceKind.SOS, Transport.ZIGBEE, ieee="00:0d:6f:00:0a:90:69:e8")
RADAR = Device("radar", DeviceKind.RADAR, Transport.ZIGBEE, ieee="00:0d:6f:00:0a:90:69:e9")
DOOR = Device("door", DeviceKind.CONTACT, Transport.ZIGBEE, ieee="00:0d:6f:00:0a:90:69:ea")
S = 1_000_000_000


def types(events) -> list[str]:
    return [e.type.value for e in events]


def test_smoke_alarm1_sets_and_clears() -> None:
    ias = IasInterpreter(ORIGIN)
    assert types(ias.zone_status(SMOKE, ALARM1, 1, 1 * S)) == ["alarm.fire"]
    assert types(ias.zone_status(SMOKE, ALARM1, 2, 2 * S)) == [], "still smoky: no second alarm"
    (restore,) = ias.zone_status(SMOKE, 0, 3, 3 * S)
    assert restore.type.value == "restore.fire" and restore.device_counter == 3


def test_personal_emergency_alarm2_is_the_button_and_alarm1_the_fall() -> None:
    ias = IasInterpreter(ORIGIN)
    assert types(ias.zone_status(SOS, ALARM2, 1, S)) == ["alarm.emergency"]
    assert types(ias.zone_status(SOS, ALARM2 | ALARM1, 2, 2 * S)) == ["alarm.fall"]
    assert types(ias.zone_status(RADAR, ALARM1, 1, S)) == ["alarm.fall"]


def test_the_issue_reference_status_alarm2_tamper_restore_reports() -> None:
    ias = IasInterpreter(ORIGIN)
    assert sorted(types(ias.zone_status(SOS, 0x0026, 0x4B, S))) == ["alarm.emergency", "fault.tamper"]


def test_fault_bits_and_their_restores() -> None:
    ias = IasInterpreter(ORIGIN)
    assert types(ias.zone_status(SMOKE, TAMPER | BATTERY | TROUBLE, 1, S)) == [
        "fault.tamper",
        "fault.battery_low",
        "fault.device",
    ]
    assert types(ias.zone_status(SMOKE, 0, 2, 2 * S)) == ["restore.tamper", "restore.battery_low", "restore.device"]
    assert types(ias.zone_status(SMOKE, TEST, 3, 3 * S)) == ["test.walk"]


def test_a_repeated_sequence_number_is_one_frame_within_the_window() -> None:
    ias = IasInterpreter(ORIGIN, duplicate_window_s=10)
    assert types(ias.zone_status(SOS, ALARM2, 7, 1 * S)) == ["alarm.emergency"]
    ias.zone_status(SOS, 0, 7, 2 * S)
    assert ias.duplicates == 1 and ias.known_status("sos") == ALARM2, "the duplicate changed nothing"
    assert types(ias.zone_status(SOS, 0, 8, 3 * S)) == []
    assert types(ias.zone_status(SOS, ALARM2, 7, 30 * S)) == ["alarm.emergency"], "the same TSN much later is new"


def test_a_read_has_no_sequence_number_and_is_never_a_duplicate() -> None:
    ias = IasInterpreter(ORIGIN)
    assert types(ias.zone_status(SMOKE, ALARM1, None, S)) == ["alarm.fire"]
    assert types(ias.zone_status(SMOKE, ALARM1, None, S)) == []


def test_contact_and_motion_are_activity() -> None:
    seen = []
    ias = IasInterpreter(ORIGIN, on_activity=lambda device, ns: seen.append((device.id, ns)))
    assert ias.zone_status(DOOR, ALARM1, 1, 5) == []
    assert seen == [("door", 5)]
