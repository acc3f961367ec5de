"""The report in a real browser (headless Chromium): it renders, requests nothing, logs nothing, and a
device string holding markup stays text.

The report carries a Content-Security-Policy (``default-src 'none'`` ...): any request it tried to make
would be blocked *and* logged on Chromium's console, which ``--enable-logging=stderr`` prints as
``INFO:CONSOLE`` lines. ``test_detector_sees_a_blocked_request`` proves that this detector works.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import require_service
from report_data import make_report_data

from reports.render import render_report

HOSTILE = "<script>alert(1)</script>"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True, scope="module")
def _needs_chromium():
    """Skipped without Chromium, but failed where EDGEBENCH_REQUIRE_SERVICES is set (CI)."""
    require_service(CHROMIUM is not None, "headless Chromium")

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
    "--enable-logging=stderr", "--v=0",
)  # fmt: skip
CONSOLE = re.compile(r"^\[[^\]]*:CONSOLE[^\]]*\].*$", re.M)


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, url],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    return render_report(make_report_data(root / "src", hostile_fact=HOSTILE), root / "out")


@pytest.fixture(scope="module")
def dom(report, tmp_path_factory) -> subprocess.CompletedProcess:
    return chromium(report.as_uri(), tmp_path_factory.mktemp("profile"), "--dump-dom")


def test_screenshot_is_produced_and_not_blank(report, tmp_path):
    from PIL import Image

    png = tmp_path / "report.png"
    run = chromium(report.as_uri(), tmp_path / "profile", f"--screenshot={png}", "--window-size=1400,3000")
    assert run.returncode == 0, run.stderr[-2000:]
    assert png.is_file() and png.stat().st_size > 50_000
    with Image.open(png) as im:
        assert im.size == (1400, 3000)
        small = im.convert("RGB").resize((140, 300))
    colours = small.getcolors(maxcolors=140 * 300)
    assert len(colours) > 200  # text, tables, coloured cells and charts, not an empty page
    background = max(colours)[0] / (140 * 300)
    assert background < 0.8
    assert CONSOLE.findall(run.stderr) == []


def test_page_requests_nothing_and_logs_no_console_message(dom):
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert CONSOLE.findall(dom.stderr) == []
    assert "Content Security Policy" not in dom.stderr


def test_rendered_dom_has_the_tables_and_charts(dom):
    html = dom.stdout
    assert html.count('<table class="comparison">') == 2
    assert '<table class="matrix">' in html
    assert len(re.findall(r'<svg\b[^>]*class="chart"', html)) >= 4
    assert "Could not measure" in html


def test_markup_from_a_device_is_shown_as_text_not_run(dom):
    html = dom.stdout
    assert "<script" not in html  # no script element at all, least of all the device's
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the literal text is in a table cell
    assert re.search(r"<td>&lt;script&gt;alert\(1\)&lt;/script&gt;(?: → [^<]*)?</td>", html)


def test_detector_sees_a_blocked_request(report, tmp_path):
    """A copy of the report with one external image: the CSP blocks it and the console says so."""
    probe = tmp_path / "probe.html"
    text = report.read_text(encoding="utf-8")
    probe.write_text(text.replace("<main>", '<main><img src="http://127.0.0.1:9/pixel.png" alt="">', 1),
                     encoding="utf-8")  # fmt: skip
    run = chromium(probe.as_uri(), tmp_path / "profile", "--dump-dom")
    lines = CONSOLE.findall(run.stderr)
    assert any("127.0.0.1:9/pixel.png" in line and "Content Security Policy" in line for line in lines)
