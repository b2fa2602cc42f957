"""The centre contract: the schemas accept what the hub produces and reject what breaks them."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from cloud_bridge import contract
from cloud_bridge.contract import MESSAGE_KINDS, ContractError, kind_of_topic, topic, validate
from hub.model import Event, EventType

CONTRACT_DIR = Path(contract.__file__).parent
UUID = "0190a6c2-7d4e-7b3a-8f00-1234567890ab"
WHEN = "2024-07-01T08:30:00.123Z"


def _event(**overrides: Any) -> Event:
    fields: dict[str, Any] = {
        "type": EventType.ALARM_EMERGENCY,
        "hub_id": "hub-0001",
        "household_id": "hh-42",
        "county": "anxi",
        "device_id": "pullcord_bedroom",
        "device_counter": 17,
        "details": {"room": "bedroom", "battery_pct": 88},
    }
    fields.update(overrides)
    return Event(**fields)


_BATCHED = (EventType.FAULT_BATTERY_LOW, EventType.INFO_CHECKIN_OK, EventType.RESTORE_POWER, EventType.TEST_WALK)


def _batch(count: int) -> dict[str, Any]:
    """A valid `events` message of `count` events as the hub sends them (none of alarm priority)."""
    events = [
        _event(type=_BATCHED[i % len(_BATCHED)], device_id=None, device_counter=None, details={})
        .with_seq(i + 1)
        .to_message(attempt=1 + i % 3)
        for i in range(count)
    ]
    return {"schema": "anju.events/1", "hub_id": "hub-0001", "events": events}


def _acks(count: int) -> dict[str, Any]:
    items = [
        {"event_id": f"{UUID[:-4]}{i:04x}", "seq": i + 1, "received_at": WHEN, "duplicate": i % 2 == 1}
        for i in range(count)
    ]
    return {"schema": "anju.acks/1", "hub_id": "hub-0001", "centre_id": "centre-anxi-1", "acks": items}


def _good(kind: str) -> dict[str, Any]:
    """One valid message of each kind, with every optional field present."""
    if kind == "event":
        return _event().with_seq(1).to_message(attempt=1)
    if kind == "events":
        return _batch(5)
    if kind == "acks":
        return _acks(5)
    examples: dict[str, dict[str, Any]] = {
        "ack": {
            "schema": "anju.ack/1",
            "event_id": UUID,
            "seq": 1,
            "hub_id": "hub-0001",
            "centre_id": "centre-anxi-1",
            "received_at": WHEN,
            "duplicate": False,
        },
        "status": {
            "schema": "anju.status/1",
            "hub_id": "hub-0001",
            "state": "online",
            "at": WHEN,
            "reason": "boot",
            "version": "0.1.0",
        },
        "heartbeat": {
            "schema": "anju.heartbeat/1",
            "hub_id": "hub-0001",
            "seq": 3,
            "at": WHEN,
            "uptime_s": 180.5,
            "pending": {"alarm": 0, "fault": 1, "info": 2},
            "oldest_pending_s": 12.0,
            "modem": {"sim": "READY", "signal_dbm": -67, "registered": True},
            "uplinks": {
                "mqtt": {"ok": True, "detail": "county broker"},
                "dc09": {"ok": False, "detail": "dc09 10.0.0.9:12345: connection refused"},
                "sms": {"ok": True, "detail": "modem ready"},
            },
        },
        "cmd": {
            "schema": "anju.cmd/1",
            "cmd_id": "c-1",
            "hub_id": "hub-0001",
            "command": "say",
            "args": {"text": "请按下按钮", "limit": 20, "toml": "hub_id = 'hub-0001'", "trial_s": 30, "wait_s": 15},
            "issued_at": WHEN,
            "signature": "MEUCIQD1",
        },
        "cmd_result": {
            "schema": "anju.cmd_result/1",
            "hub_id": "hub-0001",
            "cmd_id": "c-1",
            "command": "status",
            "outcome": "ok",
            "code": "done",
            "reason": "status follows",
            "data": {"uplink_connected": True},
            "at": WHEN,
        },
    }
    return copy.deepcopy(examples[kind])


def _schema_file(kind: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CONTRACT_DIR / "schemas" / f"{kind}.json").read_text("utf-8"))
    return loaded


def _rejects(kind: str, message: dict[str, Any], path: str) -> ContractError:
    with pytest.raises(ContractError) as caught:
        validate(kind, message)
    error = caught.value
    assert error.kind == kind
    assert path in [p.path for p in error.problems], error.problems
    assert kind in str(error)
    return error


# --- the event the hub really produces ------------------------------------------------------


def test_a_real_event_validates() -> None:
    validate("event", _event().with_seq(1).to_message(attempt=1))


@pytest.mark.parametrize("event_type", list(EventType))
def test_every_event_type_from_a_hub_raised_event_validates(event_type: EventType) -> None:
    # nulls where the hub raises the event itself, and each type's own codes (or their absence)
    event = _event(type=event_type, device_id=None, device_counter=None, details={})
    validate("event", event.with_seq(7).to_message(attempt=3, sent_at=datetime.now(UTC)))


def test_schema_type_enum_is_exactly_the_event_types() -> None:
    assert _schema_file("event")["properties"]["type"]["enum"] == [t.value for t in EventType]


def test_event_schema_requires_exactly_the_fields_to_message_writes() -> None:
    message = _event().with_seq(1).to_message(attempt=1)
    event_schema = _schema_file("event")
    assert set(event_schema["properties"]) == set(message)
    # The time fields came later: optional, so a message from an older hub is still valid.
    optional = {"time_source", "mono_ms", "boot_id", "sent_mono_ms"}
    assert set(event_schema["required"]) == set(message) - optional


def test_an_unknown_event_type_is_rejected() -> None:
    message = _good("event")
    message["type"] = "alarm.flood"
    error = _rejects("event", message, "$.type")
    assert "alarm.emergency" in str(error)  # says what is allowed


# --- every schema rejects the four classic breakages ----------------------------------------

_REQUIRED_FIELD = {
    "event": "seq",
    "ack": "event_id",
    "events": "events",
    "acks": "acks",
    "status": "state",
    "heartbeat": "pending",
    "cmd": "cmd_id",
    "cmd_result": "outcome",
}
_DATE_TIME_FIELD = {
    "event": "occurred_at",
    "ack": "received_at",
    "status": "at",
    "heartbeat": "at",
    "cmd": "issued_at",
    "cmd_result": "at",
}


def test_the_good_examples_are_good() -> None:
    for kind in MESSAGE_KINDS:
        validate(kind, _good(kind))


@pytest.mark.parametrize("kind", MESSAGE_KINDS)
def test_a_missing_required_field_is_named(kind: str) -> None:
    message = _good(kind)
    field = _REQUIRED_FIELD[kind]
    del message[field]
    error = _rejects(kind, message, f"$.{field}")
    assert error.path == f"$.{field}"
    assert f"$.{field}" in str(error) and "required" in str(error)


@pytest.mark.parametrize("kind", MESSAGE_KINDS)
def test_the_schema_field_is_required_and_pinned(kind: str) -> None:
    message = _good(kind)
    message["schema"] = f"anju.{kind}/2"
    _rejects(kind, message, "$.schema")
    del message["schema"]
    _rejects(kind, message, "$.schema")


@pytest.mark.parametrize("kind", MESSAGE_KINDS)
def test_an_extra_field_is_named(kind: str) -> None:
    message = _good(kind)
    message["colour"] = "red"
    error = _rejects(kind, message, "$.colour")
    assert "not allowed" in str(error)


@pytest.mark.parametrize("kind", ["event", "ack"])
def test_a_bad_uuid_is_named(kind: str) -> None:
    for bad in (UUID.upper(), UUID.replace("-", ""), "not-a-uuid", UUID + "0"):
        message = _good(kind)
        message["event_id"] = bad
        _rejects(kind, message, "$.event_id")


@pytest.mark.parametrize("kind", list(_DATE_TIME_FIELD))
@pytest.mark.parametrize(
    "bad_moment",
    ["2024-13-01T08:30:00Z", "2024-07-01 08:30", "2024-07-01T08:30:00", "yesterday", 1719822600],
)
def test_a_bad_date_time_is_named(kind: str, bad_moment: object) -> None:
    message = _good(kind)
    message[_DATE_TIME_FIELD[kind]] = bad_moment
    _rejects(kind, message, f"$.{_DATE_TIME_FIELD[kind]}")


def test_nested_problems_carry_the_full_path_and_are_all_counted() -> None:
    message = _good("heartbeat")
    message["pending"] = {"alarm": -1, "fault": 0, "urgent": 1}
    error = _rejects("heartbeat", message, "$.pending.alarm")
    assert {p.path for p in error.problems} == {"$.pending.alarm", "$.pending.info", "$.pending.urgent"}
    assert str(error).startswith("heartbeat message breaks the contract at $.pending.alarm: must be >= 0")
    assert "2 more problems" in str(error)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq", 0),
        ("seq", True),
        ("attempt", 0),
        ("hub_id", "Hub_1"),
        ("household_id", ""),
        ("county", "-anxi"),
        ("device_id", "Pullcord"),
        ("priority", "urgent"),
        ("contact_id", "10"),
        ("qualifier", 2),
        ("sia_code", "ma"),
        ("device_counter", -1),
        ("details", []),
    ],
)
def test_event_field_rules(field: str, value: object) -> None:
    message = _good("event")
    message[field] = value
    _rejects("event", message, f"$.{field}")


@pytest.mark.parametrize("field", ["hub_id", "county", "device_id", "sia_code", "contact_id", "event_id"])
def test_a_trailing_newline_does_not_slip_past_a_pattern(field: str) -> None:
    # Python's `$` matches before a final newline; JSON Schema's does not.
    message = _good("event")
    message[field] = str(message[field]) + "\n"
    _rejects("event", message, f"$.{field}")


def test_status_last_will_without_optional_fields_validates() -> None:
    validate("status", {"schema": "anju.status/1", "hub_id": "hub-0001", "state": "offline"})


def test_unknown_kind_and_non_object_are_contract_errors() -> None:
    with pytest.raises(ContractError, match="unknown message kind"):
        validate("alarm", _good("event"))
    with pytest.raises(ContractError, match=r"at \$: must be of type object"):
        validate("status", [])  # type: ignore[arg-type]
    assert issubclass(ContractError, ValueError)


# --- batches: `events` and `acks` ------------------------------------------------------------


def test_a_batch_of_what_the_hub_produces_validates_from_1_to_100_items() -> None:
    for count in (1, 2, 100):
        validate("events", _batch(count))
        validate("acks", _acks(count))


@pytest.mark.parametrize(("kind", "field"), [("events", "events"), ("acks", "acks")])
@pytest.mark.parametrize("count", [0, 101])
def test_an_empty_or_oversized_batch_is_refused(kind: str, field: str, count: int) -> None:
    message = _batch(count) if kind == "events" else _acks(count)
    error = _rejects(kind, message, f"$.{field}")
    bound = "at least 1 item," if count == 0 else "at most 100 items,"
    assert f"must have {bound} got {count}" in str(error)
    assert len(str(error)) < 200, "the text says how many, it does not print the batch"


def test_an_invalid_item_is_named_by_its_index() -> None:
    message = _batch(5)
    message["events"][3]["seq"] = 0
    error = _rejects("events", message, "$.events[3].seq")
    assert str(error).startswith("events message breaks the contract at $.events[3].seq: must be >= 1, got 0")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq", 0),
        ("attempt", 0),
        ("hub_id", "Hub_1"),
        ("hub_id", "hub-1\n"),
        ("event_id", UUID.upper()),
        ("type", "alarm.flood"),
        ("sent_at", "2024-07-01 08:30"),
        ("details", []),
    ],
)
def test_every_item_is_validated_exactly_like_a_single_event(field: str, value: object) -> None:
    single = _good("event")
    single[field] = value
    single_error = _rejects("event", single, f"$.{field}")
    batch = _batch(3)
    batch["events"][2] = single
    batch_error = _rejects("events", batch, f"$.events[2].{field}")
    assert [(p.path.replace("$.events[2]", "$"), p.text) for p in batch_error.problems] == [
        (p.path, p.text) for p in single_error.problems
    ]


def test_a_missing_or_extra_item_field_and_a_non_object_item_are_named() -> None:
    batch = _batch(3)
    del batch["events"][0]["seq"]
    batch["events"][1]["colour"] = "red"
    batch["events"][2] = "an event"  # type: ignore[assignment]
    error = _rejects("events", batch, "$.events[0].seq")
    assert {p.path for p in error.problems} == {"$.events[0].seq", "$.events[1].colour", "$.events[2]"}


def test_a_batch_item_schema_is_a_reference_to_the_event_schema() -> None:
    items = _schema_file("events")["properties"]["events"]["items"]
    assert items == {"$ref": "event.json"}
    assert (CONTRACT_DIR / "schemas" / items["$ref"]).is_file()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", "not-a-uuid"),
        ("seq", 0),
        ("received_at", "yesterday"),
        ("duplicate", "no"),
        ("colour", "red"),
    ],
)
def test_an_invalid_acks_item_is_named_by_its_index(field: str, value: object) -> None:
    message = _acks(5)
    message["acks"][4][field] = value
    _rejects("acks", message, f"$.acks[4].{field}")
    del message["acks"][4][field]
    if field != "colour":
        _rejects("acks", message, f"$.acks[4].{field}")


def test_acks_items_are_documented_and_closed() -> None:
    items = _schema_file("acks")["properties"]["acks"]["items"]
    assert items["additionalProperties"] is False
    assert set(items["required"]) == set(items["properties"]) == {"event_id", "seq", "received_at", "duplicate"}
    for name, prop in items["properties"].items():
        assert prop.get("title") and prop.get("description"), name


# --- the heartbeat's optional modem and uplinks ---------------------------------------------


def test_a_heartbeat_without_modem_and_uplinks_and_with_a_null_modem_validates() -> None:
    message = _good("heartbeat")
    del message["modem"], message["uplinks"]
    validate("heartbeat", message)
    validate("heartbeat", {**message, "modem": None, "uplinks": {}})
    validate("heartbeat", {**message, "modem": {"sim": "NOT INSERTED", "signal_dbm": None, "registered": None}})


@pytest.mark.parametrize(
    ("patch", "path"),
    [
        ({"modem": {"sim": "READY", "signal_dbm": -67}}, "$.modem.registered"),
        ({"modem": {"sim": "READY", "signal_dbm": -67.5, "registered": True}}, "$.modem.signal_dbm"),
        ({"modem": {"sim": None, "signal_dbm": -67, "registered": True}}, "$.modem.sim"),
        ({"modem": {"sim": "READY", "signal_dbm": -67, "registered": "yes"}}, "$.modem.registered"),
        ({"modem": {"sim": "READY", "signal_dbm": -67, "registered": True, "imei": "1"}}, "$.modem.imei"),
        ({"modem": "READY"}, "$.modem"),
        ({"uplinks": {"mqtt": {"ok": True}}}, "$.uplinks.mqtt.detail"),
        ({"uplinks": {"mqtt": {"ok": "yes", "detail": ""}}}, "$.uplinks.mqtt.ok"),
        ({"uplinks": {"mqtt": {"ok": True, "detail": "", "rtt": 3}}}, "$.uplinks.mqtt.rtt"),
        ({"uplinks": {"MQTT": {"ok": True, "detail": ""}}}, "$.uplinks"),
        ({"uplinks": {"sms\n": {"ok": True, "detail": ""}}}, "$.uplinks"),
        ({"uplinks": {"x" * 33: {"ok": True, "detail": ""}}}, "$.uplinks"),
        ({"uplinks": []}, "$.uplinks"),
    ],
)
def test_a_bad_modem_or_uplink_report_is_named(patch: dict[str, Any], path: str) -> None:
    _rejects("heartbeat", {**_good("heartbeat"), **patch}, path)


# --- topics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MESSAGE_KINDS)
def test_topic_and_kind_of_topic_round_trip(kind: str) -> None:
    assert topic("anxi", "hub-0001", kind) == f"anju/v1/anxi/hub-0001/{kind}"
    assert kind_of_topic(topic("anxi", "hub-0001", kind)) == kind


@pytest.mark.parametrize(
    "bad",
    [
        "anju/v1/anxi/hub-0001/alarm",  # not a kind
        "anju/v2/anxi/hub-0001/event",  # another version
        "other/v1/anxi/hub-0001/event",
        "anju/v1/anxi/event",  # a level missing
        "anju/v1/anxi/hub-0001/event/extra",
        "/anju/v1/anxi/hub-0001/event",
        "anju/v1/+/+/event",  # a filter, not a topic
        "anju/v1/anxi//event",
        "$share/centre/anju/v1/anxi/hub-0001/event",
        "",
    ],
)
def test_kind_of_topic_rejects_other_shapes(bad: str) -> None:
    assert kind_of_topic(bad) is None


def test_topic_refuses_what_cannot_be_a_level() -> None:
    with pytest.raises(ValueError, match="kind"):
        topic("anxi", "hub-0001", "alarm")
    with pytest.raises(ValueError, match="hub_id"):
        topic("anxi", "hub/0001", "event")
    with pytest.raises(ValueError, match="county"):
        topic("+", "hub-0001", "event")


# --- the AsyncAPI document ------------------------------------------------------------------


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((CONTRACT_DIR / "asyncapi.yaml").read_text("utf-8"))
    return document


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve_local(document: dict[str, Any], ref: str) -> object:
    node: object = document
    for part in ref.removeprefix("#/").split("/"):
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def test_asyncapi_is_version_3(asyncapi: dict[str, Any]) -> None:
    assert str(asyncapi["asyncapi"]).startswith("3.")


def test_asyncapi_schema_refs_name_existing_files(asyncapi: dict[str, Any]) -> None:
    file_refs = [ref for ref in _refs(asyncapi) if not ref.startswith("#")]
    assert sorted(Path(ref).name for ref in file_refs) == sorted(f"{kind}.json" for kind in MESSAGE_KINDS)
    for ref in file_refs:
        assert (CONTRACT_DIR / ref).is_file(), ref


def test_asyncapi_local_refs_resolve(asyncapi: dict[str, Any]) -> None:
    local = [ref for ref in _refs(asyncapi) if ref.startswith("#/")]
    assert local
    for ref in local:
        _resolve_local(asyncapi, ref)


def test_asyncapi_channels_are_the_message_kinds(asyncapi: dict[str, Any]) -> None:
    channels = asyncapi["channels"]
    assert set(channels) == set(MESSAGE_KINDS)
    for kind, channel in channels.items():
        assert channel["address"] == f"anju/v1/{{county}}/{{hub_id}}/{kind}"
        assert set(channel["parameters"]) == {"county", "hub_id"}


def test_asyncapi_operations_match_the_hubs_point_of_view(asyncapi: dict[str, Any]) -> None:
    actions = {
        op["channel"]["$ref"].removeprefix("#/channels/"): op["action"] for op in asyncapi["operations"].values()
    }
    assert actions == {
        "event": "send",
        "ack": "receive",
        "events": "send",
        "acks": "receive",
        "status": "send",
        "heartbeat": "send",
        "cmd": "receive",
        "cmd_result": "send",
    }
    qos = {
        op["channel"]["$ref"].removeprefix("#/channels/"): op["bindings"]["mqtt"]["qos"]
        for op in asyncapi["operations"].values()
    }
    assert qos["event"] == qos["ack"] == qos["events"] == qos["acks"] == qos["cmd"] == qos["status"] == 1
    assert qos["cmd_result"] == 1
    assert asyncapi["operations"]["sendStatus"]["bindings"]["mqtt"]["retain"] is True
    assert asyncapi["operations"]["sendEvent"]["bindings"]["mqtt"]["retain"] is False
    assert asyncapi["operations"]["sendEvents"]["bindings"]["mqtt"]["retain"] is False


def test_asyncapi_last_will_is_a_valid_offline_status(asyncapi: dict[str, Any]) -> None:
    will = asyncapi["servers"]["county"]["bindings"]["mqtt"]["lastWill"]
    assert kind_of_topic(will["topic"].format(county="anxi", hub_id="hub-0001")) == "status"
    assert will["retain"] is True
    message = json.loads(will["message"].replace("{hub_id}", "hub-0001"))
    validate("status", message)
    assert message["state"] == "offline"


def test_asyncapi_states_the_delivery_promises(asyncapi: dict[str, Any]) -> None:
    text = asyncapi["info"]["description"]
    for promise in (
        "same `event_id` and `seq`",
        "at once after every reconnect",
        "acknowledges every copy",
        "$share/centre/anju/v1/+/+/event",
        "$share/centre/anju/v1/+/+/events",
        "jitter",
        "Batches for a backlog, never for an alarm",
    ):
        assert promise in text, promise


def test_asyncapi_says_alarms_are_never_batched(asyncapi: dict[str, Any]) -> None:
    for where in (asyncapi["channels"]["events"], asyncapi["operations"]["sendEvents"]):
        text = " ".join(where["description"].split())
        assert "Alarms are never batched" in text and "alone on `event`" in text


# --- every schema file follows the house rules ----------------------------------------------


def _objects(node: object, path: str = "$") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            yield path, node
        for key, value in node.get("properties", {}).items():
            yield from _objects(value, f"{path}.{key}")


@pytest.mark.parametrize("kind", MESSAGE_KINDS)
def test_schema_files_follow_the_house_rules(kind: str) -> None:
    document = _schema_file(kind)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$id"] == f"https://anju.example/contract/{kind}.json"
    assert document["properties"]["schema"]["const"] == f"anju.{kind}/1"
    assert contract.schema(kind) == document
    for path, obj in _objects(document):
        if "properties" in obj:  # closed objects; only free-form ones (details, args) stay open
            assert obj.get("additionalProperties") is False, path
        for name, prop in obj.get("properties", {}).items():
            assert prop.get("title") and prop.get("description"), f"{path}.{name}"
