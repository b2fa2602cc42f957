"""The installer's visit in a real browser: Debian's Chromium, driven by Playwright, at phone size,
against a hub serving a simulated household (a private broker and centre, the fake BlueZ with a
BTHome pendant, the virtual Zigbee coordinator with a smoke alarm, simulated GPIO pins).

Log in, fill in the household, pair the pendant (heard nearby) and the smoke alarm (joined while
joining is open), run the walk test until every device is green, make a test call, download the
report. With ANJU_SCREENSHOTS=DIR each page is saved there at 360 px wide (docs/screenshots/ holds
the last ones, for docs/INSTALLER.md).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from playwright.async_api import Page, async_playwright, expect

from simulator.runner import ScenarioRunner
from simulator.scenario import Scenario, Step

CHROMIUM = Path("/usr/bin/chromium")
PIN = "20261129"
PENDANT_MAC = "A4:C1:38:00:00:42"
PENDANT_KEY = "231d39c1d7cc1ab1aee224cd096db932"
SMOKE_IEEE = "00:0d:6f:00:0a:90:69:e7"
# As root Chromium needs --no-sandbox; the rest keep it off this machine's closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

SCENARIO = f"""
name: installer-visit
household: {{id: hh-0042, county: minle}}
api: {{pin: "{PIN}"}}
devices:
  - {{id: cord-bath, kind: pullcord, transport: gpio, pin: 17, room: 卫生间}}
  - {{id: pendant, kind: pendant, transport: ble, mac: "{PENDANT_MAC}", key: {PENDANT_KEY}}}
  - {{id: smoke-kitchen, kind: smoke, transport: zigbee, ieee: "{SMOKE_IEEE}"}}
unpaired: [pendant, smoke-kitchen]
steps:
  - {{at: 0, device: smoke-kitchen, do: join}}   # joins when the installer opens joining (played by hand)
"""

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is installed by make setup")


async def _shot(page: Page, name: str) -> None:
    folder = os.environ.get("ANJU_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


async def _reload_until(page: Page, selector: str, timeout_s: float = 20) -> None:
    """Reload a server-rendered page until `selector` shows (the hub is still hearing the device)."""
    for _ in range(int(timeout_s / 0.5)):
        if await page.locator(selector).count():
            return
        await page.wait_for_timeout(500)
        await page.reload()
    raise AssertionError(f"{selector} never appeared on {page.url}")


async def test_an_installer_visit_from_a_phone(tmp_path: Path, prompt_cache: Path) -> None:
    scenario = Scenario.model_validate(yaml.safe_load(SCENARIO))
    runner = ScenarioRunner(scenario, tmp_path / "run", prompt_cache)
    await runner.start()
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            context = await browser.new_context(
                viewport={"width": 360, "height": 740},
                device_scale_factor=2,
                is_mobile=True,
                has_touch=True,
                accept_downloads=True,
            )
            page = await context.new_page()
            base = f"http://127.0.0.1:{runner.api_port}"
            await _visit(page, base, runner, tmp_path)
            await browser.close()
    finally:
        await runner.stop()


async def _visit(page: Page, base: str, runner: ScenarioRunner, tmp_path: Path) -> None:
    # 1. Log in with the PIN from the hub's label (a wrong one first).
    await page.goto(f"{base}/household")
    await expect(page).to_have_url(re.compile(r"/login"))
    await _shot(page, "01-login")
    await page.fill("input[name=pin]", "11111111")
    await page.click("button[type=submit]")
    await expect(page.locator("[role=alert]")).to_contain_text("还可以试 4 次")
    await page.fill("input[name=pin]", PIN)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(re.compile(r"/household"))

    # 2. The household.
    await page.fill("input[name=elder_name]", "王秀英")
    await page.fill("input[name=address]", "民乐县 幸福路 8 号")
    await page.fill("input[name=contact_name_0]", "李强")
    await page.fill("input[name=contact_phone_0]", "13900000002")
    await page.fill("input[name=contact_relation_0]", "儿子")
    await page.fill("input[name=reminder_at_0]", "08:00")
    await page.fill("input[name=reminder_text_0]", "吃降压药")
    await page.click("main button[type=submit]")
    await expect(page.locator("[role=status]")).to_contain_text("已保存")
    await _shot(page, "02-household")

    # 3. Pair the BTHome pendant, heard nearby.
    await page.goto(f"{base}/pair")
    await _reload_until(page, f'[data-mac="{PENDANT_MAC}"]')
    await _shot(page, "03-pair")
    card = page.locator(f'[data-mac="{PENDANT_MAC}"]')
    await card.locator("summary").click()
    await card.locator("input[name=id]").fill("pendant")
    await card.locator("select[name=kind]").select_option("pendant")
    await card.locator("input[name=room]").fill("卧室")
    await card.locator("input[name=key]").fill(PENDANT_KEY)
    await card.locator("button[type=submit]").click()
    await expect(page).to_have_url(re.compile(r"/devices"))
    await expect(page.locator('[data-device="pendant"]')).to_be_visible()

    # 4. Open Zigbee joining; the smoke alarm joins; pair it.
    await page.goto(f"{base}/pair")
    await _reload_until(page, "#zigbee button[type=submit]")  # the hub has restarted with the pendant
    await page.click("#zigbee form[action='/pair/zigbee/open'] button")
    await expect(page.locator("#zigbee [role=status]")).to_contain_text("Zigbee 配对已打开")
    await runner.play(Step(at=0, device="smoke-kitchen", do="join"))
    await _reload_until(page, f'[data-ieee="{SMOKE_IEEE}"]')
    card = page.locator(f'[data-ieee="{SMOKE_IEEE}"]')
    await card.locator("input[name=id]").fill("smoke-kitchen")
    await card.locator("select[name=kind]").select_option("smoke")
    await card.locator("input[name=room]").fill("厨房")
    await card.locator("button[type=submit]").click()
    await expect(page.locator('[data-device="smoke-kitchen"]')).to_be_visible()
    await _reload_until(page, '[data-device="pendant"].status-ok')
    await _shot(page, "04-devices")

    # 5. The walk test: every device grey, then green as it is triggered.
    await page.goto(f"{base}/walk-test")
    await page.click("form[action='/walk-test/start'] button")
    await expect(page.locator(".walk.waiting")).to_have_count(3)
    await _shot(page, "05-walk-test-start")
    await runner.play(Step(at=0, device="cord-bath", do="pull"))
    await runner.play(Step(at=0, device="pendant", do="press"))
    await runner.play(Step(at=0, device="smoke-kitchen", do="smoke"))
    await expect(page.locator(".walk.passed")).to_have_count(3, timeout=20_000)
    await expect(page.locator("#all-passed")).to_be_visible()
    await expect(page.locator('[data-device="pendant"] .result')).to_contain_text("dBm")
    await _shot(page, "06-walk-test-done")

    # 6. The test call: the centre acknowledges it over MQTT.
    await page.goto(f"{base}/test-call")
    await page.click("main form button")
    await expect(page.locator('tr[data-path="mqtt"].passed')).to_be_visible(timeout=20_000)
    await _shot(page, "07-test-call")

    # 7. The report, downloaded as a PDF.
    await page.goto(f"{base}/report")
    await page.fill("input[name=installer_name]", "张师傅")
    await page.click("main form button")
    await expect(page.locator("[role=status]")).to_contain_text("报告已生成")
    await _shot(page, "08-report")
    async with page.expect_download() as download_info:
        await page.click("a[href='/api/report/latest.pdf']")
    download = await download_info.value
    pdf = tmp_path / "report.pdf"
    await download.save_as(pdf)
    assert pdf.read_bytes().startswith(b"%PDF")
    await page.goto(f"{base}/api/report/latest.html")
    await expect(page.locator("body")).to_contain_text("王秀英")
    folder = os.environ.get("ANJU_SCREENSHOTS")
    if folder:
        shutil.copy(pdf, Path(folder) / "report-example.pdf")
    await page.goto(f"{base}/walk-test")
    await page.click("form[action='/walk-test/stop'] button")
