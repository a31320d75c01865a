"""rlhfkit's GRPO and DPO updates against TRL 1.16's GRPOTrainer and DPOTrainer on the same data: loss, gradients.

    ~/scratch/trlenv/bin/python bench/trl_parity.py         # run with TRL's python (rlhfkit is read from src/)

Not a speed bench: a parity check with a trusted implementation (STYLE 9d), run where TRL is installed (CI has no
TRL). One LoRA policy (the peers' tiny GPT-2 ``small``, LoRA r=16 on every linear layer, its B matrices moved off
zero so the policy differs from the reference) serves both sides, in float32 (TRL's configs default to bf16).

1. Log-probs: rlhfkit samples a GRPO rollout (8 prompts × K = 2, ≤ 32 tokens) and computes the policy's and the
   reference's log-probs its own way (the sampler's, the reference as plain base layers); TRL through
   ``_get_per_token_logps_and_entropies`` (``disable_adapter`` for the reference). Printed for rows with and without
   left padding: TRL's training forward passes no position ids, so on GPT-2 (learned absolute positions) a
   left-padded row is scored one position off from where ``generate()`` sampled it — shown, not gated.
2. The update: a rollout of prompts of one length (no padding), its completions cut to different lengths (as if
   they had ended), pseudo-random scores. For each loss type (dapo | grpo | dr_grpo) and setting — β·KL in the loss,
   that KL weighted by the ratio or not (``kl_bias_correction`` / TRL's use_bias_correction_kl), the ratio per
   token or per completion (GSPO: ``importance_sampling_level``, TRL's name too), the upper clip ε_high, old log-probs equal to the current ones (TRL's num_iterations = 1) or shifted by noise so the clip bites —
   rlhfkit's ``ppo_update`` (as ``rlhfkit ppo --algorithm grpo`` calls it, lr 0 so nothing moves) against TRL's
   ``_compute_loss`` + ``backward``, on the same reference log-probs.

   Not gated, a note: TRL's RLOOTrainer on the same rollout, on policy, against rlhfkit's RLOO update (TRL clips a
   sequence-level ratio, rlhfkit per token; on policy the gradients are proportional — see ``rloo_note``).
3. DPO: the peers' first 8 pairs, encoded once (rlhfkit's ``encode``), through rlhfkit's ``dpo_step`` on its
   shared-prompt batch (each prompt once, the replies behind a 4-D mask; reference log-probs cached) and TRL's
   ``DPOTrainer._compute_loss`` on its own collator's prompt + reply rows (reference computed in the step): the
   sigmoid loss at two β and IPO.

Prints the differences; exits 1 if a log-prob, loss or (relative) LoRA-gradient difference on the gated parts
exceeds 1e-4, so it can gate a change.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                   "WANDB_DISABLED": "true", "TRL_EXPERIMENTAL_SILENCE": "1"})

TOLERANCE = 1e-4


def rollout(model, tokenizer, prompts: list[str], k: int, max_new_tokens: int):
    """One rlhfkit GRPO rollout of ``prompts`` (K each) with per-sequence advantages (B,)."""
    import torch

    from rlhfkit.config import SamplingConfig
    from rlhfkit.train import losses as L
    from rlhfkit.train.critic_free import repeat_prompts
    from rlhfkit.train.ppo import collect_rollout

    gen = torch.Generator().manual_seed(1)

    def scores(ps, texts):  # pseudo-random, fixed by the seed: the advantages' source does not matter here
        return torch.randn(len(texts), generator=gen).tolist()

    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=1.0)
    ro = collect_rollout(model, tokenizer, repeat_prompts(prompts, k), scores, sampling=sampling, beta=0.0, gamma=1.0,
                         lam=1.0, missing_eos_penalty=None, iteration=0, critic=False)
    advantages = L.group_normalized_advantages(ro.scores, k)  # (B,)
    return ro, advantages


def ours(model, ro, advantages, old, *, beta, loss_type, clip_eps_high, kl_bias_correction, k, max_tokens,
         level="token"):
    """rlhfkit's update loss and LoRA gradients on the rollout (lr 0: the weights stay)."""
    import dataclasses

    import torch

    from rlhfkit.train.ppo import ppo_update

    mask = ro.response_mask.float()
    ro = dataclasses.replace(ro, logprobs=old * mask, advantages=advantages[:, None] * mask)
    params = [p for p in model.parameters() if p.requires_grad]
    stats = ppo_update(model, torch.optim.SGD(params, lr=0.0), ro, epochs=1, minibatch_size=len(ro.prompts),
                       clip_eps=0.2, vf_clip=0.2, vf_coef=0.0, ent_coef=0.0, temperature=1.0, max_grad_norm=1e30,
                       generator=torch.Generator().manual_seed(0), iteration=0, critic=False, kl_loss_coef=beta,
                       group_size=k, clip_eps_high=clip_eps_high, loss_type=loss_type, max_tokens=max_tokens,
                       kl_bias_correction=kl_bias_correction, ratio_level=level)
    return stats["loss/total"], grads(model.lm)


def trl_inputs(ro, advantages, old, ref):
    """The batch TRL's GRPO loss reads, cut from rlhfkit's rollout (prompt left-padded, completion right-padded)."""
    A = ro.n_response
    mask = ro.response_mask.long()
    return {"prompt_ids": ro.input_ids[:, :-A], "prompt_mask": ro.attention_mask[:, :-A],
            "completion_ids": ro.input_ids[:, -A:], "completion_mask": mask, "advantages": advantages,
            "old_per_token_logps": old, "ref_per_token_logps": ref, "num_items_in_batch": mask.sum()}


def theirs(trainer, inputs):
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer._compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.item(), grads(trainer.model)


def grads(module) -> dict:
    """A copy of the gradient of every parameter of ``module`` that has one."""
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def grad_gap(ours: dict, theirs: dict, scale: float = 1.0) -> float:
    """The largest relative difference ‖scale · g_rlhfkit − g_TRL‖ / ‖g_TRL‖ over the parameters."""
    return max(((scale * ours[n] - theirs[n]).norm() / theirs[n].norm().clamp(min=1e-12)).item() for n in theirs)


def move_off_zero(lm) -> None:
    """The LoRA adapter's B matrices drawn from N(0, 0.02²): B = 0 (its init) would make the policy the reference
    (KL 0, its gradient 0). Only the adapter being trained ("default"), not a reference copy TRL may have added."""
    import torch

    with torch.no_grad():
        for name, p in lm.named_parameters():
            if "lora_B" in name and ".default." in name:
                p.normal_(0.0, 0.02)


def grpo_parity(a) -> float:
    """Part 1 and 2 of the module doc; the largest gated difference."""
    import dataclasses
    import json

    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rlhfkit.models.policy import build_policy
    from rlhfkit.train.ppo import seed_everything

    seed_everything(0)
    model, tokenizer = build_policy(str(Path(a.tiny) / "small"), lora_r=16, lora_alpha=32, device="cpu")
    tokenizer.chat_template = None  # raw prompts, as TRL's side of the speed bench reads them
    move_off_zero(model.lm)
    lines = (Path(a.tiny) / "prompts.jsonl").read_text().splitlines()
    every = [json.loads(line)["prompt"] for line in lines if line.strip()]
    length = lambda p: len(tokenizer(p)["input_ids"])  # noqa: E731
    common = max(set(map(length, every[:200])), key=[length(p) for p in every[:200]].count)
    mixed = every[: a.prompts]  # some prompts a token longer than others: left padding
    equal = [p for p in every if length(p) == common][: a.prompts]  # no padding

    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(output_dir=out, per_device_train_batch_size=a.prompts * a.k, num_generations=a.k,
                         max_completion_length=a.max_new_tokens, beta=0.0, epsilon=0.2, use_cpu=True, bf16=False,
                         report_to="none", gradient_checkpointing=False, save_strategy="no", disable_tqdm=True)
        # beta 0 at construction: TRL would otherwise add a "ref" copy of the adapter to this peft model (its
        # reference for a model that arrives with an adapter); set below, the loss reads it from the trainer
        trainer = GRPOTrainer(model=model.lm, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=cfg,
                              train_dataset=Dataset.from_dict({"prompt": every[:64]}), processing_class=tokenizer)
        trainer.current_gradient_accumulation_steps = 1
        trainer.model.eval()  # rlhfkit's policy never drops out (the tiny model's config has dropout)

        def trl_logprobs(ro):
            """TRL's log-probs of the rollout's tokens: the policy's, and the reference's (adapters off)."""
            with torch.no_grad():
                logp = trainer._get_per_token_logps_and_entropies(trainer.model, ro.input_ids, ro.attention_mask,
                                                                  ro.n_response)[0]
                with trainer.model.disable_adapter():
                    ref = trainer._get_per_token_logps_and_entropies(trainer.model, ro.input_ids, ro.attention_mask,
                                                                     ro.n_response)[0]
            return logp, ref

        def gap(x, y, rows):
            return ((x - y).abs() * ro.response_mask)[rows].max().item() if rows.any() else float("nan")

        ro, _ = rollout(model, tokenizer, mixed, a.k, a.max_new_tokens)
        logp, ref = trl_logprobs(ro)
        padded = (ro.attention_mask[:, : -ro.n_response] == 0).any(dim=1)
        print(f"log-prob gap rlhfkit − TRL (GRPOTrainer's forward), {int(padded.sum())} of {len(padded)} rows "
              "left-padded:")
        print(f"  policy:    rows without padding {gap(ro.logprobs, logp, ~padded):.1e}, "
              f"left-padded rows {gap(ro.logprobs, logp, padded):.1e}")
        print(f"  reference: rows without padding {gap(ro.ref_logprobs, ref, ~padded):.1e}, "
              f"left-padded rows {gap(ro.ref_logprobs, ref, padded):.1e}")
        print("  (TRL's training forward passes no position ids: on GPT-2 a left-padded row's tokens sit one position "
              "further than in generate(), which counts positions from the attention mask, as rlhfkit's passes do)")

        ro, advantages = rollout(model, tokenizer, equal, a.k, a.max_new_tokens)
        # completions cut to different lengths (as if they had ended), so the loss types average differently
        A = ro.n_response
        keep = torch.arange(A)[None, :] < torch.tensor([A, 5, 17, A, 1, 9, 26, 3] * 4)[: len(ro.prompts), None]
        cut = ro.response_mask * keep
        attention = ro.attention_mask.clone()
        attention[:, -A:] = cut
        ro = dataclasses.replace(ro, response_mask=cut, attention_mask=attention)
        logp, ref = trl_logprobs(ro)
        rows = torch.ones(len(ro.prompts), dtype=torch.bool)
        worst = max(gap(ro.logprobs, logp, rows), gap(ro.ref_logprobs, ref, rows))
        print(f"\nprompts of {common} tokens each (no padding), {len(ro.prompts)} completions, "
              f"{int(ro.response_mask.sum())} tokens: log-prob gap policy {gap(ro.logprobs, logp, rows):.1e}, "
              f"reference {gap(ro.ref_logprobs, ref, rows):.1e}")
        ro = dataclasses.replace(ro, ref_logprobs=ref * ro.response_mask)  # the same reference on both sides

        noise = torch.randn(logp.shape, generator=torch.Generator().manual_seed(2)) * 0.3
        print("\n| loss type | ratio per | β | KL × ratio | ε_high | old log-probs | loss rlhfkit | loss TRL | "
              "abs. Δ loss | max rel. Δ grad |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        settings = (("token", 0.05, False, None, False), ("token", 0.05, True, None, False),
                    ("token", 0.05, False, None, True), ("token", 0.05, True, None, True), ("token", 0.0, False, 0.28, True),
                    ("sequence", 0.05, False, None, True), ("sequence", 0.05, True, None, True),
                    ("sequence", 0.0, False, 0.28, True))
        for loss_type in ("dapo", "grpo", "dr_grpo"):
            for level, beta, corrected, eps_high, shifted in settings:
                old = logp + noise if shifted else logp  # shifted: ratios around e^±0.3, so the clip bites
                trainer.beta, trainer.loss_type, trainer.epsilon_high = beta, loss_type, eps_high or 0.2
                trainer.importance_sampling_level, trainer.args.use_bias_correction_kl = level, corrected
                loss_t, grad_t = theirs(trainer, trl_inputs(ro, advantages, old, ref))
                loss_o, grad_o = ours(model, ro, advantages, old, beta=beta, loss_type=loss_type,
                                      clip_eps_high=eps_high, kl_bias_correction=corrected, k=a.k,
                                      max_tokens=a.max_new_tokens, level=level)
                rel = grad_gap(grad_o, grad_t)
                worst = max(worst, abs(loss_o - loss_t), rel)
                print(f"| {loss_type} | {level} | {beta} | {'yes' if corrected else 'no'} | {eps_high or '= ε'} | "
                      f"{'shifted' if shifted else 'current'} | {loss_o:+.6f} | {loss_t:+.6f} | "
                      f"{abs(loss_o - loss_t):.1e} | {rel:.1e} |")
        rloo_note(a, model, tokenizer, ro, advantages, logp, out, every)

        # a control: one setting different on the two sides must show, or the comparison could not fail
        trainer.beta, trainer.loss_type, trainer.epsilon_high, trainer.args.use_bias_correction_kl = 0.05, "dapo", 0.2, True
        trainer.importance_sampling_level = "token"
        _, grad_t = theirs(trainer, trl_inputs(ro, advantages, logp, ref))
        _, grad_o = ours(model, ro, advantages, logp, beta=0.05, loss_type="dapo", clip_eps_high=None,
                         kl_bias_correction=False, k=a.k, max_tokens=a.max_new_tokens)
        rel = grad_gap(grad_o, grad_t)
        print(f"\ncontrol, TRL with the KL × ratio and rlhfkit without (on policy): max rel. Δ grad {rel:.1e} "
              f"({'shows' if rel > TOLERANCE else 'DOES NOT SHOW: the check is blind'})")
        worst = worst if rel > TOLERANCE else float("inf")
    return worst


def rloo_note(a, model, tokenizer, ro, advantages, logp, out, prompts) -> None:
    """Not gated: TRL's RLOOTrainer clips a sequence's ratio exp(Σ_t log π − Σ_t log π_old) and averages over
    sequences; rlhfkit's RLOO clips per token, as its PPO. On policy (one epoch of one minibatch, the speed bench's
    setting) their gradients are proportional: rlhfkit's with loss_type dr_grpo is TRL's / max_new_tokens."""
    import torch
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    cfg = RLOOConfig(output_dir=out, per_device_train_batch_size=len(ro.prompts), num_generations=a.k,
                     max_completion_length=a.max_new_tokens, beta=0.0, use_cpu=True, bf16=False, report_to="none",
                     gradient_checkpointing=False, save_strategy="no", disable_tqdm=True)
    trainer = RLOOTrainer(model=model.lm, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=cfg,
                          train_dataset=Dataset.from_dict({"prompt": prompts[:64]}), processing_class=tokenizer)
    trainer.model.eval()
    inputs = trl_inputs(ro, advantages, logp, logp)
    inputs["old_logps"] = (logp * ro.response_mask).sum(1)
    _, grad_t = theirs(trainer, inputs)
    _, grad_o = ours(model, ro, advantages, logp, beta=None, loss_type="dr_grpo", clip_eps_high=None,
                     kl_bias_correction=False, k=a.k, max_tokens=a.max_new_tokens)
    rel = grad_gap(grad_o, grad_t, scale=a.max_new_tokens)
    print(f"\nRLOO, on policy: rlhfkit's gradient (loss_type dr_grpo) × max_new_tokens against TRL's RLOOTrainer: "
          f"max rel. Δ {rel:.1e} (TRL clips a sequence-level ratio, rlhfkit per token; off policy they part)")


def dpo_parity(a) -> float:
    """Part 3 of the module doc; the largest difference."""
    import json

    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from rlhfkit.models.policy import build_policy
    from rlhfkit.train.dpo import dpo_step, encode, pair_batch, reference_logps
    from rlhfkit.train.ppo import seed_everything

    seed_everything(0)
    model, tokenizer = build_policy(str(Path(a.tiny) / "small"), lora_r=16, lora_alpha=32, device="cpu")
    tokenizer.chat_template = None
    lines = (Path(a.tiny) / "pairs.jsonl").read_text().splitlines()
    pairs = [json.loads(line) for line in lines if line.strip()][: a.pairs]
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [tuple(encode(tokenizer, x["prompt"], x[key], eos_id=eos, system_prompt="", max_length=128)
                     for key in ("chosen", "rejected")) for x in pairs]
    worst = 0.0
    print(f"\nDPO: {len(pairs)} of the peers' pairs, rlhfkit's shared-prompt batch (each prompt once, a 4-D mask) "
          "against TRL's DPOTrainer (prompt + reply rows)\n")
    print("| loss | β | loss rlhfkit | loss TRL | abs. Δ loss | max rel. Δ grad |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as out:
        cfg = DPOConfig(output_dir=out, per_device_train_batch_size=len(pairs), beta=0.1, use_cpu=True, bf16=False,
                        report_to="none", gradient_checkpointing=False, save_strategy="no", disable_tqdm=True,
                        max_length=None)
        data = Dataset.from_dict({k: [x[k] for x in pairs] for k in ("prompt", "chosen", "rejected")})
        # before the adapter moves off zero: TRL keeps a copy of the adapter it is given as its reference ("ref"),
        # which with B = 0 is the base, rlhfkit's reference
        trainer = DPOTrainer(model=model.lm, args=cfg, train_dataset=data, processing_class=tokenizer)
        trainer.model.eval()
        move_off_zero(model.lm)
        inputs = trainer.data_collator([{"prompt_ids": c[0], "chosen_ids": c[1], "rejected_ids": r[1]} for c, r in encoded])
        idx = list(range(len(pairs)))
        for loss_type, beta in (("sigmoid", 0.1), ("sigmoid", 0.5), ("ipo", 0.1)):
            trainer.beta, trainer.loss_types, trainer.loss_weights = beta, [loss_type], [1.0]
            trainer.model.zero_grad(set_to_none=True)
            loss_t = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
            loss_t.backward()
            grad_t = grads(model.lm)
            average = loss_type == "ipo"
            ref = reference_logps(model, encoded, batch_size=len(pairs), pad_id=pad, device="cpu", average=average,
                                  shared_dtype=torch.float32)
            batch = pair_batch(encoded, idx, pad, "cpu", torch.float32)
            params = [p for p in model.parameters() if p.requires_grad]
            stats = dpo_step(model, torch.optim.SGD(params, lr=0.0), batch, ref, torch.ones(len(pairs)), beta=beta,
                             loss_type=loss_type, label_smoothing=0.0, max_grad_norm=1e30, step=0)
            rel = grad_gap(grads(model.lm), grad_t)
            diff = abs(stats["dpo/loss"] - loss_t.item())
            worst = max(worst, diff, rel)
            print(f"| {loss_type} | {beta} | {stats['dpo/loss']:+.6f} | {loss_t.item():+.6f} | {diff:.1e} | {rel:.1e} |")
    print("\n(TRL 1.16's sigmoid loss ignores label_smoothing — only its robust, aot and exo_pair losses read it — so "
          "rlhfkit's sigmoid with label smoothing, conservative DPO, has no TRL twin to compare with.)")
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", default=str(Path.home() / "scratch" / "trl-tiny"), help="folder of make_tiny.py's models")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--pairs", type=int, default=8, help="DPO: the peers' first N pairs")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    worst = max(grpo_parity(a), dpo_parity(a))
    print(f"\nlargest difference {worst:.1e} ({'within' if worst <= TOLERANCE else 'OVER'} {TOLERANCE:g})")
    sys.exit(0 if worst <= TOLERANCE else 1)


if __name__ == "__main__":
    main()
