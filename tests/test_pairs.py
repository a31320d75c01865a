"""Rankings → pairs: hand-worked cases, invariants (hypothesis), bad rankings."""

from __future__ import annotations

import random
from collections import Counter
from math import comb

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.data.errors import RecordError
from rlhfkit.data.pairs import ranking_to_pairs, rankings_to_pairs, validate_ranking
from rlhfkit.data.records import FAIL, Ranking


def _ranking(marks: dict, *, texts: dict | None = None, **kw) -> Ranking:
    texts = {cid: f"text of {cid}" for cid in marks} if texts is None else texts
    fields = {"ranking_id": "r1", "prompt_id": "p1", "labeler": "ann", "prompt": "Say something."} | kw
    return Ranking(marks=marks, texts=texts, **fields)


def _ids(pairs) -> list[tuple[str, str]]:
    # texts are "text of <id>"
    return [(p.chosen.removeprefix("text of "), p.rejected.removeprefix("text of ")) for p in pairs]


# ---------------------------------------------------------------- hand-worked


def test_ties_and_fail():
    pairs = ranking_to_pairs(_ranking({"d": FAIL, "c": 2, "b": 2, "a": 1}))
    assert _ids(pairs) == [("a", "b"), ("a", "c"), ("a", "d"), ("b", "d"), ("c", "d")]


def test_competition_ranks_and_two_fails():
    # Ranks 1, 1, 3, 4 ("standard competition" ranking) and two F: C(6,2) − 1 tie − 1 F–F = 13 pairs.
    pairs = ranking_to_pairs(_ranking({"a": 1, "b": 1, "c": 3, "e": FAIL, "f": FAIL, "g": 4}))
    assert _ids(pairs) == [
        ("a", "c"), ("a", "e"), ("a", "f"), ("a", "g"),
        ("b", "c"), ("b", "e"), ("b", "f"), ("b", "g"),
        ("c", "e"), ("c", "f"), ("c", "g"),
        ("g", "e"), ("g", "f"),
    ]  # fmt: skip


def test_pair_keeps_provenance():
    (pair,) = ranking_to_pairs(
        _ranking({"x": 2, "y": 1}, ranking_id="r7", prompt_id="p3", labeler="bob"), source="sim", weight=0.5
    )
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Say something.", "text of y", "text of x")
    assert (pair.labeler, pair.ranking_id, pair.prompt_id, pair.source, pair.weight) == ("bob", "r7", "p3", "sim", 0.5)


def test_all_tied_or_failed_gives_nothing():
    assert ranking_to_pairs(_ranking({"a": 1, "b": 1})) == []
    assert ranking_to_pairs(_ranking({"a": FAIL, "b": FAIL, "c": FAIL})) == []
    assert ranking_to_pairs(_ranking({"a": 1})) == []


def test_identical_texts_give_no_pair():
    texts = {"a": "same", "b": "same", "c": "other"}
    pairs = ranking_to_pairs(_ranking({"a": 1, "b": 2, "c": 3}, texts=texts))
    assert [(p.chosen, p.rejected) for p in pairs] == [("same", "other"), ("same", "other")]


def test_rankings_to_pairs_concatenates_in_order():
    r1 = _ranking({"a": 1, "b": 2}, ranking_id="r1")
    r2 = _ranking({"a": 2, "b": 1}, ranking_id="r2")
    assert [p.ranking_id for p in rankings_to_pairs([r2, r1])] == ["r2", "r1"]


# ---------------------------------------------------------------- errors


def test_missing_text_is_an_error_only_where_needed():
    # b's text is missing: harmless while b is in no pair (a tie), an error once it is.
    assert ranking_to_pairs(_ranking({"a": 1, "b": 1}, texts={"a": "x"})) == []
    with pytest.raises(RecordError, match="no text for completion 'b'") as info:
        ranking_to_pairs(_ranking({"a": 1, "b": 1, "c": 3}, texts={"a": "x", "c": "z"}))
    assert info.value.field == "texts"


def test_empty_prompt_is_an_error():
    with pytest.raises(RecordError, match="ranking 'r1'.*field 'prompt' is empty"):
        ranking_to_pairs(_ranking({"a": 1, "b": 2}, prompt=""))


@pytest.mark.parametrize(
    "entries, message",
    [
        ([("a", 1), ("b", 2), ("z", 3)], r"unknown completions: \['z'\]"),
        ([("a", 1), ("b", 2)], r"unmarked: \['c'\]"),
        ([("a", 1), ("b", 2), ("a", 3), ("c", 3)], "completion 'a' is marked twice"),
        ([("a", 1), ("b", 4), ("c", 2)], r"mark 4; want a rank 1..3 or 'F'"),
        ([("a", 0), ("b", 1), ("c", 2)], "mark 0"),
        ([("a", True), ("b", 1), ("c", 2)], "mark True"),
        ([("a", "1"), ("b", 1), ("c", 2)], "mark '1'"),
        ([("a", "f"), ("b", 1), ("c", 2)], "mark 'f'"),
    ],
)
def test_validate_ranking_refuses(entries, message):
    with pytest.raises(RecordError, match=message) as info:
        validate_ranking(entries, {"a", "b", "c"})
    assert info.value.field == "marks"


def test_validate_ranking_accepts_and_returns_marks():
    assert validate_ranking([("a", 1), ("b", FAIL), ("c", 1)], {"a", "b", "c"}) == {"a": 1, "b": FAIL, "c": 1}
    assert validate_ranking(_ranking({"a": 2, "b": 1}), {"a", "b"}) == {"a": 2, "b": 1}


def test_ranking_to_pairs_refuses_out_of_range_marks():
    with pytest.raises(RecordError, match="mark 3"):
        ranking_to_pairs(_ranking({"a": 1, "b": 3}))


# ---------------------------------------------------------------- invariants


@st.composite
def marks_strategy(draw) -> dict:
    k = draw(st.integers(min_value=1, max_value=8))
    ids = draw(st.lists(st.text("abcxyz0123", min_size=1, max_size=4), min_size=k, max_size=k, unique=True))
    marks = draw(st.lists(st.one_of(st.integers(1, k), st.just(FAIL)), min_size=k, max_size=k))
    return dict(zip(ids, marks))


def _beats(a, b) -> bool:
    return a != FAIL and (b == FAIL or a < b)


@settings(max_examples=300, deadline=None)
@given(marks=marks_strategy(), seed=st.integers(0, 2**16))
def test_pair_invariants(marks, seed):
    pairs = ranking_to_pairs(_ranking(marks))
    ids = _ids(pairs)

    # count = C(K, 2) − tied pairs − F–F pairs
    groups = Counter(marks.values())
    ties = sum(comb(n, 2) for mark, n in groups.items() if mark != FAIL)
    assert len(pairs) == comb(len(marks), 2) - ties - comb(groups[FAIL], 2)

    # no pair contradicts the ranking, and no pair appears twice (in either direction)
    assert all(_beats(marks[c], marks[r]) for c, r in ids)
    assert len({frozenset(p) for p in ids}) == len(ids)

    # listing the marks in another order changes nothing (not even the order of the pairs)
    items = list(marks.items())
    random.Random(seed).shuffle(items)
    assert ranking_to_pairs(_ranking(dict(items))) == pairs
