"""PPO with a per-token KL penalty against a frozen reference, on a LoRA policy.

One iteration (``ppo_step``) follows the seeds step by step:
  1 generate, 2 score, 3 KL-shaped reward, 4 advantages (GAE), 5 epochs of clipped updates, 6 log.
Every formula lives in ``train/losses.py``; this module orchestrates.

References: [lmhp] OpenAI lm-human-preferences; [N-det] Huang et al. 2024, "The N Implementation
Details of RLHF with PPO"; [Zieg] Ziegler et al. 2019; [Stien] Stiennon et al. 2020 (summarisation).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.generate import Sampled, assemble, decode_responses, eos_ids, sample
from rlhfkit.models.load import format_prompt
from rlhfkit.models.policy import NO_SHARING, PolicyWithValue, sampler_is_policy
from rlhfkit.models.reward import RewardNorm, Scorer
from rlhfkit.models.unwrap import inner, plain_layers
from rlhfkit.rewards import load_scorer
from rlhfkit.train import dist
from rlhfkit.train import losses as L
from rlhfkit.train.kl_control import AdaptiveKLController, FixedKLController



class PPOAlarm(RlhfkitError):
    """Training stopped on a sign that something broke (NaN, KL blow-up, ratio far from 1, lengths at the limit)."""


# --------------------------------------------------------------------------------------------------
# One batch of experience
# --------------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """Experience of one iteration. B = rollouts, T = P + A tokens, A = response tokens."""

    input_ids: Tensor  # (B, T) prompt left-padded, then response right-padded
    attention_mask: Tensor  # (B, T) 1 on prompt tokens and response tokens up to and incl. EOS
    response_mask: Tensor  # (B, A) 1 on generated tokens up to and incl. EOS
    logprobs: Tensor  # (B, A) log π_old(a_t | s_t) at the sampling temperature
    ref_logprobs: Tensor  # (B, A) log π_ref(a_t | s_t)
    values: Tensor  # (B, A) V_old(s_t)
    scores: Tensor  # (B,) normalised reward, or the missing-EOS penalty
    raw_scores: Tensor  # (B,) reward before normalisation and penalty
    ended: Tensor  # (B,) bool: the completion emitted EOS
    rewards: Tensor  # (B, A) KL-shaped per-token rewards
    kl: Tensor  # (B, A) per-token k1
    advantages: Tensor  # (B, A) whitened
    returns: Tensor  # (B, A)
    prompts: list[str]
    texts: list[str]
    norm: RewardNorm
    prefix: Tensor | None = None  # (B, T, H) output of the frozen lower blocks (PolicyWithValue.frozen_prefix)
    sampler_logprobs: Tensor | None = None  # (B, A) what the sampler reported for the tokens it drew (0 off the mask)
    recomputed: bool = True  # logprobs and values from a forward pass (False: the sampler's, see ``experience``)

    @property
    def n_response(self) -> int:
        return self.response_mask.shape[1]


def sampler_gap(ro: Rollout) -> float:
    """Largest |log-prob the sampler reported − log-prob PPO computed| over the sampled tokens."""
    if ro.sampler_logprobs is None:
        return 0.0
    return ((ro.sampler_logprobs - ro.logprobs).abs() * ro.response_mask).max().item()


def check_finite(iteration: int, **tensors: Tensor) -> None:
    """Stop with the iteration and the quantity's name when a NaN or inf appears."""
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise PPOAlarm(f"iteration {iteration}: non-finite {name} (NaN or inf); the last good checkpoint is kept")


@torch.no_grad()
def collect_rollout(model: PolicyWithValue, tokenizer, prompts: list[str], score_fn: Scorer, *, sampling,
                    beta: float, gamma: float, lam: float, missing_eos_penalty: float | None, iteration: int,
                    norm: RewardNorm | None = None, missing_eos_mode: str = "replace", critic: bool = True) -> Rollout:
    """Phase 1: generate, score, compute log-probs, values, KL-shaped rewards and advantages.

    ``sampling``: a SamplingConfig (temperature > 0, no truncation). ``norm``: the reward normalisation;
    None fits it on these rollouts (iteration 0, when the policy is the reference). ``missing_eos_penalty``
    (None: off) and ``missing_eos_mode``: see ``losses.missing_eos_scores``.
    Under torchrun ``prompts`` are this rank's share; the reward normalisation and the whitening use the
    statistics of every rank's rollouts (train/dist.py), so they match one process on the global batch.
    On float32 weights π_old is the sampler's own log-probs and the values are read from the states the sampler's
    LM head saw (``critic`` False, RLOO and GRPO: no values), so the policy's forward pass is skipped
    (``experience``); with LoRA on the top blocks only, the frozen blocks' output is the sampler's too.
    """
    model.eval()  # dropout off in rollouts and in the log-prob passes alike ([N-det])
    # 1. generate: left-padded prompts through the chat template, sampled at T with the KV cache
    formatted = [format_prompt(tokenizer, p, sampling.system_prompt) for p in prompts]
    # FSDP: weights gathered once, so ranks that stop early cannot hang the others; LoRA folded into the
    # weights while sampling (models/unwrap.py: peft's per-layer overhead is much of a small model's decode step)
    own = sampler_is_policy(model)
    with dist.gathered(model), plain_layers(model.lm):
        s = sample(inner(model.lm), tokenizer, formatted, max_new_tokens=sampling.max_new_tokens,
                   temperature=sampling.temperature, hidden_states=critic and own,
                   keep_block=model.prefix.last_block if own else None)
    return experience(model, tokenizer, prompts, s, score_fn, temperature=sampling.temperature, beta=beta, gamma=gamma,
                      lam=lam, missing_eos_penalty=missing_eos_penalty, iteration=iteration, norm=norm,
                      missing_eos_mode=missing_eos_mode, critic=critic)


@torch.no_grad()
def experience(model: PolicyWithValue, tokenizer, prompts: list[str], s: Sampled, score_fn: Scorer, *,
               temperature: float, beta: float, gamma: float, lam: float, missing_eos_penalty: float | None,
               iteration: int, norm: RewardNorm | None = None, missing_eos_mode: str = "replace",
               critic: bool = True) -> Rollout:
    """Steps 2–4 of ``collect_rollout`` on the completions ``s`` sampled for ``prompts`` at ``temperature``.

    On float32 weights (``sampler_is_policy``) the policy's forward pass over the rollouts is not run: log π_old
    is what the sampler reported for the tokens it drew — the behaviour policy's own probabilities (TRL's GRPO
    does the same with one update per batch) — and V_old is the value head on the states the sampler's LM head
    read (``Sampled.hidden``; 0 when ``critic`` is False). Both equal the forward pass's within float32 rounding
    (tests/test_unwrap.py). Otherwise, and in bfloat16 (cached and full passes differ by ~1e-2), it runs.
    """
    T = temperature
    lengths, response_mask, input_ids, attention_mask = assemble(s, eos_ids(tokenizer, model.lm))
    A = s.response_ids.shape[1]

    # 2. score decoded text: the reward model has its own tokenizer, never the policy's ids ([N-det])
    texts = decode_responses(tokenizer, s.response_ids, lengths)
    raw = torch.tensor(score_fn(prompts, texts), dtype=torch.float32)
    check_finite(iteration, scores=raw)  # before normalisation or the penalty can hide a broken scorer
    norm = norm or RewardNorm.fit(dist.all_gather_rows(raw))  # every rank's scores: one normalisation
    scores = norm(raw)
    # Completions that never end are penalised: a fixed score instead of theirs ([Stien], [N-det] detail 23),
    # or their score lowered by the penalty (TRL's missing_eos_penalty).
    if missing_eos_penalty is not None:
        scores = L.missing_eos_scores(scores, s.ended.cpu(), missing_eos_penalty, missing_eos_mode)

    # log-probs of the sampled tokens at the sampling temperature, under the policy and the reference;
    # the frozen lower blocks (LoRA on the top blocks only) run once for both and for the update epochs
    # (B, T, H) or None; on float32 weights the sampler's own, kept as it ran those blocks (``sample_ids``)
    prefix = s.block_states if s.block_states is not None else model.frozen_prefix(input_ids, attention_mask)
    sharing = model.sharing(input_ids, attention_mask, A)  # the system turn, and a group's prompt: once, not per row
    recomputed = not (sampler_is_policy(model) and (not critic or s.hidden is not None))
    if not recomputed:
        logprobs = s.logprobs.to(input_ids.device) * response_mask  # (B, A); 0 off the mask
        values = (model.value_head(s.hidden.float()).squeeze(-1) * response_mask if critic  # (B, A, H) → (B, A)
                  else torch.zeros_like(logprobs))
    else:
        logits, values = model(input_ids, attention_mask, A, T, prefix=prefix, sharing=sharing)
        logprobs = L.logprobs_from_logits(logits, s.response_ids)  # (B, A); logits already divided by T
        del logits
    real = response_mask.bool()  # the LM head at the real response tokens only (not the padding after EOS)
    ref_logprobs = L.selected_logprobs(model.reference_logits(input_ids, attention_mask, A, T, prefix=prefix,
                                                              sharing=sharing, select=real), s.response_ids, real)
    scores = scores.to(values.device)
    check_finite(iteration, scores=scores, values=values, logprobs=logprobs, ref_logprobs=ref_logprobs)

    # 3. KL-shaped reward: −β·k1 per token, the score at the last generated token
    rewards, kl = L.kl_penalized_rewards(scores, logprobs, ref_logprobs, response_mask, beta, L.last_valid_index(response_mask))
    # 4. advantages: GAE over response tokens, whitened over the batch ([N-det]: whiten advantages always)
    advantages, returns = L.gae(rewards, values, response_mask, gamma, lam)
    advantages = L.masked_whiten(advantages, response_mask, total=dist.all_sum)  # global moments
    return Rollout(input_ids, attention_mask, response_mask, logprobs, ref_logprobs, values, scores, raw.to(values.device),
                   s.ended, rewards, kl, advantages, returns, list(prompts), texts, norm, prefix,
                   s.logprobs.to(logprobs.device), recomputed)


def shuffled_rows(B: int, group_size: int, minibatch_size: int, generator: torch.Generator) -> torch.Tensor:
    """(B,) an epoch's row order. Rows g·K … g·K + K − 1 (one prompt's K samples) stay together and in order
    where the minibatch holds whole groups (K divides B and the minibatch size), so every minibatch is whole
    groups; otherwise, or with K = 1, a plain permutation of the rows (``torch.randperm(B)``)."""
    K = group_size if group_size > 1 and B % group_size == 0 and minibatch_size % group_size == 0 else 1
    return (torch.randperm(B // K, generator=generator)[:, None] * K + torch.arange(K)).flatten()


def ppo_update(model: PolicyWithValue, optimizer, ro: Rollout, *, epochs: int, minibatch_size: int, clip_eps: float,
               vf_clip: float, vf_coef: float, ent_coef: float, temperature: float, max_grad_norm: float,
               generator: torch.Generator, iteration: int, critic: bool = True,
               kl_loss_coef: float | None = None, wrapped: torch.nn.Module | None = None,
               group_size: int = 1, clip_eps_high: float | None = None, loss_type: str = "dapo",
               max_tokens: int = 0, kl_bias_correction: bool = False, ratio_level: str = "token") -> dict[str, float]:
    """Phase 2: `epochs` passes of clipped updates over shuffled minibatches. Returns stats averaged over all minibatches.

    clip_eps_high: the ratio's upper clip 1 + clip_eps_high (None: 1 + clip_eps).
    loss_type: how the policy and KL losses average a minibatch's tokens (``losses.sequence_weights``; dr_grpo
    divides by ``max_tokens`` per completion); the value loss and the entropy stay token means.
    critic False: no value loss (RLOO, GRPO). kl_loss_coef: β of a KL-to-reference term in the loss (GRPO), None: none;
    kl_bias_correction: that term's tokens weighted by the ratio π/π_old (``losses.kl_loss``).
    ratio_level: the ratio per token or per completion (GSPO), in the clipped loss and that weight (``losses.log_ratios``).
    wrapped: the DDP / FSDP module to run the training forward through (train/dist.py); None: ``model``.
    group_size: K > 1 when rows g·K … g·K + K − 1 are one prompt's samples (RLOO, GRPO): the shuffle then moves
    whole groups (where the minibatch holds whole groups), so each group's prompt runs once (``Sharing``).
    Under torchrun ``minibatch_size`` is this rank's share of the global minibatch.
    """
    B, A = ro.response_mask.shape
    sums: dict[str, float] = {}
    n = 0
    params = [p for p in model.parameters() if p.requires_grad]
    forward = wrapped if wrapped is not None else model
    for _ in range(epochs):
        order = shuffled_rows(B, group_size, minibatch_size, generator)
        for lo in range(0, B, minibatch_size):
            idx = order[lo : lo + minibatch_size].to(ro.input_ids.device)
            # the prompt tokens rows share run once per minibatch (one process: DDP / FSDP take one forward)
            sharing = model.sharing(ro.input_ids[idx], ro.attention_mask[idx], A) if wrapped is None else NO_SHARING
            mask = ro.response_mask[idx]  # (b, A)
            prefix = None if ro.prefix is None else ro.prefix[idx]
            real = mask.bool()  # logits at the real response tokens only: (N, V)
            logits, values = forward(ro.input_ids[idx], ro.attention_mask[idx], A, temperature, prefix=prefix,
                                     select=real, sharing=sharing)
            logp = L.selected_logprobs(logits, ro.input_ids[idx, -A:], real)  # (b, A), 0 off the mask
            # Token means over the GLOBAL minibatch: each rank divides its token sum by (all ranks' tokens / N),
            # and DDP / FSDP average the gradients over the N ranks, so the gradient is one process's on the
            # whole minibatch (losses.py: exact gradient accumulation). One process: the plain masked mean.
            tokens = dist.global_count(mask.sum())
            weight, count = L.sequence_weights(loss_type, mask, max_tokens)
            norm = tokens if loss_type == "dapo" else dist.global_count(count)
            pg_loss, pg = L.clipped_policy_loss(logp, ro.logprobs[idx], ro.advantages[idx], mask, clip_eps, norm,
                                                clip_eps_high=clip_eps_high, weight=weight, level=ratio_level)
            vf_loss, vf_clipfrac = (L.clipped_value_loss(values, ro.values[idx], ro.returns[idx], mask, vf_clip, tokens)
                                    if critic else (None, None))
            kl_term = None if kl_loss_coef is None else L.kl_loss(
                logp, ro.ref_logprobs[idx], mask, norm, weight, old_logp=ro.logprobs[idx] if kl_bias_correction else None,
                level=ratio_level)
            # Without an entropy bonus the entropy is only logged: no graph through (b, A, V) tensors.
            with torch.set_grad_enabled(ent_coef != 0):
                entropy = L.entropy_from_logits(logits).sum() / tokens  # (N,): the real tokens
            # L_PPO = L_POLICY + c1·L_VF + c2·L_ENT, signed to minimise: maximise the clipped objective,
            # minimise the value error, encourage entropy (see losses.ppo_total_loss); GRPO adds β·KL.
            loss = L.ppo_total_loss(pg_loss, vf_loss, entropy, vf_coef, ent_coef, kl_term, kl_loss_coef or 0.0)
            check_finite(iteration, loss=loss.detach(), values=values.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            step = {"loss/total": loss.item(), "policy/loss": pg_loss.item(),
                    "policy/entropy": entropy.item(), "policy/clipfrac": pg["clipfrac"].item(),
                    "policy/approx_kl": pg["approx_kl"].item(), "policy/ratio_mean": pg["ratio_mean"].item(),
                    "policy/ratio_max": pg["ratio_max"].item(), "policy/grad_norm": float(grad_norm)}
            if critic:
                step.update({"value/loss": vf_loss.item(), "value/clipfrac": vf_clipfrac.item()})
            if kl_term is not None:
                step["policy/kl_loss"] = kl_term.item()
            for k, v in step.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
    return {k: v / n for k, v in sums.items()}  # averages over all minibatches, not the last one (STYLE 8)


def rollout_stats(ro: Rollout, beta: float) -> dict[str, float]:
    """Per-iteration metrics of the experience (names fixed in STYLE.md)."""
    mask = ro.response_mask.bool()
    k3 = torch.where(mask, L.kl_k3(ro.logprobs, ro.ref_logprobs), torch.zeros_like(ro.logprobs))
    kl_seq = ro.kl.sum(1)  # (B,) Σ_t k1, what the KL controller steers
    # the tokens were drawn from the distribution PPO's ratio and KL use: ~1e-6 in float32, ~1e-2 in bfloat16
    # (only when the log-probs were recomputed; otherwise they ARE the sampler's)
    gap = {"rollout/sampler_gap": sampler_gap(ro)} if ro.recomputed else {}
    return {
        "objective/score": ro.scores.mean().item(),
        "objective/reward_model": ro.raw_scores.mean().item(),
        # non-negative estimator for reading: a "negative KL" in a log confuses everyone ([KLblog] k3)
        "objective/kl": k3.sum(1).mean().item(),
        "objective/kl_k1": kl_seq.mean().item(),
        "objective/reward": (ro.scores - beta * kl_seq).mean().item(),
        "objective/beta": beta,
        "value/explained_var": L.explained_variance(ro.values, ro.returns, mask).item(),
        "rollout/length": ro.response_mask.sum(1).float().mean().item(),
        "rollout/ended": ro.ended.float().mean().item(),
        **gap,
    }


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def prompt_batch(prompts: list[str], iteration: int, batch_size: int, seed: int) -> list[str]:
    """The prompts of an iteration: consecutive slices of seeded permutations (a pure function of its
    arguments, so a resumed run draws exactly what an uninterrupted one would)."""
    n = len(prompts)
    start = iteration * batch_size
    out = []
    for pos in range(start, start + batch_size):
        epoch, offset = divmod(pos, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.append(prompts[perm[offset]])
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class StepResult:
    stats: dict[str, float]
    rollout: Rollout


def ppo_step(model: PolicyWithValue, tokenizer, optimizer, kl_ctl, prompts: list[str], score_fn: Scorer, gold_fn: Scorer | None,
             *, iteration: int, seed: int, hp, norm: RewardNorm | None, wrapped=None) -> StepResult:
    """One PPO iteration, numbered as in the seeds. ``norm`` None: fit it on this iteration's rollouts.

    Under torchrun: ``prompts`` are this rank's share, ``wrapped`` the DDP / FSDP module; stats are the run's.
    """
    t0 = time.perf_counter()
    torch.manual_seed(dist.rank_seed(seed, iteration))  # sampling depends on (seed, rank, iteration) only: exact resume
    # 1–4. generate, score, KL-shaped reward, advantages (GAE)
    ro = collect_rollout(model, tokenizer, prompts, score_fn, sampling=hp.sampling, beta=kl_ctl.value, gamma=hp.gamma,
                         lam=hp.lam, missing_eos_penalty=hp.missing_eos_penalty if hp.penalize_missing_eos else None,
                         missing_eos_mode=hp.missing_eos_mode, iteration=iteration, norm=norm)
    t1 = time.perf_counter()
    # 5. epochs of clipped updates
    generator = torch.Generator().manual_seed(seed * 7_919 + iteration)
    train = ppo_update(model, optimizer, ro, epochs=hp.ppo_epochs, minibatch_size=hp.minibatch_size // dist.world_size(),
                       clip_eps=hp.clip_eps, vf_clip=hp.vf_clip, vf_coef=hp.vf_coef, ent_coef=hp.ent_coef,
                       temperature=hp.sampling.temperature, max_grad_norm=hp.max_grad_norm, generator=generator,
                       iteration=iteration, wrapped=wrapped, clip_eps_high=hp.clip_eps_high or None)
    t2 = time.perf_counter()
    # 6. log, and steer β towards the KL target (Ziegler et al. 2019)
    stats = {"iteration": iteration, **rollout_stats(ro, kl_ctl.value), **train}
    if gold_fn is not None:
        stats["gold/score"] = float(np.mean(gold_fn(ro.prompts, ro.texts)))
    B = len(prompts) * dist.world_size()
    stats.update({"time/rollout_s": t1 - t0, "time/update_s": t2 - t1, "time/samples_per_s": B / (t2 - t0)})
    stats = dist.mean_stats(stats, maxima=MAX_STATS)  # the run's statistics: the KL controller steers on all ranks'
    kl_ctl.update(stats["objective/kl_k1"], B)
    return StepResult(stats, ro)


MAX_STATS = ("rollout/sampler_gap", "policy/ratio_max")
"""Metrics combined over ranks by their max (the others by their mean: every rank has as many rollouts)."""


LENGTH_WINDOW = 3
"""Iterations the length alarm averages over, so one unlucky batch does not stop a run."""


def alarm_reason(history: list[dict[str, float]], *, kl_budget: float, ratio_alarm: float, length_alarm: float,
                 missing_eos_mode: str | None) -> str | None:
    """A stated cause to stop after the last iteration of ``history``, or None.

    ``missing_eos_mode``: how cut-off completions are penalised (losses.missing_eos_scores), None when not.
    KL over budget; the probability ratio far from 1; every completion cut at the token limit while
    their scores are replaced by the penalty (every score is then the same: nothing to learn); or
    completions drifting to the limit — over the last LENGTH_WINDOW iterations at least
    ``length_alarm`` of them hit it, having started below (DESIGN.md: alarms, not silence).
    """
    stats = history[-1]
    if kl_budget > 0 and stats["objective/kl"] > kl_budget:
        return f"KL budget exceeded: objective/kl = {stats['objective/kl']:.2f} > {kl_budget}"
    if stats["policy/ratio_max"] > ratio_alarm:
        return f"probability ratio far from 1: mean max ρ = {stats['policy/ratio_max']:.2f} > {ratio_alarm}"
    if missing_eos_mode == "replace" and stats["rollout/ended"] == 0:
        return ("every completion hit max_new_tokens, so every score is the missing-EOS penalty and the policy has "
                "nothing to learn from: raise max_new_tokens or turn penalize_missing_eos off")
    cut = [1 - h["rollout/ended"] for h in history]
    recent = float(np.mean(cut[-LENGTH_WINDOW:]))
    if length_alarm > 0 and len(cut) > LENGTH_WINDOW and cut[0] < length_alarm <= recent:
        return (f"completions drifted to the length limit: {recent:.0%} of the last {LENGTH_WINDOW} iterations' "
                f"completions hit max_new_tokens (iteration 0: {cut[0]:.0%}) — the policy may be exploiting length")
    return None


# --------------------------------------------------------------------------------------------------
# Checkpoints: weights, optimiser, KL controller, reward normalisation, RNG, iteration and config
# --------------------------------------------------------------------------------------------------

def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer, kl_ctl, norm: RewardNorm, iteration: int,
                    config: dict, history: list[dict], stop_reason: str | None) -> None:
    """Write ``folder`` atomically (data.io.atomic_directory): a crash keeps the last complete one.

    ``model``: the PolicyWithValue, or its DDP / FSDP wrapper. Under torchrun every rank calls this and rank 0
    writes the rest. FSDP: the trained weights and the optimizer state are also saved sharded (dist.save_trainer:
    each rank writes its shards to folder/dcp), which --resume reads back at the same world size; DDP and one process
    keep the full optimizer state in trainer_state.pt. Either way rank 0 writes the trained weights in full
    (trainable.safetensors, the peft adapter: small with LoRA), which eval and export load in one process.
    Resume is exact at the same world size (each rank's sampling stream depends on its rank).
    """
    import dataclasses

    import yaml

    trained = dist.trainable_state(model)  # collective: full tensors on rank 0
    with dist.atomic_folder(folder) as tmp:  # every rank: FSDP's shards go into the same temp folder
        opt_state = dist.save_trainer(tmp, model, optimizer)  # collective; None when sharded
        if dist.is_main():
            save_trained(tmp, dist.inner(model), trained, config["model"])
            torch.save({
                "iteration": iteration, "optimizer": opt_state, "world_size": dist.world_size(),
                "kl_ctl": kl_ctl.state_dict(), "reward_norm": dataclasses.asdict(norm),
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
                "history": history, "stop_reason": stop_reason,
            }, tmp / "trainer_state.pt")
            norm.save(tmp)
            (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    dist.barrier()  # no rank runs on (and might read the folder) before it is complete


def save_trained(folder: Path, policy: PolicyWithValue, trained: dict[str, torch.Tensor], base: str) -> None:
    """What trains (``trained``: dist.trainable_state's full tensors) → folder/trainable.safetensors and, with LoRA,
    the peft adapter, so PeftModel.from_pretrained(base, folder) loads it. Rank 0 calls it (ppo and dpo)."""
    from safetensors.torch import save_file

    from rlhfkit.models.policy import TRAINABLE_FILE, save_adapter

    save_file(trained, str(folder / TRAINABLE_FILE))
    if policy.reference is None:  # LoRA
        save_adapter(policy.lm, folder, base,
                     state_dict={k.removeprefix("lm."): v for k, v in trained.items() if k.startswith("lm.")})


def restore_trained(folder: Path, model: torch.nn.Module) -> None:
    """``save_trained``'s weights back into ``model`` (or its DDP / FSDP wrapper); every rank calls it."""
    if dist.world_size() > 1:  # the same checks as load_trained, then FSDP reshards the full tensors
        from safetensors.torch import load_file

        from rlhfkit.models.policy import TRAINABLE_FILE

        dist.load_trainable(model, load_file(str(folder / TRAINABLE_FILE)))
    else:
        model.load_trained(folder)


def restore_trainer(folder: Path, model: torch.nn.Module, optimizer, state: dict) -> None:
    """The trained weights and optimizer state of a checkpoint (ppo's or dpo's; ``state``: its trainer_state.pt):
    FSDP's shards at the same world size (dist.load_trainer), else the full ones; every rank calls it."""
    if not dist.load_trainer(folder, model, optimizer, state.get("world_size", 1)):
        restore_trained(folder, model)
        dist.load_optimizer_state(model, optimizer, state["optimizer"])


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer, kl_ctl) -> dict:
    """Restore a ``save_checkpoint`` folder into ``model`` (or its DDP / FSDP wrapper); every rank reads it."""
    state = torch.load(folder / "trainer_state.pt", weights_only=False)
    restore_trainer(folder, model, optimizer, state)
    kl_ctl.load_state_dict(state["kl_ctl"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state


def policy_output(run_dir: Path, *, resume: bool, force: bool) -> Path:
    """RUN_DIR/policy, where ppo and dpo write; refused when it exists and is neither resumed nor forced."""
    out = Path(run_dir) / "policy"
    if out.exists() and not (resume or force):
        raise RlhfkitError(f"{out} already exists (use --resume to continue it or --force to start over)")
    if resume and not (out / "trainer_state.pt").exists():
        raise RlhfkitError(f"{out}: no checkpoint to resume from")
    return out


def print_samples(console, ro: Rollout, iteration: int, n: int = 4) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"iteration {iteration}: samples", show_lines=True)
    table.add_column("prompt", max_width=40)
    table.add_column("completion", max_width=70)
    table.add_column("score", justify="right")
    for p, t, s in list(zip(ro.prompts, ro.texts, ro.scores.tolist()))[:n]:
        table.add_row(Text(p), Text(t), f"{s:+.2f}")  # Text(): model output is untrusted, never rich markup
    console.print(table)


def run_ppo(cfg) -> dict:
    """The ``ppo`` stage (PPO, or RLOO / GRPO by ``cfg.algorithm``): trains RUN_DIR/policy (adapter + value head +
    trainer state). Returns a summary."""
    import dataclasses

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from rlhfkit import defaults
    from rlhfkit.config import save_resolved
    from rlhfkit.models.load import pick_device, resolve_dtype
    from rlhfkit.models.policy import build_policy
    from rlhfkit.train.metrics import MetricsLog

    console = Console(stderr=True)
    run_dir = Path(cfg.run_dir)
    out = policy_output(run_dir, resume=cfg.resume, force=cfg.force)
    device = pick_device(cfg.device)
    started = not dist.is_initialized()
    world = dist.init(device, cfg.dist_timeout)  # one process (no torchrun): World(0, 1)
    device = dist.device_of(world, device)
    # each rank takes 1/N of the iteration's prompts and of every minibatch
    dist.check_divisible("batch_size", cfg.prompts_per_iteration, "prompts")
    dist.check_divisible("minibatch_size", cfg.minibatch_size, "rollouts")
    prompts = [p.prompt for p in defaults.read_prompt_spec(cfg.prompts) if p.split == "train"]
    if len(prompts) < 1:
        raise RlhfkitError(f"{cfg.prompts}: no prompts in the train split")

    seed_everything(cfg.seed)
    dtype = resolve_dtype(cfg.dtype, device) if cfg.lora_r > 0 else "float32"
    model, tokenizer = build_policy(cfg.model, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, device=device,
                                    lora_layers=cfg.lora_layers, dtype=dtype)
    score_fn, scorer_name, scorer_dtype = load_scorer(cfg.reward_model, run_dir, device, dtype=cfg.dtype)
    gold_fn = None
    if cfg.gold:
        from rlhfkit.feedback.gold import GoldScorer

        gold_fn = GoldScorer().score
    if world.distributed and cfg.strategy == "fsdp":
        model.prefix.n_frozen = 0  # the frozen-block cache swaps blocks out of a forward: not with sharded blocks
    # the critic-free algorithms compute values but never train them: DDP must not wait for their gradients
    wrapped = dist.wrap(model, cfg.strategy, device, forward_methods=("reference_logits", "frozen_prefix"),
                        find_unused=cfg.algorithm != "ppo")
    # after wrapping: FSDP2 replaces the parameters by their shards
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, eps=1e-5)
    kl_ctl = (AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.kl_coef))
    config = dataclasses.asdict(cfg)
    log = MetricsLog(run_dir, "ppo") if world.main else None  # metrics, samples and files: rank 0 only
    start, history, norm = 0, [], None
    if cfg.resume:
        state = load_checkpoint(out, wrapped, optimizer, kl_ctl)
        start, history, norm = state["iteration"], state["history"], RewardNorm(**state["reward_norm"])
        if log:
            log.resume_from(start - 1)
            console.print(f"resuming {out} after iteration {start - 1}")
    elif log:
        log.start_fresh()
    if world.main:
        save_resolved(run_dir, "ppo", cfg)

    stop_reason = f"reached {cfg.iterations} iterations"
    columns = [TextColumn(cfg.algorithm), BarColumn(), TextColumn("{task.completed}/{task.total} it"),
               TextColumn("score {task.fields[score]:+.2f}  kl {task.fields[kl]:.2f}"), TimeElapsedColumn(),
               TimeRemainingColumn()]
    t_start = time.perf_counter()
    step_fn = ppo_step
    if cfg.algorithm != "ppo":
        from rlhfkit.train.critic_free import critic_free_step as step_fn
    with Progress(*columns, console=console, disable=not world.main) as bar:
        task = bar.add_task(cfg.algorithm, total=cfg.iterations, completed=start, score=float("nan"), kl=float("nan"))
        for it in range(start, cfg.iterations):
            # the global batch, then this rank's contiguous share of it
            batch = dist.shard(prompt_batch(prompts, it, cfg.prompts_per_iteration, cfg.seed))
            try:
                result = step_fn(model, tokenizer, optimizer, kl_ctl, batch, score_fn, gold_fn, iteration=it,
                                 seed=cfg.seed, hp=cfg, norm=norm, wrapped=wrapped)
            except PPOAlarm:
                if log:
                    log.close()
                raise
            norm = result.rollout.norm
            stats = result.stats
            history.append(stats)
            if log:
                log.log(it, stats)
            bar.update(task, advance=1, score=stats["objective/score"], kl=stats["objective/kl"])
            if world.main and cfg.sample_every and (it + 1) % cfg.sample_every == 0:
                print_samples(bar.console, result.rollout, it)
            reason = alarm_reason(history, kl_budget=cfg.kl_budget, ratio_alarm=cfg.ratio_alarm,
                                  length_alarm=cfg.length_alarm,
                                  missing_eos_mode=cfg.missing_eos_mode if cfg.penalize_missing_eos else None)
            if reason is None and stats["objective/score"] >= cfg.target_reward:
                reason = f"target reward reached: objective/score = {stats['objective/score']:.2f} ≥ {cfg.target_reward}"
            last = it + 1 == cfg.iterations
            if reason or last or (cfg.save_every and (it + 1) % cfg.save_every == 0):
                save_checkpoint(out, wrapped, optimizer, kl_ctl, norm, it + 1, config, history,
                                reason or (stop_reason if last else None))
            if reason:
                stop_reason = reason
                break
    if log:
        log.close()
    if started:
        dist.close()
    seconds = time.perf_counter() - t_start
    first, final = history[0], history[-1]
    summary = {"path": str(out), "algorithm": cfg.algorithm, "iterations": len(history), "stop_reason": stop_reason, "seconds": seconds,
               "reward_model": scorer_name, "dtype": dtype, "reward_model_dtype": scorer_dtype, "reward_norm": dataclasses.asdict(norm),
               "score_first": first["objective/score"], "score_last": final["objective/score"],
               "kl_last": final["objective/kl"], "beta_last": kl_ctl.value}
    if gold_fn is not None:
        summary.update(gold_first=first["gold/score"], gold_last=final["gold/score"])
    return summary
