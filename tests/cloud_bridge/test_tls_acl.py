"""Mutual TLS and the topic ACL against a real mosquitto (cloud_bridge.certs, cloud_bridge.broker_config).

One county CA issues the broker's certificate (for 127.0.0.1), two hubs' and the centre's; a
private mosquitto listens with the generated TLS listener and ACL on a free port. What mosquitto
2.0.11 does, as these tests pin it down, under MQTT 5:

* a PUBLISH the ACL denies: QoS 1 gets PUBACK reason code 0x87 (Not authorized), QoS 0 is dropped
  silently; neither is delivered;
* a SUBSCRIBE outside the ACL is *granted* (SUBACK 0x01): mosquitto's acl_file checks read access
  when it delivers each message, not when a client subscribes, so nothing is delivered through it.

Waits are event-driven with timeouts: a "marker" message sent after the one that must not arrive
proves, when it arrives, that the other would have arrived before it.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.reasoncodes import ReasonCode

from cloud_bridge.broker_config import HUB_READS, HUB_WRITES, acl, mosquitto_tls_config
from cloud_bridge.certs import CaFiles, CertFiles, init_ca, issue
from cloud_bridge.contract import MESSAGE_KINDS
from cloud_bridge.mqtt import mqtt_client
from simulator.broker import PrivateBroker, free_port

COUNTY = "anxi"
HUB1, HUB2, CENTRE = "hub-1", "hub-2", "centre-anxi"
WAIT = 5.0


@dataclass
class Pki:
    ca: CaFiles
    broker: CertFiles
    hub1: CertFiles
    hub2: CertFiles
    centre: CertFiles
    stranger: CertFiles  # a hub certificate from another CA
    rogue_broker: CertFiles  # a broker certificate for 127.0.0.1 from another CA


@dataclass
class County:
    pki: Pki
    port: int


def topic(hub: str, kind: str) -> str:
    return f"anju/v1/{COUNTY}/{hub}/{kind}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = init_ca(root / "ca", COUNTY)
    other = root / "other-ca"
    init_ca(other, "elsewhere")
    certs = root / "certs"
    return Pki(
        ca=ca,
        broker=issue(
            ca.cert.parent, "127.0.0.1", certs, kind="broker", dns_names=["localhost"], ip_addresses=["127.0.0.1"]
        ),
        hub1=issue(ca.cert.parent, HUB1, certs, kind="hub"),
        hub2=issue(ca.cert.parent, HUB2, certs, kind="hub"),
        centre=issue(ca.cert.parent, CENTRE, certs, kind="centre"),
        stranger=issue(other, HUB1, root / "stranger", kind="hub"),
        rogue_broker=issue(other, "127.0.0.1", root / "rogue", kind="broker", ip_addresses=["127.0.0.1"]),
    )


def start_broker(workdir: Path, pki: Pki, broker_cert: CertFiles) -> tuple[PrivateBroker, int]:
    workdir.mkdir(parents=True)
    acl_file = workdir / "acl"
    acl_file.write_text(acl(COUNTY, [HUB1, HUB2], [CENTRE]))
    port = free_port()
    # Run as root, mosquitto drops to the `mosquitto` user and could no longer read its 0600 key.
    user = "user root\n" if os.geteuid() == 0 else ""
    config = user + mosquitto_tls_config(
        port, pki.ca.cert, broker_cert.cert, broker_cert.key, acl_file, COUNTY, bind="127.0.0.1"
    )
    broker = PrivateBroker(workdir, extra_config=config)
    broker.start()  # waits for its plain listener; both listeners open before mosquitto serves either
    return broker, port


@pytest.fixture(scope="module")
def county(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[County]:
    broker, port = start_broker(tmp_path_factory.mktemp("broker") / "county", pki, pki.broker)
    try:
        yield County(pki, port)
    finally:
        broker.stop()


def tls(ca: Path, client: CertFiles | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


def client(county: County, identity: CertFiles | None, client_id: str, **options: Any) -> aiomqtt.Client:
    return mqtt_client("127.0.0.1", county.port, client_id, tls_context=tls(county.pki.ca.cert, identity), **options)


async def next_message(mqtt: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(WAIT):
        return await anext(aiter(mqtt.messages))


def values(codes: Iterable[int | ReasonCode]) -> list[int]:
    return [code if isinstance(code, int) else int(code.value) for code in codes]


def record_pubacks(mqtt: aiomqtt.Client) -> list[int]:
    """The reason code of each PUBACK: aiomqtt's publish() ignores it, so hook paho's callback."""
    codes: list[int] = []
    paho: Any = mqtt._client
    original = paho.on_publish

    def on_publish(c: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        codes.append(int(reason_code.value))
        original(c, userdata, mid, reason_code, properties)

    paho.on_publish = on_publish
    return codes


# --- files ------------------------------------------------------------------------------------------


def test_keys_are_0600_and_certificates_say_what_they_are(pki: Pki) -> None:
    for files in (pki.ca, pki.broker, pki.hub1, pki.centre):
        assert stat.S_IMODE(files.key.stat().st_mode) == 0o600, files.key
    ca = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    hub = x509.load_pem_x509_certificate(pki.hub1.cert.read_bytes())
    assert hub.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == HUB1
    assert hub.issuer == ca.subject
    assert list(hub.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    server = x509.load_pem_x509_certificate(pki.broker.cert.read_bytes())
    assert list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_issue_refuses_to_overwrite_and_bad_names(pki: Pki, tmp_path: Path) -> None:
    ca_dir = pki.ca.cert.parent
    with pytest.raises(FileExistsError, match="force=True"):
        issue(ca_dir, HUB1, pki.hub1.key.parent, kind="hub")
    with pytest.raises(FileExistsError, match="force=True"):
        init_ca(ca_dir, COUNTY)
    for bad in ("Hub-1", "-hub", "hub/1", "hub+", "", "h" * 64):
        with pytest.raises(ValueError, match="invalid hub id"):
            issue(ca_dir, bad, tmp_path, kind="hub")
    with pytest.raises(FileNotFoundError, match="init_ca"):
        issue(tmp_path / "no-ca", HUB1, tmp_path, kind="hub")
    with pytest.raises(ValueError, match=r"CA .* expires"):
        issue(ca_dir, "hub-9", tmp_path, kind="hub", days=4000)

    first = issue(ca_dir, "hub-9", tmp_path, kind="hub")
    first.key.chmod(0o644)  # a key someone loosened: force writes a new file, created 0600
    before = first.key.read_bytes()
    again = issue(ca_dir, "hub-9", tmp_path, kind="hub", force=True)
    assert again.key.read_bytes() != before
    assert stat.S_IMODE(again.key.stat().st_mode) == 0o600
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]


def test_acl_names_each_hub_and_the_centre() -> None:
    text = acl(COUNTY, [HUB1], [CENTRE])
    block = text.split(f"user {HUB1}\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert block == [
        f"topic write {topic(HUB1, 'event')}",
        f"topic write {topic(HUB1, 'events')}",
        f"topic write {topic(HUB1, 'status')}",
        f"topic write {topic(HUB1, 'heartbeat')}",
        f"topic write {topic(HUB1, 'cmd_result')}",
        f"topic read {topic(HUB1, 'ack')}",
        f"topic read {topic(HUB1, 'acks')}",
        f"topic read {topic(HUB1, 'cmd')}",
    ]
    for line in (
        "read anju/v1/+/+/event",
        "read anju/v1/+/+/events",
        "read anju/v1/+/+/cmd_result",
        "write anju/v1/+/+/ack",
        "write anju/v1/+/+/acks",
    ):
        assert f"topic {line}\n" in text, line
    with pytest.raises(ValueError, match="hub id"):
        acl(COUNTY, ["hub/#"], [CENTRE])
    with pytest.raises(ValueError, match="both"):
        acl(COUNTY, [HUB1], [HUB1])


def test_the_acl_covers_every_message_kind_of_the_contract_once() -> None:
    assert sorted([*HUB_WRITES, *HUB_READS]) == sorted(MESSAGE_KINDS)


# --- the broker --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["event", "events"])
async def test_hub_event_reaches_centre_through_shared_subscription(county: County, kind: str) -> None:
    async with (
        client(county, county.pki.centre, f"centre-w1-{kind}") as centre,
        client(county, county.pki.hub1, HUB1) as hub,
    ):
        granted = await centre.subscribe(f"$share/centre/anju/v1/+/+/{kind}", qos=1)
        assert values(granted) == [1]
        codes = record_pubacks(hub)
        await hub.publish(topic(HUB1, kind), b'{"n": 1}', qos=1)
        message = await next_message(centre)
        assert (str(message.topic), message.payload) == (topic(HUB1, kind), b'{"n": 1}')
        assert codes == [0]


async def test_a_hubs_command_result_reaches_the_centre_and_no_other_hub_can_forge_it(county: County) -> None:
    async with (
        client(county, county.pki.centre, "centre-results") as centre,
        client(county, county.pki.hub1, HUB1) as hub1,
        client(county, county.pki.hub2, HUB2) as hub2,
    ):
        await centre.subscribe("anju/v1/+/+/cmd_result", qos=1)
        forged, codes = record_pubacks(hub2), record_pubacks(hub1)
        await hub2.publish(topic(HUB1, "cmd_result"), b"forged", qos=1)
        await hub1.publish(topic(HUB1, "cmd_result"), b"answer", qos=1)
        message = await next_message(centre)
        assert (str(message.topic), message.payload) == (topic(HUB1, "cmd_result"), b"answer")
        assert forged == [0x87] and codes == [0]


async def test_hub_cannot_publish_on_another_hubs_topic(county: County) -> None:
    async with client(county, county.pki.centre, "centre-w2") as centre, client(county, county.pki.hub2, HUB2) as hub2:
        await centre.subscribe("$share/centre/anju/v1/+/+/event", qos=1)
        await centre.subscribe("$share/centre/anju/v1/+/+/events", qos=1)
        await centre.subscribe("anju/v1/+/+/status", qos=1)
        codes = record_pubacks(hub2)
        await hub2.publish(topic(HUB1, "event"), b"forged-1", qos=1)
        await hub2.publish(topic(HUB1, "event"), b"forged-0", qos=0)
        await hub2.publish(topic(HUB1, "events"), b"forged-batch", qos=1)
        await hub2.publish(topic(HUB1, "status"), b"forged-status", qos=1, retain=True)
        await hub2.publish(topic(HUB2, "event"), b"marker", qos=1)
        # QoS 1: PUBACK 0x87 (Not authorized). QoS 0 has no PUBACK: paho reports 0 once it has sent it.
        assert codes == [0x87, 0x00, 0x87, 0x87, 0x00]
        message = await next_message(centre)
        assert (str(message.topic), message.payload) == (topic(HUB2, "event"), b"marker")


async def test_hub_cannot_read_another_hubs_commands(county: County) -> None:
    async with (
        client(county, county.pki.centre, "centre-w3") as centre,
        client(county, county.pki.hub1, HUB1) as hub1,
        client(county, county.pki.hub2, HUB2) as hub2,
    ):
        await hub1.subscribe(topic(HUB1, "cmd"), qos=1)
        # Granted all the same: mosquitto's acl_file checks read access on delivery, not on SUBSCRIBE.
        await hub1.subscribe(topic(HUB1, "acks"), qos=1)
        granted = await hub2.subscribe(
            [(topic(HUB1, "cmd"), 1), (topic(HUB1, "ack"), 1), (topic(HUB1, "acks"), 1), ("#", 1)]
        )
        assert values(granted) == [1, 1, 1, 1]
        codes = record_pubacks(centre)
        await centre.publish(topic(HUB1, "cmd"), b"for-hub-1", qos=1)
        await centre.publish(topic(HUB1, "ack"), b"ack-hub-1", qos=1)
        await centre.publish(topic(HUB1, "acks"), b"acks-hub-1", qos=1)
        await hub1.publish(topic(HUB1, "event"), b"event-hub-1", qos=1)
        await hub1.publish(topic(HUB1, "events"), b"events-hub-1", qos=1)
        await centre.publish(topic(HUB2, "cmd"), b"marker", qos=1)
        assert codes == [0, 0, 0, 0]
        assert (await next_message(hub1)).payload == b"for-hub-1"
        assert (await next_message(hub1)).payload == b"acks-hub-1"  # its own acks it may read
        message = await next_message(hub2)  # the first thing hub-2 gets is its own command
        assert (str(message.topic), message.payload) == (topic(HUB2, "cmd"), b"marker")


async def test_centre_cannot_publish_events_as_a_hub(county: County) -> None:
    async with client(county, county.pki.centre, "centre-w4") as centre:
        codes = record_pubacks(centre)
        await centre.publish(topic(HUB1, "event"), b"x", qos=1)
        await centre.publish(topic(HUB1, "events"), b"x", qos=1)
        await centre.publish(topic(HUB1, "ack"), b"y", qos=1)
        await centre.publish(topic(HUB1, "acks"), b"y", qos=1)
        # acks allowed, and 0x10 "No matching subscribers": no hub listens
        assert codes == [0x87, 0x87, 0x10, 0x10]


async def tls_refusal(county: County, identity: CertFiles | None) -> str:
    """Connect over TLS and return the TLS alert the broker answers with.

    Under TLS 1.3 the client's handshake completes before the broker has checked the client's
    certificate; its verdict arrives as an alert on the first read. (Nothing is written: the
    broker may already have closed the connection, and a write would fail with ECONNRESET.)"""
    reader, writer = await asyncio.open_connection("127.0.0.1", county.port, ssl=tls(county.pki.ca.cert, identity))
    try:
        async with asyncio.timeout(WAIT):
            with pytest.raises(ssl.SSLError) as caught:
                await reader.read(64)
        return str(caught.value.reason)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("who", "alert"),
    [("no certificate", "TLSV13_ALERT_CERTIFICATE_REQUIRED"), ("another CA's", "TLSV1_ALERT_UNKNOWN_CA")],
)
async def test_client_without_a_county_certificate_is_refused(county: County, who: str, alert: str) -> None:
    identity = None if who == "no certificate" else county.pki.stranger
    assert await tls_refusal(county, identity) == alert
    # Through our MQTT client the same refusal fails the connect at once (plain aiomqtt would wait
    # for a CONNACK until its timeout: cloud_bridge.mqtt._Client).
    with pytest.raises(aiomqtt.MqttError, match="closed before the broker answered"):
        async with client(county, identity, HUB1, timeout=WAIT):
            pass


async def test_hub_refuses_a_broker_with_a_certificate_from_another_ca(pki: Pki, tmp_path: Path) -> None:
    broker, port = start_broker(tmp_path / "rogue", pki, pki.rogue_broker)
    try:
        context = tls(pki.ca.cert, pki.hub1)
        with pytest.raises(aiomqtt.MqttError) as caught:
            async with mqtt_client("127.0.0.1", port, HUB1, tls_context=context, timeout=WAIT):
                pass
        assert "certificate verify failed" in str(caught.value) or isinstance(
            caught.value.__cause__, ssl.SSLCertVerificationError
        )
    finally:
        broker.stop()


def test_the_certs_command_creates_a_ca_and_a_hub_certificate_and_refuses_to_overwrite(tmp_path, capsys) -> None:
    from hub.cli import main

    assert main(["certs", "init-ca", "--dir", str(tmp_path / "ca"), "--county", "minle"]) == 0
    args = ["certs", "issue", "hub-0001", "--ca", str(tmp_path / "ca"), "--out", str(tmp_path / "hubs")]
    assert main(args) == 0
    assert (tmp_path / "hubs" / "hub-0001.key").stat().st_mode & 0o777 == 0o600
    capsys.readouterr()
    assert main(args) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0


async def test_the_hubs_own_uplink_and_the_centre_work_over_mutual_tls(county: County, tmp_path: Path) -> None:
    """The real MqttUplink and Centre, configured for mutual TLS: an alarm (alone, on `event`) and two
    faults (a batch, on `events`) are delivered and acknowledged (`ack`, `acks`) through the ACL."""
    from cloud_bridge.mqtt import MqttUplink, tls_context
    from cloud_bridge.outbox import Outbox
    from hub.config import MqttConfig, MqttTls
    from hub.model import Event, EventType
    from simulator.centre import Centre

    pki = county.pki
    centre = Centre(
        "127.0.0.1",
        county.port,
        tmp_path / "centre.sqlite3",
        CENTRE,
        tls=tls_context(pki.ca.cert, pki.centre.cert, pki.centre.key),
    )
    outbox = Outbox()
    acked = asyncio.Event()

    async def on_ack(event_id: str, body: dict[str, Any]) -> None:
        if outbox.ack(event_id) and len(outbox) == 0:
            acked.set()

    async def on_command(body: dict[str, Any]) -> None: ...

    config = MqttConfig(
        host="127.0.0.1", port=county.port, tls=MqttTls(ca=pki.ca.cert, cert=pki.hub1.cert, key=pki.hub1.key)
    )
    uplink = MqttUplink(config, HUB1, COUNTY, outbox, on_ack, on_command)
    tasks = [asyncio.create_task(centre.run()), asyncio.create_task(uplink.run())]
    try:
        await asyncio.wait_for(centre.connected.wait(), WAIT)
        await asyncio.wait_for(uplink.connected.wait(), WAIT)
        outbox.extend(
            [
                Event(EventType.ALARM_EMERGENCY, HUB1, "hh-1", COUNTY, "cord").with_seq(1),
                Event(EventType.FAULT_BATTERY_LOW, HUB1, "hh-1", COUNTY, "pendant").with_seq(2),
                Event(EventType.FAULT_TAMPER, HUB1, "hh-1", COUNTY, "smoke").with_seq(3),
            ]
        )
        await asyncio.wait_for(acked.wait(), WAIT)
        assert [(r["hub_id"], r["seq"]) for r in centre.store.events()] == [(HUB1, 1), (HUB1, 2), (HUB1, 3)]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
