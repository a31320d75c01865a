"""Simulated labelers: noisy, sometimes careless people following the guideline.

Each labeler's judgement of a reply is its gold score (:mod:`rlhfkit.feedback.gold`) plus Gaussian
noise of the labeler's own σ, as in the synthetic-labeler setup of Gao et al. 2022 ("Scaling Laws
for Reward Model Overoptimization"), so that agreement between labelers is realistic rather than
perfect (InstructGPT, Ouyang et al. 2022 §5.1: trained labelers agree on ~73% of pairwise
comparisons). Failed replies (gold ``fail_reason``) are marked F. A careless labeler ranks almost at
random and rarely marks F; a position bias favours whichever reply is shown first.

Ranks use standard competition ranking, as the guideline asks: 1 is best, tied replies share a rank
and the next rank skips (1, 2, 2, 4). Ranks among the non-F replies are always within 1..K.

Determinism: the noise for a reply is drawn from a generator seeded by a hash of (labeler name,
labeler seed, prompt, reply text), so a labeler gives the same judgement whatever the call order and
whatever else is on the page, and identical replies are tied.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import TYPE_CHECKING, Union

import numpy as np

from rlhfkit.data.records import FAIL

if TYPE_CHECKING:
    from rlhfkit.feedback.gold import GoldScorer

Mark = Union[int, str]  # a rank 1..K or FAIL

# σ of a careful labeler's noise, in gold-score units. Over real SmolLM2 replies to the default
# prompts (K = 4, 40 tokens, temperature 0.7, the demo's system prompt: gold std 1.03 within a prompt),
# σ = 0.8 gives two careful labelers 73% pairwise agreement (σ 0.6: 78%, 1.0: 70%), the ~73%
# InstructGPT reports for trained labelers (Ouyang et al. 2022 §5.1). Measure with pairwise_concordance.
DEFAULT_NOISE = 0.8
# make_labelers draws each careful labeler's σ from noise · [1 − spread, 1 + spread], so that some
# labelers are measurably better than others.
NOISE_SPREAD = 0.25
# Bonus to the reply shown first, in gold-score units (a primacy effect), a quarter of σ.
DEFAULT_POSITION_BIAS = 0.2
# A careless labeler's noise swamps the gold signal (a prompt's replies spread over ~1 gold unit).
CARELESS_NOISE = 10.0
# Chance that a careless labeler notices a failed reply and marks it F.
CARELESS_FAIL_RATE = 0.2
# Judgements closer than this are a tie: ~1% of pairs with σ = 0.8; identical replies always tie
# (unless the position bias lifts one of them).
TIE_EPS = 0.02


@lru_cache(maxsize=1)
def default_scorer() -> "GoldScorer":
    from rlhfkit.feedback.gold import GoldScorer

    return GoldScorer()


def _rng(name: str, seed: int, prompt: str, text: str) -> np.random.Generator:
    key = json.dumps([name, seed, prompt, text], ensure_ascii=False).encode()
    return np.random.default_rng(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little"))


def competition_ranks(values: list[float], eps: float) -> list[int]:
    """Ranks of ``values`` (higher is better) with standard competition ranking (1, 2, 2, 4).

    Values within ``eps`` of their neighbour in sorted order form one tie group (chained, so a
    group may span more than ``eps`` overall).
    """
    order = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0] * len(values)
    for pos, i in enumerate(order):
        prev = order[pos - 1] if pos else None
        if prev is not None and values[prev] - values[i] <= eps:
            ranks[i] = ranks[prev]
        else:
            ranks[i] = pos + 1
    return ranks


class SimulatedLabeler:
    """A labeler that ranks K replies by gold score + N(0, noise²), following the guideline.

    ``position_bias`` is added to the judgement of the reply shown first; ``careless`` labelers use
    CARELESS_NOISE instead of ``noise`` and mark F only with probability CARELESS_FAIL_RATE.
    """

    def __init__(
        self,
        name: str,
        noise: float = DEFAULT_NOISE,
        position_bias: float = 0.0,
        careless: bool = False,
        seed: int = 0,
        scorer: "GoldScorer | None" = None,
    ):
        if noise < 0:
            raise ValueError(f"noise must be ≥ 0, got {noise}")
        self.name = name
        self.noise = float(noise)
        self.position_bias = float(position_bias)
        self.careless = careless
        self.seed = int(seed)
        self._scorer = scorer

    def __repr__(self) -> str:
        return (
            f"SimulatedLabeler({self.name!r}, noise={self.noise:.3f}, position_bias={self.position_bias}, "
            f"careless={self.careless}, seed={self.seed})"
        )

    def rank(self, prompt: str, completions: list[str], shown_order: list[int]) -> list[Mark]:
        """Marks for ``completions`` (in their list order): a rank 1..K or ``"F"``.

        ``shown_order`` is the display order: ``shown_order[0]`` is the index of the reply shown
        first (it gets the position bias). It must be a permutation of ``range(K)``.
        """
        k = len(completions)
        if sorted(shown_order) != list(range(k)):
            raise ValueError(f"shown_order must be a permutation of 0..{k - 1}, got {shown_order}")
        if k == 0:
            return []
        scorer = self._scorer or default_scorer()
        gold = scorer.components([prompt] * k, completions)  # each (K,)
        sigma = CARELESS_NOISE if self.careless else self.noise
        judged: list[float] = []
        failed: list[bool] = []
        for i, text in enumerate(completions):
            rng = _rng(self.name, self.seed, prompt, text)
            z, u = float(rng.standard_normal()), float(rng.random())
            judged.append(float(gold["score"][i]) + sigma * z)
            is_fail = gold["fail"][i] is not None
            failed.append(is_fail and (not self.careless or u < CARELESS_FAIL_RATE))
        judged[shown_order[0]] += self.position_bias
        kept = [i for i in range(k) if not failed[i]]
        ranks = competition_ranks([judged[i] for i in kept], TIE_EPS)
        marks: list[Mark] = [FAIL] * k
        for i, r in zip(kept, ranks):
            marks[i] = r
        return marks


def make_labelers(
    n: int = 5,
    n_careless: int = 1,
    noise: float = DEFAULT_NOISE,
    position_bias: float = DEFAULT_POSITION_BIAS,
    seed: int = 0,
    scorer: "GoldScorer | None" = None,
) -> list[SimulatedLabeler]:
    """``n`` labelers named sim-01, sim-02, …; ``n_careless`` of them (chosen by ``seed``) careless.

    Careful labelers get σ drawn from ``noise · [1 − NOISE_SPREAD, 1 + NOISE_SPREAD]``; every
    labeler gets ``position_bias`` and its own seed derived from ``seed``.
    """
    if not 0 <= n_careless <= n:
        raise ValueError(f"n_careless must be in 0..{n}, got {n_careless}")
    rng = np.random.default_rng(seed)
    careless = set(rng.choice(n, size=n_careless, replace=False).tolist())
    factors = 1.0 + NOISE_SPREAD * rng.uniform(-1.0, 1.0, size=n)  # (n,)
    seeds = rng.integers(0, 2**31, size=n)  # (n,)
    return [
        SimulatedLabeler(
            f"sim-{i + 1:02d}",
            noise=noise * float(factors[i]),
            position_bias=position_bias,
            careless=i in careless,
            seed=int(seeds[i]),
            scorer=scorer,
        )
        for i in range(n)
    ]


def pairwise_concordance(a: list[list[Mark]], b: list[list[Mark]]) -> float:
    """Share of pairwise comparisons on which two labelers agree, over matching rankings.

    ``a[t]`` and ``b[t]`` mark the same replies of task t, in the same order: the lists
    :meth:`SimulatedLabeler.rank` returns. Counting follows :func:`rlhfkit.feedback.agreement.agreement_counts`
    (F is worse than any rank; a pair either labeler tied is left out). NaN when no pair is comparable.
    """
    from rlhfkit.feedback.agreement import PairCounts, agreement_counts

    if len(a) != len(b):
        raise ValueError(f"{len(a)} rankings against {len(b)}")
    total = PairCounts()
    for ra, rb in zip(a, b):
        if len(ra) != len(rb):
            raise ValueError(f"rankings of different length: {ra} vs {rb}")
        total += agreement_counts(dict(enumerate(ra)), dict(enumerate(rb)))
    return total.agree / total.strict if total.strict else float("nan")
