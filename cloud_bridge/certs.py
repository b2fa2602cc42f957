"""The county's certificate authority for mutual TLS between hubs, the centre and the broker.

One CA per county (`init_ca`): an EC P-256 key and a self-signed certificate (CA:TRUE, may sign
certificates and CRLs). From it `issue` makes one leaf key and certificate per party:

* ``hub``: subject CN = the hub id, extended key usage clientAuth. The broker takes the CN as the
  MQTT user name (`use_identity_as_username`), so the ACL (cloud_bridge.broker_config) confines a
  certificate to its own hub's topics.
* ``centre``: subject CN = the centre id, clientAuth.
* ``broker``: subject CN = the broker's host name, serverAuth, with subjectAltNames (DNS names and
  IP addresses; TLS clients check the SAN, not the CN). Without any SAN given, the name itself
  becomes one (an IP address SAN when it is one, a DNS SAN otherwise).

Files: ``{directory}/ca.key`` + ``ca.crt`` for the CA, ``{out_dir}/{name}.key`` + ``{name}.crt``
for a leaf, PEM. Private keys are unencrypted PKCS#8 (mosquitto and the hub read them unattended)
and are created with mode 0600 from the first byte (os.open with 0o600, then an atomic rename);
they are never chmod-ed afterwards. Nothing is overwritten unless ``force=True``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub.files import write_atomic

# The contract's pattern for a county and a hub id (cloud_bridge/contract/asyncapi.yaml). A centre
# id follows it too: every client CN becomes an MQTT user name, which must not hold '/', '+', '#'.
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# A broker's host name: DNS labels or an IP address (no wildcards, no spaces).
HOST_PATTERN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.:-]{0,252})$")

CA_KEY, CA_CERT = "ca.key", "ca.crt"
Kind = Literal["hub", "centre", "broker"]
KINDS: tuple[Kind, ...] = ("hub", "centre", "broker")
CLOCK_SKEW = dt.timedelta(minutes=5)  # a certificate is valid from a little before it was made


@dataclass(frozen=True)
class CaFiles:
    cert: Path
    key: Path


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path
    ca_cert: Path  # the CA certificate that verifies `cert` (and the peers' certificates)


def _check_id(what: str, value: str) -> None:
    if not ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1 to 63 lowercase letters, digits and hyphens, "
            "starting with a letter or digit (the contract's ^[a-z0-9][a-z0-9-]{0,62}$)"
        )


def _refuse_overwrite(paths: Iterable[Path], force: bool, what: str) -> None:
    if force:
        return
    existing = [str(path) for path in paths if path.exists()]
    if existing:
        raise FileExistsError(
            f"{what} already exists ({', '.join(existing)}); refusing to overwrite it. Remove it, "
            "choose another directory, or pass force=True (every certificate it signed or that uses it "
            "must then be replaced)"
        )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def init_ca(directory: Path | str, county: str, days: int = 3650, *, force: bool = False) -> CaFiles:
    """Create the county CA: `directory`/ca.key (EC P-256, mode 0600) and ca.crt (self-signed)."""
    _check_id("county", county)
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = CaFiles(cert=directory / CA_CERT, key=directory / CA_KEY)
    _refuse_overwrite((files.key, files.cert), force, f"a CA in {directory}")

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Anju"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, county),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Anju county CA {county}"),
        ]
    )
    now = _now()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_atomic(files.key, _key_pem(key), 0o600)
    write_atomic(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key_path, cert_path = ca_dir / CA_KEY, ca_dir / CA_CERT
    missing = [str(path) for path in (key_path, cert_path) if not path.exists()]
    if missing:
        raise FileNotFoundError(f"no county CA in {ca_dir} (missing {', '.join(missing)}): run init_ca first")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an EC private key; was it made by init_ca?")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise ValueError(f"{key_path} does not belong to {cert_path}: the CA directory is inconsistent")
    return cert, key


def _broker_sans(
    name: str, dns_names: Iterable[str], ip_addresses: Iterable[str | ipaddress.IPv4Address | ipaddress.IPv6Address]
) -> list[x509.GeneralName]:
    sans: list[x509.GeneralName] = [x509.DNSName(dns) for dns in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if not sans:  # TLS clients match the host against the SAN only: the name must be one
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    return sans


def issue(
    ca_dir: Path | str,
    name: str,
    out_dir: Path | str,
    *,
    kind: Kind,
    days: int = 825,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str | ipaddress.IPv4Address | ipaddress.IPv6Address] = (),
    force: bool = False,
) -> CertFiles:
    """Issue a key (mode 0600) and a certificate signed by the CA in `ca_dir`, CN = `name`.

    `kind` hub or centre: a client certificate (clientAuth), `name` its hub or centre id. `kind`
    broker: a server certificate (serverAuth) for host `name`, with `dns_names` and
    `ip_addresses` as subjectAltNames. Writes `out_dir`/{name}.key and {name}.crt.
    """
    dns_names, ip_addresses = tuple(dns_names), tuple(ip_addresses)
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    if kind == "broker":
        if not HOST_PATTERN.fullmatch(name):
            raise ValueError(f"invalid broker host name {name!r}: give a DNS name or an IP address")
    else:
        _check_id(f"{kind} id", name)
        if dns_names or ip_addresses:
            raise ValueError("dns_names and ip_addresses are for a broker certificate (kind='broker') only")
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    ca_dir, out_dir = Path(ca_dir), Path(out_dir)
    ca_cert, ca_key = _load_ca(ca_dir)
    now = _now()
    not_after = now + dt.timedelta(days=days)
    if not_after > ca_cert.not_valid_after_utc:
        raise ValueError(
            f"the CA in {ca_dir} expires on {ca_cert.not_valid_after_utc:%Y-%m-%d}, before this certificate "
            f"would ({not_after:%Y-%m-%d}): issue it for fewer days or make a new CA"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    files = CertFiles(cert=out_dir / f"{name}.crt", key=out_dir / f"{name}.key", ca_cert=ca_dir / CA_CERT)
    _refuse_overwrite((files.key, files.cert), force, f"a key or certificate for {name!r}")

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "broker" else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Anju"),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if kind == "broker":
        builder = builder.add_extension(
            x509.SubjectAlternativeName(_broker_sans(name, dns_names, ip_addresses)), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    write_atomic(files.key, _key_pem(key), 0o600)
    write_atomic(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return files
