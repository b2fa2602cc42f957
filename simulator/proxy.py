"""A TCP proxy that injects network faults between the hub and what it talks to.

The scenario runner puts one between the hub and its MQTT broker, and one between the hub and the
SIA DC-09 receiver, then switches its mode: "up" forwards; "down" is a link that is gone (open
connections reset, new ones refused); "reset" is the same seen from a listener that stays open
(each new connection is accepted and reset at once, so no other socket can take the port while
the link is gone: `anju fleet` cuts thousands of connections at once and needs that);
"blackhole" silently swallows every byte; and "flaky" delays each chunk and now and then cuts a
connection. This module owns the listening socket, every proxied connection and the fault
decisions; it knows nothing of MQTT or SIA.

Written by hand on asyncio streams: no library proxies TCP with switchable faults like this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import struct
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, get_args

log = logging.getLogger(__name__)

ProxyMode = Literal["up", "down", "reset", "blackhole", "flaky"]

_CHUNK = 64 * 1024


@dataclass
class ProxyStats:
    connections: int = 0  # client connections accepted
    bytes_up: int = 0  # forwarded client -> target
    bytes_down: int = 0  # forwarded target -> client
    cuts: int = 0  # connections the proxy cut: a flaky cut, "down", or leaving the black hole
    dropped_bytes: int = 0  # bytes swallowed by the black hole
    reset_at_once: int = 0  # connections accepted and reset at once ("reset")


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's side, the target's side once connected, and its task."""

    client: asyncio.StreamWriter
    task: asyncio.Task[None] | None
    target: asyncio.StreamWriter | None = None
    aborted: bool = False

    def abort(self) -> None:
        """Reset both sides at once (RST, not FIN: SO_LINGER 0 before the close)."""
        self.aborted = True
        for writer in (self.client, self.target):
            if writer is not None:
                with contextlib.suppress(OSError):
                    sock = writer.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()

    def close(self) -> None:
        for writer in (self.client, self.target):
            if writer is not None:
                writer.close()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    # asyncio already sets this on TCP sockets; set it here too so "promptly" does not rest on that.
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class TcpProxy:
    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        seed: int | None = None,
        flaky_cut_probability: float = 0.02,
        flaky_max_delay_s: float = 0.2,
    ) -> None:
        self._target = (target_host, target_port)
        self._listen_host = listen_host
        self._port = listen_port  # 0 until the first listen picks one; fixed from then on
        self._rng = random.Random(seed)
        self._cut_probability = flaky_cut_probability
        self._max_delay = flaky_max_delay_s
        self._mode: ProxyMode = "up"
        self._started = False
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self.stats = ProxyStats()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the proxy has no port until start()")
        return self._port

    @property
    def mode(self) -> ProxyMode:
        return self._mode

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self._listen()
        if self._mode == "down":  # set before start(): the port is fixed, but nothing listens on it
            await self._go_dark(count_as_cuts=False)

    async def stop(self) -> None:
        self._started = False
        await self._go_dark(count_as_cuts=False)

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def set_mode(self, mode: ProxyMode) -> None:
        if mode not in get_args(ProxyMode):
            raise ValueError(f"unknown proxy mode {mode!r}")
        previous, self._mode = self._mode, mode
        if mode == previous:
            return
        log.debug("proxy :%s %s -> %s", self._port, previous, mode)
        if mode == "down":
            await self._go_dark(count_as_cuts=True)
        elif mode == "reset" or previous == "blackhole":
            # "reset": every open connection is cut. Leaving the black hole: every connection open
            # now lived through it, its streams may have lost bytes, so it cannot be resumed.
            await self._abort_all(count_as_cuts=True)
        if previous == "down" and self._started:
            await self._listen()

    async def _listen(self) -> None:
        # reuse_address: "up" after "down" binds the same port again despite TIME_WAIT leftovers.
        self._server = await asyncio.start_server(self._handle, self._listen_host, self._port, reuse_address=True)
        if not self._port:
            self._port = int(self._server.sockets[0].getsockname()[1])

    async def _go_dark(self, *, count_as_cuts: bool) -> None:
        """Stop listening (new connections are refused) and abort every open connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        await self._abort_all(count_as_cuts=count_as_cuts)
        if server is not None:
            await server.wait_closed()  # since 3.12 this waits for the connections too: abort them first

    async def _abort_all(self, *, count_as_cuts: bool) -> None:
        links = list(self._links)
        for link in links:
            if count_as_cuts and not link.aborted:
                self.stats.cuts += 1
            link.abort()
            if link.task is not None:
                link.task.cancel()
        await asyncio.gather(*(link.task for link in links if link.task is not None), return_exceptions=True)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        link = _Link(client_writer, asyncio.current_task())
        if self._mode in ("down", "reset") or not self._started:  # "down": accepted as the listener closed
            self.stats.reset_at_once += self._mode == "reset"
            link.abort()
            return
        self._links.add(link)
        self.stats.connections += 1
        try:
            await self._relay(link, client_reader)
        except asyncio.CancelledError:
            # Cancelled by the proxy itself (_abort_all), which waits for it: end quietly. Python
            # 3.11's start_server reports a handler task that ends cancelled as an error.
            link.abort()
        except Exception as exc:  # a connection handler never raises
            log.debug("proxy :%s connection failed: %r", self._port, exc)
            link.abort()
        finally:
            self._links.discard(link)
            link.close()  # both sides ended: close what an abort has not already closed

    async def _relay(self, link: _Link, client_reader: asyncio.StreamReader) -> None:
        _nodelay(link.client)
        if self._mode == "blackhole":
            # Nothing reaches the target from inside a black hole, not even the connection.
            await self._pump(client_reader, None, link, upstream=True)
            return
        try:
            target_reader, link.target = await asyncio.open_connection(*self._target)
        except OSError as exc:
            log.debug("proxy :%s target %s:%s unreachable: %r", self._port, *self._target, exc)
            return  # the client's connection is closed at once
        _nodelay(link.target)
        await asyncio.gather(
            self._pump(client_reader, link.target, link, upstream=True),
            self._pump(target_reader, link.client, link, upstream=False),
        )

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter | None, link: _Link, *, upstream: bool
    ) -> None:
        """Carry one direction until its end; an EOF becomes a half-close, a reset resets both sides."""
        reset = False
        try:
            while data := await src.read(_CHUNK):
                if not await self._forward(data, dst, link, upstream=upstream):
                    return
        except Exception as exc:
            log.debug("proxy :%s %s side ended: %r", self._port, "client" if upstream else "target", exc)
            reset = True
        if link.aborted:
            return
        if self._mode == "blackhole" or dst is None:
            # A black hole passes on no FIN or RST either; leaving it aborts this link.
            await asyncio.get_running_loop().create_future()
        if reset:
            link.abort()
        elif dst is not None and not dst.is_closing() and dst.can_write_eof():
            dst.write_eof()

    async def _forward(self, data: bytes, dst: asyncio.StreamWriter | None, link: _Link, *, upstream: bool) -> bool:
        """Pass one chunk on as the mode says; False once the link is cut."""
        if self._mode == "flaky":
            if self._rng.random() < self._cut_probability:
                log.debug("proxy :%s flaky cut", self._port)
                self.stats.cuts += 1
                link.abort()
                return False
            # Holding the chunk here, before the next read, keeps each direction in order.
            await asyncio.sleep(self._rng.uniform(0.0, self._max_delay))
            if link.aborted:
                return False
        if self._mode == "blackhole" or dst is None:
            self.stats.dropped_bytes += len(data)
            return True
        dst.write(data)
        if upstream:
            self.stats.bytes_up += len(data)
        else:
            self.stats.bytes_down += len(data)
        await dst.drain()
        return True
