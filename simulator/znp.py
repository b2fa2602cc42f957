"""A virtual TI CC2652 coordinator running Z-Stack 3.x (ZNP firmware) behind a real pseudo-terminal.

The hub's unmodified zigpy-znp opens ``VirtualZnp.port_path`` (a stable symlink to the current
pty slave) exactly as it opens ``/dev/ttyUSB0`` and speaks TI Monitor-and-Test (MT) frames to it::

    SOF 0xFE | length | CMD0 = type << 5 | subsystem | CMD1 | data (length bytes) | FCS

FCS is the XOR of length, CMD0, CMD1 and the data. Every byte this module writes is built here
from the TI MT API, the Zigbee (ZDO) and ZCL specifications: it imports no radio library, so a
bug in zigpy-znp's parser cannot be cancelled out by the same bug here.

What the virtual dongle does
----------------------------
* **SYS**: ping (capabilities SYS|AF|ZDO|UTIL|GP|APP_CNF, as a CC2652 running Z-Stack 3.x.0
  reports), version (transport 2, product 1, release 2.7.1, build 20230507: a Z-Stack 3.30+
  build), soft/hard reset with ``SYS_RESET_IND``, ext address, TX power, and the whole NVRAM API:
  the OSAL items (``SYS_OSAL_NV_*``) and the Z-Stack 3.30 NV tables (``SYS_NV_*``: the address
  manager, TC link key, APS key data and network security material tables).
* **NVRAM** is a dict ``(sys_id, item_id, sub_id) -> bytes`` (OSAL item ``n`` is ``(1, 0, n)``)
  persisted as JSON in ``<state_dir>/nvram.json`` after every batch of frames that changed it, so a
  restarted dongle (or hub) finds its network formed. A fresh state dir is a factory-new dongle.
  ``STARTUP_OPTION`` (clear state / clear config) is honoured at the next reset, and items the
  stack owns are re-created with their defaults when a reset finds them deleted.
* **BDB commissioning** (``APP_CNF_BDB_START_COMMISSIONING``): a dongle that is not on a network
  forms one from its NV settings (PAN id, extended PAN id, network key = ``PRECFGKEY``, the BDB
  primary channel mask); one that is restores it. ``ZDO_STATE_CHANGE_IND`` and
  ``APP_CNF_BDB_COMMISSIONING_NOTIFICATION`` follow as Z-Stack sends them.
* **AF**: endpoint registration, ``AF_DATA_REQUEST``/``_EXT``/``_SRC_RTG`` answered with an SRSP
  and an ``AF_DATA_CONFIRM``; ZDO requests sent through AF (endpoint 0, as zigpy-znp does) are
  answered by the coordinator's own ZDO or by the addressed virtual device, as
  ``ZDO_MSG_CB_INCOMING`` (after ``ZDO_MSG_CB_REGISTER``) and the matching ``ZDO_*_RSP``.
* **ZDO/UTIL**: permit join, route check/discovery, the MT ZDO requests (node, active endpoint and
  simple descriptors, bind, leave, LQI, address requests), device info, association table, LEDs.
* Anything else is logged as an unknown request and answered as Z-Stack answers it: an SREQ gets
  an ``RPC_ERROR`` SRSP (unknown subsystem / command id / bad length), so nothing hangs.

Virtual end devices (``add_device``) are IAS Zone sensors on endpoint 1 (Basic, Power
Configuration, IAS Zone). They join only while permit-join is open (``ZDO_TC_DEV_IND``, then their
announcement as ``ZDO_END_DEVICE_ANNCE_IND`` and ``ZDO_MSG_CB_INCOMING``), answer zigpy's
interview, Read/Write Attributes, Configure Reporting and Bind, send a Zone Enroll Request once
their ``IAS_CIE_Address`` is written, and record the CIE's Enroll Response and every ZCL command
they receive. ``zone_status`` / ``report_battery`` send Zone Status Change Notifications and
attribute reports in ``AF_INCOMING_MSG`` frames.

A device is on the network when the dongle's NV says so (its address manager entry, written at
join, cleared by a leave or a ClearState reset, and written by the host when it restores a network
backup onto a blank dongle: a replaced dongle keeps its devices). What the devices themselves
remember (enrolment, CIE address, zone id, zone status, battery) is kept in
``<state_dir>/devices.json``.

A device frame only reaches the hub when a real coordinator would pass it on: the port is plugged
and answering, the network is started (after a reset Z-Stack waits for the host to commission
again) and the hub's endpoint is registered (registrations are lost at every reset). Frames that
arrive while the dongle reboots are lost, as on the real UART.

Use::

    async with VirtualZnp(Path("/tmp/znp")) as dongle:     # the hub opens dongle.port_path
        dongle.add_device("00:0d:6f:00:0a:90:69:e7", 0x1234, "smoke")
        await dongle.wait_until(lambda: dongle.permit_join_open, timeout=30)
        await dongle.join("00:0d:6f:00:0a:90:69:e7")
        await dongle.wait_until(lambda: dongle.devices["00:0d:6f:00:0a:90:69:e7"].enrolled)
        await dongle.zone_status("00:0d:6f:00:0a:90:69:e7", alarm1=True)

Faults: ``unplug``/``replug`` (the pty vanishes; a new one appears behind the same symlink),
``reset`` (a spontaneous ``SYS_RESET_IND``: RAM state lost), ``hang`` (no answers at all),
``send_garbage``, ``duplicate_next``. ``counters`` counts frames in and out, pings answered and
what was dropped.

Timing is fast by default (a real CC2652 takes about a second to reset and several to scan
energy); the ``*_delay`` attributes can be raised for realism.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import random
import struct
import termios
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# The MT frame codec (TI Z-Stack Monitor and Test API)
# --------------------------------------------------------------------------------------------

SOF = 0xFE
MAX_DATA_LEN = 250


class MtType(enum.IntEnum):
    POLL = 0
    SREQ = 1
    AREQ = 2
    SRSP = 3


class Subsystem(enum.IntEnum):
    RPC_ERROR = 0x00
    SYS = 0x01
    MAC = 0x02
    NWK = 0x03
    AF = 0x04
    ZDO = 0x05
    SAPI = 0x06
    UTIL = 0x07
    DEBUG = 0x08
    APP = 0x09
    OTA = 0x0A
    ZNP = 0x0B
    UBL_FUNC = 0x0D
    APP_CNF = 0x0F
    PROTOBUF = 0x11
    ZGP = 0x15


# Synchronous commands (SREQ and their SRSP share the id) by (subsystem, CMD1).
SYNC_COMMANDS: dict[tuple[int, int], str] = {
    (Subsystem.RPC_ERROR, 0x00): "RPC_ERROR",
    (Subsystem.SYS, 0x01): "SYS_PING",
    (Subsystem.SYS, 0x02): "SYS_VERSION",
    (Subsystem.SYS, 0x03): "SYS_SET_EXTADDR",
    (Subsystem.SYS, 0x04): "SYS_GET_EXTADDR",
    (Subsystem.SYS, 0x07): "SYS_OSAL_NV_ITEM_INIT",
    (Subsystem.SYS, 0x08): "SYS_OSAL_NV_READ",
    (Subsystem.SYS, 0x09): "SYS_OSAL_NV_WRITE",
    (Subsystem.SYS, 0x0C): "SYS_RANDOM",
    (Subsystem.SYS, 0x12): "SYS_OSAL_NV_DELETE",
    (Subsystem.SYS, 0x13): "SYS_OSAL_NV_LENGTH",
    (Subsystem.SYS, 0x14): "SYS_SET_TX_POWER",
    (Subsystem.SYS, 0x1C): "SYS_OSAL_NV_READ_EXT",
    (Subsystem.SYS, 0x1D): "SYS_OSAL_NV_WRITE_EXT",
    (Subsystem.SYS, 0x30): "SYS_NV_CREATE",
    (Subsystem.SYS, 0x31): "SYS_NV_DELETE",
    (Subsystem.SYS, 0x32): "SYS_NV_LENGTH",
    (Subsystem.SYS, 0x33): "SYS_NV_READ",
    (Subsystem.SYS, 0x34): "SYS_NV_WRITE",
    (Subsystem.SYS, 0x35): "SYS_NV_UPDATE",
    (Subsystem.SYS, 0x36): "SYS_NV_COMPACT",
    (Subsystem.AF, 0x00): "AF_REGISTER",
    (Subsystem.AF, 0x01): "AF_DATA_REQUEST",
    (Subsystem.AF, 0x02): "AF_DATA_REQUEST_EXT",
    (Subsystem.AF, 0x03): "AF_DATA_REQUEST_SRC_RTG",
    (Subsystem.AF, 0x04): "AF_DELETE",
    (Subsystem.ZDO, 0x00): "ZDO_NWK_ADDR_REQ",
    (Subsystem.ZDO, 0x01): "ZDO_IEEE_ADDR_REQ",
    (Subsystem.ZDO, 0x02): "ZDO_NODE_DESC_REQ",
    (Subsystem.ZDO, 0x04): "ZDO_SIMPLE_DESC_REQ",
    (Subsystem.ZDO, 0x05): "ZDO_ACTIVE_EP_REQ",
    (Subsystem.ZDO, 0x21): "ZDO_BIND_REQ",
    (Subsystem.ZDO, 0x22): "ZDO_UNBIND_REQ",
    (Subsystem.ZDO, 0x31): "ZDO_MGMT_LQI_REQ",
    (Subsystem.ZDO, 0x34): "ZDO_MGMT_LEAVE_REQ",
    (Subsystem.ZDO, 0x36): "ZDO_MGMT_PERMIT_JOIN_REQ",
    (Subsystem.ZDO, 0x37): "ZDO_MGMT_NWK_UPDATE_REQ",
    (Subsystem.ZDO, 0x3E): "ZDO_MSG_CB_REGISTER",
    (Subsystem.ZDO, 0x3F): "ZDO_MSG_CB_REMOVE",
    (Subsystem.ZDO, 0x40): "ZDO_STARTUP_FROM_APP",
    (Subsystem.ZDO, 0x45): "ZDO_EXT_ROUTE_DISC",
    (Subsystem.ZDO, 0x46): "ZDO_EXT_ROUTE_CHECK",
    (Subsystem.UTIL, 0x00): "UTIL_GET_DEVICE_INFO",
    (Subsystem.UTIL, 0x09): "UTIL_TIME_ALIVE",
    (Subsystem.UTIL, 0x0A): "UTIL_LED_CONTROL",
    (Subsystem.UTIL, 0x48): "UTIL_ASSOC_COUNT",
    (Subsystem.UTIL, 0x49): "UTIL_ASSOC_FIND_DEVICE",
    (Subsystem.UTIL, 0x4A): "UTIL_ASSOC_GET_WITH_ADDRESS",
    (Subsystem.UTIL, 0x63): "UTIL_ASSOC_REMOVE",
    (Subsystem.UTIL, 0x64): "UTIL_ASSOC_ADD",
    (Subsystem.APP_CNF, 0x01): "APP_CNF_SET_DEFAULT_REMOTE_ENDDEVICE_TIMEOUT",
    (Subsystem.APP_CNF, 0x02): "APP_CNF_SET_ENDDEVICETIMEOUT",
    (Subsystem.APP_CNF, 0x03): "APP_CNF_SET_ALLOWREJOIN_TC_POLICY",
    (Subsystem.APP_CNF, 0x04): "APP_CNF_BDB_ADD_INSTALLCODE",
    (Subsystem.APP_CNF, 0x05): "APP_CNF_BDB_START_COMMISSIONING",
    (Subsystem.APP_CNF, 0x06): "APP_CNF_BDB_SET_JOINUSESINSTALLCODEKEY",
    (Subsystem.APP_CNF, 0x07): "APP_CNF_BDB_SET_ACTIVE_DEFAULT_CENTRALIZED_KEY",
    (Subsystem.APP_CNF, 0x08): "APP_CNF_BDB_SET_CHANNEL",
    (Subsystem.APP_CNF, 0x09): "APP_CNF_BDB_SET_TC_REQUIRE_KEY_EXCHANGE",
    (Subsystem.APP_CNF, 0xFF): "APP_CNF_SET_NWK_FRAME_COUNTER",
}

# Asynchronous commands by (subsystem, CMD1): host -> dongle (SYS_RESET_REQ) and the callbacks.
ASYNC_COMMANDS: dict[tuple[int, int], str] = {
    (Subsystem.SYS, 0x00): "SYS_RESET_REQ",
    (Subsystem.SYS, 0x80): "SYS_RESET_IND",
    (Subsystem.AF, 0x80): "AF_DATA_CONFIRM",
    (Subsystem.AF, 0x81): "AF_INCOMING_MSG",
    (Subsystem.AF, 0x82): "AF_INCOMING_MSG_EXT",
    (Subsystem.ZDO, 0x80): "ZDO_NWK_ADDR_RSP",
    (Subsystem.ZDO, 0x81): "ZDO_IEEE_ADDR_RSP",
    (Subsystem.ZDO, 0x82): "ZDO_NODE_DESC_RSP",
    (Subsystem.ZDO, 0x83): "ZDO_POWER_DESC_RSP",
    (Subsystem.ZDO, 0x84): "ZDO_SIMPLE_DESC_RSP",
    (Subsystem.ZDO, 0x85): "ZDO_ACTIVE_EP_RSP",
    (Subsystem.ZDO, 0xA1): "ZDO_BIND_RSP",
    (Subsystem.ZDO, 0xA2): "ZDO_UNBIND_RSP",
    (Subsystem.ZDO, 0xB1): "ZDO_MGMT_LQI_RSP",
    (Subsystem.ZDO, 0xB2): "ZDO_MGMT_RTG_RSP",
    (Subsystem.ZDO, 0xB4): "ZDO_MGMT_LEAVE_RSP",
    (Subsystem.ZDO, 0xB6): "ZDO_MGMT_PERMIT_JOIN_RSP",
    (Subsystem.ZDO, 0xB8): "ZDO_MGMT_NWK_UPDATE_NOTIFY",
    (Subsystem.ZDO, 0xC0): "ZDO_STATE_CHANGE_IND",
    (Subsystem.ZDO, 0xC1): "ZDO_END_DEVICE_ANNCE_IND",
    (Subsystem.ZDO, 0xC4): "ZDO_SRC_RTG_IND",
    (Subsystem.ZDO, 0xC9): "ZDO_LEAVE_IND",
    (Subsystem.ZDO, 0xCA): "ZDO_TC_DEV_IND",
    (Subsystem.ZDO, 0xCB): "ZDO_PERMIT_JOIN_IND",
    (Subsystem.ZDO, 0xFF): "ZDO_MSG_CB_INCOMING",
    (Subsystem.APP_CNF, 0x80): "APP_CNF_BDB_COMMISSIONING_NOTIFICATION",
}


@dataclass(frozen=True)
class MtFrame:
    type: int
    subsystem: int
    command: int
    data: bytes = b""

    @property
    def name(self) -> str:
        return command_name(self.type, self.subsystem, self.command)


def _fcs(body: bytes) -> int:
    fcs = 0
    for byte in body:
        fcs ^= byte
    return fcs


def command_name(frame_type: int, subsystem: int, command: int) -> str:
    table = ASYNC_COMMANDS if frame_type == MtType.AREQ else SYNC_COMMANDS
    name = table.get((subsystem, command))
    if name is not None:
        return name
    try:
        prefix = Subsystem(subsystem).name
    except ValueError:
        prefix = f"SUBSYSTEM_0x{subsystem:02X}"
    return f"{prefix}_0x{command:02X}"


def encode_frame(frame_type: int, subsystem: int, command: int, data: bytes = b"") -> bytes:
    """One MT frame: SOF, length, CMD0, CMD1, data, FCS."""
    if len(data) > MAX_DATA_LEN:
        raise ValueError(f"MT data is {len(data)} bytes; a frame carries at most {MAX_DATA_LEN}")
    body = bytes([len(data), (frame_type & 0x07) << 5 | (subsystem & 0x1F), command & 0xFF]) + data
    return bytes([SOF]) + body + bytes([_fcs(body)])


def decode_frame(data: bytes) -> dict[str, Any]:
    """One complete MT frame for a person or a test: type, subsystem, command and the data in hex.

    Raises ``ValueError`` naming what is wrong: a missing SOF, a bad length or a bad FCS.
    """
    if len(data) < 5:
        raise ValueError(
            f"MT frame too short: {len(data)} bytes, the shortest frame is 5 (SOF, length, CMD0, CMD1, FCS)"
        )
    if data[0] != SOF:
        raise ValueError(f"not an MT frame: it starts with 0x{data[0]:02X}, not SOF 0xFE")
    length = data[1]
    if length > MAX_DATA_LEN:
        raise ValueError(f"bad length: 0x{length:02X} ({length}) exceeds the MT maximum of {MAX_DATA_LEN} data bytes")
    if len(data) != length + 5:
        raise ValueError(
            f"bad length: the length byte says {length} data bytes, so {length + 5} bytes in all, "
            f"but the frame has {len(data)}"
        )
    body = data[1:-1]
    fcs = _fcs(body)
    if fcs != data[-1]:
        raise ValueError(f"bad FCS: the frame carries 0x{data[-1]:02X}, the XOR of its bytes is 0x{fcs:02X}")
    cmd0, cmd1 = data[2], data[3]
    frame_type, subsystem = cmd0 >> 5, cmd0 & 0x1F
    try:
        type_name = MtType(frame_type).name
    except ValueError:
        type_name = f"RESERVED_{frame_type}"
    try:
        subsystem_name = Subsystem(subsystem).name
    except ValueError:
        subsystem_name = f"0x{subsystem:02X}"
    table = ASYNC_COMMANDS if frame_type == MtType.AREQ else SYNC_COMMANDS
    return {
        "type": type_name,
        "subsystem": subsystem_name,
        "command": command_name(frame_type, subsystem, cmd1),
        "known": (subsystem, cmd1) in table,
        "cmd0": cmd0,
        "cmd1": cmd1,
        "length": length,
        "data": data[4:-1].hex(),
        "fcs": data[-1],
    }


class FrameReader:
    """Incremental MT frame reader that resynchronises on the next SOF after any bad byte."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.bad_frames = 0
        self.dropped_bytes = 0

    def feed(self, data: bytes) -> list[MtFrame]:
        self._buffer += data
        frames: list[MtFrame] = []
        buf = self._buffer
        while buf:
            if buf[0] != SOF:
                start = buf.find(SOF)
                dropped = len(buf) if start < 0 else start
                self.dropped_bytes += dropped
                log.warning("MT link: dropped %d byte(s) that are not a frame: %s", dropped, bytes(buf[:dropped]).hex())
                del buf[:dropped]
                continue
            if len(buf) < 2:
                break
            length = buf[1]
            if length > MAX_DATA_LEN:
                log.warning("MT link: length byte 0x%02X exceeds %d; resynchronising", length, MAX_DATA_LEN)
                self.bad_frames += 1
                self.dropped_bytes += 1
                del buf[:1]
                continue
            if len(buf) < length + 5:
                break
            body = bytes(buf[1 : length + 4])
            if _fcs(body) != buf[length + 4]:
                log.warning(
                    "MT link: bad FCS (0x%02X, expected 0x%02X) in %s; resynchronising",
                    buf[length + 4],
                    _fcs(body),
                    bytes(buf[: length + 5]).hex(),
                )
                self.bad_frames += 1
                self.dropped_bytes += 1
                del buf[:1]
                continue
            cmd0, cmd1 = body[1], body[2]
            frames.append(MtFrame(cmd0 >> 5, cmd0 & 0x1F, cmd1, body[3:]))
            del buf[: length + 5]
        return frames


# --------------------------------------------------------------------------------------------
# Small binary helpers
# --------------------------------------------------------------------------------------------


class _Short(ValueError):
    """A request is shorter than its fields."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Short(f"needs {self.pos + n} bytes, has {len(self.data)}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def i8(self) -> int:
        return int(struct.unpack("<b", self.take(1))[0])

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


def _u16(value: int) -> bytes:
    return struct.pack("<H", value & 0xFFFF)


def _u32(value: int) -> bytes:
    return struct.pack("<I", value & 0xFFFFFFFF)


def normalize_ieee(ieee: str) -> str:
    """``00:12:4B:…``, ``00-12-4b-…`` or ``00124b…`` -> ``00:12:4b:…``."""
    digits = ieee.replace(":", "").replace("-", "").strip().lower()
    if len(digits) != 16 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"not an IEEE (EUI-64) address: {ieee!r}")
    return ":".join(digits[i : i + 2] for i in range(0, 16, 2))


def ieee_to_wire(ieee: str) -> bytes:
    """Display order (most significant byte first) -> the 8 little-endian bytes on the wire."""
    return bytes.fromhex(normalize_ieee(ieee).replace(":", ""))[::-1]


def ieee_from_wire(data: bytes) -> str:
    return ":".join(f"{b:02x}" for b in data[::-1])


def _channels(mask: int) -> list[int]:
    return [ch for ch in range(11, 27) if mask & (1 << ch)]


# --------------------------------------------------------------------------------------------
# Z-Stack constants and NVRAM layout (Z-Stack 3.x on a 32-bit ARM: structs are aligned)
# --------------------------------------------------------------------------------------------

CAPABILITIES = 0x0659  # SYS | AF | ZDO | UTIL | GP | APP_CNF
VERSION = (2, 1, 2, 7, 1)  # transport rev, product id (CC2652), major, minor, maintenance
CODE_REVISION = 20230507
BOOTLOADER_BUILD_TYPE = 0  # not a bootloader build
BOOTLOADER_REVISION = 0xFFFFFFFF

ST_SUCCESS = 0x00
ST_FAILURE = 0x01
ST_INVALID_PARAMETER = 0x02
ST_NV_ITEM_UNINIT = 0x09
ST_NV_OPER_FAILED = 0x0A
ST_NV_BAD_ITEM_LEN = 0x0C
ST_APS_DUPLICATE_ENTRY = 0xB8
ST_NWK_INVALID_REQUEST = 0xC2
ST_NWK_NO_ROUTE = 0xCD

RPC_ERR_SUBSYSTEM = 0x01
RPC_ERR_COMMAND_ID = 0x02
RPC_ERR_PARAMETER = 0x03
RPC_ERR_LENGTH = 0x04


class DeviceState(enum.IntEnum):
    HOLD = 0x00  # initialised, not started
    INIT = 0x01
    NWK_DISC = 0x02
    NWK_JOINING = 0x03
    DEV_END_DEVICE = 0x06
    DEV_ROUTER = 0x07
    DEV_COORD_STARTING = 0x08
    DEV_ZB_COORD = 0x09


class BdbStatus(enum.IntEnum):
    SUCCESS = 0x00
    IN_PROGRESS = 0x01
    NO_NETWORK = 0x02
    FORMATION_FAILURE = 0x08
    NETWORK_RESTORED = 0x0D
    FAILURE = 0x0E


BDB_MODE_INITIALIZATION = 0x00
BDB_MODE_STEERING = 0x02
BDB_MODE_FORMATION = 0x04

RESET_POWER_UP = 0x00
RESET_EXTERNAL = 0x01
RESET_WATCHDOG = 0x02

STARTUP_CLEAR_CONFIG = 0x01
STARTUP_CLEAR_STATE = 0x02

ZSTACK_SYS = 1  # NvSysId of the Z-Stack
ITEM_LEGACY = 0x0000  # the OSAL items live here: (1, 0, nv_id)
ITEM_ADDRMGR = 0x0001
ITEM_TCLK_TABLE = 0x0004
ITEM_APS_KEY_DATA_TABLE = 0x0006
ITEM_NWK_SEC_MATERIAL_TABLE = 0x0007

# Simulator choices for the table capacities (a real build sets them at compile time).
ADDRMGR_ENTRIES = 64
TCLK_ENTRIES = 16
APS_KEY_DATA_ENTRIES = 16
NWK_SEC_MATERIAL_ENTRIES = 4

ADDRMGR_ENTRY_SIZE = 12  # user type, pad, nwk addr, ext addr
TCLK_ENTRY_SIZE = 20  # tx counter, rx counter, ext addr, key attributes, key type, seed shift, pad
APS_KEY_DATA_ENTRY_SIZE = 24  # key, tx counter, rx counter
NWK_SEC_MATERIAL_SIZE = 12  # frame counter, extended PAN id
EMPTY_ADDRMGR_ENTRY = b"\xff" * ADDRMGR_ENTRY_SIZE
EMPTY_TCLK_ENTRY = bytes(16) + b"\xff\x00\x00\x00"  # key attributes 0xFF: default key


class NvId(enum.IntEnum):
    EXTADDR = 0x0001
    STARTUP_OPTION = 0x0003
    START_DELAY = 0x0004
    NIB = 0x0021
    DATA_RETRIES = 0x0028
    POLL_FAILURE_RETRIES = 0x0029
    STACK_PROFILE = 0x002A
    INDIRECT_MSG_TIMEOUT = 0x002B
    ROUTE_EXPIRY_TIME = 0x002C
    EXTENDED_PAN_ID = 0x002D
    BCAST_RETRIES = 0x002E
    PASSIVE_ACK_TIMEOUT = 0x002F
    BCAST_DELIVERY_TIME = 0x0030
    CONCENTRATOR_ENABLE = 0x0032
    CONCENTRATOR_DISCOVERY = 0x0033
    CONCENTRATOR_RADIUS = 0x0034
    CONCENTRATOR_RC = 0x0036
    NWK_MGR_MODE = 0x0037
    SRC_RTG_EXPIRY_TIME = 0x0038
    ROUTE_DISCOVERY_TIME = 0x0039
    NWK_ACTIVE_KEY_INFO = 0x003A
    NWK_ALTERN_KEY_INFO = 0x003B
    ROUTER_OFF_ASSOC_CLEANUP = 0x003C
    NWK_LEAVE_REQ_ALLOWED = 0x003D
    NWK_CHILD_AGE_ENABLE = 0x003E
    GROUP_TABLE = 0x0042
    APS_FRAME_RETRIES = 0x0043
    APS_ACK_WAIT_DURATION = 0x0044
    APS_ACK_WAIT_MULTIPLIER = 0x0045
    BINDING_TIME = 0x0046
    APS_USE_EXT_PANID = 0x0047
    APS_USE_INSECURE_JOIN = 0x0048
    COMMISSIONED_NWK_ADDR = 0x0049
    APS_NONMEMBER_RADIUS = 0x004B
    APS_LINK_KEY_TABLE = 0x004C
    APS_DUPREJ_TIMEOUT_INC = 0x004D
    APS_DUPREJ_TIMEOUT_COUNT = 0x004E
    APS_DUPREJ_TABLE_SIZE = 0x004F
    NWK_PARENT_INFO = 0x0051
    NWK_ENDDEV_TIMEOUT_DEF = 0x0052
    END_DEV_TIMEOUT_VALUE = 0x0053
    END_DEV_CONFIGURATION = 0x0054
    BDBNODEISONANETWORK = 0x0055
    PRECFGKEY = 0x0062
    PRECFGKEYS_ENABLE = 0x0063
    SECURE_PERMIT_JOIN = 0x0065
    APS_LINK_KEY_TYPE = 0x0066
    APS_ALLOW_R19_SECURITY = 0x0067
    USE_DEFAULT_TCLK = 0x006D
    TRUSTCENTER_ADDR = 0x0071
    USERDESC = 0x0081
    NWKKEY = 0x0082
    PANID = 0x0083
    CHANLIST = 0x0084
    LEAVE_CTRL = 0x0085
    SCAN_DURATION = 0x0086
    LOGICAL_TYPE = 0x0087
    NWKMGR_MIN_TX = 0x0088
    ZDO_DIRECT_CB = 0x008F
    SAPI_ENDPOINT = 0x00A1
    TCLK_SEED = 0x0101


# The network information base (nwkIB_t) as a 32-bit ARM lays it out: name -> (offset, format).
NIB_SIZE = 116
NIB_FIELDS: dict[str, tuple[int, str]] = {
    "SequenceNum": (0, "B"),
    "PassiveAckTimeout": (1, "B"),
    "MaxBroadcastRetries": (2, "B"),
    "MaxChildren": (3, "B"),
    "MaxDepth": (4, "B"),
    "MaxRouters": (5, "B"),
    "dummyNeighborTable": (6, "B"),
    "BroadcastDeliveryTime": (7, "B"),
    "ReportConstantCost": (8, "B"),
    "RouteDiscRetries": (9, "B"),
    "dummyRoutingTable": (10, "B"),
    "SecureAllFrames": (11, "B"),
    "SecurityLevel": (12, "B"),
    "SymLink": (13, "B"),
    "CapabilityFlags": (14, "B"),
    "TransactionPersistenceTime": (16, "<H"),
    "nwkProtocolVersion": (18, "B"),
    "RouteDiscoveryTime": (19, "B"),
    "RouteExpiryTime": (20, "B"),
    "nwkDevAddress": (22, "<H"),
    "nwkLogicalChannel": (24, "B"),
    "nwkCoordAddress": (26, "<H"),
    "nwkCoordExtAddress": (28, "8s"),
    "nwkPanId": (36, "<H"),
    "nwkState": (38, "<H"),
    "channelList": (40, "<I"),
    "beaconOrder": (44, "B"),
    "superFrameOrder": (45, "B"),
    "scanDuration": (46, "B"),
    "battLifeExt": (47, "B"),
    "allocatedRouterAddresses": (48, "<I"),
    "allocatedEndDeviceAddresses": (52, "<I"),
    "nodeDepth": (56, "B"),
    "extendedPANID": (57, "8s"),
    "nwkKeyLoaded": (65, "B"),
    "spare1": (66, "17s"),
    "spare2": (83, "17s"),
    "spare3": (100, "B"),
    "spare4": (101, "B"),
    "nwkLinkStatusPeriod": (102, "B"),
    "nwkRouterAgeLimit": (103, "B"),
    "nwkUseMultiCast": (104, "B"),
    "nwkIsConcentrator": (105, "B"),
    "nwkConcentratorDiscoveryTime": (106, "B"),
    "nwkConcentratorRadius": (107, "B"),
    "nwkAllFresh": (108, "B"),
    "nwkManagerAddr": (110, "<H"),
    "nwkTotalTransmissions": (112, "<H"),
    "nwkUpdateId": (114, "B"),
}
NWK_STATE_INIT = 0
NWK_STATE_ROUTER = 8


def nib_get(nib: bytes | bytearray, name: str) -> Any:
    offset, fmt = NIB_FIELDS[name]
    return struct.unpack_from(fmt, nib, offset)[0]


def nib_set(nib: bytearray, name: str, value: Any) -> None:
    offset, fmt = NIB_FIELDS[name]
    struct.pack_into(fmt, nib, offset, value)


def default_nib() -> bytes:
    nib = bytearray(NIB_SIZE)
    for name, value in {
        "PassiveAckTimeout": 5,
        "MaxBroadcastRetries": 2,
        "MaxChildren": 51,
        "MaxDepth": 20,
        "MaxRouters": 51,
        "BroadcastDeliveryTime": 30,
        "SecureAllFrames": 1,
        "SecurityLevel": 5,
        "SymLink": 1,
        "CapabilityFlags": 0x8F,
        "TransactionPersistenceTime": 7,
        "nwkProtocolVersion": 2,
        "RouteDiscoveryTime": 5,
        "RouteExpiryTime": 30,
        "nwkDevAddress": 0xFFFE,
        "nwkCoordAddress": 0xFFFE,
        "nwkPanId": 0xFFFF,
        "beaconOrder": 15,
        "superFrameOrder": 15,
        "nwkLinkStatusPeriod": 15,
        "nwkRouterAgeLimit": 3,
        "nwkIsConcentrator": 1,
        "nwkConcentratorDiscoveryTime": 120,
        "nwkConcentratorRadius": 10,
        "nwkAllFresh": 1,
    }.items():
        nib_set(nib, name, value)
    return bytes(nib)


# Items the stack re-creates with these values when a reset finds them missing; ``None`` values
# are filled per dongle (its address, random seeds). Split into configuration and network state,
# the two halves that STARTUP_OPTION's ClearConfig and ClearState reset.
_CONFIG_DEFAULTS: dict[int, bytes | None] = {
    NvId.STARTUP_OPTION: b"\x00",
    NvId.START_DELAY: b"\x0a",
    NvId.DATA_RETRIES: b"\x02",
    NvId.POLL_FAILURE_RETRIES: b"\x03",
    NvId.STACK_PROFILE: b"\x02",
    NvId.INDIRECT_MSG_TIMEOUT: b"\x07",
    NvId.ROUTE_EXPIRY_TIME: b"\x1e",
    NvId.BCAST_RETRIES: b"\x02",
    NvId.PASSIVE_ACK_TIMEOUT: b"\x05",
    NvId.BCAST_DELIVERY_TIME: b"\x1e",
    NvId.CONCENTRATOR_ENABLE: b"\x00",
    NvId.CONCENTRATOR_DISCOVERY: b"\x78",
    NvId.CONCENTRATOR_RADIUS: b"\x0a",
    NvId.CONCENTRATOR_RC: b"\x00",
    NvId.NWK_MGR_MODE: b"\x01",
    NvId.SRC_RTG_EXPIRY_TIME: b"\x0a",
    NvId.ROUTE_DISCOVERY_TIME: b"\x05",
    NvId.ROUTER_OFF_ASSOC_CLEANUP: b"\x00",
    NvId.NWK_LEAVE_REQ_ALLOWED: b"\x01",
    NvId.NWK_CHILD_AGE_ENABLE: b"\x01",
    NvId.APS_FRAME_RETRIES: b"\x03",
    NvId.APS_ACK_WAIT_DURATION: _u16(3000),
    NvId.APS_ACK_WAIT_MULTIPLIER: b"\x02",
    NvId.BINDING_TIME: _u16(16000),
    NvId.APS_USE_EXT_PANID: bytes(8),
    NvId.APS_USE_INSECURE_JOIN: b"\x01",
    NvId.COMMISSIONED_NWK_ADDR: _u16(0xFFFE),
    NvId.APS_NONMEMBER_RADIUS: b"\x02",
    NvId.APS_DUPREJ_TIMEOUT_INC: _u16(1000),
    NvId.APS_DUPREJ_TIMEOUT_COUNT: b"\x0a",
    NvId.APS_DUPREJ_TABLE_SIZE: _u16(5),
    NvId.NWK_PARENT_INFO: b"\x01",
    NvId.NWK_ENDDEV_TIMEOUT_DEF: b"\x08",
    NvId.END_DEV_TIMEOUT_VALUE: b"\x08",
    NvId.END_DEV_CONFIGURATION: b"\x00",
    NvId.PRECFGKEY: None,
    NvId.PRECFGKEYS_ENABLE: b"\x00",
    NvId.SECURE_PERMIT_JOIN: b"\x01",
    NvId.APS_LINK_KEY_TYPE: b"\x01",
    NvId.APS_ALLOW_R19_SECURITY: b"\x00",
    NvId.USE_DEFAULT_TCLK: b"\x01",
    NvId.TRUSTCENTER_ADDR: bytes(8),
    NvId.USERDESC: bytes(17),
    NvId.PANID: _u16(0xFFFF),
    NvId.CHANLIST: _u32(1 << 11),
    NvId.LEAVE_CTRL: b"\x00",
    NvId.SCAN_DURATION: b"\x04",
    NvId.LOGICAL_TYPE: b"\x00",
    NvId.NWKMGR_MIN_TX: b"\x14",
    NvId.ZDO_DIRECT_CB: b"\x00",
    NvId.SAPI_ENDPOINT: b"\xe0",
}
_STATE_DEFAULTS: dict[int, bytes | None] = {
    NvId.NIB: default_nib(),
    NvId.EXTENDED_PAN_ID: None,
    NvId.NWK_ACTIVE_KEY_INFO: bytes(17),
    NvId.NWK_ALTERN_KEY_INFO: bytes(17),
    NvId.GROUP_TABLE: b"\x00\x00" + b"\xff" * 20,
    NvId.APS_LINK_KEY_TABLE: bytes(20),
    NvId.BDBNODEISONANETWORK: b"\x00",
    NvId.NWKKEY: bytes(24),
}
_TABLES: dict[int, tuple[int, bytes]] = {
    ITEM_ADDRMGR: (ADDRMGR_ENTRIES, EMPTY_ADDRMGR_ENTRY),
    ITEM_TCLK_TABLE: (TCLK_ENTRIES, EMPTY_TCLK_ENTRY),
    ITEM_APS_KEY_DATA_TABLE: (APS_KEY_DATA_ENTRIES, bytes(APS_KEY_DATA_ENTRY_SIZE)),
    ITEM_NWK_SEC_MATERIAL_TABLE: (NWK_SEC_MATERIAL_ENTRIES, bytes(NWK_SEC_MATERIAL_SIZE)),
}

NvKey = tuple[int, int, int]


def _osal(nv_id: int) -> NvKey:
    return (ZSTACK_SYS, ITEM_LEGACY, nv_id)


class Nvram:
    """The dongle's non-volatile memory, persisted as JSON (atomically replaced)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: dict[NvKey, bytes] = {}
        self.dirty = False

    def load(self) -> bool:
        if not self.path.exists():
            return False
        raw = json.loads(self.path.read_text())
        self.items = {}
        for key, value in raw["items"].items():
            sys_id, item_id, sub_id = (int(part, 16) for part in key.split(":"))
            self.items[(sys_id, item_id, sub_id)] = bytes.fromhex(value)
        return True

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        items = {f"{s:02x}:{i:04x}:{sub:04x}": v.hex() for (s, i, sub), v in sorted(self.items.items())}
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps({"format": "anju-virtual-znp-nvram/1", "items": items}, indent=1))
        partial.replace(self.path)
        self.dirty = False

    def get(self, key: NvKey) -> bytes | None:
        return self.items.get(key)

    def set(self, key: NvKey, value: bytes) -> None:
        self.items[key] = bytes(value)
        self.dirty = True

    def delete(self, key: NvKey) -> bool:
        existed = self.items.pop(key, None) is not None
        self.dirty = self.dirty or existed
        return existed

    def osal(self, nv_id: int) -> bytes | None:
        return self.items.get(_osal(nv_id))

    def set_osal(self, nv_id: int, value: bytes) -> None:
        self.set(_osal(nv_id), value)


# --------------------------------------------------------------------------------------------
# ZDO and ZCL
# --------------------------------------------------------------------------------------------

ZDO_SUCCESS = 0x00
ZDO_INV_REQUESTTYPE = 0x80
ZDO_DEVICE_NOT_FOUND = 0x81
ZDO_INVALID_EP = 0x82
ZDO_NOT_ACTIVE = 0x83
ZDO_NOT_SUPPORTED = 0x84

ZDO_NWK_ADDR_REQ = 0x0000
ZDO_IEEE_ADDR_REQ = 0x0001
ZDO_NODE_DESC_REQ = 0x0002
ZDO_POWER_DESC_REQ = 0x0003
ZDO_SIMPLE_DESC_REQ = 0x0004
ZDO_ACTIVE_EP_REQ = 0x0005
ZDO_DEVICE_ANNCE = 0x0013
ZDO_BIND_REQ = 0x0021
ZDO_UNBIND_REQ = 0x0022
ZDO_MGMT_LQI_REQ = 0x0031
ZDO_MGMT_RTG_REQ = 0x0032
ZDO_MGMT_LEAVE_REQ = 0x0034
ZDO_MGMT_PERMIT_JOIN_REQ = 0x0036
ZDO_MGMT_NWK_UPDATE_REQ = 0x0038
ZDO_MGMT_NWK_UPDATE_NOTIFY = 0x8038

# ZDO response cluster -> (ZDO AREQ CMD1, whether the AREQ starts with the source address)
_ZDO_RSP_AREQ: dict[int, tuple[int, bool]] = {
    0x8000: (0x80, False),
    0x8001: (0x81, False),
    0x8002: (0x82, True),
    0x8003: (0x83, True),
    0x8004: (0x84, True),
    0x8005: (0x85, True),
    0x8021: (0xA1, True),
    0x8022: (0xA2, True),
    0x8031: (0xB1, True),
    0x8032: (0xB2, True),
    0x8034: (0xB4, True),
    0x8036: (0xB6, True),
    0x8038: (0xB8, True),
}

HA_PROFILE = 0x0104
IAS_ZONE_DEVICE_ID = 0x0402
CLUSTER_BASIC = 0x0000
CLUSTER_POWER = 0x0001
CLUSTER_IAS_ZONE = 0x0500

ZCL_SUCCESS = 0x00
ZCL_FAILURE = 0x01
ZCL_MALFORMED_COMMAND = 0x80
ZCL_UNSUP_CLUSTER_COMMAND = 0x81
ZCL_UNSUP_GENERAL_COMMAND = 0x82
ZCL_INVALID_FIELD = 0x85
ZCL_UNSUPPORTED_ATTRIBUTE = 0x86
ZCL_INVALID_VALUE = 0x87
ZCL_READ_ONLY = 0x88
ZCL_INVALID_DATA_TYPE = 0x8D
ZCL_UNSUPPORTED_CLUSTER = 0xC3

T_BOOL = 0x10
T_BITMAP8 = 0x18
T_BITMAP16 = 0x19
T_UINT8 = 0x20
T_UINT16 = 0x21
T_ENUM8 = 0x30
T_ENUM16 = 0x31
T_CHAR_STRING = 0x42
T_EUI64 = 0xF0

# Fixed sizes of ZCL data types (strings are length-prefixed and handled apart).
_ZCL_SIZES: dict[int, int] = {
    0x08: 1, 0x09: 2, 0x0A: 3, 0x0B: 4, 0x0C: 5, 0x0D: 6, 0x0E: 7, 0x0F: 8,
    0x10: 1,
    0x18: 1, 0x19: 2, 0x1A: 3, 0x1B: 4, 0x1C: 5, 0x1D: 6, 0x1E: 7, 0x1F: 8,
    0x20: 1, 0x21: 2, 0x22: 3, 0x23: 4, 0x24: 5, 0x25: 6, 0x26: 7, 0x27: 8,
    0x28: 1, 0x29: 2, 0x2A: 3, 0x2B: 4, 0x2C: 5, 0x2D: 6, 0x2E: 7, 0x2F: 8,
    0x30: 1, 0x31: 2, 0x38: 2, 0x39: 4, 0x3A: 8,
    0xE0: 4, 0xE1: 4, 0xE2: 4, 0xE8: 2, 0xE9: 2, 0xEA: 4, 0xF0: 8, 0xF1: 16,
}  # fmt: skip
_ZCL_ANALOG = set(range(0x20, 0x30)) | {0x38, 0x39, 0x3A, 0xE0, 0xE1, 0xE2}

ZONE_STATE_NOT_ENROLLED = 0x00
ZONE_STATE_ENROLLED = 0x01

ZONE_ALARM1 = 1 << 0
ZONE_ALARM2 = 1 << 1
ZONE_TAMPER = 1 << 2
ZONE_BATTERY = 1 << 3
ZONE_SUPERVISION = 1 << 4
ZONE_RESTORE = 1 << 5
ZONE_TROUBLE = 1 << 6
ZONE_AC_MAINS = 1 << 7
ZONE_TEST = 1 << 8
ZONE_BATTERY_DEFECT = 1 << 9

POWER_MAINS = 0x01
POWER_BATTERY = 0x03

_GLOBAL_COMMANDS = {
    0x00: "read_attributes",
    0x01: "read_attributes_response",
    0x02: "write_attributes",
    0x03: "write_attributes_undivided",
    0x04: "write_attributes_response",
    0x05: "write_attributes_no_response",
    0x06: "configure_reporting",
    0x07: "configure_reporting_response",
    0x08: "read_reporting_configuration",
    0x0A: "report_attributes",
    0x0B: "default_response",
    0x0C: "discover_attributes",
}
_IAS_ZONE_SERVER_COMMANDS = {
    0x00: "zone_enroll_response",
    0x01: "initiate_normal_operation_mode",
    0x02: "initiate_test_mode",
}


def _zcl_value_size(type_id: int, data: bytes, pos: int) -> int:
    """Bytes taken by a value of ``type_id`` starting at ``data[pos]``; ValueError when unknown."""
    if type_id in _ZCL_SIZES:
        return _ZCL_SIZES[type_id]
    if type_id in (0x41, 0x42):
        if pos >= len(data):
            raise ValueError("truncated string")
        return 1 + (0 if data[pos] == 0xFF else data[pos])
    if type_id in (0x43, 0x44):
        if pos + 2 > len(data):
            raise ValueError("truncated long string")
        n = struct.unpack_from("<H", data, pos)[0]
        return 2 + (0 if n == 0xFFFF else n)
    raise ValueError(f"unsupported ZCL data type 0x{type_id:02X}")


def _zcl_encode(type_id: int, value: Any) -> bytes:
    if type_id == T_CHAR_STRING:
        raw = str(value).encode()[:254]
        return bytes([len(raw)]) + raw
    if type_id == T_EUI64:
        return ieee_to_wire(str(value)) if value else b"\xff" * 8
    size = _ZCL_SIZES[type_id]
    return int(value).to_bytes(size, "little")


def zone_status_bits(
    *,
    alarm1: bool = False,
    alarm2: bool = False,
    tamper: bool = False,
    battery_low: bool = False,
    trouble: bool = False,
    test: bool = False,
    restore_reports: bool = True,
) -> int:
    """The IAS Zone ZoneStatus bitmap (ZCL 8.2.2.2.1.3)."""
    return (
        (ZONE_ALARM1 if alarm1 else 0)
        | (ZONE_ALARM2 if alarm2 else 0)
        | (ZONE_TAMPER if tamper else 0)
        | (ZONE_BATTERY if battery_low else 0)
        | (ZONE_RESTORE if restore_reports else 0)
        | (ZONE_TROUBLE if trouble else 0)
        | (ZONE_TEST if test else 0)
    )


def zcl_zone_status_change(tsn: int, zone_status: int, zone_id: int = 0xFF, extended: int = 0, delay: int = 0) -> bytes:
    """A Zone Status Change Notification frame: cluster-specific, server to client, command 0x00;
    zone status (u16 LE), extended status (u8), zone id (u8), delay in quarter seconds (u16 LE)."""
    return bytes([0x09, tsn & 0xFF, 0x00]) + _u16(zone_status) + bytes([extended, zone_id]) + _u16(delay)


@dataclass(frozen=True)
class KindSpec:
    zone_type: int
    model: str
    power_source: int
    description: str


DEVICE_KINDS: dict[str, KindSpec] = {
    "smoke": KindSpec(0x0028, "SIM-SMOKE-1", POWER_BATTERY, "smoke detector (fire sensor)"),
    "sos": KindSpec(0x002C, "SIM-SOS-1", POWER_BATTERY, "SOS button (personal emergency device)"),
    "radar": KindSpec(0x002C, "SIM-FALL-RADAR-1", POWER_MAINS, "mmWave fall radar (personal emergency device)"),
    "contact": KindSpec(0x0015, "SIM-CONTACT-1", POWER_BATTERY, "door/window contact sensor"),
    "motion": KindSpec(0x000D, "SIM-MOTION-1", POWER_BATTERY, "motion sensor"),
}


@dataclass
class ZclCommand:
    """One ZCL command a virtual device received from the hub."""

    cluster_id: int
    command_id: int
    name: str
    is_global: bool
    tsn: int
    payload: bytes
    src_endpoint: int
    dst_endpoint: int
    manufacturer_code: int | None = None
    disable_default_response: bool = False
    at: float = 0.0  # the event loop's clock

    def as_dict(self) -> dict[str, Any]:
        return {
            "cluster_id": self.cluster_id,
            "command_id": self.command_id,
            "name": self.name,
            "global": self.is_global,
            "tsn": self.tsn,
            "payload": self.payload.hex(),
            "src_endpoint": self.src_endpoint,
            "dst_endpoint": self.dst_endpoint,
        }


@dataclass
class VirtualDevice:
    """An IAS Zone end device hosted by the virtual dongle, and what the hub did to it."""

    ieee: str
    nwk: int
    kind: str
    manufacturer: str
    model: str
    zone_type: int
    power_source: int
    manufacturer_code: int = 0x1234
    joined: bool = False
    enrolled: bool = False
    cie_address: str | None = None
    zone_id: int | None = None
    enroll_response_code: int | None = None
    zone_status: int = 0
    battery_percent: float = 100.0
    reporting: dict[str, dict[str, int]] = field(default_factory=dict)
    bindings: list[dict[str, Any]] = field(default_factory=list)
    zcl_commands: list[ZclCommand] = field(default_factory=list)
    zdo_requests: list[str] = field(default_factory=list)
    enroll_requests_sent: int = 0
    frames_sent: int = 0
    hub_endpoint: int = 1
    _tsn: int = 0
    _aps_counter: int = 0
    _zdo_tsn: int = 0

    @property
    def zone_state(self) -> int:
        return ZONE_STATE_ENROLLED if self.enrolled else ZONE_STATE_NOT_ENROLLED

    @property
    def endpoint(self) -> int:
        return 1

    @property
    def in_clusters(self) -> list[int]:
        return [CLUSTER_BASIC, CLUSTER_POWER, CLUSTER_IAS_ZONE]

    @property
    def mac_capabilities(self) -> int:
        # allocate address; mains-powered devices keep their receiver on
        return 0x80 | (0x0C if self.power_source == POWER_MAINS else 0x00)

    def next_tsn(self) -> int:
        self._tsn = (self._tsn + 1) & 0xFF
        return self._tsn

    def next_aps_counter(self) -> int:
        self._aps_counter = (self._aps_counter + 1) & 0xFF
        return self._aps_counter

    def next_zdo_tsn(self) -> int:
        self._zdo_tsn = (self._zdo_tsn + 1) & 0xFF
        return self._zdo_tsn

    def commands(self, cluster_id: int | None = None, name: str | None = None) -> list[ZclCommand]:
        return [
            c
            for c in self.zcl_commands
            if (cluster_id is None or c.cluster_id == cluster_id) and (name is None or c.name == name)
        ]

    def attributes(self) -> dict[tuple[int, int], tuple[int, Any]]:
        """(cluster, attribute) -> (ZCL type, value), as the device answers Read Attributes."""
        battery = max(0, min(200, round(self.battery_percent * 2)))
        return {
            (CLUSTER_BASIC, 0x0000): (T_UINT8, 8),  # ZCL version
            (CLUSTER_BASIC, 0x0001): (T_UINT8, 1),  # application version
            (CLUSTER_BASIC, 0x0002): (T_UINT8, 0),  # stack version
            (CLUSTER_BASIC, 0x0003): (T_UINT8, 1),  # hardware version
            (CLUSTER_BASIC, 0x0004): (T_CHAR_STRING, self.manufacturer),
            (CLUSTER_BASIC, 0x0005): (T_CHAR_STRING, self.model),
            (CLUSTER_BASIC, 0x0006): (T_CHAR_STRING, "20250101"),  # date code
            (CLUSTER_BASIC, 0x0007): (T_ENUM8, self.power_source),
            (CLUSTER_BASIC, 0x4000): (T_CHAR_STRING, "anju-sim-1.0"),  # SW build id
            (CLUSTER_POWER, 0x0020): (T_UINT8, 30 if battery else 0),  # battery voltage, 100 mV
            (CLUSTER_POWER, 0x0021): (T_UINT8, battery),  # battery percentage remaining, 0.5 %
            (CLUSTER_IAS_ZONE, 0x0000): (T_ENUM8, self.zone_state),
            (CLUSTER_IAS_ZONE, 0x0001): (T_ENUM16, self.zone_type),
            (CLUSTER_IAS_ZONE, 0x0002): (T_BITMAP16, self.zone_status),
            (CLUSTER_IAS_ZONE, 0x0010): (T_EUI64, self.cie_address or ""),
            (CLUSTER_IAS_ZONE, 0x0011): (T_UINT8, 0xFF if self.zone_id is None else self.zone_id),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "ieee": self.ieee,
            "nwk": self.nwk,
            "kind": self.kind,
            "manufacturer": self.manufacturer,
            "model": self.model,
            "zone_type": self.zone_type,
            "power_source": self.power_source,
            "manufacturer_code": self.manufacturer_code,
            "joined": self.joined,
            "enrolled": self.enrolled,
            "cie_address": self.cie_address,
            "zone_id": self.zone_id,
            "enroll_response_code": self.enroll_response_code,
            "zone_status": self.zone_status,
            "battery_percent": self.battery_percent,
            "reporting": self.reporting,
            "bindings": self.bindings,
            "tsn": self._tsn,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> VirtualDevice:
        device = cls(
            ieee=raw["ieee"],
            nwk=int(raw["nwk"]),
            kind=raw["kind"],
            manufacturer=raw["manufacturer"],
            model=raw["model"],
            zone_type=int(raw["zone_type"]),
            power_source=int(raw["power_source"]),
            manufacturer_code=int(raw.get("manufacturer_code", 0x1234)),
            joined=bool(raw.get("joined", False)),
            enrolled=bool(raw.get("enrolled", False)),
            cie_address=raw.get("cie_address"),
            zone_id=raw.get("zone_id"),
            enroll_response_code=raw.get("enroll_response_code"),
            zone_status=int(raw.get("zone_status", 0)),
            battery_percent=float(raw.get("battery_percent", 100.0)),
            reporting=dict(raw.get("reporting", {})),
            bindings=list(raw.get("bindings", [])),
        )
        device._tsn = int(raw.get("tsn", 0))
        return device


class _Devices(dict[str, VirtualDevice]):
    """ieee -> device; lookups accept any spelling of the address."""

    def __getitem__(self, key: str) -> VirtualDevice:
        return super().__getitem__(normalize_ieee(key))

    def __contains__(self, key: object) -> bool:
        try:
            return isinstance(key, str) and super().__contains__(normalize_ieee(key))
        except ValueError:
            return False

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return super().get(normalize_ieee(key), default)
        except ValueError:
            return default


@dataclass
class _Endpoint:
    endpoint: int
    profile: int
    device_id: int
    version: int
    in_clusters: list[int]
    out_clusters: list[int]

    def simple_descriptor(self) -> bytes:
        return (
            bytes([self.endpoint])
            + _u16(self.profile)
            + _u16(self.device_id)
            + bytes([self.version & 0x0F, len(self.in_clusters)])
            + b"".join(_u16(c) for c in self.in_clusters)
            + bytes([len(self.out_clusters)])
            + b"".join(_u16(c) for c in self.out_clusters)
        )


class ZnpSimError(RuntimeError):
    """The virtual dongle cannot do what was asked (unknown device, joining closed, unplugged...)."""


# --------------------------------------------------------------------------------------------
# The virtual dongle
# --------------------------------------------------------------------------------------------

Handler = Callable[[_Reader], bytes | None]


class VirtualZnp:
    """A virtual CC2652 (Z-Stack 3.x ZNP) on a pseudo-terminal; see the module documentation."""

    def __init__(self, state_dir: Path, *, ieee: str = "00:12:4b:00:1c:a1:b2:c3") -> None:
        self.state_dir = Path(state_dir)
        self.ieee = normalize_ieee(ieee)
        self.nvram = Nvram(self.state_dir / "nvram.json")
        self.devices: _Devices = _Devices()
        self._devices_path = self.state_dir / "devices.json"
        self._devices_save_pending = False
        self._rng = random.Random(int(self.ieee.replace(":", ""), 16))

        # Timing (seconds). Small by default so tests are fast.
        self.reset_delay = 0.01
        self.confirm_delay = 0.002
        self.device_delay = 0.005
        self.formation_delay = 0.05
        self.energy_scan_delay = 0.05
        self.announce_delay = 0.01

        # The pseudo-terminal
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_name: str | None = None
        self._out = bytearray()
        self._writer_installed = False
        self._reader = FrameReader()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False

        # RAM state, lost at every reset or power loss
        self._state = DeviceState.HOLD
        self._endpoints: dict[int, _Endpoint] = {}
        self._zdo_callbacks: set[int] = set()
        self._permit_until = 0.0
        self._bdb_primary = 1 << 11
        self._bdb_secondary = 0
        self._tx_power = 5
        self._booted_at = 0.0
        self._rebooting = False
        self._coord_zdo_tsn = 0

        # Faults
        self._hang_until = 0.0
        self._duplicate_next = False
        self._timers: set[asyncio.TimerHandle] = set()
        self._waiters: list[asyncio.Future[None]] = []

        self.unknown_requests: list[dict[str, Any]] = []
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "frames_in",
                "frames_out",
                "pings_answered",
                "srsp_sent",
                "areq_sent",
                "bad_frames_in",
                "garbage_bytes_in",
                "unknown_requests",
                "frames_ignored_hung",
                "frames_ignored_rebooting",
                "frames_not_sent",
                "device_frames_sent",
                "device_frames_dropped",
                "duplicates_sent",
                "garbage_bytes_sent",
                "resets",
                "spontaneous_resets",
                "formations",
                "unplugs",
            ),
            0,
        )

        self._sync_handlers: dict[tuple[int, int], Handler] = {
            (Subsystem.SYS, 0x01): self._sys_ping,
            (Subsystem.SYS, 0x02): self._sys_version,
            (Subsystem.SYS, 0x03): self._sys_set_extaddr,
            (Subsystem.SYS, 0x04): self._sys_get_extaddr,
            (Subsystem.SYS, 0x07): self._sys_osal_nv_item_init,
            (Subsystem.SYS, 0x08): self._sys_osal_nv_read,
            (Subsystem.SYS, 0x09): self._sys_osal_nv_write,
            (Subsystem.SYS, 0x0C): self._sys_random,
            (Subsystem.SYS, 0x12): self._sys_osal_nv_delete,
            (Subsystem.SYS, 0x13): self._sys_osal_nv_length,
            (Subsystem.SYS, 0x14): self._sys_set_tx_power,
            (Subsystem.SYS, 0x1C): self._sys_osal_nv_read_ext,
            (Subsystem.SYS, 0x1D): self._sys_osal_nv_write_ext,
            (Subsystem.SYS, 0x30): self._sys_nv_create,
            (Subsystem.SYS, 0x31): self._sys_nv_delete,
            (Subsystem.SYS, 0x32): self._sys_nv_length,
            (Subsystem.SYS, 0x33): self._sys_nv_read,
            (Subsystem.SYS, 0x34): self._sys_nv_write,
            (Subsystem.SYS, 0x35): self._sys_nv_update,
            (Subsystem.SYS, 0x36): self._status_ok,
            (Subsystem.AF, 0x00): self._af_register,
            (Subsystem.AF, 0x01): self._af_data_request,
            (Subsystem.AF, 0x02): self._af_data_request_ext,
            (Subsystem.AF, 0x03): self._af_data_request_src_rtg,
            (Subsystem.AF, 0x04): self._af_delete,
            (Subsystem.ZDO, 0x00): self._zdo_nwk_addr_req,
            (Subsystem.ZDO, 0x01): self._zdo_ieee_addr_req,
            (Subsystem.ZDO, 0x02): self._zdo_node_desc_req,
            (Subsystem.ZDO, 0x04): self._zdo_simple_desc_req,
            (Subsystem.ZDO, 0x05): self._zdo_active_ep_req,
            (Subsystem.ZDO, 0x21): self._zdo_bind_req,
            (Subsystem.ZDO, 0x22): self._zdo_unbind_req,
            (Subsystem.ZDO, 0x31): self._zdo_mgmt_lqi_req,
            (Subsystem.ZDO, 0x34): self._zdo_mgmt_leave_req,
            (Subsystem.ZDO, 0x36): self._zdo_mgmt_permit_join_req,
            (Subsystem.ZDO, 0x37): self._zdo_mgmt_nwk_update_req,
            (Subsystem.ZDO, 0x3E): self._zdo_msg_cb_register,
            (Subsystem.ZDO, 0x3F): self._zdo_msg_cb_remove,
            (Subsystem.ZDO, 0x40): self._zdo_startup_from_app,
            (Subsystem.ZDO, 0x45): self._zdo_ext_route_disc,
            (Subsystem.ZDO, 0x46): self._zdo_ext_route_check,
            (Subsystem.UTIL, 0x00): self._util_get_device_info,
            (Subsystem.UTIL, 0x09): self._util_time_alive,
            (Subsystem.UTIL, 0x0A): self._util_led_control,
            (Subsystem.UTIL, 0x48): self._util_assoc_count,
            (Subsystem.UTIL, 0x49): self._util_assoc_find_device,
            (Subsystem.UTIL, 0x4A): self._util_assoc_get_with_address,
            (Subsystem.UTIL, 0x63): self._util_assoc_remove,
            (Subsystem.UTIL, 0x64): self._util_assoc_add,
            (Subsystem.APP_CNF, 0x01): self._status_ok,
            (Subsystem.APP_CNF, 0x02): self._status_ok,
            (Subsystem.APP_CNF, 0x03): self._status_ok,
            (Subsystem.APP_CNF, 0x04): self._status_ok,
            (Subsystem.APP_CNF, 0x05): self._bdb_start_commissioning,
            (Subsystem.APP_CNF, 0x06): self._status_ok,
            (Subsystem.APP_CNF, 0x07): self._status_ok,
            (Subsystem.APP_CNF, 0x08): self._bdb_set_channel,
            (Subsystem.APP_CNF, 0x09): self._status_ok,
            (Subsystem.APP_CNF, 0xFF): self._set_nwk_frame_counter,
        }
        self._async_handlers: dict[tuple[int, int], Callable[[_Reader], None]] = {
            (Subsystem.SYS, 0x00): self._sys_reset_req,
        }

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Power the dongle on: load (or create) its NVRAM and devices, open the pty."""
        if self._started:
            return
        self._loop = asyncio.get_running_loop()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.nvram.load():
            self._factory_new()
        self._load_devices()
        self._boot()
        self._open_pty()
        self._started = True
        self._flush_devices()
        log.info("virtual CC2652 %s on %s -> %s", self.ieee, self.port_path, self._slave_name)

    async def stop(self) -> None:
        """Power off: close the pty and persist NVRAM and devices."""
        if not self._started:
            return
        self._close_pty()
        self._cancel_timers()
        self._save()
        self._flush_devices()
        self._started = False
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters.clear()

    async def __aenter__(self) -> VirtualZnp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port_path(self) -> Path:
        """The stable path the hub's configuration names: a symlink to the current pty slave."""
        return self.state_dir / "ttyZNP"

    @property
    def slave_name(self) -> str | None:
        return self._slave_name

    @property
    def plugged(self) -> bool:
        return self._master is not None

    @property
    def network_started(self) -> bool:
        return self._state == DeviceState.DEV_ZB_COORD

    @property
    def network_formed(self) -> bool:
        return self.nvram.osal(NvId.BDBNODEISONANETWORK) == b"\x01"

    @property
    def permit_join_open(self) -> bool:
        return self.network_started and self._now() < self._permit_until

    @property
    def registered_endpoints(self) -> list[int]:
        return sorted(self._endpoints)

    @property
    def rebooting(self) -> bool:
        return self._rebooting

    @property
    def hung(self) -> bool:
        return self._now() < self._hang_until

    @property
    def counters(self) -> dict[str, int]:
        counters = dict(self._counters)
        counters["bad_frames_in"] = self._reader.bad_frames
        counters["garbage_bytes_in"] = self._reader.dropped_bytes
        return counters

    def network_info(self) -> dict[str, Any]:
        """The network as the dongle's NVRAM holds it (for tests and tools)."""
        nib = self.nvram.osal(NvId.NIB) or default_nib()
        key = self.nvram.osal(NvId.NWK_ACTIVE_KEY_INFO) or bytes(17)
        return {
            "formed": self.network_formed,
            "started": self.network_started,
            "channel": nib_get(nib, "nwkLogicalChannel"),
            "pan_id": nib_get(nib, "nwkPanId"),
            "extended_pan_id": ieee_from_wire(nib_get(nib, "extendedPANID")),
            "network_key": key[1:17].hex(),
            "nwk_update_id": nib_get(nib, "nwkUpdateId"),
        }

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait, event-driven, until ``predicate()`` holds (checked after every frame and event)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"virtual ZNP: condition not met within {timeout:g} s")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(remaining):
                    await waiter
            except TimeoutError:
                if not predicate():
                    raise TimeoutError(f"virtual ZNP: condition not met within {timeout:g} s") from None
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    # -- virtual devices ------------------------------------------------------------------------

    def add_device(
        self,
        ieee: str,
        nwk: int,
        kind: str,
        *,
        manufacturer: str = "Anju-Sim",
        model: str | None = None,
    ) -> VirtualDevice:
        """Host a virtual IAS Zone end device. An address the dongle already knows (a restarted
        simulator) keeps its pairing and enrolment."""
        if kind not in DEVICE_KINDS:
            raise ValueError(f"unknown device kind {kind!r}; one of {', '.join(DEVICE_KINDS)}")
        if not 0x0001 <= nwk <= 0xFFF7:
            raise ValueError(f"NWK address 0x{nwk:04X} is not a unicast device address (0x0001-0xFFF7)")
        ieee = normalize_ieee(ieee)
        spec = DEVICE_KINDS[kind]
        existing = self.devices.get(ieee)
        if existing is not None:
            existing.kind = kind
            existing.manufacturer = manufacturer
            existing.model = model or existing.model
            existing.zone_type = spec.zone_type
            existing.power_source = spec.power_source
            if not existing.joined:
                existing.nwk = nwk
            self._sync_devices_with_nv()
            self._save_devices()
            return existing
        for other in self.devices.values():
            if other.nwk == nwk:
                raise ValueError(f"NWK address 0x{nwk:04X} is already used by {other.ieee}")
        device = VirtualDevice(
            ieee=ieee,
            nwk=nwk,
            kind=kind,
            manufacturer=manufacturer,
            model=model or spec.model,
            zone_type=spec.zone_type,
            power_source=spec.power_source,
        )
        device._tsn = self._rng.randrange(256)
        self.devices[ieee] = device
        self._sync_devices_with_nv()  # a dongle that was given a network backup already knows it
        self._save_devices()
        return device

    async def join(self, ieee: str) -> None:
        """The device joins through the coordinator: only while permit-join is open."""
        device = self._device(ieee)
        if not self.plugged:
            raise ZnpSimError("the dongle is unplugged")
        if not self.network_started:
            raise ZnpSimError("the coordinator has not started its network")
        if self.hung:
            raise ZnpSimError("the dongle does not answer (hung)")
        if not self.permit_join_open:
            raise ZnpSimError(f"{device.ieee} cannot join: permit-join is closed")
        device.joined = True
        self._nv_add_child(device)
        self._save_devices()
        self._save()
        log.info("virtual %s %s joins as 0x%04X", device.kind, device.ieee, device.nwk)
        # Z-Stack's trust centre tells the host first, then the device announces itself.
        self._send_device_frame(
            device,
            MtType.AREQ,
            Subsystem.ZDO,
            0xCA,
            _u16(device.nwk) + ieee_to_wire(device.ieee) + _u16(0x0000),
        )
        await asyncio.sleep(self.announce_delay)
        self._announce(device)
        self._notify()

    async def announce(self, ieee: str) -> bool:
        """The device announces itself again (as after a rejoin or a power cycle)."""
        device = self._device(ieee)
        if not device.joined:
            raise ZnpSimError(f"{device.ieee} has not joined the network")
        return self._announce(device)

    async def leave(self, ieee: str) -> bool:
        """The device leaves the network on its own."""
        device = self._device(ieee)
        if not device.joined:
            return False
        sent = self._send_device_frame(
            device, MtType.AREQ, Subsystem.ZDO, 0xC9, _u16(device.nwk) + ieee_to_wire(device.ieee) + b"\x00\x00\x00"
        )
        self._drop_device(device)
        return sent

    async def zone_status(
        self,
        ieee: str,
        alarm1: bool = False,
        alarm2: bool = False,
        tamper: bool = False,
        battery_low: bool = False,
        trouble: bool = False,
        test: bool = False,
        restore_reports: bool = True,
        tsn: int | None = None,
    ) -> bool:
        """Send a Zone Status Change Notification; returns whether it reached the port."""
        device = self._device(ieee)
        status = zone_status_bits(
            alarm1=alarm1,
            alarm2=alarm2,
            tamper=tamper,
            battery_low=battery_low,
            trouble=trouble,
            test=test,
            restore_reports=restore_reports,
        )
        device.zone_status = status
        self._save_devices()
        zone_id = 0xFF if device.zone_id is None else device.zone_id
        frame_tsn = device.next_tsn() if tsn is None else tsn & 0xFF
        return self._device_zcl(device, CLUSTER_IAS_ZONE, zcl_zone_status_change(frame_tsn, status, zone_id))

    async def report_battery(self, ieee: str, percent: float) -> bool:
        """Send an attribute report of BatteryPercentageRemaining; returns whether it reached the port."""
        device = self._device(ieee)
        device.battery_percent = max(0.0, min(100.0, float(percent)))
        self._save_devices()
        value = max(0, min(200, round(device.battery_percent * 2)))
        zcl = bytes([0x18, device.next_tsn(), 0x0A]) + _u16(0x0021) + bytes([T_UINT8, value])
        return self._device_zcl(device, CLUSTER_POWER, zcl)

    # -- faults -----------------------------------------------------------------------------------

    async def unplug(self) -> None:
        """Pull the dongle out: the pty master closes, the hub's port vanishes, RAM state is lost."""
        if not self.plugged:
            return
        self._counters["unplugs"] += 1
        self._close_pty()
        self._cancel_timers()
        self._save()
        self._state = DeviceState.HOLD
        self._endpoints.clear()
        self._zdo_callbacks.clear()
        self._permit_until = 0.0
        log.info("virtual CC2652 unplugged")
        self._notify()

    async def replug(self) -> None:
        """Plug the dongle in again: it boots and appears behind the same symlink, on a new pty."""
        if self.plugged:
            return
        self._boot()
        self._open_pty()
        log.info("virtual CC2652 plugged in again on %s -> %s", self.port_path, self._slave_name)
        self._notify()

    async def reset(self, *, reason: int = RESET_WATCHDOG) -> None:
        """A spontaneous reset: RAM state (started network, endpoints, callbacks) is lost and the
        dongle sends SYS_RESET_IND, as after a watchdog reset."""
        if not self.plugged:
            raise ZnpSimError("the dongle is unplugged")
        self._counters["spontaneous_resets"] += 1
        self._do_reset(reason)

    def hang(self, seconds: float) -> None:
        """Stop answering anything for ``seconds`` (frames in are read and ignored)."""
        self._hang_until = max(self._hang_until, self._now() + seconds)
        log.info("virtual CC2652 hangs for %.1f s", seconds)
        if self._loop is not None:
            self._loop.call_later(seconds, self._notify)  # wake waiters when it answers again

    async def send_garbage(self, data: bytes) -> None:
        """Write raw bytes to the hub (noise on the line)."""
        if not self.plugged:
            raise ZnpSimError("the dongle is unplugged")
        self._counters["garbage_bytes_sent"] += len(data)
        self._write(bytes(data))

    def duplicate_next(self) -> None:
        """The next frame from a virtual device reaches the hub twice."""
        self._duplicate_next = True

    # -- persistence ----------------------------------------------------------------------------

    def _factory_new(self) -> None:
        log.info("virtual CC2652 %s: factory-new NVRAM in %s", self.ieee, self.nvram.path)
        self.nvram.items = {}
        self.nvram.set_osal(NvId.EXTADDR, ieee_to_wire(self.ieee))
        self.nvram.set_osal(NvId.TCLK_SEED, self._rng.randbytes(16))
        self._restore_defaults(config=True, state=True)

    def _default_value(self, nv_id: int, value: bytes | None) -> bytes:
        if value is not None:
            return value
        if nv_id == NvId.PRECFGKEY:
            return self._rng.randbytes(16)
        if nv_id == NvId.EXTENDED_PAN_ID:
            return ieee_to_wire(self.ieee)
        raise AssertionError(nv_id)

    def _restore_defaults(self, *, config: bool, state: bool, missing_only: bool = False) -> None:
        groups = ([_CONFIG_DEFAULTS] if config else []) + ([_STATE_DEFAULTS] if state else [])
        for group in groups:
            for nv_id, value in group.items():
                if missing_only and self.nvram.osal(nv_id) is not None:
                    continue
                self.nvram.set_osal(nv_id, self._default_value(nv_id, value))
        if state:
            for item_id, (count, empty) in _TABLES.items():
                for sub_id in range(count):
                    key = (ZSTACK_SYS, item_id, sub_id)
                    if missing_only and self.nvram.get(key) is not None:
                        continue
                    self.nvram.set(key, empty)

    def _save(self) -> None:
        if self.nvram.dirty:
            try:
                self.nvram.save()
            except OSError as exc:
                log.error("virtual ZNP: cannot save NVRAM to %s: %s", self.nvram.path, exc)

    def _load_devices(self) -> None:
        """Devices persisted by an earlier run; one added before start() keeps its definition
        (kind, names) and takes the persisted pairing state."""
        if not self._devices_path.exists():
            return
        raw = json.loads(self._devices_path.read_text())
        for entry in raw.get("devices", []):
            device = VirtualDevice.from_json(entry)
            defined = self.devices.get(device.ieee)
            if defined is not None:
                for name in ("kind", "manufacturer", "model", "zone_type", "power_source"):
                    setattr(device, name, getattr(defined, name))
            self.devices[device.ieee] = device

    def _save_devices(self) -> None:
        """Persist the devices soon: after the frame being built has gone out, not before."""
        if not self._started or self._devices_save_pending or self._loop is None:
            return  # start() saves after loading what an earlier run persisted
        self._devices_save_pending = True
        self._loop.call_soon(self._flush_devices)

    def _flush_devices(self) -> None:
        self._devices_save_pending = False
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            partial = self._devices_path.with_suffix(".partial")
            data = {"format": "anju-virtual-znp-devices/1", "devices": [d.to_json() for d in self.devices.values()]}
            partial.write_text(json.dumps(data, indent=1))
            partial.replace(self._devices_path)
        except OSError as exc:
            log.error("virtual ZNP: cannot save devices to %s: %s", self._devices_path, exc)

    # -- the pseudo-terminal --------------------------------------------------------------------

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave, termios.TCSANOW)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._slave_name = os.ttyname(slave)
        link = self.port_path
        partial = link.with_name(link.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        partial.symlink_to(self._slave_name)
        partial.replace(link)
        self._reader = FrameReader()
        self._out.clear()
        assert self._loop is not None
        self._loop.add_reader(master, self._on_readable)

    def _close_pty(self) -> None:
        if self._master is None:
            return
        assert self._loop is not None
        self._loop.remove_reader(self._master)
        if self._writer_installed:
            self._loop.remove_writer(self._master)
            self._writer_installed = False
        self._out.clear()
        os.close(self._master)
        if self._slave is not None:
            os.close(self._slave)
        self._master = self._slave = None
        with contextlib.suppress(FileNotFoundError):
            self.port_path.unlink()

    def _on_readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("virtual ZNP: read from pty: %s", exc)
            return
        if not data:
            return
        for frame in self._reader.feed(data):
            self._counters["frames_in"] += 1
            if self.hung:
                self._counters["frames_ignored_hung"] += 1
                log.debug("virtual ZNP (hung) ignores %s", frame.name)
                continue
            if self._rebooting:
                self._counters["frames_ignored_rebooting"] += 1
                log.debug("virtual ZNP (rebooting) ignores %s", frame.name)
                continue
            try:
                self._dispatch(frame)
            except Exception:
                log.exception("virtual ZNP: handling %s %s failed", frame.name, frame.data.hex())
        self._save()
        self._notify()

    def _write(self, data: bytes) -> None:
        if self._master is None:
            return
        if self._out:
            self._out += data
            return
        try:
            written = os.write(self._master, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            log.debug("virtual ZNP: write to pty: %s", exc)
            return
        if written < len(data):
            self._out += data[written:]
            if len(self._out) > 1 << 20:
                log.warning("virtual ZNP: nobody reads the port; dropping %d queued bytes", len(self._out))
                self._out.clear()
                return
            if not self._writer_installed:
                assert self._loop is not None
                self._loop.add_writer(self._master, self._on_writable)
                self._writer_installed = True

    def _on_writable(self) -> None:
        if self._master is None or not self._out:
            return
        try:
            written = os.write(self._master, bytes(self._out))
        except BlockingIOError:
            return
        except OSError as exc:
            log.debug("virtual ZNP: write to pty: %s", exc)
            written = len(self._out)
        del self._out[:written]
        if not self._out and self._writer_installed:
            assert self._loop is not None
            self._loop.remove_writer(self._master)
            self._writer_installed = False

    def _send(self, frame_type: int, subsystem: int, command: int, data: bytes = b"") -> bool:
        if self._master is None or self.hung:
            self._counters["frames_not_sent"] += 1
            return False
        self._write(encode_frame(frame_type, subsystem, command, data))
        self._counters["frames_out"] += 1
        self._counters["srsp_sent" if frame_type == MtType.SRSP else "areq_sent"] += 1
        return True

    def _areq(self, subsystem: int, command: int, data: bytes = b"") -> bool:
        return self._send(MtType.AREQ, subsystem, command, data)

    def _send_device_frame(
        self,
        device: VirtualDevice,
        frame_type: int,
        subsystem: int,
        command: int,
        data: bytes,
        duplicate: Callable[[], bytes] | None = None,
    ) -> bool:
        """A frame caused by a device (on the air): subject to ``duplicate_next``, whose second
        copy is ``duplicate()`` when given (a retry that got past the APS duplicate filter)."""
        if not self._send(frame_type, subsystem, command, data):
            self._counters["device_frames_dropped"] += 1
            return False
        device.frames_sent += 1
        self._counters["device_frames_sent"] += 1
        if self._duplicate_next:
            self._duplicate_next = False
            self._send(frame_type, subsystem, command, duplicate() if duplicate is not None else data)
            self._counters["duplicates_sent"] += 1
        return True

    # -- timers and waiting -----------------------------------------------------------------------

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    def _later(self, delay: float, callback: Callable[..., object], *args: Any) -> None:
        assert self._loop is not None
        handle: asyncio.TimerHandle | None = None

        def run() -> None:
            if handle is not None:
                self._timers.discard(handle)
            try:
                callback(*args)
            except Exception:
                log.exception("virtual ZNP: timer callback %s failed", callback)
            self._save()
            self._notify()

        handle = self._loop.call_later(max(0.0, delay), run)
        self._timers.add(handle)

    def _cancel_timers(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- dispatch -------------------------------------------------------------------------------

    def _dispatch(self, frame: MtFrame) -> None:
        key = (frame.subsystem, frame.command)
        if frame.type == MtType.SREQ:
            handler = self._sync_handlers.get(key)
            if handler is None:
                self._unknown(frame)
                return
            try:
                response = handler(_Reader(frame.data))
            except _Short as exc:
                log.warning("virtual ZNP: %s is too short (%s): %s", frame.name, exc, frame.data.hex())
                self._rpc_error(RPC_ERR_LENGTH, frame)
                return
            except Exception:
                log.exception("virtual ZNP: %s with data %s failed", frame.name, frame.data.hex())
                self._rpc_error(RPC_ERR_PARAMETER, frame)  # the host gets an answer, never silence
                return
            self._send(MtType.SRSP, frame.subsystem, frame.command, response or b"")
        elif frame.type == MtType.AREQ:
            async_handler = self._async_handlers.get(key)
            if async_handler is None:
                self._unknown(frame)
                return
            try:
                async_handler(_Reader(frame.data))
            except _Short as exc:
                log.warning("virtual ZNP: %s is too short (%s): %s", frame.name, exc, frame.data.hex())
        else:
            self._unknown(frame)

    def _unknown(self, frame: MtFrame) -> None:
        self._counters["unknown_requests"] += 1
        record = {
            "type": MtType(frame.type).name if frame.type in MtType._value2member_map_ else frame.type,
            "subsystem": frame.subsystem,
            "command": frame.command,
            "name": frame.name,
            "data": frame.data.hex(),
        }
        self.unknown_requests.append(record)
        log.warning(
            "virtual ZNP: unknown request %s (type %s, subsystem 0x%02X, command 0x%02X) data %s",
            frame.name,
            record["type"],
            frame.subsystem,
            frame.command,
            frame.data.hex() or "-",
        )
        if frame.type == MtType.SREQ:
            supported = {int(s) for s, _ in self._sync_handlers}
            code = RPC_ERR_COMMAND_ID if frame.subsystem in supported else RPC_ERR_SUBSYSTEM
            self._rpc_error(code, frame)

    def _rpc_error(self, code: int, frame: MtFrame) -> None:
        cmd0 = (frame.type & 0x07) << 5 | frame.subsystem
        self._send(MtType.SRSP, Subsystem.RPC_ERROR, 0x00, bytes([code, cmd0, frame.command]))

    @staticmethod
    def _status_ok(_req: _Reader) -> bytes:
        return bytes([ST_SUCCESS])

    # -- boot and reset -------------------------------------------------------------------------

    def _boot(self) -> None:
        """What Z-Stack does at power-up or after a reset, before the host speaks."""
        startup = (self.nvram.osal(NvId.STARTUP_OPTION) or b"\x00")[0]
        if startup & (STARTUP_CLEAR_CONFIG | STARTUP_CLEAR_STATE):
            log.info(
                "virtual CC2652: STARTUP_OPTION 0x%02X clears%s%s",
                startup,
                " configuration" if startup & STARTUP_CLEAR_CONFIG else "",
                " network state" if startup & STARTUP_CLEAR_STATE else "",
            )
            self._restore_defaults(
                config=bool(startup & STARTUP_CLEAR_CONFIG), state=bool(startup & STARTUP_CLEAR_STATE)
            )
            self.nvram.set_osal(NvId.STARTUP_OPTION, b"\x00")
        # Items the stack owns come back with their defaults when they were deleted.
        if self.nvram.osal(NvId.EXTADDR) is None:
            self.nvram.set_osal(NvId.EXTADDR, ieee_to_wire(self.ieee))
        if self.nvram.osal(NvId.TCLK_SEED) is None:
            self.nvram.set_osal(NvId.TCLK_SEED, self._rng.randbytes(16))
        self._restore_defaults(config=True, state=True, missing_only=True)
        self._state = DeviceState.HOLD
        self._endpoints.clear()
        self._zdo_callbacks.clear()
        self._permit_until = 0.0
        self._bdb_primary = 1 << 11
        self._bdb_secondary = 0
        self._booted_at = self._now()
        self._rebooting = False
        self._sync_devices_with_nv()
        self._save()

    def _do_reset(self, reason: int) -> None:
        self._counters["resets"] += 1
        self._cancel_timers()
        self._state = DeviceState.HOLD
        self._endpoints.clear()
        self._zdo_callbacks.clear()
        self._permit_until = 0.0
        self._rebooting = True
        self._later(self.reset_delay, self._finish_reset, reason)

    def _finish_reset(self, reason: int) -> None:
        self._boot()
        self._areq(Subsystem.SYS, 0x80, bytes([reason, *VERSION]))

    def _sys_reset_req(self, req: _Reader) -> None:
        reset_type = req.u8() if req.remaining else 1
        log.debug("virtual ZNP: SYS_RESET_REQ type %d", reset_type)
        self._do_reset(RESET_POWER_UP)

    # -- SYS ----------------------------------------------------------------------------------------

    def _sys_ping(self, _req: _Reader) -> bytes:
        self._counters["pings_answered"] += 1
        return _u16(CAPABILITIES)

    def _sys_version(self, _req: _Reader) -> bytes:
        return bytes(VERSION) + _u32(CODE_REVISION) + bytes([BOOTLOADER_BUILD_TYPE]) + _u32(BOOTLOADER_REVISION)

    def _sys_get_extaddr(self, _req: _Reader) -> bytes:
        return self.nvram.osal(NvId.EXTADDR) or ieee_to_wire(self.ieee)

    def _sys_set_extaddr(self, req: _Reader) -> bytes:
        self.nvram.set_osal(NvId.EXTADDR, req.take(8))
        return bytes([ST_SUCCESS])

    def _sys_random(self, _req: _Reader) -> bytes:
        return _u16(self._rng.randrange(0x10000))

    def _sys_set_tx_power(self, req: _Reader) -> bytes:
        self._tx_power = max(-20, min(5, req.i8()))
        return bytes([ST_SUCCESS])  # Z-Stack 3.30+ answers with a status

    def _sys_osal_nv_item_init(self, req: _Reader) -> bytes:
        nv_id, length, init_len = req.u16(), req.u16(), req.u8()
        init = req.take(init_len)
        if self.nvram.osal(nv_id) is not None:
            return bytes([ST_SUCCESS])
        if init_len > length or length == 0:
            return bytes([ST_NV_OPER_FAILED])
        self.nvram.set_osal(nv_id, init + b"\xff" * (length - init_len))
        return bytes([ST_NV_ITEM_UNINIT])

    def _sys_osal_nv_read(self, req: _Reader) -> bytes:
        nv_id, offset = req.u16(), req.u8()
        return self._nv_read(_osal(nv_id), offset, 248)

    def _sys_osal_nv_read_ext(self, req: _Reader) -> bytes:
        nv_id, offset = req.u16(), req.u16()
        return self._nv_read(_osal(nv_id), offset, 248)

    def _nv_read(self, key: NvKey, offset: int, limit: int) -> bytes:
        value = self.nvram.get(key)
        if value is None or offset > len(value):
            return bytes([ST_INVALID_PARAMETER, 0])
        chunk = value[offset : offset + limit]
        return bytes([ST_SUCCESS, len(chunk)]) + chunk

    def _sys_osal_nv_write(self, req: _Reader) -> bytes:
        nv_id, offset, length = req.u16(), req.u8(), req.u8()
        return self._nv_write(_osal(nv_id), offset, req.take(length))

    def _sys_osal_nv_write_ext(self, req: _Reader) -> bytes:
        nv_id, offset, length = req.u16(), req.u16(), req.u16()
        return self._nv_write(_osal(nv_id), offset, req.take(length))

    def _nv_write(self, key: NvKey, offset: int, data: bytes) -> bytes:
        value = self.nvram.get(key)
        if value is None:
            return bytes([ST_INVALID_PARAMETER])
        if offset + len(data) > len(value):
            return bytes([ST_NV_BAD_ITEM_LEN])
        updated = bytearray(value)
        updated[offset : offset + len(data)] = data
        self.nvram.set(key, bytes(updated))
        self._nv_written(key)
        return bytes([ST_SUCCESS])

    def _nv_written(self, key: NvKey) -> None:
        if key[:2] == (ZSTACK_SYS, ITEM_ADDRMGR):
            self._sync_devices_with_nv()
        if key == _osal(NvId.NIB) and self.network_started:
            nib = self.nvram.osal(NvId.NIB) or default_nib()
            log.debug(
                "virtual ZNP: NIB rewritten: channel %d, PAN 0x%04X",
                nib_get(nib, "nwkLogicalChannel"),
                nib_get(nib, "nwkPanId"),
            )

    def _sys_osal_nv_delete(self, req: _Reader) -> bytes:
        nv_id, length = req.u16(), req.u16()
        value = self.nvram.osal(nv_id)
        if value is None:
            return bytes([ST_NV_ITEM_UNINIT])
        if length != len(value):
            return bytes([ST_NV_BAD_ITEM_LEN])
        self.nvram.delete(_osal(nv_id))
        return bytes([ST_SUCCESS])

    def _sys_osal_nv_length(self, req: _Reader) -> bytes:
        value = self.nvram.osal(req.u16())
        return _u16(0 if value is None else len(value))

    def _nv_key(self, req: _Reader) -> NvKey:
        return (req.u8(), req.u16(), req.u16())

    def _sys_nv_create(self, req: _Reader) -> bytes:
        key, length = self._nv_key(req), req.u32()
        if self.nvram.get(key) is not None:
            return bytes([ST_SUCCESS])
        if length == 0 or length > 0xFFFF:
            return bytes([ST_NV_OPER_FAILED])
        self.nvram.set(key, bytes(length))
        return bytes([ST_NV_ITEM_UNINIT])

    def _sys_nv_delete(self, req: _Reader) -> bytes:
        key = self._nv_key(req)
        return bytes([ST_SUCCESS if self.nvram.delete(key) else ST_NV_ITEM_UNINIT])

    def _sys_nv_length(self, req: _Reader) -> bytes:
        value = self.nvram.get(self._nv_key(req))
        return _u32(0 if value is None else len(value))

    def _sys_nv_read(self, req: _Reader) -> bytes:
        key, offset, length = self._nv_key(req), req.u16(), req.u8()
        value = self.nvram.get(key)
        if value is None or offset > len(value):
            return bytes([ST_NV_OPER_FAILED, 0])
        chunk = value[offset : offset + min(length, 244)]
        return bytes([ST_SUCCESS, len(chunk)]) + chunk

    def _sys_nv_write(self, req: _Reader) -> bytes:
        key, offset, length = self._nv_key(req), req.u16(), req.u8()
        data = req.take(length)
        if self.nvram.get(key) is None:
            return bytes([ST_NV_OPER_FAILED])
        return self._nv_write(key, offset, data)

    def _sys_nv_update(self, req: _Reader) -> bytes:
        key, length = self._nv_key(req), req.u8()
        data = req.take(length)
        existed = self.nvram.get(key) is not None
        self.nvram.set(key, data)
        return bytes([ST_SUCCESS if existed else ST_NV_ITEM_UNINIT])

    # -- UTIL -----------------------------------------------------------------------------------

    def _children(self) -> list[VirtualDevice]:
        return [d for d in self.devices.values() if d.joined]

    def _util_get_device_info(self, _req: _Reader) -> bytes:
        children = self._children()
        nwk = 0x0000 if self.network_started else 0xFFFE
        return (
            bytes([ST_SUCCESS])
            + (self.nvram.osal(NvId.EXTADDR) or ieee_to_wire(self.ieee))
            + _u16(nwk)
            + bytes([0x07, int(self._state), len(children)])
            + b"".join(_u16(d.nwk) for d in children)
        )

    def _util_time_alive(self, _req: _Reader) -> bytes:
        return _u32(int(self._now() - self._booted_at))

    def _util_led_control(self, req: _Reader) -> bytes:
        req.u8(), req.u8()
        return bytes([ST_SUCCESS])

    def _assoc_entry(self, device: VirtualDevice | None) -> bytes:
        """associated_devices_t with Z-Stack 3.30's trailing ctrl byte, padded to 36 bytes."""
        if device is None:
            return b"\xff" * 36
        relation = 0x02 if device.power_source == POWER_MAINS else 0x01  # child RFD (rx on idle)
        index = sorted(self.devices).index(device.ieee)
        entry = bytearray(36)
        struct.pack_into("<HHBBBB", entry, 0, device.nwk, index, relation, 0x01, 0x00, 0x00)
        struct.pack_into("<BBBBIH", entry, 8, 0, 1, 0xFF, 0, 0, 0)  # link info
        struct.pack_into("<BxxxI", entry, 20, 0, 8)  # end device config, timeout
        struct.pack_into("<IBB", entry, 28, 0, 0x01, 0x00)
        return bytes(entry)

    def _util_assoc_count(self, req: _Reader) -> bytes:
        start, end = req.u8(), req.u8()
        count = 0
        for device in self._children():
            relation = 0x02 if device.power_source == POWER_MAINS else 0x01
            count += start <= relation <= end
        return _u16(count)

    def _util_assoc_find_device(self, req: _Reader) -> bytes:
        index = req.u8()
        children = self._children()
        return self._assoc_entry(children[index] if index < len(children) else None)

    def _util_assoc_get_with_address(self, req: _Reader) -> bytes:
        ieee, nwk = req.take(8), req.u16()
        for device in self._children():
            if ieee != b"\x00" * 8 and ieee_to_wire(device.ieee) == ieee:
                return self._assoc_entry(device)
            if ieee == b"\x00" * 8 and device.nwk == nwk:
                return self._assoc_entry(device)
        return self._assoc_entry(None)

    def _util_assoc_remove(self, req: _Reader) -> bytes:
        req.take(8)
        return bytes([ST_SUCCESS])

    def _util_assoc_add(self, req: _Reader) -> bytes:
        req.u16(), req.take(8), req.u8()
        return bytes([ST_SUCCESS])

    # -- APP_CNF / BDB ----------------------------------------------------------------------------

    def _bdb_set_channel(self, req: _Reader) -> bytes:
        primary, mask = req.u8(), req.u32()
        if primary:
            self._bdb_primary = mask
        else:
            self._bdb_secondary = mask
        return bytes([ST_SUCCESS])

    def _set_nwk_frame_counter(self, req: _Reader) -> bytes:
        counter = req.u32()
        nib = self.nvram.osal(NvId.NIB) or default_nib()
        epid = nib_get(nib, "extendedPANID")
        self.nvram.set((ZSTACK_SYS, ITEM_NWK_SEC_MATERIAL_TABLE, 0), _u32(counter) + epid)
        return bytes([ST_SUCCESS])

    def _bdb_start_commissioning(self, req: _Reader) -> bytes:
        mode = req.u8()
        if mode & BDB_MODE_FORMATION or mode == BDB_MODE_INITIALIZATION:
            if self.network_formed:
                self._later(self.confirm_delay, self._restore_network, mode)
            elif mode & BDB_MODE_FORMATION:
                self._areq_soon(Subsystem.ZDO, 0xC0, bytes([DeviceState.DEV_COORD_STARTING]))
                self._areq_soon(
                    Subsystem.APP_CNF, 0x80, bytes([BdbStatus.IN_PROGRESS, BDB_MODE_FORMATION, BDB_MODE_FORMATION])
                )
                self._state = DeviceState.DEV_COORD_STARTING
                self._later(self.formation_delay, self._form_network, mode)
            else:
                self._areq_soon(Subsystem.APP_CNF, 0x80, bytes([BdbStatus.NO_NETWORK, 0x00, 0x00]))
        elif mode & BDB_MODE_STEERING:
            self._later(self.confirm_delay, self._steer, mode)
        else:
            self._areq_soon(Subsystem.APP_CNF, 0x80, bytes([BdbStatus.FAILURE, mode, 0x00]))
        return bytes([ST_SUCCESS])

    def _areq_soon(self, subsystem: int, command: int, data: bytes) -> None:
        self._later(0.0, self._areq, subsystem, command, data)

    def _form_network(self, mode: int) -> None:
        """Form a network from the NV settings, as bdb formation on a coordinator does."""
        mask = self._bdb_primary or self._bdb_secondary or 1 << 11
        channel = _channels(mask)[0] if _channels(mask) else 11
        pan = struct.unpack("<H", self.nvram.osal(NvId.PANID) or _u16(0xFFFF))[0]
        if pan in (0xFFFF, 0xFFFE, 0x0000):
            pan = self._rng.randrange(0x0001, 0xFFF0)
        epid = self.nvram.osal(NvId.APS_USE_EXT_PANID) or bytes(8)
        if epid == bytes(8):
            epid = self.nvram.osal(NvId.EXTADDR) or ieee_to_wire(self.ieee)
        key = self.nvram.osal(NvId.PRECFGKEY) or bytes(16)
        if key == bytes(16):
            key = self._rng.randbytes(16)
        nib = bytearray(self.nvram.osal(NvId.NIB) or default_nib())
        for name, value in {
            "nwkState": NWK_STATE_ROUTER,
            "nwkDevAddress": 0x0000,
            "nwkCoordAddress": 0x0000,
            "nwkLogicalChannel": channel,
            "nwkPanId": pan,
            "channelList": mask,
            "extendedPANID": epid,
            "nwkKeyLoaded": 1,
            "nwkManagerAddr": 0x0000,
            "nwkUpdateId": 0,
            "nodeDepth": 0,
        }.items():
            nib_set(nib, name, value)
        self.nvram.set_osal(NvId.NIB, bytes(nib))
        self.nvram.set_osal(NvId.EXTENDED_PAN_ID, epid)
        self.nvram.set_osal(NvId.NWK_ACTIVE_KEY_INFO, b"\x00" + key)
        self.nvram.set_osal(NvId.NWK_ALTERN_KEY_INFO, b"\x00" + key)
        self.nvram.set_osal(NvId.NWKKEY, b"\x00" + key + b"\x00\x00\x00" + _u32(1))
        self.nvram.set((ZSTACK_SYS, ITEM_NWK_SEC_MATERIAL_TABLE, 0), _u32(1) + epid)
        self.nvram.set_osal(NvId.BDBNODEISONANETWORK, b"\x01")
        self._state = DeviceState.DEV_ZB_COORD
        self._counters["formations"] += 1
        log.info(
            "virtual CC2652 formed a network: channel %d, PAN 0x%04X, extended PAN %s",
            channel,
            pan,
            ieee_from_wire(epid),
        )
        self._areq(Subsystem.ZDO, 0xC0, bytes([DeviceState.DEV_ZB_COORD]))
        self._areq(Subsystem.APP_CNF, 0x80, bytes([BdbStatus.SUCCESS, BDB_MODE_FORMATION, 0x00]))

    def _restore_network(self, mode: int) -> None:
        """A dongle already on a network resumes it; formation is then reported as failed, as
        Z-Stack does (only a first formation reports success)."""
        self._state = DeviceState.DEV_ZB_COORD
        nib = self.nvram.osal(NvId.NIB) or default_nib()
        log.info(
            "virtual CC2652 resumed its network: channel %d, PAN 0x%04X",
            nib_get(nib, "nwkLogicalChannel"),
            nib_get(nib, "nwkPanId"),
        )
        self._areq(Subsystem.ZDO, 0xC0, bytes([DeviceState.DEV_ZB_COORD]))
        if mode & BDB_MODE_FORMATION:
            self._areq(
                Subsystem.APP_CNF,
                0x80,
                bytes([BdbStatus.NETWORK_RESTORED, BDB_MODE_INITIALIZATION, BDB_MODE_FORMATION]),
            )
            self._areq(Subsystem.APP_CNF, 0x80, bytes([BdbStatus.FORMATION_FAILURE, BDB_MODE_FORMATION, 0x00]))
        else:
            self._areq(Subsystem.APP_CNF, 0x80, bytes([BdbStatus.NETWORK_RESTORED, BDB_MODE_INITIALIZATION, 0x00]))

    def _steer(self, mode: int) -> None:
        if not self.network_started:
            self._areq(Subsystem.APP_CNF, 0x80, bytes([BdbStatus.NO_NETWORK, BDB_MODE_STEERING, 0x00]))
            return
        self._permit_until = self._now() + 180
        self._areq(Subsystem.APP_CNF, 0x80, bytes([BdbStatus.SUCCESS, BDB_MODE_STEERING, 0x00]))

    # -- AF -------------------------------------------------------------------------------------

    def _af_register(self, req: _Reader) -> bytes:
        endpoint, profile, device_id, version, _latency = req.u8(), req.u16(), req.u16(), req.u8(), req.u8()
        in_clusters = [req.u16() for _ in range(req.u8())]
        out_clusters = [req.u16() for _ in range(req.u8())]
        if endpoint in self._endpoints:
            return bytes([ST_APS_DUPLICATE_ENTRY])
        if not 1 <= endpoint <= 242:
            return bytes([ST_INVALID_PARAMETER])
        self._endpoints[endpoint] = _Endpoint(endpoint, profile, device_id, version, in_clusters, out_clusters)
        return bytes([ST_SUCCESS])

    def _af_delete(self, req: _Reader) -> bytes:
        endpoint = req.u8()
        if self._endpoints.pop(endpoint, None) is None:
            return bytes([ST_INVALID_PARAMETER])
        return bytes([ST_SUCCESS])

    def _af_data_request(self, req: _Reader) -> bytes:
        dst, dst_ep, src_ep, cluster, trans_id, options, radius = (
            req.u16(), req.u8(), req.u8(), req.u16(), req.u8(), req.u8(), req.u8()
        )  # fmt: skip
        data = req.take(req.u8())
        mode = 0x0F if dst >= 0xFFF8 else 0x02
        return self._af_send(mode, dst, None, dst_ep, src_ep, cluster, trans_id, options, radius, data)

    def _af_data_request_ext(self, req: _Reader) -> bytes:
        mode, address = req.u8(), req.take(8)
        dst_ep, _pan, src_ep, cluster, trans_id, options, radius = (
            req.u8(), req.u16(), req.u8(), req.u16(), req.u8(), req.u8(), req.u8()
        )  # fmt: skip
        data = req.take(req.u16())
        nwk = struct.unpack_from("<H", address)[0]
        ieee = ieee_from_wire(address) if mode == 0x03 else None
        return self._af_send(mode, nwk, ieee, dst_ep, src_ep, cluster, trans_id, options, radius, data)

    def _af_data_request_src_rtg(self, req: _Reader) -> bytes:
        dst, dst_ep, src_ep, cluster, trans_id, options, radius = (
            req.u16(), req.u8(), req.u8(), req.u16(), req.u8(), req.u8(), req.u8()
        )  # fmt: skip
        for _ in range(req.u8()):
            req.u16()
        data = req.take(req.u8())
        return self._af_send(0x02, dst, None, dst_ep, src_ep, cluster, trans_id, options, radius, data)

    def _af_send(
        self,
        mode: int,
        nwk: int,
        ieee: str | None,
        dst_ep: int,
        src_ep: int,
        cluster: int,
        trans_id: int,
        options: int,
        radius: int,
        data: bytes,
    ) -> bytes:
        if not self.network_started:
            return bytes([ST_NWK_INVALID_REQUEST])
        if src_ep != 0 and src_ep not in self._endpoints:
            return bytes([ST_INVALID_PARAMETER])
        broadcast = mode == 0x0F or (mode == 0x02 and nwk >= 0xFFF8)
        if dst_ep == 0:
            # ZDO frames sent through AF: no AF_DATA_CONFIRM goes to the host (ZDO owns endpoint 0).
            if mode == 0x01:
                return bytes([ST_SUCCESS])
            if broadcast and cluster == ZDO_MGMT_PERMIT_JOIN_REQ:
                # The coordinator hears its own broadcast, in the order the host sent its requests.
                self._zdo_broadcast(nwk, cluster, data)
            elif broadcast:
                self._later(self.device_delay, self._zdo_broadcast, nwk, cluster, data)
            else:
                target = self._target(nwk, ieee)
                self._later(self.device_delay, self._zdo_unicast, target, cluster, data)
            return bytes([ST_SUCCESS])
        if mode == 0x01 or broadcast:
            self._later(self.confirm_delay, self._areq, Subsystem.AF, 0x80, bytes([ST_SUCCESS, src_ep, trans_id]))
            return bytes([ST_SUCCESS])
        target = self._target(nwk, ieee)
        if target is None or target == "coordinator":
            status = ST_SUCCESS if target == "coordinator" else ST_NWK_NO_ROUTE
            self._later(self.confirm_delay, self._areq, Subsystem.AF, 0x80, bytes([status, src_ep, trans_id]))
            return bytes([ST_SUCCESS])
        device = target
        self._later(self.confirm_delay, self._areq, Subsystem.AF, 0x80, bytes([ST_SUCCESS, src_ep, trans_id]))
        self._later(
            self.confirm_delay + self.device_delay, self._device_receive_zcl, device, dst_ep, src_ep, cluster, data
        )
        return bytes([ST_SUCCESS])

    def _target(self, nwk: int, ieee: str | None) -> VirtualDevice | str | None:
        own_ieee = ieee_from_wire(self.nvram.osal(NvId.EXTADDR) or ieee_to_wire(self.ieee))
        if ieee is not None:
            if ieee == own_ieee:
                return "coordinator"
            device = self.devices.get(ieee)
            return device if device is not None and device.joined else None
        if nwk == 0x0000:
            return "coordinator"
        for device in self._children():
            if device.nwk == nwk:
                return device
        return None

    # -- ZDO: responses and callbacks -------------------------------------------------------------

    def _zdo_response(self, src: int, cluster: int, tsn: int, payload: bytes, *, device: VirtualDevice | None) -> bool:
        """Deliver a ZDO response from ``src`` to the host: the specific ZDO_*_RSP callback and,
        when the host registered for it, ZDO_MSG_CB_INCOMING."""
        sent = False
        areq = _ZDO_RSP_AREQ.get(cluster)
        if areq is not None:
            command, with_src = areq
            data = (_u16(src) if with_src else b"") + payload
            if device is not None:
                sent = self._send_device_frame(device, MtType.AREQ, Subsystem.ZDO, command, data)
            else:
                sent = self._areq(Subsystem.ZDO, command, data)
        self._zdo_msg_cb(src, cluster, tsn, payload, broadcast=False, device=device)
        return sent

    def _zdo_msg_cb(
        self, src: int, cluster: int, tsn: int, payload: bytes, *, broadcast: bool, device: VirtualDevice | None
    ) -> bool:
        if cluster not in self._zdo_callbacks and 0xFFFF not in self._zdo_callbacks:
            return False
        data = (
            _u16(src)
            + bytes([int(broadcast)])
            + _u16(cluster)
            + bytes([0x00, tsn])
            + _u16(0xFFFF if broadcast else 0x0000)
        )
        if device is not None:
            return self._send_device_frame(device, MtType.AREQ, Subsystem.ZDO, 0xFF, data + payload)
        return self._areq(Subsystem.ZDO, 0xFF, data + payload)

    def _announce(self, device: VirtualDevice) -> bool:
        if not self.network_started:
            self._counters["device_frames_dropped"] += 1
            log.info(
                "virtual %s %s: announce dropped: the coordinator's network is not started", device.kind, device.ieee
            )
            return False
        body = _u16(device.nwk) + ieee_to_wire(device.ieee) + bytes([device.mac_capabilities])
        sent = self._send_device_frame(device, MtType.AREQ, Subsystem.ZDO, 0xC1, _u16(device.nwk) + body)
        self._zdo_msg_cb(device.nwk, ZDO_DEVICE_ANNCE, device.next_zdo_tsn(), body, broadcast=True, device=device)
        self._notify()
        return sent

    def _next_coord_tsn(self) -> int:
        self._coord_zdo_tsn = (self._coord_zdo_tsn + 1) & 0xFF
        return self._coord_zdo_tsn

    def _zdo_unicast(self, target: VirtualDevice | str | None, cluster: int, data: bytes) -> None:
        """A ZDO request frame (TSN + payload) addressed to the coordinator or a device."""
        if not data:
            return
        tsn, body = data[0], data[1:]
        if target is None:
            log.debug("virtual ZNP: ZDO 0x%04X to an unknown address is lost", cluster)
            return
        if target == "coordinator":
            answer = self._coordinator_zdo(cluster, body, tsn)
            if answer is not None:
                self._zdo_response(0x0000, answer[0], tsn, answer[1], device=None)
            return
        assert isinstance(target, VirtualDevice)
        device = target
        device.zdo_requests.append(f"0x{cluster:04X}")
        answer = self._device_zdo(device, cluster, body)
        if answer is not None:
            self._zdo_response(device.nwk, answer[0], tsn, answer[1], device=device)
            if answer[0] == 0x8034 and answer[1][:1] == b"\x00":
                self._later(self.device_delay, self._device_leaves, device)

    def _zdo_broadcast(self, dst: int, cluster: int, data: bytes) -> None:
        if not data:
            return
        tsn, body = data[0], data[1:]
        if cluster == ZDO_MGMT_PERMIT_JOIN_REQ and len(body) >= 1:
            self._set_permit(body[0])  # the coordinator hears its own broadcast; no response to broadcasts
        elif cluster == ZDO_NWK_ADDR_REQ and len(body) >= 8:
            ieee = ieee_from_wire(body[:8])
            device = self.devices.get(ieee)
            if device is not None and device.joined:
                self._zdo_response(device.nwk, 0x8000, tsn, self._addr_rsp(device.ieee, device.nwk), device=device)
        elif cluster == ZDO_MGMT_NWK_UPDATE_REQ:
            self._coordinator_zdo(cluster, body, tsn)

    def _device_leaves(self, device: VirtualDevice) -> None:
        self._send_device_frame(
            device, MtType.AREQ, Subsystem.ZDO, 0xC9, _u16(device.nwk) + ieee_to_wire(device.ieee) + b"\x00\x01\x00"
        )
        self._drop_device(device)

    def _drop_device(self, device: VirtualDevice) -> None:
        device.joined = False
        device.enrolled = False
        device.zone_id = None
        device.cie_address = None
        self._nv_remove_child(device)
        self._save_devices()
        self._save()
        self._notify()

    @staticmethod
    def _addr_rsp(ieee: str, nwk: int) -> bytes:
        return bytes([ZDO_SUCCESS]) + ieee_to_wire(ieee) + _u16(nwk)

    def _coordinator_node_descriptor(self) -> bytes:
        # logical type coordinator; 2.4 GHz; mains, rx on, alternate PAN coordinator...;
        # manufacturer 0; buffer 80; in/out transfer 160; server mask (primary TC, rev 22)
        return bytes([0x00, 0x40, 0x8F]) + _u16(0x0000) + bytes([80]) + _u16(160) + _u16(0x2C01) + _u16(160) + b"\x00"

    def _coordinator_zdo(self, cluster: int, body: bytes, tsn: int) -> tuple[int, bytes] | None:
        """The coordinator's own ZDO answering a request addressed to it (or None: no answer)."""
        rsp = cluster | 0x8000
        own = self.nvram.osal(NvId.EXTADDR) or ieee_to_wire(self.ieee)
        if cluster == ZDO_NODE_DESC_REQ:
            return rsp, bytes([ZDO_SUCCESS]) + _u16(0x0000) + self._coordinator_node_descriptor()
        if cluster == ZDO_ACTIVE_EP_REQ:
            endpoints = list(reversed(list(self._endpoints)))
            return rsp, bytes([ZDO_SUCCESS]) + _u16(0x0000) + bytes([len(endpoints), *endpoints])
        if cluster == ZDO_SIMPLE_DESC_REQ and len(body) >= 3:
            endpoint = body[2]
            desc = self._endpoints.get(endpoint)
            if desc is None:
                status = ZDO_INVALID_EP if endpoint in (0,) or endpoint > 240 else ZDO_NOT_ACTIVE
                return rsp, bytes([status]) + _u16(0x0000) + b"\x00"
            raw = desc.simple_descriptor()
            return rsp, bytes([ZDO_SUCCESS]) + _u16(0x0000) + bytes([len(raw)]) + raw
        if cluster == ZDO_POWER_DESC_REQ:
            return rsp, bytes([ZDO_SUCCESS]) + _u16(0x0000) + bytes([0x10, 0xC1])  # mains, full
        if cluster == ZDO_NWK_ADDR_REQ or cluster == ZDO_IEEE_ADDR_REQ:
            payload = bytes([ZDO_SUCCESS]) + own + _u16(0x0000)
            request_type = body[-2] if len(body) >= 2 else 0
            if request_type == 1:
                children = self._children()
                payload += bytes([len(children), 0]) + b"".join(_u16(d.nwk) for d in children)
            return rsp, payload
        if cluster == ZDO_MGMT_PERMIT_JOIN_REQ and len(body) >= 1:
            self._set_permit(body[0])
            return rsp, bytes([ZDO_SUCCESS])
        if cluster == ZDO_MGMT_LQI_REQ:
            return rsp, self._lqi_table(body[0] if body else 0)
        if cluster == ZDO_MGMT_RTG_REQ:
            return rsp, bytes([ZDO_SUCCESS, 0, body[0] if body else 0, 0])
        if cluster in (ZDO_BIND_REQ, ZDO_UNBIND_REQ):
            return rsp, bytes([ZDO_SUCCESS])
        if cluster == ZDO_MGMT_NWK_UPDATE_REQ and len(body) >= 5:
            return self._nwk_update(body, tsn)
        return rsp, bytes([ZDO_NOT_SUPPORTED])

    def _nwk_update(self, body: bytes, tsn: int) -> tuple[int, bytes] | None:
        channels, duration = struct.unpack_from("<IB", body)
        if duration <= 0x05:
            count = body[5] if len(body) > 5 else 1
            self._later(self.energy_scan_delay * max(1, count), self._energy_scan_done, channels, tsn)
            return None
        nib = bytearray(self.nvram.osal(NvId.NIB) or default_nib())
        if duration == 0xFE and _channels(channels):
            update_id = body[5] if len(body) > 5 else (nib_get(nib, "nwkUpdateId") + 1) & 0xFF
            nib_set(nib, "nwkLogicalChannel", _channels(channels)[0])
            nib_set(nib, "nwkUpdateId", update_id)
            log.info("virtual CC2652 moves its network to channel %d", _channels(channels)[0])
        elif duration == 0xFF:
            nib_set(nib, "channelList", channels)
            if len(body) >= 8:
                nib_set(nib, "nwkManagerAddr", struct.unpack_from("<H", body, 6)[0])
        self.nvram.set_osal(NvId.NIB, bytes(nib))
        return None

    def _energy_scan_done(self, channels: int, tsn: int) -> None:
        scanned = _channels(channels)
        # A quiet house: a little energy everywhere, Wi-Fi channels 1/6/11 leaking into 12-23.
        energies = [(200 if 12 <= ch <= 23 and ch not in (15, 20) else 40) + (ch * 37) % 17 for ch in scanned]
        payload = bytes([ZDO_SUCCESS]) + _u32(channels) + _u16(0) + _u16(0) + bytes([len(energies), *energies])
        self._zdo_response(0x0000, ZDO_MGMT_NWK_UPDATE_NOTIFY, tsn, payload, device=None)

    def _lqi_table(self, start: int) -> bytes:
        nib = self.nvram.osal(NvId.NIB) or default_nib()
        epid = nib_get(nib, "extendedPANID")
        children = self._children()
        chunk = children[start : start + 3]
        entries = b""
        for device in chunk:
            rx_on = 1 if device.power_source == POWER_MAINS else 0
            flags = 0x02 | rx_on << 2 | 0x01 << 4  # end device, rx-on-when-idle, child
            entries += epid + ieee_to_wire(device.ieee) + _u16(device.nwk) + bytes([flags, 0x02, 1, 0xC8])
        return bytes([ZDO_SUCCESS, len(children), start, len(chunk)]) + entries

    def _device_zdo(self, device: VirtualDevice, cluster: int, body: bytes) -> tuple[int, bytes] | None:
        """A virtual end device's ZDO answering a request addressed to it."""
        rsp = cluster | 0x8000
        nwk = _u16(device.nwk)
        if cluster == ZDO_NODE_DESC_REQ:
            desc = (
                bytes([0x02, 0x40, device.mac_capabilities])
                + _u16(device.manufacturer_code)
                + bytes([80])
                + _u16(82)
                + _u16(0x2C00)
                + _u16(82)
                + b"\x00"
            )
            return rsp, bytes([ZDO_SUCCESS]) + nwk + desc
        if cluster == ZDO_ACTIVE_EP_REQ:
            return rsp, bytes([ZDO_SUCCESS]) + nwk + bytes([1, device.endpoint])
        if cluster == ZDO_SIMPLE_DESC_REQ and len(body) >= 3:
            endpoint = body[2]
            if endpoint != device.endpoint:
                status = ZDO_INVALID_EP if endpoint == 0 or endpoint > 240 else ZDO_NOT_ACTIVE
                return rsp, bytes([status]) + nwk + b"\x00"
            raw = _Endpoint(
                device.endpoint, HA_PROFILE, IAS_ZONE_DEVICE_ID, 0, device.in_clusters, []
            ).simple_descriptor()
            return rsp, bytes([ZDO_SUCCESS]) + nwk + bytes([len(raw)]) + raw
        if cluster == ZDO_POWER_DESC_REQ:
            power = bytes([0x00, 0xC1]) if device.power_source == POWER_MAINS else bytes([0x22, 0xC4])
            return rsp, bytes([ZDO_SUCCESS]) + nwk + power
        if cluster in (ZDO_NWK_ADDR_REQ, ZDO_IEEE_ADDR_REQ):
            return rsp, self._addr_rsp(device.ieee, device.nwk)
        if cluster in (ZDO_BIND_REQ, ZDO_UNBIND_REQ) and len(body) >= 12:
            entry = {"src_endpoint": body[8], "cluster": struct.unpack_from("<H", body, 9)[0], "dst": body[11:].hex()}
            if cluster == ZDO_BIND_REQ:
                if entry not in device.bindings:
                    device.bindings.append(entry)
                status = ZDO_SUCCESS
            elif entry in device.bindings:
                device.bindings.remove(entry)
                status = ZDO_SUCCESS
            else:
                status = 0x88  # NO_ENTRY
            self._save_devices()
            return rsp, bytes([status])
        if cluster == ZDO_MGMT_LEAVE_REQ:
            return rsp, bytes([ZDO_SUCCESS])
        if cluster & 0x8000:
            return None
        return rsp, bytes([ZDO_NOT_SUPPORTED])

    # -- ZDO: MT requests -----------------------------------------------------------------------

    def _zdo_mt_request(self, dst: int, cluster: int, body: bytes) -> bytes:
        """An MT ZDO request (ZDO_*_REQ): the SRSP status now, the answer as callbacks later."""
        if not self.network_started:
            return bytes([ST_NWK_INVALID_REQUEST])
        target = self._target(dst, None)
        data = bytes([self._next_coord_tsn()]) + body
        self._later(self.device_delay, self._zdo_unicast, target, cluster, data)
        return bytes([ST_SUCCESS])

    def _zdo_nwk_addr_req(self, req: _Reader) -> bytes:
        ieee, request_type, start = req.take(8), req.u8(), req.u8()
        if not self.network_started:
            return bytes([ST_NWK_INVALID_REQUEST])
        self._later(
            self.device_delay,
            self._zdo_broadcast,
            0xFFFF,
            ZDO_NWK_ADDR_REQ,
            bytes([self._next_coord_tsn()]) + ieee + bytes([request_type, start]),
        )
        return bytes([ST_SUCCESS])

    def _zdo_ieee_addr_req(self, req: _Reader) -> bytes:
        nwk, request_type, start = req.u16(), req.u8(), req.u8()
        return self._zdo_mt_request(nwk, ZDO_IEEE_ADDR_REQ, _u16(nwk) + bytes([request_type, start]))

    def _zdo_node_desc_req(self, req: _Reader) -> bytes:
        dst, nwk = req.u16(), req.u16()
        return self._zdo_mt_request(dst, ZDO_NODE_DESC_REQ, _u16(nwk))

    def _zdo_active_ep_req(self, req: _Reader) -> bytes:
        dst, nwk = req.u16(), req.u16()
        return self._zdo_mt_request(dst, ZDO_ACTIVE_EP_REQ, _u16(nwk))

    def _zdo_simple_desc_req(self, req: _Reader) -> bytes:
        dst, nwk, endpoint = req.u16(), req.u16(), req.u8()
        return self._zdo_mt_request(dst, ZDO_SIMPLE_DESC_REQ, _u16(nwk) + bytes([endpoint]))

    def _bind_body(self, req: _Reader) -> tuple[int, bytes]:
        dst, src_ieee, src_ep, cluster, mode = req.u16(), req.take(8), req.u8(), req.u16(), req.u8()
        address = req.take(8) if mode == 0x03 else req.take(2)
        if mode != 0x03 and req.remaining >= 6:
            req.take(6)  # Z-Stack pads a short address to 8 bytes
        dst_ep = req.u8() if mode == 0x03 and req.remaining else None
        body = src_ieee + bytes([src_ep]) + _u16(cluster) + bytes([mode]) + address
        if dst_ep is not None:
            body += bytes([dst_ep])
        return dst, body

    def _zdo_bind_req(self, req: _Reader) -> bytes:
        dst, body = self._bind_body(req)
        return self._zdo_mt_request(dst, ZDO_BIND_REQ, body)

    def _zdo_unbind_req(self, req: _Reader) -> bytes:
        dst, body = self._bind_body(req)
        return self._zdo_mt_request(dst, ZDO_UNBIND_REQ, body)

    def _zdo_mgmt_lqi_req(self, req: _Reader) -> bytes:
        dst, start = req.u16(), req.u8()
        return self._zdo_mt_request(dst, ZDO_MGMT_LQI_REQ, bytes([start]))

    def _zdo_mgmt_leave_req(self, req: _Reader) -> bytes:
        dst, ieee, flags = req.u16(), req.take(8), req.u8()
        return self._zdo_mt_request(dst, ZDO_MGMT_LEAVE_REQ, ieee + bytes([flags]))

    def _zdo_mgmt_permit_join_req(self, req: _Reader) -> bytes:
        mode, dst, duration, _tc = req.u8(), req.u16(), req.u8(), req.u8()
        if not self.network_started:
            return bytes([ST_NWK_INVALID_REQUEST])
        if mode == 0x0F or dst >= 0xFFF8 or dst == 0x0000:
            # The coordinator opens (or closes) itself; a broadcast is also heard by itself.
            self._set_permit(duration)
            self._later(self.confirm_delay, self._areq, Subsystem.ZDO, 0xB6, _u16(0x0000) + bytes([ZDO_SUCCESS]))
            return bytes([ST_SUCCESS])
        target = self._target(dst, None)
        if isinstance(target, VirtualDevice):
            self._later(self.device_delay, self._permit_rsp_from, target)
        return bytes([ST_SUCCESS])

    def _permit_rsp_from(self, device: VirtualDevice) -> None:
        # End devices do not route, so they cannot permit joining.
        self._zdo_response(device.nwk, 0x8036, self._next_coord_tsn(), bytes([ZDO_NOT_SUPPORTED]), device=device)

    def _set_permit(self, duration: int) -> None:
        if duration == 0:
            self._permit_until = 0.0
            log.info("virtual CC2652: joining closed")
        else:
            self._permit_until = self._now() + (10**9 if duration == 0xFF else duration)
            log.info("virtual CC2652: joining open for %d s", duration)
            if self._loop is not None and duration != 0xFF:
                self._loop.call_later(duration, self._notify)  # wake waiters when it closes
        self._notify()

    def _zdo_mgmt_nwk_update_req(self, req: _Reader) -> bytes:
        dst, _mode, channels, duration, count, manager = req.u16(), req.u8(), req.u32(), req.u8(), req.u8(), req.u16()
        if not self.network_started:
            return bytes([ST_NWK_INVALID_REQUEST])
        body = _u32(channels) + bytes([duration])
        if duration <= 0x05:
            body += bytes([count])
        elif duration == 0xFF:
            nib = self.nvram.osal(NvId.NIB) or default_nib()
            body += bytes([nib_get(nib, "nwkUpdateId")]) + _u16(manager)
        # a channel change (0xFE) from the host: Z-Stack bumps nwkUpdateId itself
        if dst in (0x0000, 0xFFFC, 0xFFFD, 0xFFFF):
            self._nwk_update(body, self._next_coord_tsn())
        return bytes([ST_SUCCESS])

    def _zdo_msg_cb_register(self, req: _Reader) -> bytes:
        self._zdo_callbacks.add(req.u16())
        return bytes([ST_SUCCESS])

    def _zdo_msg_cb_remove(self, req: _Reader) -> bytes:
        cluster = req.u16()
        if cluster not in self._zdo_callbacks:
            return bytes([ST_FAILURE])
        self._zdo_callbacks.discard(cluster)
        return bytes([ST_SUCCESS])

    def _zdo_startup_from_app(self, req: _Reader) -> bytes:
        req.u16()
        if self.network_formed:
            self._later(self.confirm_delay, self._restore_network, BDB_MODE_INITIALIZATION)
            return bytes([0x00])  # restored network state
        self._areq_soon(Subsystem.ZDO, 0xC0, bytes([DeviceState.DEV_COORD_STARTING]))
        self._state = DeviceState.DEV_COORD_STARTING
        self._later(self.formation_delay, self._form_network, BDB_MODE_FORMATION)
        return bytes([0x01])  # new network state

    def _zdo_ext_route_disc(self, req: _Reader) -> bytes:
        req.u16(), req.u8(), req.u8()
        return bytes([ST_SUCCESS])

    def _zdo_ext_route_check(self, req: _Reader) -> bytes:
        dst = req.u16()
        req.u8(), req.u8()
        target = self._target(dst, None)
        return bytes([0x00 if target is not None else 0x04])  # SUCCESS or NO_ENTRY

    # -- NV bookkeeping of joined devices ---------------------------------------------------------

    def _paired_in_nv(self) -> dict[str, int]:
        """IEEE -> NWK of every device the address manager holds as a child or with a key."""
        paired: dict[str, int] = {}
        for sub_id in range(ADDRMGR_ENTRIES):
            value = self.nvram.get((ZSTACK_SYS, ITEM_ADDRMGR, sub_id))
            if value is None or len(value) < ADDRMGR_ENTRY_SIZE or value[0] == 0xFF or not value[0] & 0x03:
                continue
            wire = value[4:12]
            if wire in (b"\xff" * 8, bytes(8)):
                continue
            paired[ieee_from_wire(wire)] = struct.unpack_from("<H", value, 2)[0]
        return paired

    def _sync_devices_with_nv(self) -> None:
        """A device is on the network when the dongle's NV says so: after a join, after a
        ClearState reset (not any more), after the host restores a backup onto a blank dongle."""
        paired = self._paired_in_nv() if self.network_formed else {}
        changed = False
        for device in self.devices.values():
            joined = device.ieee in paired
            if joined and paired[device.ieee] not in (device.nwk, 0xFFFE):
                device.nwk = paired[device.ieee]
                changed = True
            if joined != device.joined:
                device.joined = joined  # its enrolment is the device's own memory: kept
                changed = True
        if changed:
            self._save_devices()
            self._notify()

    def _nv_add_child(self, device: VirtualDevice) -> None:
        """Record a joined device as Z-Stack does: address manager entry and TC link key entry."""
        wire = ieee_to_wire(device.ieee)
        entry = bytes([0x03, 0xFF]) + _u16(device.nwk) + wire  # Assoc | Security
        self._table_put(ITEM_ADDRMGR, wire, 4, entry, lambda value: value[4:] == b"\xff" * 8 or value[0] == 0xFF)
        tclk = _u32(0) + _u32(0) + wire + bytes([0x02, 0x00, self._rng.randrange(16), 0x00])
        self._table_put(ITEM_TCLK_TABLE, wire, 8, tclk, lambda value: value[8:16] == bytes(8))

    def _nv_remove_child(self, device: VirtualDevice) -> None:
        wire = ieee_to_wire(device.ieee)
        for item_id, (count, empty) in _TABLES.items():
            offset = {ITEM_ADDRMGR: 4, ITEM_TCLK_TABLE: 8}.get(item_id)
            if offset is None:
                continue
            for sub_id in range(count):
                key = (ZSTACK_SYS, item_id, sub_id)
                value = self.nvram.get(key)
                if value is not None and value[offset : offset + 8] == wire:
                    self.nvram.set(key, empty)

    def _table_put(
        self, item_id: int, wire: bytes, offset: int, entry: bytes, is_free: Callable[[bytes], bool]
    ) -> None:
        count = _TABLES[item_id][0]
        free: int | None = None
        for sub_id in range(count):
            value = self.nvram.get((ZSTACK_SYS, item_id, sub_id))
            if value is None:
                continue
            if value[offset : offset + 8] == wire:
                self.nvram.set((ZSTACK_SYS, item_id, sub_id), entry)
                return
            if free is None and is_free(value):
                free = sub_id
        if free is None:
            log.warning("virtual ZNP: NV table 0x%04X is full; %s not recorded", item_id, ieee_from_wire(wire))
            return
        self.nvram.set((ZSTACK_SYS, item_id, free), entry)

    # -- virtual devices: ZCL ---------------------------------------------------------------------

    def _device(self, ieee: str) -> VirtualDevice:
        try:
            return self.devices[ieee]
        except (KeyError, ValueError):
            raise ZnpSimError(f"no virtual device {ieee!r}: add_device() it first") from None

    def _device_zcl(self, device: VirtualDevice, cluster: int, zcl: bytes) -> bool:
        """A ZCL frame from the device's endpoint 1 to the hub: AF_INCOMING_MSG, if it gets through."""
        why = None
        if not device.joined:
            why = "the device has not joined"
        elif not self.plugged:
            why = "the dongle is unplugged"
        elif self.hung:
            why = "the dongle hangs"
        elif not self.network_started:
            why = "the coordinator's network is not started"
        elif device.hub_endpoint not in self._endpoints:
            why = f"endpoint {device.hub_endpoint} is not registered on the coordinator"
        if why is not None:
            self._counters["device_frames_dropped"] += 1
            log.info("virtual %s %s: frame on cluster 0x%04X lost: %s", device.kind, device.ieee, cluster, why)
            self._notify()
            return False

        def incoming_msg() -> bytes:
            return (
                _u16(0x0000)  # group id
                + _u16(cluster)
                + _u16(device.nwk)
                + bytes([device.endpoint, device.hub_endpoint, 0x00, 0xC8, 0x00])  # unicast, LQI, no APS security
                + _u32(int(self._now() * 1000) & 0xFFFFFFFF)
                + bytes([device.next_aps_counter(), len(zcl)])
                + zcl
                + _u16(device.nwk)  # MAC source: a direct child
                + b"\x00"  # radius left
            )

        # A duplicate that reaches the host is the device's own retry: same ZCL frame, new APS counter.
        sent = self._send_device_frame(device, MtType.AREQ, Subsystem.AF, 0x81, incoming_msg(), incoming_msg)
        self._notify()
        return sent

    def _device_receive_zcl(self, device: VirtualDevice, dst_ep: int, src_ep: int, cluster: int, zcl: bytes) -> None:
        if dst_ep != device.endpoint:
            log.debug("virtual %s: frame for endpoint %d dropped", device.ieee, dst_ep)
            return
        if len(zcl) < 3:
            log.warning("virtual %s: ZCL frame too short: %s", device.ieee, zcl.hex())
            return
        fc = zcl[0]
        pos = 1
        manufacturer = None
        if fc & 0x04:
            if len(zcl) < 5:
                return
            manufacturer = struct.unpack_from("<H", zcl, 1)[0]
            pos = 3
        tsn, command_id = zcl[pos], zcl[pos + 1]
        payload = zcl[pos + 2 :]
        is_global = fc & 0x03 == 0
        to_client = bool(fc & 0x08)
        disable_default = bool(fc & 0x10)
        device.hub_endpoint = src_ep if src_ep in self._endpoints else device.hub_endpoint
        if is_global:
            name = _GLOBAL_COMMANDS.get(command_id, f"global_0x{command_id:02X}")
        elif cluster == CLUSTER_IAS_ZONE:
            name = _IAS_ZONE_SERVER_COMMANDS.get(command_id, f"command_0x{command_id:02X}")
        else:
            name = f"command_0x{command_id:02X}"
        device.zcl_commands.append(
            ZclCommand(
                cluster_id=cluster,
                command_id=command_id,
                name=name,
                is_global=is_global,
                tsn=tsn,
                payload=payload,
                src_endpoint=src_ep,
                dst_endpoint=dst_ep,
                manufacturer_code=manufacturer,
                disable_default_response=disable_default,
                at=self._now(),
            )
        )
        log.debug("virtual %s got %s on 0x%04X: %s", device.ieee, name, cluster, payload.hex())
        if to_client:
            return  # a response or report meant for a client: nothing to answer
        if cluster not in device.in_clusters:
            self._default_response(device, cluster, tsn, command_id, ZCL_UNSUPPORTED_CLUSTER, False, manufacturer)
            return
        if manufacturer is not None:
            self._default_response(
                device,
                cluster,
                tsn,
                command_id,
                ZCL_UNSUP_GENERAL_COMMAND if is_global else ZCL_UNSUP_CLUSTER_COMMAND,
                disable_default,
                manufacturer,
            )
            return
        if is_global:
            self._device_global(device, cluster, tsn, command_id, payload, disable_default)
        else:
            self._device_cluster_command(device, cluster, tsn, command_id, payload, disable_default)
        self._save_devices()

    def _reply_zcl(self, device: VirtualDevice, cluster: int, zcl: bytes) -> None:
        self._later(self.device_delay, self._device_zcl, device, cluster, zcl)

    def _default_response(
        self,
        device: VirtualDevice,
        cluster: int,
        tsn: int,
        command_id: int,
        status: int,
        disable_default: bool,
        manufacturer: int | None = None,
    ) -> None:
        if disable_default and status == ZCL_SUCCESS:
            return
        header = bytes([0x18 | (0x04 if manufacturer is not None else 0)])
        if manufacturer is not None:
            header += _u16(manufacturer)
        self._reply_zcl(device, cluster, header + bytes([tsn, 0x0B, command_id, status]))

    def _device_global(
        self, device: VirtualDevice, cluster: int, tsn: int, command_id: int, payload: bytes, disable_default: bool
    ) -> None:
        attributes = device.attributes()
        if command_id == 0x00:  # read attributes
            records = b""
            for i in range(0, len(payload) - 1, 2):
                attr = struct.unpack_from("<H", payload, i)[0]
                if (cluster, attr) in attributes:
                    type_id, value = attributes[(cluster, attr)]
                    records += _u16(attr) + bytes([ZCL_SUCCESS, type_id]) + _zcl_encode(type_id, value)
                else:
                    records += _u16(attr) + bytes([ZCL_UNSUPPORTED_ATTRIBUTE])
            self._reply_zcl(device, cluster, bytes([0x18, tsn, 0x01]) + records)
        elif command_id in (0x02, 0x03, 0x05):  # write attributes (undivided, no response)
            results = self._write_attributes(device, cluster, payload, undivided=command_id == 0x03)
            if command_id != 0x05:
                failures = b"".join(bytes([status]) + _u16(attr) for attr, status in results if status != ZCL_SUCCESS)
                self._reply_zcl(device, cluster, bytes([0x18, tsn, 0x04]) + (failures or bytes([ZCL_SUCCESS])))
            if cluster == CLUSTER_IAS_ZONE and any(
                attr == 0x0010 and status == ZCL_SUCCESS for attr, status in results
            ):
                # An IAS zone asks to enrol once it knows its CIE.
                self._later(self.device_delay * 2, self._send_enroll_request, device)
        elif command_id == 0x06:  # configure reporting
            self._reply_zcl(
                device, cluster, bytes([0x18, tsn, 0x07]) + self._configure_reporting(device, cluster, payload)
            )
        elif command_id == 0x0C and len(payload) >= 3:  # discover attributes
            start, limit = struct.unpack_from("<HB", payload)
            ids = sorted(a for c, a in attributes if c == cluster and a >= start)
            chosen = ids[:limit]
            complete = 1 if len(chosen) == len(ids) else 0
            records = b"".join(_u16(a) + bytes([attributes[(cluster, a)][0]]) for a in chosen)
            self._reply_zcl(device, cluster, bytes([0x18, tsn, 0x0D, complete]) + records)
        elif command_id in (0x0B, 0x01, 0x04, 0x07, 0x0A, 0x0D):
            return  # responses and reports: nothing to answer
        else:
            self._default_response(device, cluster, tsn, command_id, ZCL_UNSUP_GENERAL_COMMAND, disable_default)

    def _write_attributes(
        self, device: VirtualDevice, cluster: int, payload: bytes, *, undivided: bool
    ) -> list[tuple[int, int]]:
        results: list[tuple[int, int]] = []
        writes: list[tuple[int, int, bytes]] = []
        pos = 0
        attributes = device.attributes()
        while pos + 3 <= len(payload):
            attr, type_id = struct.unpack_from("<HB", payload, pos)
            pos += 3
            try:
                size = _zcl_value_size(type_id, payload, pos)
            except ValueError:
                results.append((attr, ZCL_INVALID_DATA_TYPE))
                break
            raw = payload[pos : pos + size]
            pos += size
            if len(raw) < size:
                results.append((attr, ZCL_MALFORMED_COMMAND))
                break
            if (cluster, attr) not in attributes:
                results.append((attr, ZCL_UNSUPPORTED_ATTRIBUTE))
            elif attributes[(cluster, attr)][0] != type_id:
                results.append((attr, ZCL_INVALID_DATA_TYPE))
            elif (cluster, attr) != (CLUSTER_IAS_ZONE, 0x0010):
                results.append((attr, ZCL_READ_ONLY))
            else:
                results.append((attr, ZCL_SUCCESS))
                writes.append((cluster, attr, raw))
        if undivided and any(status != ZCL_SUCCESS for _, status in results):
            return results
        for _cluster, attr, raw in writes:
            if attr == 0x0010:
                device.cie_address = ieee_from_wire(raw)
                log.info("virtual %s %s: IAS_CIE_Address written: %s", device.kind, device.ieee, device.cie_address)
        return results

    def _configure_reporting(self, device: VirtualDevice, cluster: int, payload: bytes) -> bytes:
        failures = b""
        pos = 0
        attributes = device.attributes()
        while pos + 3 <= len(payload):
            direction, attr = struct.unpack_from("<BH", payload, pos)
            pos += 3
            if direction == 0x00:
                if pos + 5 > len(payload):
                    failures += bytes([ZCL_MALFORMED_COMMAND, direction]) + _u16(attr)
                    break
                type_id, minimum, maximum = struct.unpack_from("<BHH", payload, pos)
                pos += 5
                change = 0
                if type_id in _ZCL_ANALOG:
                    size = _ZCL_SIZES.get(type_id, 0)
                    change = int.from_bytes(payload[pos : pos + size], "little")
                    pos += size
                if (cluster, attr) not in attributes:
                    failures += bytes([ZCL_UNSUPPORTED_ATTRIBUTE, direction]) + _u16(attr)
                    continue
                device.reporting[f"0x{cluster:04x}/0x{attr:04x}"] = {
                    "type": type_id,
                    "min_interval": minimum,
                    "max_interval": maximum,
                    "reportable_change": change,
                }
            else:
                pos += 2  # timeout period
        return failures or bytes([ZCL_SUCCESS])

    def _device_cluster_command(
        self, device: VirtualDevice, cluster: int, tsn: int, command_id: int, payload: bytes, disable_default: bool
    ) -> None:
        if cluster == CLUSTER_IAS_ZONE and command_id == 0x00:  # zone enroll response
            if len(payload) < 2:
                self._default_response(device, cluster, tsn, command_id, ZCL_MALFORMED_COMMAND, disable_default)
                return
            code, zone_id = payload[0], payload[1]
            device.enroll_response_code = code
            if code == 0x00:
                device.enrolled = True
                device.zone_id = zone_id
                log.info("virtual %s %s enrolled: zone id %d", device.kind, device.ieee, zone_id)
            else:
                device.enrolled = False
                log.info("virtual %s %s: enrolment refused (code %d)", device.kind, device.ieee, code)
            self._default_response(device, cluster, tsn, command_id, ZCL_SUCCESS, disable_default)
        elif cluster == CLUSTER_IAS_ZONE and command_id in (0x01, 0x02):
            self._default_response(device, cluster, tsn, command_id, ZCL_SUCCESS, disable_default)
        elif cluster == CLUSTER_BASIC and command_id == 0x00:  # reset to factory defaults
            self._default_response(device, cluster, tsn, command_id, ZCL_SUCCESS, disable_default)
        else:
            self._default_response(device, cluster, tsn, command_id, ZCL_UNSUP_CLUSTER_COMMAND, disable_default)

    def _send_enroll_request(self, device: VirtualDevice) -> None:
        device.enroll_requests_sent += 1
        zcl = bytes([0x09, device.next_tsn(), 0x01]) + _u16(device.zone_type) + _u16(device.manufacturer_code)
        self._device_zcl(device, CLUSTER_IAS_ZONE, zcl)
