"""Mandarin voice prompts: rendered once at start-up, played without waiting for disk or network.

Each prompt is a WAV file: a county-supplied one from `audio.prompts_dir/<name>.wav` if present,
otherwise rendered with espeak-ng (`-v cmn`) into the hub's cache once and reused on every start.
The WAV bytes are held in memory, so `say()` only queues them; a playback thread pipes them to
`aplay`. An urgent prompt (an alarm) interrupts whatever is playing. In simulation the `record`
player writes each playback to a JSON-lines file instead of a speaker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

PROMPTS: dict[str, str] = {
    "help_sent": "已发出求助信号，请保持冷静",
    "centre_received": "监控中心已收到",
    "smoke": "检测到烟雾，请立即离开房间",
    "fall_prompt": "检测到跌倒，如果您没事，请按按钮取消",
    "still_calling": "正在继续呼叫",
    "inactivity_prompt": "您好，请按按钮报平安",
    "checkin_greeting": "早上好，请按按钮报平安",
    "battery_low": "设备电量低，请联系工作人员更换电池",
    "test_ok": "测试成功",
    "answered": "好的，收到了",
}


class Player(Protocol):
    def play(self, name: str, wav: bytes, urgent: bool) -> None: ...

    def close(self) -> None: ...


class _QueuedPlayer:
    """Plays one prompt at a time on its own thread; `play` never blocks the caller."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="voice", daemon=True)
        self._thread.start()

    def play(self, name: str, wav: bytes, urgent: bool) -> None:
        if urgent:
            self._drain()
            self._interrupt()
        self._queue.put((name, wav))

    def _drain(self) -> None:
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._render(*item)
            except Exception:
                log.exception("could not play prompt %s", item[0])

    def _render(self, name: str, wav: bytes) -> None:
        raise NotImplementedError

    def _interrupt(self) -> None:
        """Stop the prompt that is playing now, if the player can."""

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)


class AplayPlayer(_QueuedPlayer):
    """ALSA playback through `aplay` (alsa-utils), the WAV piped on standard input."""

    def __init__(self, device: str | None = None) -> None:
        self._command = ["aplay", "-q", *(["-D", device] if device else []), "-"]
        self._current: subprocess.Popen[bytes] | None = None
        super().__init__()

    def _render(self, name: str, wav: bytes) -> None:
        self._current = subprocess.Popen(self._command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = self._current.communicate(wav)
        if self._current.returncode not in (0, -15):
            log.error("aplay failed for prompt %s: %s", name, err.decode(errors="replace").strip()[-300:])
        self._current = None

    def _interrupt(self) -> None:
        current = self._current
        if current is not None and current.poll() is None:
            current.terminate()


class RecordingPlayer(_QueuedPlayer):
    """Simulation: each playback becomes a line `{"prompt", "bytes", "mono_ns"}` in `path`."""

    def __init__(self, path: Path) -> None:
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__()

    def play(self, name: str, wav: bytes, urgent: bool) -> None:
        self._queue.put((name, wav))  # record everything, in order: nothing is being heard to interrupt

    def _render(self, name: str, wav: bytes) -> None:
        line = json.dumps({"prompt": name, "bytes": len(wav), "mono_ns": time.monotonic_ns()})
        with self._path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")


class SilentPlayer:
    def play(self, name: str, wav: bytes, urgent: bool) -> None:
        log.debug("prompt %s not played (audio.player = none)", name)

    def close(self) -> None:
        pass


def _is_wav(data: bytes) -> bool:
    """A RIFF/WAVE file with at least one sample after its 44-byte header."""
    return len(data) > 44 and data[:4] == b"RIFF" and data[8:12] == b"WAVE"


class VoicePrompts:
    def __init__(self, player: Player, cache_dir: Path, voice: str = "cmn", prompts_dir: Path | None = None):
        self._player = player
        self._cache_dir = cache_dir
        self._voice = voice
        self._prompts_dir = prompts_dir
        self._wavs: dict[str, bytes] = {}

    def prepare(self, texts: dict[str, str] = PROMPTS) -> list[str]:
        """Load or render every prompt. Returns the names that could not be prepared (and logs why)."""
        missing = []
        for name, text in texts.items():
            try:
                self._wavs[name] = self._load(name, text)
            except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
                missing.append(name)
                log.error("voice prompt %s unavailable: %s", name, exc)
        return missing

    def _load(self, name: str, text: str) -> bytes:
        if self._prompts_dir is not None:
            supplied = self._prompts_dir / f"{name}.wav"
            if supplied.is_file():
                return supplied.read_bytes()
        key = hashlib.sha256(f"{self._voice}\0{text}".encode()).hexdigest()[:16]
        cached = self._cache_dir / f"{name}-{key}.wav"
        if cached.is_file():
            wav = cached.read_bytes()
            if _is_wav(wav):
                return wav
            log.warning("cached prompt %s is damaged; rendering it again", cached)
        if shutil.which("espeak-ng") is None:
            raise RuntimeError("espeak-ng is not installed (sudo apt-get install espeak-ng)")
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".partial")
        subprocess.run(
            ["espeak-ng", "-v", self._voice, "-w", str(partial), text], check=True, capture_output=True, timeout=30
        )
        wav = partial.read_bytes()
        if not _is_wav(wav):
            raise RuntimeError(f"espeak-ng wrote no usable WAV for {name!r} (voice {self._voice!r})")
        with partial.open("rb") as written:
            os.fsync(written.fileno())  # a power cut must not leave a truncated prompt behind the new name
        partial.replace(cached)
        return wav

    def say(self, name: str, urgent: bool = False) -> bool:
        """Queue prompt `name`; returns False (and logs) when it was never prepared."""
        wav = self._wavs.get(name)
        if wav is None:
            log.error("voice prompt %s was not prepared; nothing spoken", name)
            return False
        self._player.play(name, wav, urgent)
        return True

    def close(self) -> None:
        self._player.close()
