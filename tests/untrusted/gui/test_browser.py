"""The GUI in a real browser: headless Chromium driven by Selenium through Debian's
chromedriver, against the GUI process and a real core. What a user would see: values that
appear and change live, a point that goes STALE looking stale, the chart drawn from history,
the login."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

import pytest

from extensions.sdk.testing import TestSite
from smx.v1 import point_service_pb2 as spb
from tests.untrusted.gui.conftest import (
    PASSWORD,
    PASSWORD_HASH,
    GuiProcess,
    gui_process,
    sample,
    write,
)

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 15.0

if not (CHROMIUM and CHROMEDRIVER):
    why = "chromium and its driver are not installed (apt-get install chromium chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests: {why}", pytrace=False)
    pytest.skip(why, allow_module_level=True)

from selenium import webdriver  # noqa: E402 - only where chromium is
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def gui(site: TestSite) -> Iterator[GuiProcess]:
    with gui_process(site) as g:
        yield g


def text_of(browser: WebDriver, css: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, css).text


def shows(browser: WebDriver, css: str, expected: str) -> None:
    """Wait until the element shows `expected` (fails with what it showed)."""
    seen: list[str] = []

    def check(_: object) -> bool:
        try:
            seen.append(text_of(browser, css))
        except Exception as err:  # noqa: BLE001 - not on the page yet
            seen.append(repr(err))
        return expected in seen[-1]

    try:
        WebDriverWait(browser, WAIT_S).until(check)
    except Exception:
        raise AssertionError(f"{css} never showed {expected!r}; last: {seen[-1:]}") from None


async def test_a_value_appears_and_changes_live(site: TestSite, gui: GuiProcess, browser):
    await write(site, "smm", {"smm/P": -1200.0})
    browser.get(gui.url)
    shows(browser, "#part-grid .words", "exporting 1.2 kW to the grid")
    shows(browser, 'tr[data-point="smm/P"] td.value', "-1200")
    shows(browser, 'tr[data-point="smm/P"] td.unit', "W")
    # Under its device's heading.
    shows(browser, 'tbody[data-device="smm"] tr.device', "smm")
    assert browser.find_elements(By.CSS_SELECTOR, 'tbody[data-device="smm"] tr[data-point="smm/P"]')
    page = browser.execute_script("return window.performance.timeOrigin")

    await write(site, "smm", {"smm/P": 800.0})
    shows(browser, "#part-grid .words", "importing 800 W from the grid")
    shows(browser, 'tr[data-point="smm/P"] td.value', "800")
    shows(browser, "#status", "live")
    # Pushed, not reloaded: the same page.
    assert browser.execute_script("return window.performance.timeOrigin") == page


async def test_a_point_that_goes_stale_looks_stale(site: TestSite, gui: GuiProcess, browser):
    browser.get(gui.url)
    await write(site, "ess", {"ess/P": 2000.0}, period=0.3)  # then nothing: overdue at ~0.6 s
    row = 'tr[data-point="ess/P"]'
    shows(browser, f"{row} td.quality", "STALE")
    assert "stale" in browser.find_element(By.CSS_SELECTOR, row).get_attribute("class")
    battery = browser.find_element(By.CSS_SELECTOR, "#part-battery")
    assert "stale" in battery.get_attribute("class")
    shows(browser, "#part-battery", "STALE")

    await write(site, "ess", {"ess/P": 1500.0}, period=60.0)  # fresh again
    shows(browser, f"{row} td.quality", "GOOD")
    assert "stale" not in browser.find_element(By.CSS_SELECTOR, row).get_attribute("class")


async def test_the_chart_draws_the_last_hour_from_history(site: TestSite, gui: GuiProcess, browser):
    # Five values ten minutes apart, the largest in the middle: five 5-minute buckets.
    stubs = site.stubs("pv")
    now = time.time()
    values = [-1000.0, -2000.0, -4000.0, -2000.0, -1000.0]
    for i, v in enumerate(values):
        t = now - 3000 + i * 600
        await stubs.points.WritePoints(spb.WritePointsRequest(samples=[sample("pv/P", v, t)]))
    browser.get(gui.url)
    name_cell = 'tr[data-point="pv/P"] td.name'
    shows(browser, name_cell, "pv/P")

    browser.find_element(By.CSS_SELECTOR, name_cell).click()
    read_lines = (
        "return [...document.querySelectorAll('#chart polyline')]"
        ".map(l => l.getAttribute('points')).join(' ')"
    )
    drawn: list[tuple[float, float]] = []

    def five_drawn(_: object) -> bool:
        pairs = browser.execute_script(read_lines).split()
        drawn[:] = [(float(x), float(y)) for x, y in (p.split(",") for p in pairs)]
        return len(drawn) == 5

    try:
        WebDriverWait(browser, WAIT_S).until(five_drawn)
    except Exception:
        raise AssertionError(f"the chart drew {drawn}, not five points") from None
    assert text_of(browser, "#chart-title") == "pv/P"
    xs = [x for x, _ in drawn]
    ys = [y for _, y in drawn]
    # The last hour of a day 730 px wide: 40 min ~ 20 px, at the right (now) end.
    assert xs == sorted(xs) and 15 < xs[-1] - xs[0] < 30 and xs[-1] > 700
    assert ys.index(max(ys)) == 2  # -4000 W is the lowest point, in the middle
    assert "five-minute averages" in text_of(browser, "#chart-note")


async def test_logging_in_in_the_browser(site: TestSite, browser):
    with gui_process(site, password_hash=PASSWORD_HASH) as locked:
        await write(site, "smm", {"smm/P": 300.0})
        browser.delete_all_cookies()
        browser.get(locked.url)
        field = WebDriverWait(browser, WAIT_S).until(
            lambda b: (
                b.find_element(By.ID, "password")
                if b.find_element(By.ID, "password").is_displayed()
                else None
            )
        )
        assert not browser.find_element(By.ID, "view").is_displayed()
        field.send_keys("not the password")
        browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
        shows(browser, "#login-error", "wrong password")

        field.clear()
        field.send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
        shows(browser, 'tr[data-point="smm/P"] td.value', "300")
        assert browser.current_url.rstrip("/") == locked.url  # the ticket is out of the URL
        assert browser.execute_script("return document.cookie") == ""  # HttpOnly


async def test_values_look_stale_while_the_core_or_the_gui_is_gone(browser):
    with TestSite(
        {"smm": ("trusted", ["trusted-extension"], []), "gui": ("untrusted", ["gui"], [])}
    ) as own_site:
        await write(own_site, "smm", {"smm/P": 1000.0})
        with gui_process(own_site) as lonely:
            browser.get(lonely.url)
            row = 'tr[data-point="smm/P"]'
            shows(browser, f"{row} td.quality", "GOOD")

            own_site.stop_core()
            shows(browser, "#status", "core unreachable")
            shows(browser, f"{row} td.quality", "STALE: the GUI has lost the core")
            assert "stale" in browser.find_element(By.CSS_SELECTOR, row).get_attribute("class")
            assert "stale" in browser.find_element(By.ID, "part-grid").get_attribute("class")

            own_site.start()
            shows(browser, "#status", "live")
            shows(browser, f"{row} td.quality", "GOOD")

            lonely.stop()
            shows(browser, "#status", "connection lost")
            shows(browser, f"{row} td.quality", "STALE: no connection to the GUI")


async def test_a_string_value_is_shown_as_text_never_as_markup(
    site: TestSite, gui: GuiProcess, browser
):
    hostile = '<img src=x onerror="document.title=`owned`">'
    await write(site, "ess", {"ess/ESS_state": hostile})
    browser.get(gui.url)
    shows(browser, 'tr[data-point="ess/ESS_state"] td.value', hostile)
    assert not browser.find_elements(By.CSS_SELECTOR, "#points img")
    assert browser.title != "owned"
