"""PPO on tiny models: rollout invariants, training moves only what it should, exact resume, alarms."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import PPOConfig, load_config
from rlhfkit.data.errors import RlhfkitError
from rlhfkit.feedback.gold import GoldScorer
from rlhfkit.train import losses as L
from rlhfkit.train.metrics import read_metrics
from rlhfkit.train.ppo import PPOAlarm, build_policy, collect_rollout, prompt_batch, run_ppo

PROMPTS = ["hello the cat", "why does the dog run?", "what is a good book?", "please help the child"]


def _cfg(run_dir, model, **kw):
    base = dict(run_dir=str(run_dir), model=str(model), reward_model="gold", iterations=2, batch_size=4,
                minibatch_size=2, ppo_epochs=2, max_new_tokens=6, sample_every=0, save_every=1, device="cpu",
                temperature=1.0)
    base.update(kw)
    return load_config(PPOConfig, None, base)


def test_first_rollout_has_zero_kl_and_unit_ratio(tiny_llama):
    """Before any update the policy is the reference (LoRA B = 0): k1 = 0 everywhere, and the
    log-probs recomputed for the update equal the rollout's (ρ = 1): positions, temperature and
    padding all line up."""
    model, tok = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu")
    torch.manual_seed(0)
    ro = collect_rollout(model, tok, PROMPTS, GoldScorer().score, max_new_tokens=8, temperature=0.7, beta=0.1,
                         gamma=1.0, lam=0.95, missing_eos_penalty=-1.0, iteration=0)
    mask = ro.response_mask.bool()
    assert torch.allclose(ro.kl[mask], torch.zeros_like(ro.kl[mask]), atol=1e-5)
    logits, _ = model(ro.input_ids, ro.attention_mask, ro.n_response, 0.7)
    logp = L.logprobs_from_logits(logits, ro.input_ids[:, -ro.n_response:])
    torch.testing.assert_close(logp[mask], ro.logprobs[mask], atol=1e-5, rtol=0)
    # the score sits at the last generated token: with zero KL each row's rewards sum to its score
    torch.testing.assert_close(ro.rewards.sum(1), ro.scores, atol=1e-5, rtol=0)
    # completions that hit the limit got the fixed penalty instead of their score
    assert torch.all(ro.scores[~ro.ended.bool()] == -1.0)
    # whitened advantages: mean 0 over valid tokens
    assert abs(L.masked_mean(ro.advantages, ro.response_mask).item()) < 1e-5


def test_left_padding_does_not_change_logprobs(tiny_llama):
    """The same prompt alone and beside a longer one (so left-padded) gets the same log-probs."""
    model, tok = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu")
    kw = dict(max_new_tokens=5, temperature=1.0, beta=0.0, gamma=1.0, lam=0.95, missing_eos_penalty=None, iteration=0)
    torch.manual_seed(1)
    ro = collect_rollout(model, tok, ["hi", "why does the big dog run so often today my friend?"], GoldScorer().score, **kw)
    A = ro.n_response
    alone_ids = ro.input_ids[:1][ro.attention_mask[:1].bool()][None]  # the short row without its padding
    logits, _ = model(alone_ids, torch.ones_like(alone_ids), A, 1.0)
    logp = L.logprobs_from_logits(logits, alone_ids[:, -A:])
    m = ro.response_mask[0].bool()
    if m.sum() == A:  # the short row's response is not right-padded, so the slice lines up
        torch.testing.assert_close(logp[0][m], ro.logprobs[0][m], atol=1e-5, rtol=0)
    assert ro.attention_mask[0, 0] == 0  # the short prompt really was left-padded


def test_ppo_moves_adapters_and_value_head_not_base(tiny_llama, tmp_path):
    model, _ = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu")
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    cfg = _cfg(tmp_path / "run", tiny_llama, iterations=2)
    summary = run_ppo(cfg)
    trained = load_file(str(tmp_path / "run" / "policy" / "trainable.safetensors"))
    assert any("lora_B" in n for n in trained) and "value_head.weight" in trained
    assert all("lora_" in n or n.startswith("value_head") for n in trained)
    # LoRA B starts at 0 and the value head at 0: after updates they are not
    assert any(trained[n].abs().sum() > 0 for n in trained if "lora_B" in n)
    assert trained["value_head.weight"].abs().sum() > 0
    # the frozen base is untouched: a fresh load equals the snapshot
    fresh, _ = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu")
    for n, p in fresh.named_parameters():
        if n in base_before:
            assert torch.equal(p, base_before[n]), n
    assert summary["iterations"] == 2
    m = read_metrics(tmp_path / "run" / "logs" / "metrics.csv", "ppo")
    for name in ["objective/score", "objective/kl", "objective/reward", "policy/clipfrac", "policy/entropy",
                 "policy/approx_kl", "value/loss", "value/explained_var", "gold/score"]:
        assert [s for s, _ in m[name]] == [0, 1], name


def test_resume_is_exact(tiny_llama, tmp_path):
    """Stopped after iteration 2 and resumed to 4 ends bit-identical to 4 iterations straight."""
    straight = _cfg(tmp_path / "a", tiny_llama, iterations=4, save_every=4)
    run_ppo(straight)
    run_ppo(_cfg(tmp_path / "b", tiny_llama, iterations=2, save_every=2))
    run_ppo(_cfg(tmp_path / "b", tiny_llama, iterations=4, save_every=2, resume=True))
    a = load_file(str(tmp_path / "a" / "policy" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "b" / "policy" / "trainable.safetensors"))
    assert a.keys() == b.keys()
    for n in a:
        assert torch.equal(a[n], b[n]), n
    ma = read_metrics(tmp_path / "a" / "logs" / "metrics.csv", "ppo")
    mb = read_metrics(tmp_path / "b" / "logs" / "metrics.csv", "ppo")
    assert ma["objective/score"] == mb["objective/score"]  # same steps, same values, no duplicates


def test_full_finetune_keeps_a_frozen_reference(tiny_llama, tmp_path):
    model, _ = build_policy(str(tiny_llama), lora_r=0, lora_alpha=8, device="cpu")
    assert model.reference is not None and not any(p.requires_grad for p in model.reference.parameters())
    run_ppo(_cfg(tmp_path / "run", tiny_llama, lora_r=0, iterations=1, lr=1e-3))


def test_nan_reward_stops_naming_iteration_and_keeps_checkpoint(tiny_llama, tmp_path, monkeypatch):
    cfg = _cfg(tmp_path / "run", tiny_llama, iterations=1)
    run_ppo(cfg)
    before = load_file(str(tmp_path / "run" / "policy" / "trainable.safetensors"))
    import rlhfkit.feedback.gold as gold

    monkeypatch.setattr(gold.GoldScorer, "score", lambda self, p, c: [math.nan] * len(c))
    with pytest.raises(PPOAlarm, match=r"iteration 1: non-finite scores"):
        run_ppo(_cfg(tmp_path / "run", tiny_llama, iterations=3, resume=True))
    after = load_file(str(tmp_path / "run" / "policy" / "trainable.safetensors"))
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_refuses_to_overwrite_and_needs_a_reward_model(tiny_llama, tmp_path):
    run_ppo(_cfg(tmp_path / "run", tiny_llama, iterations=1))
    with pytest.raises(RlhfkitError, match="already exists"):
        run_ppo(_cfg(tmp_path / "run", tiny_llama, iterations=1))
    with pytest.raises(RlhfkitError, match="no reward model"):
        run_ppo(_cfg(tmp_path / "other", tiny_llama, reward_model=""))


def test_prompt_batches_cover_prompts_and_are_pure():
    prompts = [f"p{i}" for i in range(10)]
    first_epoch = prompt_batch(prompts, 0, 5, 3) + prompt_batch(prompts, 1, 5, 3)
    assert sorted(first_epoch) == sorted(prompts)  # one pass over the prompts before any repeats
    assert prompt_batch(prompts, 7, 5, 3) == prompt_batch(prompts, 7, 5, 3)
