"""Signed commands from the centre: the one canonical encoding, signing (centre) and checking (hub).

Every `cmd` message carries `signature`: the county CA's ECDSA P-256 / SHA-256 signature (DER,
then standard base64) over the command's **canonical encoding**, which is the JSON of the message
without its `signature` field, keys sorted, no spaces (`,` and `:` as separators), non-ASCII
characters as themselves, UTF-8. The hub checks it against the county CA certificate it already
trusts for TLS (`mqtt.tls.ca`, or `mqtt.command_ca`), so only whoever holds the county CA key
(the CA made by `anju certs init-ca`, an EC P-256 key) can make a hub act. The hub re-encodes the
message it parsed, so what is checked is exactly what is carried out.

`sign_command(ca_key_path, command)` is for the centre; `verify_command(command, ca_cert)` for the
hub, which raises `BadSignature` with a reason fit to send back.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

SIGNATURE_FIELD = "signature"
COMMANDS = ("silence", "test", "say", "status", "events", "config")


class BadSignature(ValueError):
    """The command's signature is missing, malformed or not the county CA's."""


def canonical(command: dict[str, Any]) -> bytes:
    """The bytes that are signed: the command without `signature`, sorted keys, compact, UTF-8."""
    body = {key: value for key, value in command.items() if key != SIGNATURE_FIELD}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def new_command(
    hub_id: str, command: str, args: dict[str, Any] | None = None, *, issued_at: datetime | None = None
) -> dict[str, Any]:
    """An unsigned `anju.cmd/1` message with a fresh `cmd_id` (a UUID4)."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}; the commands are {', '.join(COMMANDS)}")
    moment = (issued_at or datetime.now(UTC)).astimezone(UTC)
    return {
        "schema": "anju.cmd/1",
        "cmd_id": str(uuid.uuid4()),
        "hub_id": hub_id,
        "command": command,
        "args": dict(args or {}),
        "issued_at": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


def load_signing_key(ca_key_path: Path) -> ec.EllipticCurvePrivateKey:
    """The county CA's private key (PEM, unencrypted, as `anju certs init-ca` writes it)."""
    try:
        key = serialization.load_pem_private_key(Path(ca_key_path).read_bytes(), password=None)
    except OSError as exc:
        raise ValueError(f"{ca_key_path}: cannot read the CA key ({exc.strerror or exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key_path} is not an EC private key; was it made by `anju certs init-ca`?")
    return key


def sign_command(ca_key_path: Path | ec.EllipticCurvePrivateKey, command: dict[str, Any]) -> dict[str, Any]:
    """A copy of `command` with its `signature` (any old one replaced)."""
    key = ca_key_path if isinstance(ca_key_path, ec.EllipticCurvePrivateKey) else load_signing_key(ca_key_path)
    signature = key.sign(canonical(command), ec.ECDSA(hashes.SHA256()))
    return {**command, SIGNATURE_FIELD: base64.b64encode(signature).decode("ascii")}


def load_ca_public_key(ca_cert_path: Path) -> ec.EllipticCurvePublicKey:
    """The public key of the county CA certificate (PEM) that signs commands."""
    try:
        cert = x509.load_pem_x509_certificate(Path(ca_cert_path).read_bytes())
    except OSError as exc:
        raise ValueError(f"{ca_cert_path}: cannot read the CA certificate ({exc.strerror or exc})") from exc
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"{ca_cert_path}: the CA key is not an EC key; commands are signed with ECDSA")
    return key


def verify_command(command: dict[str, Any], ca_key: ec.EllipticCurvePublicKey) -> None:
    """Return if `command` carries the CA's signature over its canonical encoding; raise `BadSignature`."""
    encoded = command.get(SIGNATURE_FIELD)
    if encoded is None:
        raise BadSignature("the command is not signed")
    if not isinstance(encoded, str) or len(encoded) > 200:
        raise BadSignature("the signature is not a base64 string")
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadSignature("the signature is not valid base64") from None
    try:
        data = canonical(command)
    except (TypeError, ValueError) as exc:
        raise BadSignature(f"the command cannot be encoded canonically: {exc}") from None
    try:
        ca_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise BadSignature("the signature is not the county CA's (another key, or the command was changed)") from None
