"""`anju provision …` for scripts: PIN, household and devices change the file (checked whole,
written 0600); the walk test, test call and report go to a running hub through its control socket."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import tomli_w

from hub.api.security import verify_pin
from hub.cli import main
from hub.config import load_config
from hub.config_store import ConfigStore
from hub.installer import Installer
from hub.service import HubService
from simulator.broker import PrivateBroker
from simulator.centre import Centre


def _write(tmp_path: Path, broker: PrivateBroker | None = None, prompt_cache: Path | None = None) -> Path:
    config = {
        "hub_id": "hub-prov",
        "county": "minle",
        "household_id": "hh-prov",
        "data_dir": str(tmp_path / "hub"),
        "gpio": {"pin_factory": "mock"},
        "audio": {"player": "record", "cache_dir": str(prompt_cache or tmp_path / "prompts")},
        "devices": [{"id": "cord", "kind": "pullcord", "transport": "gpio", "pin": 17}],
    }
    if broker is not None:
        config["mqtt"] = {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5}
    path = tmp_path / "hub.toml"
    path.write_bytes(tomli_w.dumps(config).encode())
    return path


def test_a_new_pin_is_printed_once_and_stored_hashed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path)
    assert main(["provision", "pin", "--config", str(path)]) == 0
    pin = re.search(r"installer PIN: (\d+)", capsys.readouterr().out)
    assert pin is not None
    stored = load_config(path).api.pin_hash or ""
    assert verify_pin(pin.group(1), stored) and pin.group(1) not in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600


def test_household_and_devices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path)
    args = ["provision", "household", "--config", str(path), "--elder-name", "王秀英", "--waking", "06:30-21:30"]
    assert main([*args, "--contact", "李强:13900000002:儿子"]) == 0
    config = load_config(path)
    assert config.profile.elder_name == "王秀英" and config.profile.contacts[0].phone == "13900000002"
    assert config.rules.inactivity.waking == "06:30-21:30"

    add = ["provision", "device", "add", "--config", str(path), "--id", "smoke", "--kind", "smoke"]
    assert main([*add, "--transport", "gpio", "--pin", "18"]) == 0
    assert main([*add[:-4], "--id", "cord2", "--kind", "pullcord", "--transport", "gpio", "--pin", "18"]) == 2
    assert "both use pin 18" in capsys.readouterr().err
    assert main(["provision", "device", "remove", "--config", str(path), "--id", "cord"]) == 0
    assert main(["provision", "device", "remove", "--config", str(path), "--id", "nope"]) == 2
    capsys.readouterr()
    assert main(["provision", "device", "list", "--config", str(path)]) == 0
    assert [d["id"] for d in json.loads(capsys.readouterr().out)] == ["smoke"]


def test_a_bad_contact_says_how_to_write_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path)
    assert main(["provision", "household", "--config", str(path), "--contact", "李强"]) == 2
    assert "NAME:PHONE" in capsys.readouterr().err


def test_operations_on_the_hub_need_it_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["provision", "test-call", "--config", str(_write(tmp_path))]) == 1
    assert "no hub is running" in capsys.readouterr().err


@pytest.fixture
async def running_hub(tmp_path: Path, broker: PrivateBroker, prompt_cache: Path) -> AsyncIterator[Path]:
    path = _write(tmp_path, broker, prompt_cache)
    centre = Centre(broker.host, broker.port, tmp_path / "centre.sqlite3")
    installer = Installer(ConfigStore(path))
    service = HubService(load_config(path))
    installer.attach(service)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(centre.run()), asyncio.create_task(service.run(stop))]
    await asyncio.wait_for(service.ready.wait(), 20)
    await asyncio.wait_for(centre.connected.wait(), 10)
    yield path
    stop.set()
    await asyncio.wait(tasks[1:], timeout=15)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_walk_test_test_call_and_report_on_a_running_hub(
    running_hub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*args: str) -> dict[str, object]:
        assert main(["provision", *args, "--config", str(running_hub)]) == 0
        return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]

    assert (await asyncio.to_thread(run, "walk-test", "start"))["running"] is True
    call = await asyncio.to_thread(run, "test-call")
    assert call["paths"] == [{"path": "mqtt", "ok": True, "detail": "the centre acknowledged it"}]
    report = await asyncio.to_thread(run, "report", "--installer", "张师傅")
    assert report["passed"] is False  # the cord was never triggered in the walk test
    assert Path(str(report["pdf"])).read_bytes().startswith(b"%PDF")
    assert (await asyncio.to_thread(run, "walk-test", "stop"))["running"] is False
