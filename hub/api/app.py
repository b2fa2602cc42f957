"""The installer's web app: server-rendered pages for a phone, and the same data as JSON under /api.

Pages (Jinja2, no front-end build, a little plain JavaScript for the live walk test): household,
devices, pairing (BLE nearby, Zigbee joining, wired), walk test, test call, report. Everything
works through `hub.installer.Installer`.

Security (hub.api.security): only clients on the home network (private, link-local, loopback
addresses); a login with the installer PIN, rate-limited and locked after repeated failures;
server-side sessions that end when idle; a CSRF token in every form (and in the `X-CSRF-Token`
header for the JSON API's changes). Errors are pages a person can act on, never a stack trace;
personal data never goes into a log line.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

from fastapi import Depends, FastAPI, Form, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from hub.api.i18n import Lang, t
from hub.api.security import LoginLimiter, Session, SessionStore, csrf_ok, is_lan_client, verify_pin
from hub.config import (
    ApiConfig,
    ConfigError,
    Contact,
    DeviceConfig,
    Identifier,
    PhoneNumber,
    ProfileConfig,
)
from hub.config import Reminder as ReminderConfig
from hub.installer import Installer
from hub.model import DeviceKind, Transport
from hub.report import KINDS

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "anju_session"
MAX_BODY_BYTES = 64 * 1024
FORM_ROWS_MAX = 10  # contacts and reminders the household page shows at most (the config's own limit)
NEARBY_FRESH_S = 120.0  # a BLE device not heard for this long is no longer "nearby"
LOGIN_COOKIE = "anju_login"
LANG_COOKIE = "anju_lang"


class ApiError(Exception):
    """A problem to show a person: a status, a message key (hub.api.i18n) and its values."""

    def __init__(self, status: int, key: str, **values: object) -> None:
        super().__init__(key)
        self.status, self.key, self.values = status, key, values


# -- JSON models of the REST API --------------------------------------------------------------------


class ErrorOut(BaseModel):
    error: str = Field(description="expired, csrf, locked, invalid, not_found, unavailable, internal")
    message: str | None = None
    problems: list[str] | None = Field(None, description="with `invalid`: each field and what is allowed")


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "the body is not JSON"},
    401: {"model": ErrorOut, "description": "no session or the session ended: log in at /login"},
    403: {"model": ErrorOut, "description": "a change without the session's X-CSRF-Token header"},
    404: {"model": ErrorOut, "description": "no such device or report"},
    405: {"model": ErrorOut, "description": "the path does not take this method (see the Allow header)"},
    409: {"model": ErrorOut, "description": "not possible in this household (e.g. no Zigbee coordinator)"},
    422: {"model": ErrorOut, "description": "a field is wrong; `problems` says which and what is allowed"},
    503: {"model": ErrorOut, "description": "the hub is (re)starting: try again in a moment"},
}


class HouseholdIn(BaseModel):
    elder_name: str = Field("", max_length=40)
    address: str = Field("", max_length=120)
    phone: PhoneNumber | None = None
    contacts: list[Contact] = Field(default_factory=list, max_length=10)
    waking: str | None = Field(None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]-([01][0-9]|2[0-3]):[0-5][0-9]$")


class HouseholdOut(HouseholdIn):
    hub_id: Identifier
    household_id: Identifier
    county: Identifier


class DeviceOut(BaseModel):
    id: str
    kind: DeviceKind
    transport: Transport
    room: str | None
    battery_percent: float | None
    signal: str | None
    last_seen: datetime | None
    status: str


class NearbyBle(BaseModel):
    mac: str
    rssi: int | None
    seen: datetime
    encrypted: bool


class JoinedZigbee(BaseModel):
    ieee: str
    kind: DeviceKind
    joined: datetime


class PermitIn(BaseModel):
    seconds: int = Field(120, ge=1, le=254)


class PathResultOut(BaseModel):
    path: str
    ok: bool
    detail: str
    at: datetime | None


class WalkDevice(BaseModel):
    id: str
    kind: DeviceKind
    room: str | None
    triggered_at: datetime | None
    signal: str | None


class WalkTestOut(BaseModel):
    running: bool
    started_at: datetime | None
    devices: list[WalkDevice]


class ReportIn(BaseModel):
    installer: str = Field(min_length=1, max_length=40)


class ReportOut(BaseModel):
    passed: bool
    summary: dict[str, Any]
    html_url: str
    pdf_url: str


# -- authentication (module level: FastAPI reads these annotations by name) ------------------------


def current_session(request: Request) -> Session:
    sessions: SessionStore = request.app.state.sessions
    session = sessions.get(request.cookies.get(SESSION_COOKIE, ""))
    if session is None:
        raise ApiError(401, "expired")
    request.state.session = session
    return session


async def form_csrf(request: Request, session: Annotated[Session, Depends(current_session)]) -> Session:
    form = await request.form()
    token = form.get("csrf")
    if not csrf_ok(session, token if isinstance(token, str) else None):
        raise ApiError(403, "csrf")
    return session


def header_csrf(request: Request, session: Annotated[Session, Depends(current_session)]) -> Session:
    if not csrf_ok(session, request.headers.get("X-CSRF-Token")):
        raise ApiError(403, "csrf")
    return session


SessionDep = Annotated[Session, Depends(current_session)]
FormDep = Annotated[Session, Depends(form_csrf)]  # a page's form: the token in its `csrf` field
ChangeDep = Annotated[Session, Depends(header_csrf)]  # a JSON change: the token in X-CSRF-Token


# -- the app ---------------------------------------------------------------------------------------


def create_app(installer: Installer, config: ApiConfig, clock: Callable[[], float] = time.monotonic) -> FastAPI:
    app = FastAPI(
        title="Anju hub — installer API",
        version="1",
        description="The installer's operations on one hub: household, devices, pairing, walk test, test call, "
        "report. Log in at /login with the installer PIN; send the session cookie, and for changes the "
        "X-CSRF-Token header with the session's token (GET /api/session).",
        docs_url="/api/docs",
        responses=ERROR_RESPONSES,
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    sessions = SessionStore(idle_s=config.session_minutes * 60, clock=clock)
    app.state.sessions = sessions
    limiter = LoginLimiter(clock=clock)
    login_secret = secrets.token_bytes(32)
    login_lock = asyncio.Lock()

    def lang_of(request: Request) -> Lang:
        return "en" if request.cookies.get(LANG_COOKIE) == "en" else "zh"

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        lang = lang_of(request)
        session: Session | None = getattr(request.state, "session", None)
        return templates.TemplateResponse(
            request,
            name,
            {
                "t": lambda key, **v: t(key, lang, **v),
                "kind_name": lambda kind: KINDS.get(kind, (kind, kind))[0 if lang == "zh" else 1],
                "lang": lang,
                "session": session,
                **context,
            },
            status_code=status,
        )

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    # -- errors: a page (or JSON) a person can act on -------------------------------------------------

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        if exc.key == "expired" and not wants_json(request):
            return RedirectResponse(f"/login?expired=1&next={quote(request.url.path)}", status_code=303)
        message = t(exc.key, lang_of(request), **exc.values)
        if wants_json(request):
            return JSONResponse({"error": exc.key, "message": t(exc.key, "en", **exc.values)}, status_code=exc.status)
        return page(request, "error.html", exc.status, message=message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = [
            f"{'.'.join(str(p) for p in e['loc'] if p not in ('body', 'form', 'query', 'path'))}: {e['msg']}"
            for e in exc.errors()
        ]
        if wants_json(request):
            return JSONResponse({"error": "invalid", "problems": problems}, status_code=422)
        return page(request, "error.html", 422, message=t("invalid", lang_of(request)), problems=problems)

    @app.exception_handler(ConfigError)
    async def config_refused(request: Request, exc: ConfigError) -> Response:
        problems = [line.split(": ", 1)[-1] for line in str(exc).splitlines()]  # no file paths for a phone
        if wants_json(request):
            return JSONResponse({"error": "invalid", "problems": problems}, status_code=422)
        return page(request, "error.html", 422, message=t("invalid", lang_of(request)), problems=problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(sorted(_allowed_methods(app, request.url.path)))
        if wants_json(request) or exc.status_code not in (404, 405):
            error = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
            return JSONResponse({"error": error, "message": str(exc.detail)}, exc.status_code, headers=headers)
        return page(request, "error.html", exc.status_code, message=t("not_found", lang_of(request)))

    @app.exception_handler(TimeoutError)
    async def still_starting(request: Request, exc: TimeoutError) -> Response:
        message = t("starting", lang_of(request))
        if wants_json(request):
            return JSONResponse({"error": "unavailable", "message": t("starting", "en")}, status_code=503)
        return page(request, "error.html", 503, message=message)

    @app.exception_handler(RuntimeError)
    async def not_ready(request: Request, exc: RuntimeError) -> Response:
        log.warning("request %s refused: %s", request.url.path, exc)
        if wants_json(request):
            return JSONResponse({"error": "unavailable", "message": str(exc)}, status_code=503)
        return page(request, "error.html", 503, message=str(exc) or t("starting", lang_of(request)))

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> Response:
        log.error("request %s failed: %s", request.url.path, type(exc).__name__, exc_info=exc)
        if wants_json(request):
            return JSONResponse({"error": "internal", "message": "the hub could not do this; see its log"}, 500)
        return page(request, "error.html", 500, message=t("error", lang_of(request)))

    @app.middleware("http")
    async def lan_only(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        host = request.client.host if request.client else ""
        if not is_lan_client(host):
            log.warning("refused a client outside the home network")
            return HTMLResponse(t("lan_only", lang_of(request)), status_code=403)
        if not _host_is_an_address(request.headers.get("host", "")):
            # A name in Host means the page was reached by a domain name: a DNS-rebinding page on
            # the installer's phone could otherwise drive the hub. The hub is reached by address.
            return HTMLResponse(t("lan_only", lang_of(request)), status_code=421)
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            # Bodies are small here: a form or a device. A large one (or one of unknown size) is
            # refused before anything reads it, so no client can fill the hub's memory.
            length = request.headers.get("content-length")
            if length is None and request.headers.get("transfer-encoding"):
                return JSONResponse({"error": "bad_request", "message": "send a Content-Length"}, status_code=411)
            if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
                return JSONResponse({"error": "bad_request", "message": "the body is too large"}, status_code=413)
        response = await call_next(request)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    # -- authentication -------------------------------------------------------------------------------

    def login_token(nonce: str) -> str:
        return hmac.new(login_secret, nonce.encode(), hashlib.sha256).hexdigest()

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login_page(request: Request, expired: int = 0, next: str = "/household") -> Response:
        nonce = secrets.token_urlsafe(16)
        response = page(
            request,
            "login.html",
            csrf=login_token(nonce),
            next=next if next.startswith("/") and not next.startswith("//") else "/household",
            message=t("expired", lang_of(request)) if expired else None,
        )
        response.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="strict")
        return response

    @app.post("/login", response_class=HTMLResponse, include_in_schema=False)
    async def login(
        request: Request,
        pin: Annotated[str, Form(max_length=32)],
        csrf: Annotated[str, Form(max_length=128)] = "",
        next: Annotated[str, Form(max_length=200)] = "/household",
    ) -> Response:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not hmac.compare_digest(csrf.encode(), login_token(nonce).encode()):
            raise ApiError(403, "csrf")
        client = request.client.host if request.client else "?"
        # One PIN is checked at a time, and the lockout is looked at under the same lock: parallel
        # guesses cannot all pass the check before the first failure is counted.
        async with login_lock:
            wait = limiter.check(client)
            if wait > 0:
                raise ApiError(429, "locked", minutes=max(1, round(wait / 60)))
            stored = installer.config.api.pin_hash or ""
            right = await asyncio.to_thread(verify_pin, pin, stored)
            wait = 0.0 if right else limiter.failed(client)
        if not right:
            log.warning("wrong installer PIN from a client on the home network")
            if wait > 0:
                raise ApiError(429, "locked", minutes=max(1, round(wait / 60)))
            left = limiter.tries_left(client)
            return page(
                request, "login.html", 401, csrf=csrf, next=next, message=t("pin_wrong", lang_of(request), left=left)
            )
        limiter.succeeded(client)
        session = sessions.create()
        target = next if next.startswith("/") and not next.startswith("//") else "/household"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, session.token, httponly=True, samesite="strict")
        response.delete_cookie(LOGIN_COOKIE)
        log.info("installer logged in")
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request, session: FormDep) -> Response:
        sessions.end(session.token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.get("/lang/{lang}", include_in_schema=False)
    async def switch_language(request: Request, lang: Lang) -> Response:
        back = urlsplit(request.headers.get("referer", ""))
        same_host = back.netloc == request.headers.get("host", "")
        path = back.path if same_host and back.path.startswith("/") and back.path[1:2] not in ("/", "\\") else ""
        response = RedirectResponse(path or "/household", status_code=303)
        response.set_cookie(LANG_COOKIE, lang, samesite="strict", max_age=365 * 86400)
        return response

    @app.get("/", include_in_schema=False)
    async def home() -> Response:
        return RedirectResponse("/household", status_code=303)

    # -- household ------------------------------------------------------------------------------------

    def household() -> HouseholdOut:
        config = installer.config
        profile = config.profile
        return HouseholdOut(
            hub_id=config.hub_id,
            household_id=config.household_id,
            county=config.county,
            elder_name=profile.elder_name,
            address=profile.address,
            phone=profile.phone,
            contacts=list(profile.contacts),
            waking=config.rules.inactivity.waking,
        )

    def save_household(body: HouseholdIn, reminders: list[ReminderConfig] | None = None) -> None:
        def change(raw: dict[str, Any]) -> None:
            profile = ProfileConfig(
                elder_name=body.elder_name, address=body.address, phone=body.phone, contacts=body.contacts
            )
            raw["profile"] = profile.model_dump(mode="json", exclude_none=True)
            if body.waking:
                raw.setdefault("rules", {}).setdefault("inactivity", {})["waking"] = body.waking
            if reminders is not None:
                raw.setdefault("rules", {})["reminders"] = [r.model_dump(mode="json") for r in reminders]

        installer.update_config(change)

    @app.get("/household", response_class=HTMLResponse, include_in_schema=False)
    async def household_page(request: Request, session: SessionDep, saved: int = 0) -> Response:
        reminders = installer.config.rules.reminders
        rows = {
            "contacts": min(FORM_ROWS_MAX, max(3, len(installer.config.profile.contacts) + 1)),
            "reminders": min(FORM_ROWS_MAX, max(3, len(reminders) + 1)),
        }
        return page(request, "household.html", household=household(), reminders=reminders, rows=rows, saved=bool(saved))

    @app.post("/household", include_in_schema=False)
    async def household_form(request: Request, session: FormDep) -> Response:
        form = await request.form()

        def field(name: str) -> str:
            value = form.get(name, "")
            return value.strip() if isinstance(value, str) else ""

        contacts = [
            {
                "name": field(f"contact_name_{i}"),
                "phone": field(f"contact_phone_{i}"),
                "relation": field(f"contact_relation_{i}"),
            }
            for i in range(FORM_ROWS_MAX)
            if field(f"contact_name_{i}") or field(f"contact_phone_{i}")
        ]
        # Reminders keep their ids and what the form does not show (how long to wait for an answer).
        existing = {r.id: r for r in installer.config.rules.reminders}
        reminders: list[dict[str, Any]] = []
        for i in range(FORM_ROWS_MAX):
            if not (field(f"reminder_at_{i}") or field(f"reminder_text_{i}")):
                continue
            reminder_id = field(f"reminder_id_{i}") or next(
                f"r{n}"
                for n in range(1, 100)
                if f"r{n}" not in existing and f"r{n}" not in {r["id"] for r in reminders}
            )
            kept = existing.get(reminder_id)
            reminders.append(
                {
                    "id": reminder_id,
                    "at": field(f"reminder_at_{i}"),
                    "text": field(f"reminder_text_{i}"),
                    **({"answer_min": kept.answer_min} if kept else {}),
                }
            )
        waking = f"{field('waking_from')}-{field('waking_to')}" if field("waking_from") else None
        try:
            body = HouseholdIn(
                elder_name=field("elder_name"),
                address=field("address"),
                phone=field("phone") or None,
                contacts=contacts,
                waking=waking,
            )
            parsed = [ReminderConfig.model_validate(r) for r in reminders]
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        save_household(body, parsed)
        return RedirectResponse("/household?saved=1", status_code=303)

    @app.get("/api/session", tags=["session"])
    async def session_info(session: SessionDep) -> dict[str, str]:
        """The session's CSRF token, for the X-CSRF-Token header of changes."""
        return {"csrf": session.csrf}

    @app.get("/api/household", tags=["household"])
    async def get_household(session: SessionDep) -> HouseholdOut:
        return household()

    @app.put("/api/household", tags=["household"])
    async def put_household(body: HouseholdIn, session: ChangeDep) -> HouseholdOut:
        save_household(body)
        return household()

    # -- devices --------------------------------------------------------------------------------------

    def devices() -> list[DeviceOut]:
        service = installer.service
        offline = service.supervisor.offline() if service is not None and hasattr(service, "supervisor") else set()
        out = []
        for device in installer.config.devices:
            reading = service.book.get(device.id) if service is not None else None
            status = "offline" if device.id in offline else ("ok" if reading else "never")
            out.append(
                DeviceOut(
                    id=device.id,
                    kind=device.kind,
                    transport=device.transport,
                    room=device.room,
                    battery_percent=reading.battery_percent if reading else None,
                    signal=reading.signal if reading else None,
                    last_seen=datetime.fromtimestamp(reading.last_seen, UTC) if reading else None,
                    status=status,
                )
            )
        return out

    def add_device(device: DeviceConfig) -> None:
        def change(raw: dict[str, Any]) -> None:
            raw.setdefault("devices", []).append(device.model_dump(mode="json", exclude_none=True))

        installer.update_config(change)
        log.info("device %s (%s, %s) added by the installer", device.id, device.kind.value, device.transport.value)

    def remove_device(device_id: str) -> None:
        if all(d.id != device_id for d in installer.config.devices):
            raise ApiError(404, "not_found")

        def change(raw: dict[str, Any]) -> None:
            raw["devices"] = [d for d in raw.get("devices", []) if d.get("id") != device_id]

        installer.update_config(change)

    @app.get("/devices", response_class=HTMLResponse, include_in_schema=False)
    async def devices_page(request: Request, session: SessionDep) -> Response:
        return page(request, "devices.html", devices=devices())

    @app.post("/devices/{device_id}/remove", include_in_schema=False)
    async def remove_device_form(device_id: str, session: FormDep) -> Response:
        remove_device(device_id)
        return RedirectResponse("/devices", status_code=303)

    @app.get("/api/devices", tags=["devices"])
    async def get_devices(session: SessionDep) -> list[DeviceOut]:
        return devices()

    @app.post("/api/devices", tags=["devices"], status_code=201)
    async def post_device(body: DeviceConfig, session: ChangeDep) -> list[DeviceOut]:
        add_device(body)
        return devices()

    @app.delete("/api/devices/{device_id}", tags=["devices"])
    async def delete_device(device_id: str, session: ChangeDep) -> list[DeviceOut]:
        remove_device(device_id)
        return devices()

    # -- pairing --------------------------------------------------------------------------------------

    def nearby() -> list[NearbyBle]:
        ble = getattr(installer.service, "ble", None)
        if ble is None:
            return []
        known = {d.mac.upper() for d in installer.config.devices if d.mac}
        found = [
            NearbyBle(mac=mac, rssi=rssi, seen=datetime.fromtimestamp(seen, UTC), encrypted=bool(data[0] & 0x01))
            for mac, (rssi, seen, data) in list(ble.nearby.items())
            if mac.upper() not in known and data and time.time() - seen < NEARBY_FRESH_S
        ]
        return sorted(found, key=lambda n: -(n.rssi if n.rssi is not None else -127))

    def joined() -> list[JoinedZigbee]:
        zigbee = getattr(installer.service, "zigbee", None)
        if zigbee is None:
            return []
        known = {d.ieee.lower() for d in installer.config.devices if d.ieee}
        return [
            JoinedZigbee(ieee=ieee, kind=device.kind, joined=datetime.fromtimestamp(at, UTC))
            for ieee, (device, at) in list(zigbee.joined_unknown.items())
            if ieee.lower() not in known
        ]

    async def permit(seconds: int) -> datetime:
        service = await installer.running_service()
        if getattr(service, "zigbee", None) is None:
            raise ApiError(409, "no_zigbee")
        # Just after the hub restarted (a device was paired) the coordinator is still connecting.
        for attempt in range(20):
            try:
                await (await installer.running_service())._permit({"seconds": seconds})
                break
            except RuntimeError:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.5)
        until = datetime.now(UTC).timestamp() + seconds
        app.state.permit_until = until
        return datetime.fromtimestamp(until, UTC)

    @app.get("/pair", response_class=HTMLResponse, include_in_schema=False)
    async def pair_page(request: Request, session: SessionDep) -> Response:
        until = getattr(app.state, "permit_until", 0.0)
        open_until = datetime.fromtimestamp(until, UTC) if until > time.time() else None
        used = {d.pin for d in installer.config.devices if d.pin is not None}
        gpio = installer.config.gpio
        free_pins = [p for p in range(2, 28) if p not in used and p not in (gpio.siren_pin, gpio.led_pin)]
        tz = installer.config.rules.zone()
        return page(
            request,
            "pair.html",
            nearby=nearby(),
            joined=joined(),
            open_until=open_until.astimezone(tz).strftime("%H:%M:%S") if open_until else None,
            has_zigbee=getattr(installer.service, "zigbee", None) is not None,
            free_pins=free_pins,
            kinds=[k.value for k in DeviceKind],
        )

    def device_from_form(transport: Transport, **fields: Any) -> DeviceConfig:
        try:
            return DeviceConfig.model_validate(
                {"transport": transport.value, **{k: v for k, v in fields.items() if v not in ("", None)}}
            )
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None

    @app.post("/pair/ble", include_in_schema=False)
    async def pair_ble(
        session: FormDep,
        mac: Annotated[str, Form(max_length=17)],
        id: Annotated[str, Form(max_length=63)],
        kind: Annotated[str, Form(max_length=20)],
        room: Annotated[str, Form(max_length=40)] = "",
        key: Annotated[str, Form(max_length=64)] = "",
    ) -> Response:
        add_device(device_from_form(Transport.BLE, id=id, kind=kind, room=room, mac=mac, key=key.replace(" ", "")))
        return RedirectResponse("/devices", status_code=303)

    @app.post("/pair/zigbee/open", include_in_schema=False)
    async def pair_zigbee_open(session: FormDep) -> Response:
        await permit(120)
        return RedirectResponse("/pair#zigbee", status_code=303)

    @app.post("/pair/zigbee", include_in_schema=False)
    async def pair_zigbee(
        session: FormDep,
        ieee: Annotated[str, Form(max_length=23)],
        id: Annotated[str, Form(max_length=63)],
        kind: Annotated[str, Form(max_length=20)],
        room: Annotated[str, Form(max_length=40)] = "",
    ) -> Response:
        add_device(device_from_form(Transport.ZIGBEE, id=id, kind=kind, room=room, ieee=ieee))
        return RedirectResponse("/devices", status_code=303)

    @app.post("/pair/gpio", include_in_schema=False)
    async def pair_gpio(
        session: FormDep,
        id: Annotated[str, Form(max_length=63)],
        kind: Annotated[str, Form(max_length=20)],
        pin: Annotated[int, Form(ge=0, le=27)],
        room: Annotated[str, Form(max_length=40)] = "",
    ) -> Response:
        add_device(device_from_form(Transport.GPIO, id=id, kind=kind, room=room, pin=pin))
        return RedirectResponse("/devices", status_code=303)

    @app.get("/api/pairing/ble", tags=["pairing"])
    async def get_nearby(session: SessionDep) -> list[NearbyBle]:
        """BTHome devices heard nearby that are not in the household, strongest signal first."""
        return nearby()

    @app.post("/api/pairing/zigbee/permit", tags=["pairing"])
    async def post_permit(body: PermitIn, session: ChangeDep) -> dict[str, datetime]:
        return {"open_until": await permit(body.seconds)}

    @app.get("/api/pairing/zigbee", tags=["pairing"])
    async def get_joined(session: SessionDep) -> list[JoinedZigbee]:
        """Zigbee devices that joined and are not in the household yet."""
        return joined()

    # -- walk test ------------------------------------------------------------------------------------

    def walk_state() -> WalkTestOut:
        walk = installer.walk
        return WalkTestOut(
            running=walk.running,
            started_at=walk.started_at,
            devices=[
                WalkDevice(
                    id=d.id,
                    kind=d.kind,
                    room=d.room,
                    triggered_at=walk.triggered[d.id].at if d.id in walk.triggered else None,
                    signal=walk.triggered[d.id].signal if d.id in walk.triggered else None,
                )
                for d in installer.config.devices
            ],
        )

    @app.get("/walk-test", response_class=HTMLResponse, include_in_schema=False)
    async def walk_page(request: Request, session: SessionDep) -> Response:
        return page(request, "walk_test.html", walk=walk_state(), tz=installer.config.rules.zone())

    @app.post("/walk-test/start", include_in_schema=False)
    async def walk_start_form(session: FormDep) -> Response:
        await installer.start_walk_test()
        return RedirectResponse("/walk-test", status_code=303)

    @app.post("/walk-test/stop", include_in_schema=False)
    async def walk_stop_form(session: FormDep) -> Response:
        await installer.stop_walk_test()
        return RedirectResponse("/walk-test", status_code=303)

    @app.get("/api/walk-test", tags=["walk test"])
    async def get_walk(session: SessionDep) -> WalkTestOut:
        return walk_state()

    @app.post("/api/walk-test/start", tags=["walk test"])
    async def post_walk_start(session: ChangeDep) -> WalkTestOut:
        await installer.start_walk_test()
        return walk_state()

    @app.post("/api/walk-test/stop", tags=["walk test"])
    async def post_walk_stop(session: ChangeDep) -> WalkTestOut:
        await installer.stop_walk_test()
        return walk_state()

    @app.get("/api/walk-test/events", tags=["walk test"], response_class=StreamingResponse)
    async def walk_events(request: Request, session: SessionDep) -> StreamingResponse:
        """Server-sent events: one `triggered` event per device as it is triggered."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=256)
        tz = installer.config.rules.zone()

        def on_trigger(device_id: str, triggered: Any) -> None:
            data = {"id": device_id, "at": triggered.at.astimezone(tz).strftime("%H:%M:%S"), "signal": triggered.signal}
            if not queue.full():
                queue.put_nowait(json.dumps(data))

        stop_listening = installer.listen(on_trigger)

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n\n"
                for device_id, triggered in list(installer.walk.triggered.items()):  # what came before we connected
                    on_trigger(device_id, triggered)
                while not await request.is_disconnected() and sessions.get(session.token) is not None:
                    try:
                        data = await asyncio.wait_for(queue.get(), 15)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"event: triggered\ndata: {data}\n\n"
            finally:
                stop_listening()

        return StreamingResponse(stream(), media_type="text/event-stream")

    # -- test call ------------------------------------------------------------------------------------

    def call_results() -> list[PathResultOut]:
        return [PathResultOut(path=r.path, ok=r.ok, detail=r.detail, at=r.at) for r in installer.last_test_call]

    @app.get("/test-call", response_class=HTMLResponse, include_in_schema=False)
    async def call_page(request: Request, session: SessionDep) -> Response:
        return page(request, "test_call.html", results=call_results())

    @app.post("/test-call", include_in_schema=False)
    async def call_form(session: FormDep) -> Response:
        await installer.test_call()
        return RedirectResponse("/test-call", status_code=303)

    @app.post("/api/test-call", tags=["test call"])
    async def post_call(session: ChangeDep) -> list[PathResultOut]:
        """Send a test.call over every configured uplink; per path, whether it got through."""
        await installer.test_call()
        return call_results()

    # -- report ---------------------------------------------------------------------------------------

    async def make_report(name: str, lang: Lang) -> ReportOut:
        report, html, pdf = await installer.commission(name, lang)
        app.state.report_files = (html, pdf)
        return ReportOut(
            passed=report.passed,
            summary=report.summary(),
            html_url="/api/report/latest.html",
            pdf_url="/api/report/latest.pdf",
        )

    @app.get("/report", response_class=HTMLResponse, include_in_schema=False)
    async def report_page(request: Request, session: SessionDep, done: int = 0) -> Response:
        return page(request, "report_page.html", done=bool(done), walk=walk_state(), results=call_results())

    @app.post("/report", include_in_schema=False)
    async def report_form(
        request: Request, session: FormDep, installer_name: Annotated[str, Form(min_length=1, max_length=40)]
    ) -> Response:
        await make_report(installer_name.strip(), lang_of(request))
        return RedirectResponse("/report?done=1", status_code=303)

    @app.post("/api/report", tags=["report"])
    async def post_report(body: ReportIn, session: ChangeDep) -> ReportOut:
        """Make the commissioning report (kept on the hub) and send its summary to the centre."""
        return await make_report(body.installer, "zh")

    @app.get(
        "/api/report/latest.{fmt}",
        tags=["report"],
        response_class=FileResponse,
        responses={200: {"content": {"application/pdf": {}, "text/html": {}}, "description": "the last report"}},
    )
    async def latest_report(fmt: Literal["html", "pdf"], session: SessionDep) -> FileResponse:
        files = getattr(app.state, "report_files", None)
        if files is None:
            raise ApiError(404, "not_found")
        path = files[0] if fmt == "html" else files[1]
        media = "text/html; charset=utf-8" if fmt == "html" else "application/pdf"
        disposition = "inline" if fmt == "html" else "attachment"
        return FileResponse(path, media_type=media, filename=path.name, content_disposition_type=disposition)

    @app.get("/api/status", tags=["status"])
    async def status(session: SessionDep) -> dict[str, Any]:
        return await (await installer.running_service())._status({})

    return app


def _allowed_methods(app: FastAPI, path: str) -> set[str]:
    """The methods the routes at `path` take (for a 405's Allow header)."""
    methods: set[str] = set()
    for route in app.routes:
        match, _ = route.matches({"type": "http", "path": path, "method": "GET"})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return methods


def _host_is_an_address(host: str) -> bool:
    """Whether a Host header names the hub by IP address (with or without a port) or as localhost."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.removeprefix("[").split("]")[0]
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
