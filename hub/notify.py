"""systemd's readiness protocol (sd_notify): one datagram to the socket named in $NOTIFY_SOCKET.

systemd uses it for `Type=notify` units and their watchdog; the scenario runner uses the same
protocol to learn when a hub it started is ready. Hand-written: the protocol is a single
datagram, and the small PyPI clients for it (sdnotify) are unmaintained.
"""

from __future__ import annotations

import os
import socket


def sd_notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1", "WATCHDOG=1", "STATUS=…"); False when nobody is listening."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), socket.MSG_DONTWAIT, address)  # never block the event loop
    except OSError:
        return False
    return True
