"""`anju doctor`: checks the hub's hardware, time, storage and ways out, one line each, with the fix.

    anju doctor --config /etc/anju/hub.toml [--json]

Each check says what it found and, when something is wrong, what to do. When the hub is running
it owns the serial ports and the radios: the doctor then asks it (its control socket, hub.control)
what it knows about the Bluetooth adapter, the Zigbee coordinator, the modem and the devices, and
says so; it probes that hardware itself only when no hub runs. A hub that is there but does not
answer (its socket does not refuse the connection: it is busy, hung, or this user may not ask it)
still owns that hardware: the doctor then leaves the radios, the modem and the pins alone and says
so as a FAIL (two programs reading one serial port each get half of the other's frames: the hub
could miss a smoke alarm's). The broker and the DC-09 receiver
are always tried for real (an MQTT CONNECT under the client id `<hub_id>-doctor`, which does not
take over the hub's session; a DC-09 NULL link test), through the hub's own client code.

Every check has a timeout and they run concurrently: the doctor never hangs. Exit status: 0 all
is well (warnings need no action), 1 something needs action, 2 the configuration is wrong.
`--json` prints one stable document, described in docs/OPERATIONS.md (`## anju doctor`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from hub.config import ConfigError, Dc09UplinkConfig, HubConfig, SmsUplinkConfig, load_config
from hub.control import request, socket_path
from hub.model import Transport
from hub.timesync import kernel_clock_synchronised

SCHEMA = "anju.doctor/1"
STATUS_TIMEOUT_S = 3.0  # asking the running hub
CHECK_TIMEOUT_S = 10.0  # any one check, at most
# The journal's quick_check reads the whole file (up to journal.max_mb): on a slow card it is cut
# short at this share of CHECK_TIMEOUT_S (SQLite interrupts it), so no thread outlives the doctor.
JOURNAL_CHECK_SHARE = 0.6
BLE_LISTEN_S = 2.0  # a direct BLE probe listens this long for adverts
WEAK_SIGNAL_DBM = -105
CERT_WARN_DAYS = 30

Status = Literal["ok", "warn", "fail"]
MARKS = {"ok": "ok", "warn": "warn", "fail": "FAIL"}


@dataclass(frozen=True)
class Finding:
    """One line of the doctor's report: which check, how it went, what was found, what to do."""

    check: str
    status: Status
    found: str
    fix: str | None = None


def ok(check: str, found: str) -> Finding:
    return Finding(check, "ok", found)


def warn(check: str, found: str, fix: str) -> Finding:
    return Finding(check, "warn", found, fix)


def fail(check: str, found: str, fix: str) -> Finding:
    return Finding(check, "fail", found, fix)


@dataclass(frozen=True)
class Context:
    """What every check may look at: the configuration, the running hub's `status` (or None), and
    why a hub that seems to be there did not answer (None: it answered, or there is none)."""

    config: HubConfig
    hub: dict[str, Any] | None
    silent: str | None = None

    def hardware_left_alone(self, check: str, what: str) -> list[Finding] | None:
        """The finding for a check that must not open `what` because a hub that did not answer may
        own it; None when the check may go on."""
        if self.hub is not None or self.silent is None:
            return None
        return [fail(check, f"{what} not probed: {self.silent}", _SILENT_FIX)]

    def uses(self, transport: Transport) -> bool:
        return any(d.transport is transport for d in self.config.devices)


_SILENT_FIX = (
    "a hub still starting: run `anju doctor` again in a minute; else `systemctl status anju-hub` and "
    "`journalctl -u anju-hub -e` say why it does not answer (`sudo systemctl restart anju-hub`); "
    "run the doctor as root or as the hub's user (`sudo -u anju anju doctor …`)"
)


# -- the command --------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    doctor = sub.add_parser(
        "doctor",
        help="check the hub's hardware, clock, storage and uplinks; say what to fix",
        description="One line per check (Bluetooth, Zigbee, GPIO, audio, modem, time, storage, journal, "
        "broker, DC-09, each device): ok, warn or FAIL, what was found and the fix. A running hub is asked "
        "rather than disturbed. Exit status 0 all well, 1 something needs action, 2 bad configuration.",
        epilog="example: anju doctor --config /etc/anju/hub.toml   (docs/OPERATIONS.md explains each line)",
    )
    doctor.add_argument("--config", type=Path, default=Path("/etc/anju/hub.toml"), help="default: %(default)s")
    doctor.add_argument("--json", action="store_true", help="print one JSON document (docs/OPERATIONS.md)")


def main(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        if args.json:
            print(json.dumps({"schema": SCHEMA, "config": str(args.config), "error": str(exc)}, ensure_ascii=False))
        else:
            print(f"anju doctor: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.CRITICAL)  # the radio libraries' warnings: the lines below say it
    findings, hub, silent = asyncio.run(diagnose(config))
    if args.json:
        print(json.dumps(report(config, args.config, findings, hub, silent), indent=2, ensure_ascii=False))
    else:
        print(format_text(config, findings, hub, silent))
    return exit_status(findings)


def exit_status(findings: list[Finding]) -> int:
    return 1 if any(f.status == "fail" for f in findings) else 0


def report(
    config: HubConfig, path: Path, findings: list[Finding], hub: dict[str, Any] | None, silent: str | None = None
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "config": str(path),
        "hub_id": config.hub_id,
        "hub_running": hub is not None or silent is not None,
        "hub_answered": hub is not None,
        "ok": exit_status(findings) == 0,
        "checks": [asdict(f) for f in findings],
    }


def format_text(
    config: HubConfig, findings: list[Finding], hub: dict[str, Any] | None, silent: str | None = None
) -> str:
    running = "running: hardware it owns is reported by it" if hub else "not running: hardware probed directly"
    if hub is None and silent is not None:
        running = "there, but not answering: the hardware it owns is left alone"
    lines = [f"anju doctor: hub {config.hub_id}, {running}"]
    width = max((len(f.check) for f in findings), default=8)
    for f in findings:
        line = f"{MARKS[f.status]:<4}  {f.check:<{width}}  {f.found}"
        lines.append(line + (f"  -> fix: {f.fix}" if f.fix else ""))
    failed = sum(f.status == "fail" for f in findings)
    lines.append(f"{failed} check(s) need action" if failed else "all is well")
    return "\n".join(lines)


async def diagnose(config: HubConfig) -> tuple[list[Finding], dict[str, Any] | None, str | None]:
    """Every check, concurrently, each under its timeout; then the running hub's status (or None),
    and why a hub that is there did not answer (or None)."""
    hub, silent = await asyncio.to_thread(ask_hub, config)
    context = Context(config, hub, silent)
    checks: list[tuple[str, Callable[[Context], Awaitable[list[Finding]]]]] = [
        ("bluetooth", check_bluetooth),
        ("zigbee", check_zigbee),
        ("gpio", check_gpio),
        ("audio", check_audio),
        ("modem", check_modem),
        ("time", check_time),
        ("storage", check_storage),
        ("broker", check_broker),
        ("dc09", check_dc09),
        ("devices", check_devices),
    ]
    results = await asyncio.gather(*(_bounded(name, check, context) for name, check in checks))
    return [finding for findings in results for finding in findings], hub, silent


async def _bounded(name: str, check: Callable[[Context], Awaitable[list[Finding]]], context: Context) -> list[Finding]:
    try:
        return await asyncio.wait_for(check(context), CHECK_TIMEOUT_S)
    except TimeoutError:
        return [
            fail(
                name,
                f"no answer within {CHECK_TIMEOUT_S:g} s",
                "run `anju doctor` again; if it hangs again, the system log says why: `journalctl -b -e`",
            )
        ]
    except Exception as exc:  # a check that breaks is a finding, never the end of the doctor
        return [fail(name, f"the check itself failed: {type(exc).__name__}: {exc}", "report this with the log")]


def ask_hub(config: HubConfig) -> tuple[dict[str, Any] | None, str | None]:
    """The running hub's `status` answer (or None), and, when there was none although a hub seems to
    be there, why: only a missing socket or a refused connection (a socket a hub left behind when
    it ended) mean that no hub runs."""
    path = socket_path(config.data_dir)
    try:
        answer = request(path, {"cmd": "status"}, timeout=STATUS_TIMEOUT_S)
    except (FileNotFoundError, ConnectionRefusedError):
        return None, None
    except TimeoutError:
        return None, f"a hub listens on {path} but did not answer within {STATUS_TIMEOUT_S:g} s"
    except PermissionError:
        return None, f"this user may not ask the hub on {path} (permission denied)"
    except (OSError, ValueError) as exc:
        return None, f"the hub on {path} did not answer properly ({exc or type(exc).__name__})"
    if not answer.get("ok"):
        return None, f"the hub on {path} answered with an error: {answer.get('error')}"
    return answer, None


def running_hub(config: HubConfig) -> dict[str, Any] | None:
    """The running hub's `status` answer, or None when no hub answers on its control socket."""
    return ask_hub(config)[0]


# -- radios ---------------------------------------------------------------------------------------


async def check_bluetooth(context: Context) -> list[Finding]:
    adapter = context.config.ble.adapter
    if not context.uses(Transport.BLE) and not context.config.api.enabled:
        return [ok("bluetooth", "not used (no BLE devices, installer app off)")]
    if context.hub is not None:
        return [_bluetooth_from_hub(context.hub.get("ble"), adapter)]
    if left_alone := context.hardware_left_alone("bluetooth", f"the adapter {adapter}"):
        return left_alone
    return [await _probe_bluetooth(context)]


def _bluetooth_from_hub(ble: dict[str, Any] | None, adapter: str) -> Finding:
    if ble is None:
        return warn("bluetooth", "the running hub has no BLE radio", "restart the hub: `systemctl restart anju-hub`")
    found = (
        f"the running hub scans on {adapter} ({ble['mode']}): {ble['adverts']} advert(s) heard, "
        f"{ble['scan_restarts']} scan restart(s), {ble['adapter_resets']} adapter reset(s)"
    )
    if ble["radio_ok"]:
        return ok("bluetooth", found)
    return fail("bluetooth", found + "; radio failing", _BLE_FIX.format(adapter=adapter))


_BLE_FIX = (
    "`bluetoothctl list` must show {adapter}; `rfkill unblock bluetooth`; `systemctl restart bluetooth`; "
    "a USB adapter: plug it in again"
)


async def _probe_bluetooth(context: Context) -> Finding:
    """Start a scan on the adapter as the hub does (bleak over BlueZ's D-Bus), listen briefly, stop."""
    from bleak import BleakScanner

    from edge.ble import BTHOME_PATTERN, _passive_unsupported

    config = context.config.ble
    heard: set[str] = set()
    mode = "passive" if config.mode in ("auto", "passive") else "active"
    while True:
        bluez: Any = {"adapter": config.adapter}
        if mode == "passive":
            bluez["or_patterns"] = [BTHOME_PATTERN]
        scanner = BleakScanner(lambda device, _: heard.add(device.address), scanning_mode=mode, bluez=bluez)  # type: ignore[arg-type]
        try:
            await scanner.start()
        except Exception as exc:
            if mode == "passive" and config.mode == "auto" and _passive_unsupported(exc):
                mode = "active"
                continue
            return fail("bluetooth", f"cannot scan on {config.adapter}: {exc}", _BLE_FIX.format(adapter=config.adapter))
        break
    try:
        await asyncio.sleep(BLE_LISTEN_S)
    finally:
        with contextlib.suppress(Exception):
            await scanner.stop()
    known = {d.mac.upper() for d in context.config.devices if d.mac}
    return ok(
        "bluetooth",
        f"{config.adapter} scanning ({mode}): {len(heard)} device(s) heard in {BLE_LISTEN_S:g} s, "
        f"{len(heard & known)} of them the household's",
    )


async def check_zigbee(context: Context) -> list[Finding]:
    port = context.config.zigbee.port
    if not context.uses(Transport.ZIGBEE) and not (
        context.config.api.enabled and await asyncio.to_thread(os.path.exists, port)
    ):
        return [ok("zigbee", "not used (no Zigbee devices)")]
    if context.hub is not None:
        return [_zigbee_from_hub(context.hub.get("zigbee"), port)]
    if left_alone := context.hardware_left_alone("zigbee", f"the coordinator on {port}"):
        return left_alone
    if not await asyncio.to_thread(os.path.exists, port):
        return [fail("zigbee", f"no serial port {port}", _ZIGBEE_FIX.format(port=port))]
    return [await _probe_zigbee(context)]


_ZIGBEE_FIX = "plug the Zigbee dongle into a USB port; `ls -l /dev/serial/by-id` shows its name: set zigbee.port to it"


def _zigbee_from_hub(zigbee: dict[str, Any] | None, port: str) -> Finding:
    if zigbee is None:
        return warn("zigbee", "the running hub has no Zigbee radio", "restart the hub: `systemctl restart anju-hub`")
    firmware = f", firmware {zigbee['firmware']}" if zigbee.get("firmware") else ""
    if zigbee["connected"] and zigbee["radio_ok"]:
        return ok("zigbee", f"the running hub is connected to the coordinator on {port}{firmware}")
    state = "reconnecting" if zigbee["radio_ok"] else "down (fault.radio reported)"
    return fail("zigbee", f"the running hub has no coordinator on {port}: {state}", _ZIGBEE_FIX.format(port=port))


async def _probe_zigbee(context: Context) -> Finding:
    """SYS_PING, then SYS_VERSION, through zigpy-znp (the hub's own MT frame code)."""
    if context.config.zigbee.radio != "znp":
        return ok("zigbee", f"{context.config.zigbee.port} present (radio {context.config.zigbee.radio}: not probed)")
    import zigpy_znp.commands as c
    from zigpy_znp.api import ZNP
    from zigpy_znp.config import CONFIG_SCHEMA

    port = context.config.zigbee.port
    znp = ZNP(CONFIG_SCHEMA({"device": {"path": port, "baudrate": context.config.zigbee.baudrate}}))
    try:
        await znp.connect(test_port=False)  # opens the port only: the pings are ours, below
        await asyncio.wait_for(znp.request(c.SYS.Ping.Req()), 3)
        version = await asyncio.wait_for(znp.request(c.SYS.Version.Req()), 3)
    except Exception as exc:
        reason = str(exc) or type(exc).__name__
        return fail(
            "zigbee",
            f"the coordinator on {port} does not answer SYS_PING: {reason}",
            "unplug the dongle and plug it in again; if it still does not answer, flash Z-Stack firmware "
            "(CC2652: `cc2538-bsl`)",
        )
    finally:
        await znp.disconnect()
    return ok(
        "zigbee",
        f"the coordinator on {port} answers SYS_PING; Z-Stack {version.MajorRel}.{version.MinorRel}."
        f"{version.MaintRel}, firmware build {version.CodeRevision}",
    )


# -- the hub's own hardware ------------------------------------------------------------------------


async def check_gpio(context: Context) -> list[Finding]:
    gpio = context.config.gpio
    pins = f"siren GPIO{gpio.siren_pin}, LED GPIO{gpio.led_pin}, " + (
        f"{sum(d.transport is Transport.GPIO for d in context.config.devices)} wired input(s)"
    )
    if context.hub is not None:
        return [ok("gpio", f"in use by the running hub (pin factory {gpio.pin_factory}): {pins}")]
    if left_alone := context.hardware_left_alone("gpio", "the pins"):
        return left_alone
    return [await asyncio.to_thread(_probe_gpio, gpio.pin_factory, pins)]


def _probe_gpio(name: str, pins: str) -> Finding:
    if name == "default":
        chips = sorted(Path("/dev").glob("gpiochip*"))
        if not chips:
            return fail(
                "gpio", "no /dev/gpiochip*: no GPIO here", "run the hub on the Raspberry Pi, or set gpio.pin_factory"
            )
        denied = [str(chip) for chip in chips if not os.access(chip, os.R_OK | os.W_OK)]
        if denied:
            return fail(
                "gpio",
                f"no access to {', '.join(denied)}",
                "add the hub's user to the gpio group: `sudo usermod -aG gpio anju`, then restart the hub",
            )
    from edge.gpio import load_pin_factory

    try:
        factory = load_pin_factory(name)
        if factory is None:
            from gpiozero import Device

            factory = Device._default_pin_factory()
    except Exception as exc:
        return fail(
            "gpio", f"pin factory {name!r} does not load: {exc}", "on a Raspberry Pi: `sudo apt install python3-lgpio`"
        )
    try:
        return ok("gpio", f"pin factory {name} ({type(factory).__name__}) loads: {pins}")
    finally:
        factory.close()


async def check_audio(context: Context) -> list[Finding]:
    audio = context.config.audio
    if audio.player == "none":
        return [
            warn(
                "audio", "no voice prompts (audio.player = none); the siren still sounds", 'set audio.player = "aplay"'
            )
        ]
    findings = [await asyncio.to_thread(_espeak, audio.prompts_dir)]
    if audio.player == "record":
        target = audio.record_file or context.config.data_dir / "prompts-played.jsonl"
        findings.insert(0, ok("audio", f"simulation: prompts are recorded to {target}, not played"))
        return findings
    findings.insert(0, await asyncio.to_thread(_aplay, audio.aplay_device))
    return findings


def _aplay(device: str | None) -> Finding:
    if shutil.which("aplay") is None:
        return fail("audio", "aplay is not installed", "`sudo apt-get install alsa-utils`")
    listing = _run(["aplay", "-L"]) if device else _run(["aplay", "-l"])
    if listing is None:
        return fail("audio", "`aplay` does not answer", "check the sound driver: `aplay -l`; `dmesg | grep -i snd`")
    if device:
        names = {line.strip() for line in listing.splitlines() if line and not line[0].isspace()}
        if device not in names:
            return fail(
                "audio",
                f"ALSA device {device!r} not found",
                "plug the speaker in; `aplay -L` lists the names: set audio.aplay_device to one",
            )
        return ok("audio", f"aplay, ALSA device {device} present")
    cards = [line for line in listing.splitlines() if line.startswith("card ")]
    if not cards:
        return fail("audio", "no sound card", "plug the speaker or USB sound card in; `aplay -l` must list it")
    return ok("audio", f"aplay, {len(cards)} sound device(s): {cards[0]}")


def _espeak(prompts_dir: Path | None) -> Finding:
    if shutil.which("espeak-ng") is not None:
        return ok("voice", "espeak-ng installed (prompts are rendered with it once)")
    if prompts_dir is not None:
        return warn(
            "voice", f"espeak-ng not installed; prompts come from {prompts_dir}", "`sudo apt-get install espeak-ng`"
        )
    return fail("voice", "espeak-ng not installed: no voice prompts", "`sudo apt-get install espeak-ng`")


async def check_modem(context: Context) -> list[Finding]:
    sms = next((u for u in context.config.uplinks if isinstance(u, SmsUplinkConfig)), None)
    if sms is None:
        return [ok("modem", "not used (no sms uplink)")]
    if context.hub is not None:
        return [_modem_from_hub(context.hub, sms.port)]
    if left_alone := context.hardware_left_alone("modem", f"the modem on {sms.port}"):
        return left_alone
    if not await asyncio.to_thread(os.path.exists, sms.port):
        return [fail("modem", f"no serial port {sms.port}", _MODEM_PORT_FIX.format(port=sms.port))]
    from edge.modem import Modem, ModemError

    modem = Modem(sms.port, sms.baudrate, command_timeout=3.0)
    try:
        await modem.open()
        status = await modem.status()
    except ModemError as exc:
        return [fail("modem", f"no answer on {sms.port}: {exc}", _MODEM_PORT_FIX.format(port=sms.port))]
    finally:
        await modem.close()
    return [_modem_finding(status.sim, status.signal_dbm, status.registered, f"modem on {sms.port}")]


_MODEM_PORT_FIX = (
    "check the 4G modem's USB cable and power; `ls /dev/ttyUSB*`: the AT port is usually the third (ttyUSB2); "
    "set uplinks.sms.port to it"
)


def _modem_from_hub(hub: dict[str, Any], port: str) -> Finding:
    modem = hub.get("modem")
    if modem is None:
        detail = hub.get("uplinks", {}).get("sms", {}).get("detail", "no modem status yet")
        return fail(
            "modem",
            f"the running hub gets no answer from the modem on {port}: {detail}",
            _MODEM_PORT_FIX.format(port=port),
        )
    return _modem_finding(modem["sim"], modem["signal_dbm"], modem["registered"], f"the running hub's modem on {port}")


def _modem_finding(sim: str, signal_dbm: int | None, registered: bool | None, where: str) -> Finding:
    signal = "no signal" if signal_dbm is None else f"signal {signal_dbm} dBm"
    found = f"{where}: SIM {sim}, {signal}" + (
        "" if registered is None else f", {'' if registered else 'not '}registered"
    )
    if sim != "READY":
        fix = "insert the SIM card (power off first)" if "NOT INSERTED" in sim else "unlock the SIM (no PIN) in a phone"
        return fail("modem", found, fix)
    if signal_dbm is None or registered is False:
        return fail("modem", found, "screw the antenna on; move the hub near a window; check the SIM's plan is active")
    if signal_dbm < WEAK_SIGNAL_DBM:
        return warn("modem", found, "weak: an external antenna, or the hub nearer a window")
    return ok("modem", found)


# -- the system ----------------------------------------------------------------------------------


async def check_time(context: Context) -> list[Finding]:
    return [await asyncio.to_thread(_time_sync)]


_TIME_FIX = (
    "events and DC-09 messages carry this clock: let it sync (`timedatectl set-ntp true`; "
    "`timedatectl timesync-status`; NTP needs UDP port 123 out)"
)


def _time_sync() -> Finding:
    now = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    answer = _run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"]) if shutil.which("timedatectl") else None
    if answer is not None and answer.strip() in ("yes", "no"):
        if answer.strip() == "yes":
            return ok("time", f"synchronised (timedatectl); now {now}")
        return warn("time", f"not synchronised (timedatectl); now {now}", _TIME_FIX)
    synchronised = kernel_clock_synchronised()  # the hub's own probe (hub.timesync)
    if synchronised is None:
        return warn("time", f"cannot tell whether the clock is synchronised; now {now}", _TIME_FIX)
    if not synchronised:
        return warn("time", f"the kernel says the clock is not synchronised (adjtimex); now {now}", _TIME_FIX)
    return ok("time", f"synchronised (adjtimex); now {now}")


async def check_storage(context: Context) -> list[Finding]:
    return await asyncio.to_thread(_storage, context.config)


def _storage(config: HubConfig) -> list[Finding]:
    data_dir = config.data_dir
    if not data_dir.is_dir():
        return [fail("storage", f"no data directory {data_dir}", f"`sudo install -d -o anju {data_dir}`")]
    stats = os.statvfs(data_dir)
    free_mb = stats.f_bavail * stats.f_frsize / 1e6
    total_mb = stats.f_blocks * stats.f_frsize / 1e6
    found = f"{data_dir}: {free_mb:,.0f} MB free of {total_mb:,.0f} MB"
    if stats.f_flag & os.ST_RDONLY:
        disk = fail(
            "storage",
            found + "; mounted read-only",
            "the SD card was remounted read-only after errors: `dmesg | grep -i -e mmc -e ext4`; replace the card",
        )
    elif not os.access(data_dir, os.W_OK):
        disk = fail(
            "storage", found + "; not writable by this user", f"run as the hub's user, or `chown -R anju {data_dir}`"
        )
    elif free_mb < config.journal.min_free_mb:
        disk = fail(
            "storage",
            found + f", less than journal.min_free_mb ({config.journal.min_free_mb:g} MB)",
            "free space: `du -xsh /var/log /var/cache`; `journalctl --vacuum-size=50M`",
        )
    else:
        disk = ok("storage", found)
    return [disk, _journal(config)]


def _journal(config: HubConfig, within_s: float | None = None) -> Finding:
    path = config.data_dir / "journal.sqlite3"
    if not path.exists():
        return warn("journal", f"no journal yet at {path}", "start the hub once: it creates the journal")
    size_mb = sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists()) / 1e6
    budget = config.journal.max_mb
    found = f"{size_mb:.1f} MB of its {budget:g} MB budget"
    within_s = CHECK_TIMEOUT_S * JOURNAL_CHECK_SHARE if within_s is None else within_s
    deadline = time.monotonic() + within_s
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)) as db:
            db.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)  # non-zero: interrupt
            check = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.Error as exc:
        if time.monotonic() > deadline and "interrupt" in str(exc):
            return warn(
                "journal",
                f"{found}; quick_check not finished within {within_s:g} s (a large journal, a slow card)",
                "nothing to do: the hub checks it whole at every start; `journalctl -u anju-hub | grep journal`",
            )
        check = str(exc)
    if check != "ok":
        return fail(
            "journal",
            f"{found}; quick_check: {check}",
            "restart the hub (`sudo systemctl restart anju-hub`): at start it moves a damaged journal aside and "
            "carries its unacknowledged events over; do not delete it (they would be lost)",
        )
    if size_mb > budget * (1 - config.journal.reserve_percent / 100):
        return warn(
            "journal",
            f"{found}, past the info limit: info events are being dropped",
            "is the centre acknowledging? see `anju status`; or raise journal.max_mb",
        )
    return ok("journal", f"{found}; quick_check ok")


# -- the ways out ----------------------------------------------------------------------------------


async def check_broker(context: Context) -> list[Finding]:
    import aiomqtt

    from cloud_bridge.mqtt import mqtt_client, tls_context

    mqtt = context.config.mqtt
    where = f"{'mqtts' if mqtt.tls else 'mqtt'}://{mqtt.host}:{mqtt.port}"
    hub = (
        ""
        if context.hub is None
        else f"; the running hub is {'connected' if context.hub['uplink_connected'] else 'NOT connected'}"
    )
    tls = None
    if mqtt.tls is not None:
        missing = [str(p) for p in (mqtt.tls.ca, mqtt.tls.cert, mqtt.tls.key) if not p.exists()]
        if missing:
            return [
                fail(
                    "broker",
                    f"TLS file(s) missing: {', '.join(missing)}",
                    "`anju certs issue HUB_ID --ca DIR --out DIR`; copy the files",
                )
            ]
        try:
            tls = tls_context(mqtt.tls.ca, mqtt.tls.cert, mqtt.tls.key)
        except (OSError, ValueError) as exc:
            return [fail("broker", f"the TLS files do not load: {exc}", "issue the hub's key and certificate again")]
    client = mqtt_client(
        mqtt.host, mqtt.port, f"{context.config.hub_id}-doctor", tls_context=tls, timeout=mqtt.connect_timeout_s
    )
    started = time.monotonic()
    try:
        async with client:
            pass
    except aiomqtt.MqttError as exc:
        return [fail("broker", f"{where}: {exc}{hub}", _broker_fix(str(exc), mqtt.tls is not None))]
    took = (time.monotonic() - started) * 1000
    return [
        ok("broker", f"{where}: CONNECT accepted in {took:.0f} ms{' with the hub certificate' if tls else ''}{hub}")
    ]


def _broker_fix(reason: str, tls: bool) -> str:
    text = reason.lower()
    if "certificate" in text or "ssl" in text or "tls" in text:
        return (
            "the broker's certificate must come from mqtt.tls.ca and name mqtt.host; "
            "the hub's own certificate must be the county's"
        )
    if "not authori" in text or "bad user" in text:
        return "the broker does not know this hub: add its id to the county ACL and certificate list"
    return "check the network (`ping`), mqtt.host and mqtt.port, and that the broker runs" + (
        "; a firewall must let TCP out" if tls else ""
    )


async def check_dc09(context: Context) -> list[Finding]:
    uplinks = [u for u in context.config.uplinks if isinstance(u, Dc09UplinkConfig)]
    if not uplinks:
        return [ok("dc09", "not used (no dc09 uplink)")]
    return list(await asyncio.gather(*(_dc09(u, context.hub) for u in uplinks)))


async def _dc09(uplink: Dc09UplinkConfig, hub: dict[str, Any] | None) -> Finding:
    from cloud_bridge.dc09 import FrameError, ResponseKind
    from cloud_bridge.dc09_uplink import Dc09Path

    where = f"DC-09 {uplink.protocol.upper()} {uplink.host}:{uplink.port} (account {uplink.account})"
    fix = f"check the receiver's address and that it is up; a firewall must let {uplink.protocol.upper()} out"
    client = Dc09Path(uplink, {}).client
    try:
        response = await client.send_null(1, min(uplink.timeout_s, 5.0))
    except (OSError, TimeoutError, FrameError) as exc:
        return fail("dc09", f"{where}: NULL link test failed: {str(exc) or type(exc).__name__}", fix)
    finally:
        await client.close()
    if response.kind is ResponseKind.ACK:
        return ok("dc09", f"{where}: NULL link test acknowledged")
    if response.kind is ResponseKind.NAK:
        skew = client.clock_offset.total_seconds()
        return warn("dc09", f"{where}: NULL answered NAK, the receiver's clock is {skew:+.0f} s from ours", _TIME_FIX)
    return fail(
        "dc09",
        f"{where}: NULL answered {response.kind}",
        "the receiver does not accept this account or key: check account, key and key_format with the centre",
    )


# -- devices ---------------------------------------------------------------------------------------


async def check_devices(context: Context) -> list[Finding]:
    devices = context.config.household().devices
    if not devices:
        return [warn("devices", "no devices configured", "`anju provision device add …`, or the installer's web app")]
    if context.hub is not None:
        offline = set(context.hub.get("offline_devices", []))
        last_seen: dict[str, float] = context.hub.get("last_seen", {})
        return [_device_from_hub(d, d.id in offline, last_seen.get(d.id)) for d in devices]
    journal = await asyncio.to_thread(_journal_devices, context.config.data_dir / "journal.sqlite3")
    return [_device_from_journal(d, journal.get(d.id)) for d in devices]


def _device_fix(transport: Transport) -> str:
    if transport is Transport.BLE:
        return "replace its battery; bring it nearer the hub; then `anju provision walk-test start` and press it"
    return "replace its battery; press its test button; if it left the network pair it again: `anju pair zigbee`"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _device_from_hub(device: Any, offline: bool, last_seen: float | None) -> Finding:
    name = f"device {device.id}"
    if device.transport is Transport.GPIO:
        return ok(name, f"wired to GPIO{device.pin}: no check-in to supervise")
    window = f"check-in window {_duration(device.checkin_s)}" if device.checkin_s else "no window"
    heard = (
        "not heard since the hub started"
        if last_seen is None
        else f"last heard {_duration(time.time() - last_seen)} ago"
    )
    if offline:
        return fail(name, f"{device.transport.value}: OFFLINE, {heard} ({window})", _device_fix(device.transport))
    return ok(name, f"{device.transport.value}: {heard} ({window})")


def _journal_devices(path: Path) -> dict[str, tuple[str, str, bool]]:
    """Per device: its last event's type and time, and whether its last supervision event says offline."""
    if not path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)) as db:
        last = db.execute(
            "SELECT device_id, type, MAX(occurred_at) FROM events WHERE device_id IS NOT NULL GROUP BY device_id"
        ).fetchall()
        supervision = dict(
            db.execute(
                "SELECT device_id, type FROM events WHERE seq IN (SELECT MAX(seq) FROM events"
                " WHERE type IN ('fault.device_offline', 'restore.device_offline') GROUP BY device_id)"
            ).fetchall()
        )
    return {device: (kind, at, supervision.get(device) == "fault.device_offline") for device, kind, at in last}


def _device_from_journal(device: Any, last: tuple[str, str, bool] | None) -> Finding:
    name = f"device {device.id}"
    if device.transport is Transport.GPIO:
        return ok(name, f"wired to GPIO{device.pin}: no check-in to supervise")
    if last is None:
        return ok(name, f"{device.transport.value}: hub not running; no event from it in the journal")
    kind, at, offline = last
    found = f"{device.transport.value}: hub not running; its last event in the journal: {kind} at {at}"
    if offline:
        return fail(name, found + "; reported OFFLINE and not back since", _device_fix(device.transport))
    return ok(name, found)


def _run(argv: list[str]) -> str | None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None
