"""Reward-model training and scoring speed on CPU: rlhfkit vs TRL's RewardTrainer, one run.

    python bench/reward.py                       # HH-RLHF harmless dev set if present, else synthetic pairs
    python bench/reward.py --trl-python PATH     # TRL's venv python (or $RLHFKIT_TRL_PYTHON)
    python bench/reward.py --limit 400 --trl-variant both   # a shorter run, TRL with and without its defaults

Both sides train the same backbone (default: all-MiniLM-L6-v2 from PyPI) for the same epochs on
the same training pairs (80 % of the prompts, split by rlhfkit's seeded split_by_prompt), with the
same batch size, max length, learning rate, warm-up, fp32, dropout off and gradient clipping at 1.
TRL gets the very token ids rlhfkit built (its ``chosen_ids``/``rejected_ids`` pre-tokenised
dataset form), so both see identical inputs; no pair exceeds max_length, so TRL filters none out.
What differs is the training loop itself:

- rlhfkit: one forward pass over the 2B rows of a batch, batches of similar length (little
  padding), no gradient checkpointing.
- TRL 1.16 RewardTrainer: also one forward over chosen+rejected; its defaults otherwise, i.e.
  random batches (padding to the longest row in each) and gradient checkpointing on; bf16 OFF
  (TRL's default is bf16=True, here fp32 like rlhfkit). ``--trl-variant tuned`` (or ``both``) runs
  it with gradient checkpointing off and ``train_sampling_strategy="group_by_length"`` too.

pairs/s = training pairs × epochs / wall time of the training loop (tokenisation, evaluation and
saving excluded on both sides); "per CPU-second" divides by the process's CPU time instead, a
figure less swayed by other work on a shared machine (both sides run the same torch and threads).
Scoring texts/s = held-out texts through the trained model in batches of 64 rows, no gradient,
tokenisation excluded: rlhfkit's ``RewardModel.raw_scores`` (length-sorted
batches) vs a plain transformers forward in input order (what TRL offers: it has no scoring API).
Held-out accuracy: ties count ½, same held-out pairs for both.

TRL runs as a subprocess in its own venv (see ../shared/peers/trl/README.md for the install);
this file is also the worker script (``--trl-worker JOB``), importing nothing of rlhfkit then.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HH_DEV = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless" / "dev.jsonl.gz"
DEFAULT_TRL_PYTHON = Path.home() / "scratch" / "trlenv" / "bin" / "python"


def _offline_env() -> None:
    for k, v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                 ("WANDB_DISABLED", "true"), ("TRL_EXPERIMENTAL_SILENCE", "1")):
        os.environ.setdefault(k, v)


def _loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def _accuracy(r_c: list[float], r_r: list[float]) -> float:
    # the worker cannot import rlhfkit: same rule as rlhfkit.train.reward.pairwise_accuracy (ties ½)
    return sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(r_c, r_r)) / len(r_c)


# ---------------------------------------------------------------------------------------------
# TRL worker (runs in TRL's venv)
# ---------------------------------------------------------------------------------------------


def trl_worker(job_path: str) -> None:
    _offline_env()
    job = json.loads(Path(job_path).read_text())
    import importlib.metadata as md

    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback, set_seed
    from trl import RewardConfig, RewardTrainer

    torch.set_num_threads(job["threads"])
    set_seed(job["seed"])
    tok = AutoTokenizer.from_pretrained(job["backbone"])
    model = AutoModelForSequenceClassification.from_pretrained(job["backbone"], num_labels=1, dtype=torch.float32)
    rows = [{"chosen_ids": c, "rejected_ids": r} for c, r in job["train"]]
    if job["group_by_length"]:  # the sampler reads a "length" column, which must survive column pruning
        rows = [{**row, "length": max(len(row["chosen_ids"]), len(row["rejected_ids"]))} for row in rows]
    train_ds = Dataset.from_list(rows)

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times, self.last = [], None

        def on_train_begin(self, args, state, control, **kw):
            self.last = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.times.append(now - self.last)
            self.last = now

    timer = StepTimes()
    extra = {"train_sampling_strategy": "group_by_length", "remove_unused_columns": False} if job["group_by_length"] else {}
    with tempfile.TemporaryDirectory() as out:
        cfg = RewardConfig(
            output_dir=out, per_device_train_batch_size=job["batch_size"], num_train_epochs=job["epochs"],
            learning_rate=job["lr"], warmup_steps=job["warmup_steps"], lr_scheduler_type="linear",
            weight_decay=0.0, max_grad_norm=1.0, max_length=job["max_length"],
            gradient_checkpointing=job["gradient_checkpointing"], bf16=job["bf16"], use_cpu=True, seed=job["seed"],
            report_to="none", save_strategy="no", logging_steps=10_000, disable_tqdm=True, dataloader_num_workers=0,
            **extra,
        )
        trainer = RewardTrainer(model=model, args=cfg, train_dataset=train_ds, processing_class=tok, callbacks=[timer])
        kept = len(trainer.train_dataset)
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.train()
        train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    model = trainer.model
    model.eval()
    rows = [c for c, _ in job["eval"]] + [r for _, r in job["eval"]]
    pad = tok.pad_token_id
    rewards: list[float] = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(rows), 64):
            chunk = rows[lo : lo + 64]
            T = max(len(r) for r in chunk)
            ids = torch.tensor([r + [pad] * (T - len(r)) for r in chunk])
            mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in chunk])
            rewards += model(input_ids=ids, attention_mask=mask).logits.squeeze(-1).tolist()
    score_s = time.perf_counter() - t0
    n = len(job["eval"])
    times = timer.times[3:] or timer.times
    result = {
        "trl": md.version("trl"), "transformers": md.version("transformers"), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "pairs_kept": kept, "train_s": train_s, "train_cpu_s": train_cpu_s,
        "pairs_per_s": kept * job["epochs"] / train_s, "pairs_per_cpu_s": kept * job["epochs"] / train_cpu_s,
        "steps": len(timer.times),
        "median_step_s": sorted(times)[len(times) // 2], "heldout_accuracy": _accuracy(rewards[:n], rewards[n:]),
        "score_texts_per_s": len(rows) / score_s, "loadavg": _loadavg(),
    }
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# Driver (rlhfkit's venv)
# ---------------------------------------------------------------------------------------------


def synthetic_pairs(n: int, seed: int = 0):
    """Pairs of varied length where the chosen reply is polite and on-topic, the rejected one rude."""
    import random

    from rlhfkit.data.records import Pair

    rng = random.Random(seed)
    words = ("cat dog bird house tree river sun moon city road friend teacher child book music idea question "
             "answer bright dark warm cold today tomorrow").split()
    pairs = []
    for i in range(n):
        topic = rng.choice(words)
        prompt = f"Tell me about the {topic}. " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 60)))
        body = " ".join(rng.choice(words) for _ in range(rng.randint(3, 80)))
        pairs.append(Pair(prompt=prompt, chosen=f"Happy to help: the {topic} {body}. Thank you for asking!",
                          rejected=f"Whatever. {body} is a stupid question.", source="synthetic"))
    return pairs


def run_trl(python: str, job: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
        path = f.name
    try:
        proc = subprocess.run([python, str(Path(__file__).resolve()), "--trl-worker", path], capture_output=True,
                              text=True)
    finally:
        os.unlink(path)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"TRL worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trl-worker", help=argparse.SUPPRESS)
    ap.add_argument("--trl-python", default=os.environ.get("RLHFKIT_TRL_PYTHON", str(DEFAULT_TRL_PYTHON)),
                    help="python of a venv with trl 1.16 (default $RLHFKIT_TRL_PYTHON or ~/scratch/trlenv)")
    ap.add_argument("--trl-variant", default="default", choices=["default", "tuned", "both", "none"],
                    help="TRL runs: its defaults (grad. checkpointing, random batches), tuned (neither), both, none")
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--data", default=str(HH_DEV), help="HH-RLHF JSONL(.gz); synthetic pairs when absent")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N pairs (0 = all)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="", help="append the results as one JSON line to this file")
    a = ap.parse_args()
    if a.trl_worker:
        trl_worker(a.trl_worker)
        return
    _offline_env()

    import torch

    from rlhfkit.data.formats import load_pairs
    from rlhfkit.models.load import resolve
    from rlhfkit.train.reward import RewardModel, check_pairs, split_by_prompt, train_reward_model

    torch.set_num_threads(a.threads)
    if Path(a.data).exists():
        skipped: list = []
        pairs = load_pairs(f"hh:{a.data}", skipped=skipped)
        source = f"HH-RLHF harmless-base {Path(a.data).name} ({len(skipped)} malformed rows skipped)"
    else:
        pairs = synthetic_pairs(1500, a.seed)
        source = f"synthetic ({a.data} absent)"
    if a.limit:
        pairs = pairs[: a.limit]
    pairs = check_pairs(pairs)
    train_idx, eval_idx = split_by_prompt(pairs, 0.2, a.seed)
    print(f"data: {source}: {len(pairs)} pairs, {len(train_idx)} train / {len(eval_idx)} held-out (split by prompt)")
    print(f"settings: backbone {a.backbone}, batch {a.batch_size} pairs, max_length {a.max_length}, "
          f"{a.epochs} epoch(s), lr {a.lr}, warm-up {a.warmup_ratio}, fp32, {a.threads} threads; load {_loadavg()}")
    results: dict = {"data": source, "pairs": len(pairs), "train_pairs": len(train_idx), "heldout_pairs": len(eval_idx),
                     "batch_size": a.batch_size, "max_length": a.max_length, "epochs": a.epochs, "lr": a.lr,
                     "threads": a.threads, "backbone": a.backbone}

    # rlhfkit
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rm"
        report = train_reward_model(pairs, backbone=a.backbone, out_dir=out, epochs=a.epochs, batch_size=a.batch_size,
                                    lr=a.lr, max_length=a.max_length, eval_fraction=0.2, seed=a.seed, patience=0,
                                    warmup_ratio=a.warmup_ratio, progress=False, device="cpu")
        rm = RewardModel.load(out, device="cpu")
        held = [pairs[i] for i in eval_idx]
        prompts = [p.prompt for p in held] * 2
        completions = [p.chosen for p in held] + [p.rejected for p in held]
        rows = rm.encode(prompts, completions)
        rm.raw_scores(rows[:64])  # warm-up
        t0 = time.perf_counter()
        rm.raw_scores(rows, batch_size=64)
        score_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rm.score(prompts, completions, batch_size=64)
        score_tok_s = time.perf_counter() - t0
    ours = {"pairs_per_s": report["pairs_per_s"], "train_s": report["train_seconds"], "steps": report["steps"],
            "pairs_per_cpu_s": len(train_idx) * a.epochs / report["train_cpu_seconds"],
            "heldout_accuracy": report["heldout"]["accuracy"], "heldout_ece": report["heldout"]["ece"],
            "score_texts_per_s": len(rows) / score_s, "score_texts_per_s_incl_tokenize": len(rows) / score_tok_s,
            "loadavg": _loadavg()}
    results["rlhfkit"] = ours
    print(f"rlhfkit: {ours['pairs_per_s']:.1f} pairs/s ({ours['pairs_per_cpu_s']:.2f} per CPU-second; "
          f"{ours['train_s']:.0f} s, {ours['steps']} steps), held-out "
          f"accuracy {ours['heldout_accuracy']:.3f}, scoring {ours['score_texts_per_s']:.0f} texts/s "
          f"({ours['score_texts_per_s_incl_tokenize']:.0f} with tokenisation); load {ours['loadavg']}", flush=True)

    # Work per epoch, independent of other load on the machine: tokens in the padded (2B, T) batches.
    import random

    from rlhfkit.train.reward import length_grouped_batches

    enc_rm = RewardModel.from_backbone(a.backbone, max_length=a.max_length, device="cpu")
    enc_c = enc_rm.encode([p.prompt for p in pairs], [p.chosen for p in pairs])
    enc_r = enc_rm.encode([p.prompt for p in pairs], [p.rejected for p in pairs])
    pair_len = [max(len(enc_c[i]["input_ids"]), len(enc_r[i]["input_ids"])) for i in train_idx]

    def padded_tokens(batches: list[list[int]]) -> int:
        return sum(2 * len(b) * max(pair_len[i] for i in b) for b in batches)

    grouped = padded_tokens(length_grouped_batches(pair_len, a.batch_size, random.Random(a.seed * 1_000_003)))
    shuffled = []
    for s in range(5):
        order = list(range(len(pair_len)))
        random.Random(s).shuffle(order)
        shuffled.append(padded_tokens([order[j : j + a.batch_size] for j in range(0, len(order), a.batch_size)]))
    real = sum(len(enc_c[i]["input_ids"]) + len(enc_r[i]["input_ids"]) for i in train_idx)
    results["padded_tokens_per_epoch"] = {"real": real, "length_grouped": grouped, "random_mean_of_5": sum(shuffled) / 5}
    print(f"tokens per epoch incl. padding: length-grouped batches {grouped:,}, random batches "
          f"{sum(shuffled) / 5:,.0f} (without padding: {real:,})")

    # TRL, on the very same token ids
    variants = {"default": [("default", True, False)], "tuned": [("tuned", False, True)],
                "both": [("default", True, False), ("tuned", False, True)], "none": []}[a.trl_variant]
    if variants and not Path(a.trl_python).exists():
        print(f"TRL not available: no python at {a.trl_python} (set --trl-python or RLHFKIT_TRL_PYTHON; "
              "install per ../shared/peers/trl/README.md)")
        variants = []
    if variants:
        steps = -(-len(train_idx) // a.batch_size) * a.epochs
        ids = [[c["input_ids"], r["input_ids"]] for c, r in zip(enc_c, enc_r)]
        job = {"backbone": resolve(a.backbone), "train": [ids[i] for i in train_idx], "eval": [ids[i] for i in eval_idx], "batch_size": a.batch_size,
               "epochs": a.epochs, "lr": a.lr, "warmup_steps": int(a.warmup_ratio * steps), "max_length": a.max_length,
               "seed": a.seed, "threads": a.threads, "bf16": False}
    for name, grad_ckpt, grouped in variants:
        try:
            trl = run_trl(a.trl_python, {**job, "gradient_checkpointing": grad_ckpt, "group_by_length": grouped})
        except RuntimeError as exc:
            print(f"TRL ({name}) failed: {exc}")
            continue
        trl["settings"] = {"gradient_checkpointing": grad_ckpt, "group_by_length": grouped, "bf16": False}
        results[f"trl_{name}"] = trl
        print(f"TRL {trl['trl']} ({name}: gradient checkpointing {'on' if grad_ckpt else 'off'}, "
              f"{'length-grouped' if grouped else 'random'} batches): {trl['pairs_per_s']:.1f} pairs/s "
              f"({trl['pairs_per_cpu_s']:.2f} per CPU-second; {trl['train_s']:.0f} s, {trl['steps']} steps, "
              f"{trl['pairs_kept']} pairs kept), held-out accuracy "
              f"{trl['heldout_accuracy']:.3f}, scoring {trl['score_texts_per_s']:.0f} texts/s; load {trl['loadavg']}",
              flush=True)
        print(f"  rlhfkit / TRL ({name}): training {ours['pairs_per_s'] / trl['pairs_per_s']:.2f}× "
              f"(per CPU-second {ours['pairs_per_cpu_s'] / trl['pairs_per_cpu_s']:.2f}×), "
              f"scoring {ours['score_texts_per_s'] / trl['score_texts_per_s']:.2f}×")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
