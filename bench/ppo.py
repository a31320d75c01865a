"""PPO update speed and memory on CPU: rlhfkit vs TRL 1.12 PPO and TRL 1.16 RLOO, one run.

    python bench/ppo.py                        # tiny GPT-2 speed table + LoRA-vs-full-FT memory (tiny, SmolLM2-135M)
    python bench/ppo.py --quiet-wait 300       # the same, each side waiting (≤ 300 s) for the machine to go quiet
    python bench/ppo.py --smollm2-speed        # also rlhfkit vs TRL PPO on SmolLM2-135M-Instruct (+ ~3 min)
    python bench/ppo.py --clock cpu --threads 1 --no-smollm2   # CPU seconds: comparable on a busy machine
    python bench/ppo.py --quick                # 3 timed updates, no SmolLM2 runs (a smoke test)

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

``--smollm2-speed``: the same comparison on the real default policy, SmolLM2-135M-Instruct (batch 8),
against TRL 1.12 PPO on the same weights (its LoRA on every linear layer: bench_ppo.py's GPT-2 module
names are swapped for peft's "all-linear" at launch); both sides score with SmolLM2 + a scalar head
(TRL's PPO scores token ids, so the reward model must share the policy's tokenizer) and read rlhfkit's
default prompts through the chat template. rlhfkit runs twice: LoRA on all 30 blocks (as TRL) and its
default, LoRA on the top 8 blocks (then the 22 frozen blocks below run once per rollout, see
``PolicyWithValue.frozen_prefix``).

Memory table: rlhfkit with LoRA (the reference = adapters off, one copy of the weights) against full
fine-tuning (``lora_r=0``: every weight trains, plus a separate frozen reference copy), same model,
prompts and settings; on the tiny model (where the Python/torch runtime dominates) and on the real
default SmolLM2-135M-Instruct (batch 8, ≤32 tokens, 2 updates, the MiniLM reward model, chat template).

CPU timings are skewed by other work on the machine (on 2 cores, another busy process can make an
update 10× slower). Each row records the 1-minute load average after the side ran and the CPUs other
processes kept busy just before it (/proc/stat); ``--quiet-wait`` waits for them to go quiet.
``--clock cpu --threads 1`` times every side in CPU seconds of its own process instead, which other
load barely moves. TRL runs in its own venvs (install: ../shared/peers/trl/README.md); this file is
also the worker script of the rlhfkit side (``--ours-worker JOB``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from turns import from_env

ROOT = Path(__file__).resolve().parents[1]
# the peers' scripts: ../shared/peers/trl beside the checkout (a git worktree elsewhere: set RLHFKIT_TRL_PEERS)
PEERS = Path(os.environ.get("RLHFKIT_TRL_PEERS", ROOT.parent / "shared" / "peers" / "trl"))
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


def busy_cpus(seconds: float = 2.0) -> float:
    """CPUs kept busy by other processes over the next ``seconds`` (from /proc/stat; between our runs)."""
    def sample() -> tuple[int, int]:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = v[3] + v[4]  # idle + iowait
        return sum(v) - idle, sum(v)

    try:
        b0, t0 = sample()
        time.sleep(seconds)
        b1, t1 = sample()
    except (OSError, ValueError, IndexError):
        return float("nan")
    return (b1 - b0) / max(t1 - t0, 1) * (os.cpu_count() or 1)


def wait_until_quiet(max_busy: float, max_wait: float) -> float:
    """Wait (at most ``max_wait`` s) until other processes use less than ``max_busy`` CPUs; returns the last reading."""
    deadline = time.monotonic() + max_wait
    busy = busy_cpus()
    while busy > max_busy and time.monotonic() < deadline:
        busy = busy_cpus(5.0)
    return busy


# ---------------------------------------------------------------------------------------------
# rlhfkit worker (a subprocess: its own peak RSS)
# ---------------------------------------------------------------------------------------------


def worker_setup(job: dict) -> None:
    """A worker's environment: offline, ``job["threads"]`` threads, and under ``--clock cpu`` every timer of the run
    (also rlhfkit's own) counting this process's CPU time."""
    os.environ.update(_offline_env(job["threads"]))
    import torch

    torch.set_num_threads(job["threads"])
    if job["clock"] == "cpu":
        time.perf_counter = time.process_time


def peak_rss_mib() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def ours_setup(job: dict):
    """What a run of ``job`` steps with, built as `rlhfkit ppo` builds it: (hp, model, tokenizer, reward scorer
    (float32), optimizer, KL controller, step function: ``ppo_step``, or ``critic_free_step`` for rloo|grpo)."""
    import torch

    from rlhfkit.config import PPOConfig, load_config
    from rlhfkit.models.policy import build_policy
    from rlhfkit.models.reward import RewardModel
    from rlhfkit.rewards import load_scorer
    from rlhfkit.train.kl_control import FixedKLController
    from rlhfkit.train.critic_free import critic_free_step
    from rlhfkit.train.ppo import ppo_step, seed_everything

    hp = load_config(PPOConfig, None, {
        "model": job["model"], "batch_size": job["batch"], "minibatch_size": job["batch"], "ppo_epochs": job["epochs"],
        "max_new_tokens": job["response_length"], "lora_r": job["lora_r"], "lora_alpha": 2 * max(job["lora_r"], 1),
        "lora_layers": job["lora_layers"], "kl_coef": job["kl"], "lr": job["lr"], "gold": False, "device": "cpu",
        "seed": job["seed"], "temperature": job["temperature"], "algorithm": job.get("algorithm", "ppo"),
        "group_size": job.get("group_size", 2), "dtype": "float32",
        "kl_bias_correction": job.get("kl_bias_correction", False),
    })
    seed_everything(hp.seed)
    model, tokenizer = build_policy(hp.model, lora_r=hp.lora_r, lora_alpha=hp.lora_alpha, device="cpu",
                                    lora_layers=hp.lora_layers)
    if job["plain_prompts"]:  # the prompts as TRL sees them: raw text, no chat template
        tokenizer.chat_template = None
    with tempfile.TemporaryDirectory() as tmp:  # the reward model goes through its saved-folder path, as in `rlhfkit ppo`
        RewardModel.from_backbone(job["reward_model"], device="cpu").save(Path(tmp) / "reward_model")
        score_fn, _, _ = load_scorer(str(Path(tmp) / "reward_model"), Path(tmp), "cpu", dtype="float32")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=hp.lr, eps=1e-5)
    return (hp, model, tokenizer, score_fn, optimizer, FixedKLController(hp.kl_coef),
            ppo_step if hp.algorithm == "ppo" else critic_free_step)


def ours_worker(job_path: str) -> None:
    """PPO (``ppo_step``) or, with ``job["algorithm"]`` rloo|grpo, ``critic_free_step`` in a loop, as `rlhfkit ppo`."""
    job = json.loads(Path(job_path).read_text())
    worker_setup(job)
    import torch

    from rlhfkit.train.ppo import prompt_batch

    hp, model, tokenizer, score_fn, optimizer, kl_ctl, step_fn = ours_setup(job)
    norm = None  # fitted on the first iteration's rollouts, as in `rlhfkit ppo`
    prompts = job["prompts"]
    times, lengths, rollout_s, update_s = [], [], [], []
    n = job["warmup"] + job["updates"]
    turns = from_env()  # bench/algos.py --interleave: one update each with TRL's side, in turn
    for it in range(n):
        batch = prompt_batch(prompts, it, hp.prompts_per_iteration, hp.seed)
        if turns:
            turns.wait()
        t0 = time.perf_counter()
        step = step_fn(model, tokenizer, optimizer, kl_ctl, batch, score_fn, None, iteration=it, seed=hp.seed, hp=hp,
                        norm=norm)
        norm, stats = step.rollout.norm, step.stats
        times.append(time.perf_counter() - t0)
        if turns:
            turns.give(last=it == n - 1)
        lengths.append(stats["rollout/length"])
        rollout_s.append(stats["time/rollout_s"])
        update_s.append(stats["time/update_s"])
    w = job["warmup"]
    med = statistics.median(times[w:])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    mean_len = statistics.fmean(lengths[w:])
    result = {
        "side": "rlhfkit", "algorithm": hp.algorithm, "clock": job["clock"], "lora_r": hp.lora_r, "lora_layers": hp.lora_layers, "batch": hp.batch_size,
        "threads": torch.get_num_threads(), "step_times_s": [round(t, 4) for t in times], "warmup_steps": w,
        "median_s": round(med, 4), "min_s": round(min(times[w:]), 4), "max_s": round(max(times[w:]), 4),
        "median_rollout_s": round(statistics.median(rollout_s[w:]), 4),
        "median_update_s": round(statistics.median(update_s[w:]), 4),
        "mean_completion_len": round(mean_len, 2), "samples_per_s": round(hp.batch_size / med, 2),
        "gen_tokens_per_s": round(hp.batch_size * mean_len / med, 1),
        "params_total": total, "params_trainable": trainable,
        "peak_rss_mib": peak_rss_mib(),
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


def run_ours(job: dict, threads: int, timeout: float, script: str | Path = __file__, env: dict | None = None) -> dict:
    """``job`` run by ``script --ours-worker JOB`` in a fresh process (its own peak RSS); its RESULT line.
    ``env``: more environment variables (``RLHFKIT_TURNS``: bench/turns.py)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
        path = f.name
    try:
        proc = subprocess.run([sys.executable, str(Path(script).resolve()), "--ours-worker", path], capture_output=True,
                              text=True, env={**_offline_env(threads), **(env or {})}, timeout=timeout)
    finally:
        os.unlink(path)
    return _result(proc)


# --clock cpu: the peers' script unchanged, its step timer (time.perf_counter) reading process CPU time
_CPU_CLOCK = ("import runpy, sys, time; time.perf_counter = time.process_time; sys.argv = sys.argv[1:]; "
              "sys.path.insert(0, '.'); runpy.run_path(sys.argv[0], run_name='__main__')")


# --smollm2-speed: bench_ppo.py targets GPT-2's module names (c_attn, c_proj, c_fc); on a Llama-shaped model its
# LoraConfig gets every linear layer instead, as rlhfkit's LoRA does (peft's "all-linear" leaves out the LM head).
_ALL_LINEAR = ("import peft; _LC = peft.LoraConfig; "
               "peft.LoraConfig = lambda **kw: _LC(**{**kw, 'target_modules': 'all-linear', 'fan_in_fan_out': False}); ")


def run_trl(python: Path, args: list[str], threads: int, timeout: float, clock: str, all_linear: bool = False,
            script: str = "bench_ppo.py", prelude: str = "", env: dict | None = None) -> dict:
    """One of the peers' scripts, unchanged, in its TRL venv; ``prelude`` is Python run before it (a patch),
    ``env`` more environment variables."""
    prelude += _ALL_LINEAR if all_linear else ""
    launch = [str(python), script]
    if clock == "cpu" or prelude:
        snippet = prelude + (_CPU_CLOCK if clock == "cpu" else _CPU_CLOCK.replace(
            "time.perf_counter = time.process_time; ", ""))
        launch = [str(python), "-c", snippet, script]
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([*launch, *args, "--out", out], capture_output=True, text=True, cwd=PEERS,
                              env={**_offline_env(threads), **(env or {})}, timeout=timeout)
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
    if len(r.get("round_medians_s", [])) > 1:
        note = "rounds " + ", ".join("–" if m is None else f"{m:.2f}" for m in r["round_medians_s"]) + " " + note
    times = r["step_times_s"][r["warmup_steps"] :]
    return (f"| {name} | {r['median_s']:.3f} ({min(times):.3f}–{max(times):.3f}) | {r['samples_per_s']:.1f} | "
            f"{r['gen_tokens_per_s']:.0f} | {r['mean_completion_len']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{r['loadavg'][0]:.2f} / {r.get('other_busy_cpus_before', float('nan')):.2f} {note}|")


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """The options bench/ppo.py and bench/algos.py share: peers, model folder, settings, clock, rounds."""
    ap.add_argument("--trl-python", default=os.environ.get("RLHFKIT_TRL_PYTHON", str(DEFAULT_TRL_PYTHON)),
                    help="python of a venv with trl 1.16 (default $RLHFKIT_TRL_PYTHON or ~/scratch/trlenv)")
    ap.add_argument("--tiny", default=str(DEFAULT_TINY), help="folder of make_tiny.py's models and prompts")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--response-length", type=int, default=32)
    ap.add_argument("--updates", type=int, default=6, help="timed updates per side")
    ap.add_argument("--warmup", type=int, default=1, help="updates before the timed ones")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--kl", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: time updates in process CPU seconds (with --threads 1, barely moved by other load)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds of the tiny-model sides, one side after the other; each side keeps its fastest round")
    ap.add_argument("--quiet-wait", type=float, default=0,
                    help="before each side wait up to this many seconds for other processes to go quiet (0 = no wait)")
    ap.add_argument("--quiet-max", type=float, default=0.3, help="'quiet' = other processes use fewer CPUs than this")
    ap.add_argument("--json", default="", help="append all results as one JSON line to this file")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ours-worker", help=argparse.SUPPRESS)
    ap.add_argument("--smollm2-batch", type=int, default=8, help="batch of the SmolLM2 memory runs")
    ap.add_argument("--smollm2-updates", type=int, default=2, help="updates of each SmolLM2 memory run")
    ap.add_argument("--no-smollm2", action="store_true", help="skip the SmolLM2-135M memory runs")
    ap.add_argument("--smollm2-speed", action="store_true",
                    help="also the speed comparison with TRL 1.12 PPO on SmolLM2-135M (batch --smollm2-batch; minutes)")
    ap.add_argument("--scratch", default=str(SCRATCH / "rlhfkit-bench"), help="where the SmolLM2 reward-model folder goes")
    ap.add_argument("--quick", action="store_true", help="3 timed updates, no SmolLM2 runs")
    ap.add_argument("--no-speed", action="store_true", help="only the memory runs (LoRA vs full fine-tuning)")
    ap.add_argument("--trl112-python", default=os.environ.get("RLHFKIT_TRL112_PYTHON", str(DEFAULT_TRL112_PYTHON)),
                    help="python of a venv with trl 1.12.0 (default $RLHFKIT_TRL112_PYTHON or ~/scratch/trlenv112)")
    ap.add_argument("--epochs", type=int, default=4)
    add_common_args(ap)
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
              "seed": a.seed, "threads": a.threads, "temperature": 0.7, "clock": a.clock}
    ours_job = {**common, "model": str(tiny / "small"), "reward_model": str(tiny / "small-rm"), "prompts": prompts,
                "lora_r": a.lora_r, "lora_layers": 0, "warmup": a.warmup, "updates": a.updates, "plain_prompts": True}
    results: dict = {"settings": {**common, "updates": a.updates, "warmup": a.warmup, "lora_r": a.lora_r}}
    timeout = 600

    attempt = functools.partial(attempt_side, a, results)

    ours = trl_ppo = trl_rloo = full_tiny = None
    if not a.no_speed:
        ours, trl_ppo, trl_rloo, full_tiny = speed_runs(a, tiny, ours_job, attempt, timeout)

    # LoRA + shared reference vs full fine-tuning + separate reference (rlhfkit both)
    mem: list[tuple[str, dict | None, dict | None]] = []
    if not a.no_speed:
        mem.append(("tiny GPT-2 3.7M, batch %d (same runs as above)" % a.batch, ours, full_tiny))
    if not a.no_smollm2:
        mem += smollm2_memory_runs(a, common, attempt, timeout)
    smol_speed = smollm2_speed_runs(a, common, attempt, timeout) if a.smollm2_speed else []

    # ---- tables
    if not a.no_speed:
        print_speed_table(a, ours, trl_ppo, trl_rloo, full_tiny, results)
    if smol_speed:
        print_smollm2_speed(a, smol_speed)
    print("\n## Peak RSS: LoRA + shared reference vs full fine-tuning + separate frozen reference (rlhfkit)\n")
    print("| model | LoRA MiB | full FT MiB | LoRA / full (target ≤ 0.55) | trainable params LoRA / full |")
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


def _labels(label: str | tuple) -> list[str]:
    """The labels of one side, or of sides run together (a tuple of labels)."""
    return list(label) if isinstance(label, tuple) else [label]


def _each(label: str | tuple, got) -> list[tuple[str, dict | None]]:
    """[(label, result)] of one side, or of sides run together (``fn`` returning their results); None where a side
    failed, or every side when ``got`` is None (the attempt failed)."""
    labels = _labels(label)
    if got is None:
        return [(one, None) for one in labels]
    return list(zip(labels, got if isinstance(label, tuple) else [got]))


def attempt_side(a, results: dict, label: str | tuple, fn):
    """Run one side (``fn``), or sides run together (``label`` a tuple), after waiting for the machine to go quiet
    under ``--quiet-wait``; print their figures and keep each result under its label, with the CPUs other
    processes kept busy just before. None if it failed."""
    busy = wait_until_quiet(a.quiet_max, a.quiet_wait) if a.quiet_wait > 0 else busy_cpus()
    try:
        got = fn()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"{label} failed: {exc}", flush=True)
        return None
    for one, r in _each(label, got):
        if r is None:  # one of sides run together failed (reported by its runner)
            continue
        rate = f"{r['samples_per_s']:.1f} samples/s" if "samples_per_s" in r else f"{r['pairs_per_s']:.1f} pairs/s"
        print(f"{one}: {r['median_s']:.3f} s/step, {rate}, {r['peak_rss_mib']:.0f} MiB peak RSS; "
              f"load {r.get('loadavg') or r.get('loadavg_1m_5m')}", flush=True)
        r.setdefault("loadavg", r.get("loadavg_1m_5m", []))
        r["other_busy_cpus_before"] = round(busy, 2)
        results[one] = r
    return got


def best_of_rounds(sides: list, repeats: int, attempt) -> dict[str, dict | None]:
    """``repeats`` rounds of ``sides`` ([(label, fn)]; a tuple of labels: sides run together, ``fn`` returning their
    results), one after the other in each round; each side keeps its fastest round (lowest ``median_s``: a burst of other work on the
    machine only ever slows a round down), with every round's median (None where that round failed)."""
    best: dict[str, dict | None] = {one: None for label, _ in sides for one in _labels(label)}
    medians: dict[str, list] = {one: [] for one in best}
    for rnd in range(repeats):
        for label, fn in sides:
            rounded = [one if repeats == 1 else f"{one} (round {rnd + 1})" for one in _labels(label)]
            got = attempt(tuple(rounded) if isinstance(label, tuple) else rounded[0], fn)
            for one, r in _each(label, got):
                medians[one].append(None if r is None else r["median_s"])
                if r is not None and (best[one] is None or r["median_s"] < best[one]["median_s"]):
                    best[one] = r
                if best[one] is not None:
                    best[one]["round_medians_s"] = medians[one]
    return best


def speed_runs(a, tiny: Path, ours_job: dict, attempt, timeout: float):
    """The four tiny-model sides, ``--repeats`` rounds interleaved; each side keeps its fastest round (a burst of
    other work on the machine only ever slows a round down)."""
    trl_args = ["--model", str(tiny / "small"), "--data", str(tiny), "--batch", str(a.batch), "--updates",
                str(a.warmup + a.updates), "--warmup", str(a.warmup), "--response-length", str(a.response_length),
                "--lora-r", str(a.lora_r), "--ppo-epochs", str(a.epochs), "--kl", str(a.kl), "--seed", str(a.seed),
                "--no-grad-ckpt", "--k", "2"]
    sides = [("rlhfkit", lambda: run_ours(ours_job, a.threads, timeout))]
    for label, python, algo in (("TRL 1.12.0 PPO", Path(a.trl112_python), "ppo"), ("TRL 1.16.0 RLOO", Path(a.trl_python), "rloo")):
        if python.exists():
            sides.append((label, lambda python=python, algo=algo: run_trl(python, [*trl_args, "--algo", algo], a.threads,
                                                                          timeout, a.clock)))
        else:
            print(f"TRL not available: no python at {python} (set --trl-python / --trl112-python or "
                  "RLHFKIT_TRL_PYTHON / RLHFKIT_TRL112_PYTHON; install per ../shared/peers/trl/README.md)", flush=True)
    sides.append(("rlhfkit full FT (tiny)", lambda: run_ours({**ours_job, "lora_r": 0}, a.threads, timeout)))
    best = best_of_rounds(sides, a.repeats, attempt)
    return best["rlhfkit"], best.get("TRL 1.12.0 PPO"), best.get("TRL 1.16.0 RLOO"), best["rlhfkit full FT (tiny)"]


def smollm2_memory_runs(a, common: dict, attempt, timeout: float) -> list[tuple[str, dict | None, dict | None]]:
    """rlhfkit on the default policy: LoRA (top 8 blocks, the default; and all blocks) vs full fine-tuning."""
    from rlhfkit import defaults
    from rlhfkit.data.io import read_prompts

    prompts = [p.prompt for p in read_prompts(defaults.prompts_path()) if p.split == "train"]
    job = {**common, "batch": a.smollm2_batch, "model": "smollm2", "reward_model": "minilm", "prompts": prompts,
           "warmup": 0, "updates": a.smollm2_updates, "plain_prompts": False}
    lora = attempt("rlhfkit LoRA top 8 blocks (SmolLM2)",
                   lambda: run_ours({**job, "lora_r": a.lora_r, "lora_layers": 8}, a.threads, timeout))
    lora_all = attempt("rlhfkit LoRA all blocks (SmolLM2)",
                       lambda: run_ours({**job, "lora_r": a.lora_r, "lora_layers": 0}, a.threads, timeout))
    full = attempt("rlhfkit full FT (SmolLM2)", lambda: run_ours({**job, "lora_r": 0, "lora_layers": 0}, a.threads, timeout))
    name = f"SmolLM2-135M-Instruct, batch {a.smollm2_batch}, ≤{a.response_length} tokens, {a.smollm2_updates} updates"
    return [(f"{name}, LoRA top 8 of 30 blocks (default)", lora, full), (f"{name}, LoRA all 30 blocks", lora_all, full)]


def ensure_smollm2_pair(folder: Path) -> Path:
    """``folder/smollm2`` (a link to rlhfkit's converted SmolLM2-135M-Instruct) and ``folder/smollm2-rm`` (the same
    weights as a sequence classifier, a fresh seeded scalar head): the reward model and TRL's value-model init
    must share the policy's tokenizer, as TRL's PPO scores token ids."""
    policy, rm = folder / "smollm2", folder / "smollm2-rm"
    if (rm / "config.json").exists() and policy.exists():
        return policy
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhfkit.models.load import smollm2_path

    folder.mkdir(parents=True, exist_ok=True)
    if not policy.exists():
        policy.symlink_to(smollm2_path())
    tok = AutoTokenizer.from_pretrained(policy)
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1, id2label={0: "LABEL_0"},
                                                               label2id={"LABEL_0": 0})
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(rm)
    tok.save_pretrained(rm)
    return policy


def smollm2_speed_runs(a, common: dict, attempt, timeout: float) -> list[tuple[str, dict | None]]:
    """The same comparison on SmolLM2-135M-Instruct: rlhfkit (LoRA on all blocks, as TRL; and the default top 8)
    vs TRL 1.12 PPO, both scoring with a SmolLM2-shaped reward model, on rlhfkit's default train prompts through
    the chat template (TRL gets the rendered text: the same token ids). Through the template the instruct model
    answers at length, so both sides generate ~32 tokens (TRL always exactly 32; raw prompts end early)."""
    from transformers import AutoTokenizer

    from rlhfkit import defaults
    from rlhfkit.data.io import read_prompts
    from rlhfkit.models.load import format_prompt

    policy = ensure_smollm2_pair(Path(a.scratch))
    prompts = [p.prompt for p in read_prompts(defaults.prompts_path()) if p.split == "train"]
    data = Path(a.scratch) / "smollm2-prompts"
    data.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(policy)
    (data / "prompts.jsonl").write_text("".join(json.dumps({"prompt": format_prompt(tok, p)}) + "\n" for p in prompts))
    job = {**common, "batch": a.smollm2_batch, "model": "smollm2", "reward_model": str(policy) + "-rm",
           "prompts": prompts, "warmup": a.warmup, "updates": a.smollm2_updates, "plain_prompts": False, "lora_r": a.lora_r}
    rows = [("rlhfkit PPO, LoRA all 30 blocks", attempt("rlhfkit all blocks (SmolLM2 speed)",
                                                       lambda: run_ours({**job, "lora_layers": 0}, a.threads, timeout))),
            ("rlhfkit PPO, LoRA top 8 blocks (default)", attempt("rlhfkit top 8 (SmolLM2 speed)",
                                                                lambda: run_ours({**job, "lora_layers": 8}, a.threads, timeout)))]
    python = Path(a.trl112_python)
    if not python.exists():
        print(f"TRL not available: no python at {python}", flush=True)
        return rows + [("TRL 1.12.0 PPO, LoRA all linear", None)]
    args = ["--model", str(policy), "--data", str(data), "--batch", str(a.smollm2_batch), "--updates",
            str(a.warmup + a.smollm2_updates), "--warmup", str(a.warmup), "--response-length", str(a.response_length),
            "--lora-r", str(a.lora_r), "--ppo-epochs", str(a.epochs), "--kl", str(a.kl), "--seed", str(a.seed),
            "--no-grad-ckpt", "--algo", "ppo"]
    trl = attempt("TRL 1.12.0 PPO (SmolLM2 speed)", lambda: run_trl(python, args, a.threads, timeout, a.clock, all_linear=True))
    return rows + [("TRL 1.12.0 PPO, LoRA all linear, separate value model", trl)]


def print_smollm2_speed(a, rows: list[tuple[str, dict | None]]) -> None:
    unit = "CPU s" if a.clock == "cpu" else "s"
    print(f"\n## PPO update speed, SmolLM2-135M-Instruct (batch {a.smollm2_batch}, ≤{a.response_length} tokens, "
          f"{a.threads} threads, clock: {a.clock}; reward model = SmolLM2 + scalar head)\n")
    print(f"| side | median {unit}/update (min–max) | samples/s | tokens/s | mean tokens | peak RSS MiB | load 1 min after / other CPUs busy before |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(_fmt_row(name, r))
    trl = rows[-1][1]
    for name, r in rows[:-1]:
        if r and trl:
            print(f"{name} / TRL PPO: samples/s {r['samples_per_s'] / trl['samples_per_s']:.2f}×, tokens/s "
                  f"{r['gen_tokens_per_s'] / trl['gen_tokens_per_s']:.2f}×, peak RSS {r['peak_rss_mib'] / trl['peak_rss_mib']:.2f}×")


def print_speed_table(a, ours, trl_ppo, trl_rloo, full_tiny, results: dict) -> None:
    unit = "CPU s" if a.clock == "cpu" else "s"
    print(f"\n## PPO update speed, tiny GPT-2 (batch {a.batch}, ≤{a.response_length} tokens, {a.threads} threads, "
          f"clock: {a.clock})\n")
    print(f"| side | median {unit}/update (min–max) | samples/s | tokens/s | mean tokens | peak RSS MiB | load 1 min after / other CPUs busy before |")
    print("|---|---|---|---|---|---|---|")
    print(_fmt_row(f"rlhfkit PPO, LoRA ({a.epochs} epochs, shared critic, ref = adapters off)", ours))
    print(_fmt_row(f"TRL 1.12.0 PPO, LoRA ({a.epochs} epochs, separate value model)", trl_ppo))
    print(_fmt_row("TRL 1.16.0 RLOO, LoRA (k=2, 1 step, no critic)", trl_rloo))
    print(_fmt_row("rlhfkit PPO, full fine-tuning + separate reference", full_tiny))
    if not ours:
        return
    print(f"\nrlhfkit: rollout {ours['median_rollout_s']:.3f} + update {ours['median_update_s']:.3f} {unit} (medians)")
    for name, r in (("TRL PPO", trl_ppo), ("TRL RLOO", trl_rloo)):
        if r:
            ratio = {"samples_per_s": ours["samples_per_s"] / r["samples_per_s"],
                     "tokens_per_s": ours["gen_tokens_per_s"] / r["gen_tokens_per_s"],
                     "peak_rss": ours["peak_rss_mib"] / r["peak_rss_mib"]}
            results[f"ratio_vs_{name}"] = ratio
            print(f"rlhfkit / {name}: samples/s {ratio['samples_per_s']:.2f}×, tokens/s {ratio['tokens_per_s']:.2f}×, "
                  f"peak RSS {ratio['peak_rss']:.2f}×" + ("  (target ≥ 3× at ≤ 1×)" if name == "TRL PPO" else ""))


if __name__ == "__main__":
    main()
