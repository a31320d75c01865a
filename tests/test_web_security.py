"""Issue 16, "ready for the open internet": one regression test (at least) per finding, numbered as
in the issue, each failing on the app as it was. In-process, on SQLite and on PostgreSQL."""

from __future__ import annotations

import html
import json
import logging
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from test_web_api import make_site, rank_all, sign_in, site, task_of, tasks, token_of  # noqa: F401 — fixtures too

from rlhfkit.feedback.db import WebSession
from rlhfkit.feedback.store import FeedbackStore
from rlhfkit.feedback.web.app import create_app
from rlhfkit.feedback.web.security import COOKIE, CSP, LOGIN_COOKIE
from rlhfkit.feedback.web.settings import Settings


class Body:
    """A request body sent chunk by chunk, without a Content-Length; counts the chunks the app asked for.
    It starts as a file upload (multipart) would, which the rest then continues."""

    START = b'--x\r\ncontent-disposition: form-data; name="file"; filename="c.jsonl"\r\n\r\n'

    def __init__(self, chunks: int, size: int = 64 * 1024):
        self.chunks, self.size, self.sent = chunks, size, 0

    async def __aiter__(self):
        for i in range(self.chunks):
            self.sent += 1
            yield (self.START if i == 0 else b"") + b"x" * self.size


def stream(app, path: str, body: Body, headers: dict) -> int:
    """POST ``body`` to the app as a server would pass it on: one ASGI message per chunk, read on demand
    (httpx's ASGI transport; Starlette's TestClient would read the whole body first). → status code."""
    import asyncio

    import httpx

    async def post():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as c:
            return (await c.post(path, content=body, headers=headers)).status_code

    return asyncio.run(post())


JSON, MULTIPART = {"content-type": "application/json"}, {"content-type": "multipart/form-data; boundary=x"}


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def completions(prompt_id: str, ids, prompt: str = "p", text: str = "t") -> list[dict]:
    return [{"prompt_id": prompt_id, "completion_id": c, "text": text, "prompt": prompt} for c in ids]


def upload(client, content: bytes, name: str = "c.jsonl"):
    return client.post("/admin/import", files={"file": (name, content, "application/json")}, data={"overlap": "1"})


# ---- 1 (high): unbounded bodies read before authentication ---------------------------------------


def test_1_a_strangers_body_is_refused_before_it_is_read(site):
    for path in ("/api/rankings", "/admin/import", "/guideline/confirm", "/nowhere"):
        body = Body(chunks=100)  # 6.5 MB
        assert stream(site.app, path, body, JSON) == 401 and body.sent <= 1, (path, body.sent)
    body = Body(chunks=100)  # a labeler's body for an admin route: 403, unread
    assert stream(site.app, "/admin/import", body, {**MULTIPART, **site.bearer("alice")}) == 403 and body.sent <= 1


def test_1_bodies_over_the_cap_are_cut_off(make_site):
    site = make_site(tasks(1), max_body_kb=64, max_upload_mb=0.5)
    alice, ada = site.bearer("alice"), site.bearer("ada")
    # by the Content-Length alone, before a byte is read
    body = Body(chunks=100)
    assert stream(site.app, "/api/rankings", body, {**JSON, **alice, "content-length": str(100 * 65536)}) == 413
    assert body.sent == 0
    r = TestClient(site.app).post("/api/rankings", content=b"x" * 64_001, headers={**JSON, **alice})
    assert r.status_code == 413 and r.json()["detail"] == "the request body is larger than 0.064 MB, this address's limit"
    # a body without a length: stopped at the cap, not read to its end
    body = Body(chunks=100)
    assert stream(site.app, "/api/rankings", body, {**JSON, **alice}) == 413 and body.sent <= 2
    # an upload streams through its own cap (0.5 MB here), the admin's too; a small one still imports
    body = Body(chunks=100)
    assert stream(site.app, "/admin/import", body, {**MULTIPART, **ada}) == 413 and 8 <= body.sent <= 10
    assert upload(TestClient(site.app, headers=ada), jsonl(completions("q", ["q0", "q1"]))).status_code == 200
    assert site.store.progress().tasks == 2


# ---- 2: sessions revocable and expiring; an invite is a one-time exchange ------------------------


def test_2_an_invite_link_signs_in_once(site):
    link = site.link("alice")
    first = TestClient(site.app, follow_redirects=False)
    sign_in(first, link)
    again = TestClient(site.app, follow_redirects=False, cookies={LOGIN_COOKIE: "x"})
    assert again.get(link).status_code == 403  # used up
    r = again.post("/login", data={"token": token_of(link), "csrf": "x"})
    assert r.status_code == 403 and COOKIE not in again.cookies
    assert first.get("/api/me").json()["name"] == "alice"


def test_2_a_session_expires(make_site):
    """A session lasts session_ttl_s from sign-in, then the app refuses it. No sleeping: on a loaded machine a
    0.5 s lifetime ran out before the first request (flaky on PostgreSQL); the stored expiry is moved instead."""
    site = make_site(tasks(1), session_ttl_s=60)
    c = site.client("alice", confirm=False)
    assert c.get("/api/me").status_code == 200
    with site.store.engine.begin() as conn:
        (created, expires), = conn.execute(select(WebSession.created_at, WebSession.expires_at)).all()
        assert (expires - created).total_seconds() == 60
        conn.execute(text("UPDATE web_session SET expires_at = created_at"))  # the 60 s have run out
    assert c.get("/api/me").status_code == 401


def test_2_label_revoke_signs_out_and_reissue_lets_back_in(site, tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    alice = site.client("alice")
    unused = site.link("alice")
    where = ["--run", site.run_dir, "--store", site.store_url]
    r = CliRunner().invoke(app, ["label", "revoke", "alice", *where])
    assert r.exit_code == 0 and "1 sessions ended, 1 unused links cancelled" in r.output, r.output
    assert alice.get("/api/me").status_code == 401 and alice.get(unused).status_code == 403
    assert site.client("bob").get("/api/me").status_code == 200  # nobody else is signed out
    r = CliRunner().invoke(app, ["label", "invite", "alice", "--reissue", *where])
    assert r.exit_code == 0, r.output
    sign_in(TestClient(site.app, follow_redirects=False), "/login?token=" + token_of(r.output.strip()))
    assert CliRunner().invoke(app, ["label", "revoke", "zed", *where]).exit_code == 2


# ---- 3: login CSRF ---------------------------------------------------------------------------------


def test_3_opening_a_link_does_not_sign_in(site):
    ada = site.client("ada")
    page = ada.get(site.link("alice"))  # a page elsewhere sent the admin's browser to alice's link
    assert page.status_code == 200 and "Sign in as alice?" in page.text
    assert COOKIE not in page.headers.get("set-cookie", "")
    assert ada.get("/api/me").json()["name"] == "ada"  # still the admin


@pytest.mark.parametrize("headers", [{"origin": "http://evil.example"}, {"sec-fetch-site": "cross-site"},
                                     {"origin": "null"}])
def test_3_a_cross_site_sign_in_form_is_refused(site, headers):
    ada = site.client("ada")
    link = site.link("alice")
    ada.get(link)  # even with the login page's cookie in the jar
    r = ada.post("/login", data={"token": token_of(link), "csrf": ada.cookies.get(LOGIN_COOKIE)}, headers=headers)
    assert r.status_code == 403 and ada.get("/api/me").json()["name"] == "ada"


def test_3_a_sign_in_form_needs_the_login_pages_cookie(site):
    link = site.link("alice")
    forged = TestClient(site.app, follow_redirects=False)  # never opened the page: no pre-session
    r = forged.post("/login", data={"token": token_of(link), "csrf": "guess"})
    assert r.status_code == 403 and forged.get("/api/me").status_code == 401
    sign_in(forged, link)  # the link was not used up by the refusal


# ---- 4: a large import must not freeze labeling -----------------------------------------------------


def test_4_a_busy_database_is_a_503_with_retry_after(make_site):
    site = make_site(tasks(2), busy_timeout_s=0.2)
    alice = site.client("alice")
    task = task_of(alice)
    with FeedbackStore(site.store_url) as other:
        with other._write() as s:  # a long import's transaction, say
            s.execute(text("SELECT 1"))  # (SQLite begins it at its first statement)
            r = alice.post("/api/rankings", json={"task_id": task["task_id"], "marks": rank_all(task, [1, 2, 3, 4])})
            assert r.status_code == 503 and r.headers["retry-after"] == "2" and "busy" in r.json()["detail"]
    assert site.store.history() == []
    r = alice.post("/api/rankings", json={"task_id": task["task_id"], "marks": rank_all(task, [1, 2, 3, 4])})
    assert r.status_code == 201


# ---- 5: import accepts tasks the API can never accept -----------------------------------------------


@pytest.mark.parametrize(
    "rows, message",
    [
        (completions("q", ["c" * 250, "b"]), "c.jsonl:1: completion_id has 250 characters; at most 200"),
        (completions("q", [f"c{i}" for i in range(101)]), "prompt 'q' has 101 completions; a task needs 2 to 100"),
    ],
)
def test_5_import_refuses_what_the_api_could_not_rank(site, rows, message):
    ada = site.client("ada")
    before = site.store.row_counts()
    r = upload(ada, jsonl(rows))
    assert r.status_code == 400 and message in html.unescape(r.text)
    assert site.store.row_counts() == before


def test_5_the_largest_importable_task_can_be_ranked(site):
    ids = [f"{i:03d}" + "c" * 197 for i in range(100)]
    assert upload(site.client("ada"), jsonl(completions("big", ids))).status_code == 200
    alice = site.client("alice")
    while (task := task_of(alice))["prompt_id"] != "big":
        alice.post("/api/skip", json={"task_id": task["task_id"]})
    r = alice.post("/api/rankings", json={"task_id": task["task_id"], "marks": rank_all(task, list(range(1, 101)))})
    assert r.status_code == 201, r.text


# ---- 6: a non-ASCII CSRF token ---------------------------------------------------------------------


def test_6_a_non_ascii_csrf_token_is_refused_not_a_500(site):
    alice = site.client("alice", confirm=False)
    alice.headers.pop("x-csrf-token")
    assert alice.post("/guideline/confirm", data={"version": 1, "csrf": "é"}).status_code == 403
    r = alice.post("/api/skip", json={"task_id": 1}, headers={"x-csrf-token": "é".encode()})
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]


# ---- 7: surrogates, deep nesting, 500 pages without the security headers ---------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"prompt_id": "q", "completion_id": "a", "text": "\\ud800", "prompt": "p"}\n', "c.jsonl:1: text contains a lone surrogate"),
        (b"[" * 100_000 + b"]" * 100_000 + b"\n", "c.jsonl:1: invalid JSON: nested too deeply"),
        (b'{"prompt_id": "q", "completion_id": "a", "text": "a\\u0000b", "prompt": "p"}\n', "text contains a NUL"),
    ],
)
def test_7_and_12_import_refuses_text_no_database_stores_as_is(site, content, message):
    ada = site.client("ada")
    before = site.store.row_counts()
    r = upload(ada, content)
    assert r.status_code == 400 and message in html.unescape(r.text), r.text[-500:]
    assert site.store.row_counts() == before


def test_7_a_500_page_has_the_security_headers_and_no_details(tmp_path):
    app = create_app(str(tmp_path / "feedback.db"), Settings(allowed_hosts=["testserver"]))
    with app.state.store.engine.begin() as conn:  # a broken database: every request that reads it fails
        conn.execute(text("DROP TABLE web_session"))
    r = TestClient(app, raise_server_exceptions=False, cookies={COOKIE: "s"}).get("/rank")
    assert r.status_code == 500 and r.headers["content-security-policy"] == CSP
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    assert "web_session" not in r.text and "Traceback" not in r.text
    app.state.store.close()


# ---- 8 and 9: a late submission; a refused one -------------------------------------------------------


def test_8_a_submission_after_the_hold_expired_is_refused(make_site):
    site = make_site(tasks(1), overlap=1, assignment_ttl_s=0.5)
    alice = site.client("alice")
    task = task_of(alice)
    time.sleep(0.7)  # nobody else took it meanwhile: it was handed back to alice with a fresh start time
    r = alice.post("/api/rankings", json={"task_id": task["task_id"], "marks": rank_all(task, [1, 2, 3, 4])})
    assert r.status_code == 409 and "not held" in r.json()["detail"]
    assert site.store.history() == []


def test_9_a_refused_submission_assigns_nothing(site):
    alice = site.client("alice")
    task = task_of(alice)
    body = {"task_id": task["task_id"], "marks": rank_all(task, [1, 2, 3, 4])}
    assert alice.post("/api/rankings", json=body).status_code == 201
    before = site.store.row_counts()
    assert alice.post("/api/rankings", json=body).status_code == 409
    assert site.store.row_counts() == before  # no next task held for alice


def test_8_the_time_spent_is_measured_from_the_assignment(site):
    alice = site.client("alice")
    task = task_of(alice)
    time.sleep(0.3)
    r = alice.post("/api/rankings", json={"task_id": task["task_id"], "marks": rank_all(task, [1, 2, 3, 4])})
    assert r.status_code == 201 and 0.3 <= r.json()["seconds_spent"] < 30


# ---- 10: the Host header ----------------------------------------------------------------------------


def test_10_unknown_hosts_are_refused_and_no_redirect_names_a_host(site):
    c = site.client("alice")
    for path in ("/admin/", "/static", "/rank/", "/api/me/", "/rank"):
        r = c.get(path, headers={"host": "evil.example"})
        assert r.status_code == 400 and "location" not in r.headers, path
        r = c.get(path)
        assert r.status_code != 307 and "testserver" not in r.headers.get("location", ""), path
    assert c.get("/").headers["location"] == "/rank"


# ---- 11: failed sign-ins ------------------------------------------------------------------------------


def test_11_failed_sign_ins_are_logged_and_throttled(make_site, caplog):
    site = make_site(tasks(1), signin_failures_per_minute=3)
    c = TestClient(site.app, follow_redirects=False)
    with caplog.at_level(logging.WARNING, logger="rlhfkit.feedback.web"):
        assert [c.get(f"/login?token=wrong{i}").status_code for i in range(3)] == [403] * 3
        locked = c.get("/login?token=wrong3")
        assert locked.status_code == 429 and 1 <= int(locked.headers["retry-after"]) <= 60
        assert c.get(site.link("alice")).status_code == 429  # locked out, a good link too
        assert c.get("/api/me", headers={"authorization": "Bearer guess"}).status_code == 429
    lines = [r.getMessage() for r in caplog.records if r.name == "rlhfkit.feedback.web"]
    assert lines == ["failed sign-in from testclient: an invalid invite link"] * 3
    assert not any("wrong" in line for line in lines)  # never the token


# ---- 12: bidi overrides and other invisible characters --------------------------------------------------


def test_12_invisible_characters_are_shown_for_what_they_are(make_site):
    prompt = "Say \u202eyes\u202c or no"
    site = make_site([("bidi", prompt, [("a", "fine\u2066x\u2069"), ("b", "b\x07ell")])], overlap=1)
    page = site.client("alice").get("/rank").text
    assert "Say [U+202E]yes[U+202C] or no" in page and "fine[U+2066]x[U+2069]" in page and "b[U+0007]ell" in page
    assert not any(ch in page for ch in "\u202e\u202c\u2066\u2069\x07")
    assert site.store.get_task(1).prompt == prompt  # stored as given: what the reward model will read


def test_12_a_nul_in_a_comment_is_refused(site):
    alice = site.client("alice")
    task = task_of(alice)
    r = alice.post("/api/rankings", json={"task_id": task["task_id"], "marks": rank_all(task, [1, 2, 3, 4]),
                                          "comment": "a\u0000b"})
    assert r.status_code == 400 and "comment contains a NUL" in r.json()["detail"]
    assert site.store.history() == []


# ---- 13: import errors show no server paths; the form says what must be unique -----------------------------


def test_13_import_errors_name_the_uploaded_file_not_a_server_path(site):
    ada = site.client("ada")
    assert "unique across the whole file" in ada.get("/admin/import").text
    rows = completions("q", ["a", "b"]) + completions("r", ["a", "c"])
    r = upload(ada, jsonl(rows), name="../../my completions.jsonl")
    assert r.status_code == 400 and "my completions.jsonl:3: duplicate completion_id 'a'" in html.unescape(r.text)
    assert "/tmp" not in r.text and "../" not in r.text


# ---- 14: duplicate JSON keys ------------------------------------------------------------------------------


def test_14_a_body_repeating_a_key_is_refused(site):
    alice = site.client("alice")
    task = task_of(alice)
    ids = [c["completion_id"] for c in task["completions"]]
    raw = '{"task_id": %d, "marks": {"%s": 1, "%s": 2, "%s": 3, "%s": 4, "%s": 1}}' % (task["task_id"], *ids, ids[0])
    r = alice.post("/api/rankings", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"] == f"duplicate key '{ids[0]}' in field 'marks'"
    assert site.store.history() == []


# ---- 15: Secure cookies behind TLS ------------------------------------------------------------------------


def test_15_cookies_are_secure_over_https_and_when_configured(make_site):
    site = make_site(tasks(1))
    for base_url, secure in (("http://testserver", False), ("https://testserver", True)):  # https: behind TLS
        c = TestClient(site.app, base_url=base_url, follow_redirects=False)
        link = site.link("alice")
        page = c.get(link)
        login = c.post("/login", data={"token": token_of(link), "csrf": c.cookies.get(LOGIN_COOKIE)})
        assert login.status_code == 303
        cookies = page.headers.get_list("set-cookie") + [h for h in login.headers.get_list("set-cookie")
                                                         if h.startswith(COOKIE + "=")]
        assert len(cookies) == 2 and all(("; secure" in h.lower()) == secure for h in cookies), cookies
        assert login.headers.get("strict-transport-security") == ("max-age=31536000" if secure else None)
    configured = create_app(site.store_url, Settings(allowed_hosts=["testserver"], secure_cookies=True))
    page = TestClient(configured).get(site.link("alice"))  # on plain HTTP too (a proxy that sends no X-Forwarded-Proto)
    assert "; secure" in page.headers["set-cookie"].lower()
    configured.state.store.close()
