"""mosquitto configuration for the county broker: a mutual-TLS listener and the topic ACL.

`mosquitto_tls_config` gives a listener block: TLS only, every client must present a certificate
from the county CA (`require_certificate`), and its subject CN becomes the MQTT user name
(`use_identity_as_username`) that the ACL names. No password or anonymous access.

`acl` gives the ACL file (mosquitto 2.0 `acl_file` syntax), one explicit `user` block per hub and
per centre rather than `pattern` lines with %u: a `pattern` applies to every user, centres
included, and an explicit list also withdraws a hub whose certificate is still valid but which has
been taken off the list (regenerate, then send mosquitto SIGHUP to reload the ACL).

* A hub (user = its hub id) may publish only to
  ``anju/v1/{county}/{hub}/event|events|status|heartbeat|cmd_result`` and read only
  ``anju/v1/{county}/{hub}/ack|acks|cmd``.
* A centre may read ``anju/v1/+/+/event|events|status|heartbeat|cmd_result`` and publish to
  ``anju/v1/+/+/ack|acks|cmd``.

How mosquitto 2.0 (2.0.11 here) applies the ACL file: it does not check a SUBSCRIBE at all (its
acl_file check returns success for MOSQ_ACL_SUBSCRIBE, a long-standing FIXME in
security_default.c); it checks `read` access when it delivers each message, against the
message's own topic. So a shared subscription ``$share/centre/anju/v1/+/+/event`` needs no ACL
line of its own (the ``$share/...`` string is never matched; ``anju/v1/anxi/hub-1/event`` is), and
a hub that subscribes to another hub's ``cmd`` (or to ``#``) gets SUBACK "Granted QoS 1" and then
simply never receives anything it may not read. A PUBLISH is checked against `write` access:
denied at QoS 1 under MQTT 5 it gets PUBACK reason code 0x87 (Not authorized); at QoS 0 it is
dropped silently; either way nothing is delivered. tests/cloud_bridge/test_tls_acl.py pins this.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cloud_bridge.certs import ID_PATTERN

HUB_WRITES = ("event", "events", "status", "heartbeat", "cmd_result")
HUB_READS = ("ack", "acks", "cmd")


def _check(what: str, value: str) -> str:
    if not ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"invalid {what} {value!r}: 1 to 63 lowercase letters, digits and hyphens (^[a-z0-9][a-z0-9-]{{0,62}}$)"
        )
    return value


def _path(value: Path | str) -> str:
    text = str(value)
    if any(ch in text for ch in "\n\r") or text != text.strip():
        raise ValueError(f"path {text!r} cannot go in a mosquitto configuration line")
    return text


def mosquitto_tls_config(
    port: int,
    ca: Path | str,
    cert: Path | str,
    key: Path | str,
    acl_file: Path | str,
    county: str,
    *,
    bind: str | None = None,
) -> str:
    """A mosquitto 2.0 listener block for the county broker: mutual TLS on `port`, the ACL from `acl_file`.

    `ca` is the county CA certificate (clients must present a certificate it signed), `cert`/`key`
    the broker's own (issued with kind="broker"). `bind` restricts the listener to one address.
    `allow_anonymous` and `acl_file` are global settings in mosquitto (unless
    `per_listener_settings true`), so this block is meant to be the broker's only listener.
    """
    _check("county", county)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not a TCP port")
    listener = f"listener {port}" + (f" {bind}" if bind else "")
    return "\n".join(
        [
            f"# Anju county broker for {county}: mutual TLS, CN = user name, topic ACL",
            listener,
            "protocol mqtt",
            f"cafile {_path(ca)}",
            f"certfile {_path(cert)}",
            f"keyfile {_path(key)}",
            "require_certificate true",
            "use_identity_as_username true",
            "set_tcp_nodelay true",
            "allow_anonymous false",
            f"acl_file {_path(acl_file)}",
            "",
        ]
    )


def acl(county: str, hubs: Iterable[str], centres: Iterable[str]) -> str:
    """The mosquitto ACL file text for `county`, its `hubs` (hub ids) and `centres` (centre ids)."""
    _check("county", county)
    hubs, centres = [_check("hub id", hub) for hub in hubs], [_check("centre id", c) for c in centres]
    clash = set(hubs) & set(centres)
    if clash:
        raise ValueError(f"{', '.join(sorted(clash))} named both as hub and as centre: a CN must be one or the other")
    lines = [f"# Anju ACL for county {county}: each hub its own topics; the centre every hub's"]
    for hub in dict.fromkeys(hubs):
        lines += ["", f"user {hub}"]
        lines += [f"topic write anju/v1/{county}/{hub}/{kind}" for kind in HUB_WRITES]
        lines += [f"topic read anju/v1/{county}/{hub}/{kind}" for kind in HUB_READS]
    for centre in dict.fromkeys(centres):
        lines += ["", f"user {centre}"]
        lines += [f"topic read anju/v1/+/+/{kind}" for kind in HUB_WRITES]
        lines += [f"topic write anju/v1/+/+/{kind}" for kind in HUB_READS]
    return "\n".join(lines) + "\n"
