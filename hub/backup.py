"""`anju backup` and `anju restore`: the hub's whole state in one file, and back onto a hub.

A backup is a gzip'd tar file, mode 0600, written atomically (hub.files). It holds secrets (the
TLS key, BTHome keys, the DC-09 key and the installer PIN's hash are in it): keep it as you keep
the hub. Its members, in this order:

    manifest.json                 format, hub id, time, the journal's last sequence number, and
                                  the size and sha256 of every other member
    config/hub.toml               the configuration file as it is
    tls/ca, tls/cert, tls/key     the files [mqtt.tls] names, if any
    data/journal.sqlite3          a consistent copy (SQLite's online backup API: safe while the hub runs)
    data/zigbee.db                zigpy's database (network settings, devices), copied the same way
    data/zigbee-network-backup.json, data/zigbee-devices.json, data/reports/…   as they are

`restore` reads the whole file and checks every checksum before it changes anything; a damaged,
cut-short or foreign file is refused and nothing is written. It refuses while a hub answers on
the data directory's control socket, and over a hub with another hub id unless `--force`. Files
go where the restored configuration says (its data directory taken from the configuration file's
folder if relative); each is staged and renamed into place, and a file it replaces with other
contents is kept as `<name>.before-restore-<time>`. The restored journal numbers its next events
above every number the centre can have had: above the backup's last plus a margin, above the
replaced journal's last, and above the current time in milliseconds (as a journal started over
does, hub.service). The replaced journal's unacknowledged events (same hub) are carried over, and
the restore is reported to the centre as a fault event the hub sends when it starts.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import sqlite3
import sys
import tarfile
import tempfile
import time
import tomllib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from hub.config import ConfigError, HubConfig, load_config
from hub.control import request, socket_path
from hub.files import atomic_file, fsync_directory, write_atomic
from hub.journal import Journal, JournalError
from hub.journal_recovery import carry_into, carry_over, find_damage, read_only, salvage
from hub.model import Event, EventType

FORMAT = "anju-backup/1"
MANIFEST = "manifest.json"
CONFIG_MEMBER = "config/hub.toml"
JOURNAL = "journal.sqlite3"
# SQLite files copied with the online backup API; the rest of the data directory's state as is.
SQLITE_FILES = (JOURNAL, "zigbee.db")
PLAIN_FILES = ("zigbee-network-backup.json", "zigbee-devices.json")
REPORTS = "reports"
TLS_ROLES = ("ca", "cert", "key")
# Sequence numbers left unused above a restored journal's last: more events than a hub raises in
# years, for those it raised after the backup (when the clock cannot be trusted to be above them).
SEQ_MARGIN = 1_000_000
_CHUNK = 1 << 20

SECRETS_WARNING = (
    "The backup holds the hub's secrets (TLS key, BTHome keys, DC-09 key, the installer PIN's hash) "
    "and the household's personal data: it is written mode 0600; keep it as safe as the hub itself."
)


class BackupError(Exception):
    """A backup cannot be made or restored; the message says why and what to do."""


@dataclass(frozen=True)
class Member:
    """One file in a backup: its name in the archive, and the copy of the hub's file it is made from."""

    name: str
    path: Path


# -- the command line ---------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    backup = sub.add_parser(
        "backup",
        help="write the hub's whole state to one file (it holds secrets: mode 0600)",
        description="Writes the configuration, the TLS key and certificates it names, the journal (a "
        "consistent copy, safe while the hub runs), the Zigbee network backup and database and the "
        "commissioning reports to one .tar.gz file with a manifest of checksums. " + SECRETS_WARNING,
        epilog="example: anju backup --config /etc/anju/hub.toml --out /media/usb/hub-0001.anju.tar.gz",
    )
    backup.add_argument("--config", type=Path, required=True, help="the hub's configuration (TOML)")
    backup.add_argument(
        "--out", type=Path, help="the backup file (default: anju-backup-HUB-TIME.tar.gz in this directory)"
    )
    restore = sub.add_parser(
        "restore",
        help="put a backup back onto this hub (stop the hub first)",
        description="Checks the whole backup first (a damaged or cut-short file changes nothing), then "
        "writes the configuration to --config and every other file where that configuration says; a file "
        "replaced with other contents is kept as NAME.before-restore-TIME. Refused while a hub runs on "
        "the data directory, and over a hub with another hub id unless --force. The restored journal "
        "goes on numbering events above every number the centre can have had. " + SECRETS_WARNING,
        epilog="example: systemctl stop anju-hub && anju restore hub-0001.anju.tar.gz --config /etc/anju/hub.toml",
    )
    restore.add_argument("file", type=Path, help="a file written by `anju backup`")
    restore.add_argument("--config", type=Path, required=True, help="where the hub's configuration goes")
    restore.add_argument("--force", action="store_true", help="replace a hub that has another hub id")


def main(args: argparse.Namespace) -> int:
    try:
        if args.command == "backup":
            out = args.out or Path(f"anju-backup-{_hub_id(args.config)}-{_stamp()}.tar.gz")
            manifest = create_backup(args.config, out)
            print(
                f"{out}: backup of hub {manifest['hub_id']}, {len(manifest['members'])} file(s), "
                f"journal up to seq {manifest['journal_last_seq']}; mode 0600: it holds the hub's secrets"
            )
        else:
            for line in restore_backup(args.file, args.config, force=args.force):
                print(line)
    except BackupError as exc:
        print(f"anju {args.command}: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


# -- backup -------------------------------------------------------------------------------------


def create_backup(config_path: Path, out: Path) -> dict[str, Any]:
    """Write the backup of the hub configured by `config_path` to `out`; returns its manifest."""
    config = load_config(config_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".anju-backup-") as scratch:
        members = _members(config_path, config, Path(scratch))
        last_seq = _last_seq(next((m.path for m in members if m.name == f"data/{JOURNAL}"), None))
        manifest = {
            "format": FORMAT,
            "hub_id": config.hub_id,
            "created_at": datetime.now(UTC).isoformat(),
            "journal_last_seq": last_seq,
            "source": {"config": str(config_path.resolve()), "data_dir": str(config.data_dir)},  # for a person
            "members": [{"name": m.name, "size": m.path.stat().st_size, "sha256": _sha256(m.path)} for m in members],
        }
        try:
            with atomic_file(out, 0o600) as file, tarfile.open(fileobj=file, mode="w:gz") as tar:
                _add(tar, MANIFEST, json.dumps(manifest, indent=1).encode())
                for member in members:
                    with member.path.open("rb") as source:
                        _add_file(tar, member.name, source, member.path.stat().st_size)
        except OSError as exc:
            raise BackupError(f"cannot write {out} ({exc.strerror or exc}); nothing was written") from exc
    fsync_directory(out.parent)
    return manifest


def _members(config_path: Path, config: HubConfig, scratch: Path) -> list[Member]:
    """Every file of the hub's state, copied into `scratch` first (a file the running hub replaces
    meanwhile must not differ between its checksum and its copy): SQLite files through the online
    backup API, the rest as they are."""
    members = [_snapshot(CONFIG_MEMBER, config_path, scratch)]
    if config.mqtt.tls is not None:
        for role in TLS_ROLES:
            path = getattr(config.mqtt.tls, role)
            if not path.is_file():
                raise BackupError(f"{config_path}: [mqtt.tls] {role} = {str(path)!r} is missing; nothing was written")
            members.append(_snapshot(f"tls/{role}", path, scratch))
    data = config.data_dir
    for name in SQLITE_FILES:
        if (data / name).is_file():
            members.append(Member(f"data/{name}", _sqlite_copy(data / name, scratch / "data" / name)))
    plain = [data / name for name in PLAIN_FILES]
    if (data / REPORTS).is_dir():
        plain += sorted((data / REPORTS).iterdir())
    members += [_snapshot(f"data/{p.relative_to(data)}", p, scratch) for p in plain if p.is_file()]
    return members


def _snapshot(name: str, path: Path, scratch: Path) -> Member:
    copy = scratch / name
    copy.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(path, copy)
    except OSError as exc:
        raise BackupError(f"cannot read {path} ({exc.strerror or exc}); nothing was written") from exc
    return Member(name, copy)


def _sqlite_copy(source: Path, copy: Path) -> Path:
    """A consistent copy of a SQLite file that may be in use (the online backup API, read-only)."""
    copy.parent.mkdir(parents=True, exist_ok=True)
    try:
        with read_only(source) as db, contextlib.closing(sqlite3.connect(copy)) as target:
            db.backup(target)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy {source} ({exc}); nothing was written") from exc
    return copy


def _last_seq(journal: Path | None) -> int | None:
    if journal is None:
        return None
    with contextlib.suppress(sqlite3.Error), read_only(journal) as db:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return int(row[0]) if row else 0
    return None


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    _add_file(tar, name, io.BytesIO(data), len(data))


def _add_file(tar: tarfile.TarFile, name: str, source: IO[bytes], size: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(time.time())
    tar.addfile(info, source)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# -- restore ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """Where a backup's files go on this hub, and the configuration being restored."""

    config_path: Path
    hub: HubConfig
    data_dir: Path
    tls: dict[str, Path]

    def of(self, name: str) -> Path:
        kind, _, rest = name.partition("/")
        if name == CONFIG_MEMBER:
            return self.config_path
        if kind == "tls":
            return self.tls[rest]
        return self.data_dir / rest


def restore_backup(archive: Path, config_path: Path, *, force: bool = False) -> list[str]:
    """Restore `archive` onto this hub, the configuration to `config_path`; returns what was done,
    one line each. Raises BackupError, having changed nothing, when the backup or the situation is
    wrong (a failure while writing the files says which were written)."""
    with _opened(archive) as tar:
        members = iter(tar)
        manifest = _read_manifest(tar, next(members, None), archive)
        config_bytes = _read_config(tar, next(members, None), manifest, archive)
        target = _targets(config_bytes, config_path)
        _refuse_running_hub(target)
        _refuse_other_hub(manifest["hub_id"], target, force)
        created = _first_missing(target.data_dir)  # removed again if the restore stops before writing
        _make_dirs(target.data_dir)
        staging = Path(tempfile.mkdtemp(dir=target.data_dir, prefix=".restore-"))
        try:
            staged = _stage(tar, members, manifest, archive, staging)
            staged[CONFIG_MEMBER] = _staged_bytes(staging / CONFIG_MEMBER, config_bytes)
            staged[f"data/{JOURNAL}"], lines = _prepare_journal(staging / "data" / JOURNAL, manifest, target)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile):
                raise BackupError(f"cannot unpack into {staging} ({exc.strerror or exc}); nothing was changed") from exc
            raise
    try:
        lines += _commit(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [f"restored hub {manifest['hub_id']} from its backup of {manifest['created_at']}", *lines]


@contextlib.contextmanager
def _opened(archive: Path) -> Iterator[tarfile.TarFile]:
    """The backup, read as a tar file: a file damaged or cut short raises BackupError."""
    damaged = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)
    try:
        tar = tarfile.open(archive, mode="r:gz")
    except damaged as exc:
        raise BackupError(f"{archive}: not a backup, or damaged ({exc}); nothing was changed") from exc
    except OSError as exc:
        raise BackupError(f"{archive}: cannot read it ({exc.strerror or exc}); nothing was changed") from exc
    try:
        with tar:
            yield tar
    except damaged as exc:
        raise BackupError(
            f"{archive}: damaged or cut short ({exc or type(exc).__name__}); nothing was changed: use another copy"
        ) from exc


def _read_manifest(tar: tarfile.TarFile, info: tarfile.TarInfo | None, archive: Path) -> dict[str, Any]:
    if info is None or info.name != MANIFEST or not info.isfile():
        raise BackupError(f"{archive}: not written by `anju backup` (no {MANIFEST} first); nothing was changed")
    try:
        manifest = json.loads(_read_member(tar, info))
        members = {m["name"]: m for m in manifest["members"]}
        hub_id = manifest["hub_id"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{archive}: its {MANIFEST} is damaged ({exc}); nothing was changed") from exc
    if manifest.get("format") != FORMAT:
        raise BackupError(
            f"{archive}: format {manifest.get('format')!r}; this hub reads {FORMAT!r}; nothing was changed"
        )
    if CONFIG_MEMBER not in members or not isinstance(hub_id, str):
        raise BackupError(f"{archive}: its manifest names no configuration; nothing was changed")
    manifest["by_name"] = members
    return manifest


def _read_config(tar: tarfile.TarFile, info: tarfile.TarInfo | None, manifest: dict[str, Any], archive: Path) -> bytes:
    if info is None or info.name != CONFIG_MEMBER or not info.isfile():
        raise BackupError(f"{archive}: the configuration is not where `anju backup` puts it; nothing was changed")
    data = _read_member(tar, info)
    _check(archive, manifest["by_name"][CONFIG_MEMBER], len(data), hashlib.sha256(data).hexdigest())
    return data


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    source = tar.extractfile(info)
    assert source is not None  # a regular file
    return source.read()


def _check(archive: Path, expected: dict[str, Any], size: int, sha256: str) -> None:
    if size != expected.get("size") or sha256 != expected.get("sha256"):
        raise BackupError(
            f"{archive}: {expected['name']} does not match its checksum (damaged or altered); "
            "nothing was changed: use another copy"
        )


def _targets(config_bytes: bytes, config_path: Path) -> _Target:
    try:
        config = HubConfig.model_validate(tomllib.loads(config_bytes.decode()))
    except (ValueError, ValidationError) as exc:
        raise BackupError(f"the backup's configuration is not valid ({exc}); nothing was changed") from exc
    data_dir = config.data_dir if config.data_dir.is_absolute() else (config_path.parent / config.data_dir).resolve()
    tls = {} if config.mqtt.tls is None else {role: getattr(config.mqtt.tls, role) for role in TLS_ROLES}
    return _Target(config_path, config, data_dir, tls)


def _refuse_running_hub(target: _Target) -> None:
    """No restore under a running hub: its control socket must not answer (the restored one's data
    directory, and the one the configuration being replaced names)."""
    dirs = {target.data_dir}
    with contextlib.suppress(ConfigError):
        dirs.add(load_config(target.config_path).data_dir)
    for directory in sorted(dirs):
        try:
            request(socket_path(directory), {"cmd": "status"}, timeout=5)
        except (OSError, ValueError):
            continue
        raise BackupError(
            f"a hub is running with data directory {directory}: stop it first (systemctl stop anju-hub); "
            "nothing was changed"
        )


def _existing_hub_ids(target: _Target) -> dict[str, str]:
    """The hub ids found where the backup would go: {where: hub id}."""
    found = {}
    with contextlib.suppress(OSError, ValueError):
        hub_id = tomllib.loads(target.config_path.read_text(encoding="utf-8")).get("hub_id")
        if isinstance(hub_id, str):
            found[str(target.config_path)] = hub_id
    journal = target.data_dir / JOURNAL
    if journal.is_file():
        with contextlib.suppress(sqlite3.Error), read_only(journal) as db:
            row = db.execute("SELECT hub_id FROM events ORDER BY seq DESC LIMIT 1").fetchone()
            if row:
                found[str(journal)] = str(row[0])
    return found


def _refuse_other_hub(hub_id: str, target: _Target, force: bool) -> None:
    others = {where: found for where, found in _existing_hub_ids(target).items() if found != hub_id}
    if others and not force:
        where, found = next(iter(others.items()))
        raise BackupError(
            f"{where} belongs to hub {found}, the backup to hub {hub_id}: to replace that hub add --force "
            "(its files are kept as NAME.before-restore-TIME); nothing was changed"
        )


def _stage(
    tar: tarfile.TarFile, members: Iterator[tarfile.TarInfo], manifest: dict[str, Any], archive: Path, staging: Path
) -> dict[str, Path]:
    """Extract the remaining members into `staging`, each checked against the manifest; every
    member the manifest names must be there, and nothing else."""
    expected = manifest["by_name"]
    staged: dict[str, Path] = {}
    for info in members:
        entry = expected.get(info.name)
        if entry is None or info.name in staged or not info.isfile() or not _safe(info.name):
            raise BackupError(f"{archive}: unexpected member {info.name!r}; nothing was changed")
        staged[info.name] = _extract(tar, info, entry, archive, staging / info.name)
    missing = set(expected) - set(staged) - {CONFIG_MEMBER}
    if missing:
        raise BackupError(f"{archive}: cut short, {', '.join(sorted(missing))} missing; nothing was changed")
    return staged


def _safe(name: str) -> bool:
    """A member name that stays inside its place: tls/ROLE, or data/… without `..`."""
    parts = name.split("/")
    if parts[0] == "tls":
        return len(parts) == 2 and parts[1] in TLS_ROLES
    return len(parts) >= 2 and parts[0] == "data" and all(p not in ("", ".", "..") for p in parts)


def _extract(tar: tarfile.TarFile, info: tarfile.TarInfo, entry: dict[str, Any], archive: Path, path: Path) -> Path:
    source = tar.extractfile(info)
    assert source is not None  # a regular file
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with atomic_file(path, 0o600) as file:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            file.write(chunk)
    _check(archive, entry, size, digest.hexdigest())
    return path


def _staged_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(path, data)
    return path


def _prepare_journal(path: Path, manifest: dict[str, Any], target: _Target) -> tuple[Path, list[str]]:
    """Make the staged journal go on where the centre is: the replaced journal's unacknowledged
    events carried over (the same hub's), the sequence floor raised above every number the centre
    can have had, and the restore recorded as an event for the centre."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists() and find_damage(path) is not None:  # backed up damaged: keep what can be read
        damaged = path.with_name(JOURNAL + ".damaged")
        path.replace(damaged)
        carry_over(damaged, path)
    current = target.data_dir / JOURNAL
    replaced = salvage(current) if current.is_file() else None
    same_hub = all(found == manifest["hub_id"] for found in _existing_hub_ids(target).values())
    floors = [int(time.time() * 1000), (manifest.get("journal_last_seq") or 0) + SEQ_MARGIN]
    carried = 0
    try:
        journal = Journal(path)
        try:
            if replaced is not None and replaced.error is None:
                floors.append(replaced.last_seq or 0)
                if same_hub:
                    carried = carry_into(journal, replaced)  # with their deliveries, and the open windows
            floor = max(*floors, journal.last_sequence())
            journal.start_sequence_after(floor)
            journal.append(_restored_event(target.hub, manifest, floor))
            pending = len(journal.unacknowledged())
        finally:
            journal.close()
    except JournalError as exc:
        raise BackupError(f"cannot prepare the restored journal ({exc}); nothing was changed") from exc
    lines = [f"journal: {pending} event(s) to send when the hub starts; new events numbered above {floor}"]
    if carried:
        lines.append(f"journal: {carried} unacknowledged event(s) of the replaced journal carried over")
    return path, lines


def _restored_event(config: HubConfig, manifest: dict[str, Any], floor: int) -> Event:
    return config.origin().event(
        EventType.FAULT_DEVICE,
        None,
        component="journal",
        problem=f"the hub was restored from its backup of {manifest['created_at']}; events raised after it "
        "that the centre had not acknowledged then are lost",
        action=f"restored by `anju restore`; sequence numbers go on above {floor}",
        backup_created_at=manifest["created_at"],
        backup_last_seq=manifest.get("journal_last_seq"),
    )


def _commit(staged: dict[str, Path], target: _Target) -> list[str]:
    """Put the staged files in place: the data directory's first (renamed, same file system), then
    the TLS files, the configuration last. A replaced file with other contents is kept aside."""
    stamp = _stamp()
    kept: list[Path] = []
    names = sorted(n for n in staged if n.startswith("data/"))
    names += [*sorted(n for n in staged if n.startswith("tls/")), CONFIG_MEMBER]
    done: list[str] = []
    try:
        for name in names:
            dest = target.of(name)
            _make_dirs(dest.parent)
            kept += _keep_aside(dest, staged[name], stamp)
            if name.startswith("data/"):
                os.replace(staged[name], dest)
            else:
                write_atomic(dest, staged[name].read_bytes(), 0o600)
            _owned_like_parent(dest)
            fsync_directory(dest.parent)
            done.append(str(dest))
        _mark_journal_created(target.data_dir / JOURNAL)
    except OSError as exc:
        raise BackupError(
            f"cannot write {exc.filename or 'a file'} ({exc.strerror or exc}); restored so far: "
            f"{', '.join(done) or 'nothing'}; files replaced are kept as NAME.before-restore-{stamp}"
        ) from exc
    lines = [f"restored {len(done)} file(s) (mode 0600): {', '.join(done)}"]
    if kept:
        lines.append(f"kept what they replaced: {', '.join(str(p) for p in kept)}")
    return lines


def _keep_aside(dest: Path, new: Path, stamp: str) -> list[Path]:
    """Move `dest` out of the way unless it already holds `new`'s contents; a SQLite file with its
    WAL and index (a stale WAL next to a restored database would be replayed into it)."""
    sqlite_file = dest.name in SQLITE_FILES and dest.parent.name != REPORTS
    suffixes = ("", "-wal", "-shm") if sqlite_file else ("",)
    if not dest.exists() and not sqlite_file:
        return []
    if not sqlite_file and _sha256(dest) == _sha256(new):
        return []
    kept = []
    for suffix in suffixes:
        old = dest.with_name(dest.name + suffix)
        if old.exists():
            aside = dest.with_name(f"{dest.name}.before-restore-{stamp}{suffix}")
            old.replace(aside)
            kept.append(aside)
    return kept


def _mark_journal_created(journal: Path) -> None:
    """The service's marker that a journal was made here (a journal gone later is then reported)."""
    marker = journal.with_name(journal.name + ".created")
    if not marker.exists():
        write_atomic(marker, f"journal restored {datetime.now(UTC).isoformat()}\n".encode(), 0o644)
        _owned_like_parent(marker)


def _make_dirs(directory: Path) -> None:
    """Create `directory` and its missing parents, mode 0700, each owned like the one it is in."""
    if directory.exists():
        return
    _make_dirs(directory.parent)
    directory.mkdir(mode=0o700)
    _owned_like_parent(directory)


def _owned_like_parent(path: Path) -> None:
    """Run as root (sudo anju restore), give a restored file the owner of its directory (the hub's
    user owns /etc/anju and /var/lib/anju): the hub must be able to read what was restored."""
    if os.geteuid() != 0:
        return
    parent = path.parent.stat()
    os.chown(path, parent.st_uid, parent.st_gid)


# -- small helpers ------------------------------------------------------------------------------


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of `path` that does not exist yet (None: it exists)."""
    missing = None
    for directory in (path, *path.parents):
        if directory.exists():
            break
        missing = directory
    return missing


def _hub_id(config_path: Path) -> str:
    return load_config(config_path).hub_id


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
