"""The centre at scale: one store shared by several workers, in SQLite and in PostgreSQL (the local
server, a throw-away database per test); group commit that keeps a good message when another in
the same commit fails; alarms ahead of a storm of statuses; and the centre's own alarm when a hub
goes (its last will and no return within the grace, or 3 heartbeats missed), raised once
whichever worker finds it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from cloud_bridge.contract import topic
from hub.model import Event, EventType
from simulator.broker import PrivateBroker
from simulator.centre import Centre, Inbox
from simulator.centre_store import CentreStore, Unit
from simulator.proxy import TcpProxy

COUNTY = "anxi"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where the centre keeps its records: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "centre.sqlite3")
    else:
        yield request.getfixturevalue("postgres_url")


def alarm(hub_id: str, seq: int) -> dict[str, Any]:
    return Event(EventType.ALARM_EMERGENCY, hub_id, "hh", COUNTY, "cord").with_seq(seq).to_message(1)


def info(hub_id: str, seq: int) -> dict[str, Any]:
    return Event(EventType.INFO_CHECKIN_OK, hub_id, "hh", COUNTY, "cord").with_seq(seq).to_message(1)


def heartbeat(hub_id: str, interval_s: float = 10.0) -> Unit:
    body = {"schema": "anju.heartbeat/1", "hub_id": hub_id, "seq": 1, "at": "2026-11-29T10:00:00.000Z"}
    return Unit("heartbeat", COUNTY, hub_id, body | {"interval_s": interval_s})


def status(hub_id: str, state: str) -> Unit:
    return Unit("status", COUNTY, hub_id, {"schema": "anju.status/1", "hub_id": hub_id, "state": state})


def refuse_seq(store: CentreStore, seq: int) -> None:
    """Make the database refuse to store an event with this seq, as a full or failing disk would."""
    if store.postgres:
        store._execute(
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN"
            f" IF NEW.seq = {seq} THEN RAISE EXCEPTION 'disk on fire'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        store._execute("CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse()")
    else:
        store._execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.seq = {seq}"
            " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )


def test_two_workers_sharing_a_store_keep_one_record_per_event(db: str) -> None:
    one, two = CentreStore(db), CentreStore(db)
    try:
        message = alarm("hub-1", 7)
        assert not one.record_event(message, "centre-1").duplicate
        again = two.record_event(message, "centre-2")
        assert (again.copies, again.duplicate) == (2, True)
        [record] = one.events()
        assert (record["seq"], record["copies"], record["received_by"]) == (7, 2, "centre-1")
        assert one.doubled_alarms(COUNTY) == 0
    finally:
        one.close()
        two.close()


def test_a_group_commit_keeps_every_good_message_when_one_cannot_be_stored(db: str) -> None:
    store = CentreStore(db)
    try:
        refuse_seq(store, 13)
        batch = {"schema": "anju.events/1", "hub_id": "hub-1", "events": [info("hub-1", 12), info("hub-1", 13)]}
        units = [
            Unit("event", COUNTY, "hub-1", alarm("hub-1", 1)),
            Unit("events", COUNTY, "hub-1", batch),
            heartbeat("hub-1"),
            Unit("event", COUNTY, "hub-1", alarm("hub-1", 14)),
        ]
        first, refused, beat, last = store.write(units, "centre-1")
        assert isinstance(refused, store.errors), "the batch with the refused event is refused whole"
        assert [r.copies for r in first] == [1] and beat == [] and [r.copies for r in last] == [1]
        assert [r["seq"] for r in store.events()] == [1, 14], "nothing of the refused batch is kept"
        assert store.hubs()["hub-1"]["heartbeat_s"] == 10.0
    finally:
        store.close()


def test_a_hub_that_misses_three_heartbeats_raises_one_offline_alarm_whichever_worker_sweeps(db: str) -> None:
    clock = Clock()
    one, two = CentreStore(db, clock=clock), CentreStore(db, clock=clock)
    try:
        one.write([heartbeat("hub-1", interval_s=10.0), heartbeat("hub-2", interval_s=10.0)], "centre-1")
        clock.now += 29.0
        one.write([heartbeat("hub-2", interval_s=10.0)], "centre-1")
        assert one.sweep("centre-1") == [] and two.sweep("centre-2") == []
        clock.now += 2.0  # hub-1: 31 s, more than 3 intervals, without a heartbeat
        raised = one.sweep("centre-1") + two.sweep("centre-2")
        assert [(a.hub_id, a.kind) for a in raised] == [("hub-1", "hub.offline")]
        assert "3 heartbeats missed" in raised[0].reason
        assert one.sweep("centre-1") == [], "raised once, not again on every sweep"
        two.write([heartbeat("hub-1", interval_s=10.0)], "centre-2")
        one.write([heartbeat("hub-1", interval_s=10.0)], "centre-1")
        kinds = [(a["hub_id"], a["kind"]) for a in one.centre_alarms()]
        assert kinds == [("hub-1", "hub.offline"), ("hub-1", "hub.online")], "back online recorded once"
    finally:
        one.close()
        two.close()


def test_a_last_will_is_an_offline_alarm_only_if_the_hub_is_not_back_within_the_grace(db: str) -> None:
    clock = Clock()
    store = CentreStore(db, heartbeat_s=60.0, offline_grace_s=30.0, clock=clock)
    try:
        store.write([status("hub-1", "online"), heartbeat("hub-1", interval_s=60.0)], "c")
        store.write([status("hub-1", "offline")], "c")  # a reboot: its will, then back in 20 s
        clock.now += 20.0
        store.write([status("hub-1", "online")], "c")
        clock.now += 15.0
        assert store.sweep("c") == [], "a hub back within the grace raises nothing"
        store.write([status("hub-1", "offline")], "c")  # the power is out for good
        clock.now += 29.0
        assert store.sweep("c") == []
        clock.now += 2.0
        [gone] = store.sweep("c")
        assert (gone.hub_id, gone.kind) == ("hub-1", "hub.offline") and "last will" in gone.reason
    finally:
        store.close()


def test_a_retained_birth_handed_to_a_resubscribing_worker_does_not_bring_a_silent_hub_back(db: str) -> None:
    """A hub still connected (its retained status says online) whose heartbeats stopped is offline;
    a worker that reconnects gets that old retained status again, and it must not count as news."""
    clock = Clock()
    store = CentreStore(db, clock=clock)
    try:
        store.write([status("hub-1", "online"), heartbeat("hub-1", interval_s=10.0)], "c")
        clock.now += 31.0
        assert [a.kind for a in store.sweep("c")] == ["hub.offline"]
        again = Unit("status", COUNTY, "hub-1", status("hub-1", "online").body, retained=True)
        store.write([again, Unit("status", COUNTY, "hub-2", status("hub-2", "online").body, retained=True)], "c")
        assert store.hubs()["hub-1"]["offline_since"] is not None, "still offline: nothing new was heard"
        assert [a["kind"] for a in store.centre_alarms()] == ["hub.offline"]
        assert store.hubs()["hub-2"]["state"] == "online", "a hub never heard of is taken from its retained state"
    finally:
        store.close()


async def test_alarms_are_committed_ahead_of_a_storm_of_statuses_and_heartbeats() -> None:
    inbox = Inbox()
    for n in range(300):
        inbox.put(status(f"hub-{n}", "online"))
        inbox.put(heartbeat(f"hub-{n}"))
    inbox.put(Unit("event", COUNTY, "hub-9", info("hub-9", 1)))
    inbox.put(Unit("event", COUNTY, "hub-7", alarm("hub-7", 1)))
    first = await inbox.take(100)
    assert first[0].body.get("type") == "alarm.emergency", "the alarm goes into the very next commit"
    assert [u.kind for u in first[1:3]] == ["status", "heartbeat"], "then the rest, in the order it came"
    rest: list[Unit] = []
    while len(rest) < 601 - 100:
        rest += await inbox.take(500)
    assert rest[-1].body.get("type") == "info.checkin_ok"


async def test_a_hub_whose_line_dies_is_reported_offline_by_the_centre_and_online_when_back(
    broker: PrivateBroker, tmp_path: Path
) -> None:
    """A real last will: the hub's connection is reset under it (a proxy goes down), the broker
    publishes its will, the centre waits out the grace and raises hub.offline; the hub returns."""
    centre = Centre(
        broker.host, broker.port, tmp_path / "centre.sqlite3", offline_grace_s=0.3, sweep_s=0.05, heartbeat_s=60
    )
    serving = asyncio.create_task(centre.run())
    hub_id = "hub-5"
    will = aiomqtt.Will(topic(COUNTY, hub_id, "status"), json.dumps(_status(hub_id, "offline")), qos=1, retain=True)
    try:
        await asyncio.wait_for(centre.connected.wait(), 10)
        async with TcpProxy(broker.host, broker.port) as line:
            async with aiomqtt.Client("127.0.0.1", line.port, identifier=hub_id, will=will) as client:
                online = json.dumps(_status(hub_id, "online"))
                await client.publish(topic(COUNTY, hub_id, "status"), online, qos=1, retain=True)
                await _until(lambda: centre.store.hubs().get(hub_id, {}).get("state") == "online")
                await line.set_mode("down")  # the line dies: no DISCONNECT, so the broker sends the will
                await _until(lambda: any(a["kind"] == "hub.offline" for a in centre.store.centre_alarms()))
        [gone] = centre.store.centre_alarms()
        assert (gone["hub_id"], gone["kind"]) == (hub_id, "hub.offline") and "last will" in gone["reason"]
        async with aiomqtt.Client(broker.host, broker.port, identifier=hub_id) as client:
            await client.publish(topic(COUNTY, hub_id, "status"), json.dumps(_status(hub_id, "online")), qos=1)
            await _until(lambda: len(centre.store.centre_alarms()) == 2)
        assert [a["kind"] for a in centre.store.centre_alarms()] == ["hub.offline", "hub.online"]
    finally:
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)


def _status(hub_id: str, state: str) -> dict[str, Any]:
    return {"schema": "anju.status/1", "hub_id": hub_id, "state": state}


async def _until(condition: Any, timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


def test_a_postgresql_restart_refuses_one_commit_and_the_next_reconnects(postgres_url: str) -> None:
    """A failover or restart drops the centre's connection: the commit it breaks is refused (so not
    acknowledged, and resent by the hubs), and the next one connects again instead of failing for
    good or ending the worker."""
    import psycopg

    from simulator.postgres import admin_url

    store = CentreStore(postgres_url)
    try:
        store.record_event(alarm("hub-1", 1), "centre-1")
        with psycopg.connect(admin_url(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (store._db.info.backend_pid,))
        (refused,) = store.write([Unit("event", COUNTY, "hub-1", alarm("hub-1", 2))], "centre-1")
        assert isinstance(refused, store.errors), "refused as an outcome, not raised"
        (stored,) = store.write([Unit("event", COUNTY, "hub-1", alarm("hub-1", 2))], "centre-1")
        assert [r.copies for r in stored] == [1] and store.sweep("centre-1") == []
        assert [r["seq"] for r in store.events()] == [1, 2]
    finally:
        store.close()


def test_two_workers_writing_the_same_hubs_in_opposite_orders_never_deadlock(postgres_url: str) -> None:
    """Statuses reach every worker, so two PostgreSQL transactions update the same hubs' rows. Taken
    in different orders they deadlock (PostgreSQL breaks each after a second, and the whole group
    with it: a power cut's 20,000 statuses once took 34 s). The store writes in one global order."""
    import threading

    one, two = CentreStore(postgres_url), CentreStore(postgres_url)
    hubs = [f"hub-{n:03d}" for n in range(60)]
    one.write([status(h, "online") for h in hubs], "c1")  # the rows exist: from now on, updates

    def deadlocks() -> int:
        row = one._execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").fetchone()
        return int(row[0])

    before = deadlocks()
    failures: list[object] = []

    def worker(store: CentreStore, order: list[str], name: str) -> None:
        for round_ in range(8):
            state = "offline" if round_ % 2 else "online"
            outcomes = store.write([status(h, state) for h in order], name)
            failures.extend(o for o in outcomes if isinstance(o, Exception))

    try:
        threads = [
            threading.Thread(target=worker, args=(one, hubs, "c1")),
            threading.Thread(target=worker, args=(two, hubs[::-1], "c2")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert failures == []
        one._execute("SELECT pg_stat_clear_snapshot()")
        assert deadlocks() == before, "the two workers deadlocked"
    finally:
        one.close()
        two.close()
