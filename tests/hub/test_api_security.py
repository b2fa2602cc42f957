"""The web app's security pieces, each on its own with a fake clock: login lockout (per client,
doubling, and global), sessions (idle and absolute expiry, eviction), CSRF, LAN addresses, and
phone numbers kept out of logs."""

from __future__ import annotations

import logging

import pytest

from hub.api.security import (
    PHONE_MASK,
    LoginLimiter,
    RedactingFilter,
    SessionStore,
    csrf_ok,
    hash_pin,
    is_lan_client,
    new_pin,
    redact,
    verify_pin,
)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# --- PIN (unchanged; a smoke test) ------------------------------------------------------------


def test_a_pin_verifies_against_its_hash_and_a_wrong_one_or_a_malformed_hash_does_not() -> None:
    pin = new_pin()
    assert len(pin) == 8 and pin.isdigit()
    stored = hash_pin(pin)
    assert pin not in stored
    assert verify_pin(pin, stored)
    assert not verify_pin("00000000" if pin != "00000000" else "11111111", stored)
    assert not verify_pin(pin, "garbage")


# --- LoginLimiter -----------------------------------------------------------------------------


def fail(limiter: LoginLimiter, key: str, times: int) -> float:
    wait = 0.0
    for _ in range(times):
        wait = limiter.failed(key)
    return wait


def test_a_client_may_try_until_max_failures_in_a_row_then_waits_lock_s(clock: FakeClock) -> None:
    limiter = LoginLimiter(max_failures=5, lock_s=300, max_lock_s=3600, clock=clock)
    assert limiter.check("192.168.1.20") == 0
    assert fail(limiter, "192.168.1.20", 4) == 0
    assert limiter.check("192.168.1.20") == 0
    assert limiter.failed("192.168.1.20") == 300
    assert limiter.check("192.168.1.20") == 300
    clock.advance(120)
    assert limiter.check("192.168.1.20") == 180
    assert limiter.check("192.168.1.21") == 0  # another client is not affected


def test_a_lock_ends_after_its_time(clock: FakeClock) -> None:
    limiter = LoginLimiter(clock=clock)
    fail(limiter, "10.0.0.5", 5)
    clock.advance(299.5)
    assert limiter.check("10.0.0.5") == pytest.approx(0.5)
    clock.advance(0.5)
    assert limiter.check("10.0.0.5") == 0


def test_each_further_lock_doubles_up_to_max_lock_s(clock: FakeClock) -> None:
    limiter = LoginLimiter(max_failures=5, lock_s=300, max_lock_s=3600, clock=clock)
    locks = []
    for _ in range(7):
        wait = fail(limiter, "10.0.0.5", 5)
        assert limiter.check("10.0.0.5") == wait
        locks.append(wait)
        clock.advance(wait)
        assert limiter.check("10.0.0.5") == 0
    assert locks == [300, 600, 1200, 2400, 3600, 3600, 3600]


def test_success_clears_failures_and_the_doubling(clock: FakeClock) -> None:
    limiter = LoginLimiter(clock=clock)
    fail(limiter, "10.0.0.5", 5)
    clock.advance(300)
    fail(limiter, "10.0.0.5", 4)
    limiter.succeeded("10.0.0.5")
    assert len(limiter) == 0
    assert fail(limiter, "10.0.0.5", 4) == 0  # the count starts again
    assert limiter.failed("10.0.0.5") == 300  # and the first lock is lock_s again, not 600


def test_a_success_from_one_client_does_not_clear_another(clock: FakeClock) -> None:
    limiter = LoginLimiter(clock=clock)
    fail(limiter, "10.0.0.5", 5)
    limiter.succeeded("10.0.0.6")
    assert limiter.check("10.0.0.5") == 300


def test_many_failures_from_many_clients_lock_every_login(clock: FakeClock) -> None:
    limiter = LoginLimiter(max_failures=5, lock_s=300, clock=clock)
    # 51 wrong PINs within 10 minutes, from 17 addresses, none of which reaches its own lock
    for i in range(51):
        wait = limiter.failed(f"192.168.1.{i % 17}")
        clock.advance(10)
        if i < 50:
            assert wait == 0
    assert wait == 300
    clock.advance(-10)
    assert limiter.check("192.168.1.200") == 300  # an address never seen before is locked out too
    assert limiter.check("192.168.1.3") == 300
    clock.advance(300)
    assert limiter.check("192.168.1.200") == 0


def test_failures_spread_over_more_than_the_window_do_not_lock_everyone(clock: FakeClock) -> None:
    limiter = LoginLimiter(clock=clock)
    for i in range(200):
        assert limiter.failed(f"192.168.1.{i % 50}") == 0
        clock.advance(12.1)  # 51 failures span 605 s > 600 s
    assert limiter.check("192.168.1.200") == 0


def test_the_global_window_and_threshold_can_be_set(clock: FakeClock) -> None:
    limiter = LoginLimiter(max_failures=100, lock_s=60, clock=clock, global_max_failures=3, global_window_s=10)
    assert fail(limiter, "a", 3) == 0
    assert limiter.failed("b") == 60


def test_a_client_idle_for_a_day_is_forgotten(clock: FakeClock) -> None:
    limiter = LoginLimiter(clock=clock)
    fail(limiter, "10.0.0.5", 5)  # locked once: the next lock would be 600 s
    fail(limiter, "10.0.0.6", 4)
    clock.advance(24 * 3600)
    limiter.failed("10.0.0.7")  # any failure sweeps idle clients away
    assert len(limiter) == 1
    assert fail(limiter, "10.0.0.6", 4) == 0  # its old four failures are gone
    assert fail(limiter, "10.0.0.5", 5) == 300  # and so is the doubling


def test_a_client_active_within_a_day_is_remembered(clock: FakeClock) -> None:
    limiter = LoginLimiter(clock=clock)
    fail(limiter, "10.0.0.6", 4)
    clock.advance(24 * 3600 - 1)
    limiter.failed("10.0.0.7")
    assert limiter.failed("10.0.0.6") == 300


def test_the_table_of_clients_is_capped(clock: FakeClock) -> None:
    limiter = LoginLimiter(clock=clock, max_keys=10, global_max_failures=1000)
    for i in range(25):
        limiter.failed(f"fd00::{i}")
    assert len(limiter) == 10
    assert fail(limiter, "fd00::0", 4) == 0  # the longest idle were dropped: its first failure is gone
    fail(limiter, "fd00::24", 4)  # the newest are kept: its 5th failure locks it
    assert limiter.check("fd00::24") == 300


def test_check_does_not_add_clients(clock: FakeClock) -> None:
    limiter = LoginLimiter(clock=clock)
    for i in range(100):
        limiter.check(f"10.0.0.{i}")
    assert len(limiter) == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"max_failures": 0}, {"lock_s": 0}, {"lock_s": 600, "max_lock_s": 300}, {"max_keys": 0}, {"global_window_s": 0}],
)
def test_nonsense_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LoginLimiter(**kwargs)  # type: ignore[arg-type]


# --- SessionStore -----------------------------------------------------------------------------


def test_a_new_session_has_distinct_random_tokens_and_is_found_by_its_token(clock: FakeClock) -> None:
    store = SessionStore(idle_s=1800, clock=clock)
    first, second = store.create(), store.create(lang="en")
    assert len({first.token, first.csrf, second.token, second.csrf}) == 4
    assert len(first.token) >= 43 and len(first.csrf) >= 43  # 32 random bytes, base64url
    assert (first.created, first.last_seen, first.lang, second.lang) == (1000.0, 1000.0, "zh", "en")
    assert store.get(first.token) is first
    assert store.get(second.token) is second


def test_tokens_are_not_in_a_sessions_repr(clock: FakeClock) -> None:
    session = SessionStore(idle_s=1800, clock=clock).create()
    assert session.token not in repr(session) and session.csrf not in repr(session)


@pytest.mark.parametrize("token", ["", None, "not-a-token"])
def test_an_unknown_or_missing_token_has_no_session(clock: FakeClock, token: str | None) -> None:
    store = SessionStore(idle_s=1800, clock=clock)
    store.create()
    assert store.get(token) is None


def test_a_session_idle_longer_than_idle_s_is_gone(clock: FakeClock) -> None:
    store = SessionStore(idle_s=1800, clock=clock)
    session = store.create()
    clock.advance(1800)
    assert store.get(session.token) is session  # exactly idle_s: still alive
    clock.advance(1800.5)
    assert store.get(session.token) is None
    assert len(store) == 0
    clock.advance(-3000)  # removed, not merely refused
    assert store.get(session.token) is None


def test_using_a_session_keeps_it_alive_and_refreshes_last_seen(clock: FakeClock) -> None:
    store = SessionStore(idle_s=1800, clock=clock)
    session = store.create()
    for _ in range(10):
        clock.advance(1000)
        assert store.get(session.token) is session
        assert session.last_seen == clock.now
    assert session.created == 1000.0


def test_a_busy_session_still_ends_at_absolute_s(clock: FakeClock) -> None:
    store = SessionStore(idle_s=1800, absolute_s=12 * 3600, clock=clock)
    session = store.create()
    for _ in range(12 * 6):
        clock.advance(600)
        assert store.get(session.token) is session
    clock.advance(1)
    assert store.get(session.token) is None
    assert len(store) == 0


def test_end_logs_out(clock: FakeClock) -> None:
    store = SessionStore(idle_s=1800, clock=clock)
    session, other = store.create(), store.create()
    store.end(session.token)
    store.end(session.token)  # twice is fine
    store.end(None)
    store.end("not-a-token")
    assert store.get(session.token) is None
    assert store.get(other.token) is other


def test_past_max_sessions_the_oldest_is_evicted(clock: FakeClock) -> None:
    store = SessionStore(idle_s=1800, max_sessions=3, clock=clock)
    sessions = []
    for _ in range(3):
        sessions.append(store.create())
        clock.advance(1)
    store.get(sessions[0].token)  # used recently, but still the oldest
    newest = store.create()
    assert len(store) == 3
    assert store.get(sessions[0].token) is None
    assert [store.get(s.token) for s in (*sessions[1:], newest)] == [*sessions[1:], newest]


def test_expired_sessions_make_room_before_live_ones_are_evicted(clock: FakeClock) -> None:
    store = SessionStore(idle_s=100, max_sessions=2, clock=clock)
    stale = store.create()
    clock.advance(50)
    live = store.create()
    clock.advance(60)  # stale is now idle for 110 s, live for 60 s
    store.create()
    assert store.get(live.token) is live
    assert store.get(stale.token) is None


def test_nonsense_session_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        SessionStore(idle_s=0)
    with pytest.raises(ValueError):
        SessionStore(idle_s=60, max_sessions=0)


# --- CSRF -------------------------------------------------------------------------------------


def test_csrf_matches_only_the_sessions_own_token(clock: FakeClock) -> None:
    store = SessionStore(idle_s=1800, clock=clock)
    session, other = store.create(), store.create()
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, other.csrf)
    assert not csrf_ok(session, session.csrf[:-1])
    assert not csrf_ok(session, session.csrf + "x")
    assert not csrf_ok(session, session.token)


@pytest.mark.parametrize("submitted", [None, "", "令牌", "\udc80"])
def test_a_missing_empty_or_odd_csrf_token_is_refused_without_an_exception(
    clock: FakeClock, submitted: str | None
) -> None:
    session = SessionStore(idle_s=1800, clock=clock).create()
    assert csrf_ok(session, submitted) is False


# --- LAN clients ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "lan"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("10.0.0.1", True),
        ("10.255.255.255", True),
        ("172.16.0.1", True),
        ("172.31.255.254", True),
        ("192.168.1.2", True),
        ("169.254.10.20", True),
        ("fe80::1", True),
        ("fe80::1%wlan0", True),
        ("febf::1", True),
        ("fd12:3456:789a::1", True),
        ("fc00::1", True),
        ("::ffff:192.168.1.2", True),
        ("::ffff:10.1.2.3", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:169.254.1.1", True),
        ("8.8.8.8", False),
        ("::ffff:8.8.8.8", False),
        ("172.15.255.255", False),
        ("172.32.0.1", False),
        ("192.169.0.1", False),
        ("100.64.0.1", False),  # carrier-grade NAT is not the home network
        ("0.0.0.0", False),
        ("255.255.255.255", False),
        ("224.0.0.1", False),
        ("2001:db8::1", False),
        ("2408:8000::1", False),
        ("fec0::1", False),
        ("::", False),
        ("", False),
        ("not-an-ip", False),
        ("localhost", False),
        ("192.168.1", False),
        ("192.168.1.2.3", False),
        (" 192.168.1.2", False),
        ("192.168.1.2:8080", False),
        ("[192.168.1.2", False),
        ("\x00", False),
        (None, False),
        (3232235778, False),  # 192.168.1.2 as an int: not a host string
        (b"127.0.0.1", False),
    ],
)
def test_is_lan_client(host: object, lan: bool) -> None:
    assert is_lan_client(host) is lan  # type: ignore[arg-type]


# --- Logs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+8613812345678", PHONE_MASK),
        ("call 13812345678 now", f"call {PHONE_MASK} now"),
        ("电话13812345678，谢谢", f"电话{PHONE_MASK}，谢谢"),
        ("tel:+86 13812345678", f"tel:+86 {PHONE_MASK}"),
        ("contacts=['13812345678', '02112345678']", f"contacts=['{PHONE_MASK}', '{PHONE_MASK}']"),
        ("village 1234567", f"village {PHONE_MASK}"),
        ("full-width １３８１２３４５６７８", f"full-width {PHONE_MASK}"),
        ("hub-0001", "hub-0001"),
        ("hub hub-0001 on 2026-11-29 at 08:15:00", "hub hub-0001 on 2026-11-29 at 08:15:00"),
        ("2026-11-29T08:15:00+08:00", "2026-11-29T08:15:00+08:00"),
        ("emergency 120, police 110, pin 123456", "emergency 120, police 110, pin 123456"),
        ("took 0.30000000000000004 s", "took 0.30000000000000004 s"),
        ("192.168.1.2", "192.168.1.2"),
        ("", ""),
        ("没有电话号码", "没有电话号码"),
    ],
)
def test_redact_masks_phone_numbers_and_nothing_else(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected


def make_logger(name: str) -> tuple[logging.Logger, list[str]]:
    """A logger whose one handler, with the filter, keeps each formatted line."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(f"tests.api_security.{name}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, lines


def test_the_filter_redacts_the_rendered_message() -> None:
    logger, lines = make_logger("message")
    logger.info("calling %s for %s", "+8613812345678", "hub-0001")
    logger.warning("contact %(name)s at %(phone)s", {"name": "王芳", "phone": "13812345678"})
    logger.info("plain 13812345678")
    logger.info({"phone": "13812345678"})
    assert lines == [
        f"INFO calling {PHONE_MASK} for hub-0001",
        f"WARNING contact 王芳 at {PHONE_MASK}",
        f"INFO plain {PHONE_MASK}",
        f"INFO {{'phone': '{PHONE_MASK}'}}",
    ]


def test_the_filter_redacts_tracebacks_and_stacks() -> None:
    logger, lines = make_logger("traceback")
    try:
        raise ValueError("no answer from 13812345678")
    except ValueError:
        logger.exception("dial failed for %s", "13812345678")
    logger.info("here", stack_info=True)
    assert "13812345678" not in "\n".join(lines)
    assert f"ValueError: no answer from {PHONE_MASK}" in lines[0]
    assert lines[0].startswith(f"ERROR dial failed for {PHONE_MASK}\nTraceback")
    assert "Stack (most recent call last)" in lines[1]


def test_a_record_shared_by_two_handlers_is_redacted_the_same_for_both() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "to %s (%d tries)", ("13812345678", 3), None)
    first, second = RedactingFilter(), RedactingFilter()
    assert first.filter(record) and second.filter(record)
    assert record.getMessage() == f"to {PHONE_MASK} (3 tries)"


def test_a_message_with_wrong_args_is_logged_redacted_rather_than_raising() -> None:
    logger, lines = make_logger("bad_args")
    logger.info("to %s and %s", "13812345678")
    assert len(lines) == 1
    assert "13812345678" not in lines[0]
    assert "to %s and %s" in lines[0]


def test_tries_left_counts_down_and_resets() -> None:
    limiter = LoginLimiter(max_failures=3)
    assert limiter.tries_left("10.0.0.2") == 3
    limiter.failed("10.0.0.2")
    assert limiter.tries_left("10.0.0.2") == 2
    limiter.succeeded("10.0.0.2")
    assert limiter.tries_left("10.0.0.2") == 3
