"""`anju provision import households.csv`: many households prepared at once for the installers' visits.

One CSV row per household (the columns: docs/provisioning-csv.md) becomes one bundle per hub:

    OUT/HUB_ID/hub.toml          the hub's whole configuration (`load_config` accepts it), 0600
    OUT/HUB_ID/tls/HUB_ID.key    the hub's own key (0600) and certificate from the county CA,
    OUT/HUB_ID/tls/HUB_ID.crt    and a copy of the CA certificate: they go to /etc/anju/tls/
    OUT/HUB_ID/tls/ca.crt
    OUT/HUB_ID/bthome-keys.csv   device id, MAC and BTHome key of each BLE device, 0600: flashed
                                 into the pendants (a fresh random key for each one without a key)
    OUT/labels.csv               hub id, household id and installer PIN, 0600: the one place a PIN
                                 is in clear, for printing the hubs' labels

The whole file is checked first (every row as a `HubConfig`, plus ids, MACs, IEEE addresses and
keys unique across the file, the CA, existing bundles); any problem is reported as
`file:line: column: what is wrong and what is allowed`, all of them at once, and nothing is
written. Then the bundles are made in a process pool (scrypt for the PIN's hash and an EC key per
hub are the cost) inside a hidden staging directory under OUT, and moved into place only when
every one of them succeeded: an import that fails leaves OUT as it was. Every file is written
through a temporary file created with its final mode, then renamed.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime as dt
import difflib
import io
import json
import multiprocessing
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from cloud_bridge import certs
from hub.api.security import hash_pin, new_pin
from hub.config import FieldProblem, HubConfig
from hub.files import write_atomic

# The columns, in the order the documentation lists them.
REQUIRED_COLUMNS = ("hub_id", "county", "household_id", "mqtt_host")
COLUMNS = (
    "hub_id",
    "county",
    "household_id",
    "elder_name",
    "address",
    "phone",
    "contacts",
    "waking",
    "devices",
    "mqtt_host",
    "mqtt_port",
)
DATA_DIR = "/var/lib/anju"
TLS_DIR = "/etc/anju/tls"  # where the bundle's tls/ files go on the hub
DEFAULT_MQTT_PORT = 8883  # MQTT over TLS
CERT_DAYS = 825
LABELS = "labels.csv"
LABEL_COLUMNS = ("hub_id", "household_id", "pin")
KEY_COLUMNS = ("device_id", "mac", "key", "key_source")
DOCS = "docs/provisioning-csv.md"

DEVICE_SYNTAX = "id:kind:transport[:room]@address, e.g. cord-bath:pullcord:gpio:卫生间@17"
CONTACT_SYNTAX = "name:phone or name:phone:relation, e.g. 李明:13800000000:儿子"
# Chinese input methods type these; in `contacts` and `devices` they mean the ASCII separators.
FULL_WIDTH = str.maketrans({"：": ":", "；": ";", "＠": "@", "／": "/"})

# What a value must look like, by the field's name (for pydantic's "String should match pattern").
HINTS = {
    "hub_id": "1 to 63 lowercase letters, digits and hyphens, starting with a letter or digit (hub-0001)",
    "county": "1 to 63 lowercase letters, digits and hyphens, starting with a letter or digit (minle)",
    "household_id": "1 to 63 lowercase letters, digits and hyphens, starting with a letter or digit (hh-0001)",
    "phone": "3 to 20 digits with an optional leading + (+8613800000000)",
    "waking": 'two 24-hour times "HH:MM-HH:MM", e.g. 07:00-21:00',
    "id": "1 to 63 lowercase letters, digits, '-' and '_', starting with a letter or digit (cord-bath)",
    "mac": "six hex pairs separated by colons, e.g. A4:C1:38:00:00:01",
    "ieee": "eight hex pairs separated by colons, e.g. 00:0d:6f:00:0a:90:69:e7",
    "key": "32 hex digits (the 16-byte BTHome bind key); leave it out to have one made",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: `file:line: column: message` (line None: the whole file)."""

    path: str
    line: int | None
    column: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.column}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.path, "line": self.line, "column": self.column, "message": self.message}


class ProvisionImportError(ValueError):
    """The CSV file (or the CA, or the output directory) is not fit to import; nothing was written.
    `problems` lists every one found, each naming file, line and column."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("\n".join(str(problem) for problem in problems))
        self.problems = list(problems)


class ProvisionWriteError(RuntimeError):
    """Making or installing the bundles failed (disk full, permissions...). Bundles not yet in
    place were removed; `failures` says which hubs failed and why."""

    def __init__(self, message: str, failures: Sequence[str] = ()) -> None:
        super().__init__("\n".join([message, *failures]))
        self.failures = list(failures)


@dataclass(frozen=True)
class HouseholdRow:
    """One row of the file, checked: the hub's configuration as far as the CSV gives it (no PIN
    hash yet, BLE keys only where the file gave them)."""

    line: int
    config: HubConfig


@dataclass(frozen=True)
class Bundle:
    hub_id: str
    household_id: str
    line: int
    path: Path
    devices: int
    ble_keys_generated: int


@dataclass(frozen=True)
class ImportSummary:
    csv_path: Path
    out_dir: Path
    labels: Path
    bundles: tuple[Bundle, ...]
    replaced: tuple[str, ...]  # hub ids whose earlier bundle --force replaced
    seconds: float

    @property
    def households(self) -> int:
        return len(self.bundles)

    @property
    def devices(self) -> int:
        return sum(bundle.devices for bundle in self.bundles)

    @property
    def ble_keys_generated(self) -> int:
        return sum(bundle.ble_keys_generated for bundle in self.bundles)

    def to_json(self) -> dict[str, Any]:
        """A machine-readable summary. It holds no PIN and no key: those stay in the bundles."""
        return {
            "ok": True,
            "csv": str(self.csv_path),
            "out": str(self.out_dir),
            "labels": str(self.labels),
            "households": self.households,
            "devices": self.devices,
            "ble_keys_generated": self.ble_keys_generated,
            "replaced": list(self.replaced),
            "seconds": round(self.seconds, 3),
            "bundles": [
                {
                    "hub_id": bundle.hub_id,
                    "household_id": bundle.household_id,
                    "line": bundle.line,
                    "dir": str(bundle.path),
                    "devices": bundle.devices,
                    "ble_keys_generated": bundle.ble_keys_generated,
                }
                for bundle in self.bundles
            ],
        }


# ---------------------------------------------------------------------------------------------
# Reading and checking the file


def parse_households(data: bytes | str, path: Path | str = "<csv>") -> list[HouseholdRow]:
    """Every row of a households CSV as a checked `HouseholdRow`, or ProvisionImportError listing
    every problem (file, line, column). Never raises anything else, whatever `data` holds."""
    parsed = _parse(data, str(path))
    if parsed.problems:
        raise ProvisionImportError(parsed.problems)
    return parsed.rows


@dataclass
class _Parsed:
    rows: list[HouseholdRow]  # the rows without a problem
    problems: list[Problem]
    counties: list[tuple[int, str]]  # (line, county) of every row, for the check against the CA


def _parse(data: bytes | str, path: str) -> _Parsed:
    parsed = _Parsed([], [], [])
    problems = parsed.problems
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            message = (
                f"not UTF-8 (byte 0x{data[exc.start]:02x} on line {line}): save the file as “CSV UTF-8” "
                "(Excel / WPS: 另存为 → CSV UTF-8), not GBK or UTF-16"
            )
            problems.append(Problem(path, line, "(file)", message))
            return parsed
    else:
        text = data.removeprefix("\ufeff")
    records = list(_records(text, path, problems))
    if not records:
        if not problems:
            message = f"the file has no rows; line 1 names the columns: {','.join(COLUMNS)}"
            problems.append(Problem(path, 1, "(header)", message))
        return parsed
    header_line, header = records[0]
    names = _header(header, header_line, path, problems)
    if names is None:
        return parsed
    if len(records) == 1:
        problems.append(Problem(path, header_line, "(header)", "no households: add one row per household"))
        return parsed

    unique = _UniqueAcrossFile(path)
    for line, record in records[1:]:
        if len(record) != len(names):
            hint = 'an unquoted comma in a value? Quote it: "..."' if len(record) > len(names) else "a missing comma?"
            message = f"{len(record)} values, but the header has {len(names)} columns ({hint})"
            problems.append(Problem(path, line, "(row)", message))
            continue
        cells: dict[str, str] = {}
        for name, value in zip(names, record, strict=True):
            if name:
                cells[name] = value.strip()
            elif value.strip():
                message = f"a value ({value.strip()!r}) under a column with no name in the header"
                problems.append(Problem(path, line, "(row)", message))
        row = _Row(path, line)
        raw = row.raw_config(cells)
        unique.check(raw, line, problems)
        if cells.get("county"):
            parsed.counties.append((line, cells["county"]))
        try:
            config = HubConfig.model_validate(raw)
        except ValidationError as exc:
            row.problems += row.validation_problems(exc, raw)  # without what the row has reported already
        else:
            if not row.problems:
                parsed.rows.append(HouseholdRow(line, config))
        problems += row.problems
    order = {column: index for index, column in enumerate(COLUMNS)}
    problems.sort(key=lambda problem: (problem.line or 0, order.get(problem.column, -1)))
    return parsed


def _records(text: str, path: str, problems: list[Problem]) -> Iterator[tuple[int, list[str]]]:
    """The CSV records with the line each starts on (the header is line 1; a quoted value may span
    lines). Rows with nothing in them are skipped. A CSV syntax error ends the reading."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            reason = str(exc)
            if reason == "unexpected end of data":
                problems.append(
                    Problem(
                        path,
                        start,
                        "(row)",
                        'a quoted value in the row starting here is never closed: each " that opens a value '
                        'needs a closing one (write a quote inside a quoted value as two: "")',
                    )
                )
            elif "expected after" in reason:
                problems.append(
                    Problem(
                        path,
                        reader.line_num,
                        "(row)",
                        "a quoted value must end right before a comma or the end of the line; write a quote "
                        'inside a quoted value as two ("")',
                    )
                )
            else:
                problems.append(Problem(path, reader.line_num or start, "(row)", f"not readable as CSV: {reason}"))
            return
        if any(cell.strip() for cell in record):
            yield start, record


def _header(header: list[str], line: int, path: str, problems: list[Problem]) -> list[str] | None:
    """The column names (blank for an unnamed column), or None after adding the header's problems."""
    names = [cell.strip().lower() for cell in header]
    before = len(problems)
    for index, name in enumerate(names):
        if not name:
            continue
        if name not in COLUMNS:
            if len(names) == 1 and any(sep in name for sep in ";\t|"):
                message = "the columns must be separated by commas (,), not ';', tabs or '|'"
            else:
                close = difflib.get_close_matches(name, COLUMNS, n=1)
                suggestion = f" (did you mean {close[0]}?)" if close else ""
                message = f"unknown column{suggestion}; the columns are {', '.join(COLUMNS)} (see {DOCS})"
            problems.append(Problem(path, line, name, message))
        elif name in names[:index]:
            problems.append(Problem(path, line, name, "this column is named twice"))
    missing = [name for name in REQUIRED_COLUMNS if name not in names]
    if missing:
        problems.append(
            Problem(
                path,
                line,
                "(header)",
                f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}: the first line names "
                f"the columns, e.g. {','.join(COLUMNS)}",
            )
        )
    return None if len(problems) > before else names


class _Row:
    """One CSV row turned into HubConfig input. Syntax problems of its values (a missing required
    value, a contact or device that cannot be split up) are collected in `problems`; the values
    themselves are checked by HubConfig, whose errors `validation_problems` names by column."""

    def __init__(self, path: str, line: int) -> None:
        self.path, self.line = path, line
        self.problems: list[Problem] = []
        self.said: set[tuple[str, int | None]] = set()  # (column, entry number) already reported
        self.numbers: dict[str, list[int]] = {"devices": [], "contacts": []}  # entry number of each one kept

    def problem(self, column: str, message: str, entry: int | None = None) -> None:
        self.problems.append(Problem(self.path, self.line, column, message))
        self.said.add((column, entry))

    def raw_config(self, cells: dict[str, str]) -> dict[str, Any]:
        for column in REQUIRED_COLUMNS:
            if not cells.get(column):
                self.problem(column, "required: " + HINTS.get(column, "the county broker's host name or IP address"))
        hub_id = cells.get("hub_id", "")
        raw: dict[str, Any] = {
            "hub_id": hub_id,
            "county": cells.get("county", ""),
            "household_id": cells.get("household_id", ""),
            "data_dir": DATA_DIR,
            "api": {"enabled": True},
        }
        host = cells.get("mqtt_host", "")
        if host and not certs.HOST_PATTERN.fullmatch(host):
            self.problem("mqtt_host", f"{host!r} is not a host name: give the county broker's DNS name or IP address")
        port: int | str = cells.get("mqtt_port") or DEFAULT_MQTT_PORT
        if isinstance(port, str) and not re.fullmatch(r"[0-9]{1,5}", port):
            self.problem("mqtt_port", f"{port!r} is not a port number: use 1-65535 (empty: {DEFAULT_MQTT_PORT})")
        tls = {"ca": f"{TLS_DIR}/{certs.CA_CERT}", "cert": f"{TLS_DIR}/{hub_id}.crt", "key": f"{TLS_DIR}/{hub_id}.key"}
        raw["mqtt"] = {"host": host, "port": port, "tls": tls}
        profile: dict[str, Any] = {}
        if cells.get("elder_name"):
            profile["elder_name"] = cells["elder_name"]
        if cells.get("address"):
            profile["address"] = cells["address"].replace("\r\n", "\n").replace("\r", "\n")
        if cells.get("phone"):
            profile["phone"] = _phone(cells["phone"])
        if cells.get("contacts"):
            profile["contacts"] = self._contacts(cells["contacts"])
        if profile:
            raw["profile"] = profile
        if cells.get("waking"):
            raw["rules"] = {"inactivity": {"waking": re.sub(r"\s", "", cells["waking"])}}
        if cells.get("devices"):
            raw["devices"] = self._devices(cells["devices"])
        return raw

    def _contacts(self, cell: str) -> list[dict[str, str]]:
        contacts = []
        for number, entry in enumerate(_entries(cell), 1):
            parts = [part.strip() for part in entry.split(":")]
            if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
                message = (
                    f"contact {number} {entry!r}: write {CONTACT_SYNTAX}; separate contacts with ';' "
                    "(a name or relation cannot hold ':' or ';')"
                )
                self.problem("contacts", message, number)
                continue
            contact = {"name": parts[0], "phone": _phone(parts[1])}
            if len(parts) == 3 and parts[2]:
                contact["relation"] = parts[2]
            contacts.append(contact)
            self.numbers["contacts"].append(number)
        return contacts

    def _devices(self, cell: str) -> list[dict[str, Any]]:
        devices = []
        for number, entry in enumerate(_entries(cell), 1):
            device = self._device(number, entry)
            if device is not None:
                devices.append(device)
                self.numbers["devices"].append(number)
        return devices

    def _device(self, number: int, entry: str) -> dict[str, Any] | None:
        spec, _, address = entry.partition("@")
        address = address.strip()
        parts = [part.strip() for part in spec.split(":")]
        if len(parts) not in (3, 4) or not all(parts[:3]):
            hint = " (the address goes after '@', not after ':')" if len(parts) > 4 else ""
            self.problem(
                "devices", f"device {number} {entry!r}: write {DEVICE_SYNTAX}{hint}; separate devices with ';'", number
            )
            return None
        device: dict[str, Any] = {"id": parts[0], "kind": parts[1].lower(), "transport": parts[2].lower()}
        if len(parts) == 4 and parts[3]:
            device["room"] = parts[3]
        name = f"device {number} ({parts[0]})"
        transport = device["transport"]
        if transport in ADDRESS_EXAMPLES and not address:
            self.problem("devices", f"{name}: a {transport} device needs {ADDRESS_EXAMPLES[transport]}", number)
            return None
        if transport != "ble" and "/" in address:
            self.problem("devices", f"{name}: '/KEY' after the address is for BLE devices only", number)
            return None
        if transport == "gpio":
            if not re.fullmatch(r"[0-9]{1,2}", address):
                self.problem("devices", f"{name}: pin {address!r} is not a BCM pin number: use 0-27", number)
                return None
            device["pin"] = int(address)
        elif transport == "ble":
            mac, _, key = address.partition("/")
            device["mac"] = mac.strip().upper()
            if key.strip():
                device["key"] = key.strip().lower()
        elif transport == "zigbee":
            device["ieee"] = address.lower()
        return device

    def validation_problems(self, exc: ValidationError, raw: dict[str, Any]) -> list[Problem]:
        """pydantic's errors as problems naming the CSV column (and the device or contact in it);
        none for a column and entry this row has already reported."""
        problems = []
        for error in exc.errors():
            loc: list[int | str] = [p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
            cause = error.get("ctx", {}).get("error")
            if isinstance(cause, FieldProblem):
                loc += cause.loc
            column, entry, prefix, rest = self._column(loc, raw)
            if (column, entry) in self.said:
                continue
            leaf = str(rest[-1]) if rest else column
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "string_pattern_mismatch" and leaf in HINTS:
                message = f"{error.get('input')!r} is not allowed: use {HINTS[leaf]}"
            elif error["type"] in ("enum", "literal_error") and "expected" in error.get("ctx", {}):
                message = f"{message}; got {error.get('input')!r}"
            elif leaf == "pin" and error["type"].startswith(("less_than", "greater_than")):
                message = f"{error.get('input')!r} is not a BCM pin number: use 0-27"
            field = ".".join(str(part) for part in rest)
            problems.append(Problem(self.path, self.line, column, f"{prefix}{field + ': ' if field else ''}{message}"))
        return problems

    def _column(self, loc: list[int | str], raw: dict[str, Any]) -> tuple[str, int | None, str, list[int | str]]:
        """(column, entry number in it, a prefix naming the entry, the rest of the location)."""
        head = loc[0] if loc else ""
        if head in ("hub_id", "county", "household_id"):
            return str(head), None, "", loc[1:]
        if head == "devices" and len(loc) > 1 and isinstance(loc[1], int) and loc[1] < len(self.numbers["devices"]):
            number, device = self.numbers["devices"][loc[1]], raw["devices"][loc[1]]
            return "devices", number, f"device {number} ({device['id']}): ", loc[2:]
        if loc[:2] == ["profile", "contacts"] and len(loc) > 2 and isinstance(loc[2], int):
            if loc[2] < len(self.numbers["contacts"]):
                number, contact = self.numbers["contacts"][loc[2]], raw["profile"]["contacts"][loc[2]]
                return "contacts", number, f"contact {number} ({contact['name']}): ", loc[3:]
        if head == "profile" and len(loc) > 1 and loc[1] in ("elder_name", "address", "phone", "contacts"):
            return str(loc[1]), None, "", loc[2:]
        if loc[:3] == ["rules", "inactivity", "waking"]:
            return "waking", None, "", loc[3:]
        if loc[:2] in (["mqtt", "host"], ["mqtt", "port"]):
            return f"mqtt_{loc[1]}", None, "", loc[2:]
        return "(row)", None, "", loc


ADDRESS_EXAMPLES = {
    "gpio": "its BCM pin number after '@', e.g. cord-bath:pullcord:gpio:卫生间@17",
    "ble": "its MAC after '@', e.g. pendant:pendant:ble:卧室@A4:C1:38:00:00:01",
    "zigbee": "its IEEE address after '@', e.g. smoke:smoke:zigbee:厨房@00:0d:6f:00:0a:90:69:e7",
}


def _phone(value: str) -> str:
    """A phone number as typed (138-0000-0000, +86 138 0000 0000) without its spaces and dashes."""
    return re.sub(r"[\s\-]", "", value)


def _entries(cell: str) -> list[str]:
    return [entry.strip() for entry in cell.translate(FULL_WIDTH).split(";") if entry.strip()]


class _UniqueAcrossFile:
    """Hub ids, household ids, BLE MACs, Zigbee IEEE addresses and given BTHome keys: each once per file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: dict[tuple[str, str], tuple[int, str]] = {}

    def check(self, raw: dict[str, Any], line: int, problems: list[Problem]) -> None:
        for column in ("hub_id", "household_id"):
            value = raw.get(column)
            if isinstance(value, str) and value:
                self._once(column, value, line, column, repr(value), "", problems)
        for device in raw.get("devices", []):
            for field, what in (("mac", "MAC"), ("ieee", "IEEE address"), ("key", "BTHome key")):
                value = device.get(field)
                if value:
                    shown = what if field == "key" else f"{what} {value}"
                    self._once(
                        field, value, line, "devices", f"device {device['id']!r}: {shown}", device["id"], problems
                    )

    def _once(
        self, kind: str, value: str, line: int, column: str, what: str, owner: str, problems: list[Problem]
    ) -> None:
        first = self.seen.setdefault((kind, value), (line, owner))
        if first != (line, owner):
            earlier = f"line {first[0]}" + (f" (device {first[1]!r})" if first[1] else "")
            rule = {"hub_id": "each hub needs its own id", "household_id": "one row per household"}.get(
                kind, "each device needs its own"
            )
            problems.append(Problem(self.path, line, column, f"{what} is already used on {earlier}; {rule}"))


# ---------------------------------------------------------------------------------------------
# The CA and the output directory


@dataclass(frozen=True)
class _Ca:
    county: str | None  # the OU of a CA made by `anju certs init-ca`


def _check_ca(ca_dir: Path) -> tuple[_Ca | None, list[Problem]]:
    where = str(ca_dir)
    fix = "make one with `anju certs init-ca --dir DIR --county COUNTY`, or give the right --ca"
    if not ca_dir.is_dir():
        return None, [Problem(where, None, "--ca", f"not a directory: {fix}")]
    missing = [name for name in (certs.CA_KEY, certs.CA_CERT) if not (ca_dir / name).is_file()]
    if missing:
        return None, [Problem(where, None, "--ca", f"no county CA here (missing {', '.join(missing)}): {fix}")]
    try:
        ca_cert, _key = certs._load_ca(ca_dir)  # the same checks `certs.issue` makes, before anything is written
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return None, [Problem(where, None, "--ca", f"not a usable county CA: {exc}; {fix}")]
    problems = []
    not_after = dt.datetime.now(dt.UTC) + dt.timedelta(days=CERT_DAYS)
    if ca_cert.not_valid_after_utc < not_after:
        problems.append(
            Problem(
                where,
                None,
                "--ca",
                f"the CA expires on {ca_cert.not_valid_after_utc:%Y-%m-%d}, before the hub certificates would "
                f"({CERT_DAYS} days): make a new county CA",
            )
        )
    try:
        is_ca = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        problems.append(Problem(where, None, "--ca", f"{certs.CA_CERT} is not a CA certificate; {fix}"))
    units = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    county = str(units[0].value) if units else None
    return _Ca(county), problems


def _read_labels(path: Path) -> tuple[list[dict[str, str]], list[Problem]]:
    """The rows of an earlier labels.csv (kept by --force for hubs this import does not touch)."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as file:
            reader = csv.DictReader(file, strict=True)
            if tuple(reader.fieldnames or ()) != LABEL_COLUMNS:
                raise ValueError(f"its header is not {','.join(LABEL_COLUMNS)}")
            return [{name: row[name] or "" for name in LABEL_COLUMNS} for row in reader], []
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        message = f"cannot keep the earlier labels it holds ({exc}): move it away, then import again"
        return [], [Problem(str(path), None, "--out", message)]


# ---------------------------------------------------------------------------------------------
# Making the bundles


@dataclass(frozen=True)
class _Job:
    line: int
    config: dict[str, Any]  # HubConfig input, without the PIN's hash and the keys to be made
    staging: str
    ca_dir: str
    source: str


@dataclass(frozen=True)
class _Made:
    line: int
    hub_id: str
    household_id: str
    pin: str
    devices: int
    ble_keys_generated: int


def _csv_bytes(header: Sequence[str], rows: Sequence[Sequence[str]]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def _label_pin() -> str:
    """An installer PIN that survives a spreadsheet: no leading 0 (Excel would drop it)."""
    while True:
        pin = new_pin()
        if not pin.startswith("0"):
            return pin


def _make_bundle(job: _Job) -> _Made:
    """One hub's bundle under `job.staging` (runs in a worker process): PIN and its hash, BTHome
    keys, hub.toml, key and certificate. The PIN goes back to the parent for labels.csv only."""
    config = copy.deepcopy(job.config)
    hub_id, household_id = config["hub_id"], config["household_id"]
    bundle = Path(job.staging) / hub_id
    bundle.mkdir(mode=0o700)
    pin = _label_pin()
    config["api"]["pin_hash"] = hash_pin(pin)
    keys = []
    for device in config.get("devices", []):
        if device["transport"] == "ble":
            source = "csv" if device.get("key") else "new"
            device.setdefault("key", secrets.token_hex(16))
            keys.append((device["id"], device["mac"], device["key"], source))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"# Hub {hub_id}, household {household_id}: written by `anju provision import` from {job.source} "
        f"line {job.line}, {stamp}.\n"
        "# Install as /etc/anju/hub.toml, mode 0600 (personal data, the PIN's hash, BTHome keys), and the\n"
        f"# bundle's tls/ files in {TLS_DIR}/. Check with `anju config check`.\n\n"
    ) + tomli_w.dumps(config)
    HubConfig.model_validate(tomllib.loads(text))  # exactly what load_config will read on the hub
    write_atomic(bundle / "hub.toml", text.encode(), 0o600)
    tls = bundle / "tls"
    tls.mkdir(mode=0o700)
    certs.issue(job.ca_dir, hub_id, tls, kind="hub", days=CERT_DAYS)
    write_atomic(tls / certs.CA_CERT, (Path(job.ca_dir) / certs.CA_CERT).read_bytes(), 0o644)
    write_atomic(bundle / "bthome-keys.csv", _csv_bytes(KEY_COLUMNS, keys), 0o600)
    generated = sum(1 for key in keys if key[3] == "new")
    return _Made(job.line, hub_id, household_id, pin, len(config.get("devices", [])), generated)


def _run_jobs(jobs: list[_Job], workers: int, progress: Callable[[int, int], None] | None) -> list[_Made]:
    """Every job's bundle, in a process pool of `workers` (inline for one); ProvisionWriteError on
    the first failure, after the jobs already running have finished."""
    total = len(jobs)
    made: list[_Made] = []
    failures: list[str] = []

    def failed(job: _Job, exc: BaseException) -> None:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        where = f": {exc.filename}" if isinstance(exc, OSError) and exc.filename else ""
        failures.append(f"{job.config['hub_id']} (line {job.line}): {reason}{where}")

    if progress:
        progress(0, total)
    if workers <= 1 or total <= 1:
        for job in jobs:
            try:
                made.append(_make_bundle(job))
            except Exception as exc:
                failed(job, exc)
                break
            if progress:
                progress(len(made), total)
    else:
        # forkserver: workers never inherit the caller's threads (a progress display, a test runner's).
        # It re-imports the main script in each worker; a script read from stdin cannot be: fork then.
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        method = "fork" if main_file and not os.path.exists(main_file) else "forkserver"
        context = multiprocessing.get_context(method)
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures: dict[Future[_Made], _Job] = {pool.submit(_make_bundle, job): job for job in jobs}
            try:
                for future in as_completed(futures):
                    if future.cancelled():
                        continue
                    try:
                        made.append(future.result())
                    except Exception as exc:
                        failed(futures[future], exc)
                        for other in futures:
                            other.cancel()
                        continue
                    if progress:
                        progress(len(made), total)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    if failures:
        shown = failures[:10] + ([f"... and {len(failures) - 10} more"] if len(failures) > 10 else [])
        raise ProvisionWriteError(f"{len(failures)} bundle(s) could not be made; nothing was installed", shown)
    return made


def import_households(
    csv_path: Path | str,
    out_dir: Path | str,
    ca_dir: Path | str,
    *,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> ImportSummary:
    """Check `csv_path` whole, then write one bundle per household under `out_dir` (see the module
    docstring) with certificates from the county CA in `ca_dir`.

    Raises ProvisionImportError (nothing written) for any problem with the file, the CA or the
    output directory — an existing bundle or labels.csv without `force` among them — and
    ProvisionWriteError if making or installing the bundles failed (no bundle left half-made).
    `progress(done, total)` is called as bundles are finished; `workers` defaults to the CPU count.
    With `force`, the bundles of hubs in this file are replaced (new PIN, keys and certificate) and
    labels.csv keeps the rows of hubs this import does not touch.
    """
    started = time.perf_counter()
    csv_path, out_dir, ca_dir = Path(csv_path), Path(out_dir), Path(ca_dir)
    try:
        data = csv_path.read_bytes()
    except OSError as exc:
        raise ProvisionImportError(
            [Problem(str(csv_path), None, "(file)", f"cannot read it: {exc.strerror or exc}")]
        ) from exc
    parsed = _parse(data, str(csv_path))
    rows, problems = parsed.rows, parsed.problems
    ca, ca_problems = _check_ca(ca_dir)
    problems += ca_problems
    if ca and ca.county:
        for line, county in parsed.counties:
            if county != ca.county:
                message = f"{county!r}, but the CA in {ca_dir} is county {ca.county!r}'s (one CA per county)"
                problems.append(Problem(str(csv_path), line, "county", message))
    labels = out_dir / LABELS
    kept_labels: list[dict[str, str]] = []
    if out_dir.exists() and not out_dir.is_dir():
        problems.append(Problem(str(out_dir), None, "--out", "exists and is not a directory"))
    elif out_dir.is_dir():
        for row in rows:
            target = out_dir / row.config.hub_id
            if os.path.lexists(target) and not force:
                problems.append(
                    Problem(
                        str(csv_path),
                        row.line,
                        "hub_id",
                        f"{target} already exists (an earlier import): pass --force to replace it with a new "
                        "PIN, keys and certificate, or choose another --out",
                    )
                )
        if os.path.lexists(labels):
            if not force:
                message = (
                    "already exists and holds the PINs of an earlier import: print it and move it away, "
                    "or pass --force (which keeps its rows for hubs not in this file)"
                )
                problems.append(Problem(str(labels), None, "--out", message))
            else:
                kept_labels, label_problems = _read_labels(labels)
                problems += label_problems
    if problems:
        raise ProvisionImportError(problems)

    try:
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        staging = Path(tempfile.mkdtemp(prefix=".anju-import-", dir=out_dir))
    except OSError as exc:
        raise ProvisionWriteError(f"cannot write in {out_dir}: {exc.strerror or exc}") from exc
    try:
        jobs = [
            _Job(
                row.line,
                row.config.model_dump(mode="json", exclude_unset=True),
                str(staging),
                str(ca_dir),
                csv_path.name,
            )
            for row in rows
        ]
        made = sorted(_run_jobs(jobs, workers or os.cpu_count() or 1, progress), key=lambda m: m.line)
        replaced = _install(made, staging, out_dir, labels, kept_labels, force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    bundles = tuple(
        Bundle(m.hub_id, m.household_id, m.line, out_dir / m.hub_id, m.devices, m.ble_keys_generated) for m in made
    )
    return ImportSummary(csv_path, out_dir, labels, bundles, tuple(replaced), time.perf_counter() - started)


def _install(
    made: list[_Made], staging: Path, out_dir: Path, labels: Path, kept: list[dict[str, str]], force: bool
) -> list[str]:
    """labels.csv first (so a PIN is never lost), then each bundle renamed into place."""
    ours = {m.hub_id for m in made}
    rows = [[row[name] for name in LABEL_COLUMNS] for row in kept if row["hub_id"] not in ours]
    rows += [[m.hub_id, m.household_id, m.pin] for m in made]
    replaced: list[str] = []
    installed = 0
    try:
        write_atomic(labels, _csv_bytes(LABEL_COLUMNS, rows), 0o600)
        old = staging / ".replaced"
        old.mkdir()
        for m in made:
            target = out_dir / m.hub_id
            if os.path.lexists(target):
                if not force:
                    raise FileExistsError(17, "appeared during the import; not replaced without --force", str(target))
                os.replace(target, old / m.hub_id)
                replaced.append(m.hub_id)
            os.replace(staging / m.hub_id, target)
            installed += 1
    except OSError as exc:
        raise ProvisionWriteError(
            f"installing the bundles in {out_dir} failed after {installed} of {len(made)}: "
            f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}; {labels} has every PIN "
            "of this import: run it again with --force to finish"
        ) from exc
    return replaced


# ---------------------------------------------------------------------------------------------
# The command line (hub/cli.py: `anju provision import`)

EPILOG = f"""\
example:
  anju certs init-ca --dir /srv/anju/ca --county minle       (once per county)
  anju provision import households.csv --out bundles/ --ca /srv/anju/ca

households.csv (UTF-8, header first; columns and syntax: {DOCS}):
  hub_id,county,household_id,elder_name,address,phone,contacts,waking,devices,mqtt_host,mqtt_port
  hub-0001,minle,hh-0001,王秀英,民乐县新华村3组12号,13800000001,李明:13800000002:儿子,07:00-21:00,\
cord-bath:pullcord:gpio:卫生间@17;pendant:pendant:ble:卧室@A4:C1:38:00:00:01,mqtt.minle.example,8883

The whole file is checked first; every problem is printed as `file:line: column: message` and
nothing is written until the file is clean. Then, per hub: OUT/HUB_ID/hub.toml, OUT/HUB_ID/tls/
(key, certificate, ca.crt) and OUT/HUB_ID/bthome-keys.csv (keys to flash into the pendants); and
OUT/labels.csv with every hub's installer PIN, the only copy in clear: print the labels from it,
then keep it safe or destroy it. Secrets and personal data are written mode 0600.

exit status: 0 done; 2 a problem with the file, the CA or OUT (nothing written); 1 writing failed
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `anju provision import` on `parser` (the CLI's sub-command parser)."""
    parser.description = (
        "Prepare many households at once for the installers' visits: from one CSV row per household,\n"
        "one bundle per hub (configuration, TLS key and certificate, BTHome keys), and labels.csv with\n"
        "the installer PINs for printing the hub labels."
    )
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("csv", type=Path, metavar="HOUSEHOLDS.csv", help=f"one row per household (see {DOCS})")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the bundles and labels.csv go")
    parser.add_argument(
        "--ca", type=Path, required=True, metavar="DIR", help="the county CA directory (from `anju certs init-ca`)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace existing bundles of these hubs (new PIN, keys, certificate: re-flash the pendants)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar (there is none when stderr is not a terminal)"
    )
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary (no PINs, no keys)")


def main(args: argparse.Namespace) -> int:
    """Run `anju provision import`: 0 done, 2 a bad file (problems on stderr), 1 writing failed."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    show = not args.quiet and console.is_terminal
    bar = Progress(
        TextColumn("households"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        disable=not show,
    )
    task = bar.add_task("households", total=None)

    def advance(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    try:
        with bar:
            summary = import_households(
                args.csv, args.out, args.ca, force=args.force, progress=advance if show else None
            )
    except ProvisionImportError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s); nothing was written.", file=sys.stderr)
        if args.json:
            print(
                json.dumps({"ok": False, "problems": [p.to_json() for p in exc.problems]}, ensure_ascii=False, indent=2)
            )
        return 2
    except ProvisionWriteError as exc:
        print(f"anju provision import: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}, ensure_ascii=False, indent=2))
        return 1
    if args.json:
        print(json.dumps(summary.to_json(), ensure_ascii=False, indent=2))
        return 0
    replaced = f"; replaced {len(summary.replaced)} earlier bundle(s)" if summary.replaced else ""
    print(
        f"{summary.households} household(s) ready in {summary.out_dir}/ ({summary.devices} devices, "
        f"{summary.ble_keys_generated} new BTHome keys) in {summary.seconds:.1f} s{replaced}.\n"
        f"Next: print the hub labels from {summary.labels} (the only copy of the installer PINs), then keep it\n"
        "safe or destroy it; flash each bundle's bthome-keys.csv into its pendants; on each hub install\n"
        f"hub.toml as /etc/anju/hub.toml and tls/* in {TLS_DIR}/."
    )
    return 0
