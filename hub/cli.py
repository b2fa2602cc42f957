"""The `anju` command: one entry point, sub-commands a person can discover with --help.

Exit status: 0 success; 1 a scenario expectation failed or the service stopped on an error;
2 bad usage or a bad file (the message says which file, line and field).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from hub.config import ConfigError, load_config

EPILOG = """\
examples:
  anju demo                                 play a whole simulated household and print what happened
  anju simulate simulator/scenarios/bathroom-cord.yaml --json
  anju run --config /etc/anju/hub.toml      run the hub service
  anju centre --port 1883 --db centre.sqlite3
  anju config check hub.toml
"""


def _setup_logging(level: str, hub_id: str | None = None) -> None:
    """Log lines on stderr; under systemd, structured records to the journal instead (hub.journald)."""
    from hub import journald
    from hub.api.security import RedactingFilter

    if journald.under_journald():
        handler: logging.Handler = journald.JournaldHandler(fields={"HUB_ID": hub_id} if hub_id else None)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))  # the journal has time and level
        logging.basicConfig(level=getattr(logging, level), handlers=[handler])
    else:
        logging.basicConfig(
            level=getattr(logging, level),
            stream=sys.stderr,
            format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        )
    for each in logging.getLogger().handlers:  # phone numbers never reach a log
        each.addFilter(RedactingFilter())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anju",
        description="Anju (安居) home-safety hub: pull-cords, smoke and fall sensors; local alerts; "
        "reports to the county monitoring centre, never losing an alarm.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="play the bundled household scenario end to end and print a timeline",
        description="Starts a private mosquitto, the reference centre and a hub with simulated "
        "hardware, pulls a bathroom cord, takes the network away, kills the hub, and shows "
        "that every alarm reaches the centre exactly once.",
    )
    demo.add_argument("--scenario", default="bathroom-cord", help="bundled scenario name (default: %(default)s)")
    demo.add_argument("--json", action="store_true", help="print the result as JSON (docs/scenario-json.md)")
    demo.add_argument("--workdir", type=Path, help="keep logs, journal and centre database here")

    simulate = sub.add_parser(
        "simulate",
        help="play a scenario file (YAML timeline) and check its expectations",
        description="Plays SCENARIO against real processes: a private mosquitto on a free "
        "port, the reference centre and the hub with simulated hardware. Exit status 1 "
        "when an expectation fails, 2 when the file is wrong.",
    )
    simulate.add_argument("scenario", type=Path, help="scenario YAML file (see simulator/scenarios/)")
    simulate.add_argument("--json", action="store_true", help="print one JSON object (docs/scenario-json.md)")
    simulate.add_argument("--workdir", type=Path, help="keep logs, journal and centre database here")

    run = sub.add_parser(
        "run",
        help="run the hub service",
        description="Runs the hub until SIGTERM. On a Raspberry Pi install it as a service (issue: install-service).",
    )
    run.add_argument("--config", type=Path, required=True, help="hub configuration (TOML)")

    centre = sub.add_parser(
        "centre",
        help="run the reference monitoring centre (subscribe, store, acknowledge)",
        description="Subscribes to every hub's events through the shared subscriptions "
        "$share/centre/anju/v1/+/+/event (alarms, one per message) and .../events (batches of the rest), "
        "keeps one record per event id and acknowledges each on ack or acks. Run several with the same "
        "--db (and different --centre-id) to share the load. A hub that left a last will and is not back "
        "within --offline-grace-s, or that missed 3 heartbeats, raises the centre's own hub.offline alarm.",
    )
    centre.add_argument("--host", default="127.0.0.1", help="broker host (default: %(default)s)")
    centre.add_argument("--port", type=int, default=1883, help="broker port (default: %(default)s)")
    centre.add_argument(
        "--db",
        default="centre.sqlite3",
        help="a SQLite file, or PostgreSQL as postgresql://user@host/dbname; workers may share either "
        "(default: %(default)s)",
    )
    centre.add_argument(
        "--heartbeat-s",
        type=float,
        default=60.0,
        help="the county's heartbeat interval, for hubs whose heartbeats do not say theirs (default: %(default)s)",
    )
    centre.add_argument(
        "--offline-grace-s",
        type=float,
        default=30.0,
        help="a hub whose last will arrived has this long to come back before the centre raises "
        "hub.offline (default: %(default)s)",
    )
    centre.add_argument(
        "--latency-log", type=Path, help="append one JSON line per stored heartbeat and event (bench/fleet.py)"
    )
    centre.add_argument("--centre-id", default="centre-1", help="this worker's name in acks (default: %(default)s)")
    centre.add_argument("--no-ack", action="store_true", help="record events but never acknowledge (fault tests)")
    centre.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    centre.add_argument("--ca", type=Path, help="mutual TLS: the county CA certificate")
    centre.add_argument(
        "--cert", type=Path, help="mutual TLS: this centre's certificate (anju certs issue --kind centre)"
    )
    centre.add_argument("--key", type=Path, help="mutual TLS: this centre's key")

    from cloud_bridge import command_cli
    from simulator import fleet_cli

    fleet_cli.add_parser(sub)
    command_cli.add_parser(sub)

    decode = sub.add_parser("decode", help="decode wire bytes for a person (bthome, znp, dc09)")
    decode_sub = decode.add_subparsers(dest="decode_kind", metavar="FORMAT", required=True)
    bthome = decode_sub.add_parser(
        "bthome",
        help="BTHome v2 service data (the bytes after the 0xFCD2 UUID)",
        description="Decodes BTHome v2 service data with bthome-ble. Exit 2 with a one-line reason for a "
        "wrong key, a bad MIC or unusable bytes.",
        epilog="example: anju decode bthome 4400a101640c9a0a --json",
    )
    bthome.add_argument("hex", help="service data in hex (spaces and colons allowed)")
    bthome.add_argument("--mac", default="00:00:00:00:00:00", help="the device's address (needed to decrypt)")
    bthome.add_argument("--key", help="the device's bind key, 32 hex digits")
    bthome.add_argument("--json", action="store_true", help="print one JSON object")

    znp = decode_sub.add_parser(
        "znp",
        help="one TI Z-Stack MT frame (SOF 0xFE … FCS)",
        description="Decodes one MT frame with zigpy-znp's parser: type, subsystem, command, fields, and for "
        "AF_INCOMING_MSG on the IAS Zone cluster the ZCL command and ZoneStatus bits. Exit 2 for a bad FCS "
        "or length.",
        epilog="example: anju decode znp 'FE 00 21 01 20'",
    )
    znp.add_argument("hex", help="the frame in hex (spaces and colons allowed)")
    znp.add_argument("--json", action="store_true", help="print one JSON object")

    dc09 = decode_sub.add_parser(
        "dc09",
        help='one SIA DC-09 frame (LF CRC LLLL "id" … CR)',
        description="Checks and decodes one DC-09 frame: CRC-16/ARC, length, message id, sequence, receiver, "
        "line prefix, account, data and timestamp; with --key, decrypts an encrypted (*) frame. The frame may "
        "be given as text (\\n and \\r may be left out) or, with --hex, as hex bytes. Exit 2 with the reason "
        "for a bad CRC, length or layout.",
        epilog="example: anju decode dc09 'F4D20029\"SIA-DCS\"0001RF3L77#1234[#1234|NRR|Atest]'",
    )
    dc09.add_argument("frame", help="the frame as text, or hex with --hex")
    dc09.add_argument("--hex", action="store_true", help="FRAME is hex bytes")
    dc09.add_argument("--key", help="the AES key, for an encrypted frame")
    dc09.add_argument("--key-format", choices=["hex", "ascii"], default="hex", help="how --key is written")
    dc09.add_argument("--json", action="store_true", help="print one JSON object")

    pair = sub.add_parser("pair", help="open pairing on the running hub (Zigbee permit-join)")
    pair.add_argument("transport", choices=["zigbee"], help="what to pair")
    pair.add_argument("--config", type=Path, required=True, help="the running hub's configuration (TOML)")
    pair.add_argument("--seconds", type=int, default=120, help="how long joining stays open (default: %(default)s)")

    from hub import backup, doctor, fall_eval, install_service, provision

    provision.add_parser(sub)
    doctor.add_parser(sub)
    backup.add_parser(sub)
    install_service.add_parser(sub)
    fall_eval.add_arguments(
        sub.add_parser(
            "fall-eval",
            help="score the pendant's fall detector on recordings (SisFall)",
            description="Streams each recording (SisFall .txt or .csv.gz: ADXL345 counts at 200 Hz) through a "
            "fresh FallDetector (firmware/lib/fall.py) at --rate Hz and says whether and when it fired; then "
            "sensitivity and specificity from the file names (F.. falls, D.. activities).",
            epilog="example: anju fall-eval ../shared/data/sisfall-train/SA01/*.csv.gz --json",
        )
    )

    status = sub.add_parser("status", help="ask the running hub what it is doing (radios, pending events)")
    status.add_argument("--config", type=Path, required=True, help="the running hub's configuration (TOML)")

    certs = sub.add_parser("certs", help="the county CA and per-hub certificates (mutual TLS)")
    certs_sub = certs.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    init_ca = certs_sub.add_parser("init-ca", help="create the county CA (key written 0600)")
    init_ca.add_argument("--dir", type=Path, required=True, help="where the CA key and certificate go")
    init_ca.add_argument("--county", required=True, help="the county id, e.g. minle")
    init_ca.add_argument("--days", type=int, default=3650)
    issue = certs_sub.add_parser("issue", help="issue a key and certificate signed by the county CA")
    issue.add_argument("name", help="the hub id (or centre id, or broker host name): the certificate's CN")
    issue.add_argument("--ca", type=Path, required=True, help="the CA directory (from init-ca)")
    issue.add_argument("--out", type=Path, required=True, help="where the key and certificate go")
    issue.add_argument("--kind", choices=["hub", "centre", "broker"], default="hub")
    issue.add_argument("--dns", action="append", default=[], help="broker: a DNS name (repeatable)")
    issue.add_argument("--ip", action="append", default=[], help="broker: an IP address (repeatable)")
    issue.add_argument("--force", action="store_true", help="replace an existing key")

    config = sub.add_parser("config", help="check a configuration file without starting anything")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = config_sub.add_parser("check", help="validate a hub configuration; exit 2 with file:line: field: fix")
    check.add_argument("file", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            config = load_config(args.config)
            _setup_logging(config.log_level, config.hub_id)
            from hub.service import run_forever

            run_forever(args.config)
            return 0
        if args.command == "fall-eval":
            from hub import fall_eval

            return fall_eval.main(args)
        if args.command == "provision":
            from hub import provision

            return provision.main(args)
        if args.command == "install-service":
            from hub import install_service

            return install_service.main(args)
        if args.command == "config":
            config = load_config(args.file)
            print(
                f"{args.file}: ok — hub {config.hub_id}, household {config.household_id}, "
                f"{len(config.devices)} device(s)"
            )
            return 0
        if args.command == "certs":
            return _certs(args)
        if args.command in ("pair", "status"):
            return _control(args)
        if args.command == "decode":
            return _decode(args)
        if args.command in ("backup", "restore"):
            from hub import backup

            return backup.main(args)
        if args.command == "doctor":
            from hub import doctor

            return doctor.main(args)
        if args.command == "command":
            from cloud_bridge import command_cli

            return command_cli.main(args)
        if args.command == "fleet":
            from simulator import fleet_cli

            return fleet_cli.main(args)
        if args.command == "centre":
            _setup_logging(args.log_level)
            return _centre(args)
        if args.command in ("simulate", "demo"):
            return _simulate(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


def _certs(args: argparse.Namespace) -> int:
    from cloud_bridge.certs import init_ca, issue

    try:
        if args.certs_command == "init-ca":
            ca = init_ca(args.dir, args.county, args.days)
            print(f"county CA created: {ca.cert} (key {ca.key}, mode 0600)")
        else:
            files = issue(
                args.ca,
                args.name,
                args.out,
                kind=args.kind,
                dns_names=tuple(args.dns),
                ip_addresses=tuple(args.ip),
                force=args.force,
            )
            print(f"{args.kind} certificate for {args.name}: {files.cert} (key {files.key}, mode 0600)")
    except (ValueError, OSError) as exc:
        print(f"anju certs: {exc}", file=sys.stderr)
        return 2
    return 0


def _control(args: argparse.Namespace) -> int:
    from hub.control import request, socket_path

    config = load_config(args.config)
    message = {"cmd": "permit", "seconds": args.seconds} if args.command == "pair" else {"cmd": "status"}
    try:
        answer = request(socket_path(config.data_dir), message)
    except OSError as exc:
        print(
            f"anju {args.command}: no hub is running with data directory {config.data_dir} ({exc}); "
            "start it with `anju run --config FILE`",
            file=sys.stderr,
        )
        return 1
    if not answer.get("ok"):
        print(f"anju {args.command}: {answer.get('error')}", file=sys.stderr)
        return 1
    answer.pop("ok")
    if args.command == "pair":
        print(f"Zigbee joining is open for {answer['permit_s']} s: put the device in pairing mode now.")
    else:
        print(json.dumps(answer, indent=2))
    return 0


def _decode(args: argparse.Namespace) -> int:
    if args.decode_kind == "znp":
        return _decode_znp(args)
    if args.decode_kind == "dc09":
        return _decode_dc09(args)
    from edge.bthome import DecodeError, decode_service_data

    logging.getLogger("bthome_ble").setLevel(logging.CRITICAL)  # its warnings would repeat our one line
    try:
        data = bytes.fromhex(args.hex.replace(":", "").replace(" ", ""))
        key = bytes.fromhex(args.key) if args.key else None
        if key is not None and len(key) != 16:
            raise DecodeError(f"the key has {len(key)} bytes; a BTHome key has 16 (32 hex digits)")
        result = decode_service_data(data, args.mac, key)
    except (ValueError, DecodeError) as exc:
        print(f"anju decode bthome: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(
            f"encrypted: {result['encrypted']}  trigger-based: {result['trigger_based']}  "
            f"packet id: {result['packet_id']}  counter: {result['counter']}"
        )
        for name, value in result["values"].items():
            print(f"  {name}: {value}")
        for name in result["events"]:
            print(f"  event: {name}")
    return 0


def _decode_dc09(args: argparse.Namespace) -> int:
    from cloud_bridge.dc09 import FrameError, parse_frame

    try:
        raw = bytes.fromhex(args.frame.replace(" ", "").replace(":", "")) if args.hex else args.frame.encode("ascii")
        raw = (raw if raw.startswith(b"\n") else b"\n" + raw).rstrip(b"\r") + b"\r"
        frame = parse_frame(raw, key=args.key, key_format=args.key_format)
    except (ValueError, FrameError) as exc:
        print(f"anju decode dc09: {exc}", file=sys.stderr)
        return 2
    fields = {
        "message_id": frame.message_id,
        "encrypted": frame.encrypted,
        "sequence": frame.sequence,
        "receiver": frame.receiver,
        "prefix": frame.prefix,
        "account": frame.account,
        "data": frame.data,
        "timestamp": None if frame.timestamp is None else frame.timestamp.isoformat(),
    }
    if args.json:
        print(json.dumps(fields))
        return 0
    print(f"{frame.message_id} (CRC and length correct)")
    for name, value in fields.items():
        if name != "message_id" and value is not None:
            print(f"  {name}: {value}")
    if frame.encrypted and frame.data is None:
        print("  data: encrypted (give --key to read it)")
    return 0


def _decode_znp(args: argparse.Namespace) -> int:
    from edge.mt_decode import FrameError, decode_mt_frame

    try:
        result = decode_mt_frame(bytes.fromhex(args.hex.replace(":", "").replace(" ", "")))
    except (ValueError, FrameError) as exc:
        print(f"anju decode znp: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['type']} {result['subsystem']} {result['command']} ({result['command_id']})")
    for name, value in result.get("fields", {}).items():
        print(f"  {name}: {value}")
    zcl = result.get("zcl")
    if zcl:
        print(f"  ZCL: {zcl.get('command', zcl['command_id'])}, TSN {zcl['tsn']}, {zcl['direction']}")
        for name, value in zcl.get("fields", {}).items():
            print(f"    {name}: {value}")
        if "zone_status_bits" in zcl:
            print(f"    ZoneStatus bits: {', '.join(zcl['zone_status_bits']) or 'none'}")
    return 0


def _centre(args: argparse.Namespace) -> int:
    from cloud_bridge.mqtt import tls_context
    from hub.notify import sd_notify
    from simulator.centre import Centre

    tls = None
    if args.ca or args.cert or args.key:
        if not (args.ca and args.cert and args.key):
            print("anju centre: mutual TLS needs --ca, --cert and --key together", file=sys.stderr)
            return 2
        tls = tls_context(args.ca, args.cert, args.key)
    centre = Centre(
        args.host,
        args.port,
        args.db,
        args.centre_id,
        acknowledge=not args.no_ack,
        tls=tls,
        heartbeat_s=args.heartbeat_s,
        offline_grace_s=args.offline_grace_s,
        latency_log=args.latency_log,
    )
    try:
        asyncio.run(centre.run(on_ready=lambda: sd_notify("READY=1")))
    except KeyboardInterrupt:
        pass
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from simulator.runner import format_report, run_scenario
    from simulator.scenario import bundled, load_scenario

    path = bundled(args.scenario) if args.command == "demo" else args.scenario
    if args.command == "demo" and not path.exists():
        raise ConfigError(f"no bundled scenario {args.scenario!r} in {path.parent}")
    scenario = load_scenario(path)
    echo = None if args.json else (lambda line: print(line, flush=True))
    if echo:
        print(f"Playing {scenario.name}: {scenario.description or ''}".strip(), flush=True)
        print("(live: steps as they happen; the full timeline follows)\n", flush=True)
    result = asyncio.run(run_scenario(scenario, args.workdir, echo=echo))
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        print()
        print(format_report(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
