"""Agreement and labeler quality: hand-worked values, Krippendorff's textbook example, parity with
scipy's τ-b, and a simulation in which flagging must find the random labeler."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import kendalltau

from rlhfkit.data.records import Ranking
from rlhfkit.feedback.agreement import (
    LabelerQuality,
    PairCounts,
    agreement_counts,
    agreement_report,
    agreement_with_consensus,
    competition_ranks,
    consensus,
    f_rate,
    flag_poor_labelers,
    gold_accuracy,
    kendall_tau_b,
    krippendorff_alpha,
    labeler_quality,
    mean_kendall_tau_b,
    median_seconds,
    mid_ranks,
    overall_agreement,
    pair_preferences,
    pairwise_agreement_table,
    percent_agreement,
    position_bias,
    ranking_units,
    robust_z,
    tie_rate,
)

F = "F"


def R(labeler, task, marks, rid=None):
    return Ranking(ranking_id=rid or f"{task}/{labeler}", prompt_id=task, labeler=labeler, marks=marks)


# A: a best, b = c tied, d failed.   B: b best, then a, then c, d failed.
A = {"a": 1, "b": 2, "c": 2, "d": F}
B = {"a": 2, "b": 1, "c": 3, "d": F}


# --- two rankings -------------------------------------------------------------------------------


def test_pair_preferences_ties_and_f():
    # a(1) vs b(2): a; a vs c(2): a; a vs d(F): a; b vs c: tie; b, c vs d(F): F loses.
    assert pair_preferences(A) == {
        ("a", "b"): 1, ("a", "c"): 1, ("a", "d"): 1, ("b", "c"): 0, ("b", "d"): 1, ("c", "d"): 1,
    }
    # Two F's are tied; a pair whose smaller id is worse is −1.
    assert pair_preferences({"x": F, "y": F, "z": 1}) == {("x", "y"): 0, ("x", "z"): -1, ("y", "z"): -1}
    with pytest.raises(ValueError):
        pair_preferences({"a": "best", "b": 1})


def test_percent_agreement_hand_worked():
    # Pairs:        ab  ac  ad  bc  bd  cd
    #   A:          +   +   +   0   +   +
    #   B:          −   +   +   +   +   +
    # both strict: ab (disagree), ac ad bd cd (agree) → 4/5; bc tied by A only.
    assert agreement_counts(A, B) == PairCounts(agree=4, disagree=1, tie_one=1, tie_both=0)
    assert percent_agreement(A, B) == pytest.approx(0.8)
    assert percent_agreement(A, B) == percent_agreement(B, A)
    # Two F's in both: the pair is a tie for both, outside the strict pairs.
    # x(1) y(F) z(F) vs x(1) y(2) z(F): xy agree, xz agree, yz tie_one → 2/2.
    assert agreement_counts({"x": 1, "y": F, "z": F}, {"x": 1, "y": 2, "z": F}) == PairCounts(2, 0, 1, 0)
    assert agreement_counts({"x": 1, "y": F, "z": F}, {"x": 2, "y": F, "z": F}) == PairCounts(2, 0, 0, 1)


def test_percent_agreement_only_over_shared_completions_and_nan_without_strict_pairs():
    # Only a, b are shared; B prefers b, this one prefers a → 0/1.
    assert agreement_counts(B, {"a": 1, "b": 2, "e": 3}) == PairCounts(0, 1, 0, 0)
    assert math.isnan(percent_agreement({"a": 1, "b": 1}, {"a": 1, "b": 2}))


def test_kendall_tau_b_hand_worked_and_scipy():
    # Concordant ac ad bd cd = 4, discordant ab = 1; n0 = 6 pairs, A ties 1 (bc), B ties 0.
    # τ-b = (4 − 1) / sqrt((6 − 1)(6 − 0)) = 3 / sqrt(30) = 0.5477.
    assert kendall_tau_b(A, B) == pytest.approx(3 / math.sqrt(30))
    # scipy's tau-b on the same data with F as a value below every rank (5).
    assert kendall_tau_b(A, B) == pytest.approx(kendalltau([1, 2, 2, 5], [2, 1, 3, 5]).statistic)
    # Ties in both: x = 1 1 2 F, y = 1 2 2 F.  Pairs ab: x0 y+; ac: ++; ad: ++; bc: ++; bd: ++; cd: x+ y0.
    # n_c = 4, n_d = 0, n1 = 1, n2 = 1 → 4 / sqrt(5 · 5) = 0.8.
    x, y = {"a": 1, "b": 1, "c": 2, "d": F}, {"a": 1, "b": 2, "c": 2, "d": F}
    assert kendall_tau_b(x, y) == pytest.approx(0.8)
    assert kendall_tau_b(x, y) == pytest.approx(kendalltau([1, 1, 2, 9], [1, 2, 2, 9]).statistic)


def test_kendall_tau_b_extremes():
    m = {"a": 1, "b": 2, "c": 3}
    assert kendall_tau_b(m, m) == 1.0
    assert kendall_tau_b(m, {"a": 3, "b": 2, "c": 1}) == -1.0
    assert math.isnan(kendall_tau_b(m, {"a": F, "b": F, "c": F}))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3)), min_size=2, max_size=7))
def test_kendall_tau_b_matches_scipy_on_tied_ranks(pairs):
    # Small rank ranges force many ties; 3 stands in for F half the time to exercise the F path.
    a = {f"c{i}": (F if x == 3 else x) for i, (x, _) in enumerate(pairs)}
    b = {f"c{i}": y for i, (_, y) in enumerate(pairs)}
    ours = kendall_tau_b(a, b)
    ref = kendalltau([x for x, _ in pairs], [y for _, y in pairs]).statistic
    assert (math.isnan(ours) and math.isnan(ref)) or ours == pytest.approx(ref)


# --- Krippendorff's alpha -----------------------------------------------------------------------

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section E: 4 observers × 12 units,
# missing values; published α: nominal 0.743, ordinal 0.815, interval 0.849.
N = None
KRIPP_UNITS = list(
    zip(
        [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],  # observer A
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],  # observer B
        [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],  # observer C
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],  # observer D
    )
)


@pytest.mark.parametrize("level, published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_textbook_example(level, published):
    assert round(krippendorff_alpha(KRIPP_UNITS, level), 3) == published


def test_krippendorff_hand_worked():
    # Units [1,2] [2,3] [1,1] [3,3], two coders each (m_u − 1 = 1), so each ordered pair counts 1:
    # o = [[2,1,0],[1,0,1],[0,1,2]], n_c = (3, 2, 3), n = 8.
    units = [[1, 2], [2, 3], [1, 1], [3, 3]]
    # nominal: D_o = 4 disagreeing pairs; Σ_{c≠k} n_c n_k = 2(6 + 6 + 9) = 42; α = 1 − 7·4/42 = 1/3.
    assert krippendorff_alpha(units, "nominal") == pytest.approx(1 / 3)
    # ordinal: δ²(1,2) = (3 + 2 − 5/2)² = 6.25, δ²(2,3) = 6.25, δ²(1,3) = (8 − 3)² = 25.
    # Σ o δ² = 2·6.25 + 2·6.25 = 25; Σ n n δ² = 2(6·6.25 + 6·6.25 + 9·25) = 600;
    # α = 1 − 7·25/600 = 0.70833.
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(1 - 7 * 25 / 600)
    # A unit with one value is not pairable and changes nothing.
    assert krippendorff_alpha(units + [[3, None, None]], "ordinal") == pytest.approx(1 - 7 * 25 / 600)


def test_krippendorff_invariants():
    assert krippendorff_alpha([[1, 1], [2, 2, 2], [3, None, 3]], "ordinal") == 1.0
    assert math.isnan(krippendorff_alpha([[2, 2], [2, 2]], "ordinal"))  # no variation
    assert math.isnan(krippendorff_alpha([[1], [2, None]], "ordinal"))  # nothing pairable
    # Ordinal α depends only on the order of the values: a monotone relabelling leaves it unchanged.
    relabelled = [[None if v is None else v**3 + 10 for v in u] for u in KRIPP_UNITS]
    assert krippendorff_alpha(relabelled, "ordinal") == pytest.approx(krippendorff_alpha(KRIPP_UNITS, "ordinal"))
    with pytest.raises(ValueError):
        krippendorff_alpha(KRIPP_UNITS, "ratio-ish")


def test_ranking_units_use_competition_ranks_and_f_below_every_rank():
    # "1,1,2" and "1,1,3" are the same ranking; F = K + 1 = 4.
    assert competition_ranks({"a": 1, "b": 1, "c": 2}) == competition_ranks({"a": 1, "b": 1, "c": 3}) == {
        "a": 1, "b": 1, "c": 3,
    }
    assert competition_ranks({"a": 2, "b": F, "c": 1}) == {"a": 2, "b": 4, "c": 1}
    rankings = [R("x", "p", {"a": 1, "b": 1, "c": 2}), R("y", "p", {"a": 1, "b": 2, "c": F}), R("x", "q", {"a": 1})]
    units = ranking_units(rankings)
    # task p: units a, b, c with (x, y) values; task q: one unit with only x.
    assert units == [[1, 1], [1, 2], [3, 4], [1]]


# --- many labelers ------------------------------------------------------------------------------

P1 = [
    R("X", "p1", {"a": 1, "b": 2, "c": 3}),
    R("Y", "p1", {"a": 1, "b": 3, "c": 2}),
    R("Z", "p1", {"a": 2, "b": 1, "c": 3}),
]
P2 = [R("X", "p2", {"a": 1, "b": 1, "c": F}), R("Y", "p2", {"a": 1, "b": 2, "c": F})]
STALE = R("X", "p1", {"a": 3, "b": 2, "c": 1}, rid="p1/X/old")  # re-ranked later: must not count


def test_pairwise_agreement_table_hand_worked():
    # p1  X/Y: ab agree, ac agree, bc disagree → 2/3; X/Z: ab dis, ac, bc agree → 2/3;
    #     Y/Z: ab dis, ac agree, bc dis (Y: c over b; Z: b over c) → 1/3.
    # p2  X/Y: ab tied by X (not counted), ac agree, bc agree → 2/2.
    table = pairwise_agreement_table([STALE, *P1, *P2])
    assert table == {("X", "Y"): (4, 5), ("X", "Z"): (2, 3), ("Y", "Z"): (1, 3)}
    assert overall_agreement(table) == pytest.approx(7 / 11)
    assert math.isnan(overall_agreement({}))


def test_mean_kendall_tau_b():
    # p1: X/Y 1/3 (2 conc, 1 disc, no ties), X/Z 1/3, Y/Z −1/3;
    # p2: X/Y: conc ac, bc = 2, X ties ab → 2 / sqrt((3 − 1)(3 − 0)) = 2/sqrt(6).
    expected = (1 / 3 + 1 / 3 - 1 / 3 + 2 / math.sqrt(6)) / 4
    assert mean_kendall_tau_b([*P1, *P2]) == pytest.approx(expected)
    # A task where one labeler tied everything has no τ-b (NaN): it is left out, not counted as 0.
    all_tied = [R("X", "p3", {"a": 1, "b": 1}), R("Y", "p3", {"a": 1, "b": 2})]
    assert mean_kendall_tau_b([*P1, *P2, *all_tied]) == pytest.approx(expected)


def test_mid_ranks_and_consensus():
    assert mid_ranks({"a": 1, "b": 1, "c": F, "d": F, "e": 3}) == {"a": 1.5, "b": 1.5, "e": 3.0, "c": 4.5, "d": 4.5}
    # Without X: Y's (1, 3, 2) and Z's (2, 1, 3) → a 1.5, b 2, c 2.5.
    assert consensus(P1, exclude="X") == {"a": 1.5, "b": 2.0, "c": 2.5}
    # Everyone: a (1+1+2)/3, b (2+3+1)/3, c (3+2+3)/3.
    assert consensus(P1) == pytest.approx({"a": 4 / 3, "b": 2.0, "c": 8 / 3})
    assert consensus(P1[:1], exclude="X") == {}


def test_agreement_with_consensus_hand_worked():
    # p1 without X: a < b < c, X agrees on all 3.  Without Y: a = b (1.5) < c (3): strict ac, bc;
    #    Y (1,3,2) agrees on ac, not bc → 1/2.  Without Z: a 1 < b = c 2.5: strict ab, ac; Z agrees on ac → 1/2.
    # p2 without X: Y's a < b < c; X ties ab (half credit), agrees on ac, bc → 2.5/3.
    #    Without Y: X's a = b < c: strict ac, bc; Y agrees on both → 2/2.
    # X: (3 + 2.5)/6, Y: (1 + 2)/4, Z: 1/2.
    got = agreement_with_consensus([STALE, *P1, *P2])
    assert got == pytest.approx({"X": 5.5 / 6, "Y": 3 / 4, "Z": 1 / 2})
    assert math.isnan(agreement_with_consensus([R("solo", "p9", {"a": 1, "b": 2})])["solo"])


def test_tying_or_failing_everything_scores_chance():
    others = [R(f"L{i}", "p", {"a": 1, "b": 2, "c": 3, "d": 4}) for i in range(3)]
    assert agreement_with_consensus([*others, R("lazy", "p", {"a": F, "b": F, "c": F, "d": F})])["lazy"] == 0.5
    assert agreement_with_consensus([*others, R("lazy", "p", {"a": 1, "b": 1, "c": 1, "d": 1})])["lazy"] == 0.5


# --- per-labeler signals ------------------------------------------------------------------------


def test_position_bias_hand_worked():
    rankings = [
        R("P", "t1", {"a": 1, "b": 2, "c": 3, "d": 4}),  # shown a first; a best alone: credit 1 (t = 1)
        R("P", "t2", {"a": 1, "b": 1, "c": 3, "d": 4}),  # shown b first; b in a 2-way top tie: 1/2 (t = 2)
        R("P", "t3", {"a": 1, "b": 2, "c": 3, "d": F}),  # shown d first; d failed: 0 (t = 1)
        R("P", "t4", {"a": 2, "b": 1, "c": 3, "d": 4}),  # shown b first; b best: 1 (t = 1)
        R("P", "t5", {"a": F, "b": F, "c": F, "d": F}),  # no best at all: skipped
        R("P", "t6", {"a": 1, "b": 2, "c": 3, "d": 4}),  # no shown order: skipped
    ]
    shown = {"t1/P": ["a", "b", "c", "d"], "t2/P": ["b", "a", "c", "d"], "t3/P": ["d", "c", "b", "a"],
             "t4/P": ["b", "c", "a", "d"], "t5/P": ["a", "b", "c", "d"]}
    pb = position_bias(rankings, shown)["P"]
    # observed 2.5, expected 4 · 1/4 = 1, most possible beyond chance 4 · 3/4 = 3 → bias 1.5/3 = 0.5.
    # null variance Σ 1/(tK) − 1/K² = 3 · 3/16 + (1/8 − 1/16) = 10/16 → z = 1.5 / sqrt(0.625).
    assert pb.n == 4
    assert pb.bias == pytest.approx(0.5)
    assert pb.z == pytest.approx(1.5 / math.sqrt(0.625))


def test_f_rate_tie_rate_median_seconds():
    rankings = [
        R("X", "p1", {"a": 1, "b": 1, "c": F, "d": F}),  # 2 F of 4; ranked pairs: ab tied → 1/1
        R("X", "p2", {"a": 1, "b": 2, "c": 3, "d": F}),  # 1 F of 4; ranked pairs ab ac bc, none tied → 0/3
        R("Y", "p1", {"a": 1, "b": 2}),
    ]
    assert f_rate(rankings) == {"X": 3 / 8, "Y": 0.0}
    assert tie_rate(rankings) == {"X": 1 / 4, "Y": 0.0}
    assert median_seconds(rankings, {"p1/X": 10.0, "p2/X": 30.0, "other": 1.0}) == {"X": 20.0}


def test_gold_accuracy_best_completion_and_pairs():
    rankings = [
        R("X", "g1", {"a": 1, "b": 2, "c": 3}),  # gold best a: beats b, c → 2/2
        R("Y", "g1", {"a": 2, "b": 1, "c": 2}),  # a loses to b (0), ties c (1/2) → 0.5/2
        R("X", "g2", {"a": 1, "b": 2, "c": F, "d": F}),  # (b, a) wrong; (a, c) right; (c, d) both F: half
        #                                                  (b, z): z not marked, skipped → X 3.5/5
        R("Y", "other", {"a": 1, "b": 2}),  # no gold for this task
    ]
    gold = {"g1": "a", "g2": [("b", "a"), ("a", "c"), ("c", "d"), ("b", "z")]}
    assert gold_accuracy(rankings, gold) == pytest.approx({"X": 3.5 / 5, "Y": 0.25})


# --- quality and flags --------------------------------------------------------------------------


def test_labeler_quality_score_hand_worked():
    # Consensus agreement X 11/12, Y 3/4, Z 1/2 (test above) → 2a − 1 = 5/6, 1/2, 0.
    q = labeler_quality([STALE, *P1, *P2])
    assert {k: v.score for k, v in q.items()} == pytest.approx({"X": 5 / 6, "Y": 0.5, "Z": 0.0})
    assert q["X"].n_rankings == 2 and q["X"].consensus_pairs == 6 and math.isnan(q["X"].gold_accuracy)
    # Gold best a on p1: X 2/2, Y (a1 beats b3, c2) 2/2, Z (a2 loses to b1, beats c3) 1/2.
    # a = mean(consensus, gold): X (11/12 + 1)/2 = 23/24 → 11/12; Y (3/4 + 1)/2 = 7/8 → 3/4; Z 1/2 → 0.
    q = labeler_quality([*P1, *P2], gold={"p1": "a"})
    assert {k: v.score for k, v in q.items()} == pytest.approx({"X": 11 / 12, "Y": 0.75, "Z": 0.0})


def test_position_bias_lowers_the_score_and_is_flagged():
    # P and Q rank 12 tasks identically (consensus agreement 1 each); P is always shown its favourite
    # first, Q its second. P: observed 12, expected 3, var 12 · 3/16 = 2.25 → bias 9/9 = 1, z = 9/1.5 = 6,
    # se = bias/z = 1/6; clear bias = 1 − 2/6 = 2/3 → score 1 · (1 − 2/3) = 1/3. Q: bias −1/3, no penalty.
    marks = {"a": 1, "b": 2, "c": 3, "d": 4}
    rankings = [R(lab, f"t{i}", marks) for i in range(12) for lab in ("P", "Q")]
    shown = {f"t{i}/P": ["a", "b", "c", "d"] for i in range(12)} | {f"t{i}/Q": ["b", "a", "c", "d"] for i in range(12)}
    q = labeler_quality(rankings, shown=shown)
    assert q["P"].position_bias == pytest.approx(1.0) and q["P"].position_bias_z == pytest.approx(6.0)
    assert q["P"].score == pytest.approx(1 / 3)
    assert q["Q"].position_bias == pytest.approx(-1 / 3) and q["Q"].score == pytest.approx(1.0)
    flags = flag_poor_labelers(q)
    assert list(flags) == ["P"] and "first-shown" in flags["P"][0]


def _quality(labeler, agreement, pairs=100, **kw):
    base = dict(n_rankings=20, position_bias=math.nan, position_bias_z=math.nan, f_rate=0.05, tie_rate=0.05,
                gold_accuracy=math.nan, gold_pairs=0, median_seconds=math.nan, score=math.nan)
    return LabelerQuality(labeler=labeler, consensus_agreement=agreement, consensus_pairs=pairs, **{**base, **kw})


def test_robust_z_rule_hand_worked():
    # Agreements .90 .91 .92 .93 .94 and .70: median .915; |deviations| .015 .005 .005 .015 .025 .215 → MAD .015;
    # 1.4826 · .015 = .022 < min_scale .04, so scale .04: z(.70) = −.215/.04 = −5.4 (flagged though above the
    # 60% floor), z(.90) = −.375.
    vals = {"a": 0.90, "b": 0.91, "c": 0.92, "d": 0.93, "e": 0.94, "s": 0.70}
    assert robust_z(vals, 0.04) == pytest.approx({k: (v - 0.915) / 0.04 for k, v in vals.items()})
    flags = flag_poor_labelers({k: _quality(k, v) for k, v in vals.items()})
    assert list(flags) == ["s"] and "robust z -5.4" in flags["s"][0]
    # .78 is 0.135 below: z −3.4, inside the 3.5 cut.
    assert flag_poor_labelers({k: _quality(k, v) for k, v in {**vals, "s": 0.78}.items()}) == {}


def test_flag_rules_floor_min_pairs_gold_and_rates():
    q = {
        "low": _quality("low", 0.55),  # below the 60% floor
        "few": _quality("few", 0.30, pairs=5),  # too few pairs to judge
        "gold": _quality("gold", 0.75, gold_accuracy=0.5, gold_pairs=40),
        "ok1": _quality("ok1", 0.75),
        "ok2": _quality("ok2", 0.76),
        "fails": _quality("fails", 0.74, f_rate=0.65),  # median F rate .05; z = .60/.04 = 15
    }
    flags = flag_poor_labelers(q)
    assert sorted(flags) == ["fails", "gold", "low"]
    assert "floor 60%" in flags["low"][0]
    assert "gold accuracy 50%" in flags["gold"][0]
    assert flags["fails"] == ["marks F on 65% (median labeler 5%; robust z 15.0)"]


def _simulate(seed, labelers, n_tasks=40, K=4):
    """Each task's K completions have a true utility ~ N(0, 1). A careful labeler ranks by utility plus
    N(0, σ²) noise and marks F what looks very bad; a random labeler ranks a random permutation."""
    rng = np.random.default_rng(seed)
    ids = [f"c{j}" for j in range(K)]
    rankings = []
    for t in range(n_tasks):
        utility = rng.normal(size=K)
        for name, sigma in labelers.items():
            if sigma is None:
                ranks = rng.permutation(K) + 1
                marks = {c: int(r) for c, r in zip(ids, ranks)}
            else:
                seen = utility + rng.normal(scale=sigma, size=K)
                order = np.argsort(-seen)  # best first
                marks = {ids[j]: (F if seen[j] < -1.8 else pos + 1) for pos, j in enumerate(order)}
            rankings.append(R(name, f"p{t}", marks))
    return rankings


@pytest.mark.parametrize("seed", range(5))
def test_simulation_flags_the_random_labeler_only(seed):
    labelers = {**{f"careful{i}": 0.8 for i in range(5)}, "random": None}
    rankings = _simulate(seed, labelers)
    q = labeler_quality(rankings)
    careful = [q[f"careful{i}"].consensus_agreement for i in range(5)]
    assert all(0.65 < a < 0.9 for a in careful), careful
    assert 0.38 < q["random"].consensus_agreement < 0.62
    assert min(q[f"careful{i}"].score for i in range(5)) > q["random"].score + 0.2
    flags = flag_poor_labelers(q)
    assert list(flags) == ["random"], flags
    # The table's scale matches the literature: careful pairs agree ~70%, pairs with the random one ~50%.
    table = pairwise_agreement_table(rankings)
    careful_pairs = [a / t for (x, y), (a, t) in table.items() if "random" not in (x, y)]
    random_pairs = [a / t for (x, y), (a, t) in table.items() if "random" in (x, y)]
    assert 0.6 < np.mean(careful_pairs) < 0.85 and 0.4 < np.mean(random_pairs) < 0.6


@pytest.mark.parametrize("seed", range(5))
def test_simulation_flags_no_careful_labeler(seed):
    q = labeler_quality(_simulate(seed, {f"careful{i}": 0.8 for i in range(6)}))
    assert flag_poor_labelers(q) == {}


def test_simulation_flags_a_labeler_who_fails_everything():
    rankings = _simulate(0, {f"careful{i}": 0.8 for i in range(5)})
    rankings += [R("lazy", f"p{t}", {f"c{j}": F for j in range(4)}) for t in range(40)]
    flags = flag_poor_labelers(labeler_quality(rankings))
    assert list(flags) == ["lazy"]
    assert "50%" in flags["lazy"][0] and any(r.startswith("marks F on 100%") for r in flags["lazy"])


# --- report -------------------------------------------------------------------------------------


def test_agreement_report_hand_worked():
    # P1, P2 and a stale re-ranking (tests above), plus a labeler who shares no task.
    solo = R("solo", "only-mine", {"a": 1, "b": 2})
    report = agreement_report([STALE, *P1, *P2, solo])
    json.dumps(report, allow_nan=False)
    # one ranking per (labeler, task): X, Y, Z on p1, X, Y on p2, solo on its own task
    assert (report["n_rankings"], report["n_tasks"], report["n_labelers"], report["n_overlap_tasks"]) == (6, 3, 4, 2)
    assert report["pairwise_agreement"] == pytest.approx(7 / 11)  # test_pairwise_agreement_table_hand_worked
    assert report["pairwise_table"] == [
        {"labelers": ["X", "Y"], "agree": 4, "total": 5, "agreement": 0.8},
        {"labelers": ["X", "Z"], "agree": 2, "total": 3, "agreement": pytest.approx(2 / 3)},
        {"labelers": ["Y", "Z"], "agree": 1, "total": 3, "agreement": pytest.approx(1 / 3)},
    ]
    assert report["kendall_tau_b_mean"] == pytest.approx((1 / 3 + 1 / 3 - 1 / 3 + 2 / math.sqrt(6)) / 4)
    # Krippendorff units (competition ranks, F = 4): p1 a [1,1,2] b [2,3,1] c [3,2,3]; p2 a [1,1] b [1,2] c [4,4];
    # solo's units hold one value each (not pairable). Coincidences o11 3, o12 2.5, o13 .5, o23 1.5, o33 1, o44 2
    # → n_c (6, 4, 3, 2), n 15. Ordinal δ²: 12 25, 13 72.25, 14 121, 23 12.25, 24 36, 34 6.25.
    # Σ o δ² = 2(2.5·25 + .5·72.25 + 1.5·12.25) = 234; Σ n n δ² = 2(24·25 + 18·72.25 + 12·121 + 12·12.25 + 8·36
    # + 6·6.25) = 7650; α = 1 − 14·234/7650.
    assert report["krippendorff_alpha_ordinal"] == pytest.approx(1 - 14 * 234 / 7650)
    rows = {row["labeler"]: row for row in report["labelers"]}
    assert list(rows) == ["X", "Y", "Z", "solo"]
    assert [rows[k]["consensus_agreement"] for k in "XYZ"] == pytest.approx([11 / 12, 3 / 4, 1 / 2])
    assert [rows[k]["score"] for k in "XYZ"] == pytest.approx([5 / 6, 1 / 2, 0.0])
    assert rows["solo"]["consensus_agreement"] is None and rows["solo"]["score"] is None  # NaN → None
    # Tie rates X 1/4 (p2's a = b), everyone else 0: median 0, spread floored at .04 → z 6.25 > 3.5.
    assert [lab for lab, row in rows.items() if row["flagged"]] == ["X"]
    assert len(rows["X"]["reasons"]) == 1 and rows["X"]["reasons"][0].startswith("ties 25% (median labeler 0%")


def test_agreement_report_flags_the_random_labeler_of_a_simulation():
    rankings = _simulate(1, {**{f"careful{i}": 0.8 for i in range(5)}, "random": None})
    report = agreement_report(rankings)
    assert report["n_rankings"] == 240 and report["n_tasks"] == 40 and report["n_labelers"] == 6
    assert len(report["pairwise_table"]) == 15  # C(6, 2)
    rows = {row["labeler"]: row for row in report["labelers"]}
    assert [lab for lab, row in rows.items() if row["flagged"]] == ["random"]
    assert rows["random"]["reasons"][0].startswith("agrees with the other labelers' consensus on")
