"""Every loss and RL formula of rlhfkit, as pure tensor functions (the one place for them).

Shapes: B batch, A response tokens, V vocabulary. A response ``mask`` is (B, A), 1/True on the
tokens the policy generated (up to and including EOS) and 0/False on the right padding after them.
Masks are binary; every reduction selects with ``torch.where`` so garbage (even inf/NaN) in padded
positions never leaks into a result.

References cited below:
  [lmhp]   OpenAI lm-human-preferences, lm_human_preferences/train_policy.py and utils/core.py (2019).
  [N-det]  Huang et al. 2024, "The N Implementation Details of RLHF with PPO".
  [PPO]    Schulman et al. 2017, "Proximal Policy Optimization Algorithms".
  [GAE]    Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation".
  [Zieg]   Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences".
  [KLblog] Schulman 2020, "Approximating KL Divergence" (k1, k2, k3).
  [DPO]    Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model".
  [IPO]    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences".
  [cDPO]   Mitchell 2023, "A note on DPO with noisy preferences and relationship to IPO" (label smoothing).
  [RLOO]   Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
           Human Feedback in LLMs" (Kool et al. 2019's leave-one-out baseline).
  [GRPO]   Shao et al. 2024, "DeepSeekMath" §4.1 (group-relative advantages, KL in the loss).
  [Hinton] Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network".

Gradient accumulation — how a trainer must scale for it to be exact
-------------------------------------------------------------------
A token-level loss is a masked mean over ALL tokens of the minibatch: sum_i l_i / N. Split the
minibatch into microbatches with n_k tokens each; the mean of each microbatch is sum_{i in k} l_i / n_k,
so summing (or averaging) per-microbatch means weights tokens of short microbatches more — not the
same gradient. Exact accumulation: pass ``normalizer=N`` (the token count of the whole minibatch,
``mask.sum()`` before splitting, summed over ranks under data parallelism) to every microbatch's loss
and call ``backward()`` on each; the accumulated gradient is then exactly the full-minibatch gradient.
Equivalently: microbatch mean × (n_k / N). ``bradley_terry_loss`` works the same way with N = the
total pair weight. Whitening of advantages must happen on the whole rollout batch before splitting
(``masked_whiten``), never per microbatch. The returned statistics (clipfrac, approx_kl, …) are
plain per-call means; average them over all minibatches when logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bradley_terry_loss",
    "preference_probability",
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "last_valid_index",
    "kl_penalized_rewards",
    "gae",
    "log_ratios",
    "clipped_policy_loss",
    "clipped_value_loss",
    "entropy_from_logits",
    "ppo_total_loss",
    "logprobs_from_logits",
    "explained_variance",
    "dpo_loss",
    "rloo_advantages",
    "group_normalized_advantages",
    "kl_loss",
    "distillation_loss",
]


# ---------------------------------------------------------------------------------------------
# Reward model: Bradley–Terry
# ---------------------------------------------------------------------------------------------


def bradley_terry_loss(
    r_chosen: Tensor,
    r_rejected: Tensor,
    weight: Tensor | None = None,
    margin: Tensor | float | None = None,
    normalizer: Tensor | float | None = None,
) -> Tensor:
    """Pairwise reward-model loss, mean over pairs of −log σ(r_chosen − r_rejected − margin).

    r_chosen, r_rejected: (B,) scalar rewards of the preferred and the other completion.
    weight: (B,) optional per-pair weights; the loss is then sum(w·l) / sum(w).
    margin: optional (B,) or scalar margin the chosen reward must clear.
    normalizer: optional divisor replacing sum(w) (or B) — the global pair weight, for exact
        gradient accumulation over microbatches (see module docstring).
    Returns a 0-d tensor.
    """
    # [Zieg] eq. 1 (a softmax over the candidates' rewards) with two candidates, as Stiennon et al. 2020.
    diff = r_chosen - r_rejected
    if margin is not None:
        # Touvron et al. 2023 (Llama 2) §3.2.2: a margin for pairs the labeler marked as clearly better.
        diff = diff - margin
    # logsigmoid, not log(sigmoid(.)): the latter underflows to log(0) = −inf for diff ≲ −100.
    per_pair = -F.logsigmoid(diff)  # (B,)
    if weight is None:
        total = per_pair.sum()
        denom = per_pair.numel() if normalizer is None else normalizer
    else:
        total = (weight * per_pair).sum()
        denom = weight.sum() if normalizer is None else normalizer
    return total / denom


def preference_probability(r_a: Tensor, r_b: Tensor) -> Tensor:
    """P(a preferred over b) under Bradley–Terry: softmax over two logits = σ(r_a − r_b); shapes broadcast."""
    # [Zieg] eq. 1: the rewards are the logits of a softmax over candidates; over two it is a sigmoid.
    return torch.sigmoid(r_a - r_b)


# ---------------------------------------------------------------------------------------------
# Masked reductions and whitening
# ---------------------------------------------------------------------------------------------


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of x over valid positions. x, mask: same shape (e.g. (B, A)); dim=None sums everything."""
    selected = torch.where(mask.bool(), x, torch.zeros_like(x))
    return selected.sum() if dim is None else selected.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of x over valid positions: masked_sum / mask count.

    x, mask: same shape (B, A). dim=None → 0-d tensor; dim=-1 → (B,) per-row means.
    An all-invalid mask (along dim) gives NaN — deliberately loud, so a trainer's NaN alarm catches it.
    """
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim=dim)
    return masked_sum(x, mask, dim) / count


def _masked_moments(x: Tensor, mask: Tensor, unbiased: bool, total=None,
                    name: str = "masked_var") -> tuple[Tensor, Tensor]:
    """(mean, variance) of x over valid positions, both 0-d; Bessel-corrected when unbiased.

    total: a function summing a tensor over ranks (train.dist.all_sum) so the moments are the global
    batch's; None = this process only.
    """
    total = total or (lambda t: t)
    count = total(mask.to(x.dtype).sum())
    need = 2 if unbiased else 1
    if count < need:
        raise ValueError(f"{name} needs at least {need} valid entries, got {int(count)}")
    mean = total(masked_sum(x, mask)) / count
    var = total(masked_sum((x - mean) ** 2, mask)) / (count - 1 if unbiased else count)
    return mean, var


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of x over all valid positions (0-d); Bessel-corrected when unbiased. x, mask: (B, A)."""
    return _masked_moments(x, mask, unbiased)[1]


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, total=None) -> Tensor:
    """(x − mean) / std over valid entries; invalid positions are set to 0. x, mask: (B, A) → (B, A).

    shift_mean=False adds the mean back (only the scale changes) — used for rewards.
    total: under data parallelism, a function summing a tensor over ranks (train.dist.all_sum), so the
    moments are those of the global batch, not of this rank's share; None = this process only.
    """
    # [lmhp] utils/core.py whiten(): rsqrt(var + 1e-8); [N-det] computes the moments over valid tokens only,
    # so padding does not drag the mean towards 0. Bessel-corrected variance, as masked_var.
    mean, var = _masked_moments(x, mask, True, total, name="masked_whiten")
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


# ---------------------------------------------------------------------------------------------
# KL estimators and the KL-shaped reward
# ---------------------------------------------------------------------------------------------
# Per token, with the token sampled from the policy π and r = π_ref/π = exp(ref_logp − logp):
#   k1 = −log r            unbiased for KL(π‖π_ref), high variance, can be negative per sample
#   k2 = ½ (log r)²        biased, low variance, ≥ 0
#   k3 = (r − 1) − log r   unbiased, low variance, ≥ 0
# [KLblog]. The reward uses k1 ([Zieg], [lmhp]); report k3 as objective/kl so a "negative KL"
# never confuses anyone.


def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = logp − ref_logp per token. logp, ref_logp: (B, A) → (B, A)."""
    return logp - ref_logp


def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = ½ (logp − ref_logp)² per token. (B, A) → (B, A)."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = exp(ref_logp − logp) − (ref_logp − logp) − 1 per token, ≥ 0. (B, A) → (B, A)."""
    log_r = ref_logp - logp
    # expm1 keeps precision when log_r ≈ 0 (the usual case early in training): e^x − 1 − x.
    return torch.expm1(log_r) - log_r


def last_valid_index(mask: Tensor) -> Tensor:
    """Index of the last generated token of each row of a right-padded mask. (B, A) → (B,) long.

    A row with no valid token gives −1.
    """
    return mask.long().sum(dim=-1) - 1


def _check_right_padded(mask: Tensor) -> None:
    m = mask.long()
    if (m[:, 1:] > m[:, :-1]).any():
        raise ValueError("response mask must be right-padded: valid tokens first, then padding only")


MISSING_EOS_MODES = ("replace", "subtract")


def missing_eos_scores(scores: Tensor, ended: Tensor, penalty: float, mode: str) -> Tensor:
    """Scores (B,) of completions that never ended (``ended`` False: cut at max_new_tokens), penalised.

    replace: their score becomes ``penalty`` (Stiennon et al. 2020; [N-det] detail 23) — the reward model's view
    of them is dropped. subtract: ``penalty`` is added to their score (penalty < 0; TRL's ``missing_eos_penalty``
    subtracts a positive one), so cut-off replies keep their order among themselves and PPO still learns
    what the reward model prefers from them while it learns to finish.
    """
    if mode not in MISSING_EOS_MODES:
        raise ValueError(f"missing_eos mode must be one of {MISSING_EOS_MODES}, got {mode!r}")
    cut = ~ended.to(torch.bool)
    penalised = torch.full_like(scores, penalty) if mode == "replace" else scores + penalty
    return torch.where(cut, penalised, scores)


@torch.no_grad()
def kl_penalized_rewards(
    score: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    beta: float,
    last_index: Tensor,
) -> tuple[Tensor, Tensor]:
    """Per-token PPO rewards: −β·k1 at every valid token, plus the score at the last generated token.

    score: (B,) reward-model score per completion (a trainer substitutes its fixed penalty here for
        completions that never ended — OpenAI's summarisation setup).
    logp, ref_logp: (B, A) log-probs of the sampled tokens under the policy and the reference.
    mask: (B, A) response mask, right-padded.
    beta: KL coefficient (the controller's .value).
    last_index: (B,) position of each row's last generated token, i.e. last_valid_index(mask).
    Returns (rewards (B, A), kl (B, A)) — kl is k1, zero at padding. Constants: no gradient.
    """
    # [Zieg] eq. 2 R = r − β·log(π/π_ref); [lmhp] compute_rewards: −β·k1, then rewards[:, -1] += score.
    # [N-det]: with variable-length responses "-1" must be the last *generated* token, not padding.
    valid = mask.bool()
    _check_right_padded(valid)
    if not torch.equal(last_index.long().cpu(), last_valid_index(valid).cpu()):
        raise ValueError(
            "last_index must be each row's last generated token (mask.sum(-1) − 1); the score "
            "must not land on padding or mid-response"
        )
    if (last_index < 0).any():
        raise ValueError("a response has no generated token: there is no position for its score")
    kl = torch.where(valid, kl_k1(logp, ref_logp), torch.zeros_like(logp))  # (B, A)
    rewards = -beta * kl  # (B, A)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards[rows, last_index.long()] += score.to(rewards.dtype)
    return rewards, kl


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates over response tokens.

    rewards, values, mask: (B, A); mask right-padded. Reverse scan
        δ_t = r_t + γ V_{t+1} − V_t,  Â_t = δ_t + γλ Â_{t+1},
    with V and Â taken as 0 after each row's last valid token (the episode ends there).
    Returns (advantages, returns), each (B, A), 0 at padding; returns = advantages + values.
    Constants: computed without gradient. Whiten the advantages afterwards with masked_whiten.
    """
    # [GAE] eq. 16; loop as in [lmhp] PPOTrainer.loss, with [N-det]'s masking of variable lengths.
    valid = mask.bool()
    _check_right_padded(valid)
    zero = torch.zeros_like(values)
    rewards = torch.where(valid, rewards, zero)
    values = torch.where(valid, values, zero)  # so V_{t+1} = 0 past the end: the bootstrap is 0
    n_tokens = rewards.shape[-1]
    advantages = torch.zeros_like(values)
    last_gae = torch.zeros_like(values[:, 0])  # (B,)
    for t in reversed(range(n_tokens)):
        next_values = values[:, t + 1] if t + 1 < n_tokens else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        advantages[:, t] = last_gae
    # Padded positions have δ = 0 and Â = 0 already (right padding); the where only guards NaN inputs.
    advantages = torch.where(valid, advantages, zero)
    returns = torch.where(valid, advantages + values, zero)
    return advantages, returns


# ---------------------------------------------------------------------------------------------
# PPO losses
# ---------------------------------------------------------------------------------------------


def _reduce(per_token: Tensor, mask: Tensor, normalizer: Tensor | float | None, weight: Tensor | None = None) -> Tensor:
    if weight is not None:  # (B, 1) or (B, A): each token's share (``sequence_weights``)
        per_token = per_token * weight
    if normalizer is None:
        return masked_mean(per_token, mask)
    return masked_sum(per_token, mask) / normalizer


RATIO_LEVELS = ("token", "sequence")
"""Where a critic-free update takes its probability ratio (``log_ratios``): per token, or once per completion."""


def log_ratios(logp: Tensor, old_logp: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """log π/π_old on the valid tokens, 0 elsewhere. (B, A) → (B, A), with gradient through ``logp``.

    level "token": each token's own (PPO). "sequence": every token of a completion gets the mean of its tokens'
    log-ratios, so the completion is clipped as one (GSPO, Zheng et al. 2025 eq. 7: the length-normalised
    sequence likelihood ratio; TRL's importance_sampling_level), and the gradient of that mean reaches every token.
    """
    if level not in RATIO_LEVELS:
        raise ValueError(f"level must be one of {', '.join(RATIO_LEVELS)}, got {level!r}")
    valid = mask.bool()
    # Mask the log-ratio before exp: garbage log-probs at padding would overflow exp to inf and turn
    # the gradient into NaN (0·inf) even though those positions are later ignored.
    log_ratio = torch.where(valid, logp - old_logp, torch.zeros_like(logp))  # (B, A)
    if level == "sequence":
        mean = log_ratio.sum(dim=-1, keepdim=True) / valid.sum(dim=-1, keepdim=True).clamp(min=1)  # (B, 1)
        log_ratio = torch.where(valid, mean.expand_as(log_ratio), torch.zeros_like(log_ratio))
    return log_ratio


def clipped_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    normalizer: Tensor | float | None = None,
    clip_eps_high: float | None = None,
    weight: Tensor | None = None,
    level: str = "token",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate, as a loss to minimise: −mean_t min(ρ_t Â_t, clip(ρ_t, 1−ε, 1+ε_high) Â_t).

    logp: (B, A) log-probs under the current policy (with gradient).
    old_logp: (B, A) log-probs recorded at rollout time; advantages: (B, A), whitened.
    mask: (B, A). normalizer: see module docstring (exact gradient accumulation).
    clip_eps_high: ε_high, the upper clip (DAPO's clip-higher: a wider upper bound lets unlikely tokens with a
    positive advantage rise further in one update); None: ε (PPO's symmetric clip).
    weight: (B, 1) or (B, A) factors on the tokens' losses before the sum (``sequence_weights``); None: 1.
    level: the ratio per token or per completion (``log_ratios``).
    Returns (loss 0-d, stats) with detached 0-d stats:
      clipfrac   fraction of valid tokens where the clipped term is the active one,
      approx_kl  k3 estimate of KL(π_old ‖ π) = mean((ρ − 1) − log ρ) ≥ 0 (tokens come from π_old;
                 [lmhp] logs ½·mean((Δlogp)²) = k2 instead — both vanish at ρ = 1),
      ratio_mean, ratio_max  over valid tokens (alarm material: ρ far from 1).
    """
    valid = mask.bool()
    ratio = torch.exp(log_ratios(logp, old_logp, mask, level))  # (B, A)
    # [PPO] eq. 7, written as in [lmhp]: losses are negated objectives, so max of losses = min of objectives.
    pg_losses = -advantages * ratio
    high = clip_eps if clip_eps_high is None else clip_eps_high
    pg_losses_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + high)
    loss = _reduce(torch.maximum(pg_losses, pg_losses_clipped), valid, normalizer, weight)
    with torch.no_grad():
        stats = {
            # [lmhp]: clipfrac counts tokens where the clipped loss is strictly larger (gradient cut off).
            "clipfrac": masked_mean((pg_losses_clipped > pg_losses).to(logp.dtype), valid),
            "approx_kl": masked_mean(kl_k3(old_logp, logp), valid),
            "ratio_mean": masked_mean(ratio, valid),
            "ratio_max": torch.where(valid, ratio, torch.zeros_like(ratio)).max(),
        }
    return loss, {k: v.detach() for k, v in stats.items()}


def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range: float,
    normalizer: Tensor | float | None = None,
) -> tuple[Tensor, Tensor]:
    """½ · mean_t max((V − R)², (clip(V, V_old − c, V_old + c) − R)²).

    values: (B, A) current value predictions (with gradient); old_values: (B, A) from the rollout;
    returns: (B, A) GAE returns; mask: (B, A). normalizer: see module docstring.
    Returns (loss 0-d, clipfrac 0-d detached: fraction of valid tokens where the clipped error is larger).
    """
    # [lmhp] PPOTrainer.loss (vf_losses1/2, cliprange_value); [N-det] lists value clipping as a detail.
    values_clipped = torch.clamp(values, old_values - clip_range, old_values + clip_range)
    losses = (values - returns) ** 2
    losses_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * _reduce(torch.maximum(losses, losses_clipped), mask, normalizer)
    clipfrac = masked_mean((losses_clipped > losses).to(values.dtype), mask).detach()
    return loss, clipfrac


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    """logits / temperature in float32; no division (a pass over the logits, and one more in the backward) at 1."""
    return logits.float() if temperature == 1 else logits.float() / temperature


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of softmax(logits / temperature) per position. (B, A, V) → (B, A).

    Computed as Σ −p·ln p (``torch.special.entr``, 0 where p = 0) over the softmax, which subtracts the max first, so
    large logits lose no precision; −inf logits (banned tokens) contribute 0, and nothing to the gradient. Three
    tensor passes without a gradient where −Σ p·log p from log_softmax with a guard against 0·(−inf) takes eight:
    4.7 vs 12.5 ms at (512, 2000) on a CPU core.
    """
    # [lmhp] utils/core.py entropy_from_logits (logsumexp(z) − Σ p·z, the same quantity; that form cancels
    # catastrophically in float32 for logits ~1e4), applied in policy.py after dividing by the temperature.
    p = torch.softmax(_scaled(logits, temperature), dim=-1)
    if p.requires_grad:  # entr'(0) = ∞, and the softmax's backward would multiply it by p = 0: NaN
        p = p.clamp(min=torch.finfo(p.dtype).tiny)
    return torch.special.entr(p).sum(dim=-1)


def ppo_total_loss(
    policy_loss: Tensor, value_loss: Tensor | None, entropy_mean: Tensor, vf_coef: float, ent_coef: float,
    kl: Tensor | None = None, kl_coef: float = 0.0,
) -> Tensor:
    """policy_loss + vf_coef·value_loss − ent_coef·entropy_mean + kl_coef·kl (all 0-d).

    value_loss None: no critic (RLOO, GRPO). kl: the KL-to-reference loss term (``kl_loss``), GRPO only.
    """
    # [PPO] eq. 9 L = L_CLIP − c1·L_VF + c2·S[π], to maximise; written here as a quantity to minimise:
    # maximise the clipped objective, minimise the value error, encourage entropy. [GRPO] eq. 3 adds −β·D_KL.
    loss = policy_loss - ent_coef * entropy_mean
    if value_loss is not None:
        loss = loss + vf_coef * value_loss
    if kl is not None:
        loss = loss + kl_coef * kl
    return loss


def logprobs_from_logits(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature) at the given tokens. logits (B, A, V), tokens (B, A) → (B, A).

    logits[:, t] must be the logits that *predicted* tokens[:, t] (the caller shifts by one).
    """
    # [N-det], [lmhp] policy.py: divide by the sampling temperature here too, or step-0 log-probs differ
    # from the rollout's and ρ ≠ 1 before any update. float32: bf16 log-softmax is too coarse for ratios.
    z = _scaled(logits, temperature)
    picked = z.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)  # (B, A)
    # gather − logsumexp equals gathering log_softmax without a second (B, A, V) tensor.
    return picked - torch.logsumexp(z, dim=-1)


def selected_logprobs(logits: Tensor, tokens: Tensor, select: Tensor) -> Tensor:
    """``logprobs_from_logits`` for logits computed at selected positions only, put back in place.

    logits (N, V): at the N True positions of ``select`` (B, A), row by row (PolicyWithValue's ``select``);
    tokens (B, A). Returns (B, A) log-probs, 0 where ``select`` is False; differentiable in ``logits``.
    """
    select = select.bool()
    picked = logprobs_from_logits(logits, tokens[select])  # (N,)
    return picked.new_zeros(select.shape).masked_scatter(select, picked)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 − Var(R − V) / Var(R) over valid tokens (0-d): 1 perfect, 0 no better than a constant.

    values, returns, mask: (B, A). NaN when Var(R) = 0.
    """
    # [lmhp] ppo/val/var_explained; cleanrl logs the same as value/explained_var.
    var_returns = masked_var(returns, mask, unbiased=False)
    var_error = masked_var(returns - values, mask, unbiased=False)
    return 1.0 - var_error / var_returns


# ---------------------------------------------------------------------------------------------
# Critic-free advantages (RLOO, GRPO) and the KL term in the loss
# ---------------------------------------------------------------------------------------------


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    """(B,) → (B/K, K): rows of a rollout batch laid out prompt by prompt, K samples each."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be (B,), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be ≥ 2 (a sample needs others to compare with), got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)  # (G, K); row g holds the K samples of prompt g


@torch.no_grad()
def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out: each sample's reward minus the mean reward of the OTHER K−1 samples of its prompt.

    rewards: (B,) one scalar per completion, consecutive groups of ``group_size`` K share a prompt.
    Returns (B,) advantages. Constants: no gradient.
    """
    # [RLOO] eq. 7: A_i = R_i − 1/(K−1) Σ_{j≠i} R_j; the baseline excludes the sample, so it stays unbiased.
    g = _groups(rewards, group_size)  # (G, K)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)  # (G, K)
    return (g - baseline).reshape(-1)


GRPO_SCALES = ("group", "batch", "none")
"""What GRPO divides a centred reward by (``group_normalized_advantages``): its group's std, the batch's, or nothing."""


@torch.no_grad()
def group_normalized_advantages(rewards: Tensor, group_size: int, eps: float = 1e-4, scale: str = "group",
                                batch: Tensor | None = None) -> Tensor:
    """GRPO: (R_i − mean of its group) / (std + eps). rewards (B,) → (B,), no gradient.

    scale: whose std — "group" (its group's: GRPO, TRL's default), "batch" (the std of ``batch``: every reward of the
    iteration, every rank's; None = ``rewards``) or "none" (no division: Dr. GRPO, Liu et al. 2025, whose §3 shows
    the group std weights prompts by how (un)evenly the policy already does on them). The std is the unbiased one
    (K−1 denominator), as TRL's GRPOTrainer; a group whose rewards are all equal gets advantage 0 in every mode
    (0 / (std + eps)), never NaN: it carries no signal.
    """
    # [GRPO] §4.1.2 outcome supervision: Â_i = (r_i − mean(r)) / std(r) for every token of completion i.
    if scale not in GRPO_SCALES:
        raise ValueError(f"scale must be one of {', '.join(GRPO_SCALES)}, got {scale!r}")
    g = _groups(rewards, group_size)  # (G, K)
    centred = g - g.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (g.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / ((rewards if batch is None else batch).std() + eps)
    return centred.reshape(-1)


def kl_loss(logp: Tensor, ref_logp: Tensor, mask: Tensor, normalizer: Tensor | float | None = None,
            weight: Tensor | None = None, old_logp: Tensor | None = None, level: str = "token") -> Tensor:
    """KL(π ‖ π_ref) as a loss term: masked mean of k3 over response tokens, with gradient through ``logp``.

    logp: (B, A) current policy (with gradient); ref_logp: (B, A) reference; mask: (B, A). 0-d.
    normalizer, weight: as in ``clipped_policy_loss``.
    k3's gradient in logp is 1 − π_ref/π: 0 where the policy equals the reference, pulling it back elsewhere. Over
    tokens drawn from π that is the gradient of KL(π_ref ‖ π), the forward KL ([GRPO] eq. 4 as written).
    old_logp: (B, A) the behaviour policy's log-probs; given, each token's k3 is weighted by the ratio π/π_old (with
    its gradient), which makes the gradient (log π − log π_ref)·∇log π at ratio 1: the reverse KL(π ‖ π_ref)'s own
    (DeepSeek-V3.2 §2; TRL's use_bias_correction_kl, its GRPOTrainer's default). level: that ratio per token or per
    completion (``log_ratios``; per completion the reverse-KL property holds only approximately, as in TRL).
    """
    # [GRPO] eq. 4: the KL enters the loss (not the reward) with the unbiased, non-negative k3 ([KLblog]).
    valid = mask.bool()
    per_token = torch.where(valid, kl_k3(logp, torch.where(valid, ref_logp, logp)), torch.zeros_like(logp))
    if old_logp is not None:
        per_token = per_token * torch.exp(log_ratios(logp, old_logp, mask, level))
    return _reduce(per_token, valid, normalizer, weight)


LOSS_TYPES = ("dapo", "grpo", "dr_grpo")
"""How a critic-free update averages its tokens' losses (``sequence_weights``), under TRL's names."""


def sequence_weights(loss_type: str, mask: Tensor, max_tokens: int) -> tuple[Tensor | None, Tensor]:
    """(weight, count) for a minibatch's token losses: the loss is Σ weight·l over its tokens / the global ``count``.

    mask: (B, A) the real response tokens. ``count`` is this share's own (a 0-d float tensor), to be summed over
    ranks (``dist.global_count``) like the token count of exact accumulation (module docstring).
      dapo     every token the same: Σ l / tokens (DAPO, Yu et al. 2025; TRL's default) — weight None
      grpo     each completion's mean, then the mean over completions: Σ_i (Σ_t l_it / n_i) / B ([GRPO] eq. 3),
               which gives a short completion's tokens more weight — weight (B, 1) = 1 / n_i
      dr_grpo  Σ l / (B · max_tokens), a constant (Dr. GRPO, Liu et al. 2025 §3.1): no length bias either way
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    rows = torch.tensor(float(mask.shape[0]))
    if loss_type == "dapo":
        return None, mask.sum().float()
    if loss_type == "grpo":
        return 1.0 / mask.sum(dim=1, keepdim=True).clamp(min=1).float(), rows  # an empty row adds 0 either way
    if max_tokens < 1:
        raise ValueError(f"dr_grpo divides by the token limit: max_tokens must be ≥ 1, got {max_tokens}")
    return None, rows * max_tokens


# ---------------------------------------------------------------------------------------------
# Direct preference optimisation
# ---------------------------------------------------------------------------------------------

DPO_LOSS_TYPES = ("sigmoid", "ipo")


def dpo_loss(
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
    normalizer: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """DPO on per-sequence log-probs, as a loss to minimise.

    *_logps: (B,) log π(y | x) of each pair's chosen / rejected reply under the policy (with gradient) and the
    frozen reference (constants). With h = (log π_c − log π_ref,c) − (log π_r − log π_ref,r):
      sigmoid  −(1−ε)·log σ(β·h) − ε·log σ(−β·h)   ([DPO] eq. 7; ε = label_smoothing: [cDPO], a share ε of
               the labels assumed flipped);
      ipo      (h − 1/(2β))²                          ([IPO] eq. 17; pass length-averaged log-probs, as TRL).
    weight: (B,) optional per-pair weights (labeler quality): loss = Σ w·l / Σ w. normalizer: replaces Σ w
    (or B) for exact gradient accumulation (see module docstring).
    Returns (loss 0-d, stats) with detached (B,) stats under TRL's names: chosen and rejected implicit rewards
    β·(log π − log π_ref), their margins, and accuracies (1 where the chosen reward is higher).
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {DPO_LOSS_TYPES}, got {loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if loss_type == "ipo" and label_smoothing:
        raise ValueError("label_smoothing applies to the sigmoid loss only")
    chosen_ratio = chosen_logps - ref_chosen_logps  # (B,)
    rejected_ratio = rejected_logps - ref_rejected_logps  # (B,)
    h = chosen_ratio - rejected_ratio  # (B,)
    if loss_type == "sigmoid":
        # logsigmoid, not log(sigmoid(.)): stays finite for large |β·h| (as bradley_terry_loss)
        per_pair = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    else:
        per_pair = (h - 1 / (2 * beta)) ** 2
    if weight is None:
        total, denom = per_pair.sum(), per_pair.numel()
    else:
        total, denom = (weight * per_pair).sum(), weight.sum()
    loss = total / (denom if normalizer is None else normalizer)
    with torch.no_grad():
        chosen_rewards, rejected_rewards = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
        stats = {
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/margins": chosen_rewards - rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
        }
    return loss, stats


# ---------------------------------------------------------------------------------------------
# Distillation (deployment: a smaller student learns the aligned policy's distribution)
# ---------------------------------------------------------------------------------------------


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tokens: Tensor,
    mask: Tensor,
    temperature: float,
    alpha: float,
    normalizer: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per token T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + α·CE(softmax(z_s), token), masked mean.

    student_logits, teacher_logits: (B, A, V) logits predicting each response token (shifted, as in
        ``logprobs_from_logits``); the teacher's carry no gradient.
    tokens: (B, A) the hard labels (the tokens of the teacher's own samples); mask: (B, A).
    temperature: T ≥ 1 softens both distributions (soft labels); the hard-label term is at T = 1.
    normalizer: see module docstring (exact gradient accumulation).
    Returns (loss 0-d, stats) with detached 0-d stats: kl (the soft term before T²), ce (the hard term).
    """
    # [Hinton] §2: the soft term's gradient scales as 1/T², so it is multiplied by T² to keep its weight
    # against the hard-label term when T changes; the hard term uses the student at T = 1.
    log_p_teacher = torch.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)  # (B, A, V)
    log_p_student = torch.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, A, V)
    p_teacher = log_p_teacher.exp()
    # Σ_v p_t (log p_t − log p_s); a token the teacher gives probability 0 contributes 0, never 0·(−inf).
    terms = torch.where(p_teacher > 0, p_teacher * (log_p_teacher - log_p_student), torch.zeros_like(p_teacher))
    kl = terms.sum(-1)  # (B, A)
    ce = -logprobs_from_logits(student_logits, tokens)  # (B, A), at T = 1
    per_token = temperature**2 * kl + alpha * ce
    valid = mask.bool()
    loss = _reduce(torch.where(valid, per_token, torch.zeros_like(per_token)), valid, normalizer)
    with torch.no_grad():
        stats = {"kl": masked_mean(kl, valid), "ce": masked_mean(ce, valid)}
    return loss, {k: v.detach() for k, v in stats.items()}
