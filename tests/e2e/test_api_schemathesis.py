"""Schemathesis against the installer REST API of a live hub (a real uvicorn on a loopback port,
with its broker, centre and simulated radios): generated requests to every operation, logged in;
no 5xx, every status documented, every body matching the OpenAPI schema.

The server-sent events stream (/api/walk-test/events) is left out: it never ends by design; so are
the three changes that restart the hub service (see below).
One check is off, with its reason below: devices' cross-field rules are not in the schema.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from simulator.runner import ScenarioRunner
from simulator.scenario import Scenario

PIN = "31415926"
SCENARIO = f"""
name: api-fuzz
household: {{id: hh-0077, county: minle}}
api: {{pin: "{PIN}"}}
devices:
  - {{id: cord-bath, kind: pullcord, transport: gpio, pin: 17}}
"""


@pytest.fixture(scope="module")
def live_hub(tmp_path_factory: pytest.TempPathFactory, prompt_cache: Path) -> Iterator[str]:
    """The runner's processes, driven from an event loop of its own (schemathesis calls are blocking)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    scenario = Scenario.model_validate(yaml.safe_load(SCENARIO))
    runner = ScenarioRunner(scenario, tmp_path_factory.mktemp("api") / "run", prompt_cache)
    try:
        asyncio.run_coroutine_threadsafe(runner.start(), loop).result(120)
        yield f"http://127.0.0.1:{runner.api_port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.stop(), loop).result(120)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture(scope="module")
def logged_in(live_hub: str) -> dict[str, str]:
    with httpx.Client(base_url=live_hub) as client:
        page = client.get("/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf
        client.post("/login", data={"pin": PIN, "csrf": csrf.group(1), "next": "/household"})
        token = client.cookies["anju_session"]
        session_csrf = client.get("/api/session").json()["csrf"]
    return {"Cookie": f"anju_session={token}", "X-CSRF-Token": session_csrf}


def test_the_installer_api_keeps_its_contract(live_hub: str, logged_in: dict[str, str], tmp_path: Path) -> None:
    """Schemathesis's own runner (`st run`), every check, a few examples per operation."""
    headers = [arg for name, value in logged_in.items() for arg in ("-H", f"{name}: {value}")]
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{live_hub}/api/openapi.json",
            *headers,
            "--checks",
            "all",
            # A device's fields depend on its transport (a MAC only for BLE, a pin only for GPIO): a
            # model validator, not expressible in the OpenAPI schema, so "schema-valid" devices can
            # still be refused with a 422 that says why.
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "8",
            "--exclude-path",
            "/api/walk-test/events",
            # Adding or removing a device, or saving the household, restarts the hub service with
            # the new configuration (about a second): hundreds of them from a fuzzer make a restart
            # storm in which "503, the hub is restarting" is the documented answer. These three
            # are tested in tests/hub/test_api_app.py and in the browser test instead.
            "--exclude-name",
            "POST /api/devices",
            "--exclude-name",
            "DELETE /api/devices/{device_id}",
            "--exclude-name",
            "PUT /api/household",
            "--request-timeout",
            "30",
            "--suppress-health-check",
            "all",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,  # its cache and reports stay out of the project
        env={**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"},
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
