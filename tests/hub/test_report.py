"""The commissioning report: bilingual HTML with the elder's data escaped, a PDF whose Chinese text is
real text in an embedded CJK font (not boxes), the pass rule, a summary for the centre without personal
data, and 0600 files on the hub."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from cloud_bridge.contract import validate
from hub import report as report_module
from hub.model import EventType, Origin
from hub.report import CommissioningReport, DeviceResult, UplinkResult, render_html, render_pdf, save

ELDER = "王秀英"
HOSTILE_ELDER = f"{ELDER}<script>alert(1)</script>"
ADDRESS = "河北省沧州市青县清州镇幸福路12号3单元101室"
CONTACTS = [("李明", "138 0013 8000", "儿子"), ("张华", "0317-4021234", "邻居")]
T0 = datetime(2025, 3, 14, 2, 0, tzinfo=UTC)  # 10:00 in Asia/Shanghai


def _device(
    device_id: str, kind: str, transport: str = "zigbee", minute: int | None = 10, **fields: Any
) -> DeviceResult:
    values: dict[str, Any] = {"room": "卧室", "model": "SNZB-03", "signal": "LQI 180", "battery_percent": 87}
    values.update(fields)
    at = None if minute is None else T0 + timedelta(minutes=minute)
    return DeviceResult(device_id, kind, transport, walk_test_at=at, **values)


def _report(**overrides: Any) -> CommissioningReport:
    fields: dict[str, Any] = {
        "hub_id": "hub-qx-0042",
        "county": "qingxian",
        "household_id": "hh-0042",
        "elder_name": HOSTILE_ELDER,
        "address": ADDRESS,
        "contacts": CONTACTS,
        "devices": [
            _device(
                "pullcord-bath", "pullcord", "gpio", 13, room="卫生间", model=None, signal=None, battery_percent=None
            ),
            _device("smoke-kitchen", "smoke", room="厨房"),
            _device("pendant-1", "pendant", "ble", 9, room="随身", signal="-67 dBm", battery_percent=15),
            _device("radar-bed", "radar", minute=None, battery_percent=None),
            _device("hub-button", "hub_button", "gpio", 20, room="客厅", model=None, signal=None, battery_percent=None),
        ],
        "uplinks": [
            UplinkResult("mqtt", True, "acked in 180 ms", T0 + timedelta(minutes=21)),
            UplinkResult("dc09", True, "ACK from receiver 10.8.0.1:12000", T0 + timedelta(minutes=22)),
            UplinkResult("sms", True, "test SMS to 13800138000 (李明) delivered", T0 + timedelta(minutes=23)),
        ],
        "installer": "赵工 (Q-017)",
        "created_at": T0 + timedelta(minutes=30),
    }
    fields.update(overrides)
    return CommissioningReport(**fields)


def _all_triggered(report: CommissioningReport) -> CommissioningReport:
    devices = [d if d.walk_test_at else dataclasses.replace(d, walk_test_at=T0) for d in report.devices]
    return dataclasses.replace(report, devices=devices)


@pytest.fixture(scope="module")
def report() -> CommissioningReport:
    return _report()


@pytest.fixture(scope="module")
def html_zh(report: CommissioningReport) -> str:
    return render_html(report, "zh")


@pytest.fixture(scope="module")
def html_en(report: CommissioningReport) -> str:
    return render_html(report, "en")


@pytest.fixture(scope="module")
def pdf(report: CommissioningReport) -> Iterator[tuple[bytes, float]]:
    """The PDF, rendered once for the module, with how long that took."""
    started = time.perf_counter()
    data = render_pdf(report, "zh")
    yield data, time.perf_counter() - started


# -- HTML --------------------------------------------------------------------------------------


def test_user_text_is_escaped(html_zh: str, html_en: str) -> None:
    for html in (html_zh, html_en):
        assert f"{ELDER}&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "<script" not in html
        assert ADDRESS in html and "138 0013 8000" in html


def test_qr_code_of_the_hub_id_is_inline_svg(report: CommissioningReport, html_zh: str) -> None:
    assert "<svg" in html_zh
    assert str(report_module._qr_svg(report.hub_id)) in html_zh
    assert report_module._qr_svg("hub-qx-0043") != report_module._qr_svg(report.hub_id)


def test_css_names_a_cjk_font_first(html_zh: str) -> None:
    assert 'font-family: "WenQuanYi Micro Hei", "Noto Sans CJK SC", sans-serif' in html_zh


def test_chinese_labels(html_zh: str) -> None:
    for label in ("安居 居家安全 安装验收报告", "老人姓名", "紧急联系人", "走测结果", "上报通道测试", "未通过"):
        assert label in html_zh
    # kinds in both languages; walk-test times in the household's zone (02:13Z is 10:13 in Shanghai)
    assert "拉绳报警" in html_zh and "Pull cord" in html_zh and "主机按钮" in html_zh
    assert "✓ 10:13:00" in html_zh and "✗ 未触发" in html_zh
    assert "2025-03-14 10:30" in html_zh and "Asia/Shanghai" in html_zh
    assert "Anju home-safety commissioning report" not in html_zh and "Resident" not in html_zh
    assert '<html lang="zh-CN">' in html_zh


def test_english_labels(html_en: str) -> None:
    for label in ("Anju home-safety commissioning report", "Resident", "Emergency contacts", "Walk test", "FAIL"):
        assert label in html_en
    assert "✗ not triggered" in html_en and "Fall radar" in html_en and "跌倒雷达" in html_en
    assert "安装验收报告" not in html_en and "老人姓名" not in html_en and "未触发" not in html_en


def test_pass_banner(report: CommissioningReport) -> None:
    passed = _all_triggered(report)
    assert "验收通过" in render_html(passed, "zh") and "未通过" not in render_html(passed, "zh")
    assert "PASS" in render_html(passed, "en")


def test_unknown_kind_transport_and_path_are_printed_as_given() -> None:
    odd = _report(
        devices=[_device("valve-1", "water_valve", "thread")], uplinks=[UplinkResult("lorawan", False, "", None)]
    )
    html = render_html(odd, "en")
    assert "water_valve" in html and "thread" in html and "lorawan" in html


def test_bad_input_fails_early(report: CommissioningReport) -> None:
    with pytest.raises(ValueError, match="unknown report language"):
        render_html(report, "fr")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="naive"):
        _report(created_at=datetime(2025, 3, 14, 10, 30))
    with pytest.raises(ValueError, match="naive"):
        _report(devices=[DeviceResult("x", "smoke", "zigbee", None, None, None, None, datetime(2025, 3, 14))])


# -- PDF ---------------------------------------------------------------------------------------


def _font_names(reader: PdfReader) -> set[str]:
    names: set[str] = set()

    def visit(font: Any) -> None:
        font = font.get_object()
        if "/BaseFont" in font:
            names.add(str(font["/BaseFont"]))
        descriptor = font.get("/FontDescriptor")
        if descriptor is not None and "/FontName" in descriptor.get_object():
            names.add(str(descriptor.get_object()["/FontName"]))
        for descendant in font.get("/DescendantFonts", []):
            visit(descendant)

    for page in reader.pages:
        resources: Any = page["/Resources"].get_object()
        fonts = resources.get("/Font", {})
        for font in fonts.get_object().values():
            visit(font)
    return names


def test_pdf_embeds_a_cjk_font_and_real_chinese_text(pdf: tuple[bytes, float]) -> None:
    data, _ = pdf
    assert data.startswith(b"%PDF")
    reader = PdfReader(io.BytesIO(data))
    assert len(reader.pages) == 1
    fonts = _font_names(reader)
    assert any("WenQuanYi" in name for name in fonts), fonts
    text = "".join(page.extract_text() for page in reader.pages)
    # extracted through the font's ToUnicode map: these are characters, not boxes
    for expected in (ELDER, "安装验收报告", "拉绳报警", "卫生间", "未触发", "hub-qx-0042"):
        assert expected in text, expected


def test_pdf_renders_fast(pdf: tuple[bytes, float]) -> None:
    _, seconds = pdf
    assert seconds < 2.0, f"one-page PDF took {seconds:.2f} s"


# -- pass rule ---------------------------------------------------------------------------------


def test_passed_needs_every_device_triggered_and_every_uplink_ok(report: CommissioningReport) -> None:
    good = _all_triggered(report)
    assert good.passed
    assert not report.passed  # radar-bed was never triggered
    failed_sms = [dataclasses.replace(u, ok=u.path != "sms") for u in good.uplinks]
    assert not dataclasses.replace(good, uplinks=failed_sms).passed


def test_nothing_tested_is_not_a_pass(report: CommissioningReport) -> None:
    good = _all_triggered(report)
    assert not dataclasses.replace(good, devices=[]).passed
    assert not dataclasses.replace(good, uplinks=[]).passed


# -- summary for the centre --------------------------------------------------------------------


def test_summary_has_results_and_no_personal_data(report: CommissioningReport) -> None:
    summary = report.summary()
    text = json.dumps(summary, ensure_ascii=False)
    for personal in (ELDER, "script", ADDRESS, "幸福路", "李明", "张华", "13800138000", "138 0013 8000", "4021234"):
        assert personal not in text, personal
    assert summary["passed"] is False
    assert summary["installer"] == "赵工 (Q-017)"
    assert (summary["devices_total"], summary["devices_triggered"]) == (5, 4)
    assert (summary["uplinks_total"], summary["uplinks_ok"]) == (3, 3)
    by_id = {d["id"]: d for d in summary["devices"]}
    assert by_id["pullcord-bath"]["kind"] == "pullcord"
    assert by_id["pullcord-bath"]["triggered"] is True
    assert by_id["pullcord-bath"]["walk_test_at"] == "2025-03-14T02:13:00.000Z"
    assert by_id["radar-bed"]["triggered"] is False
    assert by_id["radar-bed"]["walk_test_at"] is None
    sms = next(u for u in summary["uplinks"] if u["path"] == "sms")
    assert sms["ok"] is True and sms["at"] == "2025-03-14T02:23:00.000Z"
    assert sms["detail"].startswith("test SMS to ***")


def test_summary_scrubs_personal_data_from_free_text() -> None:
    leaky = _report(
        elder_name=ELDER,
        devices=[_device("smoke-1", "smoke", room=f"{ELDER}的卧室", model="138-0013-8000")],
        uplinks=[UplinkResult("sms", False, f"张华 0317 4021234 unreachable at {ADDRESS}", None)],
    )
    text = json.dumps(leaky.summary(), ensure_ascii=False)
    for personal in (ELDER, "张华", "4021234", "0013", ADDRESS):
        assert personal not in text, personal
    assert "的卧室" in text and "unreachable" in text


def test_summary_fits_the_commissioned_event_of_the_contract(report: CommissioningReport) -> None:
    origin = Origin(report.hub_id, report.household_id, report.county)
    event = origin.event(EventType.INFO_COMMISSIONED, None, None, None, report.created_at, **report.summary())
    validate("event", event.with_seq(1).to_message(attempt=1))


# -- files -------------------------------------------------------------------------------------


def test_save_writes_both_files_0600_atomically(report: CommissioningReport, tmp_path: Path) -> None:
    directory = tmp_path / "reports"
    old_umask = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        html_path, pdf_path = save(report, directory)
    finally:
        os.umask(old_umask)
    assert html_path == directory / "report-hub-qx-0042-20250314T103000.html"
    assert pdf_path == directory / "report-hub-qx-0042-20250314T103000.pdf"
    for path in (html_path, pdf_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert pdf_path.read_bytes().startswith(b"%PDF")
    assert "&lt;script&gt;" in html_path.read_text()
    assert sorted(p.name for p in directory.iterdir()) == sorted([html_path.name, pdf_path.name])  # no temp files

    html_path.chmod(0o644)  # a file left readable by someone else is replaced, not rewritten in place
    save(report, directory, "en")
    assert stat.S_IMODE(html_path.stat().st_mode) == 0o600
    assert "Resident" in html_path.read_text()


def test_file_names_use_local_time_and_a_safe_hub_id() -> None:
    east = timezone(timedelta(hours=9))
    odd = _report(hub_id="../hub 7", created_at=datetime(2025, 3, 14, 23, 59, 58, tzinfo=east))
    assert odd.filename_stem() == "report-_hub_7-20250314T225958"
