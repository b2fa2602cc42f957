"""The virtual CC2652 (simulator/znp.py) against the TI MT spec and against the real zigpy-znp.

The simulator writes its bytes itself; here zigpy-znp's own ControllerApplication opens the
pseudo-terminal exactly as it opens /dev/ttyUSB0, forms a network, restarts on it, pairs an IAS
Zone device and hears its alarms. Every wait is event-driven with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import tty
from pathlib import Path
from typing import Any

import pytest
import zigpy.config
import zigpy.types
import zigpy_znp.commands as c
import zigpy_znp.config as conf
import zigpy_znp.types as zt
from zigpy_znp.exceptions import CommandNotRecognized
from zigpy_znp.frames import GeneralFrame
from zigpy_znp.zigbee.application import ControllerApplication

from simulator.znp import (
    SYNC_COMMANDS,
    ZONE_ALARM1,
    ZONE_ALARM2,
    ZONE_RESTORE,
    ZONE_TAMPER,
    FrameReader,
    MtFrame,
    MtType,
    Subsystem,
    VirtualZnp,
    ZnpSimError,
    decode_frame,
    default_nib,
    encode_frame,
    ieee_to_wire,
    zcl_zone_status_change,
    zone_status_bits,
)

pytestmark = pytest.mark.timeout(60)

SMOKE = "00:0d:6f:00:0a:90:69:e7"
SOS = "00:0d:6f:00:0b:00:00:01"
STEP_TIMEOUT = 10.0


def zigpy_config(port: Path, database: Path | None = None, **znp: Any) -> dict[str, Any]:
    """A configuration as zigpy-znp's schema wants it; ControllerApplication validates it."""
    config = {
        conf.CONF_DEVICE: {conf.CONF_DEVICE_PATH: str(port), zigpy.config.CONF_DEVICE_BAUDRATE: 115200},
        zigpy.config.CONF_DATABASE: str(database) if database else None,
        zigpy.config.CONF_OTA: {zigpy.config.CONF_OTA_ENABLED: False},
        zigpy.config.CONF_TOPO_SCAN_ENABLED: False,
        zigpy.config.CONF_NWK_BACKUP_ENABLED: False,
        conf.CONF_ZNP_CONFIG: znp,
    }
    conf.CONFIG_SCHEMA(config)  # raises on anything zigpy-znp would not accept
    return config


class AppEvents:
    """zigpy application listener: every event lands in a queue per name."""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue[tuple[Any, ...]]] = {}

    def queue(self, name: str) -> asyncio.Queue[tuple[Any, ...]]:
        return self.queues.setdefault(name, asyncio.Queue())

    def _put(self, name: str, *args: Any) -> None:
        self.queue(name).put_nowait(args)

    def device_joined(self, device: Any) -> None:
        self._put("device_joined", device)

    def device_initialized(self, device: Any, *args: Any) -> None:
        self._put("device_initialized", device)

    def connection_lost(self, exc: Exception | None) -> None:
        self._put("connection_lost", exc)

    async def next(self, name: str, timeout: float = STEP_TIMEOUT) -> tuple[Any, ...]:
        async with asyncio.timeout(timeout):
            return await self.queue(name).get()


class ClusterEvents:
    """zigpy cluster listener: cluster_command(tsn, command_id, args)."""

    def __init__(self) -> None:
        self.commands: asyncio.Queue[tuple[int, int, Any]] = asyncio.Queue()

    def cluster_command(self, tsn: int, command_id: int, args: Any) -> None:
        self.commands.put_nowait((tsn, command_id, args))

    async def next_command(self, timeout: float = STEP_TIMEOUT) -> tuple[int, int, Any]:
        async with asyncio.timeout(timeout):
            return await self.commands.get()


async def start_app(dongle: VirtualZnp, database: Path | None = None, **znp: Any) -> ControllerApplication:
    async with asyncio.timeout(30):
        return await ControllerApplication.new(zigpy_config(dongle.port_path, database, **znp), auto_form=True)


# -- the MT codec ----------------------------------------------------------------------------------


def test_reference_frames_round_trip() -> None:
    ping = bytes.fromhex("FE 00 21 01 20")
    assert encode_frame(MtType.SREQ, Subsystem.SYS, 0x01) == ping
    assert decode_frame(ping) | {} == {
        "type": "SREQ",
        "subsystem": "SYS",
        "command": "SYS_PING",
        "known": True,
        "cmd0": 0x21,
        "cmd1": 0x01,
        "length": 0,
        "data": "",
        "fcs": 0x20,
    }

    reply = bytes.fromhex("FE 02 61 01 11 00 73")
    assert encode_frame(MtType.SRSP, Subsystem.SYS, 0x01, (0x0011).to_bytes(2, "little")) == reply
    decoded = decode_frame(reply)
    assert (decoded["type"], decoded["command"], decoded["data"]) == ("SRSP", "SYS_PING", "1100")

    announce = bytes.fromhex("FE 0D 45 C1 34 12 34 12 E7 69 90 0A 00 6F 0D 00 80 7F")
    data = (0x1234).to_bytes(2, "little") * 2 + ieee_to_wire("00:0d:6f:00:0a:90:69:e7") + b"\x80"
    assert encode_frame(MtType.AREQ, Subsystem.ZDO, 0xC1, data) == announce
    decoded = decode_frame(announce)
    assert (decoded["type"], decoded["subsystem"], decoded["command"]) == ("AREQ", "ZDO", "ZDO_END_DEVICE_ANNCE_IND")
    assert bytes.fromhex(decoded["data"]) == data

    # the reference ZCL payload: TSN 0x4B, Alarm2 | Tamper | Restore reports, zone 0, delay 0
    status = zone_status_bits(alarm2=True, tamper=True)
    assert status == 0x0026
    assert zcl_zone_status_change(0x4B, status, zone_id=0) == bytes.fromhex("09 4B 00 26 00 00 00 00 00")

    # and the reader splits them out of one stream
    frames = FrameReader().feed(ping + reply + announce)
    assert [f.name for f in frames] == ["SYS_PING", "SYS_PING", "ZDO_END_DEVICE_ANNCE_IND"]
    assert [f.type for f in frames] == [MtType.SREQ, MtType.SRSP, MtType.AREQ]


def test_bad_fcs_and_bad_length_are_reported() -> None:
    with pytest.raises(ValueError, match="bad FCS"):
        decode_frame(bytes.fromhex("FE 00 21 01 21"))
    with pytest.raises(ValueError, match="bad length"):
        decode_frame(bytes.fromhex("FE 03 61 01 11 00 73"))
    with pytest.raises(ValueError, match="too short"):
        decode_frame(bytes.fromhex("FE 00 21"))
    with pytest.raises(ValueError, match="SOF"):
        decode_frame(bytes.fromhex("FF 00 21 01 20"))
    with pytest.raises(ValueError, match="bad length"):
        decode_frame(bytes([0xFE, 0xFB, 0x21, 0x01]) + bytes(252))
    assert decode_frame(encode_frame(MtType.SREQ, Subsystem.ZDO, 0x77, b"\x01"))["command"] == "ZDO_0x77"


def test_frame_reader_resynchronises_on_garbage() -> None:
    good = [encode_frame(MtType.SREQ, Subsystem.SYS, 0x01), encode_frame(MtType.AREQ, Subsystem.SYS, 0x00, b"\x01")]
    stream = b"\x00\x13garbage" + good[0] + b"\xfe\x00\x21\x01\x99" + good[1] + b"\xfe\xff\x00" + good[0]
    reader = FrameReader()
    frames = [f for i in range(len(stream)) for f in reader.feed(stream[i : i + 1])]  # one byte at a time
    assert [f.name for f in frames] == ["SYS_PING", "SYS_RESET_REQ", "SYS_PING"]
    assert reader.bad_frames == 2

    rng = random.Random(4)
    reader = FrameReader()
    found = 0
    for _ in range(500):
        noise = rng.randbytes(rng.randrange(0, 40))
        found += len(reader.feed(noise + good[0]))
    assert found >= 450  # noise may swallow a frame (a stray SOF with a plausible length); never crashes
    assert reader.feed(b"\xfe\x00\x21\x01\x20" * 2 + good[1])  # and it is back in step


def test_structures_are_what_zigpy_znp_reads() -> None:
    """Our hand-laid NVRAM structures parse with zigpy-znp's aligned (32-bit ARM) structs."""
    nib, rest = zt.NIB.deserialize(default_nib(), align=True)
    assert rest == b""
    assert (nib.nwkDevAddress, nib.nwkPanId, nib.nwkLogicalChannel, nib.nwkKeyLoaded) == (0xFFFE, 0xFFFF, 0, False)
    assert (nib.SecurityLevel, nib.nwkState, nib.nwkIsConcentrator) == (5, zt.NwkState.NWK_INIT, True)

    frame = encode_frame(
        MtType.AREQ, Subsystem.ZDO, 0xCA, (0x1234).to_bytes(2, "little") + ieee_to_wire(SMOKE) + b"\0\0"
    )
    parsed = c.ZDO.TCDevInd.Callback.from_frame(GeneralFrame(frame[2] | frame[3] << 8, frame[4:-1]), align=True)
    assert str(parsed.SrcIEEE) == SMOKE and parsed.SrcNwk == 0x1234 and parsed.ParentNwk == 0x0000


# -- a raw host on the pseudo-terminal ------------------------------------------------------------


class RawHost:
    """The far end of the pty, opened as a serial port is, speaking frames built by hand."""

    def __init__(self, dongle: VirtualZnp) -> None:
        self.dongle = dongle
        self.fd = os.open(dongle.port_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self.reader = FrameReader()

    def close(self) -> None:
        os.close(self.fd)

    async def request(self, frame: bytes) -> list[MtFrame]:
        """Send one frame; return what the dongle answered at once (its SRSP)."""
        seen = self.dongle.counters["frames_in"]
        os.write(self.fd, frame)
        await self.dongle.wait_until(lambda: self.dongle.counters["frames_in"] > seen, timeout=STEP_TIMEOUT)
        frames: list[MtFrame] = []
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.fd, 4096):
                frames += self.reader.feed(chunk)
        return frames


async def test_every_request_gets_an_answer_even_malformed(tmp_path: Path) -> None:
    """A raw host on the pty: the reference ping, then every implemented SREQ with random
    payloads (too short, too long, nonsense): each gets exactly one SRSP, its own or RPC_ERROR."""
    async with VirtualZnp(tmp_path / "znp") as dongle:
        host = RawHost(dongle)
        try:
            (reply,) = await host.request(bytes.fromhex("FE 00 21 01 20"))
            assert (reply.type, reply.name) == (MtType.SRSP, "SYS_PING")
            assert int.from_bytes(reply.data, "little") & 0x0400  # APP_CNF: a Z-Stack 3 build

            rng = random.Random(7)
            unsafe = {"SYS_OSAL_NV_DELETE", "SYS_NV_DELETE", "SYS_SET_EXTADDR"}  # keep the dongle usable
            for (subsystem, command), name in SYNC_COMMANDS.items():
                if subsystem == Subsystem.RPC_ERROR or name in unsafe:
                    continue
                for _ in range(12):
                    payload = rng.randbytes(rng.choice([0, 1, 2, 3, 5, 8, 13, 21, 40]))
                    srsp = [
                        f
                        for f in await host.request(encode_frame(MtType.SREQ, subsystem, command, payload))
                        if f.type == MtType.SRSP
                    ]
                    assert len(srsp) == 1, (name, payload.hex(), srsp)
                    assert srsp[0].name in (name, "RPC_ERROR")
                    if srsp[0].name == "RPC_ERROR":  # error code, then the request's CMD0 and CMD1
                        assert srsp[0].data[1:] == bytes([0x20 | subsystem, command])

            # (an AREQ a random request above set off may still arrive with these: only SRSPs count)
            (error,) = [
                f for f in await host.request(encode_frame(MtType.SREQ, Subsystem.SYS, 0x55)) if f.type == MtType.SRSP
            ]
            assert error.name == "RPC_ERROR" and error.data == bytes([0x02, 0x21, 0x55])  # unknown command id
            (error,) = [
                f for f in await host.request(encode_frame(MtType.SREQ, Subsystem.MAC, 0x01)) if f.type == MtType.SRSP
            ]
            assert error.name == "RPC_ERROR" and error.data[0] == 0x01  # unsupported subsystem
            assert await host.request(b"\xfe\x00\x21\x01\x21" + encode_frame(MtType.SREQ, Subsystem.SYS, 0x01))
            assert dongle.counters["bad_frames_in"] == 1
        finally:
            host.close()


# -- zigpy-znp against the virtual dongle ------------------------------------------------------------


async def test_unformed_dongle_is_formed_then_restarts_formed(tmp_path: Path) -> None:
    async with VirtualZnp(tmp_path / "znp") as dongle:
        assert not dongle.network_formed
        started = time.monotonic()
        app = await start_app(dongle)
        unformed_s = time.monotonic() - started
        formed_network = app.state.network_info
        assert dongle.network_formed and dongle.network_started
        info = dongle.network_info()
        assert info["pan_id"] == formed_network.pan_id
        assert info["extended_pan_id"] == str(formed_network.extended_pan_id)
        assert info["network_key"] == formed_network.network_key.key.serialize().hex()
        assert info["channel"] == formed_network.channel
        assert app.state.node_info.ieee == zigpy.types.EUI64.convert(dongle.ieee)
        assert app._znp.version == 3.30 and app._znp.nvram.align_structs is True
        assert dongle.unknown_requests == []
        formations = dongle.counters["formations"]
        await app.shutdown()

        started = time.monotonic()
        app = await start_app(dongle)
        formed_s = time.monotonic() - started
        assert dongle.counters["formations"] == formations  # restored, not formed again
        assert app.state.network_info.pan_id == formed_network.pan_id
        assert app.state.network_info.network_key.key == formed_network.network_key.key
        await app.shutdown()
        assert dongle.unknown_requests == []

    # A restarted virtual dongle (same state dir, new process in real life) is still formed.
    async with VirtualZnp(tmp_path / "znp") as dongle:
        assert dongle.network_formed
        app = await start_app(dongle)
        assert dongle.counters["formations"] == 0
        assert app.state.network_info.extended_pan_id == formed_network.extended_pan_id
        await app.shutdown()
    print(f"\nzigpy-znp start-up: unformed dongle {unformed_s:.2f} s (forms), formed dongle {formed_s:.2f} s")


async def test_join_interview_enrol_and_zone_status(tmp_path: Path) -> None:
    async with VirtualZnp(tmp_path / "znp") as dongle:
        app = await start_app(dongle)
        events = AppEvents()
        app.add_listener(events)
        dongle.add_device(SMOKE, 0x1234, "smoke", model="Anju SD-1")
        dongle.add_device(SOS, 0x2001, "sos")

        with pytest.raises(ZnpSimError, match="permit-join is closed"):
            await dongle.join(SMOKE)

        await app.permit(60)
        assert dongle.permit_join_open
        await dongle.join(SMOKE)
        (joined,) = await events.next("device_joined")
        assert str(joined.ieee) == SMOKE and joined.nwk == 0x1234
        (device,) = await events.next("device_initialized")
        assert str(device.ieee) == SMOKE
        assert (device.manufacturer, device.model) == ("Anju-Sim", "Anju SD-1")
        assert device.node_desc.is_end_device
        ias = device.endpoints[1].in_clusters[0x0500]
        assert set(device.endpoints[1].in_clusters) == {0x0000, 0x0001, 0x0500}

        # what a hub does to enrol it: CIE address, then the Enroll Response to the device's request
        listener = ClusterEvents()
        ias.add_listener(listener)
        (status,) = await ias.write_attributes({"cie_addr": app.state.node_info.ieee})
        assert status[0].status == 0
        virtual = dongle.devices[SMOKE]
        assert virtual.cie_address == dongle.ieee
        tsn, command_id, args = await listener.next_command()
        assert command_id == 0x01 and args.zone_type == 0x0028 and args.manufacturer_code == virtual.manufacturer_code
        await ias.enroll_response(0, 5)
        await dongle.wait_until(lambda: virtual.enrolled, timeout=STEP_TIMEOUT)
        assert (virtual.zone_id, virtual.enroll_response_code) == (5, 0)
        # zigpy also acknowledges the Enroll Request with a Default Response
        assert [c.name for c in virtual.commands(0x0500) if c.name != "default_response"] == [
            "write_attributes",
            "zone_enroll_response",
        ]

        power = device.endpoints[1].in_clusters[0x0001]
        results = await power.configure_reporting("battery_percentage_remaining", 3600, 21600, 2)
        assert list(results.values()) == [0]  # Status.SUCCESS
        assert virtual.reporting["0x0001/0x0021"]["max_interval"] == 21600
        values, _ = await ias.read_attributes(["zone_state", "zone_type", "zone_id"], allow_cache=False)
        assert values == {"zone_state": 1, "zone_type": 0x0028, "zone_id": 5}

        # a fire alarm with the tamper bit, as the reference payload TSN
        assert await dongle.zone_status(SMOKE, alarm1=True, tamper=True, tsn=0x4B)
        tsn, command_id, args = await listener.next_command()
        assert (tsn, command_id) == (0x4B, 0x00)
        assert args.zone_status == ZONE_ALARM1 | ZONE_TAMPER | ZONE_RESTORE
        assert (args.zone_id, args.delay) == (5, 0)

        # a duplicated frame reaches the port twice; zigpy itself drops the identical copy
        # (its per-device debouncer ignores identical packets for 10 s)
        dongle.duplicate_next()
        frames_out = dongle.counters["frames_out"]
        assert await dongle.zone_status(SMOKE, alarm2=True, tsn=0x50)
        assert dongle.counters["frames_out"] == frames_out + 2 and dongle.counters["duplicates_sent"] == 1
        assert await dongle.zone_status(SMOKE, alarm2=False, tsn=0x51)
        first, second = await listener.next_command(), await listener.next_command()
        assert (first[0], first[2].zone_status) == (0x50, ZONE_ALARM2 | ZONE_RESTORE)
        assert (second[0], second[2].zone_status) == (0x51, ZONE_RESTORE)

        # zigpy 2.4 hands attribute reports to `attribute_report` event subscribers (the legacy
        # listener's attribute_updated is only called for values that change outside a report)
        reports: asyncio.Queue[Any] = asyncio.Queue()
        power.on_event("attribute_report", reports.put_nowait)
        assert await dongle.report_battery(SMOKE, 40)
        async with asyncio.timeout(STEP_TIMEOUT):
            report = await reports.get()
        assert (report.attribute_id, report.raw_value, str(report.device_ieee)) == (0x0021, 80, SMOKE)

        # the pairing is in the dongle's NV tables, so a zigpy backup carries it
        backup = await app.backups.create_backup(load_devices=True)
        assert [str(ieee) for ieee in backup.network_info.children] == [SMOKE]
        assert backup.network_info.nwk_addresses[zigpy.types.EUI64.convert(SMOKE)] == 0x1234

        # the second device joins too
        await dongle.join(SOS)
        (device,) = await events.next("device_initialized")
        assert str(device.ieee) == SOS and device.model == "SIM-SOS-1"
        assert dongle.unknown_requests == []

        # the MT ZDO requests and the short AF_DATA_REQUEST, parsed by zigpy-znp itself
        znp = app._znp
        rsp = await znp.request_callback_rsp(
            request=c.ZDO.NodeDescReq.Req(DstAddr=0x1234, NWKAddrOfInterest=0x1234),
            RspStatus=zt.Status.SUCCESS,
            callback=c.ZDO.NodeDescRsp.Callback(partial=True, Src=0x1234),
        )
        assert rsp.NodeDescriptor.logical_type == 2 and rsp.NodeDescriptor.manufacturer_code == 0x1234
        rsp = await znp.request_callback_rsp(
            request=c.ZDO.ActiveEpReq.Req(DstAddr=0x2001, NWKAddrOfInterest=0x2001),
            RspStatus=zt.Status.SUCCESS,
            callback=c.ZDO.ActiveEpRsp.Callback(partial=True, Src=0x2001),
        )
        assert rsp.ActiveEndpoints == [1]
        rsp = await znp.request_callback_rsp(
            request=c.ZDO.SimpleDescReq.Req(DstAddr=0x2001, NWKAddrOfInterest=0x2001, Endpoint=1),
            RspStatus=zt.Status.SUCCESS,
            callback=c.ZDO.SimpleDescRsp.Callback(partial=True, Src=0x2001),
        )
        assert rsp.SimpleDescriptor.input_clusters == [0x0000, 0x0001, 0x0500]
        confirm = await znp.request_callback_rsp(
            request=c.AF.DataRequest.Req(
                DstAddr=0x2001,
                DstEndpoint=1,
                SrcEndpoint=1,
                ClusterId=0x0000,
                TSN=0x77,
                Options=c.af.TransmitOptions.ACK_REQUEST,
                Radius=30,
                Data=bytes([0x00, 0x77, 0x00, 0x05, 0x00]),  # read ModelIdentifier
            ),
            RspStatus=zt.Status.SUCCESS,
            callback=c.AF.DataConfirm.Callback(partial=True, TSN=0x77),
        )
        assert confirm.Status == zt.Status.SUCCESS
        info = await znp.request(c.UTIL.GetDeviceInfo.Req())
        assert info.DeviceState == zt.DeviceState.StartedAsCoordinator and sorted(info.AssociatedDevices) == [
            0x1234,
            0x2001,
        ]
        # an SREQ the virtual dongle does not implement gets an RPC error, as from Z-Stack
        with pytest.raises(CommandNotRecognized):
            await znp.request(c.SYS.GetTime.Req())
        assert dongle.unknown_requests[-1]["name"] == "SYS_0x11"
        await app.shutdown()


async def test_a_replaced_dongle_gets_the_network_backup(tmp_path: Path) -> None:
    database = tmp_path / "zigbee.db"
    async with VirtualZnp(tmp_path / "old") as old:
        app = await start_app(old, database=database)
        events = AppEvents()
        app.add_listener(events)
        old.add_device(SMOKE, 0x1234, "smoke")
        await app.permit(60)
        await old.join(SMOKE)
        await events.next("device_initialized")
        backup = await app.backups.create_backup(load_devices=True)
        await app.shutdown()

    # a blank dongle with another address; the smoke alarm is still on the old network
    async with VirtualZnp(tmp_path / "new", ieee="00:12:4b:00:2a:2a:2a:2a") as new:
        new.add_device(SMOKE, 0x1234, "smoke")
        assert not new.network_formed and not new.devices[SMOKE].joined
        app = await start_app(new, database=database)  # zigpy restores its most recent backup
        assert new.network_formed and new.devices[SMOKE].joined
        info = new.network_info()
        assert info["extended_pan_id"] == str(backup.network_info.extended_pan_id)
        assert info["network_key"] == backup.network_info.network_key.key.serialize().hex()
        assert app.state.node_info.ieee == backup.node_info.ieee  # the new dongle took the old address
        listener = ClusterEvents()
        device = app.get_device(ieee=zigpy.types.EUI64.convert(SMOKE))
        device.endpoints[1].in_clusters[0x0500].add_listener(listener)
        assert await new.zone_status(SMOKE, alarm1=True)
        _, command_id, args = await listener.next_command()
        assert command_id == 0 and args.zone_status & ZONE_ALARM1
        await app.shutdown()


async def test_unplug_is_noticed_and_replug_restarts(tmp_path: Path) -> None:
    async with VirtualZnp(tmp_path / "znp") as dongle:
        database = tmp_path / "zigbee.db"
        app = await start_app(dongle, database=database)
        events = AppEvents()
        app.add_listener(events)
        dongle.add_device(SMOKE, 0x1234, "smoke")
        await app.permit(60)
        await dongle.join(SMOKE)
        await events.next("device_initialized")

        formations = dongle.counters["formations"]
        await dongle.unplug()
        await events.next("connection_lost")
        assert not dongle.port_path.exists()
        assert not await dongle.zone_status(SMOKE, alarm1=True)  # lost, as on the air
        await app.shutdown()

        await dongle.replug()
        assert dongle.port_path.exists()
        app = await start_app(dongle, database=database)
        assert dongle.counters["formations"] == formations  # the network survived the power loss
        ias_listener = ClusterEvents()
        device = app.get_device(ieee=zigpy.types.EUI64.convert(SMOKE))  # from zigpy's database
        device.endpoints[1].in_clusters[0x0500].add_listener(ias_listener)
        assert await dongle.zone_status(SMOKE, alarm1=True)
        _, command_id, args = await ias_listener.next_command()
        assert command_id == 0 and args.zone_status & ZONE_ALARM1
        await app.shutdown()


async def test_garbage_and_a_spontaneous_reset(tmp_path: Path) -> None:
    async with VirtualZnp(tmp_path / "znp") as dongle:
        app = await start_app(dongle)
        dongle.add_device(SMOKE, 0x1234, "smoke")
        events = AppEvents()
        app.add_listener(events)
        await app.permit(60)
        await dongle.join(SMOKE)
        await events.next("device_initialized")  # a request caught by the reset would wait 15 s
        formations = dongle.counters["formations"]

        # noise on the line, even a false SOF with a plausible length: zigpy-znp resynchronises
        await dongle.send_garbage(b"\x00\xfe\x05\x61\x01\x00\xff\x13")
        rsp = await app._znp.request(c.SYS.Ping.Req())
        assert rsp.Capabilities & zt.MTCapabilities.APP_CNF

        # A spontaneous reset: SYS_RESET_IND reaches zigpy-znp, which only logs it. The network
        # and the endpoint registrations are gone until the host commissions again, so device
        # frames are lost while pings still succeed and zigpy reports no lost connection.
        reset_ind = app._znp.wait_for_response(c.SYS.ResetInd.Callback(partial=True))
        await dongle.reset()
        async with asyncio.timeout(STEP_TIMEOUT):
            indication = await reset_ind
        assert indication.Reason == zt.ResetReason.Watchdog
        assert not dongle.rebooting and not dongle.network_started and dongle.registered_endpoints == []
        await app._znp.request(c.SYS.Ping.Req())
        assert not await dongle.zone_status(SMOKE, alarm1=True)
        assert events.queue("connection_lost").empty()
        await app.shutdown()

        # a new ControllerApplication commissions again: network resumed, frames flow
        app = await start_app(dongle)
        assert dongle.network_started and 1 in dongle.registered_endpoints
        assert dongle.counters["formations"] == formations
        assert await dongle.zone_status(SMOKE, alarm1=True)
        await app.shutdown()


async def test_a_hung_dongle_fails_the_watchdog(tmp_path: Path) -> None:
    async with VirtualZnp(tmp_path / "znp") as dongle:
        app = await start_app(dongle, sync_request_timeout=0.5)
        # zigpy's watchdog pings every 30 s (and its first sleep has begun); ping every 0.2 s from
        # now on. (A fast watchdog during start-up would also catch pings sent while the dongle
        # reboots, which a real CC2652 loses as well.)
        assert app._watchdog_task is not None
        app._watchdog_task.cancel()
        app._watchdog_period = 0.2
        app._watchdog_task = asyncio.create_task(app._watchdog_loop())
        events = AppEvents()
        app.add_listener(events)
        pings = dongle.counters["pings_answered"]
        await dongle.wait_until(lambda: dongle.counters["pings_answered"] >= pings + 2, timeout=STEP_TIMEOUT)

        dongle.hang(2.0)
        (exc,) = await events.next("connection_lost")
        assert isinstance(exc, TimeoutError)  # zigpy's watchdog ping went unanswered
        assert dongle.counters["frames_ignored_hung"] >= 1
        await app.shutdown()
        await dongle.wait_until(lambda: not dongle.hung, timeout=STEP_TIMEOUT)
        app = await start_app(dongle)
        assert dongle.network_started
        await app.shutdown()
