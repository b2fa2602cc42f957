"""Fixtures shared by the whole suite: a private mosquitto per test, one prompt cache per run, and a
throw-away PostgreSQL database on the local server (started if it is not running)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.broker import PrivateBroker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A private mosquitto on a free loopback port with its own configuration."""
    with PrivateBroker(tmp_path / "broker") as running:
        yield running


@pytest.fixture(scope="session")
def prompt_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Voice prompts rendered by espeak-ng once per test run, shared by every hub started."""
    return tmp_path_factory.mktemp("prompts")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh database on the local PostgreSQL server, dropped after the test."""
    from simulator.postgres import throwaway_database

    with throwaway_database() as url:
        yield url
