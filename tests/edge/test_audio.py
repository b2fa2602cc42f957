"""Voice prompts: rendered once with the real espeak-ng, reused from the cache, played through aplay.

There is no sound card here; ALSA's `null` device plays (and discards) the audio through the real
aplay binary.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge.audio import PROMPTS, AplayPlayer, RecordingPlayer, VoicePrompts

pytestmark = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("aplay") is None,
    reason="needs espeak-ng and aplay (alsa-utils)",
)


class MemoryPlayer:
    """A player that only remembers what it was asked to play."""

    def __init__(self) -> None:
        self.played: list[tuple[str, bytes, bool]] = []
        self.closed = False

    def play(self, name: str, wav: bytes, urgent: bool) -> None:
        self.played.append((name, wav, urgent))

    def close(self) -> None:
        self.closed = True


def _is_wav(data: bytes) -> bool:
    return len(data) > 44 and data[:4] == b"RIFF" and data[8:12] == b"WAVE"


def _cached(cache: Path, name: str) -> list[Path]:
    return sorted(cache.glob(f"{name}-*.wav"))


@pytest.fixture
def no_espeak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH is an empty directory: espeak-ng (and every other program) cannot be found."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture(scope="module")
def rendered_wav(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """One prompt rendered by espeak-ng, for the playback tests."""
    cache = tmp_path_factory.mktemp("voice-cache")
    prompts = VoicePrompts(MemoryPlayer(), cache)
    assert prompts.prepare({"test_ok": PROMPTS["test_ok"]}) == []
    (wav,) = _cached(cache, "test_ok")
    return wav.read_bytes()


# --- VoicePrompts -------------------------------------------------------------------------------


def test_prepare_renders_every_prompt_to_a_wav_in_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"  # does not exist yet
    player = MemoryPlayer()
    prompts = VoicePrompts(player, cache)

    assert prompts.prepare() == []

    for name in PROMPTS:
        files = _cached(cache, name)
        assert len(files) == 1, f"one cached WAV for {name}"
        assert _is_wav(files[0].read_bytes()), f"{files[0].name} is not a RIFF/WAVE file"
    assert not list(cache.glob("*.partial")), "no half-written renders are left behind"

    for name in PROMPTS:
        assert prompts.say(name)
    assert [(name, wav) for name, wav, _ in player.played] == [
        (name, _cached(cache, name)[0].read_bytes()) for name in PROMPTS
    ]


def test_a_second_start_reuses_the_cache_without_espeak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    assert VoicePrompts(MemoryPlayer(), cache).prepare() == []
    stamps = {path.name: path.stat().st_mtime_ns for path in cache.iterdir()}
    assert len(stamps) == len(PROMPTS)

    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # espeak-ng can no longer be found
    player = MemoryPlayer()
    again = VoicePrompts(player, cache)

    assert again.prepare() == []
    assert {path.name: path.stat().st_mtime_ns for path in cache.iterdir()} == stamps
    assert again.say("help_sent", urgent=True)
    assert player.played == [("help_sent", _cached(cache, "help_sent")[0].read_bytes(), True)]


def test_a_county_supplied_prompt_wins_over_espeak(tmp_path: Path) -> None:
    supplied_dir = tmp_path / "prompts"
    supplied_dir.mkdir()
    supplied = b"RIFF\x24\x00\x00\x00WAVE" + b"county recording of help_sent" * 4
    (supplied_dir / "help_sent.wav").write_bytes(supplied)
    cache = tmp_path / "cache"
    player = MemoryPlayer()
    prompts = VoicePrompts(player, cache, prompts_dir=supplied_dir)

    assert prompts.prepare() == []
    assert prompts.say("help_sent")
    assert prompts.say("smoke")

    assert player.played[0] == ("help_sent", supplied, False)
    assert _cached(cache, "help_sent") == [], "espeak-ng was not asked for a prompt the county supplied"
    assert player.played[1][1] == _cached(cache, "smoke")[0].read_bytes(), "the others still come from espeak-ng"


def test_without_espeak_and_cache_every_prompt_is_missing_and_say_reports_it(
    tmp_path: Path, no_espeak: None, caplog: pytest.LogCaptureFixture
) -> None:
    player = MemoryPlayer()
    prompts = VoicePrompts(player, tmp_path / "cache")

    with caplog.at_level(logging.ERROR, logger="edge.audio"):
        missing = prompts.prepare()

    assert missing == list(PROMPTS)
    assert "espeak-ng is not installed" in caplog.text
    for name in PROMPTS:
        assert prompts.say(name, urgent=True) is False
    assert player.played == []


# --- RecordingPlayer ----------------------------------------------------------------------------


def test_recording_player_writes_one_line_per_prompt_in_order(tmp_path: Path) -> None:
    path = tmp_path / "sim" / "voice.jsonl"  # the folder is created by the player
    player = RecordingPlayer(path)
    plays = [("help_sent", b"x" * 10, True), ("still_calling", b"y" * 7, False), ("centre_received", b"z" * 3, True)]
    for name, wav, urgent in plays:
        player.play(name, wav, urgent)
    player.close()

    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [(line["prompt"], line["bytes"]) for line in lines] == [(name, len(wav)) for name, wav, _ in plays]
    stamps = [line["mono_ns"] for line in lines]
    assert stamps == sorted(stamps)


def test_voice_prompts_through_the_recording_player(tmp_path: Path) -> None:
    path = tmp_path / "voice.jsonl"
    cache = tmp_path / "cache"
    prompts = VoicePrompts(RecordingPlayer(path), cache)
    assert prompts.prepare() == []

    assert prompts.say("help_sent", urgent=True)
    assert prompts.say("centre_received")
    prompts.close()

    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [(line["prompt"], line["bytes"]) for line in lines] == [
        (name, _cached(cache, name)[0].stat().st_size) for name in ("help_sent", "centre_received")
    ]


# --- AplayPlayer --------------------------------------------------------------------------------


class _SpyPopen(subprocess.Popen):  # type: ignore[type-arg]
    started: list[_SpyPopen]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _SpyPopen.started.append(self)


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> list[subprocess.Popen[bytes]]:
    """Every process the code under test starts, still really started."""
    _SpyPopen.started = []
    monkeypatch.setattr(subprocess, "Popen", _SpyPopen)
    return _SpyPopen.started  # type: ignore[return-value]


def test_aplay_plays_a_prompt_on_the_null_device(rendered_wav: bytes, spawned, caplog) -> None:
    player = AplayPlayer(device="null")
    with caplog.at_level(logging.DEBUG, logger="edge.audio"):
        player.play("test_ok", rendered_wav, urgent=False)
        player.close()

    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
    assert len(spawned) == 1
    assert spawned[0].args[:1] == ["aplay"] and "null" in spawned[0].args
    assert spawned[0].returncode == 0, "the real aplay played the whole prompt"


def test_aplay_on_a_bogus_device_logs_the_prompt_and_keeps_going(rendered_wav: bytes, spawned, caplog) -> None:
    player = AplayPlayer(device="anju_no_such_pcm")
    with caplog.at_level(logging.ERROR, logger="edge.audio"):
        player.play("help_sent", rendered_wav, urgent=True)  # never raises to the caller
        player.play("centre_received", rendered_wav, urgent=False)
        player.close()

    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 2, errors
    assert "help_sent" in errors[0] and "centre_received" in errors[1]
    assert all("aplay failed" in message for message in errors)
    assert len(spawned) == 2, "the player thread survived the first failure"


def test_aplay_missing_logs_the_prompt_and_keeps_going(rendered_wav: bytes, no_espeak: None, caplog) -> None:
    player = AplayPlayer(device="null")  # PATH is empty: aplay cannot even be started
    with caplog.at_level(logging.ERROR, logger="edge.audio"):
        player.play("help_sent", rendered_wav, urgent=True)
        player.play("smoke", rendered_wav, urgent=False)
        player.close()

    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 2, errors
    assert "help_sent" in errors[0] and "smoke" in errors[1]


def test_a_damaged_cached_prompt_is_rendered_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert VoicePrompts(MemoryPlayer(), cache).prepare() == []
    (damaged,) = _cached(cache, "help_sent")
    damaged.write_bytes(b"RIFF")  # what a power cut during the first render could leave
    player = MemoryPlayer()
    again = VoicePrompts(player, cache)
    assert again.prepare() == []
    assert _is_wav(damaged.read_bytes()) and len(damaged.read_bytes()) > 1000
    assert again.say("help_sent")
