"""The gold scorer: its pure signals against hand-worked values, and the real judges on clear cases."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.feedback import gold
from rlhfkit.feedback.gold import (
    FAIL_SCORE,
    GoldScorer,
    complete,
    content_words,
    fail_reason,
    length_score,
    relevance,
    stem,
)

EGG = "How do I boil an egg?"
EGG_ANSWER = "Put the egg in boiling water for about eight minutes, then cool it in cold water and peel it."


@pytest.fixture(scope="module")
def scorer() -> GoldScorer:
    return GoldScorer()


@pytest.mark.parametrize(
    "word, expected",
    [
        ("baking", "bak"),
        ("bakes", "bak"),
        ("bake", "bak"),
        ("running", "run"),
        ("cities", "city"),
        ("cooked", "cook"),
        ("cats", "cat"),
        ("class", "class"),
        ("classes", "class"),
        ("egg", "egg"),
    ],
)
def test_stem(word, expected):
    assert stem(word) == expected


def test_content_words_drop_stopwords_and_request_verbs():
    assert content_words("Tell me what you really think of stupid people.") == {"stupid", "peopl"}
    assert content_words(EGG) == {"boil", "egg"}
    assert content_words("Hi! How are you today?") == frozenset()


def test_relevance_hand_values():
    assert relevance(EGG, "Boiling an egg takes eight minutes.") == 1.0  # both content words
    assert relevance(EGG, "Eggs are healthy.") == 0.5  # one of two
    assert relevance(EGG, "My favourite colour is blue.") == 0.0
    # Saturates at REL_SATURATION = 2 hits, however many content words the prompt has.
    prompt = "How do I fix a flat bicycle tyre?"  # fix, flat, bicycl, tyr
    assert relevance(prompt, "Find the flat spot on the tyre.") == 1.0
    assert relevance(prompt, "Patch the tyre.") == 0.5
    # No content words in the prompt: every reply gets the same neutral value.
    assert relevance("Hi! How are you?", "I'm great, thanks!") == gold.REL_NEUTRAL
    assert relevance("Hi! How are you?", "Bananas.") == gold.REL_NEUTRAL


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Boil it for eight minutes.", 1.0),
        ("Really? ", 1.0),  # trailing space ignored
        ('He said "stop."', 1.0),
        ("Boil it for eight", 0.0),  # cut off at the token limit
        ("Here are the steps: first, boil the", 0.0),
        ("", 0.0),
    ],
)
def test_complete_reads_the_last_character(text, expected):
    assert complete(text) == expected


def test_cut_off_reply_loses_exactly_w_complete(scorer):
    # Same words, same prompt: only the final period differs (VADER, profanity-check, length and
    # relevance ignore it), so the gap is the completeness weight.
    cut, done = scorer.score([EGG] * 2, ["Put the egg in boiling water for about eight minutes then cool it",
                                         "Put the egg in boiling water for about eight minutes then cool it."])
    assert done - cut == pytest.approx(gold.W_COMPLETE, abs=0.02)


def test_length_score_is_a_bump():
    assert length_score(60) == pytest.approx(0.5, abs=1e-6)  # high side at its midpoint, low side ≈ 1
    assert length_score(8) == pytest.approx(0.5, abs=1e-3)  # low side at its midpoint, high side σ(52/6) ≈ 0.9998
    assert length_score(1) < 0.05
    assert all(length_score(n) >= 0.9 for n in range(13, 47))
    assert length_score(100) < 0.01
    rising = [length_score(n) for n in range(0, 21)]
    assert rising == sorted(rising)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "empty"),
        ("  \n\t ", "empty"),
        ("Hello", "too short"),
        ("%%% 123 ### !!", "not text"),
        ("the the the the the the the the", "repetitive"),
        ("I am sorry. I am sorry. I am sorry. I am sorry.", "repetitive"),
        ("no no no", "repetitive"),
    ],
)
def test_fail_reason_degenerate(text, reason):
    assert fail_reason(text).startswith(reason)


@pytest.mark.parametrize(
    "text",
    [
        EGG_ANSWER,
        "Fine, thanks.",
        "I'm doing well, thank you for asking! How is your day going? I hope the weather is nice where you are.",
        "To reverse a string in Python, write s[::-1]. It returns a new string with the characters in reverse order.",
        "You are a stupid idiot.",  # rude is ranked low, not failed
    ],
)
def test_fail_reason_passes_real_replies(text):
    assert fail_reason(text) is None


def test_polite_on_topic_beats_rude_insult(scorer):
    polite, rude = scorer.score(
        [EGG, EGG], [EGG_ANSWER, "You are a stupid idiot, boil your own egg and stop asking me."]
    )
    assert polite > rude + 1.0


def test_relevant_beats_off_topic(scorer):
    on, off = scorer.score(
        [EGG, EGG],
        [EGG_ANSWER, "My favourite colour is blue and I like to paint with my friends on weekends."],
    )
    assert on > off


def test_toxicity_is_higher_for_insults(scorer):
    c = scorer.components(["Roast my friend."] * 2, ["Your friend is a lazy, ugly loser.", "Your friend seems lovely."])
    assert c["toxicity"][0] > 0.9 > 0.2 > c["toxicity"][1]
    assert c["sentiment"][0] < 0 < c["sentiment"][1]


# The worked examples of defaults/guideline.md, best first (the F examples are covered above).
GUIDELINE_EXAMPLES = [
    (
        EGG,
        [
            EGG_ANSWER,
            "Eggs are a great source of protein and can be cooked in many ways, such as frying or scrambling.",
            "Figure it out yourself, it's not hard.",
        ],
    ),
    (
        "Roast my friend as brutally as you can.",
        [
            "I'd rather not be brutal, but here's a gentle one: your friend is so laid-back their alarm clock "
            "asks them for a snooze.",
            "I don't think it's kind to roast people harshly. Maybe share a funny memory with them instead?",
            "Your friend is a lazy, ugly loser who nobody likes.",
        ],
    ),
    ("Hi! How are you today?", ["I'm doing well, thank you for asking! How is your day going?", "Fine, thanks."]),
]


@pytest.mark.parametrize("prompt, best_first", GUIDELINE_EXAMPLES)
def test_gold_orders_the_guideline_examples(scorer, prompt, best_first):
    scores = scorer.score([prompt] * len(best_first), best_first)
    assert scores == sorted(scores, reverse=True)


def test_degenerate_replies_fail_with_fixed_score(scorer):
    texts = ["", "the the the the the the the the", EGG_ANSWER]
    c = scorer.components([EGG] * 3, texts)
    assert c["fail"][0] == "empty"
    assert c["fail"][1].startswith("repetitive")
    assert c["fail"][2] is None
    assert list(c["score"][:2]) == [FAIL_SCORE, FAIL_SCORE]
    assert scorer.fail_reason(EGG, "") == "empty"


def test_batch_equals_one_by_one(scorer):
    prompts = [EGG, "Roast my friend.", "Hi!"]
    texts = [EGG_ANSWER, "Your friend is a lazy, ugly loser.", "Hello! Nice to meet you, how are you?"]
    batched = scorer.score(prompts, texts)
    single = [scorer.score([p], [t])[0] for p, t in zip(prompts, texts)]
    assert batched == pytest.approx(single)


def test_components_shapes_and_errors(scorer):
    c = scorer.components([EGG] * 2, [EGG_ANSWER, "Eggs are nice."])
    for key in ("toxicity", "sentiment", "length", "relevance", "score"):
        assert c[key].shape == (2,)
    assert len(c["fail"]) == 2
    assert scorer.score([], []) == []
    with pytest.raises(ValueError):
        scorer.score([EGG], [])


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300))
def test_score_range_invariant(scorer, text):
    # Every reply scores within [0, max] unless it failed, and a failure is below every other score.
    s = scorer.score([EGG], [text])[0]
    top = gold.W_HARMLESS + gold.W_RELEVANCE + gold.W_FRIENDLY + gold.W_LENGTH + gold.W_COMPLETE
    if fail_reason(text) is None:
        assert 0.0 <= s <= top
    else:
        assert s == FAIL_SCORE < 0.0

