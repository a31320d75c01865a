"""Preparing preference pairs for reward-model training (pure): checks, the held-out split, batching, schedule."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from typing import Any

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.data.records import Pair

MIN_PAIRS = 4
"""Fewer pairs than this cannot give both a training and a held-out split worth the name."""


def check_pairs(pairs: Sequence[Pair]) -> list[Pair]:
    """The pairs that carry weight; RlhfkitError naming the first bad pair (numbered from 1).

    Pairs read from JSONL were checked by ``Pair.from_dict`` already (and located at file:line);
    this catches pairs built in Python.
    """
    for i, p in enumerate(pairs, start=1):
        where = f"pair {i} of {len(pairs)}"
        for name in ("prompt", "chosen", "rejected"):
            if not isinstance(getattr(p, name), str) or not getattr(p, name).strip():
                raise RlhfkitError(f"{where}: field '{name}' is empty")
        if p.chosen == p.rejected:
            raise RlhfkitError(f"{where}: fields 'chosen' and 'rejected' are the same text")
        if not (isinstance(p.weight, (int, float)) and math.isfinite(p.weight) and p.weight >= 0):
            raise RlhfkitError(f"{where}: field 'weight' must be a finite number ≥ 0, got {p.weight!r}")
    # A zero weight adds nothing to the loss, and a batch of only such pairs would divide 0 by 0.
    kept = [p for p in pairs if p.weight > 0]
    if len(kept) < MIN_PAIRS:
        raise RlhfkitError(f"need at least {MIN_PAIRS} pairs with weight > 0 to train on, got {len(kept)}")
    return kept


def split_by_prompt(pairs: Sequence[Pair], eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): a seeded share of the distinct prompts is held out whole.

    No prompt has pairs on both sides, so held-out accuracy measures generalisation to new prompts
    rather than memory of a prompt's other comparisons.
    """
    prompts = sorted({p.prompt for p in pairs})  # sorted: the shuffle below depends on the seed only
    if eval_fraction <= 0:
        return list(range(len(pairs))), []
    if len(prompts) < 2:
        raise RlhfkitError("all pairs share one prompt: cannot hold out prompts (set eval_fraction to 0)")
    random.Random(seed).shuffle(prompts)
    n_eval = min(max(1, round(eval_fraction * len(prompts))), len(prompts) - 1)
    held = set(prompts[:n_eval])
    train = [i for i, p in enumerate(pairs) if p.prompt not in held]
    heldout = [i for i, p in enumerate(pairs) if p.prompt in held]
    return train, heldout


def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: random.Random, group: int = 50,
                           units: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """Shuffled batches of indices whose lengths are alike, so padding wastes little compute.

    Shuffle, cut into mega-batches of ``group`` batches, sort each by length, cut into batches,
    shuffle the batch order (the transformers Trainer's ``group_by_length`` sampler, mega-batch 50).

    ``units``: indices that must share a batch (a prompt's pairs, whose K completions a step then
    scores once); a batch takes whole units until it holds ``batch_size`` indices or more. A unit's
    length is its longest member's. Without units every index is its own.
    """
    units = [list(u) for u in units] if units is not None else [[i] for i in range(len(lengths))]
    size = {i: max(lengths[j] for j in u) for i, u in enumerate(units)}
    order = list(range(len(units)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    mega = batch_size * group
    lo = 0
    while lo < len(order):
        chunk, n = [], 0
        while lo < len(order) and n < mega:
            chunk.append(order[lo])
            n += len(units[order[lo]])
            lo += 1
        chunk.sort(key=lambda u: size[u], reverse=True)
        current: list[int] = []
        for u in chunk:
            current += units[u]
            if len(current) >= batch_size:
                batches.append(current)
                current = []
        if current:
            batches.append(current)
    rng.shuffle(batches)
    return batches


def prompt_units(pairs: Sequence[Pair], idx: Sequence[int]) -> list[list[int]]:
    """``idx`` grouped by prompt (first-appearance order): all of a prompt's pairs go in one step."""
    units: dict[str, list[int]] = {}
    for i in idx:
        units.setdefault(pairs[i].prompt, []).append(i)
    return list(units.values())


def linear_schedule(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def fingerprint(pairs: Sequence[Pair], hp: Any) -> str:
    """A hash of the pairs and of every setting of ``hp`` (a RewardConfig) that changes what is trained: a
    checkpoint resumes only the run that wrote it."""
    import dataclasses

    volatile = {"run_dir", "pairs", "device", "resume", "force"}  # how to run, not what to compute
    settings = {k: v for k, v in dataclasses.asdict(hp).items() if k not in volatile}
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for p in pairs:
        h.update(json.dumps([p.prompt, p.chosen, p.rejected, p.weight]).encode())
    return h.hexdigest()[:16]
