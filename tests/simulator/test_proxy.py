"""The fault-injecting TCP proxy, on real loopback sockets in front of an echo server."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from simulator.proxy import TcpProxy

HOST = "127.0.0.1"
EXPECTED = 2.0  # generous bound on something that must happen
NOTHING = 0.2  # how long to listen for something that must not happen


@pytest.fixture(autouse=True)
async def no_loop_errors() -> AsyncIterator[None]:
    """Fails a test whose event loop reported an error: an unhandled handler exception, a task
    destroyed while pending, an exception never retrieved."""
    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    gc.collect()
    await asyncio.sleep(0)
    assert errors == []


@dataclass
class Echo:
    port: int
    connections: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


@pytest.fixture
async def echo() -> AsyncIterator[Echo]:
    """An echo server on a free loopback port that counts the connections it gets."""
    state = Echo(port=0)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        state.tasks.add(task)
        state.connections += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        finally:
            writer.close()
            state.tasks.discard(task)

    server = await asyncio.start_server(serve, HOST, 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()
    for task in list(state.tasks):
        task.cancel()
    await asyncio.gather(*state.tasks, return_exceptions=True)
    await server.wait_closed()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(HOST, port), EXPECTED)


async def _roundtrip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), EXPECTED)


async def _ended(reader: asyncio.StreamReader) -> bool:
    """True once the connection ends, by EOF or by reset."""
    try:
        return await asyncio.wait_for(reader.read(65536), EXPECTED) == b""
    except ConnectionError:
        return True


async def _nothing_arrives(reader: asyncio.StreamReader) -> bool:
    try:
        await asyncio.wait_for(reader.read(65536), NOTHING)
    except TimeoutError:
        return True
    return False


async def _until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), EXPECTED)


async def test_up_forwards_both_ways_byte_exact(echo: Echo) -> None:
    async with TcpProxy(HOST, echo.port) as proxy:
        assert proxy.mode == "up"
        reader, writer = await _connect(proxy.port)
        assert await _roundtrip(reader, writer, b"\x10\x00hello") == b"\x10\x00hello"
        payload = os.urandom(1024 * 1024)

        async def send() -> None:
            writer.write(payload)
            await writer.drain()

        _, received = await asyncio.gather(send(), asyncio.wait_for(reader.readexactly(len(payload)), EXPECTED))
        assert received == payload
        writer.write_eof()  # a half-close crosses the proxy and the echo's close comes back
        assert await _ended(reader)
        writer.close()
        total = len(payload) + 7
        assert (proxy.stats.connections, proxy.stats.bytes_up, proxy.stats.bytes_down) == (1, total, total)


async def test_down_refuses_and_resets_then_up_listens_on_the_same_port(echo: Echo) -> None:
    async with TcpProxy(HOST, echo.port) as proxy:
        port = proxy.port
        reader, writer = await _connect(port)
        assert await _roundtrip(reader, writer, b"ping") == b"ping"

        await proxy.set_mode("down")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), EXPECTED)
        writer.close()
        with pytest.raises(ConnectionRefusedError):
            await _connect(port)
        assert proxy.stats.cuts == 1

        await proxy.set_mode("up")
        assert proxy.port == port
        reader, writer = await _connect(port)
        assert await _roundtrip(reader, writer, b"again") == b"again"
        writer.close()


async def test_reset_cuts_every_connection_and_resets_new_ones_while_it_keeps_its_port(echo: Echo) -> None:
    async with TcpProxy(HOST, echo.port) as proxy:
        reader, writer = await _connect(proxy.port)
        assert await _roundtrip(reader, writer, b"ping") == b"ping"

        await proxy.set_mode("reset")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(100), EXPECTED)
        writer.close()
        reader, writer = await _connect(proxy.port)  # accepted: the port stays ours...
        assert await _ended(reader), "...and reset at once"
        writer.close()
        with socket.socket() as other:  # nothing else can take the port meanwhile
            with pytest.raises(OSError):
                other.bind((HOST, proxy.port))

        await proxy.set_mode("up")
        reader, writer = await _connect(proxy.port)
        assert await _roundtrip(reader, writer, b"again") == b"again"
        writer.close()
        assert proxy.stats.connections == 2, "the connection made while resetting was never forwarded"
        assert proxy.stats.reset_at_once == 1


async def test_blackhole_swallows_everything_and_up_drops_the_connections_it_held(echo: Echo) -> None:
    async with TcpProxy(HOST, echo.port) as proxy:
        old_reader, old_writer = await _connect(proxy.port)
        assert await _roundtrip(old_reader, old_writer, b"before") == b"before"

        await proxy.set_mode("blackhole")
        old_writer.write(b"lost")
        assert await _nothing_arrives(old_reader)
        await _until(lambda: proxy.stats.dropped_bytes == 4)

        # A new connection is accepted, but nothing reaches the target, not even the connection.
        new_reader, new_writer = await _connect(proxy.port)
        new_writer.write(b"void")
        assert await _nothing_arrives(new_reader)
        await _until(lambda: proxy.stats.dropped_bytes == 8)
        assert echo.connections == 1
        assert proxy.stats.bytes_up == 6

        await proxy.set_mode("up")
        assert await _ended(old_reader)
        assert await _ended(new_reader)
        assert proxy.stats.cuts == 2
        reader, writer = await _connect(proxy.port)
        assert await _roundtrip(reader, writer, b"after") == b"after"
        for w in (old_writer, new_writer, writer):
            w.close()


async def _flaky_run(target_port: int, seed: int) -> tuple[bytes, bytes, int]:
    """Ping-pong numbered chunks through a flaky proxy until it cuts; (sent, echoed, cuts)."""
    sent = bytearray()
    received = bytearray()
    async with TcpProxy(HOST, target_port, seed=seed, flaky_cut_probability=0.1, flaky_max_delay_s=0.005) as proxy:
        await proxy.set_mode("flaky")
        reader, writer = await _connect(proxy.port)
        try:
            for n in range(40):
                chunk = f"chunk {n:03d};".encode() * 4
                sent += chunk
                writer.write(chunk)
                await writer.drain()
                received += await asyncio.wait_for(reader.readexactly(len(chunk)), EXPECTED)
        except asyncio.IncompleteReadError as exc:
            received += exc.partial
        except ConnectionError:
            pass
        writer.close()
        return bytes(sent), bytes(received), proxy.stats.cuts


async def test_flaky_keeps_order_and_bytes_and_a_seed_repeats_its_decisions(echo: Echo) -> None:
    sent, received, cuts = await _flaky_run(echo.port, seed=0)
    assert cuts == 1
    assert 0 < len(received) < len(sent)
    assert received == sent[: len(received)]
    assert await _flaky_run(echo.port, seed=0) == (sent, received, cuts)


async def test_flaky_with_certain_cut_cuts_at_the_first_chunk(echo: Echo) -> None:
    async with TcpProxy(HOST, echo.port, seed=1, flaky_cut_probability=1.0) as proxy:
        await proxy.set_mode("flaky")
        reader, writer = await _connect(proxy.port)
        writer.write(b"first")
        assert await _ended(reader)
        writer.close()
        assert (proxy.stats.cuts, proxy.stats.bytes_up, proxy.stats.bytes_down) == (1, 0, 0)


async def test_flaky_without_cuts_delivers_everything_in_order(echo: Echo) -> None:
    async with TcpProxy(HOST, echo.port, seed=3, flaky_cut_probability=0.0, flaky_max_delay_s=0.05) as proxy:
        await proxy.set_mode("flaky")
        reader, writer = await _connect(proxy.port)
        payload = b"".join(f"{n:06d}|".encode() * 20 for n in range(300))

        async def send() -> None:
            for start in range(0, len(payload), 1400):
                writer.write(payload[start : start + 1400])
                await writer.drain()

        _, received = await asyncio.gather(send(), asyncio.wait_for(reader.readexactly(len(payload)), EXPECTED))
        assert received == payload
        writer.close()
        assert proxy.stats.cuts == 0


async def test_a_refusing_target_closes_the_client_at_once() -> None:
    async with TcpProxy(HOST, _free_port()) as proxy:
        reader, writer = await _connect(proxy.port)
        assert await _ended(reader)
        writer.close()
        assert proxy.stats.connections == 1


async def test_stop_leaves_no_task_behind(echo: Echo) -> None:
    proxy = TcpProxy(HOST, echo.port)
    await proxy.start()
    connections = [await _connect(proxy.port) for _ in range(3)]
    for reader, writer in connections:
        assert await _roundtrip(reader, writer, b"x") == b"x"
    await proxy.set_mode("flaky")
    await proxy.stop()
    for reader, writer in connections:
        assert await _ended(reader)
        writer.close()
    leftovers = [
        t for t in asyncio.all_tasks() if "TcpProxy" in getattr(t.get_coro(), "__qualname__", "") and not t.done()
    ]
    assert leftovers == []
    with pytest.raises(ConnectionRefusedError):
        await _connect(proxy.port)
