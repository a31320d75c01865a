"""The labeling app in a real headless Chromium against the real server (`rlhfkit label serve`), on
SQLite and on PostgreSQL: a labeler signs in with an invite link, confirms the guideline and ranks a
task with the keyboard only — a tie and an F included — then corrects it from their history, and the
store holds exactly what was entered, the first ranking kept; an admin sees it on the dashboard;
completions carrying markup render as text and run nothing."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import pytest
from conftest import chromium_path

from rlhfkit.feedback.label import open_store
from rlhfkit.feedback.web.cli_support import invite

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-gpu"]
SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
COMPLETIONS = [
    ("c0", "Paris is the capital of France."),
    ("c1", "The capital of France is Paris, on the Seine."),
    ("c2", f"Try this: {SCRIPT}"),
    ("c3", f"{IMG} {IMG} {IMG}"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(run_dir, store: str, port: int):
    """``rlhfkit label serve`` in a subprocess on 127.0.0.1:port, until the block ends."""
    log = open(os.path.join(run_dir, "server.log"), "w")
    cmd = [sys.executable, "-m", "rlhfkit.cli", "label", "serve", "--run", str(run_dir), "--store", store,
           "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/static/app.css", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, open(log.name).read()
                assert time.monotonic() < deadline, "the server did not start in 60 s"
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def sign_in(page, link: str, base: str) -> None:
    """Open the invite link and confirm who signs in (Enter: the button has the focus)."""
    page.goto(link)
    page.wait_for_function("document.activeElement && document.activeElement.type === 'submit'")
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/guideline")


def test_keyboard_only_ranking_and_correction_reach_the_store_and_the_dashboard(tmp_path, store_url):
    path = chromium_path()
    if path is None:
        pytest.skip("Debian's chromium is not installed (make browser installs it)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    alice_link = invite(str(tmp_path), store_url, "alice", base_url=base)
    ada_link = invite(str(tmp_path), store_url, "ada", admin=True, base_url=base)
    with open_store(str(tmp_path), store_url) as s:
        s.add_tasks([("skipped", "A task to skip", COMPLETIONS[:2]),
                     ("france", f"What is the capital of France? {IMG}", COMPLETIONS)], "helpful", overlap=1)

    dialogs, errors = [], []
    with running_server(tmp_path, store_url, port), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            sign_in(page, alice_link, base)
            # autofocus lands after "load": a key pressed before it goes nowhere (seen as a flaky timeout)
            page.wait_for_function("document.activeElement && document.activeElement.type === 'submit'")
            page.keyboard.press("Enter")  # the confirm button has the focus
            page.wait_for_url(f"{base}/rank")
            assert page.locator(".prompt .text").inner_text() == "A task to skip"
            page.keyboard.press("s")  # skip: it goes to someone else
            page.wait_for_selector("text=What is the capital of France?")
            page.wait_for_load_state("load")  # rank.js has bound its keys

            shown = page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.cid)")
            A, B, C, D = shown
            for key in ["2", "u",  # rank A 2, then undo it
                        "1", "1",  # A = 1, B = 1: the same digit twice is a tie
                        "d", "f"]:  # pick D, fail it: the reason box takes the focus
                page.keyboard.press(key)
            page.keyboard.type("nonsensical markup")
            page.keyboard.press("Enter")  # reason done; C (the only unranked one) is picked
            page.keyboard.press("3")
            page.keyboard.press("x")  # "I checked facts"
            page.keyboard.press("n")  # into the comment box
            page.keyboard.type("checked the capital")
            page.keyboard.press("Escape")

            marks = page.eval_on_selector_all(".card .mark", "els => els.map(e => e.textContent)")
            assert marks == ["rank 1 · tie", "rank 1 · tie", "rank 3", "F · fail"]
            texts = page.eval_on_selector_all(".card .text", "els => els.map(e => e.textContent)")
            assert texts == [dict(COMPLETIONS)[cid] for cid in shown]  # markup shown as text, verbatim
            assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0
            assert IMG in page.locator(".prompt .text").inner_text()
            page.keyboard.press("?")
            assert page.locator("#help").is_visible()
            page.keyboard.press("Escape")
            assert page.locator("#help").is_hidden()
            shot = tmp_path / "ranking_screen.png"
            page.screenshot(path=str(shot), full_page=True)

            page.keyboard.press("Enter")
            page.wait_for_selector("text=Nothing left for you to rank")

            # a correction: from the history, the same screen filled in; A becomes 2, the rest stays
            page.goto(f"{base}/history")
            page.click("text=correct")
            page.wait_for_selector("text=Correcting your ranking")
            page.wait_for_load_state("load")
            marks = page.eval_on_selector_all(".card .mark", "els => els.map(e => e.textContent)")
            assert marks == ["rank 1 · tie", "rank 1 · tie", "rank 3", "F · fail"]
            page.keyboard.press("a")
            page.keyboard.press("2")
            page.keyboard.press("Enter")
            page.wait_for_url(f"{base}/history")
            assert page.locator("tr.superseded").count() == 1

            admin = browser.new_page(viewport={"width": 1100, "height": 900})
            admin.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            admin.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            sign_in(admin, ada_link, base)
            admin.goto(f"{base}/admin")
            row = admin.locator("#labelers tbody tr")
            assert row.count() == 1 and row.locator("td").first.inner_text() == "alice"
            assert "1 rankings of 1 tasks by 1 labelers" in admin.locator("main").inner_text()
            admin.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        finally:
            browser.close()

    with open_store(str(tmp_path), store_url) as s:
        new, r = s.history("alice")
    assert r.marks == {A: 1, B: 1, C: 3, D: "F"}
    assert r.fail_reasons == {D: "nonsensical markup"}
    assert r.shown_order == shown and r.checked_facts and r.comment == "checked the capital"
    assert r.guideline_version == 1 and r.seconds_spent >= 0 and not r.current
    assert new.supersedes == r.ranking_id and new.current and new.marks == {A: 2, B: 1, C: 3, D: "F"}
    assert (new.fail_reasons, new.comment, new.checked_facts) == (r.fail_reasons, r.comment, True)
    assert dialogs == []
    assert errors == []  # a CSP violation (something of our own blocked) is logged as a console error
    assert shot.stat().st_size > 10_000
    if os.environ.get("RLHFKIT_SCREENSHOT_DIR"):
        os.makedirs(os.environ["RLHFKIT_SCREENSHOT_DIR"], exist_ok=True)
        shutil.copyfile(shot, os.path.join(os.environ["RLHFKIT_SCREENSHOT_DIR"], "ranking_screen.png"))
