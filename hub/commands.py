"""Commands from the county centre, as the hub carries them out: who may command, and what happens.

The uplink (cloud_bridge.mqtt) hands over every `cmd` message: a valid one to `Commands.on_command`,
a malformed one to `Commands.on_bad_command`. A command is carried out only if

1. it carries the county CA's signature over its canonical encoding (cloud_bridge.commands),
   checked against `mqtt.command_ca`, else the CA certificate the hub trusts for TLS (`mqtt.tls.ca`);
2. it names this hub (`hub_id`);
3. it was issued at most `mqtt.command_max_age_s` ago and at most FUTURE_SKEW_S in the future; or,
   while the hub's clock is not synchronised (a Pi has no real-time clock, so after a power cut
   its clock may be anything until NTP answers), after the newest command it has carried out;
4. its `cmd_id` has not been seen before (the ids are kept in `data_dir/commands-seen.json`, so a
   restart does not make an old command good again).

Every command gets exactly one `cmd_result` back (ok, refused or failed, with a code, a reason and
the command's data). A refused one is also reported as an `info.command_refused` event (at most
REFUSALS_PER_MINUTE a minute; the next one counts those left out), so the county sees an attempt
even if nobody watches the results.

The commands: `silence` (the siren), `test` (a test call over every uplink), `say` (the centre's
text in the hub's Mandarin voice, after any prompt, never interrupting one), `status` (the same
dict as `anju status`), `events` (the journal's last events) and `config` (a whole new hub.toml,
tried under `ConfigTrial` and rolled back if the restarted hub does not come up). A configuration
that would cut the hub off for good is refused before anything is written: one that moves
`data_dir` (the journal, with the alarms the centre has not acknowledged, would stay behind) or
whose command CA cannot be read (the hub could take no command again, not even the one that fixes
it). So is one sent while another is being tried (`busy`): its file would have become the "last
good" one before it had been tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_bridge.commands import COMMANDS, BadSignature, load_ca_public_key, verify_command
from cloud_bridge.contract import ContractError
from edge.audio import MESSAGE_PREFIX, clean_message
from hub.config import ConfigError, HubConfig
from hub.config_trial import ConfigTrial
from hub.files import write_atomic
from hub.model import EventType, iso_now

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

    from hub.service import HubService

log = logging.getLogger(__name__)

FUTURE_SKEW_S = 30.0  # a centre's clock may run this far ahead of the hub's
SEEN_FILE = "commands-seen.json"
SEEN_KEPT = 1000  # cmd ids remembered; commands older than command_max_age_s are refused anyway
REFUSALS_PER_MINUTE = 10
EVENTS_DEFAULT, EVENTS_MAX = 20, 100
TEST_CALL_WAIT_S = 15.0
# These take a while (a test call waits for acks; espeak-ng renders a message in up to 30 s on a
# busy Pi; a configuration is written and fsynced): the uplink must go on reading acks meanwhile.
BACKGROUND = ("test", "say", "config")

__all__ = ["Commands", "ConfigTrial", "Refused", "SeenCommands"]


@dataclass
class Refused(Exception):
    """A command that is not carried out; `code` for scripts, `reason` for people."""

    code: str
    reason: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    outcome: str  # ok, refused, failed
    code: str
    reason: str
    data: dict[str, Any] = field(default_factory=dict)


class SeenCommands:
    """The cmd ids already carried out (or refused after their signature checked), and the newest
    `issued_at` carried out, on disk."""

    def __init__(self, path: Path, keep: int = SEEN_KEPT) -> None:
        self.path = path
        self._ids: deque[str] = deque(maxlen=keep)
        self.newest_issued: datetime | None = None
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(loaded, list):  # written before newest_issued_at was kept
                loaded = {"ids": loaded}
            self._ids.extend(i for i in loaded.get("ids", []) if isinstance(i, str))
            if isinstance(loaded.get("newest_issued_at"), str):
                self.newest_issued = datetime.fromisoformat(loaded["newest_issued_at"])
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("%s cannot be read (%s): replays of commands from before it are not recognised", path, exc)

    def __contains__(self, cmd_id: str) -> bool:
        return cmd_id in self._ids

    def add(self, cmd_id: str, issued: datetime | None = None) -> None:
        """Remember `cmd_id` (in memory at once; on disk unless the disk refuses, which is logged)."""
        self._ids.append(cmd_id)
        if issued is not None and (self.newest_issued is None or issued > self.newest_issued):
            self.newest_issued = issued
        state = {
            "ids": list(self._ids),
            "newest_issued_at": None if self.newest_issued is None else self.newest_issued.isoformat(),
        }
        try:
            write_atomic(self.path, json.dumps(state).encode())
        except OSError as exc:
            log.error("cannot save the seen command ids to %s (%s); they are kept in memory", self.path, exc)


class Commands:
    """Authentication and dispatch of the centre's commands for one running `HubService`."""

    def __init__(self, service: HubService, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.service = service
        self.now = now
        self.restart: Callable[[], None] | None = None  # set by ConfigTrial.attach (run_forever)
        self.trial: ConfigTrial | None = None
        self._seen: SeenCommands | None = None
        self._ca_key: ec.EllipticCurvePublicKey | None = None
        self._refusals: deque[float] = deque()
        self._refusals_left_out = 0
        self._configuring: str | None = None  # the cmd_id of a configuration being written, then tried

    # -- from the uplink --------------------------------------------------------------------------

    async def on_command(self, cmd: dict[str, Any]) -> None:
        """A command that matches the contract's schema (the uplink checked that)."""
        cmd_id, command = cmd["cmd_id"], cmd["command"]
        try:
            self._authenticate(cmd)
        except Refused as refusal:
            self._refuse(cmd_id, command, refusal)
            return
        issued = datetime.fromisoformat(cmd["issued_at"])  # _authenticate has read it already
        await asyncio.to_thread(self.seen.add, cmd_id, issued)  # before carrying it out: once, even across a crash
        log.info("command %s (%s) from the centre accepted", command, cmd_id)
        if command in BACKGROUND:
            self.service._background(self._carry_out(cmd))
        else:
            await self._carry_out(cmd)

    async def on_bad_command(self, payload: bytes, error: ContractError) -> None:
        """A `cmd` message that breaks the contract: refused, answered if it names a cmd_id, reported."""
        try:
            message = json.loads(payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            message = None
        cmd_id = command = None
        unsigned = False
        if isinstance(message, dict):
            raw_id, raw_command = message.get("cmd_id"), message.get("command")
            cmd_id = raw_id if isinstance(raw_id, str) and 1 <= len(raw_id) <= 64 else None
            command = raw_command if isinstance(raw_command, str) and raw_command in COMMANDS else None
            unsigned = "signature" not in message
        if unsigned:
            refusal = Refused("unsigned", "the command is not signed by the county CA")
        else:
            refusal = Refused("malformed", str(error)[:1000])
        self._refuse(cmd_id, command, refusal)

    # -- who may command -----------------------------------------------------------------------

    @property
    def seen(self) -> SeenCommands:
        if self._seen is None:
            self._seen = SeenCommands(self.service.config.data_dir / SEEN_FILE)
        return self._seen

    def _authenticate(self, cmd: dict[str, Any]) -> None:
        try:
            verify_command(cmd, self._trusted_key())
        except BadSignature as exc:
            code = "unsigned" if "not signed" in str(exc) else "bad_signature"
            raise Refused(code, str(exc)) from None
        config = self.service.config
        if cmd["hub_id"] != config.hub_id:
            raise Refused("other_hub", f"the command is for hub {cmd['hub_id']}, this is {config.hub_id}")
        try:
            issued = datetime.fromisoformat(cmd["issued_at"])
        except ValueError:
            raise Refused("malformed", f"issued_at {cmd['issued_at']!r} cannot be read") from None
        if issued.tzinfo is None:
            raise Refused("malformed", "issued_at has no time zone offset")
        if self.service.timesync.trusted:
            age = (self.now() - issued).total_seconds()
            limit = config.mqtt.command_max_age_s
            if age > limit:
                raise Refused("stale", f"issued {age:.0f} s ago; commands older than {limit:g} s are refused")
            if age < -FUTURE_SKEW_S:
                raise Refused(
                    "future", f"issued {-age:.0f} s in the future by the hub's clock (at most {FUTURE_SKEW_S:g})"
                )
        elif self.seen.newest_issued is not None and issued <= self.seen.newest_issued:
            # Until NTP answers, the hub's clock may be anything (a Pi has no real-time clock), so it
            # cannot judge a command's age: it takes only what is newer than the newest it has done.
            raise Refused(
                "stale",
                f"the hub's clock is not synchronised, so it takes only commands issued after the newest "
                f"it has carried out ({self.seen.newest_issued.isoformat()})",
            )
        if cmd["cmd_id"] in self.seen:
            raise Refused("replayed", f"command {cmd['cmd_id']} was already received; each cmd_id is done once")

    def _trusted_key(self) -> ec.EllipticCurvePublicKey:
        if self._ca_key is None:
            mqtt = self.service.config.mqtt
            path = mqtt.command_ca or (mqtt.tls.ca if mqtt.tls else None)
            if path is None:
                raise Refused("no_ca", "the hub has no county CA certificate (mqtt.command_ca or mqtt.tls.ca)")
            try:
                self._ca_key = load_ca_public_key(path)
            except ValueError as exc:
                raise Refused("no_ca", str(exc)) from None
        return self._ca_key

    # -- what they do --------------------------------------------------------------------------

    async def _carry_out(self, cmd: dict[str, Any]) -> None:
        cmd_id, command = cmd["cmd_id"], cmd["command"]
        handler: Callable[[str, dict[str, Any]], Awaitable[Result | None]] = getattr(self, f"_do_{command}")
        try:
            result = await handler(cmd_id, cmd.get("args", {}))
        except Refused as refusal:
            log.warning("command %s (%s) refused: %s", command, cmd_id, refusal.reason)
            result = Result("refused", refusal.code, refusal.reason, refusal.data)
        except Exception as exc:
            log.exception("command %s (%s) failed", command, cmd_id)
            result = Result("failed", "error", f"{type(exc).__name__}: {exc}"[:1000])
        if result is not None:  # None: answered later (a configuration, after the restart)
            log.info("command %s (%s): %s %s", command, cmd_id, result.outcome, result.reason)
            self.reply(cmd_id, command, result)

    def _only(self, args: dict[str, Any], *allowed: str) -> None:
        extra = sorted(set(args) - set(allowed))
        if extra:
            raise Refused("bad_args", f"argument(s) {', '.join(extra)} do not belong to this command")

    async def _do_silence(self, cmd_id: str, args: dict[str, Any]) -> Result:
        self._only(args)
        data = self.service.rules.on_command("silence", {})
        return Result("ok", "done", "the siren is silenced", data)

    async def _do_test(self, cmd_id: str, args: dict[str, Any]) -> Result:
        self._only(args, "wait_s")
        paths = await self.service.test_call(float(args.get("wait_s", TEST_CALL_WAIT_S)))
        data = {"paths": [{"path": p.path, "ok": p.ok, "detail": p.detail} for p in paths]}
        failed = [p.path for p in paths if not p.ok]
        if failed:
            return Result("failed", "path_failed", f"the test call did not get through over {', '.join(failed)}", data)
        return Result("ok", "done", "the test call got through over every path", data)

    async def _do_say(self, cmd_id: str, args: dict[str, Any]) -> Result:
        self._only(args, "text")
        text = clean_message(str(args.get("text", "")))
        if not text:
            raise Refused("bad_args", "say needs args.text with something to say")
        voice = self.service.voice
        wav = await asyncio.to_thread(voice.render_message, text)
        voice.say_message(f"{MESSAGE_PREFIX}{cmd_id}", wav)
        return Result("ok", "done", "the message is being said (after any prompt)", {"text": text})

    async def _do_status(self, cmd_id: str, args: dict[str, Any]) -> Result:
        self._only(args)
        self.service.uplink.heartbeat_now()
        return Result("ok", "done", "the hub's status", await self.service._status({}))

    async def _do_events(self, cmd_id: str, args: dict[str, Any]) -> Result:
        self._only(args, "limit")
        limit = min(EVENTS_MAX, int(args.get("limit", EVENTS_DEFAULT)))
        records = await self.service.journal.recent(limit)
        events = []
        for record in records:
            item = record.event.to_message(attempt=1)
            for transient in ("schema", "attempt", "sent_at", "sent_mono_ms"):
                item.pop(transient, None)
            events.append(item | {"acked_at": record.acked_at, "ack_via": record.ack_via})
        return Result("ok", "done", f"the last {len(events)} event(s) in the journal", {"events": events})

    async def _do_config(self, cmd_id: str, args: dict[str, Any]) -> Result | None:
        self._only(args, "toml", "trial_s")
        text = args.get("toml")
        if not isinstance(text, str):
            raise Refused("bad_args", "config needs args.toml: the whole new hub.toml")
        if self.trial is None or self.restart is None:
            return Result("failed", "error", "this hub cannot restart itself (it was not started by `anju run`)")
        current = self.service.config
        try:
            new = self.trial.store.check_text(text)
        except ConfigError as exc:
            raise Refused("bad_config", f"the new configuration is not valid: {exc}", {"problem": str(exc)}) from None
        if (new.hub_id, new.county) != (current.hub_id, current.county):
            raise Refused(
                "other_hub",
                f"the configuration is for hub {new.county}/{new.hub_id}, this is {current.county}/{current.hub_id}",
            )
        if new.data_dir.resolve() != current.data_dir.resolve():
            raise Refused(
                "bad_config",
                f"the new configuration moves data_dir to {new.data_dir}: the journal, with the events the centre "
                f"has not acknowledged, is in {current.data_dir}; data_dir is changed on the hub, not from the centre",
            )
        problem = command_ca_problem(new)
        if problem is not None:
            raise Refused("bad_config", f"with the new configuration {problem}: the hub could take no command again")
        # No await between this check and taking the turn: two configurations cannot both pass it.
        busy = self._configuring or self.trial.pending_command()
        if busy is not None:
            raise Refused("busy", f"the configuration of command {busy} is being tried; send this one after its answer")
        self._configuring = cmd_id
        trial_s = float(args.get("trial_s", self.trial.default_trial_s))
        try:
            await asyncio.to_thread(self.trial.begin, cmd_id, text, trial_s)
        except (OSError, ConfigError) as exc:
            self._configuring = None
            return Result("failed", "error", f"the new configuration could not be written: {exc}")
        log.warning("command %s: a new configuration from the centre; restarting with it", cmd_id)
        self.restart()
        return None

    # -- answers -------------------------------------------------------------------------------

    def reply(self, cmd_id: str | None, command: str | None, result: Result) -> None:
        """Send the `cmd_result` for one command (it waits for the broker if need be)."""
        message = {
            "schema": "anju.cmd_result/1",
            "hub_id": self.service.config.hub_id,
            "cmd_id": cmd_id,
            "command": command,
            "outcome": result.outcome,
            "code": result.code,
            "reason": result.reason[:4000],
            "data": result.data,
            "at": iso_now(),
        }
        uplink = getattr(self.service, "uplink", None)
        if uplink is None:
            log.error("no uplink yet: the result of command %s is not sent", cmd_id)
            return
        uplink.send_result(message)

    def _refuse(self, cmd_id: str | None, command: str | None, refusal: Refused) -> None:
        log.warning("command %s (%s) refused (%s): %s", command, cmd_id, refusal.code, refusal.reason)
        self.reply(cmd_id, command, Result("refused", refusal.code, refusal.reason, refusal.data))
        now = time.monotonic()
        while self._refusals and now - self._refusals[0] > 60:
            self._refusals.popleft()
        if len(self._refusals) >= REFUSALS_PER_MINUTE:
            self._refusals_left_out += 1
            return
        self._refusals.append(now)
        left_out, self._refusals_left_out = self._refusals_left_out, 0
        details: dict[str, Any] = {
            "cmd_id": cmd_id,
            "command": command,
            "code": refusal.code,
            "reason": refusal.reason[:500],
        }
        if left_out:
            details["refusals_not_reported"] = left_out
        with contextlib.suppress(AttributeError):  # rules not built yet: nothing can be refused then anyway
            self.service.report_event(EventType.INFO_COMMAND_REFUSED, **details)


def command_ca_problem(config: HubConfig) -> str | None:
    """Why the hub could not check commands' signatures under `config`, or None if it could."""
    path = config.mqtt.command_ca or (config.mqtt.tls.ca if config.mqtt.tls else None)
    if path is None:
        return "there is no county CA certificate (mqtt.command_ca or mqtt.tls.ca)"
    try:
        load_ca_public_key(path)
    except ValueError as exc:  # unreadable, not PEM, not a certificate, not an EC key
        return f"{path}: {exc}" if str(path) not in str(exc) else str(exc)
    return None
