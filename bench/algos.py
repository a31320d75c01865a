"""DPO, RLOO and GRPO speed and memory on CPU: rlhfkit vs TRL 1.16's DPOTrainer, RLOOTrainer and GRPOTrainer.

    python bench/algos.py --clock cpu --threads 1      # CPU seconds of each side's process: holds on a busy machine
    python bench/algos.py --quiet-wait 300             # wall clock, each side waiting (≤ 300 s) for quiet
    python bench/algos.py --only grpo --repeats 2      # one algorithm; each side keeps its faster round
    python bench/algos.py --only rloo,grpo --interleave --clock cpu --threads 1   # the two sides taking turns

One table: each side's samples/s (pairs/s for DPO), peak RSS (getrusage ru_maxrss of its own subprocess: the
whole process, Python and torch runtime included) and the ratios rlhfkit / TRL (target ≥ 1.5× the throughput
at ≤ 1× the memory). All on the peers' tiny GPT-2 ``small`` (../shared/peers/trl/make_tiny.py: 4 layers,
256 wide, vocab 2000, 3.7M params, random weights), LoRA r=16 α=32 on c_attn, c_proj, c_fc (every linear
layer of GPT-2) with the reference = the base with adapters off on both sides, lr 1e-5, fp32, the same threads,
TRL's gradient checkpointing off (``--no-grad-ckpt``; rlhfkit does not checkpoint):

- DPO: an epoch over the peers' 2,000 pairs (``pairs.jsonl``), batch 16, max_length 128, β = ``--kl``.
  rlhfkit: ``run_dpo``, i.e. ``rlhfkit dpo`` (reading the pairs as ``trl:pairs.jsonl``), timed as it times
  itself: the reference pass over the pairs (once, cached), the 125 steps and the final checkpoint (no
  intermediate ones: TRL's side saves nothing). TRL: ../shared/peers/trl/bench_dpo.py as is, ``trainer.train()``
  (its reference log-probs computed in every step). pairs/s = 2,000 / those seconds.
- RLOO / GRPO: one update = ``--batch`` completions (batch / k prompts × k = ``--k``), ≤ ``--response-length``
  tokens (both stop at EOS), scored by ``small-rm``, one optimizer step over them (one epoch, one minibatch:
  TRL's num_iterations = 1, steps_per_generation = 1), KL coefficient β = ``--kl`` (RLOO: in the reward;
  GRPO: in the loss), temperature 1 (TRL's default). rlhfkit: ``critic_free_step`` in a loop (the iteration of
  ``rlhfkit ppo --algorithm rloo|grpo``), through bench/ppo.py's worker. TRL: bench_ppo.py --algo rloo as is;
  for GRPO the same script with ``trl.RLOOTrainer``/``RLOOConfig`` swapped for ``GRPOTrainer``/``GRPOConfig``
  before it runs (their constructors and every option it passes are the same), so both TRL trainers see
  exactly the same settings; rlhfkit's GRPO weights its KL term by the ratio as TRL's does by default
  (``kl_bias_correction``, TRL's use_bias_correction_kl). samples/s = batch / median seconds per update after
  ``--warmup`` updates. bench/trl_parity.py checks that the two GRPO updates compute the same loss and gradients.

Timing clocks and load handling as bench/ppo.py (``--clock``, ``--quiet-wait``, ``--repeats``); the table gives
each side's fastest round and, for RLOO/GRPO, each round's ratio. ``--interleave`` runs an algorithm's two sides
at once, taking turns one update each (bench/turns.py): a drift in the machine's speed then reaches both sides
alike, at the price of each update starting with the other process's data in the caches. This file is also the
worker of the rlhfkit DPO side (``--ours-worker JOB``). TRL's venv: ../shared/peers/trl/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ppo as bench_ppo  # noqa: E402  (bench/ppo.py: subprocess workers, the TRL launcher, options)
import turns  # noqa: E402  (bench/turns.py: the two sides taking turns)

# TRL's GRPO through bench_ppo.py's RLOO path: GRPOTrainer/GRPOConfig take the same arguments
_GRPO_FOR_RLOO = "import trl; trl.RLOOTrainer, trl.RLOOConfig = trl.GRPOTrainer, trl.GRPOConfig; "


def dpo_worker(job: dict) -> None:
    """``rlhfkit dpo`` (run_dpo) on the peers' pairs in a scratch run directory; prints one RESULT line."""
    bench_ppo.worker_setup(job)
    from rlhfkit.config import DpoConfig, load_config
    from rlhfkit.train.dpo import run_dpo

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(DpoConfig, None, {
            "run_dir": run_dir, "model": job["model"], "pairs": "trl:" + job["pairs"], "beta": job["kl"],
            "batch_size": job["batch"], "lr": job["lr"], "max_length": job["max_length"], "lora_r": job["lora_r"],
            "lora_alpha": 2 * job["lora_r"], "lora_layers": 0, "save_every": 10**9, "seed": job["seed"],
            "device": "cpu", "dtype": "float32",
        })
        summary = run_dpo(cfg)
    seconds = summary["seconds"]  # the reference pass + every step + the final checkpoint
    result = {"side": "rlhfkit", "algorithm": "dpo", "clock": job["clock"], "threads": job["threads"],
              "pairs": summary["pairs"], "steps": summary["steps"], "train_s": round(seconds, 2),
              "median_s": round(seconds / summary["steps"], 4), "pairs_per_s": round(summary["pairs"] / seconds, 1),
              "peak_rss_mib": bench_ppo.peak_rss_mib(), "loadavg": bench_ppo._loadavg()}
    print("RESULT " + json.dumps(result), flush=True)


def worker(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    dpo_worker(job) if job["algorithm"] == "dpo" else bench_ppo.ours_worker(job_path)


def dpo_data(tiny: Path, n: int) -> Path:
    """The folder whose pairs.jsonl both DPO sides read: the peers' own (all 2,000 pairs), or its first ``n`` pairs
    in a folder beside them (a shorter epoch for a machine too busy for a whole one)."""
    lines = [line for line in (tiny / "pairs.jsonl").read_text().splitlines() if line.strip()]
    if n <= 0 or n >= len(lines):
        return tiny
    folder = tiny / f"pairs-first-{n}"
    folder.mkdir(exist_ok=True)
    (folder / "pairs.jsonl").write_text("\n".join(lines[:n]) + "\n")
    return folder


def in_turns(ours, trl) -> tuple[dict | None, dict | None]:
    """rlhfkit's side and TRL's (each a function of extra environment variables) run at once, taking turns one
    update each (bench/turns.py), rlhfkit's first: their results, None for a side that failed (it is printed, and
    releases the other side at once); RuntimeError if both failed."""
    with tempfile.TemporaryDirectory() as tmp:
        fifo = {side: os.path.join(tmp, side) for side in ("rlhfkit", "TRL")}  # the FIFO each side reads its turn from
        for path in fifo.values():
            os.mkfifo(path)
        hold = {side: os.open(path, os.O_RDWR) for side, path in fifo.items()}  # open until both sides are done
        try:
            os.write(hold["rlhfkit"], b"T")
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                jobs = {pool.submit(run, {"RLHFKIT_TURNS": f"{fifo[side]}:{fifo[other]}"}): (side, other)
                        for run, side, other in ((ours, "rlhfkit", "TRL"), (trl, "TRL", "rlhfkit"))}
                for done in concurrent.futures.as_completed(jobs):
                    side, other = jobs[done]
                    if done.exception() is not None:
                        os.write(hold[other], b"E")  # the other side goes on alone
                        print(f"{side} side failed: {done.exception()}", flush=True)
                results = tuple(None if job.exception() else job.result() for job in jobs)
        finally:
            for fd in hold.values():
                os.close(fd)
    if results == (None, None):
        raise RuntimeError("both sides failed")
    return results


def sides(a, tiny: Path, prompts: list[str], algorithm: str, timeout: float) -> list:
    """[(label, fn)] of one algorithm: rlhfkit's side, then TRL's; or, taking turns (``--interleave``), one entry
    ((rlhfkit's label, TRL's), fn) that runs both at once."""
    python = Path(a.trl_python)
    trl_common = ["--model", str(tiny / "small"), "--batch", str(a.batch), "--lora-r",
                  str(a.lora_r), "--seed", str(a.seed), "--no-grad-ckpt"]
    job = {"algorithm": algorithm, "model": str(tiny / "small"), "batch": a.batch, "lora_r": a.lora_r, "kl": a.kl,
           "lr": 1e-5, "seed": a.seed, "threads": a.threads, "clock": a.clock}
    if algorithm == "dpo":
        data = dpo_data(tiny, a.dpo_pairs)
        ours = {**job, "pairs": str(data / "pairs.jsonl"), "max_length": a.max_length}
        trl_args = [*trl_common, "--data", str(data), "--max-length", str(a.max_length), "--beta", str(a.kl)]
        trl = functools.partial(bench_ppo.run_trl, python, trl_args, a.threads, timeout, a.clock, script="bench_dpo.py")
    else:
        ours = {**job, "reward_model": str(tiny / "small-rm"), "prompts": prompts, "group_size": a.k, "epochs": 1,
                "response_length": a.response_length, "temperature": 1.0, "lora_layers": 0, "warmup": a.warmup,
                "updates": a.updates, "plain_prompts": True,
                "kl_bias_correction": algorithm == "grpo"}  # TRL's GRPO default (use_bias_correction_kl)
        trl_args = [*trl_common, "--data", str(tiny), "--algo", "rloo", "--k", str(a.k), "--kl", str(a.kl), "--updates",
                    str(a.warmup + a.updates), "--warmup", str(a.warmup), "--response-length", str(a.response_length)]
        prelude = _GRPO_FOR_RLOO if algorithm == "grpo" else ""
        if a.interleave:
            prelude += turns.TRL_PRELUDE.format(bench=str(Path(__file__).resolve().parent))
        trl = functools.partial(bench_ppo.run_trl, python, trl_args, a.threads, timeout, a.clock, prelude=prelude)
    ours = functools.partial(bench_ppo.run_ours, ours, a.threads, timeout, __file__)
    if a.interleave and algorithm != "dpo" and python.exists():
        return [((f"rlhfkit {algorithm}", f"TRL {algorithm}"),
                 lambda: in_turns(lambda env: ours(env=env), lambda env: trl(env=env)))]
    out = [(f"rlhfkit {algorithm}", ours)]
    if python.exists():
        out.append((f"TRL {algorithm}", trl))
    else:
        print(f"TRL not available: no python at {python} (--trl-python or RLHFKIT_TRL_PYTHON; install per "
              "../shared/peers/trl/README.md)", flush=True)
    return out


NAMES = {"dpo": ("DPO epoch", "DPOTrainer", "pairs/s"), "rloo": ("RLOO update", "RLOOTrainer", "samples/s"),
         "grpo": ("GRPO update", "GRPOTrainer", "samples/s")}


def rate(r: dict) -> float:
    return r["pairs_per_s"] if "pairs_per_s" in r else r["samples_per_s"]


def round_ratios(ours: dict, trl: dict) -> list:
    """Samples/s ratio rlhfkit / TRL of each round (its median seconds per update, TRL's over rlhfkit's; None where
    a side failed): with ``--interleave`` each round's two sides took turns on the same machine."""
    pairs = zip(ours.get("round_medians_s", [ours["median_s"]]), trl.get("round_medians_s", [trl["median_s"]]))
    return [None if o is None or t is None else t / o for o, t in pairs]


def print_table(a, best: dict, trl_version: str) -> dict:
    from rlhfkit.machine import cpu_line

    unit = "CPU s" if a.clock == "cpu" else "wall s"
    print(f"\n## rlhfkit vs TRL {trl_version}: throughput and peak RSS\n")
    print(f"CPU: {cpu_line()}; {a.threads} thread(s), fp32, clock: {unit}; tiny GPT-2 small (3.7M), LoRA r={a.lora_r} "
          f"α={2 * a.lora_r}, batch {a.batch}, β {a.kl}; RLOO/GRPO k={a.k}, ≤{a.response_length} tokens, "
          f"{a.warmup} warm-up + {a.updates} timed updates; DPO {a.dpo_pairs or 2000:,} pairs, max_length {a.max_length}\n")
    print("| algorithm | rlhfkit rate | TRL rate | rate ratio (≥ 1.5) | each round's ratio | rlhfkit peak RSS MiB | "
          "TRL peak RSS MiB | RSS ratio (≤ 1) | mean tokens rlhfkit / TRL | load 1 min after (rlhfkit / TRL) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ratios = {}
    for algorithm in a.only:
        name, trainer, per = NAMES[algorithm]
        ours, trl = best.get(f"rlhfkit {algorithm}"), best.get(f"TRL {algorithm}")
        cells = [f"{rate(r):.1f} {per}" if r else "–" for r in (ours, trl)]
        if ours and trl:
            ratios[algorithm] = {"rate": rate(ours) / rate(trl), "peak_rss": ours["peak_rss_mib"] / trl["peak_rss_mib"]}
            cells.append(f"**{ratios[algorithm]['rate']:.2f}×**")
            rounds = round_ratios(ours, trl) if algorithm != "dpo" else []
            ratios[algorithm]["rounds"] = rounds
            cells.append(", ".join("–" if x is None else f"{x:.2f}×" for x in rounds) or "–")
        else:
            cells += ["– (a side failed)", "–"]
        cells += [f"{r['peak_rss_mib']:.0f}" if r else "–" for r in (ours, trl)]
        cells.append(f"{ratios[algorithm]['peak_rss']:.2f}×" if algorithm in ratios else "–")
        cells.append(" / ".join(f"{r['mean_completion_len']:.1f}" if r and "mean_completion_len" in r else "–"
                                for r in (ours, trl)))
        cells.append(" / ".join(f"{r['loadavg'][0]:.2f}" if r and r.get("loadavg") else "–" for r in (ours, trl)))
        print(f"| {name} (TRL {trainer}) | " + " | ".join(cells) + " |")
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ours-worker", help=argparse.SUPPRESS)
    ap.add_argument("--only", default="dpo,rloo,grpo", help="comma-separated: dpo, rloo, grpo")
    ap.add_argument("--k", type=int, default=2, help="RLOO/GRPO completions per prompt (both sides)")
    ap.add_argument("--max-length", type=int, default=128, help="DPO: most tokens per prompt + reply")
    ap.add_argument("--dpo-pairs", type=int, default=0, help="DPO: the first N pairs only (0 = all 2,000, an epoch)")
    ap.add_argument("--interleave", action="store_true",
                    help="RLOO/GRPO: run both sides at once, taking turns one update each (bench/turns.py), so both "
                         "see the same machine (each then starts an update with the other's data in the caches); "
                         "default: one after the other")
    bench_ppo.add_common_args(ap)
    a = ap.parse_args()
    if a.ours_worker:
        worker(a.ours_worker)
        return
    a.only = [x.strip() for x in a.only.split(",") if x.strip()]
    if bad := [x for x in a.only if x not in NAMES]:
        ap.error(f"--only: unknown algorithm(s) {', '.join(bad)} (dpo, rloo, grpo)")
    tiny = Path(a.tiny)
    bench_ppo.ensure_tiny(tiny, a.threads)
    prompts = [json.loads(line)["prompt"] for line in (tiny / "prompts.jsonl").read_text().splitlines() if line.strip()]
    t_start = time.perf_counter()
    print(f"load average before: {bench_ppo._loadavg()}", flush=True)
    results: dict = {"settings": {k: v for k, v in vars(a).items() if k != "ours_worker"}}
    attempt = functools.partial(bench_ppo.attempt_side, a, results)
    all_sides = [s for algorithm in a.only for s in sides(a, tiny, prompts, algorithm, timeout=3600)]  # generous: niced sides starve on a busy machine
    best = bench_ppo.best_of_rounds(all_sides, a.repeats, attempt)
    trl_version = next((r["trl"] for label, r in best.items() if r and label.startswith("TRL")), "1.16")
    results["ratios"] = print_table(a, best, trl_version)
    print(f"\nload average after: {bench_ppo._loadavg()}; total {time.perf_counter() - t_start:.0f} s")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
