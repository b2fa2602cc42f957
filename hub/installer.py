"""The installer's visit, as the hub sees it: the walk test, the test call and the commissioning
report. The web app (hub.api) and `anju provision` both work through `Installer`.

It outlives the hub service it drives: after a device is paired the service restarts with the new
configuration (`request_reload`), and the walk test's results and the last test call stay here.

- Walk test: the household goes into test mode (hub.rules); every `test.walk` event marks its
  device as triggered, with the time and the signal it was heard with; listeners (the web page's
  server-sent events) hear each one as it happens.
- Test call: a `test.call` event is journaled and sent over every configured uplink; the result
  says, per path, whether the centre (or receiver, or mobile network) took it.
- Report: the household, its devices with the walk-test results, the test call, the installer;
  saved on the hub as HTML and PDF and reported to the centre as `info.commissioned` (without
  personal data).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hub.config import HubConfig
from hub.config_store import ConfigStore
from hub.model import Event, EventType

if TYPE_CHECKING:
    from hub.report import CommissioningReport
    from hub.service import HubService

log = logging.getLogger(__name__)

TEST_CALL_WAIT_S = 15.0


@dataclass
class Triggered:
    at: datetime
    signal: str | None


@dataclass
class WalkTest:
    started_at: datetime | None = None
    until: datetime | None = None  # test mode ends by itself then (hub.rules does the same)
    triggered: dict[str, Triggered] = field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.until is not None and datetime.now(UTC) < self.until


@dataclass(frozen=True)
class PathResult:
    path: str
    ok: bool
    detail: str
    at: datetime | None


class Installer:
    def __init__(self, store: ConfigStore) -> None:
        self.store = store
        self.service: HubService | None = None
        self.walk = WalkTest()
        self.last_test_call: list[PathResult] = []
        self._listeners: set[Callable[[str, Triggered], None]] = set()
        self.reload_requested = asyncio.Event()
        self._config: HubConfig | None = None  # the latest written, ahead of the service until it restarts
        self._resume: asyncio.Task[None] | None = None
        self._config_stamp: tuple[int, int] | None = None

    # -- the service -----------------------------------------------------------------------------

    def attach(self, service: HubService) -> None:
        self.service = service
        service.event_listeners.append(self._on_event)
        if self.walk.running:  # a device paired mid-walk-test restarted the service: test mode goes on
            self._resume = asyncio.get_running_loop().create_task(self._resume_walk_test(service))
        service.extra_handlers.update(  # `anju provision …` reaches these through the control socket
            {
                "reload": self._reload_request,
                "walk_test": self._walk_request,
                "test_call": self._test_call_request,
                "commission": self._commission_request,
            }
        )

    async def _resume_walk_test(self, service: HubService) -> None:
        await service.ready.wait()
        if self.walk.running and self.walk.until is not None and service is self.service:
            minutes = (self.walk.until - datetime.now(UTC)).total_seconds() / 60
            service.rules.set_test_mode(True, minutes)

    async def _reload_request(self, request: dict[str, Any]) -> dict[str, Any]:
        self.reload_requested.set()
        return {"reloading": True}

    async def _walk_request(self, request: dict[str, Any]) -> dict[str, Any]:
        action = request.get("action")
        if action == "start":
            await self.start_walk_test()
        elif action == "stop":
            await self.stop_walk_test()
        elif action != "show":
            raise ValueError('walk_test needs "action": "start", "stop" or "show"')
        return {
            "running": self.walk.running,
            "devices": {
                d.id: None if d.id not in self.walk.triggered else self.walk.triggered[d.id].at.isoformat()
                for d in self.config.devices
            },
        }

    async def _test_call_request(self, request: dict[str, Any]) -> dict[str, Any]:
        results = await self.test_call()
        return {"paths": [{"path": r.path, "ok": r.ok, "detail": r.detail} for r in results]}

    async def _commission_request(self, request: dict[str, Any]) -> dict[str, Any]:
        lang: Literal["zh", "en"] = "en" if request.get("lang") == "en" else "zh"
        report, html, pdf = await self.commission(str(request.get("installer") or ""), lang)
        return {"passed": report.passed, "html": str(html), "pdf": str(pdf)}

    @property
    def config(self) -> HubConfig:
        """The configuration as the file has it now (read again whenever the file changed: by the
        web app, `anju provision`, or a person), ahead of the service until it restarts."""
        stamp = self._file_stamp()
        if self._config is None or stamp != self._config_stamp:
            self._config, self._config_stamp = self.store.load(), stamp
        return self._config

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            info = self.store.path.stat()
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size)

    async def running_service(self, wait_s: float = 15.0) -> HubService:
        """The hub service, once it is ready: just after a device was paired it is restarting."""
        async with asyncio.timeout(wait_s):
            # (the service object itself is replaced by a restart: one Event cannot stand for it)
            while self.service is None or self.reload_requested.is_set() or not self.service.ready.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        return self.service

    def update_config(self, change: Callable[[dict[str, Any]], None]) -> HubConfig:
        """Change the configuration file and restart the hub service with it."""
        config = self.store.update(change)
        self.reload_requested.set()
        return config

    # -- walk test -------------------------------------------------------------------------------

    async def start_walk_test(self, minutes: float = 30) -> None:
        (await self.running_service()).rules.set_test_mode(True, minutes)
        now = datetime.now(UTC)
        self.walk = WalkTest(started_at=now, until=now + timedelta(minutes=minutes))

    async def stop_walk_test(self) -> None:
        service = await self.running_service()
        service.rules.set_test_mode(False)
        self.walk.until = None

    def listen(self, listener: Callable[[str, Triggered], None]) -> Callable[[], None]:
        """Call `listener(device_id, triggered)` on every walk-test trigger; returns the way to stop."""
        self._listeners.add(listener)
        return lambda: self._listeners.discard(listener)

    def _on_event(self, event: Event) -> None:
        if event.type is not EventType.TEST_WALK or event.device_id is None:
            return
        service = self.service
        reading = service.book.get(event.device_id) if service is not None else None
        triggered = Triggered(datetime.now(UTC), reading.signal if reading else None)
        self.walk.triggered[event.device_id] = triggered
        for listener in list(self._listeners):
            try:
                listener(event.device_id, triggered)
            except Exception:  # a closed page must not stop the walk test
                log.exception("a walk-test listener failed")

    # -- test call -------------------------------------------------------------------------------

    async def test_call(self) -> list[PathResult]:
        self.last_test_call = await (await self.running_service()).test_call(TEST_CALL_WAIT_S)
        return self.last_test_call

    # -- report ----------------------------------------------------------------------------------

    def report(self, installer_name: str) -> CommissioningReport:
        from hub.report import CommissioningReport, DeviceResult, UplinkResult

        config = self.config
        service = self.service
        devices = []
        for device in config.devices:
            reading = service.book.get(device.id) if service is not None else None
            triggered = self.walk.triggered.get(device.id)
            devices.append(
                DeviceResult(
                    id=device.id,
                    kind=device.kind.value,
                    transport=device.transport.value,
                    room=device.room,
                    model=None,
                    signal=(triggered.signal if triggered else None) or (reading.signal if reading else None),
                    battery_percent=None
                    if reading is None or reading.battery_percent is None
                    else round(reading.battery_percent),
                    walk_test_at=triggered.at if triggered else None,
                )
            )
        profile = config.profile
        return CommissioningReport(
            hub_id=config.hub_id,
            county=config.county,
            household_id=config.household_id,
            elder_name=profile.elder_name,
            address=profile.address,
            contacts=[(c.name, c.phone, c.relation) for c in profile.contacts],
            devices=devices,
            uplinks=[UplinkResult(r.path, r.ok, r.detail, r.at) for r in self.last_test_call],
            installer=installer_name,
            created_at=datetime.now(UTC),
            timezone=config.rules.timezone,
        )

    async def commission(
        self, installer_name: str, lang: Literal["zh", "en"] = "zh"
    ) -> tuple[CommissioningReport, Path, Path]:
        """Make the report, keep it on the hub and tell the centre (`info.commissioned`)."""
        from hub.report import save

        report = self.report(installer_name)
        service = await self.running_service()
        html, pdf = await asyncio.to_thread(save, report, service.config.data_dir / "reports", lang)
        service.report_event(EventType.INFO_COMMISSIONED, **report.summary())
        return report, html, pdf
