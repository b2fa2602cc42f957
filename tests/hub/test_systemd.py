"""The hub as a systemd service: the unit file, the watchdog (a hung hub is aborted and started
again), `anju install-service`, and structured, redacted logs to the journal.

The watchdog tests run the real hub (`python -m hub.cli run`) under simulator.fake_systemd, which
reads the real sd_notify datagrams and does what systemd does when they stop. The journal tests
bind a real datagram socket where journald's would be."""

from __future__ import annotations

import configparser
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from hub import install_service, journald, watchdog
from hub.api.security import RedactingFilter
from hub.cli import main as anju
from simulator.broker import PrivateBroker
from simulator.fake_systemd import FakeSystemd

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "anju-hub.service"
WATCHDOG_S = 2.0  # WatchdogSec= for the tests: pings every second


def hub_config(tmp_path: Path, broker: PrivateBroker, prompt_cache: Path) -> Path:
    path = tmp_path / "hub.toml"
    config = {
        "hub_id": "hub-sd",
        "county": "minle",
        "household_id": "hh-sd",
        "data_dir": str(tmp_path / "hub"),
        "gpio": {"pin_factory": "mock"},
        "audio": {"player": "record", "cache_dir": str(prompt_cache)},
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5},
        "devices": [{"id": "cord", "kind": "pullcord", "transport": "gpio", "pin": 17}],
    }
    path.write_text(tomli_w.dumps(config))
    return path


@pytest.fixture
def supervised(tmp_path: Path, broker: PrivateBroker, prompt_cache: Path) -> Iterator[FakeSystemd]:
    """The real hub under the fake systemd, READY; stopped with SIGTERM at the end."""
    systemd = FakeSystemd(
        [sys.executable, "-m", "hub.cli", "run", "--config", str(hub_config(tmp_path, broker, prompt_cache))],
        tmp_path / "systemd",
        watchdog_s=WATCHDOG_S,
        env={watchdog.HANG_HOOK_ENV: "1"},
        abort_timeout_s=2.0,
    )
    systemd.start()
    try:
        systemd.wait_for("READY=1", timeout=60)
        yield systemd
    finally:
        systemd.stop()


def test_the_hub_pings_the_watchdog_and_says_its_status(supervised: FakeSystemd) -> None:
    first = supervised.wait_for("WATCHDOG=1", timeout=WATCHDOG_S)
    second = supervised.wait_for("WATCHDOG=1", timeout=WATCHDOG_S)
    assert second.at - first.at < WATCHDOG_S * 0.75, "pings come at half the watchdog time"
    supervised.wait_for("STATUS=1 device, uplink mqtt ok, 0 pending", timeout=15, already=True)

    assert supervised.stop() == 0
    assert supervised.messages("STOPPING=1"), "a stop on purpose is announced (no watchdog alarm)"
    assert supervised.restarts == 0
    if not journald.JOURNAL_SOCKET.exists():  # no journald here: lines on stderr with priority prefixes
        assert "<6>hub.service: hub hub-sd ready" in supervised.log_path.read_text()


def test_a_hung_event_loop_is_aborted_and_the_hub_restarted(supervised: FakeSystemd) -> None:
    hung = supervised.wait_for("WATCHDOG=1", timeout=WATCHDOG_S).pid
    os.kill(hung, signal.SIGUSR2)  # the test-only hang: the loop blocks, its threads go on

    again = supervised.wait_for("READY=1", timeout=60)

    assert again.pid != hung and supervised.restarts == 1
    assert supervised.exits == [-signal.SIGABRT], "ended by the watchdog's SIGABRT, no SIGKILL needed"
    assert any("watchdog timeout" in h.what for h in supervised.history)
    log = supervised.log_path.read_text(errors="replace")
    assert "_hang_the_loop_for_a_test" in log, "the abort left every thread's stack in the log: where it hung"
    supervised.wait_for("WATCHDOG=1", timeout=WATCHDOG_S)  # the new hub pings


def test_a_frozen_hub_is_killed_when_it_ignores_the_abort_and_restarted(supervised: FakeSystemd) -> None:
    frozen = supervised.pid
    os.kill(frozen, signal.SIGSTOP)  # nothing runs: not even a signal handler

    again = supervised.wait_for("READY=1", timeout=60)

    assert again.pid != frozen
    assert supervised.exits == [-signal.SIGKILL], "SIGABRT waited, then SIGKILL, as systemd does"


def test_the_watchdog_is_only_for_the_process_systemd_names() -> None:
    assert watchdog.interval_s({"WATCHDOG_USEC": "30000000"}, pid=42) == 15.0
    assert watchdog.interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, pid=42) == 15.0
    assert watchdog.interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "41"}, pid=42) is None
    assert watchdog.interval_s({}, pid=42) is None


# --- the unit file


def test_the_unit_asks_for_the_watchdog_restarts_and_hardening() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["WatchdogSec"] == "30s" and service["Restart"] == "always"
    assert unit["Unit"]["StartLimitIntervalSec"] == "0", "Restart=always never gives up"
    assert service["User"] == "anju" and service["StateDirectory"] == "anju"
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert "/etc/anju" in service["ReadWritePaths"], "the installer's web app saves the configuration"
    for breaks_hardware in ("PrivateDevices", "DevicePolicy", "ProtectClock", "MemoryDenyWriteExecute"):
        assert breaks_hardware not in service
    assert "network-online.target" not in UNIT.read_text(), "the hub must not wait for the network to start"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_installed_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    unit = install_service.render_unit(
        UNIT.read_text(),
        exec_start=f"{sys.prefix}/bin/anju run --config /etc/anju/hub.toml",
        config_dir=Path("/etc/anju"),
        data_dir=Path("/var/lib/anju"),
        user="anju",
        groups=["audio"],
        docs=REPO / "docs" / "OPERATIONS.md",
    )
    (tmp_path / "anju-hub.service").write_text(unit)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "anju-hub.service")], capture_output=True, text=True
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# --- anju install-service


def fake_root(tmp_path: Path, groups: list[str]) -> Path:
    """A machine's /etc with a root user and the given groups, for useradd --prefix."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    lines = ["root:x:0:", *(f"{name}:x:{900 + i}:" for i, name in enumerate(groups))]
    (root / "etc/group").write_text("\n".join(lines) + "\n")
    (root / "etc/gshadow").write_text("".join(f"{line.split(':')[0]}:*::\n" for line in lines))
    if Path("/etc/login.defs").exists():
        shutil.copy("/etc/login.defs", root / "etc/login.defs")
    return root


def test_install_service_dry_run_says_everything_and_changes_nothing(tmp_path: Path, capsys) -> None:
    root = fake_root(tmp_path, ["gpio", "audio"])
    before = sorted(p.relative_to(root) for p in root.rglob("*"))

    assert anju(["install-service", "--root", str(root), "--dry-run"]) == 0

    said = capsys.readouterr().out
    assert "would: create the system user anju: useradd" in said and "--groups gpio,audio" in said
    assert f"would: write {root}/etc/systemd/system/anju-hub.service" in said
    assert "systemctl --root" in said
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_install_service_takes_the_data_directory_from_the_configuration(tmp_path: Path, capsys) -> None:
    root = fake_root(tmp_path, [])
    config = root / "etc/anju/hub.toml"
    config.parent.mkdir(parents=True)
    config.write_text('hub_id = "hub-1"\ncounty = "minle"\nhousehold_id = "hh-1"\ndata_dir = "/srv/anju"\n')

    assert anju(["install-service", "--root", str(root), "--dry-run"]) == 0
    assert f"would: create {root}/srv/anju (owner anju, mode 0750)" in capsys.readouterr().out

    config.write_text('hub_id = "hub-1"\n')
    assert anju(["install-service", "--root", str(root), "--dry-run"]) == 2
    assert "the configuration is not valid, fix it first" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        (["--config", "/etc/hub.toml"], "the configuration's directory /etc is shared with the rest of the system"),
        (["--data-dir", "/var/lib"], "the data directory /var/lib is shared with the rest of the system"),
        (["--config", "/home/pi/hub.toml"], "is under /home, which the service cannot see"),
        (["--data-dir", "/tmp/anju"], "is under /tmp, which the service cannot see"),
        (["--data-dir", "/srv/someone"], "belongs to another user (uid 1234)"),
    ],
)
def test_install_service_never_gives_a_shared_or_hidden_directory_to_the_hub(
    tmp_path: Path, capsys, options: list[str], refusal: str
) -> None:
    """`--config /etc/hub.toml` once planned to chown /etc to the hub's user, mode 0750, and let the
    unit write all of it; a home directory was given away, and the unit could not see it anyway."""
    if "uid 1234" in refusal and os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    root = fake_root(tmp_path, [])
    (root / "srv/someone").mkdir(parents=True)
    if os.geteuid() == 0:
        os.chown(root / "srv/someone", 1234, 1234)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))

    assert anju(["install-service", "--root", str(root), "--dry-run", *options]) == 2

    out, err = capsys.readouterr()
    assert refusal in err and "would:" not in out
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None, reason="needs root and useradd")
def test_install_service_under_a_root_creates_user_directories_and_enabled_unit(tmp_path: Path, capsys) -> None:
    root = fake_root(tmp_path, ["gpio", "audio"])  # no dialout, no bluetooth on this machine

    assert anju(["install-service", "--root", str(root), "--config", "/etc/anju/hub.toml"]) == 0

    passwd = (root / "etc/passwd").read_text()
    anju_line = next(line for line in passwd.splitlines() if line.startswith("anju:"))
    uid = int(anju_line.split(":")[2])
    assert uid < 1000 and anju_line.endswith(":/usr/sbin/nologin"), "a system user with no login"
    assert "gpio:x:900:anju" in (root / "etc/group").read_text()
    for directory in ("etc/anju", "var/lib/anju"):
        stat = (root / directory).stat()
        assert (stat.st_uid, stat.st_mode & 0o777) == (uid, 0o750)
    unit = (root / "etc/systemd/system/anju-hub.service").read_text()
    assert f"ExecStart={sys.prefix}/bin/anju run --config /etc/anju/hub.toml" in unit
    assert "SupplementaryGroups=gpio audio\n" in unit, "only groups that exist: systemd refuses others"
    assert (root / "etc/systemd/system/multi-user.target.wants/anju-hub.service").is_symlink()
    assert "does not exist yet" in capsys.readouterr().out

    capsys.readouterr()
    assert anju(["install-service", "--root", str(root), "--dry-run"]) == 0
    again = capsys.readouterr().out
    assert "useradd" not in again and "write" not in again, "a second run has nothing left to do"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to become nobody")
def test_install_service_refuses_clearly_when_not_root(tmp_path: Path) -> None:
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    result = subprocess.run(
        [*as_nobody, sys.executable, "-m", "hub.cli", "install-service", "--no-start"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 1
    assert "run it as root" in result.stderr


# --- logs to the journal


@pytest.fixture
def journal_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "journal.socket"))
    sock.settimeout(5)
    yield sock
    sock.close()


def journal_logger(path: Path, name: str) -> tuple[logging.Logger, journald.JournaldHandler]:
    handler = journald.JournaldHandler(path, fields={"HUB_ID": "hub-sd"})
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger, handler


def receive(sock: socket.socket) -> dict[str, str]:
    data, ancillary, _flags, _addr = sock.recvmsg(1 << 16, socket.CMSG_SPACE(4))
    for _level, _kind, fd_bytes in ancillary:  # a record too large for a datagram: a sealed memfd
        fd = int.from_bytes(fd_bytes[:4], sys.byteorder)
        with os.fdopen(fd, "rb") as memfd:
            memfd.seek(0)
            data = memfd.read()
    return journald.decode(data)


def test_log_records_reach_the_journal_with_priority_and_fields_and_no_phone_number(
    tmp_path: Path, journal_socket: socket.socket
) -> None:
    logger, handler = journal_logger(tmp_path / "journal.socket", "anju.test.journal")
    try:
        logger.error("SMS to %s failed", "+8613900000002", extra={"EVENT_ID": "ev-1", "CONTACT": "13900000002"})
        fields = receive(journal_socket)
        assert fields["PRIORITY"] == "3" and fields["SYSLOG_IDENTIFIER"] == "anju"
        assert fields["MESSAGE"] == "anju.test.journal: SMS to [phone] failed"
        assert (fields["HUB_ID"], fields["EVENT_ID"], fields["CONTACT"]) == ("hub-sd", "ev-1", "[phone]")
        assert fields["LOGGER"] == "anju.test.journal" and fields["CODE_FILE"] == __file__

        try:
            raise RuntimeError("modem says 13900000002 is unreachable")
        except RuntimeError:
            logger.warning("sending failed", exc_info=True)
        fields = receive(journal_socket)
        assert fields["PRIORITY"] == "4" and "Traceback" in fields["MESSAGE"], "multi-line values travel whole"
        assert "13900000002" not in fields["MESSAGE"] and "[phone]" in fields["MESSAGE"]

        logger.info("x" * 300_000)  # more than a datagram holds
        fields = receive(journal_socket)
        assert fields["PRIORITY"] == "6" and len(fields["MESSAGE"]) > 300_000
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_without_the_journal_socket_lines_go_to_stderr_with_priority_prefixes(tmp_path: Path, capsys) -> None:
    logger, handler = journal_logger(tmp_path / "no-journal-here.socket", "anju.test.fallback")
    try:
        logger.critical("call 13900000002 now")
        assert capsys.readouterr().err == "<2>anju.test.fallback: call [phone] now\n"
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_journal_stream_is_recognised_only_for_our_own_stderr(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as stream:
        stat = os.fstat(stream.fileno())
        assert journald.under_journald({"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}, stream)
        assert not journald.under_journald({"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino + 1}"}, stream)
        assert not journald.under_journald({}, stream)
