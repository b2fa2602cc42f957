"""`anju command`: sign a command with the county CA key, send it to one hub, print its answer.

    anju command --ca DIR --hub COUNTY/HUB_ID [--host H] [--port P] [--json] \\
        {silence | test-call | say TEXT | status | events [--limit N] | config FILE [--trial-s S]}

The command is signed with `DIR/ca.key` (cloud_bridge.commands), published on the hub's `cmd`
topic at QoS 1, and the hub's `cmd_result` awaited (subscribed before publishing, so it cannot be
missed). With `--tls-cert`/`--tls-key` (a centre certificate from `anju certs issue --kind centre`)
it connects over mutual TLS, trusting `DIR/ca.crt`. Exit status: 0 the hub carried it out, 1 it
refused, failed or did not answer in time, 2 bad usage (an unreadable key or file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import aiomqtt

from cloud_bridge.certs import CA_CERT, CA_KEY
from cloud_bridge.commands import new_command, sign_command
from cloud_bridge.contract import ContractError, decode, topic
from cloud_bridge.mqtt import mqtt_client, tls_context

ANSWER_WAIT_S = 30.0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "command",
        help="send a signed command to one hub and print its answer",
        description="Signs a command with the county CA key, publishes it on the hub's cmd topic and "
        "waits for the hub's cmd_result. Exit 0 when the hub carried it out, 1 when it refused, failed "
        "or did not answer, 2 on bad usage.",
    )
    parser.add_argument("--ca", type=Path, required=True, help="the county CA directory (ca.key signs, ca.crt for TLS)")
    parser.add_argument("--hub", required=True, metavar="COUNTY/HUB_ID", help="the hub, e.g. anxi/hub-0001")
    parser.add_argument("--host", default="127.0.0.1", help="the county broker (default: %(default)s)")
    parser.add_argument("--port", type=int, default=1883, help="its port (default: %(default)s)")
    parser.add_argument("--tls-cert", type=Path, help="the centre's client certificate, for mutual TLS")
    parser.add_argument("--tls-key", type=Path, help="the centre's client key, for mutual TLS")
    parser.add_argument("--wait", type=float, help=f"seconds to wait for the answer (default {ANSWER_WAIT_S:g})")
    parser.add_argument("--json", action="store_true", help="print the hub's cmd_result message as JSON")
    actions = parser.add_subparsers(dest="cmd", metavar="COMMAND", required=True)
    actions.add_parser("silence", help="stop the hub's siren")
    test = actions.add_parser("test-call", help="a test call over every uplink; the answer lists each path")
    test.add_argument("--wait-s", type=float, help="how long the hub waits for the centre's ack (default 15)")
    say = actions.add_parser("say", help="speak a message in the home (Mandarin voice, at most 200 characters)")
    say.add_argument("text")
    actions.add_parser("status", help="the hub's status, as `anju status` shows it")
    events = actions.add_parser("events", help="the hub's most recent events")
    events.add_argument("--limit", type=int, default=20, help="how many, 1 to 100 (default: %(default)s)")
    config = actions.add_parser("config", help="replace the hub's configuration (rolled back if it fails)")
    config.add_argument("file", type=Path, help="the whole new hub.toml")
    config.add_argument("--trial-s", type=float, default=60.0, help="time the hub has to come up (default: 60)")


def build(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    """County, hub id and the unsigned command the arguments describe (ValueError when wrong)."""
    county, _, hub_id = str(args.hub).partition("/")
    if not county or not hub_id:
        raise ValueError(f"--hub {args.hub!r}: give COUNTY/HUB_ID, e.g. anxi/hub-0001")
    topic(county, hub_id, "cmd")  # checks both ids
    argument: dict[str, Any] = {}
    name = {"test-call": "test"}.get(args.cmd, args.cmd)
    if args.cmd == "test-call" and args.wait_s is not None:
        argument["wait_s"] = args.wait_s
    elif args.cmd == "say":
        argument["text"] = args.text
    elif args.cmd == "events":
        if not 1 <= args.limit <= 100:
            raise ValueError(f"--limit {args.limit}: give 1 to 100")
        argument["limit"] = args.limit
    elif args.cmd == "config":
        try:
            argument["toml"] = args.file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"{args.file}: cannot read it ({exc})") from exc
        argument["trial_s"] = args.trial_s
    return county, hub_id, new_command(hub_id, name, argument)


async def send(
    host: str,
    port: int,
    county: str,
    signed: dict[str, Any],
    *,
    wait_s: float = ANSWER_WAIT_S,
    tls: Any = None,
) -> dict[str, Any] | None:
    """Publish a signed command and return the hub's `cmd_result` for it, or None after `wait_s`."""
    hub_id = signed["hub_id"]
    try:
        async with mqtt_client(host, port, f"anju-command-{uuid.uuid4().hex[:12]}", tls_context=tls) as client:
            await client.subscribe(topic(county, hub_id, "cmd_result"), qos=1)
            payload = json.dumps(signed, ensure_ascii=False).encode()
            await client.publish(topic(county, hub_id, "cmd"), payload, qos=1)
            async with asyncio.timeout(wait_s):
                async for message in client.messages:
                    try:
                        answer = decode("cmd_result", message.payload)
                    except ContractError:
                        continue
                    if answer["cmd_id"] == signed["cmd_id"]:
                        return answer
    except TimeoutError:
        return None
    return None


def describe(answer: dict[str, Any]) -> str:
    lines = [f"{answer['outcome']} ({answer['code']}): {answer['reason']}"]
    data = answer["data"]
    if answer["command"] == "events" and "events" in data:
        lines += [
            f"  #{e['seq']} {e['occurred_at']} {e['type']} {e.get('device_id') or '-'}"
            f" {'acked ' + str(e['acked_at']) if e.get('acked_at') else 'not acked'}"
            for e in data["events"]
        ]
    elif answer["command"] == "test" and "paths" in data:
        lines += [f"  {p['path']}: {'ok' if p['ok'] else 'FAILED'} ({p['detail']})" for p in data["paths"]]
    elif data:
        lines.append(json.dumps(data, ensure_ascii=False, indent=2))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    try:
        county, _, command = build(args)
        signed = sign_command(args.ca / CA_KEY, command)
        tls = None
        if args.tls_cert or args.tls_key:
            if not (args.tls_cert and args.tls_key):
                raise ValueError("--tls-cert and --tls-key go together")
            tls = tls_context(args.ca / CA_CERT, args.tls_cert, args.tls_key)
    except (ValueError, OSError) as exc:
        print(f"anju command: {exc}", file=sys.stderr)
        return 2
    wait_s = args.wait if args.wait is not None else ANSWER_WAIT_S + (args.trial_s if args.cmd == "config" else 0)
    try:
        answer = asyncio.run(send(args.host, args.port, county, signed, wait_s=wait_s, tls=tls))
    except aiomqtt.MqttError as exc:
        print(f"anju command: the broker {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    if answer is None:
        cmd_id = signed["cmd_id"]
        print(f"anju command: no answer from {args.hub} within {wait_s:g} s (cmd_id {cmd_id})", file=sys.stderr)
        return 1
    print(json.dumps(answer, ensure_ascii=False) if args.json else describe(answer))
    return 0 if answer["outcome"] == "ok" else 1
