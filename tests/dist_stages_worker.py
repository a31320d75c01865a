"""One rank of tests/test_dist_stages.py: ``python tests/dist_stages_worker.py TINY_MODEL OUT STRATEGY`` under
torchrun's environment. One launch serves every check of train-rm, dpo and sft (starting ranks is the slow part):

1. one step of each trainer's shipped step function on this rank's share of a global batch of 3 (shares of 1 and 2
   rows: the uneven split of an epoch's last batch), saved to OUT/rank{r}.pt with the loss and the full gradients;
2. DPO's reference log-probs of 5 pairs (each rank computes ⌈5/2⌉, padded, then all are gathered);
3. the stages end to end (run_dpo and run_ppo straight and stopped + resumed, run_sft, run_train_rm) on OUT/pairs.jsonl and
   OUT/revisions.jsonl, which the test writes first.
Not a test module itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from rlhfkit.config import DpoConfig, PPOConfig, RewardConfig, SftConfig, load_config
from rlhfkit.data.records import Pair
from rlhfkit.generate import eos_ids
from rlhfkit.models.load import add_lora, load_policy
from rlhfkit.models.policy import build_policy
from rlhfkit.models.reward import RewardModel
from rlhfkit.train import dist
from rlhfkit.train import dpo as D
from rlhfkit.train.ppo import seed_everything
from rlhfkit.train.reward import _disable_dropout, encode_pairs, train_step
from rlhfkit.train.sft import encode_example, sft_step

from run_checks import PAIRS  # beside this script: on sys.path when it runs and when it is imported

WEIGHTS = [1.0, 0.5, 2.0]
"""The global batch of the step checks: pairs / examples 0, 1, 2 with these weights (rank 0 gets row 0, rank 1
rows 1 and 2), so an unweighted or per-rank mean would differ from one process's."""


def full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()  # FSDP2: shard → whole tensor


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: full(p.grad) for n, p in model.named_parameters() if p.grad is not None}


def dpo_policy(model_dir: str, strategy: str | None):
    """The LoRA policy with B ≠ 0 (else policy = reference and only B has gradients), wrapped for ``strategy``."""
    seed_everything(0)
    model, tok = build_policy(model_dir, lora_r=4, lora_alpha=8, device="cpu", lora_layers=0)
    torch.manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    if strategy == "fsdp" and dist.world_size() > 1:
        model.prefix.n_frozen = 0
    wrapped = dist.wrap(model, strategy or "ddp", "cpu", forward_methods=("reference_logits", "frozen_prefix"),
                        find_unused=True)
    return model, wrapped, tok


def dpo_part(model_dir: str, strategy: str | None) -> dict:
    model, wrapped, tok = dpo_policy(model_dir, strategy)
    kw = dict(eos_id=eos_ids(tok, model.lm)[0], system_prompt="", max_length=48)
    encoded = [(D.encode(tok, p, c, **kw), D.encode(tok, p, r, **kw)) for p, c, r in PAIRS[:5]]
    ref = D.reference_logps(model, encoded, batch_size=2, pad_id=tok.pad_token_id, device="cpu", average=False)
    idx = dist.shard([0, 1, 2], even=False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    stats = D.dpo_step(model, optimizer, D.pair_batch(encoded, idx, tok.pad_token_id, "cpu"), ref[idx],
                       torch.tensor([WEIGHTS[i] for i in idx]), beta=0.1, loss_type="sigmoid", label_smoothing=0.0,
                       max_grad_norm=1e6, step=0, wrapped=wrapped)
    return {"ref": ref, "stats": stats, "grads": grads(model)}


def sft_part(model_dir: str, strategy: str | None) -> dict:
    lm, tok = load_policy(model_dir, device="cpu")
    eos = eos_ids(tok, lm)[0]
    torch.manual_seed(0)
    lm = add_lora(lm, r=4, alpha=8, dropout=0.0)
    wrapped = dist.wrap(lm, strategy or "ddp", "cpu")
    rows = [encode_example(tok, p, c, eos, 64) for p, c, _ in PAIRS[:3]]  # replies of 6 to 9 tokens
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    loss, tokens = sft_step(lm, optimizer, dist.shard(rows, even=False), pad_id=tok.pad_token_id, step=0,
                            wrapped=wrapped)
    return {"loss": loss, "tokens": tokens, "grads": grads(lm)}


def rm_part(model_dir: str, strategy: str | None) -> dict:
    rm = RewardModel.from_backbone(model_dir, max_length=64, lora_r=0, seed=0)  # full fine-tuning, last-token head
    _disable_dropout(rm.model)
    runner = dist.wrap(rm.net, strategy or "ddp", "cpu", find_unused=True)
    pairs = [Pair(prompt=p, chosen=c, rejected=r, weight=w) for (p, c, r), w in zip(PAIRS[:3], WEIGHTS)]
    data = encode_pairs(rm, pairs, 0.0, 0)
    params = [p for p in rm.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    loss, correct = train_step(rm, *data.take(dist.shard([0, 1, 2], even=False)), optimizer, scheduler, params, runner)
    return {"loss": loss, "correct": correct, "grads": grads(rm.net)}


def configs(model_dir: str, out: Path, strategy: str) -> dict:
    """The end-to-end runs' configs (the test runs the same with one process)."""
    common = dict(model=model_dir, device="cpu", seed=0, strategy=strategy)
    return {
        "dpo": lambda name, **kw: load_config(DpoConfig, None, {
            **common, "run_dir": str(out / name), "pairs": str(out / "pairs.jsonl"), "batch_size": 2, "lr": 5e-2,
            "lora_r": 4, "lora_alpha": 8, "lora_layers": 0, "max_length": 48, "dtype": "float32", **kw}),
        "ppo": lambda name, **kw: load_config(PPOConfig, None, {
            **common, "run_dir": str(out / name), "reward_model": "gold", "batch_size": 4, "minibatch_size": 2,
            "ppo_epochs": 1, "max_new_tokens": 4, "sample_every": 0, "temperature": 1.0,
            "penalize_missing_eos": False, "lora_r": 4, "lora_alpha": 8, "lora_layers": 0, **kw}),
        "sft": load_config(SftConfig, None, {**common, "run_dir": str(out / "sft"),
                                             "data": str(out / "revisions.jsonl"), "epochs": 1, "batch_size": 4,
                                             "lr": 1e-2, "lora_r": 4, "lora_alpha": 8, "max_length": 64}),
        "rm": load_config(RewardConfig, None, {**{k: v for k, v in common.items() if k != "model"},
                                               "backbone": model_dir, "run_dir": str(out / "rm"),
                                               "pairs": str(out / "pairs.jsonl"), "epochs": 1, "batch_size": 2,
                                               "lr": 1e-3, "eval_fraction": 0.34, "lora_r": 4, "dtype": "float32"}),
    }


def main(model_dir: str, out: str, strategy: str) -> None:
    from rlhfkit.train.reward_stage import run_train_rm
    from rlhfkit.train.ppo import run_ppo
    from rlhfkit.train.sft import run_sft

    world = dist.init("cpu", timeout_s=60)
    out = Path(out)
    result = {"dpo": dpo_part(model_dir, strategy), "sft": sft_part(model_dir, strategy),
              "rm": rm_part(model_dir, strategy)}
    cfg = configs(model_dir, out, strategy)
    D.run_dpo(cfg["dpo"]("dpo_straight", epochs=2, save_every=100))
    D.run_dpo(cfg["dpo"]("dpo_resumed", epochs=1, save_every=1))
    D.run_dpo(cfg["dpo"]("dpo_resumed", epochs=2, save_every=1, resume=True))
    run_ppo(cfg["ppo"]("ppo_straight", iterations=2, save_every=100))  # checkpoints: FSDP's sharded (dcp/)
    run_ppo(cfg["ppo"]("ppo_resumed", iterations=1))
    run_ppo(cfg["ppo"]("ppo_resumed", iterations=2, resume=True))
    result["sft_run"] = run_sft(cfg["sft"], progress=False)
    result["rm_run"] = run_train_rm(cfg["rm"], progress=False)
    torch.save(result, out / f"rank{world.rank}.pt")
    dist.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
