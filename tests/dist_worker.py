"""One rank of tests/test_dist.py: ``python tests/dist_worker.py TINY_MODEL OUT STRATEGY`` under torchrun's
environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Runs the shipped PPO code on this rank's share of a
global batch and saves what the test compares with one process (OUT/rank{r}.pt). Not a test module itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from rlhfkit.config import PPOConfig, load_config
from rlhfkit.feedback.gold import GoldScorer
from rlhfkit.generate import sample
from rlhfkit.models.load import format_prompt, load_policy
from rlhfkit.models.policy import build_policy
from rlhfkit.train import dist
from rlhfkit.train.kl_control import FixedKLController
from rlhfkit.train.ppo import load_checkpoint, ppo_step, save_checkpoint, seed_everything

PROMPTS = ["hello the cat", "why does the big dog run so often today my friend?", "what is a good book?", "hi"]
HP = dict(run_dir="unused", reward_model="gold", batch_size=4, minibatch_size=4, ppo_epochs=1, max_new_tokens=6,
          temperature=1.0, penalize_missing_eos=False, lr=1e-2, max_grad_norm=1e6, device="cpu", lora_r=4,
          lora_alpha=8, lora_layers=0)
"""One epoch, one global minibatch (so the gradient left in .grad is the whole batch's), no clipping."""


def policy(model_dir: str, strategy: str, seed: int = 0):
    seed_everything(seed)  # the same LoRA init on every rank (and in the one-process reference)
    model, tok = build_policy(model_dir, lora_r=HP["lora_r"], lora_alpha=HP["lora_alpha"], device="cpu")
    if strategy == "fsdp":
        model.prefix.n_frozen = 0
    wrapped = dist.wrap(model, strategy, "cpu", forward_methods=("reference_logits", "frozen_prefix"))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=HP["lr"], eps=1e-5)
    return model, wrapped, tok, optimizer


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP2: a DTensor shard → the whole tensor


def main(model_dir: str, out: str, strategy: str) -> None:
    world = dist.init("cpu", timeout_s=60)
    hp = load_config(PPOConfig, None, {**HP, "model": model_dir, "strategy": strategy})
    model, wrapped, tok, optimizer = policy(model_dir, strategy)
    kl_ctl, score = FixedKLController(0.1), GoldScorer().score
    mine = dist.shard(PROMPTS)
    # iteration 0 on this rank's half of the global batch (the shipped step: sampling, global norm and whitening,
    # DDP / FSDP update)
    r0 = ppo_step(model, tok, optimizer, kl_ctl, mine, score, None, iteration=0, seed=0, hp=hp, norm=None, wrapped=wrapped)
    ro = r0.rollout
    grads = {n: full(p.grad).clone() for n, p in model.named_parameters() if p.grad is not None}
    # uneven decode: rank r steps 2 + 5r times; then a collective forward must still line up (no hang)
    with dist.gathered(model):
        uneven = sample(model.lm, tok, [format_prompt(tok, "hi", None)], max_new_tokens=2 + 5 * world.rank,
                        temperature=1.0).response_ids.shape[1]
    # the reference (adapters off) after a step moved the adapters vs a fresh plain load of the base
    ids, mask, A = ro.input_ids, ro.attention_mask, ro.n_response
    ref = model.reference_logits(ids, mask, A, 1.0)
    with torch.no_grad():
        pol, _ = wrapped(ids, mask, A, 1.0)
        base_lm, _ = load_policy(model_dir, device="cpu")
        from rlhfkit.models.policy import position_ids

        base = base_lm(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits[:, -A - 1 : -1].float()
    # checkpoint round trip: save, load into a policy initialised differently, then iteration 1 on both
    ckpt = Path(out) / "ckpt"
    config = {"model": model_dir, "lora_r": HP["lora_r"]}
    save_checkpoint(ckpt, wrapped, optimizer, kl_ctl, ro.norm, 1, config, [r0.stats], None)
    model2, wrapped2, _, optimizer2 = policy(model_dir, strategy, seed=1)
    kl2 = FixedKLController(0.5)
    load_checkpoint(ckpt, wrapped2, optimizer2, kl2)
    r1 = ppo_step(model, tok, optimizer, kl_ctl, mine, score, None, iteration=1, seed=0, hp=hp, norm=ro.norm, wrapped=wrapped)
    r1b = ppo_step(model2, tok, optimizer2, kl2, mine, score, None, iteration=1, seed=0, hp=hp, norm=ro.norm, wrapped=wrapped2)
    after, after2 = dist.trainable_state(wrapped), dist.trainable_state(wrapped2)
    if world.main:
        same = max((after[k] - after2[k]).abs().max().item() for k in after)
    else:
        same = None
    P = ids.shape[1] - A
    torch.save({
        "stats0": r0.stats, "grads": grads, "prompts": mine, "texts": ro.texts, "raw": ro.raw_scores, "scores": ro.scores,
        "advantages": ro.advantages, "kl": ro.kl, "logprobs": ro.logprobs, "prompt_ids": ids[:, :P],
        "prompt_mask": mask[:, :P], "response_ids": ids[:, P:], "ended": ro.ended, "sampler_logprobs": ro.sampler_logprobs,
        "uneven": uneven, "ref_vs_base": (ref - base).abs().max().item(), "policy_vs_base": (pol - base).abs().max().item(),
        "stats1": r1.stats, "stats1_restored": r1b.stats, "trained_after_vs_restored": same,
        "ckpt_files": sorted(p.name for p in ckpt.iterdir()) if world.main else None,
    }, Path(out) / f"rank{world.rank}.pt")
    dist.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
