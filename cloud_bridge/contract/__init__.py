"""The contract between a hub and the county monitoring centre, and the one place that checks it.

This package owns `asyncapi.yaml` (topics, QoS, retained and last-will messages, delivery
promises) and the JSON Schemas in `schemas/` of the eight messages exchanged over MQTT: `event`,
`ack`, `events` and `acks` (the same, up to 100 at a time, for draining a backlog; alarms are
never batched), `status`, `heartbeat`, `cmd` (signed by the county CA: cloud_bridge.commands) and
`cmd_result` (the hub's answer to each command). Those files are the source of truth; this module
only loads the schemas (once, from the installed package) and offers what both ends need:

- `validate(kind, message)` raises `ContractError` when a message breaks its schema;
- `topic(county, hub_id, kind)` builds `anju/v1/{county}/{hub_id}/{kind}`;
- `kind_of_topic(topic)` reads the kind back from such a topic, or None for anything else.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Final

from jsonschema import Draft202012Validator, FormatChecker, ValidationError, validators
from jsonschema.protocols import Validator

__all__ = [
    "BATCH_MAX",
    "ID_PATTERN",
    "MESSAGE_KINDS",
    "TOPIC_ROOT",
    "ContractError",
    "Problem",
    "kind_of_topic",
    "schema",
    "topic",
    "validate",
]

MESSAGE_KINDS: Final = ("event", "ack", "events", "acks", "status", "heartbeat", "cmd", "cmd_result")
"""Every message kind of the contract: the last level of its topic and the name of its schema file."""

BATCH_MAX: Final = 100
"""The most items an `events` or `acks` message may carry (the schemas' maxItems)."""

TOPIC_ROOT: Final = "anju/v1"
"""The first two levels of every topic of the contract."""

ID_PATTERN: Final = r"^[a-z0-9][a-z0-9-]{0,62}$"
"""What a county, hub id or household id may look like (the schemas use the same pattern)."""

_ID = re.compile(ID_PATTERN)


@dataclass(frozen=True, slots=True)
class Problem:
    """One way a message breaks its schema: where (a JSON path such as `$.pending.alarm`) and what."""

    path: str
    text: str

    def __str__(self) -> str:
        return f"{self.path}: {self.text}"


class ContractError(ValueError):
    """A message that breaks the contract.

    `kind` is the message kind, `problems` every problem found, in a stable order; the text of
    the error names the first one (its JSON path and what is allowed there) and counts the rest.
    """

    def __init__(self, kind: str, problems: Sequence[Problem]) -> None:
        if not problems:
            raise ValueError("a ContractError needs at least one problem")
        self.kind = kind
        self.problems: tuple[Problem, ...] = tuple(problems)
        first = self.problems[0]
        more = len(self.problems) - 1
        tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        super().__init__(f"{kind} message breaks the contract at {first.path}: {first.text}{tail}")

    @property
    def path(self) -> str:
        """The JSON path of the first problem, e.g. `$.event_id`."""
        return self.problems[0].path


def validate(kind: str, message: dict[str, Any]) -> None:
    """Check `message` against the schema of `kind`; return None or raise `ContractError`.

    Formats are asserted, not just noted: a `date-time` must be a real RFC 3339 date-time. Anything
    that is not a JSON object (say, a list from `json.loads`) is reported at `$`.
    """
    validator = _validators().get(kind)
    if validator is None:
        raise ContractError(
            kind, [Problem("$", f"unknown message kind {kind!r}; the kinds are {', '.join(MESSAGE_KINDS)}")]
        )
    problems = sorted(
        {p for error in validator.iter_errors(message) for p in _problems(error)},
        key=lambda p: (p.path, p.text),
    )
    if problems:
        raise ContractError(kind, problems)


def decode(kind: str, payload: bytes | bytearray | str | None) -> dict[str, Any]:
    """Parse an MQTT payload as a message of `kind` and validate it; raise `ContractError` if it is
    not UTF-8 JSON or breaks the schema. What comes back is safe to index by the schema's fields."""
    try:
        message = json.loads(payload if payload is not None else b"")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError(kind, [Problem("$", f"not UTF-8 JSON: {exc}")]) from None
    except RecursionError:  # hundreds of nested brackets: no message of ours, and it must not end the uplink
        raise ContractError(kind, [Problem("$", "JSON nested too deeply")]) from None
    try:
        validate(kind, message)
    except RecursionError:  # parsed just below the limit, then too deep for the validator
        raise ContractError(kind, [Problem("$", "JSON nested too deeply")]) from None
    return message


def schema(kind: str) -> dict[str, Any]:
    """A copy of the JSON Schema of `kind` (KeyError for an unknown kind)."""
    return copy.deepcopy(_schemas()[kind])


def topic(county: str, hub_id: str, kind: str) -> str:
    """The topic of `kind` messages for one hub: `anju/v1/{county}/{hub_id}/{kind}`."""
    if kind not in MESSAGE_KINDS:
        raise ValueError(f"unknown message kind {kind!r}; the kinds are {', '.join(MESSAGE_KINDS)}")
    for name, value in (("county", county), ("hub_id", hub_id)):
        if not _ID.fullmatch(value):
            raise ValueError(
                f"{name} {value!r} cannot be a topic level: use 1-63 lowercase letters, digits and "
                "hyphens, starting with a letter or digit"
            )
    return f"{TOPIC_ROOT}/{county}/{hub_id}/{kind}"


def kind_of_topic(topic: str) -> str | None:
    """The message kind of a contract topic (`anju/v1/{county}/{hub_id}/{kind}`), else None.

    None for any other shape: a wrong root or version, a missing or extra level, a wildcard or
    otherwise impossible county or hub id, or a last level that is not a kind.
    """
    levels = topic.split("/")
    if len(levels) != 5 or "/".join(levels[:2]) != TOPIC_ROOT:
        return None
    county, hub_id, kind = levels[2:]
    if not (_ID.fullmatch(county) and _ID.fullmatch(hub_id)) or kind not in MESSAGE_KINDS:
        return None
    return kind


@cache
def _schemas() -> dict[str, dict[str, Any]]:
    folder = resources.files(__name__).joinpath("schemas")
    loaded: dict[str, dict[str, Any]] = {}
    for kind in MESSAGE_KINDS:
        document = json.loads(folder.joinpath(f"{kind}.json").read_text(encoding="utf-8"))
        Draft202012Validator.check_schema(document)
        loaded[kind] = document
    return loaded


@cache
def _validators() -> dict[str, Validator]:
    checker = FormatChecker()
    if "date-time" not in checker.checkers:  # jsonschema checks date-time only with rfc3339-validator
        raise RuntimeError("install rfc3339-validator: without it date-time fields go unchecked")
    strict = validators.extend(Draft202012Validator, {"pattern": _pattern})
    return {kind: strict(_inline_refs(doc), format_checker=checker) for kind, doc in _schemas().items()}


def _inline_refs(node: Any) -> Any:
    """A copy of a schema with each `{"$ref": "<kind>.json"}` replaced by that kind's schema.

    An `events` item is `{"$ref": "event.json"}` in the file; validating against the schema itself
    (same keywords, so the same verdict and the same paths, e.g. `$.events[3].seq`) spares
    jsonschema a reference lookup per item, which made a batch item ~1.8x dearer than an event.
    """
    if isinstance(node, list):
        return [_inline_refs(item) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.endswith(".json") and ref.removesuffix(".json") in MESSAGE_KINDS:
        target = {k: v for k, v in _schemas()[ref.removesuffix(".json")].items() if k not in ("$schema", "$id")}
        return _inline_refs({**target, **{k: v for k, v in node.items() if k != "$ref"}})
    return {key: _inline_refs(value) for key, value in node.items()}


def _pattern(validator: Validator, pattern: str, instance: Any, schema: Mapping[str, Any]) -> Iterator[ValidationError]:
    """The `pattern` keyword with JSON Schema's (ECMA-262's) meaning of a final `$`: end of input.

    Python's `$` also matches before a final newline, so plain jsonschema accepts "hub-1\\n" as a
    hub id; here such a value fails.
    """
    if validator.is_type(instance, "string") and not _python_regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


@cache
def _python_regex(pattern: str) -> re.Pattern[str]:
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _problems(error: ValidationError) -> Iterator[Problem]:
    """Turn one jsonschema error into problems that name a field and say what is allowed there."""
    at = list(error.absolute_path)
    keyword, expected, found = error.validator, error.validator_value, error.instance
    if keyword == "required" and isinstance(found, Mapping) and isinstance(expected, list):
        for name in expected:
            if name not in found:
                yield Problem(_json_path([*at, name]), "is required but missing")
        return
    if keyword == "additionalProperties" and isinstance(found, Mapping) and isinstance(error.schema, Mapping):
        known: Mapping[str, Any] = error.schema.get("properties", {})
        allowed = ", ".join(known)
        for name in sorted(set(found) - set(known), key=str):
            yield Problem(_json_path([*at, name]), f"is not allowed here; the fields are: {allowed}")
        return
    yield Problem(_json_path(at), _what_is_allowed(str(keyword), expected, found, error))


def _what_is_allowed(keyword: str, expected: Any, found: Any, error: ValidationError) -> str:
    got = _short(found)
    if keyword == "type":
        kinds = " or ".join(expected) if isinstance(expected, list) else str(expected)
        return f"must be of type {kinds}, got {_json_type(found)} {got}"
    if keyword == "const":
        return f"must be {_short(expected)}, got {got}"
    if keyword == "enum":
        return f"must be one of {', '.join(_short(v) for v in expected)}; got {got}"
    if keyword == "pattern":
        return f"must match {expected}, got {got}"
    if keyword == "format":
        return f"must be a valid {expected}, got {got}"
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[keyword]
        return f"must be {sign} {expected}, got {got}"
    if keyword in ("minLength", "maxLength"):
        bound = "at least" if keyword == "minLength" else "at most"
        return f"must be {bound} {expected} characters long, got {got}"
    if keyword in ("minItems", "maxItems") and isinstance(found, list):
        bound = "at least" if keyword == "minItems" else "at most"
        return f"must have {bound} {expected} item{'s' if expected != 1 else ''}, got {len(found)}"
    return error.message


def _json_path(parts: Sequence[str | int]) -> str:
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            path += f".{part}"
        else:
            path += f"[{json.dumps(part)}]"
    return path


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "integer" if isinstance(value, int) else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
