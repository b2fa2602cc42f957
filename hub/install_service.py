"""`anju install-service`: make this machine run the hub as a systemd service.

    sudo /opt/anju/.venv/bin/anju install-service [--config /etc/anju/hub.toml] [--no-start] [--dry-run]

It installs deploy/anju-hub.service (the one unit file, read from the checkout this command runs
from) as /etc/systemd/system/anju-hub.service with this machine's paths filled in: the venv
running this command, the configuration, the data directory, and only those of the hub's
supplementary groups (gpio, dialout, bluetooth, audio) that exist here (systemd refuses to start a
unit naming a group that does not). It creates the `anju` system user (`useradd --system`, no
login, no home of its own) and adds it to those groups, creates the configuration and data
directories owned by it (0750: the configuration holds the PIN hash and key paths), then runs
`systemctl daemon-reload` and `systemctl enable --now anju-hub`.

The configuration's directory and the data directory must be the hub's own: one shared with the
system (/etc, /var/lib, …), hidden from the service (under /home, /root, /tmp: ProtectHome=,
PrivateTmp=) or owned by another user is refused before anything is done.

`--dry-run` prints each step and changes nothing. `--root DIR` does everything under DIR instead
of / (useradd --prefix, `systemctl --root DIR enable`, no daemon-reload or start): for images and
tests. Each step is skipped when it is already done, so running it again is safe.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.files import write_atomic

UNIT_NAME = "anju-hub.service"
CHECKOUT = Path(__file__).resolve().parents[1]
TEMPLATE = CHECKOUT / "deploy" / UNIT_NAME
GROUPS = ("gpio", "dialout", "bluetooth", "audio")
DEFAULT_CONFIG = Path("/etc/anju/hub.toml")
DEFAULT_DATA_DIR = Path("/var/lib/anju")


class InstallError(Exception):
    pass


@dataclass
class Step:
    says: str
    do: Callable[[], None]


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "install-service",
        help="run the hub as a systemd service (user, directories, unit, enable and start)",
        description="Installs the anju-hub systemd unit with this machine's paths, creates the `anju` system "
        "user and its directories, then enables and starts the service. Run as root. Safe to run again.",
        epilog="example: sudo /opt/anju/.venv/bin/anju install-service --config /etc/anju/hub.toml --dry-run",
    )
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="the hub's configuration (default: %(default)s)"
    )
    parser.add_argument(
        "--data-dir", type=Path, help=f"the hub's data directory (default: the configuration's, or {DEFAULT_DATA_DIR})"
    )
    parser.add_argument(
        "--venv",
        type=Path,
        default=Path(sys.prefix),
        help="the venv anju is installed in (default: %(default)s)",
    )
    parser.add_argument("--user", default="anju", help="the system user the hub runs as (default: %(default)s)")
    parser.add_argument("--root", type=Path, default=Path("/"), help="install under this directory instead of /")
    parser.add_argument("--no-start", action="store_true", help="install and enable, but do not start it now")
    parser.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")


def main(args: argparse.Namespace) -> int:
    try:
        steps = plan(args)
    except InstallError as exc:
        print(f"anju install-service: {exc}", file=sys.stderr)
        return 2
    if not args.dry_run and args.root == Path("/") and os.geteuid() != 0:
        print(
            "anju install-service: this creates a system user and writes to /etc: run it as root "
            f"(sudo {sys.argv[0]} install-service …), or see what it would do with --dry-run",
            file=sys.stderr,
        )
        return 1
    for step in steps:
        print(("would: " if args.dry_run else "") + step.says, flush=True)
        if args.dry_run:
            continue
        try:
            step.do()
        except (OSError, subprocess.CalledProcessError, InstallError) as exc:
            print(f"anju install-service: {step.says}: failed: {exc}", file=sys.stderr)
            return 1
    return 0


def plan(args: argparse.Namespace) -> list[Step]:
    """The steps still to do on this machine (or under --root), in order."""
    root: Path = args.root
    config: Path = args.config
    data_dir: Path = args.data_dir or _configured_data_dir(_under(root, config)) or DEFAULT_DATA_DIR
    venv: Path = args.venv
    for name, path in (("--config", config), ("--data-dir", data_dir), ("--venv", venv)):
        if not path.is_absolute() or any(c.isspace() for c in str(path)):
            raise InstallError(f"{name} {path}: give an absolute path without spaces")
    for what, directory in (("the configuration's directory", config.parent), ("the data directory", data_dir)):
        _refuse_shared_directory(what, directory, _under(root, directory), root, args.user)
    if not (venv / "bin" / "anju").exists():
        raise InstallError(f"{venv}/bin/anju does not exist: give the venv anju is installed in with --venv")
    if not TEMPLATE.is_file():
        raise InstallError(f"the unit template {TEMPLATE} is missing: run this from an anju checkout's venv")

    user = args.user
    groups = [g for g in GROUPS if _group_exists(root, g)]
    unit = render_unit(
        TEMPLATE.read_text(),
        exec_start=f"{venv}/bin/anju run --config {config}",
        config_dir=config.parent,
        data_dir=data_dir,
        user=user,
        groups=groups,
        docs=CHECKOUT / "docs" / "OPERATIONS.md",
    )
    on_root = root == Path("/")
    prefix = [] if on_root else ["--prefix", str(root)]
    unit_path = _under(root, Path("/etc/systemd/system") / UNIT_NAME)
    steps: list[Step] = []

    entry = _passwd_entry(root, user)
    if entry is None:
        command = ["useradd", *prefix, "--system", "--user-group", "--home-dir", str(data_dir), "--no-create-home"]
        command += ["--shell", "/usr/sbin/nologin", "--comment", "Anju home-safety hub"]
        command += ["--groups", ",".join(groups)] if groups else []
        steps.append(Step(f"create the system user {user}: {shlex.join([*command, user])}", _run([*command, user])))
    else:
        missing = [g for g in groups if user not in _group_members(root, g)]
        if missing:
            command = ["usermod", *prefix, "--append", "--groups", ",".join(missing), user]
            steps.append(Step(f"add {user} to {', '.join(missing)}: {shlex.join(command)}", _run(command)))

    for directory in (config.parent, data_dir):
        target = _under(root, directory)
        steps.append(Step(f"create {target} (owner {user}, mode 0750)", _make_dir(target, root, user)))
    if not _under(root, config).exists():
        steps.append(Step(f"note: {config} does not exist yet", lambda: _no_config(config)))

    current = unit_path.read_text() if unit_path.exists() else None
    if current != unit:
        steps.append(Step(f"write {unit_path}", lambda: _write_unit(unit_path, unit)))
    if on_root:
        steps.append(Step("systemctl daemon-reload", _run(["systemctl", "daemon-reload"])))
        start = not args.no_start and _under(root, config).exists()
        enable = ["systemctl", "enable", *(["--now"] if start else []), UNIT_NAME]
        steps.append(Step(" ".join(enable), _run(enable)))
    else:
        enable = ["systemctl", "--root", str(root), "enable", UNIT_NAME]
        steps.append(Step(" ".join(enable), _run(enable)))
    return steps


def render_unit(
    template: str,
    *,
    exec_start: str,
    config_dir: Path,
    data_dir: Path,
    user: str,
    groups: list[str],
    docs: Path,
) -> str:
    """The unit with this machine's values in place of the template's, key by key."""
    values = {
        "Documentation": f"file:{docs}",
        "ExecStart": exec_start,
        "WorkingDirectory": str(data_dir),
        "User": user,
        "Group": user,
        "SupplementaryGroups": " ".join(groups),
        "ReadWritePaths": f"{config_dir} -{data_dir}",
    }
    seen: set[str] = set()
    lines = []
    for line in template.splitlines():
        key = line.split("=", 1)[0]
        if "=" in line and not line.startswith("#") and key in values:
            if key in seen:
                raise InstallError(f"{TEMPLATE}: {key}= appears twice")
            seen.add(key)
            line = f"{key}={values[key]}"
        lines.append(line)
    if missing := sorted(set(values) - seen):
        raise InstallError(f"{TEMPLATE}: no {', '.join(missing)} line to fill in")
    return "\n".join(lines) + "\n"


def _configured_data_dir(config: Path) -> Path | None:
    """The data directory the configuration names (the unit must let the hub write there); a
    configuration that is there but invalid stops the install (the service could not start)."""
    from hub.config import ConfigError, load_config

    if not config.exists():
        return None
    try:
        return load_config(config).data_dir
    except ConfigError as exc:
        raise InstallError(f"the configuration is not valid, fix it first: {exc}") from None


def _refuse_shared_directory(what: str, directory: Path, target: Path, root: Path, user: str) -> None:
    """The configuration's and the data directory are the hub's own: install-service makes them
    owned by its user, mode 0750, and the unit lets the hub write there. A directory other things
    live in (/etc, /var/lib, /opt, a home) must never be given away like that, and one under /home,
    /root, /tmp or /run is out of the hub's sight (ProtectHome=, PrivateTmp=): the hub could not
    start. So both must be a directory of the hub's own, not yet owned by another user."""
    parts = directory.parts
    if len(parts) < 2 or str(directory) in _SHARED_DIRECTORIES:
        raise InstallError(
            f"{what} {directory} is shared with the rest of the system: it would be given to {user} (mode "
            f"0750) and made writable by the hub; use a directory of its own, e.g. {DEFAULT_CONFIG.parent} "
            f"for --config, {DEFAULT_DATA_DIR} for --data-dir"
        )
    hidden = next((top for top in _HIDDEN_FROM_THE_SERVICE if directory.is_relative_to(top)), None)
    if hidden is not None:
        raise InstallError(
            f"{what} {directory} is under {hidden}, which the service cannot see (ProtectHome=, PrivateTmp=): "
            f"use e.g. {DEFAULT_CONFIG.parent} for --config, {DEFAULT_DATA_DIR} for --data-dir"
        )
    try:
        owner = target.stat().st_uid
    except FileNotFoundError:
        return
    entry = _passwd_entry(root, user)
    if owner != 0 and (entry is None or owner != entry[0]):
        raise InstallError(
            f"{what} {directory} belongs to another user (uid {owner}); it would be given to {user}: "
            "use a directory of the hub's own"
        )


# Directories the rest of the system lives in: never handed to the hub's user.
_SHARED_DIRECTORIES = frozenset(
    {
        "/etc", "/var", "/var/lib", "/var/local", "/var/opt", "/var/cache", "/var/log", "/var/spool",
        "/opt", "/srv", "/usr", "/usr/local", "/usr/share", "/usr/lib", "/home", "/root", "/tmp",
        "/var/tmp", "/run", "/boot", "/mnt", "/media", "/dev", "/proc", "/sys", "/bin", "/sbin",
        "/lib", "/lib64", "/usr/bin", "/usr/sbin", "/etc/systemd", "/etc/default",
    }
)  # fmt: skip
# What the unit's ProtectHome= and PrivateTmp= hide from the hub.
_HIDDEN_FROM_THE_SERVICE = (Path("/home"), Path("/root"), Path("/run/user"), Path("/tmp"), Path("/var/tmp"))


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


def _run(command: list[str]) -> Callable[[], None]:
    def run() -> None:
        if shutil.which(command[0]) is None:
            raise InstallError(f"{command[0]} is not installed")
        subprocess.run(command, check=True)

    return run


def _make_dir(target: Path, root: Path, user: str) -> Callable[[], None]:
    def make() -> None:
        target.mkdir(parents=True, exist_ok=True)
        entry = _passwd_entry(root, user)
        if entry is None:
            raise InstallError(f"no user {user}")
        os.chown(target, entry[0], entry[1])
        target.chmod(0o750)

    return make


def _write_unit(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode(), mode=0o644)


def _no_config(config: Path) -> None:
    print(
        f"  the service is enabled but not started: write {config} first (docs/hub.example.toml, or a bundle "
        f"from `anju provision import`), check it with `anju config check {config}`, then "
        "`systemctl start anju-hub`",
        flush=True,
    )


def _passwd_entry(root: Path, user: str) -> tuple[int, int] | None:
    """(uid, gid) of `user` on the machine (or in ROOT/etc/passwd), or None."""
    if root == Path("/"):
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            return None
        return entry.pw_uid, entry.pw_gid
    for fields in _colon_file(root / "etc/passwd"):
        if len(fields) > 3 and fields[0] == user:
            return int(fields[2]), int(fields[3])
    return None


def _group_exists(root: Path, group: str) -> bool:
    if root == Path("/"):
        try:
            grp.getgrnam(group)
        except KeyError:
            return False
        return True
    return any(fields[0] == group for fields in _colon_file(root / "etc/group"))


def _group_members(root: Path, group: str) -> list[str]:
    if root == Path("/"):
        return list(grp.getgrnam(group).gr_mem)
    for fields in _colon_file(root / "etc/group"):
        if fields[0] == group and len(fields) > 3:
            return [m for m in fields[3].split(",") if m]
    return []


def _colon_file(path: Path) -> list[list[str]]:
    try:
        return [line.split(":") for line in path.read_text().splitlines() if line and not line.startswith("#")]
    except FileNotFoundError:
        return []
