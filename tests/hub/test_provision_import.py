"""`anju provision import`: a households CSV checked whole, then one bundle per hub.

Each bundle costs a real scrypt hash (~40 ms) and an EC key, so the files here hold few rows.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_bridge.certs import init_ca
from hub import provision_import as pi
from hub.api.security import verify_pin
from hub.config import load_config

HEADER = "hub_id,county,household_id,elder_name,address,phone,contacts,waking,devices,mqtt_host,mqtt_port\n"
CLEAN = (
    HEADER
    + 'hub-0001,minle,hh-0001,王秀英,"民乐县新华村\n3组12号",138-0000-0001,李明:13800000002:儿子;张医生:+8613900000003,'
    "07:00-21:00,cord-bath:pullcord:gpio:卫生间@17;pendant:pendant:ble:卧室@A4:C1:38:00:00:01;"
    "smoke:smoke:zigbee:厨房@00:0d:6f:00:0a:90:69:e7,mqtt.minle.example,\n"
    "hub-0002,minle,hh-0002,李桂兰,民乐县,13800000004,,,"
    "pendant:pendant:ble@a4:c1:38:00:00:02/00112233445566778899AABBCCDDEEFF;sos:sos:ble:客厅@A4:C1:38:00:00:03,"
    "mqtt.minle.example,1883\n"
    "hub-0003,minle,hh-0003,,,,,,,10.0.0.5,\n"
)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    init_ca(tmp_path / "ca", "minle")
    return tmp_path / "ca"


def write(tmp_path: Path, text: str, name: str = "households.csv", bom: bool = False) -> Path:
    path = tmp_path / name
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def labels(out: Path) -> dict[str, tuple[str, str]]:
    with (out / "labels.csv").open(newline="") as file:
        return {row["hub_id"]: (row["household_id"], row["pin"]) for row in csv.DictReader(file)}


def keys(bundle: Path) -> list[dict[str, str]]:
    with (bundle / "bthome-keys.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def test_a_clean_file_makes_bundles_the_hub_loads(tmp_path: Path, ca: Path) -> None:
    out = tmp_path / "out"
    summary = pi.import_households(write(tmp_path, CLEAN), out, ca)

    assert [b.hub_id for b in summary.bundles] == ["hub-0001", "hub-0002", "hub-0003"]
    assert (summary.households, summary.devices, summary.ble_keys_generated) == (3, 5, 2)
    pins = labels(out)
    assert set(pins) == {"hub-0001", "hub-0002", "hub-0003"}
    assert mode(out / "labels.csv") == 0o600
    ca_cert = x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes())
    all_keys: list[str] = []
    for hub_id, (household_id, pin) in pins.items():
        bundle = out / hub_id
        config = load_config(bundle / "hub.toml")
        assert (config.hub_id, config.household_id, config.county) == (hub_id, household_id, "minle")
        assert str(config.data_dir) == "/var/lib/anju"
        assert config.api.enabled and config.api.pin_hash and verify_pin(pin, config.api.pin_hash)
        assert re.fullmatch(r"[1-9][0-9]{7}", pin)
        assert pin not in (bundle / "hub.toml").read_text()
        assert config.mqtt.tls is not None
        assert str(config.mqtt.tls.cert) == f"/etc/anju/tls/{hub_id}.crt"
        assert str(config.mqtt.tls.key) == f"/etc/anju/tls/{hub_id}.key"
        assert str(config.mqtt.tls.ca) == "/etc/anju/tls/ca.crt"
        for secret in ("hub.toml", "bthome-keys.csv", f"tls/{hub_id}.key"):
            assert mode(bundle / secret) == 0o600, secret
        cert = x509.load_pem_x509_certificate((bundle / "tls" / f"{hub_id}.crt").read_bytes())
        cert.verify_directly_issued_by(ca_cert)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == hub_id
        assert (bundle / "tls" / "ca.crt").read_bytes() == (ca / "ca.crt").read_bytes()
        ble = {d.id: d for d in config.devices if d.transport == "ble"}
        listed = keys(bundle)
        assert {row["device_id"] for row in listed} == set(ble)
        for row in listed:
            assert re.fullmatch(r"[0-9a-f]{32}", row["key"])
            assert row["key"] == ble[row["device_id"]].key and row["mac"] == ble[row["device_id"]].mac
            all_keys.append(row["key"])
    assert len(all_keys) == len(set(all_keys)) == 3

    first = load_config(out / "hub-0001" / "hub.toml")
    assert first.profile.address == "民乐县新华村\n3组12号"
    assert first.profile.phone == "13800000001"
    assert [(c.name, c.phone, c.relation) for c in first.profile.contacts] == [
        ("李明", "13800000002", "儿子"),
        ("张医生", "+8613900000003", ""),
    ]
    assert first.rules.inactivity.waking == "07:00-21:00"
    assert [(d.id, d.pin, d.room) for d in first.devices if d.pin is not None] == [("cord-bath", 17, "卫生间")]
    assert first.mqtt.port == 8883
    second = load_config(out / "hub-0002" / "hub.toml")
    assert second.mqtt.port == 1883
    given_key = {row["device_id"]: row for row in keys(out / "hub-0002")}["pendant"]
    assert (given_key["mac"], given_key["key"], given_key["key_source"]) == (
        "A4:C1:38:00:00:02",
        "00112233445566778899aabbccddeeff",
        "csv",
    )
    assert sorted(p.name for p in out.iterdir()) == ["hub-0001", "hub-0002", "hub-0003", "labels.csv"]  # no staging


def test_two_bad_rows_are_both_reported_with_their_lines_and_nothing_is_written(tmp_path: Path, ca: Path) -> None:
    text = (
        HEADER
        + 'hub-0001,minle,hh-0001,王秀英,"新华村\n3组\n12号",13800000001,,,,mqtt.minle.example,\n'  # lines 2-4
        + "hub-0002,minle,hh-0002,,,138 0000 0002,,7:00-21:00,,mqtt.minle.example,\n"  # line 5: waking
        + "\n"  # line 6: blank
        + 'hub-0003,minle,hh-0003,,"一个\n很长的\n地址",,,,cord:pullcord:gpio@29,mqtt.minle.example,\n'  # 7-9
        + "hub-0004,minle,hh-0004,,,,,,,mqtt.minle.example,\n"  # line 10
    )
    out = tmp_path / "out"
    with pytest.raises(pi.ProvisionImportError) as caught:
        pi.import_households(write(tmp_path, text), out, ca)
    problems = caught.value.problems
    assert [(p.line, p.column) for p in problems] == [(5, "waking"), (7, "devices")]
    assert "HH:MM-HH:MM" in problems[0].message
    assert "device 1 (cord)" in problems[1].message and "0-27" in problems[1].message
    assert str(problems[0]).startswith(f"{tmp_path / 'households.csv'}:5: waking: ")
    assert not out.exists()


def test_duplicates_across_rows_name_both_lines(tmp_path: Path, ca: Path) -> None:
    text = (
        HEADER
        + "hub-0001,minle,hh-0001,,,,,,pendant:pendant:ble@A4:C1:38:00:00:01,mqtt.minle.example,\n"
        + "hub-0001,minle,hh-0002,,,,,,p2:pendant:ble@a4:c1:38:00:00:01,mqtt.minle.example,\n"
    )
    with pytest.raises(pi.ProvisionImportError) as caught:
        pi.import_households(write(tmp_path, text), tmp_path / "out", ca)
    found = {(p.line, p.column): p.message for p in caught.value.problems}
    assert set(found) == {(3, "hub_id"), (3, "devices")}
    assert "line 2" in found[(3, "hub_id")]
    assert "A4:C1:38:00:00:01" in found[(3, "devices")] and "line 2" in found[(3, "devices")]
    assert not (tmp_path / "out").exists()


def test_a_byte_order_mark_is_fine(tmp_path: Path) -> None:
    rows = pi.parse_households(write(tmp_path, CLEAN, bom=True).read_bytes())
    assert [row.config.hub_id for row in rows] == ["hub-0001", "hub-0002", "hub-0003"]
    assert [row.line for row in rows] == [2, 4, 5]


def test_a_file_that_is_not_utf8_says_how_to_save_it(tmp_path: Path) -> None:
    data = (HEADER + "hub-0001,minle,hh-0001,王秀英,,,,,,mqtt.minle.example,\n").encode("gbk")
    with pytest.raises(pi.ProvisionImportError) as caught:
        pi.parse_households(data, "households.csv")
    [problem] = caught.value.problems
    assert problem.line == 2 and "CSV UTF-8" in problem.message


def test_header_problems_are_named(tmp_path: Path) -> None:
    with pytest.raises(pi.ProvisionImportError) as caught:
        pi.parse_households("hub_id,county,houshold_id,mqtt_host,colour\nhub-1,minle,hh-1,m.example,red\n", "f.csv")
    messages = [str(p) for p in caught.value.problems]
    assert any(m.startswith("f.csv:1: houshold_id: unknown column (did you mean household_id?)") for m in messages)
    assert any(m.startswith("f.csv:1: colour: unknown column") for m in messages)
    assert any("missing column household_id" in m for m in messages)


def test_an_unclosed_quote_is_reported_where_its_row_starts(tmp_path: Path) -> None:
    text = HEADER + "hub-0001,minle,hh-0001,,,,,,,mqtt.minle.example,\n" + 'hub-0002,minle,hh-0002,,"no end,,,,,,\n'
    with pytest.raises(pi.ProvisionImportError) as caught:
        pi.parse_households(text, "f.csv")
    [problem] = caught.value.problems
    assert problem.line == 3 and "never closed" in problem.message


def test_existing_bundles_are_kept_unless_forced(tmp_path: Path, ca: Path) -> None:
    out = tmp_path / "out"
    pi.import_households(write(tmp_path, CLEAN), out, ca)
    before = labels(out)
    toml_before = (out / "hub-0001" / "hub.toml").read_bytes()

    with pytest.raises(pi.ProvisionImportError) as caught:
        pi.import_households(write(tmp_path, CLEAN), out, ca)
    columns = {(p.line, p.column) for p in caught.value.problems}
    assert {(2, "hub_id"), (4, "hub_id"), (5, "hub_id"), (None, "--out")} == columns
    assert (out / "hub-0001" / "hub.toml").read_bytes() == toml_before and labels(out) == before

    again = write(tmp_path, HEADER + "hub-0001,minle,hh-0001,,,,,,,mqtt.minle.example,\n", "again.csv")
    summary = pi.import_households(again, out, ca, force=True)
    assert summary.replaced == ("hub-0001",)
    after = labels(out)
    assert after["hub-0002"] == before["hub-0002"] and after["hub-0003"] == before["hub-0003"]  # kept
    config = load_config(out / "hub-0001" / "hub.toml")
    assert config.api.pin_hash and verify_pin(after["hub-0001"][1], config.api.pin_hash)
    assert config.devices == []  # the new row's bundle, not the old one
    assert sorted(p.name for p in out.iterdir()) == ["hub-0001", "hub-0002", "hub-0003", "labels.csv"]


def test_a_wrong_ca_or_a_county_the_ca_is_not_for(tmp_path: Path, ca: Path) -> None:
    path = write(tmp_path, HEADER + "hub-0001,other,hh-0001,,,,,,,mqtt.minle.example,\n")
    with pytest.raises(pi.ProvisionImportError) as caught:
        pi.import_households(path, tmp_path / "out", ca)
    [problem] = caught.value.problems
    assert (problem.line, problem.column) == (2, "county") and "'minle'" in problem.message
    with pytest.raises(pi.ProvisionImportError) as caught:
        pi.import_households(path, tmp_path / "out", tmp_path)
    assert any(p.column == "--ca" and "init-ca" in p.message for p in caught.value.problems)
    assert not (tmp_path / "out").exists()


def test_a_failure_while_writing_leaves_nothing_half_made(
    tmp_path: Path, ca: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    def issue(*args: object, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(pi.certs, "issue", issue)
    out = tmp_path / "out"
    with pytest.raises(pi.ProvisionWriteError) as caught:
        pi.import_households(write(tmp_path, CLEAN), out, ca, workers=1)
    assert "No space left on device" in str(caught.value) and "hub-0002 (line 4)" in str(caught.value)
    assert list(out.iterdir()) == []


def run_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="anju provision import")
    pi.add_arguments(parser)
    return pi.main(parser.parse_args(argv))


def test_the_command_exit_status_and_messages(
    tmp_path: Path, ca: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = write(tmp_path, HEADER + "hub-0001,minle,hh-0001,,,12,,,,mqtt.minle.example,\n", "bad.csv")
    assert run_main([str(bad), "--out", str(tmp_path / "out"), "--ca", str(ca)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{bad}:2: phone: '12' is not allowed")
    assert err[-1] == "1 problem(s); nothing was written."

    good = write(tmp_path, HEADER + "hub-0001,minle,hh-0001,,,,,,,mqtt.minle.example,\n", "good.csv")
    assert run_main([str(good), "--out", str(tmp_path / "out"), "--ca", str(ca), "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] and summary["households"] == 1 and summary["bundles"][0]["hub_id"] == "hub-0001"
    assert labels(tmp_path / "out")["hub-0001"][1] not in json.dumps(summary)  # no PIN outside labels.csv

    def fail(*args: object, **kwargs: object) -> None:
        raise pi.ProvisionWriteError("disk full")

    monkeypatch.setattr(pi, "import_households", fail)
    assert run_main([str(good), "--out", str(tmp_path / "o2"), "--ca", str(ca)]) == 1
    assert "disk full" in capsys.readouterr().err

    parser = argparse.ArgumentParser(prog="anju provision import")
    pi.add_arguments(parser)
    assert "anju provision import households.csv --out" in parser.format_help()


# --- The parser against junk: nothing but ProvisionImportError, ever. ---------------------------

PLAUSIBLE = [
    "hub-0001",
    "minle",
    "hh-0001",
    "mqtt.minle.example",
    "13800000001",
    "李明:13800000002:儿子",
    "07:00-21:00",
    "cord:pullcord:gpio:卫生间@17",
    "p:pendant:ble@A4:C1:38:00:00:01/00112233445566778899aabbccddeeff",
    "s:smoke:zigbee@00:0d:6f:00:0a:90:69:e7",
    "1883",
    "",
]
CELL = st.one_of(
    st.sampled_from(PLAUSIBLE),
    st.text(alphabet=st.sampled_from(list('ab01-_:;@/,"\n\r é卫 \t7.\ufeff：；')), max_size=30),
)


def parse_or_refuse(data: bytes | str) -> None:
    try:
        rows = pi.parse_households(data, "fuzz.csv")
    except pi.ProvisionImportError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert str(problem).startswith("fuzz.csv")
    else:
        assert all(row.line >= 2 for row in rows)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_text(text: str) -> None:
    parse_or_refuse(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_bytes(data: bytes) -> None:
    parse_or_refuse(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(CELL, min_size=10, max_size=12), max_size=5))
def test_fuzz_rows_under_a_real_header(rows: list[list[str]]) -> None:
    text = HEADER + "".join(",".join(row) + "\n" for row in rows)
    parse_or_refuse(text)
    quoted = HEADER + "".join(",".join('"' + cell.replace('"', '""') + '"' for cell in row) + "\n" for row in rows)
    parse_or_refuse(quoted.encode())
