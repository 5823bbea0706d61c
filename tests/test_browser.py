"""Pages checked in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`)
driven by selenium loads them and the tests assert on the rendered page and the browser's console."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="needs Chromium and its driver (Debian: apt-get install chromium chromium-driver)"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    # swiftshader: WebGL in software, which the parallel-coordinates plot draws with
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--enable-unsafe-swiftshader", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def severe_console_messages(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.fixture(scope="module")
def refitted_run(refitted_smoke_run: tuple[Path, str]) -> Path:
    return refitted_smoke_run[0]  # conftest.py: one search + refit shared with test_html_report.py


def test_report_html_draws_every_plot_without_a_script_error(browser, refitted_run: Path) -> None:
    page = refitted_run / "report.html"
    browser.get(page.as_uri())
    expected = len(re.findall(r"Plotly\.newPlot\(", page.read_text()))
    assert expected >= 6, "the page defines fewer plots than a refitted search has"
    # A drawn plotly figure holds an SVG of class main-svg inside its div.
    drawn = wait_for(lambda: len(browser.find_elements("css selector", ".js-plotly-plot .main-svg")) >= expected
                     and browser.find_elements("css selector", ".js-plotly-plot"), 60,
                     f"all {expected} plots to be drawn", poll=0.5)
    assert len(drawn) == expected, f"{len(drawn)} of {expected} plots drawn"
    messages = severe_console_messages(browser)
    assert not messages, messages
    text = browser.find_element("tag name", "body").text
    assert "95%" in text or "95 %" in text  # the test report's intervals are on the page
    # The trial table sorts when a header is clicked.
    table = browser.find_element("css selector", "table.trials")
    rows_before = [row.text for row in table.find_elements("css selector", "tbody tr")]
    table.find_elements("css selector", "th")[1].click()
    rows_after = [row.text for row in table.find_elements("css selector", "tbody tr")]
    assert sorted(rows_before) == sorted(rows_after) and len(rows_after) == 3


def test_the_ray_dashboard_opens_with_the_token_cookie(browser, tmp_path: Path) -> None:
    """A search started with --dashboard prints the dashboard's URL; with the token set as the
    `ray-authentication-token` cookie (Ray 2.60 reads it from that cookie or a header, never the
    URL) the dashboard's page renders its app and lists the cluster's node."""
    token_file = Path.home() / ".ray" / "auth_token"
    args = [sys.executable, "-u", str(ROOT / "scripts" / "search.py"), "--space", "smoke", "--data", "synthetic:80",
            "--num-samples", "2", "--max-epochs", "6", "--cv", "1", "--out", str(tmp_path / "run"), "--no-refit",
            "--dashboard"]
    search = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                              start_new_session=True)
    try:
        assert search.stdout is not None
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = search.stdout.readline()
            if not line:
                break
            found = re.match(r"Ray dashboard: (http://127\.0\.0\.1:\d+)", line)
            url = found.group(1) if found else None
        assert url is not None, "the search printed no dashboard URL on 127.0.0.1"
        assert token_file.is_file(), "Ray wrote no token"
        browser.get(url + "/favicon.ico")  # a page of the origin, so that its cookie can be set
        browser.add_cookie({"name": "ray-authentication-token", "value": token_file.read_text().strip()})
        browser.get(url + "/#/cluster")
        assert browser.title.endswith("Ray Dashboard")
        body = wait_for(lambda: (text := browser.find_element("tag name", "body").text) and "127.0.0.1" in text
                        and text, 60, "the cluster page to list the node (127.0.0.1)", poll=0.5)
        assert not re.search(r"unauthori[sz]ed|401", body, re.IGNORECASE)
        messages = severe_console_messages(browser)
        # Every API call was authorised by the cookie; the dashboard's own optional endpoints may
        # fail (no Prometheus here: prometheus_health 500; platform_events 404), which is Ray's.
        assert not [m for m in messages if "status of 401" in m or "status of 403" in m], messages
        script_errors = [m for m in messages if "Failed to load resource" not in m]
        assert not script_errors, script_errors
    finally:
        os.killpg(search.pid, signal.SIGINT)  # the search stops as a user's Ctrl-C stops it
        try:
            search.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(search.pid, signal.SIGKILL)
            search.communicate()
