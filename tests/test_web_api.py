"""The labeling web app in-process (FastAPI TestClient), on SQLite and on PostgreSQL (conftest.store_url)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from rlhfkit.data.records import Pair
from rlhfkit.feedback.label import ensure_guideline, open_store
from rlhfkit.feedback.web.app import create_app
from rlhfkit.feedback.web.cli_support import invite
from rlhfkit.feedback.web.routes_admin import disagreement_queue
from rlhfkit.feedback.web.security import COOKIE, CSP, LOGIN_COOKIE, hash_token
from rlhfkit.feedback.web.settings import Settings

XSS_COMPLETION = "<script>alert(1)</script>"
XSS_PROMPT = "<img src=x onerror=alert(1)>"
XSS_ID = 'c"><b>x</b>'


def tasks(n: int, k: int = 4) -> list[tuple[str, str, list[tuple[str, str]]]]:
    return [(f"p{i}", f"prompt {i}", [(f"c{j}", f"reply {i}.{j}") for j in range(k)]) for i in range(n)]


def token_of(link: str) -> str:
    return link.split("token=")[1]


def sign_in(c: TestClient, link: str) -> None:
    """What a person does: open the link, press "Sign in" (the form echoes the login page's cookie)."""
    assert c.get(link).status_code == 200
    r = c.post("/login", data={"token": token_of(link), "csrf": c.cookies.get(LOGIN_COOKIE)})
    assert r.status_code == 303 and r.headers["location"] == "/rank", r.text


@dataclass
class Site:
    app: object
    run_dir: str
    store_url: str

    @property
    def store(self):
        return self.app.state.store

    def link(self, name: str) -> str:
        """A fresh one-time sign-in link of ``name`` ("/login?token=…"), as `label invite --reissue` gives."""
        url = invite(self.run_dir, self.store_url, name, reissue=True)
        return urlsplit(url).path + "?" + urlsplit(url).query

    def client(self, name: str | None = None, confirm: bool = True) -> TestClient:
        """A browser of its own (cookie jar), signed in as ``name``, guideline confirmed."""
        c = TestClient(self.app, follow_redirects=False)
        if name is not None:
            sign_in(c, self.link(name))
            c.headers["x-csrf-token"] = c.get("/api/me").json()["csrf_token"]
            if confirm:
                version = self.store.latest_guideline().version
                assert c.post("/guideline/confirm", data={"version": version}).status_code == 303
        return c

    def bearer(self, name: str) -> dict:
        """Headers of a script signed in as ``name``: its session id as a Bearer token, no cookie."""
        return {"authorization": "Bearer " + self.client(name, confirm=False).cookies.get(COOKIE)}


@pytest.fixture
def make_site(store_url, tmp_path):
    """make_site(items, overlap=2, **settings): the app on a store with labelers alice, bob, carol and
    admin ada, the shipped guideline and ``items`` as tasks. Closed after the test."""
    sites = []

    def make(items, overlap: int = 2, **settings) -> Site:
        for name in ("alice", "bob", "carol", "ada"):
            invite(str(tmp_path), store_url, name, admin=name == "ada")
        with open_store(str(tmp_path), store_url) as s:
            ensure_guideline(s)
            s.add_tasks(items, "helpful", overlap=overlap)
        app = create_app(store_url, Settings(**{"allowed_hosts": ["testserver"], **settings}))
        sites.append(Site(app, str(tmp_path), store_url))
        return sites[-1]

    yield make
    for site in sites:
        site.store.close()


@pytest.fixture
def site(make_site) -> Site:
    return make_site(tasks(3))


def task_of(c: TestClient) -> dict:
    r = c.get("/api/task")
    assert r.status_code == 200, r.text
    return r.json()["task"]


def rank_all(task: dict, marks: list) -> dict:
    """marks given in the order shown → {completion_id: mark}."""
    return {comp["completion_id"]: m for comp, m in zip(task["completions"], marks)}


# ---- sign-in ---------------------------------------------------------------------------------


def test_invite_stores_only_hashes_and_signing_in_sets_a_strict_httponly_cookie(site):
    link = site.link("alice")
    c = TestClient(site.app, follow_redirects=False)
    page = c.get(link)
    assert page.status_code == 200 and "Sign in as alice" in page.text
    login = c.post("/login", data={"token": token_of(link), "csrf": c.cookies.get(LOGIN_COOKIE)})
    assert login.status_code == 303 and login.headers["location"] == "/rank"
    [cookie] = [h.lower() for h in login.headers.get_list("set-cookie") if h.startswith(COOKIE + "=")]
    assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=604800" in cookie
    assert c.get("/api/me").json()["name"] == "alice"
    session_id = c.cookies.get(COOKIE)
    with site.store.engine.connect() as conn:  # what the database holds of both secrets: their hashes only
        dump = " ".join(str(row) for t in ("invite", "web_session") for row in conn.exec_driver_sql(f"SELECT * FROM {t}"))
    assert token_of(link) not in dump and session_id not in dump
    assert hash_token(token_of(link)) in dump and hash_token(session_id) in dump


def test_bad_or_missing_token_is_refused(site):
    c = TestClient(site.app, follow_redirects=False)
    assert c.get("/login?token=not-a-token").status_code == 403
    assert c.get("/login").status_code == 422
    assert c.get("/api/me").status_code == 401
    assert c.get("/rank").status_code == 401
    assert c.get("/api/me", headers={"authorization": "Bearer nope"}).status_code == 401
    assert c.get("/api/me", headers=site.bearer("bob")).json()["name"] == "bob"


def test_logout_ends_the_session_on_the_server(site):
    """Issue 16 #2: after /logout the old cookie still read /api/me."""
    c = site.client("alice")
    session_id = c.cookies.get(COOKIE)
    assert c.post("/logout").status_code == 200
    assert c.get("/api/me").status_code == 401
    replay = TestClient(site.app, cookies={COOKIE: session_id})  # the old cookie, kept by an attacker
    assert replay.get("/api/me").status_code == 401
    assert replay.get("/api/me", headers={"authorization": f"Bearer {session_id}"}).status_code == 401


def test_cli_invite_prints_a_link_that_signs_in_once(tmp_path, store_url):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    r = CliRunner().invoke(app, ["label", "invite", "dora", "--admin", "--run", str(tmp_path), "--store", store_url,
                                 "--base-url", "http://example.test:9000/"])
    assert r.exit_code == 0, r.output
    url = r.output.strip().splitlines()[-1]
    assert url.startswith("http://example.test:9000/login?token=")
    with open_store(str(tmp_path), store_url) as s:
        lab = s.invited(hash_token(token_of(url)))
    assert (lab.name, lab.role, lab.kind) == ("dora", "admin", "human")
    again = CliRunner().invoke(app, ["label", "invite", "dora", "--run", str(tmp_path), "--store", store_url])
    assert again.exit_code == 2 and "already exists" in again.output and "--reissue" in again.output


# ---- guideline gate, assignment, blind, overlap ----------------------------------------------


def test_guideline_must_be_confirmed_before_ranking(site):
    c = site.client("alice", confirm=False)
    r = c.get("/rank")
    assert r.status_code == 303 and r.headers["location"] == "/guideline"
    assert c.get("/api/task").status_code == 409
    refused = c.post("/api/rankings", json={"task_id": 1, "marks": {"c0": 1, "c1": 2, "c2": 3, "c3": 4}})
    assert refused.status_code == 409 and "guideline" in refused.json()["detail"]
    page = c.get("/guideline")
    assert "Ties" in page.text and "I have read guideline version 1" in page.text
    assert c.post("/guideline/confirm", data={"version": 99}).status_code == 404
    assert c.post("/guideline/confirm", data={"version": 1}).headers["location"] == "/rank"
    assert c.get("/rank").status_code == 200
    # a new guideline version must be confirmed again
    site.store.add_guideline("version two")
    assert c.get("/rank").headers["location"] == "/guideline"


def test_submit_stores_marks_shown_order_time_and_extras(site):
    c = site.client("alice")
    task = task_of(c)
    assert task == task_of(c)  # a reload shows the same task in the same order
    marks = rank_all(task, [1, 1, "F", 3])  # a tie and a fail
    cid_f = task["completions"][2]["completion_id"]
    r = c.post("/api/rankings", json={"task_id": task["task_id"], "marks": marks, "checked_facts": True,
                                      "fail_reasons": {cid_f: " repetitive "}, "comment": "checked the capital"})
    assert r.status_code == 201, r.text
    [stored] = site.store.history("alice")
    assert stored.ranking_id == r.json()["ranking_id"] and stored.task_id == task["task_id"]
    assert stored.marks == marks and stored.fail_reasons == {cid_f: "repetitive"}
    assert stored.shown_order == [comp["completion_id"] for comp in task["completions"]]
    assert stored.guideline_version == 1 and stored.checked_facts and stored.comment == "checked the capital"
    assert 0 <= stored.seconds_spent < 60
    # the same ranking again: refused, nothing added
    again = c.post("/api/rankings", json={"task_id": task["task_id"], "marks": marks, "fail_reasons": {cid_f: "x"}})
    assert again.status_code == 409 and len(site.store.history()) == 1


def test_each_task_goes_to_overlap_different_labelers(site):
    clients = {name: site.client(name) for name in ("alice", "bob", "carol")}
    first = {name: task_of(c)["task_id"] for name, c in clients.items()}
    assert first["alice"] == first["bob"] == 1 and first["carol"] == 2  # task 1 is held by two already
    done, orders = 0, set()
    while True:
        progressed = False
        for c in clients.values():
            task = task_of(c)
            if task is not None:
                orders.add(tuple(comp["completion_id"] for comp in task["completions"]))
                r = c.post("/api/rankings", json={"task_id": task["task_id"], "marks": rank_all(task, [1, 2, 3, 4])})
                assert r.status_code == 201, r.text
                progressed, done = True, done + 1
        if not progressed:
            break
    assert done == 3 * 2
    assert len(orders) > 1 and orders != {("c0", "c1", "c2", "c3")}  # shuffled per labeler and task
    per_task = {}
    for r in site.store.history():
        per_task.setdefault(r.task_id, []).append(r.labeler)
    assert {t: len(set(labs)) for t, labs in per_task.items()} == {1: 2, 2: 2, 3: 2}
    p = clients["alice"].get("/api/task").json()["progress"]
    assert (p["rankings_done"], p["rankings_needed"], p["tasks_complete"]) == (6, 6, 3)
    assert "Nothing left for you" in clients["alice"].get("/rank").text


def test_blind_no_labeler_sees_another_ranking(site):
    alice, bob = site.client("alice"), site.client("bob")
    task = task_of(alice)
    secret = "alice-secret-comment"
    r = alice.post("/api/rankings", json={"task_id": task["task_id"], "marks": rank_all(task, [4, 3, 2, 1]),
                                          "comment": secret})
    assert r.status_code == 201
    assert task_of(bob)["task_id"] == task["task_id"]
    for path in ("/rank", "/history", "/api/task", "/api/me", "/guideline"):
        body = bob.get(path).text
        assert secret not in body and "alice" not in body, path
    assert secret in alice.get("/history").text  # her own history shows it


def test_an_abandoned_assignment_expires_and_returns_to_the_pool(make_site):
    site = make_site(tasks(1), overlap=1, assignment_ttl_s=0.5)
    alice, bob = site.client("alice"), site.client("bob")
    task = task_of(alice)
    assert task_of(bob) is None  # held by alice
    time.sleep(0.7)
    assert task_of(bob)["task_id"] == task["task_id"]
    late = alice.post("/api/rankings", json={"task_id": task["task_id"], "marks": rank_all(task, [1, 2, 3, 4])})
    assert late.status_code == 409 and "not held" in late.json()["detail"]
    assert site.store.history() == []


def test_a_skipped_task_goes_to_someone_else(make_site):
    site = make_site(tasks(2), overlap=1)
    alice, bob = site.client("alice"), site.client("bob")
    first = task_of(alice)["task_id"]
    assert alice.post("/api/skip", json={"task_id": first + 1}).status_code == 409  # not hers
    assert alice.post("/api/skip", json={"task_id": first}).status_code == 204
    assert task_of(alice)["task_id"] != first and task_of(bob)["task_id"] == first
    assert site.store.history() == []


def test_a_labeler_corrects_a_ranking_with_a_new_row_that_supersedes_it(site):
    alice, bob = site.client("alice"), site.client("bob")
    task = task_of(alice)
    first = alice.post("/api/rankings", json={"task_id": task["task_id"], "marks": rank_all(task, [1, 2, 3, 4])})
    first = first.json()["ranking_id"]
    assert f"/history/{first}/correct" in alice.get("/history").text
    page = alice.get(f"/history/{first}/correct")  # the ranking screen, filled in, in the order seen then
    assert page.status_code == 200 and f'data-supersedes="{first}"' in page.text
    assert [c["completion_id"] for c in task["completions"]] == re.findall(r'data-cid="([^"]+)"', page.text)
    assert re.findall(r'data-was="([^"]+)"', page.text) == ["1", "2", "3", "4"]
    fix = {"marks": rank_all(task, [4, 3, 2, "F"]), "fail_reasons": {task["completions"][3]["completion_id"]: "empty"},
           "comment": "misread the prompt", "checked_facts": True}
    r = alice.post(f"/api/rankings/{first}/corrections", json=fix)
    assert r.status_code == 201 and r.json()["seconds_spent"] is None, r.text
    new, old = site.store.history("alice")
    assert (new.ranking_id, new.supersedes, new.current, old.current) == (r.json()["ranking_id"], first, True, False)
    assert new.marks == fix["marks"] and old.marks == rank_all(task, [1, 2, 3, 4])  # the old row is kept as it was
    assert new.shown_order == old.shown_order and (new.comment, new.checked_facts) == ("misread the prompt", True)
    assert site.store.progress().rankings_done == 1  # still one labeler's ranking of the task
    assert "corrected" in alice.get("/history").text
    # a stale correction, someone else's ranking (as good as unknown: blind), an unknown one
    assert alice.post(f"/api/rankings/{first}/corrections", json=fix).status_code == 409
    assert alice.get(f"/history/{first}/correct").status_code == 409
    assert bob.post(f"/api/rankings/{new.ranking_id}/corrections", json=fix).status_code == 404
    assert bob.get(f"/history/{new.ranking_id}/correct").status_code == 404
    assert alice.post("/api/rankings/999/corrections", json=fix).status_code == 404
    assert len(site.store.history()) == 2


# ---- roles, CSRF, validation -------------------------------------------------------------------

ADMIN_GETS = ["/admin", "/admin/queue", "/admin/import", "/admin/pairs.jsonl", "/api/admin/report"]


def test_admin_routes_refuse_labelers_and_strangers(site):
    alice, ada, stranger = site.client("alice"), site.client("ada"), TestClient(site.app)
    for path in ADMIN_GETS:
        assert alice.get(path).status_code == 403, path
        assert stranger.get(path).status_code == 401, path
        assert ada.get(path).status_code in (200, 404), path  # 404: the report of no rankings
    upload = {"file": ("c.jsonl", b"", "application/json")}
    assert alice.post("/admin/import", files=upload, data={"overlap": "1"}).status_code == 403
    assert "Dashboard" in ada.get("/rank").text and "Dashboard" not in alice.get("/rank").text


def test_state_changes_without_the_csrf_token_are_refused(site):
    alice = site.client("alice", confirm=False)
    token = alice.headers.pop("x-csrf-token")
    before = site.store.row_counts()
    assert alice.post("/guideline/confirm", data={"version": 1}).status_code == 403
    assert alice.post("/guideline/confirm", data={"version": 1, "csrf": "0" * 64}).status_code == 403
    assert alice.post("/logout").status_code == 403
    assert site.store.row_counts() == before
    assert alice.post("/guideline/confirm", data={"version": 1, "csrf": token}).status_code == 303
    task = task_of(alice)
    body = {"task_id": task["task_id"], "marks": rank_all(task, [1, 2, 3, 4])}
    assert alice.post("/api/rankings", json=body).status_code == 403
    assert alice.post("/api/rankings", json=body, headers={"x-csrf-token": token[:-1] + "x"}).status_code == 403
    ada = site.client("ada")
    ada.headers.pop("x-csrf-token")
    line = b'{"prompt_id": "q", "completion_id": "a", "text": "x", "prompt": "p"}\n'
    files = {"file": ("c.jsonl", line, "application/json")}
    assert ada.post("/admin/import", files=files, data={"overlap": "1"}).status_code == 403
    assert site.store.history() == [] and site.store.progress().tasks == 3
    # a Bearer client needs no CSRF token: a browser never sends that header by itself
    assert TestClient(site.app).post("/api/rankings", json=body, headers=site.bearer("alice")).status_code == 201


def test_bad_rankings_are_refused_with_a_message_and_change_nothing(site):
    c = site.client("alice")
    task = task_of(c)
    ids = [comp["completion_id"] for comp in task["completions"]]
    good = {"task_id": task["task_id"], "marks": rank_all(task, [1, 2, 3, 4])}
    bad = [
        (400, {**good, "marks": {i: 1 for i in ids[:3]}}),  # a completion left unmarked (store)
        (400, {**good, "marks": {**good["marks"], "zz": 1}}),  # unknown completion (store)
        (400, {**good, "marks": rank_all(task, [1, 2, 3, 5])}),  # rank above K (store)
        (400, {**good, "fail_reasons": {ids[0]: "not an F"}}),  # a reason for a ranked completion (store)
        (422, {**good, "marks": rank_all(task, [0, 1, 2, 3])}),
        (422, {**good, "marks": rank_all(task, [1, 2, 3, "G"])}),
        (422, {**good, "marks": rank_all(task, [True, 2, 3, 4])}),
        (422, {**good, "marks": rank_all(task, ["1", 2, 3, 4])}),
        (422, {**good, "marks": rank_all(task, [1, 2, 3, "F"])}),  # F without a reason
        (422, {**good, "comment": "x" * 5001}),
        (422, {**good, "extra": 1}),
        (422, {**good, "task_id": 2**80}),
        (422, {**good, "task_id": 2**31}),  # beyond PostgreSQL's INTEGER: refused, not a 500
        (422, {"marks": good["marks"]}),
        (409, {**good, "task_id": task["task_id"] + 1}),  # not the task assigned
    ]
    before = site.store.row_counts()
    for status, body in bad:
        r = c.post("/api/rankings", json=body)
        assert r.status_code == status, (body, r.text)
        assert isinstance(r.json()["detail"], str) and r.json()["detail"], body
    for raw in (b"not json", b"[]", b"null"):
        r = c.post("/api/rankings", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"]
    assert site.store.row_counts() == before
    assert c.post("/api/rankings", json=good).status_code == 201


def test_import_and_export(site):
    ada = site.client("ada")
    lines = [{"prompt_id": "q1", "completion_id": f"q1-{j}", "text": f"t{j}", "prompt": "new prompt"} for j in range(3)]
    good = "".join(json.dumps(x) + "\n" for x in lines).encode()
    r = ada.post("/admin/import", files={"file": ("c.jsonl", good, "application/json")}, data={"overlap": "1"})
    assert r.status_code == 200 and "1 tasks added" in r.text
    r = ada.post("/admin/import", files={"file": ("c.jsonl", good, "application/json")}, data={"overlap": "1"})
    assert "0 tasks added, 1 already there" in r.text
    before = site.store.row_counts()
    for content, overlap in ((b'{"prompt_id": "q2"}\n', "1"), (b"\xff\xfe", "1"), (good[: len(good) // 3], "1"),
                             (good, "0"), (good, "x")):
        r = ada.post("/admin/import", files={"file": ("c.jsonl", content, "text/plain")}, data={"overlap": overlap})
        assert 400 <= r.status_code < 500 and "That did not work" in r.text, (content, overlap, r.status_code)
    assert site.store.row_counts() == before

    alice = site.client("alice")
    task = task_of(alice)
    marks = rank_all(task, [1, 1, 3, "F"])
    ids = list(marks)
    body = {"task_id": task["task_id"], "marks": marks, "fail_reasons": {ids[3]: "empty"}}
    assert alice.post("/api/rankings", json=body).status_code == 201
    export = ada.get("/admin/pairs.jsonl")
    assert export.status_code == 200 and "attachment" in export.headers["content-disposition"]
    pairs = [Pair.from_dict(json.loads(line)) for line in export.text.splitlines()]
    # ranks 1, 1, 3, F: the tie gives no pair; 2 × (beats 3rd) + 3 × (beats F) = 5 pairs
    assert len(pairs) == 5 and {p.labeler for p in pairs} == {"alice"} and {p.source for p in pairs} == {"human"}


# ---- escaping and headers ----------------------------------------------------------------------


def test_untrusted_text_comes_back_escaped(make_site):
    items = [("x1", XSS_PROMPT, [(XSS_ID, XSS_COMPLETION), ("c1", "plain")])]
    site = make_site(items, overlap=2)
    alice, bob, ada = site.client("alice"), site.client("bob"), site.client("ada")
    page = alice.get("/rank").text
    assert XSS_COMPLETION not in page and XSS_PROMPT not in page and XSS_ID not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert 'data-cid="c&#34;&gt;&lt;b&gt;x&lt;/b&gt;"' in page
    for c, marks in ((alice, [1, 2]), (bob, [2, 1])):
        task = task_of(c)
        assert c.post("/api/rankings", json={"task_id": task["task_id"], "marks": rank_all(task, marks),
                                             "comment": XSS_COMPLETION}).status_code == 201
    for c, path in ((alice, "/history"), (ada, "/admin/queue"), (ada, "/admin")):
        body = c.get(path).text
        assert XSS_COMPLETION not in body and XSS_PROMPT not in body and XSS_ID not in body, path


def test_security_headers_on_every_kind_of_response(site):
    alice = site.client("alice")
    for c, path in ((alice, "/rank"), (alice, "/api/task"), (alice, "/static/rank.js"), (alice, "/nope"),
                    (TestClient(site.app), "/api/me"), (alice, "/guideline")):
        r = c.get(path)
        assert r.headers["content-security-policy"] == CSP, path
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "same-origin"
    for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'", "object-src 'none'",
                      "frame-ancestors 'none'"):
        assert directive in CSP
    assert "no-store" in alice.get("/rank").headers["cache-control"]
    page = alice.get("/rank").text
    assert "<script>" not in page and " style=" not in page and " on" + "click=" not in page  # nothing inline


# ---- admin views -------------------------------------------------------------------------------


def _ranking(prompt_id, labeler, marks):
    from rlhfkit.data.records import Ranking

    return Ranking(f"{prompt_id}-{labeler}", prompt_id, labeler, marks, "p", {c: c for c in marks})


def test_disagreement_queue_puts_the_least_agreement_first():
    same, rev, flat = {"a": 1, "b": 2, "c": 3}, {"a": 3, "b": 2, "c": 1}, {"a": 1, "b": 1, "c": 1}
    rankings = [
        _ranking("agree", "u", same), _ranking("agree", "v", same),
        _ranking("reverse", "u", same), _ranking("reverse", "v", rev),
        _ranking("half", "u", same), _ranking("half", "v", {"a": 1, "b": 3, "c": 2}),
        _ranking("ties", "u", flat), _ranking("ties", "v", same),
        _ranking("alone", "u", same),
    ]  # fmt: skip
    queue = disagreement_queue(rankings)
    # reverse: 0 of 3 strict pairs agree; half: a>b, a>c agree, b-c disagrees → 2/3; ties: no strict pair
    assert [(r["prompt_id"], r["agreement"]) for r in queue] == [
        ("reverse", 0.0), ("half", pytest.approx(2 / 3)), ("agree", 1.0), ("ties", None)
    ]


def test_dashboard_shows_agreement_and_each_labeler(site):
    alice, bob, ada = site.client("alice"), site.client("bob"), site.client("ada")
    assert "No rankings yet" in ada.get("/admin").text
    for c, marks in ((alice, [1, 2, 3, 4]), (bob, [1, 2, 4, 3])):
        task = task_of(c)
        by_id = {f"c{j}": m for j, m in enumerate(marks)}  # by completion id, whatever the order shown
        assert c.post("/api/rankings", json={"task_id": task["task_id"], "marks": by_id}).status_code == 201
    page = ada.get("/admin").text
    # alice c0<c1<c2<c3, bob swaps c2/c3: 5 of 6 pairs agree
    assert "83.3%" in page and "alice" in page and "bob" in page
    report = ada.get("/api/admin/report").json()
    assert report["n_rankings"] == 2 and report["pairwise_agreement"] == pytest.approx(5 / 6)
    queue = ada.get("/admin/queue").text
    assert "p0" in queue and "83.3%" in queue
