"""RLOO and GRPO (``rlhfkit ppo --algorithm rloo|grpo``) on tiny models.

Independent sources: hand-worked advantages; a constant scorer (every group flat, so the policy-gradient
term is exactly 0 and only the KL term can move the policy); the base model on disk for "frozen stays frozen".
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit.config import PPOConfig, load_config
from rlhfkit.data.errors import RlhfkitError
from rlhfkit.feedback.gold import GoldScorer
from rlhfkit.models.load import load_policy
from rlhfkit.models.policy import build_policy
from rlhfkit.train import losses as L
from rlhfkit.train.critic_free import critic_free_step, group_advantages, repeat_prompts
from rlhfkit.train.kl_control import FixedKLController
from rlhfkit.train.metrics import read_metrics
from rlhfkit.train.ppo import PPOAlarm, run_ppo

from run_checks import assert_same_training

PROMPTS = ["hello the cat", "why does the big dog run so often today my friend?"]


def _hp(algorithm, **kw):
    base = dict(algorithm=algorithm, group_size=3, batch_size=6, minibatch_size=3, ppo_epochs=2, max_new_tokens=6,
                temperature=1.0, penalize_missing_eos=False)
    base.update(kw)
    return load_config(PPOConfig, None, base)


def _cfg(run_dir, model, algorithm, **kw):
    base = dict(run_dir=str(run_dir), model=str(model), reward_model="gold", iterations=2, sample_every=0,
                save_every=1, device="cpu")
    base.update(kw)
    return _hp(algorithm, **base)


def _perturb_adapters(model, std=0.05):
    torch.manual_seed(123)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, std)


def _step(model, tok, hp, score, it=0, beta=0.1, norm=None):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=hp.lr)
    return critic_free_step(model, tok, opt, FixedKLController(beta), PROMPTS, score, None, iteration=it, seed=0,
                            hp=hp, norm=norm)


def test_group_advantages_hand_values_and_where_the_kl_enters():
    # one group of 3; completion lengths 2, 1, 3 (padding 0); per-token k1 sums 1, 0, 2
    scores = torch.tensor([1.0, 2.0, 6.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    kl = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [1.0, 0.5, 0.5]])
    # rloo, β = 1: R = (0, 2, 4); baselines (2+4)/2 = 3, (0+4)/2 = 2, (0+2)/2 = 1 → A = (−3, 0, 3)
    adv = group_advantages("rloo", scores, kl, mask, 1.0, 3)
    assert torch.equal(adv, torch.tensor([[-3.0, -3.0, 0.0], [0.0, 0.0, 0.0], [3.0, 3.0, 3.0]]))
    # grpo: the KL is not in the advantage; scores (1, 2, 6): mean 3, unbiased std √7 = 2.645751
    adv = group_advantages("grpo", scores, kl, mask, 1.0, 3)
    want = torch.tensor([-2.0, -1.0, 3.0]) / (math.sqrt(7) + 1e-4)
    torch.testing.assert_close(adv, want[:, None] * mask)
    assert torch.equal(adv, group_advantages("grpo", scores, torch.zeros_like(kl), mask, 1.0, 3))
    # grpo with scale_rewards none (Dr. GRPO): the centred scores (−2, −1, 3), undivided
    adv = group_advantages("grpo", scores, kl, mask, 1.0, 3, "none")
    assert torch.equal(adv, torch.tensor([-2.0, -1.0, 3.0])[:, None] * mask)


def test_grpo_step_reads_scale_rewards(tiny_llama):
    """scale_rewards none reaches the step: each token's advantage is its completion's score minus its group's mean."""
    model, tok = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu")
    ro = _step(model, tok, _hp("grpo", scale_rewards="none"), GoldScorer().score).rollout
    centred = (ro.scores.view(2, 3) - ro.scores.view(2, 3).mean(1, keepdim=True)).reshape(-1)  # (6,)
    assert centred.abs().max() > 0.1  # the groups' scores differ, so the scale would show (std ≠ 1)
    torch.testing.assert_close(ro.advantages, centred[:, None] * ro.response_mask)


def _grpo_rollout(model_dir):
    """(policy, one real GRPO rollout of PROMPTS × K = 3 at the old policy, no KL in the reward, no value head)."""
    from rlhfkit.train.ppo import collect_rollout

    model, tok = build_policy(str(model_dir), lora_r=4, lora_alpha=8, device="cpu")
    torch.manual_seed(0)
    ro = collect_rollout(model, tok, repeat_prompts(PROMPTS, 3), GoldScorer().score, sampling=_hp("grpo").sampling,
                         beta=0.0, gamma=1.0, lam=1.0, missing_eos_penalty=None, iteration=0, critic=False)
    return model, ro


def _one_update(model, ro, lr: float, **settings) -> dict:
    """ppo_update's statistics for one epoch of one minibatch (all 6 rows) of ``ro``, critic-free."""
    from rlhfkit.train.ppo import ppo_update

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    return ppo_update(model, opt, ro, epochs=1, minibatch_size=6, clip_eps=0.2, vf_clip=0.2, vf_coef=0.0, ent_coef=0.0,
                      temperature=1.0, max_grad_norm=1.0, generator=torch.Generator().manual_seed(0), iteration=0,
                      critic=False, **settings)


def test_update_clips_the_ratio_at_clip_eps_high(tiny_llama):
    """A real rollout with every π_old lowered by 0.5 nats (ρ = e^0.5 ≈ 1.65 on every token) and every advantage +1:
    the symmetric clip (1.2) cuts every token off, an upper clip of 1 + 1.0 none (one minibatch: clipfrac is read
    before the optimizer step; with every token clipped the gradient is 0 and Adam leaves the weights as they were)."""
    model, ro = _grpo_rollout(tiny_llama)
    mask = ro.response_mask
    ro = dataclasses.replace(ro, logprobs=ro.logprobs - 0.5 * mask, advantages=mask.float())
    clipfrac = [_one_update(model, ro, 1e-3, clip_eps_high=high)["policy/clipfrac"] for high in (None, 1.0)]
    assert clipfrac == [1.0, 0.0]


def test_update_takes_one_ratio_per_completion_at_sequence_level(tiny_llama):
    """A real rollout whose π_old is moved ±0.5 nats on alternate tokens (an odd completion's last token kept), so each
    completion's mean log-ratio is 0, and every advantage +1: per token, the tokens at ρ = e^0.5 > 1.2 are clipped;
    per completion (GSPO) every ρ is 1 and none is (lr 0: both updates see the same weights)."""
    model, ro = _grpo_rollout(tiny_llama)
    mask = ro.response_mask
    A = mask.shape[1]
    n = mask.sum(dim=1, keepdim=True)
    odd_last = (torch.arange(A)[None, :] == n - 1) & (n % 2 == 1)
    shift = 0.5 * (-1.0) ** torch.arange(A)[None, :] * mask * ~odd_last  # +0.5, −0.5, … on each row
    ro = dataclasses.replace(ro, logprobs=ro.logprobs - shift, advantages=mask.float())
    clipfrac = {level: _one_update(model, ro, 0.0, ratio_level=level)["policy/clipfrac"] for level in ("token", "sequence")}
    assert clipfrac["sequence"] == 0.0 and clipfrac["token"] > 0.3, clipfrac
    # the KL term weighted by the ratio takes the same level: per completion every weight is 1 (the plain k3 mean),
    # per token e^±0.5 (more); the reference sits 0.3 nats under the policy on every token, so k3 ≠ 0
    ro = dataclasses.replace(ro, ref_logprobs=ro.logprobs + shift - 0.3 * mask)
    kl = {(level, weighted): _one_update(model, ro, 0.0, ratio_level=level, kl_loss_coef=0.1,
                                         kl_bias_correction=weighted)["policy/kl_loss"]
          for level, weighted in (("token", False), ("token", True), ("sequence", True))}
    assert abs(kl["sequence", True] - kl["token", False]) < 1e-6 < 1e-3 < kl["token", True] - kl["token", False], kl


def test_update_averages_tokens_by_loss_type(tiny_llama):
    """On a real rollout at the old policy (ρ = 1 within float32 rounding, so a token's loss is −Â), completions cut
    to 6, 3, 6, 1, 6, 2 tokens with advantages −2.5 … +2.5: the policy loss is −Σ_i n_i·A_i / Σ n_i (dapo),
    −mean_i A_i (grpo) or −Σ_i n_i·A_i / (6 · max_new_tokens 6) (dr_grpo); the KL term is averaged the same way."""
    model, ro = _grpo_rollout(tiny_llama)
    assert ro.response_mask.shape == (6, 6) and ro.response_mask.all()  # every completion ran to the limit
    n = torch.tensor([6, 3, 6, 1, 6, 2])
    a = torch.arange(6) - 2.5
    mask = (torch.arange(6)[None] < n[:, None]).long()
    # the KL term likewise: the reference d_i nats below the policy on every token of completion i: k3 = e^−d + d − 1
    d = torch.linspace(0.1, 0.6, 6)
    k3 = torch.exp(-d) + d - 1
    ro = dataclasses.replace(ro, response_mask=mask, advantages=a[:, None] * mask,
                             ref_logprobs=ro.logprobs - d[:, None] * mask)
    want = {"dapo": (-(n * a).sum() / n.sum(), (n * k3).sum() / n.sum()), "grpo": (-a.mean(), k3.mean()),
            "dr_grpo": (-(n * a).sum() / 36, (n * k3).sum() / 36)}
    for loss_type, (pg, kl) in want.items():  # lr 0: the weights stay put between the three
        stats = _one_update(model, ro, 0.0, kl_loss_coef=0.05, loss_type=loss_type, max_tokens=6)
        assert abs(stats["policy/loss"] - float(pg)) < 1e-4, (loss_type, stats["policy/loss"], float(pg))
        assert abs(stats["policy/kl_loss"] - float(kl)) < 1e-4, (loss_type, stats["policy/kl_loss"], float(kl))
    assert len({round(float(pg), 3) for pg, _ in want.values()}) == 3  # the three differ here
    assert len({round(float(kl), 3) for _, kl in want.values()}) == 3


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_steps_pass_the_clip_and_loss_settings_to_the_update(tiny_llama, monkeypatch, algorithm):
    """The config's clip_eps_high reaches ppo_update from both steps (0 → None: the symmetric clip); loss_type, the
    token limit, kl_bias_correction and the ratio level from the critic-free step (ppo ignores them)."""
    import rlhfkit.train.critic_free as critic_free
    import rlhfkit.train.ppo as ppo

    passed, real = [], ppo.ppo_update

    def spy(*args, **kwargs):  # records the settings, then runs the real update
        passed.append((kwargs["clip_eps_high"], kwargs.get("loss_type"), kwargs.get("max_tokens"),
                       kwargs.get("kl_bias_correction"), kwargs.get("ratio_level")))
        return real(*args, **kwargs)

    monkeypatch.setattr(ppo, "ppo_update", spy)
    monkeypatch.setattr(critic_free, "ppo_update", spy)
    step = ppo.ppo_step if algorithm == "ppo" else critic_free_step
    prompts = PROMPTS * 3 if algorithm == "ppo" else PROMPTS
    for high in (0.28, 0.0):
        model, tok = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu")
        hp = _hp(algorithm, clip_eps_high=high, ppo_epochs=1, loss_type="dr_grpo", kl_bias_correction=high > 0,
                 importance_sampling_level="sequence" if high > 0 else "token")
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=hp.lr)
        step(model, tok, opt, FixedKLController(0.1), prompts, GoldScorer().score, None, iteration=0, seed=0, hp=hp,
             norm=None)
    if algorithm == "ppo":
        assert passed == [(0.28, None, None, None, None), (None, None, None, None, None)]
    else:
        assert passed == [(0.28, "dr_grpo", 6, True, "sequence"), (None, "dr_grpo", 6, False, "token")]


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_rollout_groups_prompts_and_advantages_balance_per_group(tiny_llama, algorithm):
    model, tok = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu")
    _perturb_adapters(model)  # KL ≠ 0, so rloo's reward differs from the score
    ro = _step(model, tok, _hp(algorithm), GoldScorer().score).rollout
    assert ro.prompts == repeat_prompts(PROMPTS, 3) == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    mask = ro.response_mask.bool()
    per_row = ro.advantages.max(1).values  # the row's advantage sits on every generated token…
    assert torch.all((ro.advantages == per_row[:, None]) | ~mask) and torch.all(ro.advantages[~mask] == 0)
    kl_seq = ro.kl.sum(1)
    assert (kl_seq.abs() > 1e-4).any()
    if algorithm == "rloo":  # …the KL is in the reward: Σ_t rewards = score − β·Σ_t k1, and A sums to 0 per group
        torch.testing.assert_close(ro.rewards.sum(1), ro.scores - 0.1 * kl_seq)
        torch.testing.assert_close(per_row.view(2, 3).sum(1), torch.zeros(2), atol=1e-5, rtol=0)
        r = ro.scores - 0.1 * kl_seq
        torch.testing.assert_close(per_row[0], r[0] - (r[1] + r[2]) / 2)
    else:  # …the KL is not in the reward; per group A has mean 0 and std 1
        torch.testing.assert_close(ro.rewards.sum(1), ro.scores)
        g = per_row.view(2, 3)
        torch.testing.assert_close(g.mean(1), torch.zeros(2), atol=1e-5, rtol=0)
        torch.testing.assert_close(g.std(1), torch.ones(2), atol=1e-3, rtol=0)


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_training_moves_adapters_only_not_the_value_head_nor_the_base(tiny_llama, algorithm):
    model, tok = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hp, norm = _hp(algorithm, lr=5e-2), None
    for it in range(2):
        result = _step(model, tok, hp, GoldScorer().score, it=it, norm=norm)
        norm = result.rollout.norm
    now = dict(model.named_parameters())
    assert any(not torch.equal(now[n], b) for n, b in before.items() if "lora_B" in n)
    for n in ("value_head.weight", "value_head.bias"):  # no critic: nothing trains it
        assert torch.equal(now[n], before[n]), n
    base, _ = load_policy(str(tiny_llama))
    for n, p in base.named_parameters():
        assert torch.equal(model.lm.get_base_model().get_parameter(n), p), n
    assert "value/loss" not in result.stats and "value/explained_var" not in result.stats
    assert ("policy/kl_loss" in result.stats) == (algorithm == "grpo")


def _constant(prompts, texts):
    return [0.5] * len(texts)


@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_grpo_kl_in_the_loss_is_the_only_force_when_every_group_is_flat(tiny_llama, beta):
    """A constant scorer makes every group flat: advantage 0, so the clipped term gives no gradient. With β = 0
    nothing moves; with β > 0 the KL term alone pulls the perturbed policy back towards the reference."""
    model, tok = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu")
    _perturb_adapters(model, std=0.3)
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    hp = _hp("grpo", lr=1e-2, ppo_epochs=4)
    result = _step(model, tok, hp, _constant, beta=beta)
    assert result.stats["rollout/flat_groups"] == 1.0
    assert torch.all(result.rollout.advantages == 0)
    moved = [n for n, p in model.named_parameters() if "lora_" in n and not torch.equal(p, lora[n])]
    if beta == 0:
        assert not moved
    else:
        assert moved
        ro = result.rollout
        with torch.no_grad():  # the same samples now have a smaller KL to the reference
            logits, _ = model(ro.input_ids, ro.attention_mask, ro.n_response, 1.0, prefix=ro.prefix)
            logp = L.logprobs_from_logits(logits, ro.input_ids[:, -ro.n_response:])
        assert L.kl_loss(logp, ro.ref_logprobs, ro.response_mask) < L.kl_loss(ro.logprobs, ro.ref_logprobs, ro.response_mask)


def test_run_rloo_writes_metrics_and_a_loadable_checkpoint(tiny_llama, tmp_path):
    summary = run_ppo(_cfg(tmp_path / "run", tiny_llama, "rloo"))
    assert summary["algorithm"] == "rloo" and summary["iterations"] == 2 and summary["reward_norm"]["n"] == 6
    trained = load_file(str(tmp_path / "run" / "policy" / "trainable.safetensors"))
    assert any("lora_" in n for n in trained)
    m = read_metrics(tmp_path / "run" / "logs" / "metrics.csv", "ppo")
    for name in ["objective/score", "objective/kl", "objective/reward", "policy/clipfrac", "rollout/flat_groups",
                 "gold/score", "loss/total"]:
        assert [s for s, _ in m[name]] == [0, 1], name
    assert "value/loss" not in m and "policy/kl_loss" not in m


def test_grpo_resume_is_exact(tiny_llama, tmp_path):
    """Stopped after iteration 1 and resumed to 3 ends bit-identical to 3 iterations straight."""
    run_ppo(_cfg(tmp_path / "a", tiny_llama, "grpo", iterations=3, save_every=3))
    run_ppo(_cfg(tmp_path / "b", tiny_llama, "grpo", iterations=1))
    run_ppo(_cfg(tmp_path / "b", tiny_llama, "grpo", iterations=3, resume=True))
    ma, mb = assert_same_training(tmp_path / "a", tmp_path / "b", "ppo")
    assert ma["policy/kl_loss"] == mb["policy/kl_loss"] and len(ma["policy/kl_loss"]) == 3


def test_nan_scorer_stops_naming_iteration(tiny_llama, tmp_path, monkeypatch):
    import rlhfkit.feedback.gold as gold

    monkeypatch.setattr(gold.GoldScorer, "score", lambda self, p, c: [math.nan] * len(c))
    with pytest.raises(PPOAlarm, match=r"iteration 0: non-finite scores"):
        run_ppo(_cfg(tmp_path / "run", tiny_llama, "rloo", iterations=1))
    assert not (tmp_path / "run" / "policy").exists()  # nothing half-written


def test_config_refuses_k1_ragged_batches_and_unknown_algorithms():
    with pytest.raises(RlhfkitError, match=r"'group_size' must be ≥ 2 for grpo"):
        _hp("grpo", group_size=1)
    with pytest.raises(RlhfkitError, match=r"'batch_size' must be a multiple of group_size \(4\) for rloo"):
        _hp("rloo", group_size=4, batch_size=6)
    with pytest.raises(RlhfkitError, match="'algorithm' must be one of ppo, rloo, grpo"):
        _hp("dpo")
    with pytest.raises(RlhfkitError, match="'scale_rewards' must be one of group, batch, none, got 'std'"):
        _hp("grpo", scale_rewards="std")
    with pytest.raises(RlhfkitError, match="'loss_type' must be one of dapo, grpo, dr_grpo, got 'bnpo'"):
        _hp("rloo", loss_type="bnpo")
    with pytest.raises(RlhfkitError, match="'importance_sampling_level' must be one of token, sequence, got 'seq'"):
        _hp("grpo", importance_sampling_level="seq")
    assert _hp("ppo", group_size=1).prompts_per_iteration == 6  # ppo ignores group_size
    assert _hp("rloo").prompts_per_iteration == 2


def test_cli_k1_is_a_one_line_error_exit_2(tmp_path):
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    result = CliRunner().invoke(app, ["ppo", "--run-dir", str(tmp_path / "run"), "--algorithm", "rloo", "--group-size", "1"])
    assert result.exit_code == 2 and "group_size" in result.output and "≥ 2" in result.output
    assert not (tmp_path / "run").exists()
