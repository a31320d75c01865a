"""PPO with a per-token KL penalty against a frozen reference, on a LoRA policy.

One iteration (``ppo_step``) follows the seeds step by step:
  1 generate, 2 score, 3 KL-shaped reward, 4 advantages (GAE), 5 epochs of clipped updates, 6 log.
Every formula lives in ``train/losses.py``; this module orchestrates.

References: [lmhp] OpenAI lm-human-preferences; [N-det] Huang et al. 2024, "The N Implementation
Details of RLHF with PPO"; [Zieg] Ziegler et al. 2019; [Stien] Stiennon et al. 2020 (summarisation).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.generate import decode_responses, eos_ids, position_ids, response_length, sample
from rlhfkit.models.load import format_prompt
from rlhfkit.train import losses as L

Scorer = Callable[[list[str], list[str]], list[float]]


class PPOAlarm(RlhfkitError):
    """Training stopped on a sign that something broke (NaN, KL blow-up, ratio far from 1)."""


# --------------------------------------------------------------------------------------------------
# The policy and its critic
# --------------------------------------------------------------------------------------------------


class PolicyWithValue(nn.Module):
    """A causal LM (LoRA-wrapped or plain) and a scalar value head reading its last hidden states.

    The critic shares the policy's backbone: with LoRA the reference is the same base with adapters
    off, so sharing keeps ONE copy of the weights in memory for policy, reference and critic — the
    memory problem users of four-model PPO hit most. The price is that value gradients also move the
    shared adapters; vf_coef keeps that small ([lmhp] used a separate critic; TRL's ValueHead shares).
    """

    def __init__(self, lm: nn.Module, reference: nn.Module | None = None):
        super().__init__()
        self.lm = lm
        self.reference = reference  # None: LoRA, the reference is lm with adapters disabled
        hidden = lm.config.get_text_config().hidden_size if hasattr(lm.config, "get_text_config") else lm.config.hidden_size
        self.value_head = nn.Linear(hidden, 1)
        # Zero init: V starts at 0, the mean of the normalised reward ([N-det] normalises scores to mean 0).
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        blocks, self.n_frozen = frozen_blocks(lm) if reference is None else (None, 0)
        self._blocks = (blocks,)  # a tuple: not registered as a second path to the same parameters

    def forward(self, input_ids: Tensor, attention_mask: Tensor, n_response: int, temperature: float,
                prefix: Tensor | None = None):
        """Logits predicting each response token and the value of the state before it.

        input_ids, attention_mask: (B, T) = prompt (left-padded) + response (right-padded), T = P + A.
        prefix: (B, T, H) output of the frozen lower blocks for these rows (``frozen_prefix``), or None.
        Returns logits (B, A, V) scaled by 1/temperature, values (B, A).
        """
        A = n_response
        # The value head reads the input of the LM head: the final (normed) hidden states of the A+1 kept
        # positions. A hook fetches them, so the model does not collect every layer's hidden states.
        head_input: list[Tensor] = []
        with _contiguous_head_input(self.lm, head_input), self._skip_frozen(prefix):
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids(attention_mask), logits_to_keep=A + 1, use_cache=False)
        # logits[:, t] predicts token t+1: the A+1 kept positions are T−A−1 … T−1; drop the last.
        logits = out.logits[:, :-1].float() / temperature  # (B, A, V)
        hidden = head_input[-1][:, -(A + 1) : -1]  # (B, A, H): the state before each response token
        values = self.value_head(hidden.float()).squeeze(-1)  # (B, A)
        return logits, values

    @torch.no_grad()
    def reference_logits(self, input_ids: Tensor, attention_mask: Tensor, n_response: int, temperature: float,
                         prefix: Tensor | None = None) -> Tensor:
        """(B, A, V) logits of the frozen reference: the base with adapters off, or the separate copy.

        prefix: as in ``forward`` — the frozen lower blocks are the same for policy and reference.
        """
        A = n_response
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                      logits_to_keep=A + 1, use_cache=False)
        if self.reference is not None:
            with _contiguous_head_input(self.reference, []):
                out = self.reference(**kwargs)
        else:
            with self.lm.disable_adapter(), self._skip_frozen(prefix), _contiguous_head_input(self.lm, []):
                out = self.lm(**kwargs)
        return out.logits[:, :-1].float() / temperature

    @torch.no_grad()
    def frozen_prefix(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor | None:
        """(B, T, H) output of the blocks below the lowest adapted one, or None when every block adapts.

        With LoRA on the top blocks only (``lora_layers``), the blocks below are frozen and the same in
        the policy and the reference: their output for a rollout never changes during its update epochs.
        Computing it once per iteration saves the policy forward of every epoch and the reference forward
        all those blocks (on SmolLM2-135M with the top 8 of 30 blocks adapted, 22/30 of each forward).
        """
        if self.n_frozen == 0:
            return None
        box: list[Tensor] = []

        def stop(_module, _args, output):
            box.append(output)
            raise _PrefixDone

        hook = self._blocks[0][self.n_frozen - 1].register_forward_hook(stop)
        try:
            self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                    use_cache=False)
        except _PrefixDone:
            pass
        finally:
            hook.remove()
        if not isinstance(box[0], Tensor):  # an older block returning a tuple: do not cache
            self.n_frozen = 0
            return None
        return box[0]

    @contextlib.contextmanager
    def _skip_frozen(self, prefix: Tensor | None):
        """Within: the frozen blocks return ``prefix`` instead of computing (the blocks above read it)."""
        if prefix is None:
            yield
            return
        frozen = self._blocks[0][: self.n_frozen]
        saved = [b.__dict__.get("forward") for b in frozen]
        for b in frozen:
            b.forward = lambda *args, **kwargs: prefix  # a block returns its hidden states (transformers ≥ 5)
        try:
            yield
        finally:
            for b, f in zip(frozen, saved):
                del b.forward
                if f is not None:
                    b.forward = f


@contextlib.contextmanager
def _contiguous_head_input(lm: nn.Module, box: list):
    """Within: the LM head gets a contiguous copy of its input, also appended to ``box``.

    With ``logits_to_keep`` the head reads a slice of the hidden states (B, A+1, H) that is not contiguous;
    torch then runs the head as a batched matmul over a broadcast weight, ~1.7× slower on CPU than one
    matmul (SmolLM2-135M: 0.35 vs 0.21 s a call, forward and backward alike). The copy is B·(A+1)·H floats.
    """

    def pre_hook(_module, args):
        box.append(args[0].contiguous())
        return (box[-1], *args[1:])

    hook = lm.get_output_embeddings().register_forward_pre_hook(pre_hook)
    try:
        yield
    finally:
        hook.remove()


class _PrefixDone(Exception):
    """Raised by a hook to end a forward pass after the frozen blocks."""


def frozen_blocks(lm: nn.Module) -> tuple[nn.ModuleList | None, int]:
    """(the transformer blocks, how many of the lowest are frozen) for prefix caching; (None, 0) if unusable.

    Usable when every trainable weight of the LM sits in the blocks from the first adapted one up,
    and the blocks return a plain tensor (transformers ≥ 5 decoder blocks do).
    """
    n_layers = lm.config.get_text_config().num_hidden_layers
    lists = [m for m in lm.modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers]
    if len(lists) != 1:
        return None, 0
    blocks = lists[0]
    trainable = [i for i, b in enumerate(blocks) if any(p.requires_grad for p in b.parameters())]
    if not trainable or trainable[0] == 0:
        return None, 0
    above = {id(p) for b in blocks[trainable[0] :] for p in b.parameters()}
    if any(p.requires_grad and id(p) not in above for p in lm.parameters()):
        return None, 0
    return blocks, trainable[0]


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
    scores: Tensor  # (B,) reward-model score (normalised), or the missing-EOS penalty
    raw_scores: Tensor  # (B,) reward-model score before the penalty
    ended: Tensor  # (B,) bool: the completion emitted EOS
    rewards: Tensor  # (B, A) KL-shaped per-token rewards
    kl: Tensor  # (B, A) per-token k1
    advantages: Tensor  # (B, A) whitened
    returns: Tensor  # (B, A)
    prompts: list[str]
    texts: list[str]
    prefix: Tensor | None = None  # (B, T, H) output of the frozen lower blocks (PolicyWithValue.frozen_prefix)

    @property
    def n_response(self) -> int:
        return self.response_mask.shape[1]


def check_finite(iteration: int, **tensors: Tensor) -> None:
    """Stop with the iteration and the quantity's name when a NaN or inf appears."""
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise PPOAlarm(f"iteration {iteration}: non-finite {name} (NaN or inf); the last good checkpoint is kept")


def assemble(s, stop: list[int]):
    """Prompt + response as one sequence: (lengths (B,), response_mask (B, A), input_ids (B, T), attention_mask (B, T)).

    The attention mask covers the real prompt tokens and the response up to and including EOS.
    """
    lengths = response_length(s.response_ids, stop)  # (B,)
    A = s.response_ids.shape[1]
    response_mask = (torch.arange(A, device=lengths.device)[None, :] < lengths[:, None]).long()  # (B, A)
    input_ids = torch.cat([s.prompt_ids, s.response_ids], dim=1)  # (B, T = P + A)
    attention_mask = torch.cat([s.prompt_mask, response_mask], dim=1)  # (B, T)
    return lengths, response_mask, input_ids, attention_mask


@torch.no_grad()
def sequence_kl(model: "PolicyWithValue", input_ids: Tensor, attention_mask: Tensor, response_mask: Tensor,
                temperature: float) -> tuple[Tensor, Tensor]:
    """(Σ_t k1, Σ_t k3) per sequence (B,): the KL of the policy to the reference on the policy's own samples."""
    A = response_mask.shape[1]
    logits, _ = model(input_ids, attention_mask, A, temperature)
    logp = L.logprobs_from_logits(logits, input_ids[:, -A:])
    ref = L.logprobs_from_logits(model.reference_logits(input_ids, attention_mask, A, temperature), input_ids[:, -A:])
    mask = response_mask.bool()
    k1 = torch.where(mask, L.kl_k1(logp, ref), torch.zeros_like(logp)).sum(1)
    k3 = torch.where(mask, L.kl_k3(logp, ref), torch.zeros_like(logp)).sum(1)
    return k1, k3


@torch.no_grad()
def collect_rollout(model: PolicyWithValue, tokenizer, prompts: list[str], score_fn: Scorer, *, max_new_tokens: int,
                    temperature: float, beta: float, gamma: float, lam: float, missing_eos_penalty: float | None,
                    iteration: int, system_prompt: str = "") -> Rollout:
    """Phase 1: generate, score, compute log-probs, values, KL-shaped rewards and advantages."""
    model.eval()  # dropout off in rollouts and in the log-prob passes alike ([N-det])
    # 1. generate: left-padded prompts through the chat template, sampled at `temperature` with the KV cache
    formatted = [format_prompt(tokenizer, p, system_prompt) for p in prompts]
    s = sample(model.lm, tokenizer, formatted, max_new_tokens=max_new_tokens, temperature=temperature)
    lengths, response_mask, input_ids, attention_mask = assemble(s, eos_ids(tokenizer, model.lm))
    A = s.response_ids.shape[1]

    # 2. score decoded text: the reward model has its own tokenizer, never the policy's ids ([N-det])
    texts = decode_responses(tokenizer, s.response_ids, lengths)
    raw = torch.tensor(score_fn(prompts, texts), dtype=torch.float32)
    check_finite(iteration, scores=raw)  # before the missing-EOS penalty can hide a broken reward model
    # Completions that never end get a fixed penalty instead of their score ([Stien], [N-det] detail 23).
    scores = raw.clone() if missing_eos_penalty is None else torch.where(s.ended.cpu(), raw, torch.tensor(missing_eos_penalty))

    # log-probs of the sampled tokens at the sampling temperature, under the policy and the reference;
    # the frozen lower blocks (LoRA on the top blocks only) run once for both and for the update epochs
    prefix = model.frozen_prefix(input_ids, attention_mask)  # (B, T, H) or None
    logits, values = model(input_ids, attention_mask, A, temperature, prefix=prefix)
    logprobs = L.logprobs_from_logits(logits, s.response_ids)  # (B, A); logits already divided by T
    del logits
    ref_logits = model.reference_logits(input_ids, attention_mask, A, temperature, prefix=prefix)
    ref_logprobs = L.logprobs_from_logits(ref_logits, s.response_ids)
    del ref_logits
    scores = scores.to(values.device)
    check_finite(iteration, scores=scores, values=values, logprobs=logprobs, ref_logprobs=ref_logprobs)

    # 3. KL-shaped reward: −β·k1 per token, the score at the last generated token
    rewards, kl = L.kl_penalized_rewards(scores, logprobs, ref_logprobs, response_mask, beta, L.last_valid_index(response_mask))
    # 4. advantages: GAE over response tokens, whitened over the batch ([N-det]: whiten advantages always)
    advantages, returns = L.gae(rewards, values, response_mask, gamma, lam)
    advantages = L.masked_whiten(advantages, response_mask)
    return Rollout(input_ids, attention_mask, response_mask, logprobs, ref_logprobs, values, scores, raw.to(values.device),
                   s.ended, rewards, kl, advantages, returns, list(prompts), texts, prefix)


def ppo_update(model: PolicyWithValue, optimizer, ro: Rollout, *, epochs: int, minibatch_size: int, clip_eps: float,
               vf_clip: float, vf_coef: float, ent_coef: float, temperature: float, max_grad_norm: float,
               generator: torch.Generator, iteration: int) -> dict[str, float]:
    """Phase 2: `epochs` passes of clipped updates over shuffled minibatches. Returns stats averaged over all minibatches."""
    B, A = ro.response_mask.shape
    sums: dict[str, float] = {}
    n = 0
    params = [p for p in model.parameters() if p.requires_grad]
    for _ in range(epochs):
        order = torch.randperm(B, generator=generator)
        for lo in range(0, B, minibatch_size):
            idx = order[lo : lo + minibatch_size].to(ro.input_ids.device)
            mask = ro.response_mask[idx]  # (b, A)
            prefix = None if ro.prefix is None else ro.prefix[idx]
            logits, values = model(ro.input_ids[idx], ro.attention_mask[idx], A, temperature, prefix=prefix)
            logp = L.logprobs_from_logits(logits, ro.input_ids[idx, -A:])
            pg_loss, pg = L.clipped_policy_loss(logp, ro.logprobs[idx], ro.advantages[idx], mask, clip_eps)
            vf_loss, vf_clipfrac = L.clipped_value_loss(values, ro.values[idx], ro.returns[idx], mask, vf_clip)
            # Without an entropy bonus the entropy is only logged: no graph through (b, A, V) tensors.
            with torch.set_grad_enabled(ent_coef != 0):
                entropy = L.masked_mean(L.entropy_from_logits(logits), mask)
            # L_PPO = L_POLICY + c1·L_VF + c2·L_ENT, signed to minimise: maximise the clipped objective,
            # minimise the value error, encourage entropy (see losses.ppo_total_loss).
            loss = L.ppo_total_loss(pg_loss, vf_loss, entropy, vf_coef, ent_coef)
            check_finite(iteration, loss=loss.detach(), values=values.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            step = {"loss": loss.item(), "policy/loss": pg_loss.item(), "value/loss": vf_loss.item(),
                    "policy/entropy": entropy.item(), "policy/clipfrac": pg["clipfrac"].item(),
                    "policy/approx_kl": pg["approx_kl"].item(), "policy/ratio_mean": pg["ratio_mean"].item(),
                    "policy/ratio_max": pg["ratio_max"].item(), "value/clipfrac": vf_clipfrac.item(),
                    "policy/grad_norm": float(grad_norm)}
            for k, v in step.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
    stats = {k: v / n for k, v in sums.items()}  # averages over all minibatches, not the last one (STYLE 8)
    stats["policy/ratio_max"] = sums["policy/ratio_max"] / n
    return stats


def rollout_stats(ro: Rollout, beta: float) -> dict[str, float]:
    """Per-iteration metrics of the experience (names fixed in STYLE.md)."""
    mask = ro.response_mask.bool()
    k3 = torch.where(mask, L.kl_k3(ro.logprobs, ro.ref_logprobs), torch.zeros_like(ro.logprobs))
    kl_seq = ro.kl.sum(1)  # (B,) Σ_t k1, what the KL controller steers
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
             *, iteration: int, seed: int, hp) -> StepResult:
    """One PPO iteration, numbered as in the seeds."""
    t0 = time.perf_counter()
    torch.manual_seed(seed * 1_000_003 + iteration)  # sampling depends on (seed, iteration) only: exact resume
    # 1–4. generate, score, KL-shaped reward, advantages (GAE)
    ro = collect_rollout(model, tokenizer, prompts, score_fn, max_new_tokens=hp.max_new_tokens,
                         temperature=hp.temperature, beta=kl_ctl.value, gamma=hp.gamma, lam=hp.lam,
                         missing_eos_penalty=hp.missing_eos_penalty if hp.penalize_missing_eos else None,
                         iteration=iteration, system_prompt=hp.system_prompt)
    t1 = time.perf_counter()
    # 5. epochs of clipped updates
    generator = torch.Generator().manual_seed(seed * 7_919 + iteration)
    train = ppo_update(model, optimizer, ro, epochs=hp.ppo_epochs, minibatch_size=hp.minibatch_size,
                       clip_eps=hp.clip_eps, vf_clip=hp.vf_clip, vf_coef=hp.vf_coef, ent_coef=hp.ent_coef,
                       temperature=hp.temperature, max_grad_norm=hp.max_grad_norm, generator=generator,
                       iteration=iteration)
    t2 = time.perf_counter()
    # 6. log, and steer β towards the KL target (Ziegler et al. 2019)
    stats = {"iteration": iteration, **rollout_stats(ro, kl_ctl.value), **train}
    if gold_fn is not None:
        stats["gold/score"] = float(np.mean(gold_fn(ro.prompts, ro.texts)))
    kl_ctl.update(stats["objective/kl_k1"], len(prompts))
    stats.update({"time/rollout_s": t1 - t0, "time/update_s": t2 - t1, "time/samples_per_s": len(prompts) / (t2 - t0)})
    return StepResult(stats, ro)


def alarm_reason(stats: dict[str, float], *, kl_budget: float, ratio_alarm: float) -> str | None:
    """A stated cause to stop: KL over budget or the probability ratio far from 1."""
    if kl_budget > 0 and stats["objective/kl"] > kl_budget:
        return f"KL budget exceeded: objective/kl = {stats['objective/kl']:.2f} > {kl_budget}"
    if stats["policy/ratio_max"] > ratio_alarm:
        return f"probability ratio far from 1: mean max ρ = {stats['policy/ratio_max']:.2f} > {ratio_alarm}"
    return None


# --------------------------------------------------------------------------------------------------
# Checkpoints: weights, optimiser, KL controller, RNG, iteration and config (resume exactly)
# --------------------------------------------------------------------------------------------------


def trainable_state(model: PolicyWithValue) -> dict[str, Tensor]:
    """What training changes: the adapters (or all LM weights in full fine-tuning) and the value head."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().cpu().clone() for n, t in model.state_dict().items() if n in names}


def save_checkpoint(folder: Path, model: PolicyWithValue, optimizer, kl_ctl, iteration: int, config: dict,
                    history: list[dict], stop_reason: str | None) -> None:
    """Write ``folder`` atomically: a new folder beside it, then a rename, so a crash keeps the last one."""
    import shutil
    import tempfile

    import yaml
    from safetensors.torch import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        if model.reference is None:  # LoRA: the adapter alone, loadable by peft (PeftModel.from_pretrained)
            model.lm.save_pretrained(tmp / "adapter")
        torch.save({
            "iteration": iteration, "optimizer": optimizer.state_dict(), "kl_ctl": kl_ctl.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "history": history, "stop_reason": stop_reason,
        }, tmp / "trainer_state.pt")
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        old = folder.with_name(f".{folder.name}-old")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_trained(folder: Path, model: PolicyWithValue) -> None:
    """Put the trained weights (adapters or full LM, and the value head) of ``folder`` into ``model``."""
    from safetensors.torch import load_file

    missing = model.load_state_dict(load_file(str(folder / "trainable.safetensors")), strict=False)
    if missing.unexpected_keys:
        raise RlhfkitError(f"{folder}: checkpoint does not match the model ({missing.unexpected_keys[:3]} …)")


def load_checkpoint(folder: Path, model: PolicyWithValue, optimizer, kl_ctl) -> dict:
    state = torch.load(folder / "trainer_state.pt", weights_only=False)
    load_trained(folder, model)
    optimizer.load_state_dict(state["optimizer"])
    kl_ctl.load_state_dict(state["kl_ctl"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state


def build_policy(model_name: str, *, lora_r: int, lora_alpha: int, device: str, lora_layers: int = 0,
                 dtype: str = "float32"):
    """(PolicyWithValue, tokenizer): LoRA over the base (reference = adapters off), or full FT + frozen copy.

    ``dtype`` is the base weights' precision (LoRA only; full fine-tuning is float32). peft keeps the
    adapters in float32 over a bfloat16 base; the value head and all losses are float32.
    """
    from rlhfkit.models.load import add_lora, load_policy

    lm, tokenizer = load_policy(model_name, device=device, dtype=dtype if lora_r > 0 else "float32")
    if lora_r > 0:
        lm = add_lora(lm, r=lora_r, alpha=lora_alpha, dropout=0.0, top_layers=lora_layers)  # dropout 0: rollout and update must agree
        model = PolicyWithValue(lm)
    else:
        reference, _ = load_policy(model_name, device=device)
        reference.requires_grad_(False)
        model = PolicyWithValue(lm, reference)
    model.to(device)
    model.eval()  # no dropout anywhere, also during updates ([N-det])
    return model, tokenizer


def load_scorer(spec: str, run_dir: Path, device: str, dtype: str = "auto") -> tuple[Scorer, str]:
    """The reward: a trained reward model folder (scores normalised with its stored statistics) or 'gold'."""
    if spec == "gold":
        from rlhfkit.feedback.gold import GoldScorer

        gold = GoldScorer()
        return gold.score, "gold"
    path = Path(spec) if spec else run_dir / "reward_model"
    if not path.exists():
        raise RlhfkitError(f"{path}: no reward model (run `rlhfkit train-rm` first, or pass --reward-model)")
    from rlhfkit.train.reward import RewardModel

    rm = RewardModel.load(path, device=device, dtype=dtype)
    # Normalise to mean 0, std 1 over the reference policy's completions ([N-det], [lmhp] reward normalisation)
    return (lambda prompts, texts: rm.score(prompts, texts, normalize=True)), str(path)


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
    """The ``ppo`` stage: trains RUN_DIR/policy (adapter + value head + trainer state). Returns a summary."""
    import dataclasses

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from rlhfkit import defaults
    from rlhfkit.config import save_resolved
    from rlhfkit.data.io import read_prompts
    from rlhfkit.models.load import pick_device, resolve_dtype
    from rlhfkit.train.metrics import MetricsLog

    console = Console(stderr=True)
    run_dir = Path(cfg.run_dir)
    out = run_dir / "policy"
    if out.exists() and not (cfg.resume or cfg.force):
        raise RlhfkitError(f"{out} already exists (use --resume to continue it or --force to start over)")
    if cfg.resume and not (out / "trainer_state.pt").exists():
        raise RlhfkitError(f"{out}: no checkpoint to resume from")
    device = pick_device(cfg.device)
    prompts_file = defaults.prompts_path() if cfg.prompts == "default" else Path(cfg.prompts)
    prompts = [p.prompt for p in read_prompts(prompts_file) if p.split == "train"]
    if len(prompts) < 1:
        raise RlhfkitError(f"{prompts_file}: no prompts in the train split")

    seed_everything(cfg.seed)
    dtype = resolve_dtype(cfg.dtype, device) if cfg.lora_r > 0 else "float32"
    model, tokenizer = build_policy(cfg.model, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, device=device,
                                    lora_layers=cfg.lora_layers, dtype=dtype)
    score_fn, scorer_name = load_scorer(cfg.reward_model, run_dir, device)
    gold_fn = None
    if cfg.gold:
        from rlhfkit.feedback.gold import GoldScorer

        gold_fn = GoldScorer().score
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, eps=1e-5)
    kl_ctl = (L.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else L.FixedKLController(cfg.kl_coef))
    config = dataclasses.asdict(cfg)
    log = MetricsLog(run_dir, "ppo")
    start, history = 0, []
    if cfg.resume:
        state = load_checkpoint(out, model, optimizer, kl_ctl)
        start, history = state["iteration"], state["history"]
        log.resume_from(start - 1)
        console.print(f"resuming {out} after iteration {start - 1}")
    else:
        log.start_fresh()
    save_resolved(run_dir, "ppo", cfg)

    stop_reason = f"reached {cfg.iterations} iterations"
    columns = [TextColumn("ppo"), BarColumn(), TextColumn("{task.completed}/{task.total} it"),
               TextColumn("score {task.fields[score]:+.2f}  kl {task.fields[kl]:.2f}"), TimeElapsedColumn(),
               TimeRemainingColumn()]
    t_start = time.perf_counter()
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("ppo", total=cfg.iterations, completed=start, score=float("nan"), kl=float("nan"))
        for it in range(start, cfg.iterations):
            batch = prompt_batch(prompts, it, cfg.batch_size, cfg.seed)
            try:
                result = ppo_step(model, tokenizer, optimizer, kl_ctl, batch, score_fn, gold_fn, iteration=it,
                                  seed=cfg.seed, hp=cfg)
            except PPOAlarm:
                log.close()
                raise
            stats = result.stats
            history.append(stats)
            log.log(it, stats)
            bar.update(task, advance=1, score=stats["objective/score"], kl=stats["objective/kl"])
            if cfg.sample_every and (it + 1) % cfg.sample_every == 0:
                print_samples(bar.console, result.rollout, it)
            reason = alarm_reason(stats, kl_budget=cfg.kl_budget, ratio_alarm=cfg.ratio_alarm)
            if stats["objective/score"] >= cfg.target_reward:
                reason = f"target reward reached: objective/score = {stats['objective/score']:.2f} ≥ {cfg.target_reward}"
            last = it + 1 == cfg.iterations
            if reason or last or (cfg.save_every and (it + 1) % cfg.save_every == 0):
                save_checkpoint(out, model, optimizer, kl_ctl, it + 1, config, history, reason or (stop_reason if last else None))
            if reason:
                stop_reason = reason
                break
    log.close()
    seconds = time.perf_counter() - t_start
    first, final = history[0], history[-1]
    summary = {"path": str(out), "iterations": len(history), "stop_reason": stop_reason, "seconds": seconds,
               "reward_model": scorer_name, "dtype": dtype,
               "score_first": first["objective/score"], "score_last": final["objective/score"],
               "kl_last": final["objective/kl"], "beta_last": kl_ctl.value}
    if gold_fn is not None:
        summary.update(gold_first=first["gold/score"], gold_last=final["gold/score"])
    return summary
