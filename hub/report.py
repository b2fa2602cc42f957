"""The installer's commissioning report for one household: its data, HTML and PDF, files, and summary.

This module owns the report an installer leaves behind when a household goes live: what was tested
(`DeviceResult`: each device's walk-test trigger, signal and battery; `UplinkResult`: each way out
of the home, MQTT, SIA DC-09, SMS), for whom (`CommissioningReport`: hub, county, household, the
elder, address and emergency contacts) and whether it all passed (`CommissioningReport.passed`).

- `render_html` fills the printable A4 template `hub/api/templates/report.html` (Jinja2, autoescaped:
  every name, address and room is user-supplied text) in Chinese or English; every string of the
  report is in `STRINGS`, device kinds in `KINDS` (both languages in each row), and the hub id is
  printed as a QR code (segno, inline SVG) so the centre can scan it from a paper copy.
- `render_pdf` prints that same HTML with WeasyPrint. The CSS names "WenQuanYi Micro Hei" (Debian
  fonts-wqy-microhei) and "Noto Sans CJK SC" first so that a CJK font is embedded: without one the
  elder's name comes out as empty boxes. WeasyPrint is allowed to fetch nothing but data: URLs.
- `save` keeps both files on the hub, written atomically with mode 0600 (they hold personal data).
- `CommissioningReport.summary` is what the centre gets in an `info.commissioned` event's details:
  counts, device ids and kinds with pass/fail and times, uplink results, installer, overall result;
  never the elder's name, address or contacts' names and phones (free text that goes out, such as
  an uplink's detail or a room name, is scrubbed of them and of any long run of digits).

All times are aware datetimes; the report shows them in the household's time zone (`timezone`).
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

import jinja2
import segno
from markupsafe import Markup

from hub.files import fsync_directory, write_atomic

Lang = Literal["zh", "en"]
LANGS: tuple[Lang, ...] = ("zh", "en")
TEMPLATE = "report.html"

# Every string the report prints, in both languages; `lang` picks one set.
STRINGS: dict[Lang, dict[str, str]] = {
    "zh": {
        "title": "安居 居家安全 安装验收报告",
        "report_no": "报告编号",
        "passed": "验收通过",
        "failed": "未通过",
        "passed_note": "全部 {devices} 个设备走测触发，全部 {uplinks} 条上报通道测试成功。",
        "failed_note": "设备走测 {devices_ok}/{devices} 触发，上报通道 {uplinks_ok}/{uplinks} 成功。",
        "nothing_tested": "没有记录任何设备或上报通道的测试结果。",
        "section_household": "一、基本信息",
        "hub_id": "主机编号",
        "county": "县（区）",
        "household_id": "户号",
        "elder_name": "老人姓名",
        "address": "住址",
        "installer": "安装人员",
        "date": "验收时间",
        "section_contacts": "二、紧急联系人",
        "contact_name": "姓名",
        "contact_relation": "关系",
        "contact_phone": "电话",
        "no_contacts": "未登记紧急联系人",
        "section_devices": "三、设备走测",
        "device_id": "设备编号",
        "kind": "类型",
        "transport": "通信方式",
        "room": "位置",
        "model": "型号",
        "signal": "信号",
        "battery": "电量",
        "walk_test": "走测结果",
        "not_triggered": "未触发",
        "no_devices": "未登记设备",
        "section_uplinks": "四、上报通道测试",
        "path": "通道",
        "result": "结果",
        "detail": "说明",
        "time": "时间",
        "ok": "成功",
        "not_ok": "失败",
        "no_uplinks": "未测试上报通道",
        "section_sign": "五、签字确认",
        "sign_installer": "安装人员签字",
        "sign_household": "老人或家属签字",
        "sign_date": "日期",
        "footer": "安居 居家安全 · 安装验收报告",
        "qr_caption": "主机编号二维码",
        "timezone": "时区",
    },
    "en": {
        "title": "Anju home-safety commissioning report",
        "report_no": "Report no.",
        "passed": "PASS",
        "failed": "FAIL",
        "passed_note": "All {devices} devices triggered in the walk test; all {uplinks} uplinks reached the centre.",
        "failed_note": "Walk test: {devices_ok} of {devices} devices triggered. Uplinks: {uplinks_ok} of {uplinks} ok.",
        "nothing_tested": "No device or uplink test results were recorded.",
        "section_household": "1. Household",
        "hub_id": "Hub ID",
        "county": "County",
        "household_id": "Household ID",
        "elder_name": "Resident",
        "address": "Address",
        "installer": "Installer",
        "date": "Commissioned",
        "section_contacts": "2. Emergency contacts",
        "contact_name": "Name",
        "contact_relation": "Relation",
        "contact_phone": "Phone",
        "no_contacts": "No emergency contacts recorded",
        "section_devices": "3. Devices (walk test)",
        "device_id": "Device ID",
        "kind": "Kind",
        "transport": "Transport",
        "room": "Room",
        "model": "Model",
        "signal": "Signal",
        "battery": "Battery",
        "walk_test": "Walk test",
        "not_triggered": "not triggered",
        "no_devices": "No devices recorded",
        "section_uplinks": "4. Uplinks to the centre",
        "path": "Path",
        "result": "Result",
        "detail": "Detail",
        "time": "Time",
        "ok": "OK",
        "not_ok": "Failed",
        "no_uplinks": "No uplink tests recorded",
        "section_sign": "5. Signatures",
        "sign_installer": "Installer's signature",
        "sign_household": "Resident or family signature",
        "sign_date": "Date",
        "footer": "Anju home safety · commissioning report",
        "qr_caption": "Hub ID",
        "timezone": "Time zone",
    },
}

# Device kinds (hub.model.DeviceKind values): (Chinese, English); both are printed in each row.
KINDS: dict[str, tuple[str, str]] = {
    "pullcord": ("拉绳报警", "Pull cord"),
    "smoke": ("烟雾报警器", "Smoke alarm"),
    "pendant": ("随身报警器", "Pendant"),
    "button": ("按钮", "Button"),
    "sos": ("紧急按钮", "SOS button"),
    "radar": ("跌倒雷达", "Fall radar"),
    "contact": ("门磁", "Door contact"),
    "motion": ("人体感应", "Motion sensor"),
    "power": ("电源", "Mains power"),
    "hub_button": ("主机按钮", "Hub button"),
}

TRANSPORTS: dict[str, tuple[str, str]] = {
    "gpio": ("有线 GPIO", "Wired GPIO"),
    "ble": ("蓝牙 BLE", "Bluetooth LE"),
    "zigbee": ("Zigbee", "Zigbee"),
}

UPLINK_PATHS: dict[str, tuple[str, str]] = {
    "mqtt": ("MQTT 中心平台", "MQTT (centre platform)"),
    "dc09": ("SIA DC-09 报警中心", "SIA DC-09 (alarm receiver)"),
    "sms": ("短信", "SMS"),
}

LOW_BATTERY_PERCENT = 20  # printed in red below this: the installer should change it before leaving
_DASH = "—"


@dataclass(frozen=True)
class DeviceResult:
    id: str
    kind: str  # a hub.model.DeviceKind value
    transport: str  # a hub.model.Transport value
    room: str | None
    model: str | None
    signal: str | None  # as the radio reports it, e.g. "-67 dBm" or "LQI 180"; None for wired devices
    battery_percent: int | None
    walk_test_at: datetime | None  # None: not triggered during the walk test

    @property
    def triggered(self) -> bool:
        return self.walk_test_at is not None


@dataclass(frozen=True)
class UplinkResult:
    path: str  # "mqtt", "dc09", "sms"
    ok: bool
    detail: str
    at: datetime | None


@dataclass(frozen=True)
class CommissioningReport:
    hub_id: str
    county: str
    household_id: str
    elder_name: str
    address: str
    contacts: list[tuple[str, str, str]]  # (name, phone, relation)
    devices: list[DeviceResult]
    uplinks: list[UplinkResult]
    installer: str
    created_at: datetime
    timezone: str = "Asia/Shanghai"

    def __post_init__(self) -> None:
        ZoneInfo(self.timezone)  # an unknown zone fails here, not halfway through a render
        moments = [("created_at", self.created_at)]
        moments += [(f"device {d.id} walk_test_at", d.walk_test_at) for d in self.devices if d.walk_test_at]
        moments += [(f"uplink {u.path} at", u.at) for u in self.uplinks if u.at]
        for what, moment in moments:
            if moment.tzinfo is None or moment.utcoffset() is None:
                raise ValueError(f"{what} is a naive datetime; the report needs aware times ({moment})")

    @property
    def passed(self) -> bool:
        """Every device triggered in the walk test and every uplink reached the centre.

        A report that tested nothing (no devices or no uplinks) has not passed.
        """
        return (
            bool(self.devices)
            and bool(self.uplinks)
            and all(d.triggered for d in self.devices)
            and all(u.ok for u in self.uplinks)
        )

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def summary(self) -> dict[str, Any]:
        """Details for the `info.commissioned` event: no personal data of the elder or the contacts."""
        scrub = _scrubber(self)
        return {
            "passed": self.passed,
            "installer": self.installer,
            "created_at": _iso(self.created_at),
            "timezone": self.timezone,
            "devices_total": len(self.devices),
            "devices_triggered": sum(d.triggered for d in self.devices),
            "uplinks_total": len(self.uplinks),
            "uplinks_ok": sum(u.ok for u in self.uplinks),
            "devices": [
                {
                    "id": d.id,
                    "kind": d.kind,
                    "transport": d.transport,
                    "room": scrub(d.room),
                    "model": scrub(d.model),
                    "signal": scrub(d.signal),
                    "battery_percent": d.battery_percent,
                    "triggered": d.triggered,
                    "walk_test_at": _iso(d.walk_test_at),
                }
                for d in self.devices
            ],
            "uplinks": [
                {"path": u.path, "ok": u.ok, "detail": scrub(u.detail), "at": _iso(u.at)} for u in self.uplinks
            ],
        }

    def filename_stem(self) -> str:
        """`report-<hub>-<YYYYmmddTHHMMSS>`, local time of the household; the hub id made file-safe."""
        hub = re.sub(r"[^A-Za-z0-9._-]", "_", self.hub_id).lstrip(".") or "hub"
        return f"report-{hub}-{self.created_at.astimezone(self.zone):%Y%m%dT%H%M%S}"


def render_html(report: CommissioningReport, lang: Lang = "zh") -> str:
    """The report as a standalone printable A4 HTML page (no external resources)."""
    if lang not in STRINGS:
        raise ValueError(f"unknown report language {lang!r}; expected one of {', '.join(LANGS)}")
    return _environment().get_template(TEMPLATE).render(_context(report, lang))


def render_pdf(report: CommissioningReport, lang: Lang = "zh") -> bytes:
    """The report as PDF, printed by WeasyPrint from `render_html`'s page."""
    return _pdf(render_html(report, lang))


def save(report: CommissioningReport, directory: Path, lang: Lang = "zh") -> tuple[Path, Path]:
    """Write `report-<hub>-<YYYYmmddTHHMMSS>.html` and `.pdf` into `directory`, mode 0600 from the
    first byte, each atomically (a temporary file, fsync, rename); returns (html path, pdf path).
    A directory that does not exist yet is created with mode 0700."""
    html = render_html(report, lang)
    pdf = _pdf(html)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    stem = report.filename_stem()
    html_path, pdf_path = directory / f"{stem}.html", directory / f"{stem}.pdf"
    write_atomic(pdf_path, pdf)
    write_atomic(html_path, html.encode())
    fsync_directory(directory)
    return html_path, pdf_path


# -- rendering ---------------------------------------------------------------------------------


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("hub", "api/templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _context(report: CommissioningReport, lang: Lang) -> dict[str, Any]:
    t = STRINGS[lang]
    zone = report.zone
    created = report.created_at.astimezone(zone)
    index = LANGS.index(lang)

    def local(moment: datetime) -> str:
        moment = moment.astimezone(zone)
        return f"{moment:%H:%M:%S}" if moment.date() == created.date() else f"{moment:%Y-%m-%d %H:%M}"

    def pair(table: dict[str, tuple[str, str]], key: str) -> tuple[str, str]:
        """(label in `lang`, label in the other language or "") for a known key; the key itself otherwise."""
        if key not in table:
            return key, ""
        labels = table[key]
        return labels[index], labels[1 - index]

    devices = []
    for device in report.devices:
        kind, kind_other = pair(KINDS, device.kind)
        battery = device.battery_percent
        devices.append(
            {
                "id": device.id,
                "kind": kind,
                "kind_other": kind_other,
                "transport": pair(TRANSPORTS, device.transport)[0],
                "room": device.room or _DASH,
                "model": device.model or _DASH,
                "signal": device.signal or _DASH,
                "battery": _DASH if battery is None else f"{battery}%",
                "battery_low": battery is not None and battery < LOW_BATTERY_PERCENT,
                "triggered": device.triggered,
                "walk_test": local(device.walk_test_at) if device.walk_test_at else t["not_triggered"],
            }
        )
    uplinks = [
        {
            "path": pair(UPLINK_PATHS, uplink.path)[0],
            "ok": uplink.ok,
            "detail": uplink.detail or _DASH,
            "at": local(uplink.at) if uplink.at else _DASH,
        }
        for uplink in report.uplinks
    ]
    counts = {
        "devices": len(report.devices),
        "devices_ok": sum(d.triggered for d in report.devices),
        "uplinks": len(report.uplinks),
        "uplinks_ok": sum(u.ok for u in report.uplinks),
    }
    if report.passed:
        verdict_note = t["passed_note"].format(**counts)
    elif not report.devices and not report.uplinks:
        verdict_note = t["nothing_tested"]
    else:
        verdict_note = t["failed_note"].format(**counts)
    offset = created.strftime("%z")
    return {
        "t": t,
        "lang": "zh-CN" if lang == "zh" else "en",
        "report": report,
        "report_no": report.filename_stem().removeprefix("report-"),
        "date": f"{created:%Y-%m-%d %H:%M}",
        "zone": f"{report.timezone}, UTC{offset[:3]}:{offset[3:]}",
        "passed": report.passed,
        "verdict_note": verdict_note,
        "devices": devices,
        "uplinks": uplinks,
        "qr_svg": _qr_svg(report.hub_id),
    }


def _qr_svg(text: str) -> Markup:
    """The QR code of `text` as an inline <svg> (segno writes only paths: no text of ours inside)."""
    qr = segno.make(text, error="m", micro=False)
    return Markup(qr.svg_inline(scale=1, border=2, omitsize=True, dark="#000", light="#fff"))


def _pdf(html: str) -> bytes:
    import weasyprint  # heavy (Pango, fontconfig): loaded only when a PDF is made

    fetcher: Any = None
    with contextlib.suppress(ImportError):  # WeasyPrint >= 66: fetch data: URLs only, never the network
        from weasyprint.urls import URLFetcher

        fetcher = URLFetcher(allowed_protocols={"data"})
    pdf = weasyprint.HTML(string=html, url_fetcher=fetcher).write_pdf()
    assert isinstance(pdf, bytes)
    return pdf


# -- summary -----------------------------------------------------------------------------------

_REDACTED = "***"
_LONG_NUMBER = re.compile(r"\+?\d{7,}")  # a phone number written without separators, or an ID number


def _scrubber(report: CommissioningReport) -> Callable[[str | None], str | None]:
    """A function that removes the report's personal data from free text bound for the centre."""
    literals = {report.elder_name, report.address}
    literals |= {name for name, _, _ in report.contacts}
    literals = {text.strip() for text in literals if len(text.strip()) >= 2}
    patterns = [re.escape(text) for text in sorted(literals, key=len, reverse=True)]
    for _, phone, _ in report.contacts:
        digits = re.sub(r"\D", "", phone)
        if len(digits) >= 5:  # the same number however it is spaced or dashed
            patterns.append(r"[\s-]?".join(digits))
    personal = re.compile("|".join(patterns)) if patterns else None

    def scrub(text: str | None) -> str | None:
        if text is None:
            return None
        if personal is not None:
            text = personal.sub(_REDACTED, text)
        return _LONG_NUMBER.sub(_REDACTED, text)

    return scrub


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
