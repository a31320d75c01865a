"""models.unwrap.plain_layers: sampling through plain layers with the adapters folded in, and put back exactly.

Independent references: peft's own forward with the adapters on (the policy) and with them switched off
(the reference); the tensors the model held before the block (identity and bits).
"""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import LoraLayer

from rlhfkit.config import PPOConfig, load_config
from rlhfkit.models.policy import build_policy
from rlhfkit.models.unwrap import plain_layers
from rlhfkit.train.ppo import collect_rollout


def _policy(model_dir, dtype="float32", lora_layers=0):
    model, tok = build_policy(str(model_dir), lora_r=4, lora_alpha=8, device="cpu", lora_layers=lora_layers,
                              dtype=dtype)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # peft starts B at 0 (the adapters a no-op): give them an effect to fold in
            torch.nn.init.normal_(p, std=0.5)
    return model, tok


def _logits(lm, ids):
    with torch.no_grad():
        return lm(input_ids=ids).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # nn.Linear (W is out × in) and GPT-2's Conv1D (in × out)
def test_folded_layers_compute_the_policy_and_the_reference_and_leave_the_model_as_it_was(tiny_models, arch):
    model, _ = _policy(tiny_models[arch], lora_layers=1)  # LoRA on the top block only: the others are untouched
    lm = model.lm
    ids = torch.tensor([[5, 17, 3, 99, 42, 7]])
    policy = _logits(lm, ids)
    with lm.disable_adapter():
        reference = _logits(lm, ids)
    assert (policy - reference).abs().max() > 1e-2  # the adapters matter, so folding them in is tested
    before = {n: (p, p.data_ptr(), p.detach().clone()) for n, p in lm.named_parameters()}
    n_lora = sum(isinstance(m, LoraLayer) for m in lm.modules())
    assert n_lora > 0

    with plain_layers(lm) as folded:
        assert folded
        assert not any(isinstance(m, LoraLayer) for m in lm.modules())  # plain layers only
        torch.testing.assert_close(_logits(lm, ids), policy, atol=1e-5, rtol=1e-5)
    with plain_layers(lm, adapters=False) as plain:
        assert plain
        assert torch.equal(_logits(lm, ids), reference)  # the base weights themselves: bit for bit

    after = dict(lm.named_parameters())
    assert after.keys() == before.keys() and sum(isinstance(m, LoraLayer) for m in lm.modules()) == n_lora
    for name, (param, ptr, value) in before.items():
        assert after[name] is param and param.data_ptr() == ptr and torch.equal(param, value), name
    assert torch.equal(_logits(lm, ids), policy)


def test_bfloat16_weights_are_not_folded(tiny_llama):
    """A LoRA delta folded into bfloat16 weights is rounded to 8 bits of mantissa: not the policy; left as is."""
    model, _ = _policy(tiny_llama, dtype="bfloat16")
    with plain_layers(model.lm) as folded:
        assert not folded
        assert any(isinstance(m, LoraLayer) for m in model.lm.modules())


def test_critic_free_rollout_takes_the_samplers_logprobs_and_matches_a_recomputation(tiny_llama):
    """critic False: π_old is the sampler's log-probs (the policy's forward is skipped); they equal what the
    forward computes within float32 rounding, on the same tokens, and the values are 0."""
    model, tok = _policy(tiny_llama, lora_layers=1)
    hp = load_config(PPOConfig, None, dict(max_new_tokens=8, temperature=0.7))
    score = lambda prompts, texts: [float(len(t)) for t in texts]  # noqa: E731
    kw = dict(sampling=hp.sampling, beta=0.1, gamma=1.0, lam=1.0, missing_eos_penalty=None, iteration=0)
    prompts = ["hello the cat", "why does the big dog run", "a b c"]
    rollouts = {}
    for critic in (True, False):
        torch.manual_seed(3)
        rollouts[critic] = collect_rollout(model, tok, prompts, score, critic=critic, **kw)
    full, reused = rollouts[True], rollouts[False]
    assert torch.equal(full.input_ids, reused.input_ids)
    m = full.response_mask.bool()
    assert m.sum() > 5
    torch.testing.assert_close(reused.logprobs[m], full.logprobs[m], atol=1e-5, rtol=1e-5)
    assert torch.equal(reused.logprobs[m], reused.sampler_logprobs[m])
    assert (reused.logprobs[~m] == 0).all() and (reused.values == 0).all()
    torch.testing.assert_close(reused.kl, full.kl, atol=1e-5, rtol=1e-5)
