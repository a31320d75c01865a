"""Inter-labeler agreement and labeler quality, from plain rankings.

A ranking's ``marks`` map completion_id → rank (1 = best; equal ranks = a tie) or ``"F"`` (fail).
Conventions used throughout:

* **F is worse than every ranked completion; two F's are tied.** (The guideline's F means "unusable",
  so it loses to anything usable and says nothing between two unusable replies.)
* **One ranking per (labeler, task).** Every ranking is kept in the database, so a labeler may have
  re-ranked a task; the last one in input order (submission order) is the one that counts.
* A *task* is a prompt with its K completions: rankings are grouped by ``prompt_id``.

Measures (each a pure function of rankings; :func:`agreement_report` gathers them):

* :func:`percent_agreement` — share of completion pairs on which two labelers agree, over the pairs
  where *both* express a strict preference (InstructGPT's inter-labeler agreement, ~73%;
  Ouyang et al. 2022, §5.1). Ties are counted separately by :func:`agreement_counts`.
* :func:`kendall_tau_b` — rank correlation with ties (Kendall 1945's τ-b), in [-1, 1].
* :func:`krippendorff_alpha` — chance-corrected reliability over all labelers at once
  (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"), nominal/ordinal/interval.
* :func:`agreement_with_consensus` — each labeler against the leave-one-out mean-rank (Borda)
  consensus of the *other* labelers on the same tasks: the main labeler-quality signal.
* :func:`position_bias`, :func:`f_rate`, :func:`tie_rate`, :func:`median_seconds`,
  :func:`gold_accuracy` — secondary signals.
* :func:`labeler_quality` → :class:`LabelerQuality` per labeler, and :func:`flag_poor_labelers`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, astuple, dataclass
from itertools import combinations
from statistics import median
from typing import Iterable, Mapping, Sequence, Union

import numpy as np

from rlhfkit.data.records import FAIL, Ranking

Marks = Mapping[str, Union[int, float, str]]  # completion_id → rank, consensus score, or FAIL
Gold = Union[str, Sequence[tuple[str, str]]]  # the known best completion id, or known (better, worse) pairs

MAD_TO_SIGMA = 1.4826  # MAD × 1.4826 estimates σ for normal data (Iglewicz & Hoaglin 1993)


def _key(mark) -> float:
    """Sort key, lower = better: a rank or consensus score as is, F after every rank."""
    if mark == FAIL:
        return math.inf
    if isinstance(mark, bool) or not isinstance(mark, (int, float)):
        raise ValueError(f"mark {mark!r} is neither a rank nor {FAIL!r}")
    return float(mark)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


# ---------------------------------------------------------------------------------------------
# Two rankings


def pair_preferences(marks: Marks) -> dict[tuple[str, str], int]:
    """For every pair ``(a, b)`` of completion ids with ``a < b``: +1 if a is preferred, −1 if b is,
    0 for a tie (equal ranks, or both F). ``marks`` may also hold consensus scores (lower = better)."""
    ids = sorted(marks)
    keys = {c: _key(marks[c]) for c in ids}
    return {(a, b): _sign(keys[b] - keys[a]) if keys[a] != keys[b] else 0 for a, b in combinations(ids, 2)}


@dataclass(frozen=True)
class PairCounts:
    """How two labelers' pairwise preferences compare, over the completions both marked."""

    agree: int = 0  # both strict, same direction
    disagree: int = 0  # both strict, opposite directions
    tie_one: int = 0  # exactly one of the two tied the pair
    tie_both: int = 0  # both tied the pair

    def __add__(self, other: "PairCounts") -> "PairCounts":
        return PairCounts(*(x + y for x, y in zip(astuple(self), astuple(other))))

    @property
    def strict(self) -> int:
        """Pairs on which both labelers expressed a strict preference."""
        return self.agree + self.disagree


def agreement_counts(marks_a: Marks, marks_b: Marks) -> PairCounts:
    """Agree / disagree / tie counts over the completion pairs both labelers marked."""
    shared = set(marks_a) & set(marks_b)
    pa = pair_preferences({c: marks_a[c] for c in shared})
    pb = pair_preferences({c: marks_b[c] for c in shared})
    n = [0, 0, 0, 0]
    for pair, x in pa.items():
        y = pb[pair]
        if x and y:
            n[0 if x == y else 1] += 1
        else:
            n[3 if x == y == 0 else 2] += 1
    return PairCounts(*n)


def percent_agreement(marks_a: Marks, marks_b: Marks) -> float:
    """Share of pairs on which the two labelers agree, among the pairs where both express a strict
    preference (NaN when there are none). A pair either labeler tied is left out — it is neither an
    agreement nor a disagreement about which is better — and counted in :func:`agreement_counts`."""
    c = agreement_counts(marks_a, marks_b)
    return c.agree / c.strict if c.strict else math.nan


def kendall_tau_b(marks_a: Marks, marks_b: Marks) -> float:
    """Kendall's τ-b over the completions both marked (F = a tie below every rank):
    (n_c − n_d) / sqrt((n_0 − n_1)(n_0 − n_2)), n_0 = all pairs, n_1 / n_2 = pairs tied by a / by b.
    NaN when either labeler tied every pair (no variation to correlate)."""
    shared = set(marks_a) & set(marks_b)
    pa = pair_preferences({c: marks_a[c] for c in shared})
    pb = pair_preferences({c: marks_b[c] for c in shared})
    n0 = len(pa)
    s = sum(x * pb[p] for p, x in pa.items())  # +1 concordant, −1 discordant, 0 tied in either
    n1 = sum(1 for x in pa.values() if x == 0)
    n2 = sum(1 for y in pb.values() if y == 0)
    denom = math.sqrt((n0 - n1) * (n0 - n2))
    return s / denom if denom else math.nan


# ---------------------------------------------------------------------------------------------
# Many labelers


def by_task(rankings: Iterable[Ranking]) -> dict[str, dict[str, Ranking]]:
    """prompt_id → labeler → that labeler's ranking of the task (the last one given counts)."""
    out: dict[str, dict[str, Ranking]] = defaultdict(dict)
    for r in rankings:
        out[r.prompt_id][r.labeler] = r
    return dict(out)


def pairwise_agreement_table(rankings: Iterable[Ranking]) -> dict[tuple[str, str], tuple[int, int]]:
    """(labeler1, labeler2) with labeler1 < labeler2 → (agree, total strict pairs), summed over
    every task both ranked. Labeler pairs that share no task are absent."""
    table: dict[tuple[str, str], PairCounts] = defaultdict(PairCounts)
    for per_labeler in by_task(rankings).values():
        for l1, l2 in combinations(sorted(per_labeler), 2):
            table[l1, l2] += agreement_counts(per_labeler[l1].marks, per_labeler[l2].marks)
    return {k: (c.agree, c.strict) for k, c in sorted(table.items())}


def overall_agreement(table: Mapping[tuple[str, str], tuple[int, int]]) -> float:
    """Pooled share of agreeing pairs over all labeler pairs (Σ agree / Σ total): a labeler pair that
    shared many tasks weighs more than one that shared a single task. NaN when there are no pairs."""
    agree = sum(a for a, _ in table.values())
    total = sum(t for _, t in table.values())
    return agree / total if total else math.nan


def mean_kendall_tau_b(rankings: Iterable[Ranking]) -> float:
    """Mean τ-b over every (task, labeler pair) where it is defined; NaN if none is."""
    taus = [
        kendall_tau_b(per[l1].marks, per[l2].marks)
        for per in by_task(rankings).values()
        for l1, l2 in combinations(sorted(per), 2)
    ]
    taus = [t for t in taus if not math.isnan(t)]
    return float(np.mean(taus)) if taus else math.nan


def krippendorff_alpha(units: Sequence[Sequence], level: str = "ordinal") -> float:
    """Krippendorff's α for ``units`` = one list per item of the values its coders gave (None =
    missing). ``level`` is ``nominal``, ``ordinal`` or ``interval``. Follows Krippendorff (2011),
    "Computing Krippendorff's Alpha-Reliability": α = 1 − (n − 1) Σ o_ck δ²_ck / Σ n_c n_k δ²_ck over
    the coincidence matrix o. Units with fewer than two values are not pairable and drop out.
    NaN when fewer than two pairable values remain or all of them are equal (no variation)."""
    pairable = [[v for v in u if v is not None] for u in units]
    pairable = [u for u in pairable if len(u) >= 2]
    values = sorted({v for u in pairable for v in u})
    if len(values) < 2:
        return math.nan
    index = {v: i for i, v in enumerate(values)}
    V = len(values)
    o = np.zeros((V, V))  # coincidence matrix (V, V): each unit's m_u(m_u − 1) ordered pairs, weight 1/(m_u − 1)
    for u in pairable:
        n_u = np.bincount([index[v] for v in u], minlength=V).astype(float)  # (V,)
        o += (np.outer(n_u, n_u) - np.diag(n_u)) / (len(u) - 1)
    n_c = o.sum(axis=1)  # (V,) marginals
    n = n_c.sum()
    if level == "nominal":
        delta2 = 1.0 - np.eye(V)
    elif level == "ordinal":
        # δ²_ck = (Σ_{g=c..k} n_g − (n_c + n_k)/2)²: distance = how many pairable values lie between c and k,
        # so only the order of the values matters (Krippendorff 2011, ordinal metric).
        cum = np.concatenate([[0.0], np.cumsum(n_c)])  # cum[i] = Σ_{g<i} n_g
        lo, hi = np.minimum.outer(np.arange(V), np.arange(V)), np.maximum.outer(np.arange(V), np.arange(V))
        delta2 = (cum[hi + 1] - cum[lo] - (n_c[lo] + n_c[hi]) / 2) ** 2
    elif level == "interval":
        x = np.asarray(values, dtype=float)
        delta2 = np.subtract.outer(x, x) ** 2
    else:
        raise ValueError(f"level must be nominal, ordinal or interval, got {level!r}")
    expected = (np.outer(n_c, n_c) * delta2).sum()
    return float(1.0 - (n - 1) * (o * delta2).sum() / expected)


def competition_ranks(marks: Marks) -> dict[str, int]:
    """Rank = 1 + the number of completions strictly better (so "1,1,2" and "1,1,3" both become 1,1,3),
    and F = K + 1, below every rank a K-completion task can give."""
    keys = {c: _key(m) for c, m in marks.items()}
    return {c: len(marks) + 1 if k == math.inf else 1 + sum(o < k for o in keys.values()) for c, k in keys.items()}


def ranking_units(rankings: Iterable[Ranking]) -> list[list[int | None]]:
    """Krippendorff units for rankings: one unit per (task, completion), holding each labeler's
    competition rank of it (F = K + 1; None where a labeler of the task did not mark it)."""
    units = []
    for _, per_labeler in sorted(by_task(rankings).items()):
        ranks = [competition_ranks(r.marks) for _, r in sorted(per_labeler.items())]
        for cid in sorted({c for rk in ranks for c in rk}):
            units.append([rk.get(cid) for rk in ranks])
    return units


# ---------------------------------------------------------------------------------------------
# Consensus


def mid_ranks(marks: Marks) -> dict[str, float]:
    """Fractional ranks 1..K (tied completions share the mean of their positions; the F's are one tied
    group at the bottom). Their mean over labelers is the Borda consensus."""
    keys = {c: _key(m) for c, m in marks.items()}
    return {
        c: 1 + sum(o < k for o in keys.values()) + (sum(o == k for o in keys.values()) - 1) / 2
        for c, k in keys.items()
    }


def consensus(rankings_of_task: Iterable[Ranking], exclude: str | None = None) -> dict[str, float]:
    """Consensus of one task's rankings, leaving out labeler ``exclude``: completion_id → mean mid-rank
    over the labelers who marked it (lower = better; equal = the others are split). Empty when no
    other labeler ranked the task."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for r in rankings_of_task:
        if r.labeler == exclude:
            continue
        for c, x in mid_ranks(r.marks).items():
            sums[c] += x
            counts[c] += 1
    return {c: sums[c] / counts[c] for c in sorted(sums)}


def _consensus_credit(rankings: Iterable[Ranking]) -> dict[str, tuple[float, int]]:
    """labeler → (credit, pairs) against the leave-one-out consensus; see agreement_with_consensus."""
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for per_labeler in by_task(rankings).values():
        for labeler, r in per_labeler.items():
            acc = out[labeler]
            cons = consensus(per_labeler.values(), exclude=labeler)
            shared = set(cons) & set(r.marks)
            mine = pair_preferences({c: r.marks[c] for c in shared})
            for pair, theirs in pair_preferences({c: cons[c] for c in shared}).items():
                if theirs:
                    acc[0] += 1.0 if mine[pair] == theirs else 0.5 if mine[pair] == 0 else 0.0
                    acc[1] += 1
    return {lab: (c, n) for lab, (c, n) in sorted(out.items())}


def agreement_with_consensus(rankings: Iterable[Ranking]) -> dict[str, float]:
    """labeler → share of pairs on which they agree with the consensus of the OTHER labelers of the
    same tasks, over the pairs that consensus orders strictly. A tie by the labeler earns half (what a
    coin flip would), so tying or failing everything scores like chance (0.5) rather than escaping
    the measure. NaN for a labeler with no task shared with anyone."""
    return {lab: c / n if n else math.nan for lab, (c, n) in _consensus_credit(rankings).items()}


# ---------------------------------------------------------------------------------------------
# Per-labeler signals


@dataclass(frozen=True)
class PositionBias:
    """How often a labeler ranked the first-shown completion best, beyond chance.

    ``bias`` = (observed − expected) / (n − expected), kappa-style: 0 = as chance, 1 = always the
    first-shown, negative = avoids it. ``z`` tests bias = 0 under "the marks are independent of the
    order shown". ``n`` = rankings with a shown order and at least one ranked (non-F) completion.
    """

    bias: float
    z: float
    n: int


def position_bias(rankings: Iterable[Ranking], shown: Mapping[str, Sequence[str]]) -> dict[str, PositionBias]:
    """labeler → :class:`PositionBias`, from ``shown`` = ranking_id → completion ids in the order shown.

    Per ranking, the first-shown completion earns 1/t if it is in the best group of size t (a tie at
    the top shares the win), else 0. If the marks were independent of the order shown, the first slot
    would hold each of the K marks with probability 1/K, so the expected credit is (t/K)(1/t) = 1/K and
    its variance 1/(tK) − 1/K². Rankings without a shown order, or with every completion F, are skipped.
    """
    acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0.0, 0])  # obs, exp, max, var, n
    for r in rankings:
        order = [c for c in shown.get(r.ranking_id, ()) if c in r.marks]
        ranked = [_key(m) for m in r.marks.values() if m != FAIL]
        if not order or not ranked:
            continue
        K, best = len(r.marks), min(ranked)
        t = sum(k == best for k in ranked)
        a = acc[r.labeler]
        a[0] += 1 / t if _key(r.marks[order[0]]) == best else 0.0
        a[1] += 1 / K
        a[2] += 1 - 1 / K
        a[3] += 1 / (t * K) - 1 / K**2
        a[4] += 1
    return {
        lab: PositionBias(
            bias=(obs - exp) / top if top else math.nan,
            z=(obs - exp) / math.sqrt(var) if var else math.nan,
            n=int(n),
        )
        for lab, (obs, exp, top, var, n) in sorted(acc.items())
    }


def f_rate(rankings: Iterable[Ranking]) -> dict[str, float]:
    """labeler → share of the completions they marked F."""
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in rankings:
        acc[r.labeler][0] += sum(m == FAIL for m in r.marks.values())
        acc[r.labeler][1] += len(r.marks)
    return {lab: f / n if n else math.nan for lab, (f, n) in sorted(acc.items())}


def tie_rate(rankings: Iterable[Ranking]) -> dict[str, float]:
    """labeler → share of the pairs of ranked (non-F) completions they tied. (Two F's are also tied
    but say nothing about ranking; F use is :func:`f_rate`.) NaN when no ranking has two ranked."""
    acc: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in rankings:
        prefs = pair_preferences({c: m for c, m in r.marks.items() if m != FAIL})
        acc[r.labeler][0] += sum(x == 0 for x in prefs.values())
        acc[r.labeler][1] += len(prefs)
    return {lab: t / n if n else math.nan for lab, (t, n) in sorted(acc.items())}


def median_seconds(rankings: Iterable[Ranking], seconds: Mapping[str, float]) -> dict[str, float]:
    """labeler → median seconds spent per task, from ``seconds`` = ranking_id → time spent.
    The median, because a task left open over lunch should not move it."""
    acc: dict[str, list[float]] = defaultdict(list)
    for r in rankings:
        if r.ranking_id in seconds:
            acc[r.labeler].append(float(seconds[r.ranking_id]))
    return {lab: float(median(xs)) for lab, xs in sorted(acc.items())}


def _gold_pairs(gold: Gold, marks: Marks) -> list[tuple[str, str]]:
    if isinstance(gold, str):
        return [(gold, c) for c in sorted(marks) if c != gold] if gold in marks else []
    return [(a, b) for a, b in gold if a in marks and b in marks]


def _gold_credit(rankings: Iterable[Ranking], gold: Mapping[str, Gold]) -> dict[str, tuple[float, int]]:
    acc: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for per_labeler in by_task(rankings).values():
        for labeler, r in per_labeler.items():
            if r.prompt_id not in gold:
                continue
            for better, worse in _gold_pairs(gold[r.prompt_id], r.marks):
                kb, kw = _key(r.marks[better]), _key(r.marks[worse])
                acc[labeler][0] += 1.0 if kb < kw else 0.5 if kb == kw else 0.0
                acc[labeler][1] += 1
    return {lab: (c, int(n)) for lab, (c, n) in sorted(acc.items())}


def gold_accuracy(rankings: Iterable[Ranking], gold: Mapping[str, Gold]) -> dict[str, float]:
    """labeler → accuracy on gold tasks. ``gold`` maps prompt_id → the known best completion id (read as
    "it beats every other completion") or a list of known (better, worse) pairs. Accuracy is over
    those pairs; a tie earns half, as against the consensus. Labelers with no gold pair are absent."""
    return {lab: c / n for lab, (c, n) in _gold_credit(rankings, gold).items() if n}


# ---------------------------------------------------------------------------------------------
# Quality and flags


@dataclass(frozen=True)
class LabelerQuality:
    """One labeler's quality signals. NaN = not measurable from the data given."""

    labeler: str
    n_rankings: int
    consensus_agreement: float  # share agreeing with the leave-one-out consensus (ties = half)
    consensus_pairs: int  # pairs that share is over
    position_bias: float  # kappa-style; see PositionBias
    position_bias_z: float
    f_rate: float
    tie_rate: float
    gold_accuracy: float
    gold_pairs: int
    median_seconds: float
    score: float  # in [0, 1]; see labeler_quality


def labeler_quality(
    rankings: Sequence[Ranking],
    shown: Mapping[str, Sequence[str]] | None = None,
    gold: Mapping[str, Gold] | None = None,
    seconds: Mapping[str, float] | None = None,
) -> dict[str, LabelerQuality]:
    """labeler → :class:`LabelerQuality`.

    ``score`` = clip(2a − 1, 0, 1) × (1 − max(0, bias − 2·se)), where a is the consensus agreement
    (averaged with gold accuracy when the labeler has gold pairs) — 2a − 1 rescales chance (0.5) to 0
    and perfect agreement to 1 — and the second factor takes off only the position bias that is
    clearly there (its lower 2-standard-error bound), so sampling noise does not lower careful
    labelers' scores. F and tie rates are not in the score: a labeler who ties or fails everything
    already scores chance on agreement. NaN when the labeler shares no task and has no gold pairs.
    """
    rankings = [r for per in by_task(rankings).values() for r in per.values()]  # one per (labeler, task)
    credit = _consensus_credit(rankings)
    bias = position_bias(rankings, shown) if shown else {}
    golds = _gold_credit(rankings, gold) if gold else {}
    times = median_seconds(rankings, seconds) if seconds else {}
    fr, tr = f_rate(rankings), tie_rate(rankings)
    n_rankings: dict[str, int] = defaultdict(int)
    for r in rankings:
        n_rankings[r.labeler] += 1
    out = {}
    for lab in sorted(n_rankings):
        c, n = credit.get(lab, (0.0, 0))
        gc, gn = golds.get(lab, (0.0, 0))
        pb = bias.get(lab, PositionBias(math.nan, math.nan, 0))
        signals = [x for x in (c / n if n else None, gc / gn if gn else None) if x is not None]
        base = min(1.0, max(0.0, 2 * float(np.mean(signals)) - 1)) if signals else math.nan
        clear_bias = 0.0
        if pb.n and not math.isnan(pb.z) and pb.z != 0:
            se = pb.bias / pb.z  # bias and z share the numerator (obs − exp)
            clear_bias = min(1.0, max(0.0, pb.bias - 2 * se))
        out[lab] = LabelerQuality(
            labeler=lab,
            n_rankings=n_rankings[lab],
            consensus_agreement=c / n if n else math.nan,
            consensus_pairs=n,
            position_bias=pb.bias,
            position_bias_z=pb.z,
            f_rate=fr.get(lab, math.nan),
            tie_rate=tr.get(lab, math.nan),
            gold_accuracy=gc / gn if gn else math.nan,
            gold_pairs=gn,
            median_seconds=times.get(lab, math.nan),
            score=base * (1 - clear_bias),
        )
    return out


def robust_z(values: Mapping[str, float], min_scale: float) -> dict[str, float]:
    """key → (x − median) / max(1.4826·MAD, min_scale): a z-score the outliers themselves cannot inflate
    (Iglewicz & Hoaglin 1993). ``min_scale`` keeps a tiny spread (everyone within a point or two) from
    turning small differences into "outliers". NaN values are ignored."""
    xs = {k: v for k, v in values.items() if not math.isnan(v)}
    if not xs:
        return {}
    med = float(np.median(list(xs.values())))
    mad = float(np.median([abs(v - med) for v in xs.values()]))
    scale = max(MAD_TO_SIGMA * mad, min_scale)
    return {k: (v - med) / scale for k, v in xs.items()}


def flag_poor_labelers(
    quality: Mapping[str, LabelerQuality],
    *,
    floor: float = 0.6,
    max_z: float = 3.5,
    min_scale: float = 0.04,
    min_pairs: int = 20,
    gold_floor: float = 0.6,
    bias_z: float = 3.0,
    bias_min: float = 0.2,
) -> dict[str, list[str]]:
    """labeler → reasons, for the labelers worth a human's review (others are absent).

    A labeler is flagged when any of these holds:

    1. consensus agreement below ``floor`` (careful labelers agree ~70–80% with the others' consensus,
       a random one ~50%);
    2. consensus agreement more than ``max_z`` robust z-scores below the median labeler (3.5 is
       Iglewicz & Hoaglin's outlier cut; the spread is at least ``min_scale``) — catches a labeler
       far below colleagues who all agree well, even above the floor;
    3. gold accuracy below ``gold_floor``;
    4. position bias at least ``bias_min`` and significant (z ≥ ``bias_z``);
    5. F rate or tie rate more than ``max_z`` robust z-scores above the median labeler.

    Rules 1, 2 need ``min_pairs`` consensus pairs and rule 3 ``min_pairs`` gold pairs, so a labeler
    with little overlap is not judged on a handful of pairs. Robust z-scores need three labelers.
    """
    judged = {lab: q for lab, q in quality.items() if q.consensus_pairs >= min_pairs}
    many = len(judged) >= 3
    z_agree = robust_z({k: q.consensus_agreement for k, q in judged.items()}, min_scale) if many else {}
    med_agree = float(np.nanmedian([q.consensus_agreement for q in judged.values()])) if judged else math.nan
    rates = {}
    if len(quality) >= 3:
        for name in ("f_rate", "tie_rate"):
            rates[name] = robust_z({k: getattr(q, name) for k, q in quality.items()}, min_scale)
    rate_medians = {
        name: float(np.nanmedian([getattr(q, name) for q in quality.values()])) for name in rates
    }
    flags: dict[str, list[str]] = {}
    for lab, q in sorted(quality.items()):
        reasons = []
        if lab in judged:
            a = q.consensus_agreement
            if a < floor:
                reasons.append(
                    f"agrees with the other labelers' consensus on {a:.0%} of {q.consensus_pairs} pairs"
                    f" (floor {floor:.0%}; chance is 50%)"
                )
            elif z_agree.get(lab, 0.0) < -max_z:
                reasons.append(
                    f"agrees with the consensus on {a:.0%} of pairs, far below the median labeler's"
                    f" {med_agree:.0%} (robust z {z_agree[lab]:.1f})"
                )
        if q.gold_pairs >= min_pairs and q.gold_accuracy < gold_floor:
            reasons.append(f"gold accuracy {q.gold_accuracy:.0%} on {q.gold_pairs} pairs (floor {gold_floor:.0%})")
        if q.position_bias >= bias_min and q.position_bias_z >= bias_z:
            reasons.append(
                f"ranks the first-shown completion best beyond chance (bias {q.position_bias:.2f},"
                f" z {q.position_bias_z:.1f})"
            )
        for name, label in (("f_rate", "marks F on"), ("tie_rate", "ties")):
            z = rates.get(name, {}).get(lab)
            if z is not None and z > max_z:
                reasons.append(
                    f"{label} {getattr(q, name):.0%} (median labeler {rate_medians[name]:.0%}; robust z {z:.1f})"
                )
        if reasons:
            flags[lab] = reasons
    return flags


# ---------------------------------------------------------------------------------------------
# Report


def _plain(x):
    """NaN → None, so the report is valid JSON."""
    return None if isinstance(x, float) and math.isnan(x) else x


def agreement_report(
    rankings: Sequence[Ranking],
    shown: Mapping[str, Sequence[str]] | None = None,
    gold: Mapping[str, Gold] | None = None,
    seconds: Mapping[str, float] | None = None,
) -> dict:
    """A JSON-ready summary for the CLI and the HTML report (NaN becomes None)."""
    rankings = list(rankings)
    tasks = by_task(rankings)
    table = pairwise_agreement_table(rankings)
    quality = labeler_quality(rankings, shown=shown, gold=gold, seconds=seconds)
    flags = flag_poor_labelers(quality)
    return {
        "n_rankings": sum(len(per) for per in tasks.values()),
        "n_tasks": len(tasks),
        "n_labelers": len(quality),
        "n_overlap_tasks": sum(len(per) >= 2 for per in tasks.values()),
        "pairwise_agreement": _plain(overall_agreement(table)),
        "pairwise_table": [
            {"labelers": [a, b], "agree": agree, "total": total, "agreement": agree / total if total else None}
            for (a, b), (agree, total) in table.items()
        ],
        "kendall_tau_b_mean": _plain(mean_kendall_tau_b(rankings)),
        "krippendorff_alpha_ordinal": _plain(krippendorff_alpha(ranking_units(rankings), "ordinal")),
        "labelers": [
            {**{k: _plain(v) for k, v in asdict(q).items()}, "flagged": lab in flags, "reasons": flags.get(lab, [])}
            for lab, q in quality.items()
        ],
    }
