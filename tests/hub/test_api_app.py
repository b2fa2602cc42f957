"""The installer web app's pages and JSON API, in-process (FastAPI's TestClient), on a real
configuration file: login, lockout, expired sessions, CSRF, malformed fields, household and device
changes written to the file. The whole visit in a real browser is tests/e2e/test_installer_browser.py.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from hub.api.app import SESSION_COOKIE, create_app
from hub.api.security import hash_pin
from hub.config import ApiConfig, load_config
from hub.config_store import ConfigStore
from hub.installer import Installer

PIN = "20261129"
LAN = ("192.168.1.23", 50000)
BASE = "http://192.168.1.10:8080"  # the hub, by address


@pytest.fixture(scope="module")
def pin_hash() -> str:
    return hash_pin(PIN)


@pytest.fixture
def config_path(tmp_path: Path, pin_hash: str) -> Path:
    path = tmp_path / "hub.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            hub_id = "hub-0001"
            county = "minle"
            household_id = "hh-0001"
            data_dir = "data"

            [api]
            enabled = true
            pin_hash = "{pin_hash}"

            [[devices]]
            id = "cord-bath"
            kind = "pullcord"
            transport = "gpio"
            pin = 17
            """
        )
    )
    return path


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(config_path: Path, clock: Clock) -> TestClient:
    installer = Installer(ConfigStore(config_path))
    return TestClient(create_app(installer, ApiConfig(session_minutes=30), clock=clock), base_url=BASE, client=LAN)


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "every form carries a CSRF token"
    return match.group(1)


def _login(client: TestClient, pin: str = PIN) -> object:
    page = client.get("/login")
    return client.post("/login", data={"pin": pin, "csrf": _csrf(page.text), "next": "/household"})


def test_the_right_pin_opens_the_household_page(client: TestClient) -> None:
    response = _login(client)
    assert response.status_code == 200 and "住户" in response.text  # type: ignore[attr-defined]
    assert client.cookies.get(SESSION_COOKIE)


def test_a_wrong_pin_says_how_many_tries_are_left_then_locks(client: TestClient) -> None:
    first = _login(client, "0000")
    assert first.status_code == 401 and "还可以试 4 次" in first.text  # type: ignore[attr-defined]
    for _ in range(4):
        last = _login(client, "0000")
    assert last.status_code == 429 and "分钟后再试" in last.text  # type: ignore[attr-defined]
    locked = _login(client)  # even the right PIN waits out the lock
    assert locked.status_code == 429  # type: ignore[attr-defined]
    assert "Traceback" not in locked.text  # type: ignore[attr-defined]


def test_an_expired_session_goes_back_to_the_login_page_and_says_why(client: TestClient, clock: Clock) -> None:
    _login(client)
    clock.now += 31 * 60
    response = client.get("/devices")
    assert response.url.path == "/login" and "登录已过期" in response.text


def test_a_form_without_its_csrf_token_gets_a_clear_page(client: TestClient, config_path: Path) -> None:
    _login(client)
    response = client.post("/household", data={"elder_name": "王秀英"})
    assert response.status_code == 403 and "表单已过期" in response.text
    assert load_config(config_path).profile.elder_name == ""  # nothing written


def test_a_malformed_field_names_it_and_writes_nothing(client: TestClient, config_path: Path) -> None:
    page = _login(client)
    csrf = _csrf(page.text)  # type: ignore[attr-defined]
    response = client.post("/household", data={"csrf": csrf, "elder_name": "王秀英", "phone": "call me"})
    assert response.status_code == 422 and "phone" in response.text and "Traceback" not in response.text
    assert load_config(config_path).profile.elder_name == ""


def test_the_household_form_is_written_to_the_configuration(client: TestClient, config_path: Path) -> None:
    csrf = _csrf(_login(client).text)  # type: ignore[attr-defined]
    response = client.post(
        "/household",
        data={
            "csrf": csrf,
            "elder_name": "王秀英",
            "address": "民乐县 幸福路 8 号",
            "phone": "+8613800000001",
            "waking_from": "06:30",
            "waking_to": "21:30",
            "contact_name_0": "李强",
            "contact_phone_0": "13900000002",
            "contact_relation_0": "儿子",
            "reminder_at_0": "08:00",
            "reminder_text_0": "吃降压药",
        },
    )
    assert response.status_code == 200 and "已保存" in response.text
    config = load_config(config_path)
    assert config.profile.elder_name == "王秀英" and config.profile.contacts[0].relation == "儿子"
    assert config.rules.inactivity.waking == "06:30-21:30"
    assert config.rules.reminders[0].text == "吃降压药"
    assert config_path.stat().st_mode & 0o777 == 0o600


def test_the_json_api_needs_the_csrf_header_for_changes(client: TestClient, config_path: Path) -> None:
    _login(client)
    token = client.get("/api/session").json()["csrf"]
    device = {"id": "cord-bed", "kind": "pullcord", "transport": "gpio", "pin": 18, "room": "卧室"}
    assert client.post("/api/devices", json=device).status_code == 403
    created = client.post("/api/devices", json=device, headers={"X-CSRF-Token": token})
    assert created.status_code == 201 and {d["id"] for d in created.json()} == {"cord-bath", "cord-bed"}
    clash = client.post("/api/devices", json={**device, "id": "cord-x"}, headers={"X-CSRF-Token": token})
    assert clash.status_code == 422 and "both use pin 18" in str(clash.json()["problems"])
    assert [d.id for d in load_config(config_path).devices] == ["cord-bath", "cord-bed"]


def test_clients_outside_the_home_network_are_refused(config_path: Path) -> None:
    installer = Installer(ConfigStore(config_path))
    outsider = TestClient(create_app(installer, ApiConfig()), base_url=BASE, client=("203.0.113.9", 40000))
    assert outsider.get("/login").status_code == 403


def test_the_api_without_a_session_says_so_in_json(client: TestClient) -> None:
    response = client.get("/api/devices")
    assert response.status_code == 401 and response.json()["error"] == "expired"


def test_english_switch(client: TestClient) -> None:
    client.cookies.set("anju_lang", "en")
    assert "Installer PIN" in client.get("/login").text


def test_a_huge_body_is_refused_before_it_is_read(client: TestClient) -> None:
    response = client.post(
        "/login", content=b"pin=" + b"1" * 200_000, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 413


def test_the_language_switch_never_leaves_the_hub(client: TestClient) -> None:
    away = client.get(
        "/lang/en", headers={"Referer": "http://evil.example//evil.example/phish"}, follow_redirects=False
    )
    assert away.headers["location"] == "/household"
    back = client.get("/lang/en", headers={"Referer": f"{BASE}/devices"}, follow_redirects=False)
    assert back.headers["location"] == "/devices"


def test_saving_the_household_keeps_what_the_form_does_not_show(client: TestClient, config_path: Path) -> None:
    store = ConfigStore(config_path)

    def four_of_each(raw: dict[str, object]) -> None:
        raw["profile"] = {"contacts": [{"name": f"联系人{i}", "phone": f"1390000000{i}"} for i in range(4)]}
        raw["rules"] = {
            "reminders": [
                {"id": f"pills-{i}", "at": f"1{i}:00", "text": "吃药" * 50, "answer_min": 30} for i in range(4)
            ]
        }

    store.update(four_of_each)
    page = _login(client)
    form = dict(re.findall(r'name="([a-z_0-9]+)"[^>]*value="([^"]*)"', page.text))  # type: ignore[attr-defined]
    response = client.post("/household", data=form)
    assert response.status_code == 200, response.text
    config = load_config(config_path)
    assert len(config.profile.contacts) == 4
    assert [(r.id, r.answer_min) for r in config.rules.reminders] == [(f"pills-{i}", 30) for i in range(4)]


def test_a_config_write_that_fails_changes_nothing(
    client: TestClient, config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    before = config_path.read_bytes()

    def disk_full(fd: int) -> None:  # the disk fills as the new file is flushed
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("hub.files.os.fsync", disk_full)
    csrf = _csrf(_login(client).text)  # type: ignore[attr-defined]
    response = client.post("/household", data={"csrf": csrf, "elder_name": "王秀英"})
    assert response.status_code == 422 and "nothing was changed" in response.text
    assert config_path.read_bytes() == before
    assert not list(config_path.parent.glob(".*.tmp"))


async def test_a_busy_port_leaves_the_hub_running(config_path: Path, pin_hash: str) -> None:
    import socket

    from hub.api.server import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        installer = Installer(ConfigStore(config_path))
        await asyncio.wait_for(serve(installer, ApiConfig(host="127.0.0.1", port=port, pin_hash=pin_hash)), 10)


def test_a_host_name_instead_of_the_hub_address_is_refused(config_path: Path) -> None:
    """DNS rebinding: a page on the phone that resolves its own name to the hub's address."""
    installer = Installer(ConfigStore(config_path))
    rebound = TestClient(create_app(installer, ApiConfig()), base_url="http://evil.example", client=LAN)
    assert rebound.get("/login").status_code == 421
