"""Generation: K completions per prompt, seeded, EOS and padding handled, on tiny models."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.data.records import Prompt
from rlhfkit.generate import decode_responses, generate_completions, response_length, select_prompts
from rlhfkit.models.load import load_policy


def test_response_length_counts_through_first_eos():
    # EOS = 2, pad = 0: row 0 ends at position 2 (3 tokens incl. EOS); row 1 never ends (4 tokens);
    # row 2 ends at 0; row 3 sampled the pad id as a token and never ended (4 tokens); row 4 has two EOS
    resp = torch.tensor([[5, 6, 2, 0], [5, 6, 7, 8], [2, 0, 0, 0], [5, 0, 7, 8], [5, 2, 2, 0]])
    assert response_length(resp, [2]).tolist() == [3, 4, 1, 4, 2]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_k_per_prompt_is_seeded(tiny_models, arch):
    model, tok = load_policy(str(tiny_models[arch]))
    prompts = [Prompt("a", "hello the cat"), Prompt("b", "why does the big dog run so often today?")]
    kwargs = dict(k=3, max_new_tokens=6, temperature=1.0, top_p=1.0, batch_size=4, seed=7, model_name="tiny", progress=False)
    first, stats = generate_completions(model, tok, prompts, **kwargs)
    again, _ = generate_completions(model, tok, prompts, **kwargs)
    assert [c.completion_id for c in first] == ["a-0", "a-1", "a-2", "b-0", "b-1", "b-2"]
    assert [c.text for c in first] == [c.text for c in again]
    assert all(1 <= c.sampling["tokens"] <= 6 for c in first)
    assert stats["tokens"] == sum(c.sampling["tokens"] for c in first)
    assert {c.prompt for c in first} == {"hello the cat", "why does the big dog run so often today?"}


def test_decode_stops_at_eos(tiny_llama):
    _, tok = load_policy(str(tiny_llama))
    words = tok("the cat", add_special_tokens=False)["input_ids"]
    row = torch.tensor([words + [tok.eos_token_id] + tok("dog", add_special_tokens=False)["input_ids"]])
    n = response_length(row, [tok.eos_token_id])
    assert decode_responses(tok, row, n) == ["the cat"]


def test_select_prompts():
    ps = [Prompt("1", "a", "train"), Prompt("2", "b", "eval"), Prompt("3", "c", "train")]
    assert [p.id for p in select_prompts(ps, "train", 0)] == ["1", "3"]
    assert [p.id for p in select_prompts(ps, "all", 2)] == ["1", "2"]


def test_default_prompts_interleave_categories():
    # generate takes the first N prompts of a split: the shipped file cycles through the categories, so
    # the demo's first 96 train prompts hold every kind, provocative included (the reward model must see
    # rude replies to learn to rank them last).
    import json
    from collections import Counter

    from rlhfkit import defaults

    rows = [json.loads(line) for line in defaults.prompts_path().read_text().splitlines()]
    for split in ("train", "eval"):
        ordered = [r["category"] for r in rows if r["split"] == split]
        kinds = set(ordered)
        assert len(kinds) == 7
        head = Counter(ordered[: 7 * 8])
        assert all(head[k] == 8 for k in kinds), head
