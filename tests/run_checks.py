"""Checks shared by the trainers' tests (imported by the test modules beside it)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from rlhfkit.train.metrics import read_metrics

PAIRS = [
    ("what is a good book?", "a book about the cat and the dog", "no"),
    ("hello the cat", "hello friend, the cat is here", "cat cat cat cat cat cat"),
    ("why does the big dog run so often today my friend?", "it likes to run", "."),
    ("hi", "hi, how can I help?", "go away"),
    ("what is a good book?", "the one you enjoy", "book book"),
    ("tell me about dogs", "dogs are friendly animals", "dogs dogs dogs"),
]
"""(prompt, chosen, rejected) of the DPO, reward-model and SFT tests (test_dpo.py, dist_stages_worker.py)."""


def assert_same_training(a: Path, b: Path, stage: str) -> tuple[dict, dict]:
    """Run directories ``a`` and ``b`` hold bit-identical trained weights (every tensor of
    policy/trainable.safetensors); returns their ``stage`` metrics (a, b) for the caller's own checks."""
    wa = load_file(str(a / "policy" / "trainable.safetensors"))
    wb = load_file(str(b / "policy" / "trainable.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    return read_metrics(a / "logs" / "metrics.csv", stage), read_metrics(b / "logs" / "metrics.csv", stage)
