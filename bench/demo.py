"""The demo, measured: `rlhfkit demo` for given seeds and precision, each in its own process, then the
per-stage seconds and the verdict table of every run (and of the β = 0 run beside it with --no-kl).

    python bench/demo.py --seeds 0 1 2 --dtype float32 [--no-kl] [--out runs/bench-demo]

Every figure names the machine (CPU, vector units, threads). A run whose directory already holds a
finished demo with the same configs is not re-run (the pipeline skips finished stages): pass --force to
time it again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("generate", "label", "pairs", "train_rm", "ppo", "eval")


def run_demo(run_dir: Path, seed: int, dtype: str, no_kl: bool, force: bool) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "rlhfkit", "demo", "--run-dir", str(run_dir), "--seed", str(seed), "--dtype", dtype]
    cmd += ["--no-kl"] * no_kl + ["--force"] * force
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
    return time.perf_counter() - t0, proc.returncode


def fmt(stat: dict | None, pct: bool = False) -> str:
    if not isinstance(stat, dict) or stat.get("value") is None:
        return "—"
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:+.3f}")
    return f"{f(stat['value'])} [{f(stat['lo'])}, {f(stat['hi'])}]" if stat.get("lo") is not None else f(stat["value"])


def row(name: str, run_dir: Path, wall: float) -> list[str]:
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    run = json.loads((run_dir / "run.json").read_text())
    tox = ev.get("toxicity_where_it_lives", {})
    models = ev["models"]
    stages = run.get("stages", {})
    times = " ".join(f"{s[:3]} {stages[s]['seconds']:.0f}" if "seconds" in stages.get(s, {}) else f"{s[:3]} skip"
                     for s in STAGES if s in stages)
    both = ev.get("gold_win_by_ending", {}).get("both_ended", {})
    return [name, fmt(ev["win_rate"].get("gold"), True),
            f"{fmt(both.get('gold_win_rate'), True)}, {both.get('n', 0)} pairs" if both.get("n") else "—",
            f"{tox.get('reference', {}).get('value', float('nan')):.3f} → {tox.get('policy', {}).get('value', float('nan')):.3f}",
            fmt(tox.get("difference")),
            f"{models['reference']['reward_model']['value']:+.2f} → {models['policy']['reward_model']['value']:+.2f}",
            f"{models['reference']['gold']['value']:.2f} → {models['policy']['gold']['value']:.2f}",
            f"{ev['kl']['value']:.2f}", "✓" if ev["verdict"]["passed"] else "✗", f"{wall / 60:.1f}", times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"])
    ap.add_argument("--no-kl", action="store_true", help="also the β = 0 run beside each seed's KL run")
    ap.add_argument("--out", default="runs/bench-demo")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    from rlhfkit import machine

    print(f"machine: {machine.one_line(machine.describe())}; dtype {a.dtype}")
    header = ["run", "gold win rate", "gold win, both replies ended", "toxicity (prov.+red-team)", "Δ toxicity [95%]",
              "reward model", "gold score", "KL", "verdict", "min", "stage seconds"]
    rows = []
    for seed in a.seeds:
        run_dir = Path(a.out) / f"{a.dtype}-seed{seed}"
        for no_kl in (False, True) if a.no_kl else (False,):
            wall, rc = run_demo(run_dir, seed, a.dtype, no_kl, a.force)
            target = Path(f"{run_dir}-no-kl") if no_kl else run_dir
            name = f"seed {seed}" + (" β=0" if no_kl else "")
            if rc != 0:
                rows.append([name, f"failed (exit {rc})"] + [""] * (len(header) - 2))
                continue
            rows.append(row(name, target, wall))
            print(" | ".join(rows[-1]), flush=True)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
