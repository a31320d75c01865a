"""Reward-model training and scoring speed on CPU: rlhfkit vs TRL's RewardTrainer, one run.

    python bench/reward.py                        # HH-RLHF harmless dev set if present, else synthetic pairs
    python bench/reward.py --trl-python PATH      # TRL's venv python (or $RLHFKIT_TRL_PYTHON)
    python bench/reward.py --trl-variant both --trl-accuracy   # longer: TRL tuned too, TRL on the full split

Two parts:

1. Speed, side by side, in alternating rounds (best round of each side reported, every round
   printed: other work on a shared machine only ever slows a round down). Both sides train the
   same backbone (default all-MiniLM-L6-v2 from PyPI) on the same ``--speed-pairs`` training pairs
   for one epoch with the same batch size, max length, learning rate and warm-up, fp32, dropout
   off, gradient clipping at 1. TRL gets the very token ids rlhfkit built (its pre-tokenised
   ``chosen_ids``/``rejected_ids`` form), so both see identical inputs (none exceeds max_length,
   so TRL drops none). What differs is the training loop:

   - rlhfkit: one forward pass over the 2B rows of a batch; batches of similar length (little
     padding); no gradient checkpointing.
   - TRL 1.16 RewardTrainer ``default``: also one forward over chosen+rejected; otherwise its
     defaults: random batches padded to their longest row, gradient checkpointing ON; bf16 OFF
     (TRL's default is bf16=True; fp32 here, like rlhfkit). ``tuned``: gradient checkpointing off
     and ``train_sampling_strategy="group_by_length"``.

   pairs/s = pairs / wall time of the training loop (model loading, tokenisation, evaluation and
   saving excluded on both sides). Scoring texts/s = ``--score-texts`` held-out texts, batches of
   64 rows, no gradient, tokenisation excluded: rlhfkit's ``RewardModel.raw_scores`` (length-
   sorted batches) vs a plain transformers forward in input order (TRL has no scoring API).
   Also printed: the tokens per epoch including padding under each batching, a measure of work
   that no other load on the machine can skew.

2. Accuracy on real preferences: rlhfkit trains on 80 % of the prompts (seeded split by prompt)
   and is evaluated on the other 20 % (pairwise accuracy, ties ½; ECE). ``--trl-accuracy`` also
   trains TRL on the same split and scores the same held-out pairs (equal accuracy check; slow).

TRL runs as a subprocess in its own venv (see ../shared/peers/trl/README.md for the install);
this file is also the worker script (``--trl-worker JOB``), importing nothing of rlhfkit then.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HH_DEV = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless" / "dev.jsonl.gz"
DEFAULT_TRL_PYTHON = Path.home() / "scratch" / "trlenv" / "bin" / "python"
SCORE_BATCH = 64


def _offline_env() -> None:
    for k, v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"),
                 ("WANDB_DISABLED", "true"), ("TRL_EXPERIMENTAL_SILENCE", "1")):
        os.environ.setdefault(k, v)


def _loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return None


def _accuracy(r_c: list[float], r_r: list[float]) -> float:
    # the worker cannot import rlhfkit: same rule as rlhfkit.eval.metrics.win_rate (ties ½)
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
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from trl import RewardConfig, RewardTrainer

    torch.set_num_threads(job["threads"])
    set_seed(job["seed"])
    tok = AutoTokenizer.from_pretrained(job["backbone"])
    model = AutoModelForSequenceClassification.from_pretrained(job["backbone"], num_labels=1, dtype=torch.float32)
    rows = [{"chosen_ids": c, "rejected_ids": r} for c, r in job["train"]]
    extra = {}
    if job["group_by_length"]:  # the sampler reads a "length" column, which must survive column pruning
        rows = [{**row, "length": max(len(row["chosen_ids"]), len(row["rejected_ids"]))} for row in rows]
        extra = {"train_sampling_strategy": "group_by_length", "remove_unused_columns": False}
    with tempfile.TemporaryDirectory() as out:
        cfg = RewardConfig(
            output_dir=out, per_device_train_batch_size=job["batch_size"], num_train_epochs=1,
            learning_rate=job["lr"], warmup_steps=job["warmup_steps"], lr_scheduler_type="linear",
            weight_decay=0.0, max_grad_norm=1.0, max_length=job["max_length"],
            gradient_checkpointing=job["gradient_checkpointing"], bf16=False, use_cpu=True, seed=job["seed"],
            report_to="none", save_strategy="no", logging_steps=10_000, disable_tqdm=True, dataloader_num_workers=0,
            **extra,
        )
        trainer = RewardTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok)
        kept = len(trainer.train_dataset)
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
    model = trainer.model
    model.eval()

    def forward(batch_rows):  # plain transformers: right-pad to the longest row of the batch
        T = max(len(r) for r in batch_rows)
        ids = torch.tensor([r + [tok.pad_token_id] * (T - len(r)) for r in batch_rows])
        mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in batch_rows])
        return model(input_ids=ids, attention_mask=mask).logits.squeeze(-1).tolist()

    result = {"trl": md.version("trl"), "transformers": md.version("transformers"), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "pairs_kept": kept, "train_s": train_s,
              "pairs_per_s": kept / train_s}
    with torch.no_grad():
        if job["score_rows"]:
            forward(job["score_rows"][:SCORE_BATCH])  # warm-up, as on rlhfkit's side
            t0 = time.perf_counter()
            for lo in range(0, len(job["score_rows"]), SCORE_BATCH):
                forward(job["score_rows"][lo : lo + SCORE_BATCH])
            result["score_texts_per_s"] = len(job["score_rows"]) / (time.perf_counter() - t0)
        if job["eval"]:
            rewards = []
            texts = [c for c, _ in job["eval"]] + [r for _, r in job["eval"]]
            for lo in range(0, len(texts), SCORE_BATCH):
                rewards += forward(texts[lo : lo + SCORE_BATCH])
            n = len(job["eval"])
            result["heldout_accuracy"] = _accuracy(rewards[:n], rewards[n:])
    result["loadavg"] = _loadavg()
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


def run_ours(pairs, a, out: Path, score_rows=None, eval_fraction: float = 0.0) -> dict:
    from rlhfkit.config import RewardConfig
    from rlhfkit.models.reward import RewardModel
    from rlhfkit.train.reward import train_reward_model

    hp = RewardConfig(backbone=a.backbone, epochs=1, batch_size=a.batch_size, lr=a.lr, max_length=a.max_length,
                      eval_fraction=eval_fraction, seed=a.seed, patience=0, warmup_ratio=a.warmup_ratio, device="cpu")
    report = train_reward_model(pairs, hp, out_dir=out, progress=False)
    result = {"pairs_per_s": report["pairs_per_s"], "train_s": report["train_seconds"], "report": report}
    if score_rows:
        rm = RewardModel.load(out, device="cpu")
        rm.raw_scores(score_rows[:SCORE_BATCH], SCORE_BATCH)  # warm-up
        t0 = time.perf_counter()
        rm.raw_scores(score_rows, SCORE_BATCH)
        result["score_texts_per_s"] = len(score_rows) / (time.perf_counter() - t0)
    result["loadavg"] = _loadavg()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trl-worker", help=argparse.SUPPRESS)
    ap.add_argument("--trl-python", default=os.environ.get("RLHFKIT_TRL_PYTHON", str(DEFAULT_TRL_PYTHON)),
                    help="python of a venv with trl 1.16 (default $RLHFKIT_TRL_PYTHON or ~/scratch/trlenv)")
    ap.add_argument("--trl-variant", default="default", choices=["default", "tuned", "both", "none"],
                    help="TRL runs: its defaults (grad. checkpointing, random batches), tuned (neither), both, none")
    ap.add_argument("--trl-accuracy", action="store_true", help="also train TRL on the full split (slow)")
    ap.add_argument("--backbone", default="minilm")
    ap.add_argument("--data", default=str(HH_DEV), help="HH-RLHF JSONL(.gz); synthetic pairs when absent")
    ap.add_argument("--rounds", type=int, default=2, help="speed rounds (each: rlhfkit, then TRL)")
    ap.add_argument("--speed-pairs", type=int, default=160, help="training pairs per speed round")
    ap.add_argument("--score-texts", type=int, default=192, help="held-out texts scored per speed round")
    ap.add_argument("--no-accuracy", action="store_true", help="skip part 2 (training on the full split)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=256)
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

    import random

    import torch

    from rlhfkit.data.formats import load_pairs
    from rlhfkit.models.load import resolve
    from rlhfkit.models.reward import RewardModel
    from rlhfkit.train.reward_data import check_pairs, length_grouped_batches, split_by_prompt

    torch.set_num_threads(a.threads)
    if Path(a.data).exists():
        skipped: list = []
        pairs = load_pairs(f"hh:{a.data}", skipped=skipped)
        source = f"HH-RLHF harmless-base {Path(a.data).name} ({len(skipped)} malformed rows skipped)"
    else:
        pairs = synthetic_pairs(1500, a.seed)
        source = f"synthetic ({a.data} absent)"
    pairs = check_pairs(pairs)
    train_idx, eval_idx = split_by_prompt(pairs, 0.2, a.seed)
    print(f"data: {source}: {len(pairs)} pairs, {len(train_idx)} train / {len(eval_idx)} held-out (split by prompt)")
    print(f"settings: backbone {a.backbone}, batch {a.batch_size} pairs, max_length {a.max_length}, 1 epoch, "
          f"lr {a.lr}, warm-up {a.warmup_ratio}, fp32, {a.threads} threads, torch {torch.__version__}")
    results: dict = {"data": source, "pairs": len(pairs), "train_pairs": len(train_idx),
                     "heldout_pairs": len(eval_idx), "batch_size": a.batch_size, "max_length": a.max_length, "lr": a.lr, "threads": a.threads,
                     "backbone": a.backbone, "speed_pairs": a.speed_pairs, "rounds": []}

    enc = RewardModel.from_backbone(a.backbone, max_length=a.max_length, device="cpu")
    ids_c = [r["input_ids"] for r in enc.encode([p.prompt for p in pairs], [p.chosen for p in pairs])]
    ids_r = [r["input_ids"] for r in enc.encode([p.prompt for p in pairs], [p.rejected for p in pairs])]
    speed_idx = train_idx[: a.speed_pairs]
    held_texts = [ids_c[i] for i in eval_idx] + [ids_r[i] for i in eval_idx]
    score_ids = held_texts[: a.score_texts]
    score_rows = enc.encode([pairs[i].prompt for i in eval_idx] * 2,
                            [pairs[i].chosen for i in eval_idx] + [pairs[i].rejected for i in eval_idx])[: a.score_texts]

    # Work per epoch of the speed pairs, which other load cannot skew: tokens in the (2B, T) batches.
    pair_len = [max(len(ids_c[i]), len(ids_r[i])) for i in speed_idx]

    def padded_tokens(batches: list[list[int]]) -> int:
        return sum(2 * len(b) * max(pair_len[i] for i in b) for b in batches)

    grouped = padded_tokens(length_grouped_batches(pair_len, a.batch_size, random.Random(a.seed * 1_000_003)))
    shuffled = []
    for s in range(20):
        order = list(range(len(pair_len)))
        random.Random(s).shuffle(order)
        shuffled.append(padded_tokens([order[j : j + a.batch_size] for j in range(0, len(order), a.batch_size)]))
    real = sum(len(ids_c[i]) + len(ids_r[i]) for i in speed_idx)
    results["tokens_per_epoch"] = {"no_padding": real, "length_grouped": grouped, "random_mean": sum(shuffled) / 20}
    print(f"speed pairs: {len(speed_idx)}; tokens per epoch with padding: length-grouped batches {grouped:,}, "
          f"random batches {sum(shuffled) / 20:,.0f} (mean of 20 orders), no padding {real:,}")

    variants = {"default": [("default", True, False)], "tuned": [("tuned", False, True)],
                "both": [("default", True, False), ("tuned", False, True)], "none": []}[a.trl_variant]
    if (variants or a.trl_accuracy) and not Path(a.trl_python).exists():
        print(f"TRL not available: no python at {a.trl_python} (set --trl-python or RLHFKIT_TRL_PYTHON; "
              "install per ../shared/peers/trl/README.md)")
        variants, a.trl_accuracy = [], False
    job = {"backbone": resolve(a.backbone), "batch_size": a.batch_size, "lr": a.lr, "max_length": a.max_length,
           "seed": a.seed, "threads": a.threads}

    def trl_job(idx, eval_pairs, score, grad_ckpt, grouped_batches):
        steps = -(-len(idx) // a.batch_size)
        return {**job, "train": [[ids_c[i], ids_r[i]] for i in idx], "eval": eval_pairs, "score_rows": score,
                "warmup_steps": int(a.warmup_ratio * steps), "gradient_checkpointing": grad_ckpt,
                "group_by_length": grouped_batches}

    # 1. speed rounds
    speed_pairs = [pairs[i] for i in speed_idx]
    best: dict[str, dict] = {}
    for rnd in range(1, a.rounds + 1):
        row = {}
        with tempfile.TemporaryDirectory() as tmp:
            ours = run_ours(speed_pairs, a, Path(tmp) / "rm", score_rows)
        ours.pop("report")
        row["rlhfkit"] = ours
        print(f"round {rnd}: rlhfkit {ours['pairs_per_s']:.2f} pairs/s, scoring {ours['score_texts_per_s']:.1f} "
              f"texts/s (load {ours['loadavg']})", flush=True)
        for name, grad_ckpt, grouped_batches in variants:
            try:
                trl = run_trl(a.trl_python, trl_job(speed_idx, [], score_ids, grad_ckpt, grouped_batches))
            except RuntimeError as exc:
                print(f"TRL ({name}) failed: {exc}")
                continue
            row[f"trl_{name}"] = trl
            print(f"round {rnd}: TRL {trl['trl']} {name} {trl['pairs_per_s']:.2f} pairs/s, scoring "
                  f"{trl['score_texts_per_s']:.1f} texts/s (load {trl['loadavg']})", flush=True)
        results["rounds"].append(row)
        for side, r in row.items():
            best.setdefault(side, {})
            for key in ("pairs_per_s", "score_texts_per_s"):
                best[side][key] = max(best[side].get(key, 0.0), r[key])
    results["best"] = best
    print(f"best of {a.rounds} rounds:")
    for side, b in best.items():
        print(f"  {side:12s} training {b['pairs_per_s']:6.2f} pairs/s   scoring {b['score_texts_per_s']:6.1f} texts/s")
    for side in best:
        if side != "rlhfkit":
            print(f"  rlhfkit / {side}: training {best['rlhfkit']['pairs_per_s'] / best[side]['pairs_per_s']:.2f}×, "
                  f"scoring {best['rlhfkit']['score_texts_per_s'] / best[side]['score_texts_per_s']:.2f}×")

    # 2. accuracy on the full split
    if not a.no_accuracy:
        with tempfile.TemporaryDirectory() as tmp:
            full = run_ours(pairs, a, Path(tmp) / "rm", eval_fraction=0.2)
        rep = full.pop("report")
        held = {k: rep["heldout"][k] for k in ("accuracy", "margin", "ece", "loss", "pairs")}
        results["accuracy"] = {"rlhfkit": {**held, "train_accuracy": rep["train"]["accuracy"], **full}}
        h = rep["heldout"]
        print(f"accuracy: rlhfkit trained on {rep['pairs']['train']} pairs ({full['train_s']:.0f} s, "
              f"{full['pairs_per_s']:.2f} pairs/s, load {full['loadavg']}): held-out accuracy {h['accuracy']:.3f} on "
              f"{h['pairs']} pairs, margin {h['margin']:.3f}, ECE {h['ece']:.3f}; train accuracy "
              f"{rep['train']['accuracy']:.3f}", flush=True)
        if a.trl_accuracy:
            eval_pairs = [[ids_c[i], ids_r[i]] for i in eval_idx]
            trl = run_trl(a.trl_python, trl_job(train_idx, eval_pairs, [], True, False))
            results["accuracy"]["trl_default"] = trl
            print(f"accuracy: TRL {trl['trl']} default trained on {trl['pairs_kept']} pairs ({trl['train_s']:.0f} s, "
                  f"{trl['pairs_per_s']:.2f} pairs/s, load {trl['loadavg']}): held-out accuracy "
                  f"{trl['heldout_accuracy']:.3f}", flush=True)
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
