"""A private mosquitto broker on a free loopback port, with its own configuration, for scenarios,
tests and benchmarks. It can be stopped and started again on the same port, so "the broker really
goes away" is the real thing: the process ends and its socket closes.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BrokerError(RuntimeError):
    pass


class PrivateBroker:
    def __init__(self, workdir: Path, port: int | None = None, extra_config: str = "") -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._extra = extra_config
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "mosquitto.log"

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            "# written by simulator.broker: a private broker for one scenario or test\n"
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "max_queued_messages 100000\n"
            "set_tcp_nodelay true\n"
            f"{self._extra}\n"
        )
        return conf

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            raise BrokerError("mosquitto is not installed: run `make setup` (or sudo apt-get install mosquitto)")
        conf = self._write_config()
        self._process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode() if self._process.stderr else ""
                log = self.log_path.read_text() if self.log_path.exists() else ""
                raise BrokerError(f"mosquitto exited at start on port {self.port}: {err or log}".strip())
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout} s")

    def stop(self, kill: bool = False) -> None:
        """Stop mosquitto: SIGTERM (a clean shutdown), or with `kill` SIGKILL (a crash)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.kill() if kill else process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> PrivateBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
