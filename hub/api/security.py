"""The web app's security, framework-free so each piece is tested on its own with a fake clock.

This module owns:

- the installer PIN: `hash_pin` / `verify_pin` / `new_pin` (a slow KDF, never stored in clear);
- `LoginLimiter`: lockout of a client after repeated wrong PINs (doubling locks) and of every client
  after a burst of wrong PINs from many addresses (a distributed guess);
- `SessionStore` / `Session`: server-side sessions with idle and absolute expiry and a per-session
  CSRF token, checked by `csrf_ok`;
- `is_lan_client`: whether a peer address is on a home network (loopback, private, link-local, ULA);
- `redact` / `RedactingFilter`: phone numbers masked before anything reaches a log.

`hash_pin` / `verify_pin` use scrypt (hashlib, OpenSSL's implementation) with a random salt; the
stored form is `scrypt$<n>$<r>$<p>$<salt, base64>$<hash, base64>`, so the cost can be raised later
without invalidating PINs already printed on labels.

Every time-dependent piece takes `clock`, a monotonic clock in seconds (`time.monotonic` by
default). The stateful pieces hold a lock, so they may be used from a thread pool as well as from
the event loop. Session tokens and CSRF tokens are secrets: they are never logged, nor shown by
`repr(session)`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # ~50 ms and 16 MiB per try on a Raspberry Pi 4
_PREFIX = "scrypt"


def hash_pin(pin: str) -> str:
    """The stored form of an installer PIN."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(pin.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    encode = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"{_PREFIX}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt)}${encode(digest)}"


def verify_pin(pin: str, stored: str) -> bool:
    """Whether `pin` is the PIN behind `stored`; False (never an exception) for a malformed `stored`."""
    try:
        prefix, n, r, p, salt, digest = stored.split("$")
        if prefix != _PREFIX:
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = hashlib.scrypt(
            pin.encode(), salt=base64.b64decode(salt, validate=True), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def new_pin(digits: int = 8) -> str:
    """A random PIN for a hub's label (8 digits: with the lockout, guessing is hopeless)."""
    return "".join(secrets.choice("0123456789") for _ in range(digits))


Clock = Callable[[], float]


# --- Login attempts ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Client:
    failures: int = 0  # wrong PINs in a row since the last lock (or since the first failure)
    locks: int = 0  # locks so far: the next one lasts lock_s * 2**locks, at most max_lock_s
    locked_until: float = float("-inf")
    last: float = float("-inf")  # the last wrong PIN


class LoginLimiter:
    """Lockout after wrong PINs, per client key (the client's IP address) and for everyone at once.

    The web app calls `check(key)` before verifying a PIN (and refuses, without verifying, while it
    returns more than 0), then `failed(key)` or `succeeded(key)`.

    - Per key: `max_failures` wrong PINs in a row lock the key for `lock_s`; after the lock another
      `max_failures` wrong PINs lock it again for twice as long, and so on up to `max_lock_s`.
      `succeeded` clears the key; a key with no wrong PIN for `forget_s` (a day) is forgotten.
    - For everyone: more than `global_max_failures` wrong PINs from all keys together within
      `global_window_s` lock every login for `lock_s` (someone guessing from many addresses). The
      window slides: while it still holds that many failures, each further one locks again.

    Only `failed` adds a key, and at most `max_keys` are kept (the longest idle is dropped first);
    filling the table takes far more failures than the global guard allows in its window, so
    dropping a locked key to make room is not a way round the lock.
    """

    def __init__(
        self,
        max_failures: int = 5,
        lock_s: float = 300,
        max_lock_s: float = 3600,
        clock: Clock = time.monotonic,
        *,
        global_max_failures: int = 50,
        global_window_s: float = 600,
        forget_s: float = 24 * 3600,
        max_keys: int = 1024,
    ) -> None:
        if max_failures < 1 or global_max_failures < 1 or max_keys < 1:
            raise ValueError("max_failures, global_max_failures and max_keys must be at least 1")
        if not 0 < lock_s <= max_lock_s <= forget_s or global_window_s <= 0:
            raise ValueError("need 0 < lock_s <= max_lock_s <= forget_s and global_window_s > 0")
        self.max_failures = max_failures
        self.lock_s = float(lock_s)
        self.max_lock_s = float(max_lock_s)
        self.global_max_failures = global_max_failures
        self.global_window_s = float(global_window_s)
        self.forget_s = float(forget_s)
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: OrderedDict[str, _Client] = OrderedDict()  # the longest without a failure first
        self._recent: deque[float] = deque(maxlen=global_max_failures + 1)  # times of the last failures
        self._all_locked_until = float("-inf")

    def check(self, key: str) -> float:
        """Seconds `key` must still wait before it may try a PIN; 0 if it may try now."""
        with self._lock:
            return self._wait(key, self._clock())

    def failed(self, key: str) -> float:
        """Record a wrong PIN from `key`; returns what `check(key)` now returns."""
        with self._lock:
            now = self._clock()
            self._forget_idle(now)
            client = self._clients.get(key)
            if client is None:
                while len(self._clients) >= self.max_keys:
                    self._clients.popitem(last=False)
                client = self._clients[key] = _Client()
            else:
                self._clients.move_to_end(key)
            client.last = now
            client.failures += 1
            if client.failures >= self.max_failures:
                lock = min(self.max_lock_s, self.lock_s * 2.0 ** min(client.locks, 64))
                client.locked_until = max(client.locked_until, now + lock)
                client.locks += 1
                client.failures = 0
            self._recent.append(now)
            if len(self._recent) > self.global_max_failures and now - self._recent[0] <= self.global_window_s:
                self._all_locked_until = max(self._all_locked_until, now + self.lock_s)
            return self._wait(key, now)

    def tries_left(self, key: str) -> int:
        """Wrong PINs `key` may still send before it is locked out."""
        with self._lock:
            client = self._clients.get(key)
            return self.max_failures - (client.failures if client is not None else 0)

    def succeeded(self, key: str) -> None:
        """The right PIN from `key`: its failures and locks are forgotten."""
        with self._lock:
            self._clients.pop(key, None)

    def __len__(self) -> int:
        """How many keys are remembered."""
        with self._lock:
            return len(self._clients)

    def _wait(self, key: str, now: float) -> float:
        client = self._clients.get(key)
        until = self._all_locked_until if client is None else max(self._all_locked_until, client.locked_until)
        return max(0.0, until - now)

    def _forget_idle(self, now: float) -> None:
        while self._clients:
            oldest = next(iter(self._clients.values()))
            if now - oldest.last < self.forget_s or oldest.locked_until > now:
                return
            self._clients.popitem(last=False)


# --- Sessions ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Session:
    """One logged-in installer's browser. `token` (the cookie) and `csrf` are secrets: not in repr."""

    token: str = field(repr=False)
    csrf: str = field(repr=False)
    created: float
    last_seen: float
    lang: str = "zh"


class SessionStore:
    """Sessions in memory (a hub restart logs everyone out, which is fine for an installer's visit).

    A session ends when idle for longer than `idle_s`, when older than `absolute_s` however busy,
    or on `end`. Past `max_sessions` the oldest (first created) session is dropped.
    """

    def __init__(
        self,
        idle_s: float,
        absolute_s: float = 12 * 3600,
        max_sessions: int = 32,
        clock: Clock = time.monotonic,
    ) -> None:
        if idle_s <= 0 or absolute_s <= 0 or max_sessions < 1:
            raise ValueError("idle_s and absolute_s must be positive and max_sessions at least 1")
        self.idle_s = float(idle_s)
        self.absolute_s = float(absolute_s)
        self.max_sessions = max_sessions
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}  # in order of creation

    def create(self, lang: str = "zh") -> Session:
        """A new session, with fresh random token and CSRF token."""
        with self._lock:
            now = self._clock()
            self._drop_expired(now)
            while len(self._sessions) >= self.max_sessions:
                del self._sessions[next(iter(self._sessions))]
            session = Session(
                token=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32), created=now, last_seen=now, lang=lang
            )
            self._sessions[session.token] = session
            return session

    def get(self, token: str | None) -> Session | None:
        """The live session behind `token` (its last_seen now refreshed), or None: unknown or expired."""
        if not token:
            return None
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return None
            now = self._clock()
            if self._expired(session, now):
                del self._sessions[token]
                return None
            session.last_seen = now
            return session

    def end(self, token: str | None) -> None:
        """Log out: the session behind `token`, if any, is gone."""
        if token:
            with self._lock:
                self._sessions.pop(token, None)

    def __len__(self) -> int:
        """How many live sessions there are."""
        with self._lock:
            self._drop_expired(self._clock())
            return len(self._sessions)

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_seen > self.idle_s or now - session.created > self.absolute_s

    def _drop_expired(self, now: float) -> None:
        for token in [token for token, session in self._sessions.items() if self._expired(session, now)]:
            del self._sessions[token]


def csrf_ok(session: Session, submitted: str | None) -> bool:
    """Whether a form's or header's CSRF token is this session's (compared in constant time)."""
    if not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(session.csrf.encode(), submitted.encode("utf-8", "surrogatepass"))


# --- Client addresses -------------------------------------------------------------------------

_LAN_NETWORKS = tuple(
    ipaddress.ip_network(network)
    for network in (
        "127.0.0.0/8",  # loopback
        "10.0.0.0/8",  # RFC 1918
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",  # link-local
        "::1/128",  # loopback
        "fe80::/10",  # link-local
        "fc00::/7",  # unique local addresses
    )
)


def is_lan_client(host: str | None) -> bool:
    """Whether a peer's address is on a home network: loopback, RFC 1918 private, link-local or IPv6
    ULA, also written IPv4-mapped (`::ffff:192.168.1.2`) or with a zone (`fe80::1%wlan0`). False for
    anything else, including text that is not an address; never an exception.

    Only as good as the address it is given: behind a proxy that is the proxy's. Note that a carrier
    may hand out RFC 1918 addresses on a 4G link, so listen on the home network's interface too.
    """
    if not isinstance(host, str):
        return False
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _LAN_NETWORKS)


# --- Logs -------------------------------------------------------------------------------------

PHONE_MASK = "[phone]"
# 7 or more digits in a row (any script's digits, e.g. full-width), with an optional leading plus;
# not starting inside a longer run, nor as the fraction of a decimal number (0.30000000000000004).
_PHONE = re.compile(r"(?<!\d)(?<!\d\.)[+＋]?\d{7,}")


def redact(text: str) -> str:
    """`text` with phone numbers (7 or more digits in a row, an optional leading +) masked as
    `[phone]`; everything else, ids like `hub-0001` and dates like `2026-11-29`, unchanged.
    Numbers written with spaces or dashes inside (`138 1234 5678`) are not recognised."""
    return _PHONE.sub(PHONE_MASK, text)


class RedactingFilter(logging.Filter):
    """A handler filter that redacts each record's final message, and its traceback and stack text.

    The message is rendered (`msg % args`) here and stored back with no args, so a record shared by
    several handlers is redacted once. A traceback is rendered with the standard formatting (a
    handler's own `formatException` is not used). A message whose args do not fit its format is
    logged as its repr rather than reported, with its arguments, on stderr by `Handler.handleError`.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            try:
                message = f"unrenderable log message: {record.msg!r} % {record.args!r}"
            except Exception:
                message = "unrenderable log message"
        record.msg = redact(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
