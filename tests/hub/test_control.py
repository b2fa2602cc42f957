"""The hub's local control socket: one JSON request a line, answers with ok or a clear error."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

from hub.control import ControlServer, request


async def test_requests_reach_their_handler_and_bad_ones_get_an_error(tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    async def permit(message: dict[str, Any]) -> dict[str, Any]:
        calls.append(message)
        if message["seconds"] > 254:
            raise ValueError("seconds must be 1 to 254")
        return {"permit_s": message["seconds"]}

    server = ControlServer(tmp_path / "control.sock", {"permit": permit})
    await server.start()
    assert stat.S_IMODE((tmp_path / "control.sock").stat().st_mode) == 0o600
    try:
        good = await asyncio.to_thread(request, server.path, {"cmd": "permit", "seconds": 60})
        too_long = await asyncio.to_thread(request, server.path, {"cmd": "permit", "seconds": 999})
        unknown = await asyncio.to_thread(request, server.path, {"cmd": "self-destruct"})
    finally:
        await server.close()
    assert good == {"ok": True, "permit_s": 60}
    assert too_long == {"ok": False, "error": "seconds must be 1 to 254"}
    assert unknown["ok"] is False and "permit" in unknown["error"]
    assert [c["seconds"] for c in calls] == [60, 999]
    assert not server.path.exists()
