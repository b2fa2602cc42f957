"""`anju provision …`: the installer's operations for scripts, the same as the web app's.

    anju provision import households.csv --out DIR --ca DIR      many hubs at once (hub.provision_import)
    anju provision pin --config FILE                              a new installer PIN (printed once)
    anju provision household --config FILE --elder-name … --contact NAME:PHONE[:RELATION] …
    anju provision device add|remove|list --config FILE …
    anju provision walk-test start|stop|show --config FILE         on the running hub
    anju provision test-call --config FILE                        on the running hub
    anju provision report --config FILE --installer NAME          on the running hub

Changes to the configuration go through hub.config_store (validated whole, written atomically,
0600); a running hub is told to restart with them. Operations on the running hub go through its
control socket (hub.control) and are answered by hub.installer, as the web app's are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hub import provision_import
from hub.api.security import hash_pin, new_pin
from hub.config import ConfigError, Contact, DeviceConfig, ProfileConfig
from hub.config_store import ConfigStore
from hub.control import request, socket_path
from hub.model import DeviceKind, Transport


def add_parser(sub: Any) -> None:
    provision = sub.add_parser(
        "provision",
        help="the installer's operations: bulk import, PIN, household, devices, walk test, test call, report",
        description="The same operations as the installer's web app, for scripts. Changes to a hub's "
        "configuration are checked whole before anything is written; a running hub restarts with them.",
    )
    actions = provision.add_subparsers(dest="provision_command", metavar="ACTION", required=True)

    provision_import.add_arguments(actions.add_parser("import", help="prepare many households from a CSV file"))

    pin = actions.add_parser("pin", help="set a new installer PIN (printed once, stored hashed)")
    pin.add_argument("--config", type=Path, required=True)
    pin.add_argument(
        "--pin", help="use this PIN (8-12 digits) instead of a random one (it shows in `ps`: prefer random)"
    )

    household = actions.add_parser(
        "household",
        help="set who lives here",
        epilog="example: anju provision household --config hub.toml --elder-name 王秀英 "
        "--contact 李强:13900000002:儿子 --waking 06:30-21:30",
    )
    household.add_argument("--config", type=Path, required=True)
    household.add_argument("--elder-name")
    household.add_argument("--address")
    household.add_argument("--phone")
    household.add_argument("--contact", action="append", default=None, help="NAME:PHONE[:RELATION], repeatable")
    household.add_argument("--waking", help="waking hours, HH:MM-HH:MM")

    device = actions.add_parser("device", help="add, remove or list devices")
    device_actions = device.add_subparsers(dest="device_command", metavar="ACTION", required=True)
    add = device_actions.add_parser(
        "add",
        help="add a device",
        epilog="examples: anju provision device add --config hub.toml --id cord-bath --kind pullcord "
        "--transport gpio --pin 17 --room 卫生间;  … --id pendant --kind pendant --transport ble "
        "--mac A4:C1:38:00:00:01 --key <32 hex digits>",
    )
    add.add_argument("--config", type=Path, required=True)
    add.add_argument("--id", required=True)
    add.add_argument("--kind", required=True, choices=[k.value for k in DeviceKind])
    add.add_argument("--transport", required=True, choices=[t.value for t in Transport])
    add.add_argument("--room")
    add.add_argument("--pin", type=int, help="GPIO (BCM) pin")
    add.add_argument("--mac", help="BLE address")
    add.add_argument("--key", help="BTHome bind key, 32 hex digits")
    add.add_argument("--ieee", help="Zigbee IEEE address")
    remove = device_actions.add_parser("remove", help="remove a device")
    remove.add_argument("--config", type=Path, required=True)
    remove.add_argument("--id", required=True)
    listing = device_actions.add_parser("list", help="list the devices (JSON)")
    listing.add_argument("--config", type=Path, required=True)

    walk = actions.add_parser("walk-test", help="start, stop or show the walk test on the running hub")
    walk.add_argument("action", choices=["start", "stop", "show"])
    walk.add_argument("--config", type=Path, required=True)

    call = actions.add_parser("test-call", help="send a test call over every uplink of the running hub")
    call.add_argument("--config", type=Path, required=True)

    report = actions.add_parser("report", help="make the commissioning report on the running hub")
    report.add_argument("--config", type=Path, required=True)
    report.add_argument("--installer", required=True, help="the installer's name, printed on the report")
    report.add_argument("--lang", choices=["zh", "en"], default="zh")


def main(args: argparse.Namespace) -> int:
    try:
        if args.provision_command == "import":
            return provision_import.main(args)
        if args.provision_command in ("pin", "household", "device"):
            return _change(args)
        return _on_hub(args)
    except ConfigError as exc:
        print(f"anju provision: {exc}", file=sys.stderr)
        return 2


def _change(args: argparse.Namespace) -> int:
    store = ConfigStore(args.config)
    if args.provision_command == "device" and args.device_command == "list":
        print(json.dumps([d.model_dump(mode="json", exclude_none=True) for d in store.load().devices], indent=2))
        return 0
    printed: list[str] = []

    def change(raw: dict[str, Any]) -> None:
        if args.provision_command == "pin":
            pin = args.pin or new_pin()
            if not (pin.isdigit() and 8 <= len(pin) <= 12):
                raise ConfigError("a PIN is 8 to 12 digits (with the lockout, guessing 8 digits is hopeless)")
            raw.setdefault("api", {})["pin_hash"] = hash_pin(pin)
            printed.append(f"installer PIN: {pin}  (print it on the hub's label; it is stored only as a hash)")
        elif args.provision_command == "household":
            profile = ProfileConfig.model_validate(raw.get("profile", {}))
            updates: dict[str, Any] = {
                key: value
                for key, value in (("elder_name", args.elder_name), ("address", args.address), ("phone", args.phone))
                if value is not None
            }
            if args.contact is not None:
                updates["contacts"] = [_contact(text) for text in args.contact]
            raw["profile"] = profile.model_copy(update=updates).model_dump(mode="json", exclude_none=True)
            if args.waking:
                raw.setdefault("rules", {}).setdefault("inactivity", {})["waking"] = args.waking
        elif args.device_command == "add":
            fields = {k: getattr(args, k) for k in ("id", "kind", "transport", "room", "pin", "mac", "key", "ieee")}
            device = DeviceConfig.model_validate({k: v for k, v in fields.items() if v is not None})
            raw.setdefault("devices", []).append(device.model_dump(mode="json", exclude_none=True))
        else:
            before = len(raw.get("devices", []))
            raw["devices"] = [d for d in raw.get("devices", []) if d.get("id") != args.id]
            if len(raw["devices"]) == before:
                raise ConfigError(f"no device {args.id!r} in {args.config}")

    try:
        config = store.update(change)
    except ValueError as exc:  # a pydantic error inside `change` (a bad contact or device)
        raise ConfigError(f"{args.config}: {exc}") from exc
    for line in printed:
        print(line)
    print(f"{args.config}: saved ({len(config.devices)} device(s))")
    try:
        request(socket_path(config.data_dir), {"cmd": "reload"}, timeout=5)
        print("the running hub restarts with it")
    except OSError:
        pass  # no hub running: it reads the file when it starts
    return 0


def _contact(text: str) -> Contact:
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ConfigError(f"--contact {text!r}: write NAME:PHONE or NAME:PHONE:RELATION")
    return Contact(name=parts[0], phone=parts[1], relation=parts[2] if len(parts) == 3 else "")


def _on_hub(args: argparse.Namespace) -> int:
    config = ConfigStore(args.config).load()
    if args.provision_command == "walk-test":
        message: dict[str, Any] = {"cmd": "walk_test", "action": args.action}
    elif args.provision_command == "test-call":
        message = {"cmd": "test_call"}
    else:
        message = {"cmd": "commission", "installer": args.installer, "lang": args.lang}
    try:
        answer = request(socket_path(config.data_dir), message, timeout=60)
    except OSError as exc:
        print(
            f"anju provision: no hub is running with data directory {config.data_dir} ({exc}); "
            "start it with `anju run --config FILE`",
            file=sys.stderr,
        )
        return 1
    if not answer.pop("ok", False):
        print(f"anju provision: {answer.get('error')}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2, ensure_ascii=False))
    return 0
