"""A configuration sent by the centre, tried and rolled back if the hub does not come up with it.

`begin` (from the `config` command, hub.commands) keeps the running file byte for byte as
`<config>.last-good`, writes `<config>.trial.json` (which command, how long the trial lasts, how
many starts it has had), and only then replaces the configuration atomically (hub.config_store).
The service then restarts (run_forever), and the restarted hub is on trial: within `trial_s` it
must be ready, find the serial ports its configuration names (the Zigbee coordinator, the modem)
and connect to the broker. If it does, the trial file goes and the command is answered `ok`. If
it does not, or the service fails to start at all, or the hub stopped twice while on trial (a
crash, a power cut), the last-good file is written back byte for byte, the service restarts with
it, and the command is answered `failed`/`rolled_back` with an `info.config_rolled_back` event.

run_forever needs three hooks: `config_to_start()` for its first configuration, `attach(service,
reload)` for every service it starts, `failed_at_start(exc)` when a service's run raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from typing import TYPE_CHECKING, Any

from hub.config import HubConfig, SmsUplinkConfig
from hub.config_store import ConfigStore
from hub.files import fsync_directory, write_atomic
from hub.model import EventType, Transport

if TYPE_CHECKING:
    from hub.service import HubService

log = logging.getLogger(__name__)

TRIAL_S = 60.0
MAX_TRIAL_STARTS = 2  # a hub that stopped this often while on trial goes back at the next start


class ConfigTrial:
    def __init__(self, store: ConfigStore, stop: asyncio.Event | None = None, default_trial_s: float = TRIAL_S) -> None:
        self.store = store
        self.default_trial_s = default_trial_s
        self._stop = stop or asyncio.Event()
        self.marker = store.path.with_name(store.path.name + ".trial.json")
        self.last_good = store.path.with_name(store.path.name + ".last-good")
        self._verdict: dict[str, Any] | None = None  # to say, once the next service is up
        self._watch: asyncio.Task[None] | None = None
        self._service: HubService | None = None

    # -- the command's side ------------------------------------------------------------------

    def pending_command(self) -> str | None:
        """The cmd_id of the configuration being tried (written, the hub on trial or restarting into
        it), or None. While there is one, no other may begin: it would keep an untried file as the
        last good one."""
        pending = self._pending()
        return None if pending is None else pending["cmd_id"]

    def begin(self, cmd_id: str, text: str, trial_s: float) -> None:
        """Keep the running file, note the trial, write the new file (blocking file work)."""
        if self.marker.exists():
            raise FileExistsError(f"{self.marker}: another configuration is being tried")
        previous = self.store.path.read_bytes()
        write_atomic(self.last_good, previous)
        write_atomic(self.marker, json.dumps({"cmd_id": cmd_id, "trial_s": trial_s, "starts": 0}).encode())
        fsync_directory(self.store.path.parent)
        try:
            self.store.replace_text(text)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                self.marker.unlink()
            raise

    # -- run_forever's side ------------------------------------------------------------------

    def config_to_start(self) -> HubConfig:
        """The configuration to start with; the last good one if the trial has had its starts."""
        pending = self._pending()
        if pending is not None and pending["starts"] >= MAX_TRIAL_STARTS:
            self._roll_back(pending, f"the hub stopped {pending['starts']} times while trying the new configuration")
        return self.store.load()

    def attach(self, service: HubService, reload: asyncio.Event) -> None:
        """Give `service` the way to restart, and put it on trial if a new configuration is pending."""
        service.commands.restart = reload.set
        service.commands.trial = self
        self._service = service
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._verdict is not None:
            verdict, self._verdict = self._verdict, None
            asyncio.get_running_loop().create_task(self._say(service, verdict))
        pending = self._pending()
        if pending is None:
            return
        pending["starts"] += 1
        try:
            write_atomic(self.marker, json.dumps(pending).encode())
        except OSError as exc:
            log.error("cannot update %s (%s)", self.marker, exc)
        log.warning("new configuration on trial for %g s (command %s)", pending["trial_s"], pending["cmd_id"])
        self._watch = asyncio.get_running_loop().create_task(self._on_trial(service, reload, pending))

    def failed_at_start(self, exc: BaseException) -> bool:
        """The service on trial raised: roll back (True), or it was not on trial (False: re-raise)."""
        pending = self._pending()
        if pending is None:
            return False
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        log.error("the hub failed to start with the new configuration: %s", exc, exc_info=exc)
        self._roll_back(pending, f"the hub failed to start: {type(exc).__name__}: {exc}")
        return True

    # -- the trial ---------------------------------------------------------------------------

    async def _on_trial(self, service: HubService, reload: asyncio.Event, pending: dict[str, Any]) -> None:
        trial_s = float(pending["trial_s"])
        stage = "become ready"
        problem: str | None = None
        try:
            async with asyncio.timeout(trial_s):
                await service.ready.wait()
                problem = missing_ports(service.config)
                if problem is None:
                    stage = f"connect to the broker {service.config.mqtt.host}:{service.config.mqtt.port}"
                    await service.uplink.connected.wait()
        except TimeoutError:
            problem = f"the hub did not {stage} within {trial_s:g} s"
        if self._stop.is_set() or self._service is not service:
            return  # stopped meanwhile: the trial goes on at the next start
        if problem is not None:
            self._roll_back(pending, problem)
            reload.set()
            return
        with contextlib.suppress(FileNotFoundError):
            self.marker.unlink()
        log.warning("the new configuration from command %s works; it stays", pending["cmd_id"])
        devices = [device.id for device in service.config.devices]
        await self._say(
            service,
            {
                "cmd_id": pending["cmd_id"],
                "outcome": "ok",
                "code": "done",
                "reason": "the hub restarted with the new configuration and is connected",
                "data": {"devices": devices},
            },
        )

    def _roll_back(self, pending: dict[str, Any], problem: str) -> None:
        log.critical("rolling back to the last good configuration: %s", problem)
        try:
            write_atomic(self.store.path, self.last_good.read_bytes())
            fsync_directory(self.store.path.parent)
        except OSError as exc:
            log.critical("cannot restore %s from %s: %s", self.store.path, self.last_good, exc)
            problem += f"; and the last good file could not be restored ({exc})"
        with contextlib.suppress(FileNotFoundError):
            self.marker.unlink()
        self._verdict = {
            "cmd_id": pending["cmd_id"],
            "outcome": "failed",
            "code": "rolled_back",
            "reason": f"rolled back to the previous configuration: {problem}",
            "data": {"problem": problem},
            "event": True,
        }

    async def _say(self, service: HubService, verdict: dict[str, Any]) -> None:
        """Answer the command (and report a roll-back) from `service`, once it is up."""
        from hub.commands import Result

        await service.ready.wait()
        if verdict.get("event"):
            service.report_event(
                EventType.INFO_CONFIG_ROLLED_BACK, cmd_id=verdict["cmd_id"], problem=verdict["data"]["problem"][:500]
            )
        result = Result(verdict["outcome"], verdict["code"], verdict["reason"], verdict["data"])
        service.commands.reply(verdict["cmd_id"], "config", result)

    def _pending(self) -> dict[str, Any] | None:
        """The trial in progress, or None. A trial file that cannot be read counts as a trial that
        has had its starts (the next start goes back to the last good file)."""
        try:
            pending = json.loads(self.marker.read_text(encoding="utf-8"))
            return {
                "cmd_id": str(pending["cmd_id"]),
                "trial_s": float(pending["trial_s"]),
                "starts": int(pending["starts"]),
            }
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("%s cannot be read (%s): the trial counts as failed", self.marker, exc)
            return {"cmd_id": "unknown", "trial_s": TRIAL_S, "starts": MAX_TRIAL_STARTS}


def missing_ports(config: HubConfig) -> str | None:
    """The first serial port the configuration needs that is not there, as a problem; or None."""
    needed: list[tuple[str, str]] = []
    if any(device.transport is Transport.ZIGBEE for device in config.devices):
        needed.append(("the Zigbee coordinator", config.zigbee.port))
    needed += [("the SMS modem", uplink.port) for uplink in config.uplinks if isinstance(uplink, SmsUplinkConfig)]
    for what, port in needed:
        if not os.path.exists(port):
            return f"{what}'s serial port {port} is not there"
    return None
