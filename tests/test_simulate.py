"""Simulated labelers: determinism, valid ranks, F, careless vs careful, position bias, agreement."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.data.records import FAIL
from rlhfkit.feedback.gold import GoldScorer
from rlhfkit.feedback.simulate import (
    CARELESS_FAIL_RATE,
    SimulatedLabeler,
    competition_ranks,
    make_labelers,
    pairwise_concordance,
)


class TableScorer:
    """A stand-in gold scorer: each text's score is looked up; texts starting with "FAIL" fail."""

    def __init__(self, table: dict[str, float]):
        self.table = table

    def components(self, prompts, completions):
        fail = ["stub fail" if c.startswith("FAIL") else None for c in completions]
        score = np.array([-1.0 if f else self.table.get(c, 0.0) for c, f in zip(completions, fail)])
        return {"score": score, "fail": fail}


@pytest.fixture(scope="module")
def gold() -> GoldScorer:
    return GoldScorer()


def test_competition_ranks_hand_values():
    assert competition_ranks([3.0, 1.0, 2.0], eps=0.01) == [1, 3, 2]
    assert competition_ranks([1.0, 1.005, 0.5, 0.5], eps=0.02) == [1, 1, 3, 3]
    assert competition_ranks([2.0, 1.0, 1.0, 0.0], eps=0.02) == [1, 2, 2, 4]
    # Tie groups chain: 1.0 ~ 0.99 ~ 0.98 although 1.0 and 0.98 are 0.02 apart.
    assert competition_ranks([1.0, 0.99, 0.98], eps=0.015) == [1, 1, 1]
    assert competition_ranks([], eps=0.02) == []


def _tasks(n, texts):
    return [(f"Task {t}: how do I boil an egg?", list(texts)) for t in range(n)]


def test_same_seed_same_rankings_whatever_the_call_order():
    scorer = TableScorer({"a": 3.0, "b": 2.9, "c": 2.8, "d": 1.0})
    tasks = _tasks(30, "abcd")
    one = SimulatedLabeler("sim-01", noise=0.5, seed=7, scorer=scorer)
    two = SimulatedLabeler("sim-01", noise=0.5, seed=7, scorer=scorer)
    forward = [one.rank(p, t, [0, 1, 2, 3]) for p, t in tasks]
    backward = [two.rank(p, t, [0, 1, 2, 3]) for p, t in reversed(tasks)][::-1]
    assert forward == backward
    other = SimulatedLabeler("sim-01", noise=0.5, seed=8, scorer=scorer)
    assert [other.rank(p, t, [0, 1, 2, 3]) for p, t in tasks] != forward


def test_judgement_follows_the_text_not_its_place_in_the_list():
    scorer = TableScorer({"a": 3.0, "b": 2.9, "c": 2.8, "d": 2.7})
    lab = SimulatedLabeler("sim-01", noise=0.5, position_bias=0.3, seed=1, scorer=scorer)
    for prompt, texts in _tasks(20, "abcd"):
        marks = lab.rank(prompt, texts, [2, 0, 1, 3])  # "c" shown first
        perm = [3, 1, 0, 2]  # the same texts in another list order: d b a c; "c" still shown first
        again = lab.rank(prompt, [texts[i] for i in perm], [3, 2, 1, 0])
        assert again == [marks[i] for i in perm]


def _assert_valid(marks, k):
    assert len(marks) == k
    ranks = [m for m in marks if m != FAIL]
    assert all(isinstance(r, int) and 1 <= r <= k for r in ranks)
    for r in ranks:  # competition ranking: r − 1 replies are strictly better
        assert sum(1 for q in ranks if q < r) == r - 1


@settings(max_examples=200, deadline=None)
@given(
    scores=st.lists(st.floats(-2, 6) | st.just(1.0) | st.just("FAIL"), min_size=1, max_size=7),
    noise=st.floats(0, 3),
    bias=st.floats(-1, 1),
    careless=st.booleans(),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_ranks_always_valid(scores, noise, bias, careless, seed, data):
    texts = [f"FAIL {i}" if s == "FAIL" else f"t{i}" for i, s in enumerate(scores)]
    scorer = TableScorer({t: s for t, s in zip(texts, scores) if s != "FAIL"})
    shown = data.draw(st.permutations(range(len(texts))))
    lab = SimulatedLabeler("x", noise=noise, position_bias=bias, careless=careless, seed=seed, scorer=scorer)
    marks = lab.rank("p", texts, list(shown))
    _assert_valid(marks, len(texts))
    if not careless:  # careful labelers fail exactly the failed replies
        assert [m == FAIL for m in marks] == [t.startswith("FAIL") for t in texts]


def test_shown_order_must_be_a_permutation():
    lab = SimulatedLabeler("x", scorer=TableScorer({}))
    with pytest.raises(ValueError):
        lab.rank("p", ["a", "b"], [0, 0])
    with pytest.raises(ValueError):
        lab.rank("p", ["a", "b"], [0])


def test_identical_replies_tie():
    lab = SimulatedLabeler("x", noise=0.5, seed=3, scorer=TableScorer({"same": 2.0, "bad": -0.5}))
    assert lab.rank("p", ["bad", "same", "same"], [0, 1, 2]) == [3, 1, 1]


def test_careful_labelers_get_clear_cases_right_careless_do_not():
    # Gold gap of 2.5: polite on-topic vs insult in the real scorer's units.
    scorer = TableScorer({"good": 4.5, "bad": 2.0})
    tasks = _tasks(300, ["good", "bad"])
    careful = SimulatedLabeler("c", seed=1, scorer=scorer)
    careless = SimulatedLabeler("z", careless=True, seed=1, scorer=scorer)
    careful_right = np.mean([careful.rank(p, t, [1, 0]) == [1, 2] for p, t in tasks])
    careless_right = np.mean([careless.rank(p, t, [1, 0]) == [1, 2] for p, t in tasks])
    assert careful_right > 0.98
    assert 0.4 < careless_right < 0.7  # near chance: P(N(0,10²·2) < 2.5) ≈ 0.57


def test_position_bias_raises_first_shown_win_rate():
    scorer = TableScorer({t: 2.0 for t in "abcd"})  # equal gold: only noise and bias decide
    tasks = _tasks(600, "abcd")
    rng = np.random.default_rng(0)
    orders = [rng.permutation(4).tolist() for _ in tasks]

    def first_shown_wins(bias):
        lab = SimulatedLabeler("x", noise=0.5, position_bias=bias, seed=2, scorer=scorer)
        return np.mean([lab.rank(p, t, o)[o[0]] == 1 for (p, t), o in zip(tasks, orders)])

    unbiased, biased = first_shown_wins(0.0), first_shown_wins(0.5)
    assert abs(unbiased - 0.25) < 0.06  # chance among 4
    assert biased > unbiased + 0.15


def test_failed_replies_marked_f_by_careful_rarely_by_careless(gold):
    texts = ["", "the the the the the the the the", "Put the egg in boiling water for eight minutes, then peel it."]
    careful = SimulatedLabeler("c", seed=5, scorer=gold)
    careless = SimulatedLabeler("z", careless=True, seed=5, scorer=gold)
    n, careless_f = 200, 0
    for t in range(n):
        prompt = f"Task {t}: how do I boil an egg?"
        assert careful.rank(prompt, texts, [0, 1, 2]) == [FAIL, FAIL, 1]
        marks = careless.rank(prompt, texts, [0, 1, 2])
        _assert_valid(marks, 3)
        assert marks[2] != FAIL
        careless_f += (marks[0] == FAIL) + (marks[1] == FAIL)
    assert 0.5 * CARELESS_FAIL_RATE < careless_f / (2 * n) < 1.5 * CARELESS_FAIL_RATE


def test_make_labelers():
    labs = make_labelers(6, n_careless=2, noise=0.4, position_bias=0.1, seed=3, scorer=TableScorer({}))
    assert [lab.name for lab in labs] == [f"sim-0{i}" for i in range(1, 7)]
    assert sum(lab.careless for lab in labs) == 2
    assert all(0.3 <= lab.noise <= 0.5 for lab in labs)
    assert len({lab.seed for lab in labs}) == 6
    assert all(lab.position_bias == 0.1 for lab in labs)
    again = make_labelers(6, n_careless=2, noise=0.4, position_bias=0.1, seed=3)
    assert [repr(a) for a in again] == [repr(b) for b in labs]
    with pytest.raises(ValueError):
        make_labelers(2, n_careless=3)


def test_pairwise_concordance_hand_values():
    assert pairwise_concordance([[1, 2, 3]], [[1, 3, 2]]) == pytest.approx(2 / 3)
    assert pairwise_concordance([[1, 1, 3]], [[1, 2, 3]]) == 1.0  # the tied pair is skipped
    assert pairwise_concordance([[1, FAIL]], [[FAIL, 1]]) == 0.0  # F is worse than any rank
    assert pairwise_concordance([[1, 2], [2, 1]], [[1, 2], [1, 2]]) == 0.5
    assert np.isnan(pairwise_concordance([[FAIL, FAIL]], [[1, 2]]))


def test_careful_labelers_agree_more_than_careless():
    rng = np.random.default_rng(0)
    tasks = []
    for t in range(150):
        gold_scores = rng.normal(3.0, 1.0, size=4)  # the gold's spread within a prompt (~1 unit; see DEFAULT_NOISE)
        texts = [f"t{t}-{i}" for i in range(4)]
        tasks.append((f"p{t}", texts, dict(zip(texts, gold_scores))))
    scorer = TableScorer({k: v for _, _, table in tasks for k, v in table.items()})
    a, b = (SimulatedLabeler(n, seed=i, scorer=scorer) for i, n in enumerate(["a", "b"]))
    z = SimulatedLabeler("z", careless=True, seed=9, scorer=scorer)
    ra, rb, rz = ([lab.rank(p, t, [0, 1, 2, 3]) for p, t, _ in tasks] for lab in (a, b, z))
    careful = pairwise_concordance(ra, rb)
    assert 0.6 < careful < 0.95
    assert abs(pairwise_concordance(ra, rz) - 0.5) < 0.1
