"""A small stand-in for systemd supervising one `Type=notify` service, for tests: the notify
socket, `NotifyAccess=main`, `WatchdogSec=`, `Restart=always` with `RestartSec=`.

It binds an AF_UNIX datagram socket, starts the service with $NOTIFY_SOCKET and $WATCHDOG_USEC
set (and $JOURNAL_STREAM naming its stdout and stderr, the log file, as systemd names its stream),
and reads the sd_notify datagrams with the sender's credentials (SO_PASSCRED), keeping only
those from the main process as systemd does with `NotifyAccess=main`. When no WATCHDOG=1 has
come within the watchdog time it does what systemd does: sends SIGABRT (`WatchdogSignal=`),
waits `abort_timeout_s` (`TimeoutAbortSec=`), sends SIGKILL, and starts the service again after
`restart_s`. A service that exits by itself is started again too.

Everything happens while a caller waits (`wait_for`), on the socket with deadlines: no threads.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Happening:
    at: float  # time.monotonic()
    pid: int
    what: str  # a notify message ("READY=1", "WATCHDOG=1", "STATUS=…") or the supervisor's own action


@dataclass
class FakeSystemd:
    argv: Sequence[str]
    workdir: Path
    watchdog_s: float
    env: dict[str, str] = field(default_factory=dict)
    restart_s: float = 0.1
    abort_timeout_s: float = 5.0
    history: list[Happening] = field(default_factory=list)
    restarts: int = 0
    exits: list[int] = field(default_factory=list)  # each main process's return code (-6: SIGABRT)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.notify_path = self.workdir / "notify.sock"
        self.log_path = self.workdir / "service.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._last_ping = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        if self._sock is None:
            self.notify_path.unlink(missing_ok=True)
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self._sock.bind(str(self.notify_path))
        env = {
            **os.environ,
            **self.env,
            "NOTIFY_SOCKET": str(self.notify_path),
            "WATCHDOG_USEC": str(int(self.watchdog_s * 1_000_000)),
        }
        with self.log_path.open("ab") as log:
            stat = os.fstat(log.fileno())  # stdout and stderr go to the log, as to journald's stream
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
            self.process = subprocess.Popen(
                list(self.argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        self._last_ping = time.monotonic()  # systemd starts the watchdog clock when it starts the service
        self._note(f"started {self.process.pid}")

    def wait_for(self, message: str, timeout: float, already: bool = False) -> Happening:
        """Supervise until the main process sends a datagram containing the line `message`
        (e.g. "READY=1"); with `already`, one the current process sent before counts too.
        Raise TimeoutError after `timeout` seconds."""
        assert self._sock is not None and self.process is not None, "start() first"
        if already:
            for happening in self.history:
                if happening.pid == self.process.pid and happening.what == message:
                    return happening
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"no {message} within {timeout} s; see {self.log_path}")
            if self.process.poll() is not None:
                self._exited("exited by itself")
                continue
            watchdog_due = self._last_ping + self.watchdog_s
            if now >= watchdog_due:
                self._watchdog_timeout()
                continue
            self._sock.settimeout(max(0.001, min(deadline, watchdog_due) - now))
            try:
                data, ancillary, _flags, _addr = self._sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except TimeoutError:
                continue
            sender = _sender_pid(ancillary)
            if sender != self.process.pid:  # NotifyAccess=main
                self._note(f"ignored a message from pid {sender}")
                continue
            found: Happening | None = None
            for line in data.decode(errors="replace").splitlines():
                happening = Happening(time.monotonic(), sender, line)
                self.history.append(happening)
                if line == "WATCHDOG=1":
                    self._last_ping = happening.at
                if line == message and found is None:
                    found = happening
            if found is not None:
                return found

    def messages(self, prefix: str) -> list[Happening]:
        return [h for h in self.history if h.what.startswith(prefix)]

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, as `systemctl stop` does (SIGKILL after `timeout`); the return code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._drain()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        return self.process.returncode

    def _watchdog_timeout(self) -> None:
        assert self.process is not None
        self._note(f"watchdog timeout: no WATCHDOG=1 for {self.watchdog_s:g} s; SIGABRT")
        self.process.send_signal(signal.SIGABRT)
        try:
            self.process.wait(self.abort_timeout_s)
        except subprocess.TimeoutExpired:
            self._note("still there after SIGABRT; SIGKILL")
            self.process.kill()
            self.process.wait()
        self._exited("killed by the watchdog")

    def _exited(self, how: str) -> None:
        assert self.process is not None
        self._drain()
        self.exits.append(self.process.returncode)
        self._note(f"{how} (return code {self.process.returncode}); restarting in {self.restart_s:g} s")
        time.sleep(self.restart_s)  # RestartSec=: a fixed pause, not a wait for luck
        self.restarts += 1
        self.start()

    def _drain(self) -> None:
        """Read what is left on the socket (messages sent just before an exit)."""
        if self._sock is None:
            return
        self._sock.setblocking(False)
        try:
            while True:
                data, ancillary, _flags, _addr = self._sock.recvmsg(4096, socket.CMSG_SPACE(12))
                pid = _sender_pid(ancillary)
                self.history += [Happening(time.monotonic(), pid, line) for line in data.decode().splitlines()]
        except BlockingIOError:
            pass
        finally:
            self._sock.setblocking(True)

    def _note(self, what: str) -> None:
        self.history.append(Happening(time.monotonic(), 0, f"supervisor: {what}"))


def _sender_pid(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _uid, _gid = struct.unpack("3i", data[:12])
            return int(pid)
    return 0
