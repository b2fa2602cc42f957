"""`anju decode znp`: one TI Monitor-and-Test frame, decoded for a person with the radio libraries'
own parsers (zigpy-znp for the MT frame and its fields, zigpy for ZCL), never a parser of ours.

For an AF_INCOMING_MSG on the IAS Zone cluster (0x0500) the ZCL command is decoded too, and a
Zone Status Change Notification's ZoneStatus bits are named.
"""

from __future__ import annotations

import enum
from typing import Any

ZONE_STATUS_BITS = (
    "alarm1",
    "alarm2",
    "tamper",
    "battery_low",
    "supervision_reports",
    "restore_reports",
    "trouble",
    "ac_mains_fault",
    "test",
    "battery_defect",
)
_TYPES = {0: "POLL", 1: "SREQ", 2: "AREQ", 3: "SRSP"}


class FrameError(ValueError):
    """Bytes that are not one good MT frame; the message says what is wrong (length, FCS, …)."""


def decode_mt_frame(data: bytes) -> dict[str, Any]:
    from zigpy_znp.commands import COMMANDS_BY_ID
    from zigpy_znp.exceptions import InvalidFrame
    from zigpy_znp.frames import TransportFrame

    if len(data) < 5:
        raise FrameError(f"an MT frame has at least 5 bytes (SOF, length, CMD0, CMD1, FCS); got {len(data)}")
    if data[0] != 0xFE:
        raise FrameError(f"an MT frame starts with SOF 0xFE; got 0x{data[0]:02X}")
    if len(data) != data[1] + 5:
        raise FrameError(f"the length byte says {data[1]} data bytes, so {data[1] + 5} in all; got {len(data)}")
    try:
        frame, _ = TransportFrame.deserialize(data)
    except InvalidFrame as exc:
        raise FrameError(f"bad FCS: {exc}") from None
    header = frame.payload.header
    command_type = int(header.type)
    result: dict[str, Any] = {
        "type": _TYPES.get(command_type, str(command_type)),
        "subsystem": getattr(header.subsystem, "name", str(header.subsystem)),
        "command_id": f"0x{int(header.id):02X}",
        "data": frame.payload.data.hex(),
    }
    command = COMMANDS_BY_ID.get(header)
    if command is None:
        result["command"] = "unknown"
        return result
    result["command"] = command.__qualname__.replace(".", "_")
    try:
        parsed = command.from_frame(frame.payload)
    except ValueError as exc:
        raise FrameError(f"{result['command']}: {exc}") from None
    fields = {name: _plain(value) for name, value in parsed.as_dict().items()}
    result["fields"] = fields
    if result["command"].startswith("AF_IncomingMsg") and int(parsed.ClusterId) == 0x0500:
        result["zcl"] = decode_ias_zcl(bytes(parsed.Data))
    return result


def decode_ias_zcl(payload: bytes) -> dict[str, Any]:
    """A ZCL frame on the IAS Zone cluster, with zigpy's header and command schema."""
    from zigpy.zcl import foundation
    from zigpy.zcl.clusters.security import IasZone

    header, rest = foundation.ZCLHeader.deserialize(payload)
    out: dict[str, Any] = {
        "tsn": header.tsn,
        "command_id": f"0x{header.command_id:02X}",
        "cluster_specific": header.frame_control.is_cluster,
        "direction": "server to client"
        if header.direction == foundation.Direction.Server_to_Client
        else "client to server",
    }
    if header.frame_control.is_cluster:
        commands = (
            IasZone.client_commands
            if header.direction == foundation.Direction.Server_to_Client
            else (IasZone.server_commands)
        )
        definition = commands.get(header.command_id)
        if definition is not None:
            args, _ = definition.schema.deserialize(rest)
            out["command"] = definition.name
            out["fields"] = {name: _plain(value) for name, value in args.as_dict().items()}
            if isinstance(out["fields"].get("zone_status"), str):
                out["fields"]["zone_status"] = int(args.as_dict()["zone_status"])
            if "zone_status" in out["fields"]:
                status = int(out["fields"]["zone_status"])
                out["zone_status_bits"] = [n for i, n in enumerate(ZONE_STATUS_BITS) if status & (1 << i)]
    return out


def _plain(value: Any) -> Any:
    """A JSON-friendly form of a zigpy type."""
    if type(value).__name__ in ("EUI64", "NWK", "ExtendedPanId", "KeyData", "PanId", "Group"):
        return str(value)  # zigpy's own notation: 00:0d:6f:…, 0x1234
    if isinstance(value, enum.Enum):
        return value.name if value.name is not None else int(value.value)
    if isinstance(value, bool | str | float) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)
