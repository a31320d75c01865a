"""LoRA on the top blocks only: the frozen lower blocks run once per rollout (models.prefix.FrozenPrefix),
and every forward that reuses their output must equal the plain full forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlhfkit.config import SamplingConfig
from rlhfkit.data.errors import RlhfkitError
from rlhfkit.feedback.gold import GoldScorer
from rlhfkit.models.policy import build_policy
from rlhfkit.train.ppo import collect_rollout

PROMPTS = ["hello the cat", "why does the dog run so often today?", "what is a good book?"]


def _batch(model, tok):
    torch.manual_seed(0)
    return collect_rollout(model, tok, PROMPTS, GoldScorer().score, sampling=SamplingConfig(max_new_tokens=6),
                           beta=0.1, gamma=1.0, lam=0.95, missing_eos_penalty=None, iteration=0)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_prefix_forward_equals_full_forward(tiny_models, arch):
    """Logits, values, reference logits and gradients agree with and without the cached prefix."""
    model, tok = build_policy(str(tiny_models[arch]), lora_r=4, lora_alpha=8, device="cpu", lora_layers=1)
    assert model.n_frozen == 1  # 2 blocks, the top one adapted
    with torch.no_grad():  # move the adapters off zero so policy ≠ reference
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    ro = _batch(model, tok)
    assert ro.prefix is not None and ro.prefix.shape[:2] == ro.input_ids.shape
    A, idx = ro.n_response, torch.tensor([2, 0])
    ids, mask = ro.input_ids[idx], ro.attention_mask[idx]
    blocks = list(model.prefix._blocks[0])

    def run(prefix):
        model.zero_grad(set_to_none=True)
        logits, values = model(ids, mask, A, 0.7, prefix=prefix)
        (logits.logsumexp(-1).sum() + values.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return logits.detach(), values.detach(), grads

    cached, full = run(ro.prefix[idx]), run(None)
    torch.testing.assert_close(cached[0], full[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached[1], full[1], atol=1e-5, rtol=1e-5)
    assert cached[2].keys() == full[2].keys() and any("lora_B" in n for n in full[2])
    for n in full[2]:
        torch.testing.assert_close(cached[2][n], full[2][n], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.reference_logits(ids, mask, A, 0.7, prefix=ro.prefix[idx]),
                               model.reference_logits(ids, mask, A, 0.7), atol=1e-5, rtol=1e-5)
    # the real blocks are back in place after every cached forward
    assert all(a is b for a, b in zip(model.prefix._blocks[0], blocks))
    # a cached prefix of OTHER rows gives other logits: the stub really replaced the blocks' work
    wrong, _ = model(ids, mask, A, 0.7, prefix=ro.prefix[torch.tensor([1, 1])])
    assert not torch.allclose(wrong, full[0], atol=1e-3)


def test_no_prefix_when_every_block_adapts_or_full_finetuning(tiny_llama):
    lora_all, _ = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu", lora_layers=0)
    full, tok = build_policy(str(tiny_llama), lora_r=0, lora_alpha=8, device="cpu")
    assert lora_all.n_frozen == 0 and full.n_frozen == 0
    assert _batch(full, tok).prefix is None


def test_a_hook_that_never_fires_is_a_clear_error(tiny_llama):
    model, _ = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu", lora_layers=1)
    model.prefix._blocks = (nn.ModuleList([nn.Identity(), nn.Identity()]),)  # modules the forward never calls
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(RlhfkitError, match="never reached transformer block 0"):
        model.frozen_prefix(ids, torch.ones_like(ids))
