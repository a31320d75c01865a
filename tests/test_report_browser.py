"""report.html in a real headless Chromium: the sections show, the images decode, no injected
script runs, and the Content-Security-Policy blocks nothing the page itself needs."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import chromium_path
from test_report import SECTIONS, make_run

from rlhfkit.eval.report import write_report

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-gpu"]


def test_report_in_chromium(tmp_path):
    path = chromium_path()
    if path is None:
        pytest.skip("Debian's chromium is not installed (make browser installs it)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    report = write_report(make_run(tmp_path / "run"))

    dialogs, errors, requests = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri())
            page.wait_for_load_state("load")

            for section in SECTIONS:
                assert page.locator(f"section#{section}").is_visible(), section
            assert page.locator("section#samples .sample").count() == 11  # the pairs chosen to be read (test_report.test_samples_shown_are_chosen_to_be_read)
            # the injected markup is visible as text, not as an element
            assert "<script>alert(1)</script>" in page.locator("section#samples").inner_text()
            assert page.locator("section#samples img").count() == 0
            widths = page.eval_on_selector_all("img", "els => els.map(e => e.complete ? e.naturalWidth : 0)")
            assert len(widths) >= 4 and all(w > 0 for w in widths), widths
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    assert dialogs == []
    assert errors == []  # a CSP violation (a blocked style or image of our own) is logged as an error
    assert all(u.startswith(("file://", "data:")) for u in requests), requests
    assert shot.stat().st_size > 10_000
    if os.environ.get("RLHFKIT_SCREENSHOT_DIR"):
        dest = os.path.join(os.environ["RLHFKIT_SCREENSHOT_DIR"], "report.png")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(shot, dest)
