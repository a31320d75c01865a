"""Evaluation metrics on text: diversity, repetition, win rates and bootstrap intervals (pure functions)."""

from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens (a tokenizer-free unit, so models compare fairly)."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams of a set of texts (Li et al. 2016); 0 when there are none."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition(text: str, n: int = 3) -> float:
    """Share of a text's n-grams that repeat an earlier n-gram of the same text (0 = no repetition)."""
    grams = ngrams(words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def win_rate(a: Sequence[float], b: Sequence[float]) -> float:
    """How often a beats b, paired by index; a tie counts half."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"win_rate needs two equal, non-empty lists, got {a.shape} and {b.shape}")
    return float(np.mean((a > b) + 0.5 * (a == b)))


def bootstrap_ci(values: Sequence[float] | np.ndarray, stat: Callable[[np.ndarray], float] = np.mean, *,
                 n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
                 groups: Sequence | None = None) -> tuple[float, float, float]:
    """(statistic, lower, upper): percentile bootstrap interval, resampling rows (the first axis).

    ``values`` may be 2-D (rows of paired values) so paired statistics such as a win rate are
    resampled together. ``groups`` (one label per row, e.g. the prompt): resample whole groups — a
    cluster bootstrap — because several samples of one prompt are not independent evidence; resampling
    rows alone would make the interval too narrow.
    """
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    if groups is None:
        idx = rng.integers(0, len(x), size=(n_boot, len(x)))  # (n_boot, N)
        stats = np.array([stat(x[i]) for i in idx])
    else:
        if len(groups) != len(x):
            raise ValueError(f"{len(groups)} group labels for {len(x)} rows")
        members: dict = {}
        for row, g in enumerate(groups):
            members.setdefault(g, []).append(row)
        clusters = [np.array(m) for m in members.values()]
        picks = rng.integers(0, len(clusters), size=(n_boot, len(clusters)))  # (n_boot, G)
        stats = np.array([stat(x[np.concatenate([clusters[c] for c in pick])]) for pick in picks])
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(stat(x)), float(lo), float(hi)


FEW = 50
"""Below this many items a proportion is shown as a rough figure (its 95% interval is wider than ±14 points)."""


def wilson_interval(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``p`` observed on ``n`` items (Wilson 1927).

    Unlike p ± z·√(p(1−p)/n) it stays inside [0, 1] and is not zero-width at p = 0 or 1: 2 of 2 right
    gives [0.34, 1], not "100%". Ties counted half make ``p`` fractional, which the formula allows.
    """
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def proportion_text(p: float, n: int, unit: str) -> str:
    """'100.0% of 2 pairs (95% interval 34–100%; under 50 pairs: a rough figure)'."""
    lo, hi = wilson_interval(p, n)
    rough = f"; under {FEW} {unit}: a rough figure" if n < FEW else ""
    return f"{p:.1%} of {n} {unit} (95% interval {lo:.0%}–{hi:.0%}{rough})"


def summary(values: Sequence[float], *, seed: int = 0, groups: Sequence | None = None) -> dict[str, float]:
    """{"value", "lo", "hi"}: the mean with its 95% bootstrap interval (by group when given)."""
    value, lo, hi = bootstrap_ci(values, seed=seed, groups=groups)
    return {"value": value, "lo": lo, "hi": hi}


def paired_win_rate(a: Sequence[float], b: Sequence[float], *, seed: int = 0,
                    groups: Sequence | None = None) -> dict[str, float]:
    """Win rate of a over b with a paired bootstrap interval (by group when given)."""
    rows = np.stack([np.asarray(a, float), np.asarray(b, float)], axis=1)  # (N, 2)
    value, lo, hi = bootstrap_ci(rows, lambda r: win_rate(r[:, 0], r[:, 1]), seed=seed, groups=groups)
    return {"value": value, "lo": lo, "hi": hi}


def paired_difference(a: Sequence[float], b: Sequence[float], *, seed: int = 0,
                      groups: Sequence | None = None) -> dict[str, float]:
    """Mean of a − b, paired by row, with its bootstrap interval (by group when given)."""
    return summary(np.asarray(a, float) - np.asarray(b, float), seed=seed, groups=groups)
