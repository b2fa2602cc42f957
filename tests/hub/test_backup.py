"""`anju backup` / `anju restore`: a hub with paired devices, keys, a Zigbee network and a journal is
backed up to one file, wiped, and restored whole; a damaged or altered backup, a running hub and
another hub's files are refused with nothing changed. Real TLS files, real SQLite, real tar files."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import io
import json
import os
import shutil
import sqlite3
import stat
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from cloud_bridge.certs import init_ca, issue
from hub import backup
from hub.api.security import hash_pin
from hub.backup import SEQ_MARGIN, BackupError, create_backup, restore_backup
from hub.config import load_config
from hub.control import ControlServer, socket_path
from hub.journal import Journal
from hub.journal_recovery import find_damage
from hub.model import Event, EventType

HUB = "hub-0042"
ZIGBEE_BACKUP = {"version": 1, "network_key": {"key": "01:02:03:04:05:06:07:08:09:0a:0b:0c:0d:0e:0f:10"}}


def _alarm(hub_id: str = HUB, note: str = "") -> Event:
    return Event(EventType.ALARM_FIRE, hub_id, "hh-0042", "minle", "smoke-kitchen", details={"note": note})


class Hub:
    """A paired hub's files: configuration, TLS, data directory with journal and Zigbee state."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "etc" / "hub.toml"
        self.tls = root / "etc" / "tls"
        self.data = root / "var" / "anju"

    def make(self, hub_id: str = HUB) -> Hub:
        ca = init_ca(self.root / "ca", "minle")
        files = issue(ca.cert.parent, hub_id, self.tls, kind="hub")
        raw = {
            "hub_id": hub_id,
            "county": "minle",
            "household_id": "hh-0042",
            "data_dir": str(self.data),
            "mqtt": {
                "host": "mqtt.example",
                "tls": {"ca": str(files.ca_cert), "cert": str(files.cert), "key": str(files.key)},
            },
            "api": {"enabled": True, "pin_hash": hash_pin("20240917")},
            "profile": {"elder_name": "王秀英", "contacts": [{"name": "李强", "phone": "13900000002"}]},
            "devices": [
                {"id": "cord-bath", "kind": "pullcord", "transport": "gpio", "pin": 17},
                {
                    "id": "pendant",
                    "kind": "pendant",
                    "transport": "ble",
                    "mac": "A4:C1:38:00:00:01",
                    "key": "231d39c1d7cc1ab1aee224cd096db932",
                },
                {"id": "smoke-kitchen", "kind": "smoke", "transport": "zigbee", "ieee": "00:0d:6f:00:0a:90:69:e7"},
            ],
        }
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(tomli_w.dumps(raw))
        self.config.chmod(0o600)
        self.data.mkdir(parents=True)
        (self.data / "zigbee-network-backup.json").write_text(json.dumps(ZIGBEE_BACKUP))
        with contextlib.closing(sqlite3.connect(self.data / "zigbee.db")) as db:
            db.execute("CREATE TABLE devices (ieee TEXT PRIMARY KEY, nwk INTEGER)")
            db.execute("INSERT INTO devices VALUES ('00:0d:6f:00:0a:90:69:e7', 4660)")
            db.commit()
        (self.data / "reports").mkdir()
        (self.data / "reports" / "report-hub-0042-20240917T101500.pdf").write_bytes(b"%PDF-1.7 commissioning")
        journal = Journal(self.data / "journal.sqlite3")
        for n in range(6):
            event = journal.append(_alarm(hub_id, f"alarm {n}"))
            if n < 4:
                journal.mark_acked(event.event_id, "mqtt")
        journal.close()
        return self

    def files(self) -> dict[str, bytes]:
        """Every file that must come back as it was (the journal is compared by contents)."""
        paths = [self.config, *self.tls.iterdir(), self.data / "zigbee-network-backup.json"]
        paths += list((self.data / "reports").iterdir())
        return {str(p): p.read_bytes() for p in paths}

    def wipe(self) -> None:
        shutil.rmtree(self.root / "etc")
        shutil.rmtree(self.root / "var")

    def journal(self) -> list[Any]:
        journal = Journal(self.data / "journal.sqlite3")
        try:
            return journal.records()
        finally:
            journal.close()


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    return Hub(tmp_path / "hub").make()


def _everything(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_wiped_hub_comes_back_whole(hub: Hub, tmp_path: Path) -> None:
    before, records = hub.files(), hub.journal()
    out = tmp_path / "hub.anju.tar.gz"
    manifest = create_backup(hub.config, out)

    assert stat.S_IMODE(out.stat().st_mode) == 0o600, "the backup holds secrets"
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert names[:2] == ["manifest.json", "config/hub.toml"]
    assert {"tls/key", "tls/cert", "tls/ca", "data/journal.sqlite3", "data/zigbee.db"} <= set(names)
    assert manifest["hub_id"] == HUB and manifest["journal_last_seq"] == 6

    hub.wipe()
    lines = restore_backup(out, hub.config)

    assert hub.files() == before, "configuration, keys, certificates, Zigbee backup and reports as they were"
    for path in [hub.config, *hub.tls.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    config = load_config(hub.config)
    assert [d.id for d in config.devices] == ["cord-bath", "pendant", "smoke-kitchen"]
    assert config.devices[1].key == "231d39c1d7cc1ab1aee224cd096db932" and config.api.pin_hash
    with contextlib.closing(sqlite3.connect(hub.data / "zigbee.db")) as db:
        assert db.execute("SELECT ieee, nwk FROM devices").fetchall() == [("00:0d:6f:00:0a:90:69:e7", 4660)]

    restored = hub.journal()
    assert restored[: len(records)] == records, "every event, with its id, seq and ack, as it was"
    (note,) = restored[len(records) :]
    assert note.event.type is EventType.FAULT_DEVICE and "restored from its backup" in note.event.details["problem"]
    assert note.event.seq > max(6 + SEQ_MARGIN, int(time.time() * 1000) - 60_000), "no number the centre had"
    assert find_damage(hub.data / "journal.sqlite3") is None
    journal = Journal(hub.data / "journal.sqlite3")
    try:  # the restored hub resends what the centre had not acknowledged, then the restore notice
        assert [e.details.get("note") for e in journal.unacknowledged()] == ["alarm 4", "alarm 5", None]
    finally:
        journal.close()
    assert (hub.data / "journal.sqlite3.created").exists(), "a journal deleted later is noticed"
    assert any("restored hub hub-0042" in line for line in lines)


def test_a_backup_taken_while_the_hub_writes_has_every_committed_event(hub: Hub, tmp_path: Path) -> None:
    journal = Journal(hub.data / "journal.sqlite3")  # open, as the running hub holds it: events in the WAL
    try:
        live = journal.append(_alarm(note="while the backup runs"))
        assert (hub.data / "journal.sqlite3-wal").stat().st_size > 0
        out = tmp_path / "hub.anju.tar.gz"
        create_backup(hub.config, out)
    finally:
        journal.close()
    hub.wipe()
    restore_backup(out, hub.config)
    assert live.event_id in {r.event.event_id for r in hub.journal()}


@pytest.mark.skipif(os.geteuid() != 0, reason="restoring for the hub's user needs root, as on a hub")
def test_restored_files_belong_to_the_hubs_user(hub: Hub, tmp_path: Path) -> None:
    out = tmp_path / "hub.anju.tar.gz"
    create_backup(hub.config, out)
    hub.wipe()
    for directory in (hub.root / "etc", hub.data):  # as install-service leaves them: owned by `anju`
        directory.mkdir(parents=True)
        os.chown(directory, 4321, 4321)
    restore_backup(out, hub.config)
    for path in (hub.config, hub.data / "journal.sqlite3", hub.data / "zigbee.db", hub.data / "reports"):
        assert (path.stat().st_uid, path.stat().st_gid) == (4321, 4321), path


def _flip_a_byte(path: Path, at: float) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["byte-early", "byte-middle", "byte-late", "cut-short"])
def test_a_damaged_backup_is_refused_and_nothing_is_written(damage: str, hub: Hub, tmp_path: Path) -> None:
    out = tmp_path / "hub.anju.tar.gz"
    create_backup(hub.config, out)
    if damage == "cut-short":
        out.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    else:
        _flip_a_byte(out, {"byte-early": 0.05, "byte-middle": 0.5, "byte-late": 0.9}[damage])
    hub.wipe()

    with pytest.raises(BackupError, match="nothing was changed"):
        restore_backup(out, hub.config)
    assert not (hub.root / "etc").exists() and not (hub.root / "var").exists(), "nothing written anywhere"


def _retar(source: Path, out: Path, change: dict[str, bytes]) -> None:
    """The same backup with some members' contents replaced and the manifest left as it was."""
    with tarfile.open(source) as old, tarfile.open(out, "w:gz") as new:
        for info in old.getmembers():
            extracted = old.extractfile(info)
            assert extracted is not None
            data = change.get(info.name, extracted.read())
            info.size = len(data)
            new.addfile(info, io.BytesIO(data))


def test_a_member_altered_after_the_backup_is_refused_and_the_hub_is_untouched(hub: Hub, tmp_path: Path) -> None:
    out, altered = tmp_path / "hub.anju.tar.gz", tmp_path / "altered.tar.gz"
    create_backup(hub.config, out)
    _retar(out, altered, {"data/zigbee-network-backup.json": b'{"network_key": "attacker"}'})
    before = _everything(hub.root)

    with pytest.raises(BackupError, match=r"zigbee-network-backup\.json does not match its checksum"):
        restore_backup(altered, hub.config)
    assert _everything(hub.root) == before, "the hub's files are exactly as they were"


def test_a_file_that_is_not_a_backup_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "photos.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("holiday.jpg"), io.BytesIO(b""))
    plain = tmp_path / "notes.tar.gz"
    plain.write_bytes(gzip.compress(b"just some text"))
    for path in (other, plain, tmp_path / "missing.tar.gz"):
        with pytest.raises(BackupError, match="nothing was changed"):
            restore_backup(path, tmp_path / "hub.toml")
    assert not (tmp_path / "hub.toml").exists()


async def test_restore_is_refused_while_the_hub_runs(hub: Hub, tmp_path: Path) -> None:
    out = tmp_path / "hub.anju.tar.gz"
    create_backup(hub.config, out)

    async def status(_: dict[str, Any]) -> dict[str, Any]:
        return {"hub_id": HUB}

    control = ControlServer(socket_path(hub.data), {"status": status})
    await control.start()
    try:
        before = _everything(hub.root)
        with pytest.raises(BackupError, match=r"a hub is running .* stop it first"):
            await asyncio.to_thread(restore_backup, out, hub.config)
        assert _everything(hub.root) == before
    finally:
        await control.close()
    await asyncio.to_thread(restore_backup, out, hub.config)  # stopped: now it goes


def test_another_hubs_files_are_replaced_only_with_force(hub: Hub, tmp_path: Path) -> None:
    out = tmp_path / "hub.anju.tar.gz"
    create_backup(hub.config, out)
    other = Hub(tmp_path / "other")
    other.config, other.data = hub.config, hub.data  # the same places, holding another hub
    hub.wipe()
    other.make("hub-0099")
    before = _everything(hub.root)

    with pytest.raises(BackupError, match=r"belongs to hub hub-0099.*--force"):
        restore_backup(out, hub.config)
    assert _everything(hub.root) == before

    restore_backup(out, hub.config, force=True)
    assert load_config(hub.config).hub_id == HUB
    kept = list(hub.config.parent.glob("hub.toml.before-restore-*"))
    assert len(kept) == 1 and 'hub_id = "hub-0099"' in kept[0].read_text(), "the replaced hub's files are kept"
    assert list(hub.data.glob("journal.sqlite3.before-restore-*"))
    assert {r.event.hub_id for r in hub.journal()} == {HUB}, "the other hub's events are not mixed in"


def test_restoring_the_same_hub_keeps_what_it_raised_after_the_backup(hub: Hub, tmp_path: Path) -> None:
    out = tmp_path / "hub.anju.tar.gz"
    create_backup(hub.config, out)
    journal = Journal(hub.data / "journal.sqlite3")
    late = journal.append(_alarm(note="after the backup"))
    journal.close()

    restore_backup(out, hub.config)

    records = {r.event.event_id: r for r in hub.journal()}
    assert records[late.event_id].event == late and not records[late.event_id].acknowledged, "still to be sent"
    newest = max(r.event.seq or 0 for r in records.values())
    assert newest > late.seq, "new numbers above the replaced journal's"
    assert list(hub.data.glob("journal.sqlite3.before-restore-*")), "the replaced journal is kept"


def test_the_command_line(hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="anju")
    backup.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "hub.anju.tar.gz"
    assert backup.main(parser.parse_args(["backup", "--config", str(hub.config), "--out", str(out)])) == 0
    assert "0600" in capsys.readouterr().out
    _flip_a_byte(out, 0.5)
    assert backup.main(parser.parse_args(["restore", str(out), "--config", str(hub.config)])) == 1
    assert "nothing was changed" in capsys.readouterr().err
