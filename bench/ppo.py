"""PPO update speed and memory on CPU: rlhfkit vs TRL 1.12 PPO and TRL 1.16 RLOO, one run.

    python bench/ppo.py                  # tiny GPT-2 speed table + LoRA-vs-full-FT memory (tiny and SmolLM2-135M)
    python bench/ppo.py --quick          # fewer updates, no SmolLM2 memory runs (a smoke test, ~2 min)

Every side runs in its own subprocess, so each reports its own peak RSS (getrusage ru_maxrss in the
child: the whole process, Python and torch runtime included).

Speed table, all on the peers' tiny GPT-2 ``small`` (make_tiny.py: 4 layers, 256 wide, vocab 2000,
3.7M params, random weights; its ``small-rm`` sequence classifier is the reward model of every side),
the same 256 prompts, batch 16, responses of at most 32 tokens, 4 PPO epochs over one minibatch,
LoRA r=16 α=32 on every linear layer of the policy, KL coefficient 0.05, lr 1e-5, fp32, the same threads:

- rlhfkit: ``ppo_step`` called in a loop (rollout + update, exactly what ``rlhfkit ppo`` times per
  iteration); the value head shares the policy's backbone, the reference is the base with adapters off.
  The reward model is ``small-rm`` loaded through ``RewardModel`` (it scores decoded text, re-tokenised).
- TRL 1.12.0 ``trl.experimental.ppo.PPOTrainer``: ../shared/peers/trl/bench_ppo.py --algo ppo, run as is
  in its venv; a separate value model (initialised from ``small-rm``), reference = adapter off,
  responses of exactly 32 tokens.
- TRL 1.16.0 ``RLOOTrainer`` (PPO is gone from TRL since 1.13): the same script --algo rloo, k = 2
  completions per prompt (8 prompts × 2 = 16), one optimizer step per update, no critic.

TRL's gradient checkpointing is turned off (``--no-grad-ckpt``; rlhfkit does not checkpoint either, and
TRL's PPO ignores the flag). One update = generation + scoring + optimisation; the first ``--warmup``
updates are left out of the median. samples/s = batch / median seconds per update; tokens/s =
batch × mean completion length / median seconds per update.

Memory table: rlhfkit with LoRA (the reference = adapters off, one copy of the weights) against full
fine-tuning (``lora_r=0``: every weight trains, plus a separate frozen reference copy), same model,
prompts and settings; on the tiny model (where the Python/torch runtime dominates) and on the real
default SmolLM2-135M-Instruct (batch 8, 32 tokens, 2 updates, the MiniLM reward model).

CPU timings are skewed by other work on the machine: the script prints the load average before and
after every side; re-run when the 1-minute load is below ~2 (the benchmark's own 2 threads).
TRL runs in its own venvs (install: ../shared/peers/trl/README.md); this file is also the worker
script of the rlhfkit side (``--ours-worker JOB``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT.parent / "shared" / "peers" / "trl"
SCRATCH = Path.home() / "scratch"
DEFAULT_TRL_PYTHON = SCRATCH / "trlenv" / "bin" / "python"  # trl 1.16.0 (RLOO)
DEFAULT_TRL112_PYTHON = SCRATCH / "trlenv112" / "bin" / "python"  # trl 1.12.0 (the last PPO)
DEFAULT_TINY = Path(os.environ.get("TRL_BENCH_TINY", SCRATCH / "trl-tiny"))


def _offline_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "WANDB_DISABLED": "true", "TRL_EXPERIMENTAL_SILENCE": "1", "OMP_NUM_THREADS": str(threads),
                "MKL_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"})
    return env


def _loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------
# rlhfkit worker (a subprocess: its own peak RSS)
# ---------------------------------------------------------------------------------------------


def ours_worker(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    os.environ.update(_offline_env(job["threads"]))
    import resource

    import torch

    torch.set_num_threads(job["threads"])
    from rlhfkit.config import PPOConfig, load_config
    from rlhfkit.train import losses as L
    from rlhfkit.train.ppo import build_policy, load_scorer, ppo_step, prompt_batch, seed_everything
    from rlhfkit.train.reward import RewardModel

    hp = load_config(PPOConfig, None, {
        "model": job["model"], "batch_size": job["batch"], "minibatch_size": job["batch"], "ppo_epochs": job["epochs"],
        "max_new_tokens": job["response_length"], "lora_r": job["lora_r"], "lora_alpha": 2 * max(job["lora_r"], 1),
        "lora_layers": job["lora_layers"], "kl_coef": job["kl"], "lr": job["lr"], "gold": False, "device": "cpu",
        "seed": job["seed"], "temperature": job["temperature"],
    })
    seed_everything(hp.seed)
    model, tokenizer = build_policy(hp.model, lora_r=hp.lora_r, lora_alpha=hp.lora_alpha, device="cpu",
                                    lora_layers=hp.lora_layers)
    if job["plain_prompts"]:  # the prompts as TRL sees them: raw text, no chat template
        tokenizer.chat_template = None
    with tempfile.TemporaryDirectory() as tmp:  # the reward model goes through its saved-folder path, as in `rlhfkit ppo`
        RewardModel.from_backbone(job["reward_model"], device="cpu").save(Path(tmp) / "reward_model")
        score_fn, _ = load_scorer(str(Path(tmp) / "reward_model"), Path(tmp), "cpu")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=hp.lr, eps=1e-5)
    kl_ctl = L.FixedKLController(hp.kl_coef)
    prompts = job["prompts"]
    times, lengths, rollout_s, update_s = [], [], [], []
    for it in range(job["warmup"] + job["updates"]):
        batch = prompt_batch(prompts, it, hp.batch_size, hp.seed)
        t0 = time.perf_counter()
        stats = ppo_step(model, tokenizer, optimizer, kl_ctl, batch, score_fn, None, iteration=it, seed=hp.seed, hp=hp).stats
        times.append(time.perf_counter() - t0)
        lengths.append(stats["rollout/length"])
        rollout_s.append(stats["time/rollout_s"])
        update_s.append(stats["time/update_s"])
    w = job["warmup"]
    med = statistics.median(times[w:])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    mean_len = statistics.fmean(lengths[w:])
    result = {
        "side": "rlhfkit", "lora_r": hp.lora_r, "lora_layers": hp.lora_layers, "batch": hp.batch_size,
        "threads": torch.get_num_threads(), "step_times_s": [round(t, 4) for t in times], "warmup_steps": w,
        "median_s": round(med, 4), "min_s": round(min(times[w:]), 4), "max_s": round(max(times[w:]), 4),
        "median_rollout_s": round(statistics.median(rollout_s[w:]), 4),
        "median_update_s": round(statistics.median(update_s[w:]), 4),
        "mean_completion_len": round(mean_len, 2), "samples_per_s": round(hp.batch_size / med, 2),
        "gen_tokens_per_s": round(hp.batch_size * mean_len / med, 1),
        "params_total": total, "params_trainable": trainable,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "loadavg": _loadavg(),
    }
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _result(proc: subprocess.CompletedProcess) -> dict:
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"exit {proc.returncode}:\n{(proc.stderr or proc.stdout)[-3000:]}")


def run_ours(job: dict, threads: int, timeout: float) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
        path = f.name
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--ours-worker", path], capture_output=True,
                              text=True, env=_offline_env(threads), timeout=timeout)
    finally:
        os.unlink(path)
    return _result(proc)


def run_trl(python: Path, args: list[str], threads: int, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([str(python), "bench_ppo.py", *args, "--out", out], capture_output=True, text=True,
                              cwd=PEERS, env=_offline_env(threads), timeout=timeout)
    return _result(proc)


def ensure_tiny(tiny: Path, threads: int) -> None:
    """The peers' tiny models, built locally by their make_tiny.py when absent (seconds; no hub)."""
    if (tiny / "small" / "config.json").exists() and (tiny / "small-rm" / "config.json").exists():
        return
    print(f"building the tiny models in {tiny} (make_tiny.py) …", flush=True)
    subprocess.run([sys.executable, "make_tiny.py", "--out", str(tiny)], cwd=PEERS, env=_offline_env(threads),
                   check=True, capture_output=True)


def _fmt_row(name: str, r: dict | None, note: str = "") -> str:
    if r is None:
        return f"| {name} | – | – | – | – | – | {note} |"
    times = r["step_times_s"][r["warmup_steps"] :]
    return (f"| {name} | {r['median_s']:.3f} ({min(times):.3f}–{max(times):.3f}) | {r['samples_per_s']:.1f} | "
            f"{r['gen_tokens_per_s']:.0f} | {r['mean_completion_len']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"load {r['loadavg'][0]:.2f} {note}|")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ours-worker", help=argparse.SUPPRESS)
    ap.add_argument("--trl-python", default=os.environ.get("RLHFKIT_TRL_PYTHON", str(DEFAULT_TRL_PYTHON)),
                    help="python of a venv with trl 1.16 (default $RLHFKIT_TRL_PYTHON or ~/scratch/trlenv)")
    ap.add_argument("--trl112-python", default=os.environ.get("RLHFKIT_TRL112_PYTHON", str(DEFAULT_TRL112_PYTHON)),
                    help="python of a venv with trl 1.12.0 (default $RLHFKIT_TRL112_PYTHON or ~/scratch/trlenv112)")
    ap.add_argument("--tiny", default=str(DEFAULT_TINY), help="folder of make_tiny.py's models and prompts")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--response-length", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--updates", type=int, default=6, help="timed updates per side")
    ap.add_argument("--warmup", type=int, default=1, help="updates before the timed ones")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--kl", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smollm2-batch", type=int, default=8, help="batch of the SmolLM2 memory runs")
    ap.add_argument("--smollm2-updates", type=int, default=2, help="updates of each SmolLM2 memory run")
    ap.add_argument("--no-smollm2", action="store_true", help="skip the SmolLM2-135M memory runs")
    ap.add_argument("--quick", action="store_true", help="3 timed updates, no SmolLM2 runs")
    ap.add_argument("--json", default="", help="append all results as one JSON line to this file")
    a = ap.parse_args()
    if a.ours_worker:
        ours_worker(a.ours_worker)
        return
    if a.quick:
        a.updates, a.no_smollm2 = 3, True
    tiny = Path(a.tiny)
    ensure_tiny(tiny, a.threads)
    prompts = [json.loads(line)["prompt"] for line in (tiny / "prompts.jsonl").read_text().splitlines() if line.strip()]
    t_start = time.perf_counter()
    print(f"settings: tiny GPT-2 {tiny / 'small'} (3.7M params), reward model small-rm, {len(prompts)} prompts, "
          f"batch {a.batch}, ≤{a.response_length} response tokens, {a.epochs} PPO epochs × 1 minibatch, "
          f"LoRA r={a.lora_r} α={2 * a.lora_r}, KL coef {a.kl}, lr 1e-5, fp32, {a.threads} threads, "
          f"{a.warmup} warm-up + {a.updates} timed updates per side", flush=True)
    print(f"load average before: {_loadavg()}", flush=True)

    common = {"batch": a.batch, "response_length": a.response_length, "epochs": a.epochs, "kl": a.kl, "lr": 1e-5,
              "seed": a.seed, "threads": a.threads, "temperature": 0.7}
    ours_job = {**common, "model": str(tiny / "small"), "reward_model": str(tiny / "small-rm"), "prompts": prompts,
                "lora_r": a.lora_r, "lora_layers": 0, "warmup": a.warmup, "updates": a.updates, "plain_prompts": True}
    results: dict = {"settings": {**common, "updates": a.updates, "warmup": a.warmup, "lora_r": a.lora_r}}
    timeout = 600

    def attempt(label, fn):
        try:
            r = fn()
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"{label} failed: {exc}", flush=True)
            return None
        print(f"{label}: {r['median_s']:.3f} s/update, {r['samples_per_s']:.1f} samples/s, "
              f"{r['peak_rss_mib']:.0f} MiB peak RSS; load {r.get('loadavg') or r.get('loadavg_1m_5m')}", flush=True)
        r.setdefault("loadavg", r.get("loadavg_1m_5m", []))
        results[label] = r
        return r

    ours = attempt("rlhfkit", lambda: run_ours(ours_job, a.threads, timeout))
    trl_args = ["--model", str(tiny / "small"), "--data", str(tiny), "--batch", str(a.batch), "--updates",
                str(a.warmup + a.updates), "--warmup", str(a.warmup), "--response-length", str(a.response_length),
                "--lora-r", str(a.lora_r), "--ppo-epochs", str(a.epochs), "--kl", str(a.kl), "--seed", str(a.seed),
                "--no-grad-ckpt"]
    trl_ppo = trl_rloo = None
    for label, python, algo in (("TRL 1.12.0 PPO", Path(a.trl112_python), "ppo"), ("TRL 1.16.0 RLOO", Path(a.trl_python), "rloo")):
        if not python.exists():
            print(f"TRL not available: no python at {python} (set --trl-python / --trl112-python or "
                  "RLHFKIT_TRL_PYTHON / RLHFKIT_TRL112_PYTHON; install per ../shared/peers/trl/README.md)", flush=True)
            continue
        r = attempt(label, lambda: run_trl(python, [*trl_args, "--algo", algo, "--k", "2"], a.threads, timeout))
        if algo == "ppo":
            trl_ppo = r
        else:
            trl_rloo = r

    # LoRA + shared reference vs full fine-tuning + separate reference (rlhfkit both)
    mem: list[tuple[str, dict | None, dict | None]] = []
    full_tiny = attempt("rlhfkit full FT (tiny)", lambda: run_ours({**ours_job, "lora_r": 0, "updates": 2}, a.threads, timeout))
    mem.append(("tiny GPT-2 3.7M, batch %d" % a.batch, ours, full_tiny))
    if not a.no_smollm2:
        from rlhfkit.data.io import read_prompts
        from rlhfkit import defaults

        smol_prompts = [p.prompt for p in read_prompts(defaults.prompts_path()) if p.split == "train"]
        smol = {**common, "batch": a.smollm2_batch, "model": "smollm2", "reward_model": "minilm", "prompts": smol_prompts,
                "warmup": 0, "updates": a.smollm2_updates, "plain_prompts": False}
        smol_lora = attempt("rlhfkit LoRA (SmolLM2)", lambda: run_ours({**smol, "lora_r": a.lora_r, "lora_layers": 8},
                                                                     a.threads, timeout))
        smol_lora_all = attempt("rlhfkit LoRA all layers (SmolLM2)",
                                lambda: run_ours({**smol, "lora_r": a.lora_r, "lora_layers": 0}, a.threads, timeout))
        smol_full = attempt("rlhfkit full FT (SmolLM2)", lambda: run_ours({**smol, "lora_r": 0, "lora_layers": 0},
                                                                        a.threads, timeout))
        mem.append((f"SmolLM2-135M, batch {a.smollm2_batch}, LoRA top 8 layers (default)", smol_lora, smol_full))
        mem.append((f"SmolLM2-135M, batch {a.smollm2_batch}, LoRA all 30 layers", smol_lora_all, smol_full))

    # ---- tables
    print(f"\n## PPO update speed, tiny GPT-2 (batch {a.batch}, ≤{a.response_length} tokens, {a.threads} threads)\n")
    print("| side | median s/update (min–max) | samples/s | tokens/s | mean tokens | peak RSS MiB | load (1 min) |")
    print("|---|---|---|---|---|---|---|")
    print(_fmt_row(f"rlhfkit PPO ({a.epochs} epochs, shared critic)", ours))
    print(_fmt_row(f"TRL 1.12.0 PPO ({a.epochs} epochs, separate value model)", trl_ppo))
    print(_fmt_row("TRL 1.16.0 RLOO (k=2, 1 step, no critic)", trl_rloo))
    if ours:
        print(f"\nrlhfkit: rollout {ours['median_rollout_s']:.3f} s + update {ours['median_update_s']:.3f} s (medians)")
        for name, r in (("TRL PPO", trl_ppo), ("TRL RLOO", trl_rloo)):
            if r:
                ratio = {"samples_per_s": ours["samples_per_s"] / r["samples_per_s"],
                         "tokens_per_s": ours["gen_tokens_per_s"] / r["gen_tokens_per_s"],
                         "peak_rss": ours["peak_rss_mib"] / r["peak_rss_mib"]}
                results[f"ratio_vs_{name}"] = ratio
                print(f"rlhfkit / {name}: samples/s {ratio['samples_per_s']:.2f}×, tokens/s {ratio['tokens_per_s']:.2f}×, "
                      f"peak RSS {ratio['peak_rss']:.2f}×" + ("  (target ≥ 3× at ≤ 1× memory)" if name == "TRL PPO" else ""))
    print("\n## Peak RSS: LoRA + shared reference vs full fine-tuning + separate frozen reference (rlhfkit)\n")
    print("| model | LoRA MiB | full FT MiB | LoRA / full (target ≤ 0.55) | trainable LoRA / full |")
    print("|---|---|---|---|---|")
    for name, lo, fu in mem:
        if lo and fu:
            print(f"| {name} | {lo['peak_rss_mib']:.0f} | {fu['peak_rss_mib']:.0f} | "
                  f"{lo['peak_rss_mib'] / fu['peak_rss_mib']:.2f} | {lo['params_trainable']:,} / {fu['params_trainable']:,} |")
        else:
            print(f"| {name} | – | – | (a run failed) | |")
    print(f"\nload average after: {_loadavg()}; total {time.perf_counter() - t_start:.0f} s")
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
