"""RLOO and GRPO: critic-free online RL on PPO's machinery (``rlhfkit ppo --algorithm rloo|grpo``).

Each prompt is sampled K = ``group_size`` times; a completion's advantage compares its reward with its
siblings', so no value head is trained. Everything else is PPO's: the rollout (rlhfkit's sampler, the
reward model or any scorer on decoded text, the missing-EOS penalty, reward normalisation), the LoRA policy
whose reference is the base with adapters off, the clipped ratio over ``ppo_epochs`` passes, the alarms,
the checkpoints and exact resume (train/ppo.py).

Where the KL to the reference enters:
  rloo  the REWARD, per sequence: R_i = score_i − β·Σ_t k1_t, then A_i = R_i − mean_{j≠i} R_j
        ([RLOO] Ahmadian et al. 2024 §3; TRL's RLOOTrainer does the same). The adaptive β works as in PPO.
  grpo  the LOSS: A_i = (score_i − mean) / std over the group, and β·k3 per token is added to the loss
        ([GRPO] Shao et al. 2024 eq. 3–4, TRL's GRPOTrainer), so the advantage is the reward signal alone.
        ``kl_bias_correction`` weights that term by the ratio π/π_old (the reverse KL's gradient, TRL's default).
        ``scale_rewards`` batch divides by the whole batch's std instead, none by nothing (Dr. GRPO), as TRL's.
With no value head to compute, the rollout's π_old is the sampler's own log-probs on float32 weights (the
behaviour policy's probabilities of the tokens it drew; ``ppo.experience``), so no forward pass over the
rollouts runs for the policy — only the reference's. Every token of completion i gets A_i (outcome
supervision). The policy loss (and grpo's KL term) is by default PPO's token-level masked mean over the minibatch
(``loss_type`` dapo, as DAPO and TRL's default); grpo takes the GRPO paper's per-completion mean, which weights short
completions' tokens more, and dr_grpo divides the token sum by a constant (``losses.sequence_weights``).
The ratio π/π_old is PPO's per token by default; ``importance_sampling_level`` sequence takes one per completion, the
mean of its token log-ratios, clipped once (GSPO; ``losses.log_ratios``).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from torch import Tensor

from rlhfkit.models.policy import PolicyWithValue
from rlhfkit.models.reward import RewardNorm, Scorer
from rlhfkit.train import dist
from rlhfkit.train import losses as L
from rlhfkit.train.ppo import MAX_STATS, StepResult, check_finite, collect_rollout, ppo_update, rollout_stats


def repeat_prompts(prompts: list[str], group_size: int) -> list[str]:
    """Each prompt ``group_size`` times in a row: rows g·K … g·K + K − 1 are prompt g's group (what losses._groups reads)."""
    return [p for p in prompts for _ in range(group_size)]


@torch.no_grad()
def group_advantages(algorithm: str, scores: Tensor, kl: Tensor, response_mask: Tensor, beta: float,
                     group_size: int, scale: str = "group") -> Tensor:
    """Per-token advantages (B, A): each completion's critic-free advantage on its generated tokens, 0 on padding.

    scores: (B,) normalised scores (or the missing-EOS penalty); kl: (B, A) per-token k1, 0 on padding.
    scale: grpo's divisor (``losses.group_normalized_advantages``); "batch" takes the std over every rank's scores.
    """
    if algorithm == "rloo":
        sequence_reward = scores - beta * kl.sum(dim=1)  # (B,) KL in the reward
        adv = L.rloo_advantages(sequence_reward, group_size)
    elif algorithm == "grpo":
        batch = dist.all_gather_rows(scores) if scale == "batch" else None  # the iteration's batch, every rank's
        adv = L.group_normalized_advantages(scores, group_size, scale=scale, batch=batch)  # KL goes into the loss instead
    else:
        raise ValueError(f"no critic-free advantage for algorithm {algorithm!r}")
    return adv[:, None] * response_mask.to(adv.dtype)  # (B, 1) * (B, A) → (B, A)


def flat_groups(scores: Tensor, group_size: int) -> float:
    """Share of groups whose K scores are all equal: they carry no signal (GRPO gives them advantage 0)."""
    g = scores.view(-1, group_size)  # (G, K)
    return (g == g[:, :1]).all(dim=1).float().mean().item()


def critic_free_step(model: PolicyWithValue, tokenizer, optimizer, kl_ctl, prompts: list[str], score_fn: Scorer,
                     gold_fn: Scorer | None, *, iteration: int, seed: int, hp, norm: RewardNorm | None,
                     wrapped=None) -> StepResult:
    """One RLOO or GRPO iteration over ``prompts`` (the iteration's distinct prompts), numbered as ``ppo_step``.

    Under torchrun ``prompts`` are this rank's share: whole groups, so the group baselines need no other rank.
    """
    t0 = time.perf_counter()
    torch.manual_seed(dist.rank_seed(seed, iteration))  # sampling depends on (seed, rank, iteration): exact resume
    K, beta, algorithm = hp.group_size, kl_ctl.value, hp.algorithm
    # 1–3. generate K per prompt, score; the per-token rewards carry −β·k1 for rloo only (grpo: the loss does)
    ro = collect_rollout(model, tokenizer, repeat_prompts(prompts, K), score_fn, sampling=hp.sampling,
                         beta=beta if algorithm == "rloo" else 0.0, gamma=1.0, lam=1.0,
                         missing_eos_penalty=hp.missing_eos_penalty if hp.penalize_missing_eos else None,
                         missing_eos_mode=hp.missing_eos_mode, iteration=iteration, norm=norm, critic=False)
    # 4. critic-free advantages replace GAE's; no returns: the value head is not trained
    advantages = group_advantages(algorithm, ro.scores, ro.kl, ro.response_mask, beta, K, hp.scale_rewards)
    check_finite(iteration, advantages=advantages)
    ro = dataclasses.replace(ro, advantages=advantages, returns=torch.zeros_like(ro.returns))
    t1 = time.perf_counter()
    # 5. epochs of clipped updates, without a value loss (grpo: with β·KL in the loss)
    generator = torch.Generator().manual_seed(seed * 7_919 + iteration)
    train = ppo_update(model, optimizer, ro, epochs=hp.ppo_epochs, minibatch_size=hp.minibatch_size // dist.world_size(),
                       clip_eps=hp.clip_eps, vf_clip=hp.vf_clip, vf_coef=0.0, ent_coef=hp.ent_coef,
                       temperature=hp.sampling.temperature, max_grad_norm=hp.max_grad_norm, generator=generator,
                       iteration=iteration, critic=False, kl_loss_coef=beta if algorithm == "grpo" else None,
                       wrapped=wrapped, group_size=K, clip_eps_high=hp.clip_eps_high or None,
                       loss_type=hp.loss_type, max_tokens=hp.sampling.max_new_tokens,
                       kl_bias_correction=hp.kl_bias_correction, ratio_level=hp.importance_sampling_level)
    t2 = time.perf_counter()
    # 6. log, and steer β towards the KL target
    stats = {"iteration": iteration, **rollout_stats(ro, beta), **train, "rollout/flat_groups": flat_groups(ro.scores, K)}
    del stats["value/explained_var"]  # no critic
    if gold_fn is not None:
        stats["gold/score"] = float(np.mean(gold_fn(ro.prompts, ro.texts)))
    B = len(ro.prompts) * dist.world_size()
    stats.update({"time/rollout_s": t1 - t0, "time/update_s": t2 - t1, "time/samples_per_s": B / (t2 - t0)})
    stats = dist.mean_stats(stats, maxima=MAX_STATS)  # the run's statistics, on every rank
    kl_ctl.update(stats["objective/kl_k1"], B)
    return StepResult(stats, ro)
