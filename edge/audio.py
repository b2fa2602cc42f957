"""Mandarin voice prompts: rendered once at start-up, played without waiting for disk or network.

Each prompt is a WAV file: a county-supplied one from `audio.prompts_dir/<name>.wav` if present,
otherwise rendered with espeak-ng (`-v cmn`) into the hub's cache once and reused on every start.
The WAV bytes are held in memory, so `say()` only queues them; a playback thread pipes them to
`aplay`. An urgent prompt (an alarm) interrupts whatever is playing. In simulation the `record`
player writes each playback to a JSON-lines file instead of a speaker.

A message the centre types (`render_message`, then `say_message`) is rendered with the same
espeak-ng voice, in memory, never cached (it may be personal). It is the least urgent thing the
hub says: every prompt queued after it still goes first, an urgent prompt interrupts it (it is
said again after), and an urgent prompt never drops it.
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
import unicodedata
from itertools import count
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


MESSAGE_PREFIX = "message:"  # the name of a centre's message: "message:<cmd_id>"
MESSAGE_MAX_CHARS = 200
_PROMPT, _MESSAGE, _CLOSE = 0, 1, 2  # the play queue's order: prompts, then messages, then the end


def is_message(name: str) -> bool:
    return name.startswith(MESSAGE_PREFIX)


def clean_message(text: str) -> str:
    """What the voice may say of a centre's text: line breaks, tabs and other spaces become one
    space; control and format characters (and any other non-printing ones) are removed; at most
    MESSAGE_MAX_CHARS characters."""
    kept = []
    for ch in text:
        category = unicodedata.category(ch)
        if ch in "\t\n\r\v\f" or category[0] == "Z":
            kept.append(" ")
        elif category[0] != "C":
            kept.append(ch)
    return " ".join("".join(kept).split())[:MESSAGE_MAX_CHARS].strip()


class _QueuedPlayer:
    """Plays one prompt at a time on its own thread; `play` never blocks the caller.

    Prompts go before centre messages (`is_message`), each kind in order. An urgent prompt drops
    the prompts still queued, interrupts what is playing, and goes first; messages are kept, and
    one it cut off is said again after it."""

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, str, bytes]] = queue.PriorityQueue()
        self._order = count()
        self._lock = threading.Lock()
        self._playing: tuple[str, bytes] | None = None
        self._thread = threading.Thread(target=self._loop, name="voice", daemon=True)
        self._thread.start()

    def _put(self, name: str, wav: bytes) -> None:
        self._queue.put((_MESSAGE if is_message(name) else _PROMPT, next(self._order), name, wav))

    def play(self, name: str, wav: bytes, urgent: bool) -> None:
        if not urgent:
            self._put(name, wav)
            return
        with self._lock:
            messages = [(n, w) for n, w in self._drain() if is_message(n)]
            playing = self._playing
            if self._interrupt() and playing is not None and is_message(playing[0]):
                messages.insert(0, playing)
            self._put(name, wav)
            for item in messages:
                self._put(*item)

    def _drain(self) -> list[tuple[str, bytes]]:
        drained = []
        try:
            while True:
                kind, order, name, wav = self._queue.get_nowait()
                if kind == _CLOSE:
                    self._queue.put((kind, order, name, wav))
                    break
                drained.append((name, wav))
        except queue.Empty:
            pass
        return drained

    def _loop(self) -> None:
        while True:
            kind, _, name, wav = self._queue.get()
            if kind == _CLOSE:
                return
            with self._lock:
                self._playing = (name, wav)
            try:
                self._render(name, wav)
            except Exception:
                log.exception("could not play prompt %s", name)
            finally:
                with self._lock:
                    self._playing = None

    def _render(self, name: str, wav: bytes) -> None:
        raise NotImplementedError

    def _interrupt(self) -> bool:
        """Stop the prompt that is playing now, if the player can; whether it did."""
        return False

    def close(self) -> None:
        self._queue.put((_CLOSE, next(self._order), "", b""))
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

    def _interrupt(self) -> bool:
        current = self._current
        if current is not None and current.poll() is None:
            current.terminate()
            return True
        return False


class RecordingPlayer(_QueuedPlayer):
    """Simulation: each playback becomes a line `{"prompt", "bytes", "mono_ns"}` in `path`."""

    def __init__(self, path: Path) -> None:
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__()

    def play(self, name: str, wav: bytes, urgent: bool) -> None:
        self._put(name, wav)  # record everything: nothing is being heard to interrupt

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


def _with_sizes(wav: bytes) -> bytes:
    """A WAV written to a pipe has placeholder sizes in its header: put the real ones in."""
    data_at = wav.find(b"data", 12)
    if data_at < 0:
        return wav
    header = bytearray(wav[: data_at + 8])
    header[4:8] = (len(wav) - 8).to_bytes(4, "little")
    header[data_at + 4 : data_at + 8] = (len(wav) - data_at - 8).to_bytes(4, "little")
    return bytes(header) + wav[data_at + 8 :]


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

    def render_message(self, text: str) -> bytes:
        """A centre's message as WAV bytes, rendered by espeak-ng in this voice (blocking: call it
        off the event loop). The text goes on standard input, so none of it is read as an option."""
        if shutil.which("espeak-ng") is None:
            raise RuntimeError("espeak-ng is not installed (sudo apt-get install espeak-ng)")
        done = subprocess.run(
            ["espeak-ng", "-v", self._voice, "--stdout", "--stdin"],
            input=text.encode(),
            check=True,
            capture_output=True,
            timeout=30,
        )
        if not _is_wav(done.stdout):
            raise RuntimeError(f"espeak-ng wrote no usable WAV (voice {self._voice!r})")
        return _with_sizes(done.stdout)

    def say_message(self, name: str, wav: bytes) -> None:
        """Queue a centre's message (`name` must start with MESSAGE_PREFIX): after every prompt."""
        if not is_message(name):
            raise ValueError(f"a centre's message is named {MESSAGE_PREFIX}…, not {name!r}")
        self._player.play(name, wav, False)

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
