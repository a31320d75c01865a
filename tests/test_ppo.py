"""PPO on tiny models: each property checked against an independent source, so each test fails when it breaks.

Independent sources: an unpadded plain forward of each row (no batching, no left padding, no position
arithmetic, no cached prefix, no ``logits_to_keep``) for log-probs; a fresh load of the base model for
the reference and for "the frozen base is untouched"; hand-built score histories for the alarms.
"""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import PPOConfig, SamplingConfig, load_config
from rlhfkit.data.errors import RlhfkitError
from rlhfkit.feedback.gold import GoldScorer
from rlhfkit.models.load import load_policy
from rlhfkit.models.policy import build_policy
from rlhfkit.train import losses as L
from rlhfkit.train.kl_control import FixedKLController
from rlhfkit.train.metrics import read_metrics
from rlhfkit.train.ppo import PPOAlarm, alarm_reason, collect_rollout, ppo_step, prompt_batch, run_ppo, sampler_gap

from run_checks import assert_same_training

PROMPTS = ["hello the cat", "why does the big dog run so often today my friend?", "what is a good book?", "hi"]


def _cfg(run_dir, model, **kw):
    base = dict(run_dir=str(run_dir), model=str(model), reward_model="gold", iterations=2, batch_size=4,
                minibatch_size=2, ppo_epochs=2, max_new_tokens=6, sample_every=0, save_every=1, device="cpu",
                temperature=1.0, penalize_missing_eos=False)  # a tiny random model rarely ends within 6 tokens
    base.update(kw)
    return load_config(PPOConfig, None, base)


def _rollout(model, tok, *, T=0.7, A=8, seed=0, penalty=-1.0):
    torch.manual_seed(seed)
    return collect_rollout(model, tok, PROMPTS, GoldScorer().score, sampling=SamplingConfig(max_new_tokens=A, temperature=T),
                           beta=0.1, gamma=1.0, lam=0.95, missing_eos_penalty=penalty, iteration=0)


def unpadded_logprobs(lm, ro, T: float) -> list[torch.Tensor]:
    """Per row: log-probs of its response tokens (up to and incl. EOS) from the row ALONE, unpadded, through a
    plain forward of ``lm`` at temperature T."""
    out = []
    A = ro.n_response
    with torch.no_grad():
        for i in range(ro.input_ids.shape[0]):
            n_resp = int(ro.response_mask[i].sum())
            prompt = ro.input_ids[i, :-A][ro.attention_mask[i, :-A].bool()]  # the real prompt tokens
            resp = ro.input_ids[i, -A:][:n_resp]
            ids = torch.cat([prompt, resp])[None]
            logits = lm(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / T  # predicts each response token
            out.append(torch.log_softmax(logits, -1).gather(-1, resp[:, None]).squeeze(-1))
    return out


def _perturb_adapters(model, std=0.05):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, std)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_rollout_logprobs_equal_an_unpadded_plain_forward_for_every_row(tiny_models, arch):
    """ρ = 1 at step 0 for the right reason: the rollout's log-probs (batched, left-padded, prefix-cached)
    equal each row's own unpadded forward at the sampling temperature — every row, those that ended early
    included. Breaks if positions shift under padding, the temperature differs, or a row is misaligned."""
    model, tok = build_policy(str(tiny_models[arch]), lora_r=4, lora_alpha=8, device="cpu", lora_layers=1)
    _perturb_adapters(model)  # policy ≠ reference, so a mix-up of the two would show
    ro = _rollout(model, tok, T=0.7)
    assert ro.attention_mask[:, 0].eq(0).any()  # some prompt really was left-padded
    assert (ro.response_mask.sum(1) < ro.n_response).any() or not ro.ended.any()  # rows of unequal length
    for i, want in enumerate(unpadded_logprobs(model.lm, ro, 0.7)):
        got = ro.logprobs[i][ro.response_mask[i].bool()]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # merging rounds: ~1e-6 relative


def test_sampler_logprobs_equal_the_rollouts_under_a_meddling_generation_config(tiny_llama):
    """Issue 12 item 1: the log-probs the sampler reports for the tokens it drew equal the rollout's (PPO's
    old log-probs), with the model's own generation_config setting every knob a hub model may ship.
    Breaks if sampling takes anything from generation_config or uses another temperature."""
    from transformers import GenerationConfig

    model, tok = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu", lora_layers=1)
    _perturb_adapters(model)
    # on the base model: that is where PeftModel.generate (and so any generate-based sampler) reads it
    model.lm.get_base_model().generation_config = GenerationConfig(
        do_sample=True, temperature=0.2, top_k=3, top_p=0.3, repetition_penalty=3.0, no_repeat_ngram_size=1,
        min_new_tokens=6, typical_p=0.5, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert model.lm.get_base_model().generation_config.top_k == 3
    ro = _rollout(model, tok, T=0.7, A=10)
    m = ro.response_mask.bool()
    # against an independent forward of each row (on float32 PPO takes the sampler's log-probs as π_old, so
    # comparing with ro.logprobs would compare them with themselves)
    for i, want in enumerate(unpadded_logprobs(model.lm, ro, 0.7)):
        torch.testing.assert_close(ro.sampler_logprobs[i][m[i]], want, atol=1e-5, rtol=1e-5)
    assert ro.sampler_logprobs[m].min() < math.log(1 / 3)  # tokens outside any top-3 were drawn: generation_config had no say
    assert (ro.sampler_logprobs[~m] == 0).all()
    assert not ro.recomputed and sampler_gap(ro) == 0


def test_reference_is_the_base_with_adapters_off(tiny_llama):
    """Reference log-probs equal a freshly loaded base model's, although the adapters are far from 0."""
    model, tok = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu", lora_layers=1)
    _perturb_adapters(model, std=0.5)
    ro = _rollout(model, tok)
    base, _ = load_policy(str(tiny_llama))
    for i, want in enumerate(unpadded_logprobs(base, ro, 0.7)):
        got = ro.ref_logprobs[i][ro.response_mask[i].bool()]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # merging rounds: ~1e-6 relative
    assert (ro.kl.abs() > 1e-3).any()  # and the policy is really elsewhere


def test_first_rollout_zero_kl_score_placement_and_whitening(tiny_llama):
    model, tok = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu")
    ro = _rollout(model, tok, A=8)
    mask = ro.response_mask.bool()
    # LoRA B starts at 0: policy = reference, k1 = 0 on every generated token
    torch.testing.assert_close(ro.kl[mask], torch.zeros_like(ro.kl[mask]), atol=1e-6, rtol=0)
    # the score sits at the last generated token: with zero KL each row's rewards sum to its score…
    torch.testing.assert_close(ro.rewards.sum(1), ro.scores, atol=1e-5, rtol=0)
    last = L.last_valid_index(ro.response_mask)
    # (− β·k1 with k1 ~1e-7: π_old is the sampler's log-probs, the reference a full forward)
    assert all(abs(ro.rewards[i, last[i]] - ro.scores[i]) < 1e-6 for i in range(len(PROMPTS)))
    # …completions that hit the limit got the fixed penalty instead, the others their normalised score
    ended = ro.ended.bool()
    assert torch.all(ro.scores[~ended] == -1.0)
    torch.testing.assert_close(ro.scores[ended], ro.norm(ro.raw_scores)[ended])
    # whitened advantages: mean 0 over valid tokens
    assert abs(L.masked_mean(ro.advantages, ro.response_mask).item()) < 1e-5


def test_reward_is_normalised_on_the_reference_rollouts(tiny_llama):
    """Iteration 0 fits mean/std on its own raw scores (the reference's samples): they then have mean 0, std 1."""
    model, tok = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu")
    ro = _rollout(model, tok, penalty=None)
    raw = ro.raw_scores.double()
    assert ro.norm.n == len(PROMPTS)
    assert ro.norm.mean == pytest.approx(raw.mean().item()) and ro.norm.std == pytest.approx(raw.std(unbiased=False).item())
    assert ro.scores.mean().item() == pytest.approx(0.0, abs=1e-5)
    # a given norm is used as is (a resumed run must not refit)
    torch.manual_seed(0)
    again = collect_rollout(model, tok, PROMPTS, GoldScorer().score, sampling=SamplingConfig(max_new_tokens=8),
                            beta=0.1, gamma=1.0, lam=0.95, missing_eos_penalty=None, iteration=1, norm=ro.norm)
    assert again.norm is ro.norm


def _train_steps(model, tok, n=3, lr=5e-2):
    hp = load_config(PPOConfig, None, dict(batch_size=4, minibatch_size=2, ppo_epochs=2, max_new_tokens=6,
                                           temperature=1.0, lr=lr))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    norm = None
    for it in range(n):
        result = ppo_step(model, tok, optimizer, FixedKLController(0.05), PROMPTS, GoldScorer().score, None,
                          iteration=it, seed=0, hp=hp, norm=norm)
        norm = result.rollout.norm
    return result


def test_training_moves_adapters_and_value_head_never_the_base(tiny_llama):
    model, tok = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    _train_steps(model, tok)
    now = dict(model.named_parameters())
    for n, before in frozen.items():
        assert torch.equal(now[n], before), f"frozen weight {n} changed"
    assert any(not torch.equal(now[n], before) for n, before in trained.items() if "lora_B" in n)
    assert not torch.equal(now["value_head.weight"], trained["value_head.weight"])
    # the base the reference is made of is still the checkpoint on disk
    base, _ = load_policy(str(tiny_llama))
    for n, p in base.named_parameters():
        assert torch.equal(model.lm.get_base_model().get_parameter(n), p), n


def test_full_finetuning_moves_the_lm_and_keeps_the_reference(tiny_llama):
    model, tok = build_policy(str(tiny_llama), lora_r=0, lora_alpha=8, device="cpu")
    assert model.reference is not None and not any(p.requires_grad for p in model.reference.parameters())
    lm_before = {n: p.detach().clone() for n, p in model.lm.named_parameters()}
    ro = _train_steps(model, tok).rollout
    changed = [n for n, p in model.lm.named_parameters() if not torch.equal(p, lm_before[n])]
    assert len(changed) > len(lm_before) // 2  # full fine-tuning: most LM weights moved
    base, _ = load_policy(str(tiny_llama))
    for n, p in base.named_parameters():
        assert torch.equal(model.reference.get_parameter(n), p), n
    for i, want in enumerate(unpadded_logprobs(base, ro, 1.0)):
        torch.testing.assert_close(ro.ref_logprobs[i][ro.response_mask[i].bool()], want, atol=1e-5, rtol=0)


def test_run_ppo_writes_a_loadable_checkpoint_and_metrics(tiny_llama, tmp_path):
    summary = run_ppo(_cfg(tmp_path / "run", tiny_llama, iterations=2))
    folder = tmp_path / "run" / "policy"
    trained = load_file(str(folder / "trainable.safetensors"))
    assert all("lora_" in n or n.startswith("value_head") for n in trained)
    model, _ = build_policy(str(tiny_llama), lora_r=16, lora_alpha=32, lora_layers=8, device="cpu")  # PPOConfig's
    model.load_trained(folder)
    for n, p in model.named_parameters():
        if n in trained:
            assert torch.equal(p, trained[n]), n
    assert summary["iterations"] == 2 and summary["reward_norm"]["n"] == 4
    other, _ = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu")
    with pytest.raises(RlhfkitError, match="does not match the model"):
        other.load_trained(folder)
    m = read_metrics(tmp_path / "run" / "logs" / "metrics.csv", "ppo")
    for name in ["objective/score", "objective/kl", "objective/reward", "policy/clipfrac", "policy/entropy",
                 "policy/approx_kl", "value/loss", "value/explained_var", "gold/score", "loss/total"]:
        assert [s for s, _ in m[name]] == [0, 1], name


def test_resume_is_exact(tiny_llama, tmp_path):
    """Stopped after iteration 2 and resumed to 4 ends bit-identical to 4 iterations straight."""
    run_ppo(_cfg(tmp_path / "a", tiny_llama, iterations=4, save_every=4))
    run_ppo(_cfg(tmp_path / "b", tiny_llama, iterations=2, save_every=2))
    run_ppo(_cfg(tmp_path / "b", tiny_llama, iterations=4, save_every=2, resume=True))
    ma, mb = assert_same_training(tmp_path / "a", tmp_path / "b", "ppo")
    assert ma["objective/score"] == mb["objective/score"]  # same steps, same values, no duplicates
    assert (tmp_path / "a" / "policy" / "reward_norm.json").read_text() == (tmp_path / "b" / "policy" / "reward_norm.json").read_text()


def test_nan_reward_stops_naming_iteration_and_keeps_checkpoint(tiny_llama, tmp_path, monkeypatch):
    run_ppo(_cfg(tmp_path / "run", tiny_llama, iterations=1))
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


def test_every_completion_at_the_limit_stops_with_the_reason(tiny_llama, tmp_path):
    """With the missing-EOS penalty on and no completion ending, every score is the penalty: stop and say so."""
    summary = run_ppo(_cfg(tmp_path / "run", tiny_llama, iterations=3, max_new_tokens=1, penalize_missing_eos=True))
    assert summary["iterations"] == 1 and "every completion hit max_new_tokens" in summary["stop_reason"]


def _stats(ended: float, kl: float = 1.0, ratio: float = 1.0) -> dict:
    return {"objective/kl": kl, "policy/ratio_max": ratio, "rollout/ended": ended}


def test_alarms_on_hand_built_histories():
    kw = dict(kl_budget=10.0, ratio_alarm=5.0, length_alarm=0.9, missing_eos_mode=None)
    assert alarm_reason([_stats(0.5)], **kw) is None
    assert "KL budget" in alarm_reason([_stats(0.5, kl=11.0)], **kw)
    assert "ratio" in alarm_reason([_stats(0.5, ratio=6.0)], **kw)
    # lengths drifting to the limit: 40% cut at first, then ≥ 90% over the last 3 iterations
    drift = [_stats(0.6), _stats(0.3), _stats(0.05), _stats(0.0), _stats(0.1)]
    assert "drifted to the length limit" in alarm_reason(drift, **kw)
    assert alarm_reason(drift[:4], **kw) is None  # last 3 cut: 70%, 95%, 100% → 88% < 90%
    # one bad iteration among good ones is not a drift (the window averages)
    assert alarm_reason([_stats(0.6), _stats(0.6), _stats(0.6), _stats(0.0)], **kw) is None
    # a model that always ran to the limit did not drift there: no length alarm (0 turns it off too)
    assert alarm_reason([_stats(0.05)] * 5, **kw) is None
    assert alarm_reason(drift, **{**kw, "length_alarm": 0.0}) is None
    # all cut with the penalty on: a dead run from the first iteration
    assert "every completion hit max_new_tokens" in alarm_reason([_stats(0.0)], **{**kw, "missing_eos_mode": "replace"})
    # …but a subtracted penalty keeps the reward model's order among cut-off replies: still something to learn
    assert alarm_reason([_stats(0.0)], **{**kw, "missing_eos_mode": "subtract"}) is None


def test_prompt_batches_cover_prompts_and_are_pure():
    prompts = [f"p{i}" for i in range(10)]
    first_epoch = prompt_batch(prompts, 0, 5, 3) + prompt_batch(prompts, 1, 5, 3)
    assert sorted(first_epoch) == sorted(prompts)  # one pass over the prompts before any repeats
    assert prompt_batch(prompts, 7, 5, 3) == prompt_batch(prompts, 7, 5, 3)


def test_ppo_refuses_a_truncated_or_greedy_distribution():
    for bad, word in ((dict(temperature=0.0), "temperature"), (dict(top_p=0.9), "top_p"), (dict(top_k=5), "top_k")):
        with pytest.raises(RlhfkitError, match=word):
            load_config(PPOConfig, None, bad)


def test_load_aligned_merges_the_adapters_into_a_plain_model(tiny_llama, tmp_path):
    """The merged model's log-probs equal the trained LoRA policy's (an unpadded forward of each rollout row)."""
    from rlhfkit.models.policy import load_aligned

    run_ppo(_cfg(tmp_path / "run", tiny_llama, iterations=1, lr=5e-2))
    policy, tok = build_policy(str(tiny_llama), lora_r=16, lora_alpha=32, lora_layers=8, device="cpu")
    policy.load_trained(tmp_path / "run" / "policy")
    merged, _, config = load_aligned(tmp_path / "run" / "policy")
    assert config["lora_r"] == 16 and not hasattr(merged, "disable_adapter")  # a plain transformers model
    ro = _rollout(policy, tok, T=1.0)
    base, _ = load_policy(str(tiny_llama))
    for i, (want, got, ref) in enumerate(zip(unpadded_logprobs(policy.lm, ro, 1.0), unpadded_logprobs(merged, ro, 1.0),
                                              unpadded_logprobs(base, ro, 1.0))):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # merging rounds: ~1e-6 relative
    assert any(not torch.allclose(g, r, atol=1e-4) for g, r in zip(unpadded_logprobs(merged, ro, 1.0),
                                                                    unpadded_logprobs(base, ro, 1.0)))  # it trained


def test_the_policy_folder_loads_with_plain_peft_and_names_its_base(tiny_llama, tmp_path):
    """issue 19.13: PeftModel.from_pretrained(base, RUN_DIR/policy) is the trained policy; its config names the base."""
    import json

    from peft import PeftModel

    from rlhfkit.models.load import SMOLLM2_HUB_ID, base_model_id

    run_ppo(_cfg(tmp_path / "run", tiny_llama, iterations=1, lr=5e-2))
    folder = tmp_path / "run" / "policy"
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_llama.resolve())
    policy, tok = build_policy(str(tiny_llama), lora_r=16, lora_alpha=32, lora_layers=8, device="cpu")
    policy.load_trained(folder)
    plain = PeftModel.from_pretrained(load_policy(str(tiny_llama))[0], str(folder))
    ro = _rollout(policy, tok, T=1.0)
    for want, got in zip(unpadded_logprobs(policy.lm, ro, 1.0), unpadded_logprobs(plain, ro, 1.0)):
        torch.testing.assert_close(got, want)
    assert base_model_id("smollm2") == SMOLLM2_HUB_ID  # not ~/.cache/rlhfkit/…
