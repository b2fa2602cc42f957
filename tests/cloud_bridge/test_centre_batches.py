"""The reference centre and batches: one transaction and one `acks` per `events` message, one record
per event id however the copies come (alone, batched, repeated inside a batch), nothing acknowledged
when nothing could be stored."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from cloud_bridge.contract import topic, validate
from hub.model import Event, EventType
from simulator.broker import PrivateBroker
from simulator.centre import Centre, CentreStore

HUB, COUNTY = "hub-3", "anxi"


def events(*seqs: int, hub_id: str = HUB) -> list[dict[str, Any]]:
    """Event messages with these seqs, each with a fresh event id."""
    return [
        Event(EventType.FAULT_BATTERY_LOW, hub_id, "hh-3", COUNTY, f"pendant-{seq}").with_seq(seq).to_message(1)
        for seq in seqs
    ]


def batch(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schema": "anju.events/1", "hub_id": HUB, "events": items}


# --- the store ---------------------------------------------------------------------------------


def test_a_batch_is_stored_one_record_per_event_id_and_repeats_are_duplicates(tmp_path: Path) -> None:
    store = CentreStore(tmp_path / "centre.sqlite3")
    first, (fourth, fifth) = events(1, 2, 3), events(4, 5)
    received = store.record_events(first, "centre-a")
    assert [(r.copies, r.duplicate) for r in received] == [(1, False)] * 3
    assert len({r.first_received_at for r in received}) == 1

    alone = store.record_event(fourth, "centre-a")
    assert (alone.copies, alone.duplicate) == (1, False)

    # a resent batch overlapping the first, with event 4 (stored alone) and event 5 twice
    again = store.record_events([first[1], fourth, fifth, fifth, first[0]], "centre-b")
    assert [(r.copies, r.duplicate) for r in again] == [(2, True), (2, True), (1, False), (2, True), (2, True)]
    assert again[0].first_received_at == received[1].first_received_at
    assert again[1].first_received_at == alone.first_received_at
    assert again[3].first_received_at == again[2].first_received_at

    rows = {r["seq"]: r for r in store.events()}
    assert {seq: r["copies"] for seq, r in rows.items()} == {1: 2, 2: 2, 3: 1, 4: 2, 5: 2}
    assert {seq: r["received_by"] for seq, r in rows.items()} == {
        1: "centre-a",
        2: "centre-a",
        3: "centre-a",
        4: "centre-a",
        5: "centre-b",
    }
    stored = store._db.execute("SELECT message FROM events WHERE seq = 3").fetchone()[0]
    assert json.loads(stored) == first[2]
    # a copy of a batched event arriving alone later is a duplicate too
    assert store.record_event(first[2], "centre-a").duplicate


def test_a_batch_that_cannot_be_stored_whole_leaves_nothing(tmp_path: Path) -> None:
    store = CentreStore(tmp_path / "centre.sqlite3")
    one = events(1)
    store.record_events(one, "c")
    store._db.execute(
        "CREATE TRIGGER refuse_13 BEFORE INSERT ON events WHEN NEW.seq = 13"
        " BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
    )
    with pytest.raises(sqlite3.Error, match="disk on fire"):
        store.record_events(events(11, 12, 13, 14) + one, "c")
    assert [(r["seq"], r["copies"]) for r in store.events()] == [(1, 1)]
    assert not store._db.in_transaction
    assert [r.copies for r in store.record_events(events(11, 12), "c")] == [1, 1]  # the store carries on


# --- the centre on a broker --------------------------------------------------------------------


class Hub:
    """A stand-in hub: publishes raw messages on its topics and collects what the centre answers."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.answers: list[tuple[str, dict[str, Any]]] = []
        self.changed = asyncio.Event()

    async def send(self, kind: str, message: dict[str, Any]) -> None:
        await self.client.publish(topic(COUNTY, HUB, kind), json.dumps(message).encode(), qos=1)

    async def collect(self) -> None:
        async for message in self.client.messages:
            kind = str(message.topic).rsplit("/", 1)[-1]
            body = json.loads(message.payload)  # type: ignore[arg-type]
            validate(kind, body)
            self.answers.append((kind, body))
            self.changed.set()

    async def wait_answers(self, count: int) -> list[tuple[str, dict[str, Any]]]:
        async with asyncio.timeout(15):
            while len(self.answers) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.answers


@pytest.fixture
async def centre_and_hub(broker: PrivateBroker, tmp_path: Path) -> AsyncIterator[tuple[Centre, Hub]]:
    centre = Centre(broker.host, broker.port, tmp_path / "centre.sqlite3", centre_id="centre-t")
    tasks = [asyncio.create_task(centre.run())]
    async with aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe([(topic(COUNTY, HUB, "ack"), 1), (topic(COUNTY, HUB, "acks"), 1)])
        hub = Hub(client)
        tasks.append(asyncio.create_task(hub.collect()))
        await asyncio.wait_for(centre.connected.wait(), 10)
        try:
            yield centre, hub
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_batch_is_answered_by_one_acks_naming_every_item_and_an_event_by_an_ack(
    centre_and_hub: tuple[Centre, Hub],
) -> None:
    centre, hub = centre_and_hub
    items = events(*range(1, 101))
    await hub.send("events", batch(items))
    await hub.send("event", items[7])  # a copy of a batched event, alone
    await hub.send("events", batch([items[0], *events(101), items[0]]))  # repeats, one new
    (k1, acks), (k2, ack), (k3, again) = await hub.wait_answers(3)
    assert (k1, k2, k3) == ("acks", "ack", "acks")
    assert (acks["hub_id"], acks["centre_id"]) == (HUB, "centre-t")
    assert [(a["event_id"], a["seq"], a["duplicate"]) for a in acks["acks"]] == [
        (e["event_id"], e["seq"], False) for e in items
    ]
    assert (ack["event_id"], ack["duplicate"], ack["received_at"]) == (
        items[7]["event_id"],
        True,
        acks["acks"][7]["received_at"],
    )
    assert [(a["seq"], a["duplicate"]) for a in again["acks"]] == [(1, True), (101, False), (1, True)]
    records = centre.store.events()
    assert len(records) == 101
    assert {r["seq"]: r["copies"] for r in records if r["copies"] > 1} == {1: 3, 8: 2}


async def test_a_batch_is_not_acknowledged_when_it_cannot_be_stored_or_is_not_the_hubs(
    centre_and_hub: tuple[Centre, Hub],
) -> None:
    centre, hub = centre_and_hub
    centre.store._db.execute(
        "CREATE TRIGGER refuse_13 BEFORE INSERT ON events WHEN NEW.seq = 13 BEGIN SELECT RAISE(ABORT, 'full'); END"
    )
    await hub.send("events", batch(events(11, 12, 13)))  # the store fails: no ack for any of them
    await hub.send("events", batch([*events(21), *events(22, hub_id="hub-4")]))  # smuggles another hub's event
    await hub.send("events", batch(events(31, 32)))  # the marker: answered, so the others were not
    ((kind, acks),) = await hub.wait_answers(1)
    assert (kind, [a["seq"] for a in acks["acks"]]) == ("acks", [31, 32])
    assert sorted(r["seq"] for r in centre.store.events()) == [31, 32]
