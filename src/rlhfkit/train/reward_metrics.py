"""Reward-model metrics on pairs (pure): Bradley–Terry loss, accuracy, margin and calibration."""

from __future__ import annotations

from collections.abc import Sequence


def calibration_bins(probs: Sequence[float], labels: Sequence[float], n_bins: int = 10) -> list[dict]:
    """Reliability-diagram bins over [0, 1]: {bin, count, mean_prob, accuracy} for each non-empty bin.

    Bin k holds probabilities in [k/n, (k+1)/n); the last bin also holds 1. ``accuracy`` is the
    bin's observed frequency of label 1.
    """
    if len(probs) != len(labels) or not probs:
        raise ValueError("calibration needs equally long, non-empty probs and labels")
    sums: dict[int, list[float]] = {}
    for p, y in zip(probs, labels):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability {p} is outside [0, 1]")
        acc = sums.setdefault(min(int(p * n_bins), n_bins - 1), [0.0, 0.0, 0.0])
        acc[0] += 1
        acc[1] += p
        acc[2] += y
    return [{"bin": b, "count": int(n), "mean_prob": s_p / n, "accuracy": s_y / n}
            for b, (n, s_p, s_y) in sorted(sums.items())]


def expected_calibration_error(probs: Sequence[float], labels: Sequence[float], n_bins: int = 10) -> float:
    """Σ_b (n_b / N) · |observed frequency of 1 in b − mean probability in b| over :func:`calibration_bins`."""
    # Guo et al. 2017, "On Calibration of Modern Neural Networks", eq. 3 (here for a binary outcome).
    bins = calibration_bins(probs, labels, n_bins)
    return sum(b["count"] * abs(b["accuracy"] - b["mean_prob"]) for b in bins) / len(probs)


def pair_probabilities(r_chosen: Sequence[float], r_rejected: Sequence[float]) -> tuple[list[float], list[float]]:
    """(P(a ≻ b) = σ(r_a − r_b), outcome) for every pair read both ways: (p, 1) and (1 − p, 0).

    A pair is unordered to the model: with chosen always first every outcome would be 1 and the
    ECE just 1 − mean p. Reading both ways gives a symmetric reliability diagram.
    """
    import torch

    from rlhfkit.train.losses import preference_probability

    probs = preference_probability(torch.tensor(list(r_chosen), dtype=torch.float64),
                                   torch.tensor(list(r_rejected), dtype=torch.float64)).tolist()
    return probs + [1.0 - p for p in probs], [1.0] * len(probs) + [0.0] * len(probs)


def pair_calibration_error(r_chosen: Sequence[float], r_rejected: Sequence[float], n_bins: int = 10) -> float:
    """ECE of σ(r_a − r_b) over pairs read both ways (:func:`pair_probabilities`)."""
    return expected_calibration_error(*pair_probabilities(r_chosen, r_rejected), n_bins)


def pair_metrics(r_chosen: Sequence[float], r_rejected: Sequence[float], weights: Sequence[float]) -> dict[str, float]:
    """Weighted BT loss, accuracy (ties ½), mean margin r_c − r_r, ECE and reliability bins (10) of raw rewards."""
    import torch

    from rlhfkit.eval.metrics import win_rate
    from rlhfkit.train.losses import bradley_terry_loss

    loss = bradley_terry_loss(torch.tensor(list(r_chosen), dtype=torch.float64),
                              torch.tensor(list(r_rejected), dtype=torch.float64),
                              weight=torch.tensor(list(weights), dtype=torch.float64))
    n = len(r_chosen)
    probs, outcomes = pair_probabilities(r_chosen, r_rejected)
    return {"loss": float(loss), "accuracy": win_rate(r_chosen, r_rejected),
            "margin": sum(c - r for c, r in zip(r_chosen, r_rejected)) / n,
            "ece": expected_calibration_error(probs, outcomes), "pairs": n,
            "calibration": calibration_bins(probs, outcomes)}
