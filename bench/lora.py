"""LoRA's product inside the base GEMM (models/lora.py ``FusedLoraLinear``) against peft's own layer, in one process.

    python bench/lora.py                      # GRPO updates on the peers' tiny GPT-2, the layers' class alternating
    python bench/lora.py --model smollm2 --lora-layers 8 --shape 16x96   # forward + backward of a real model

Two measurements, each alternating the two layer classes step by step on the same weights (the same machine
moments for both; CPU seconds of this process, 1 thread, float32), medians and their ratio printed:

- ``grpo`` (default): ``critic_free_step`` as in ``rlhfkit ppo --algorithm grpo`` on bench/algos.py's setup (the
  peers' ``small`` policy, 3.7M params, LoRA r=16 on every linear layer; ``small-rm`` in float32; 8 prompts × k=2,
  ≤32 tokens); the step's update phase (``time/update_s``: the training forward and backward, the optimizer step)
  is where the layers differ — sampling folds LoRA into the weights and the reference pass runs without it.
- ``--model M``: forward and backward of causal LM ``M`` (a folder, or smollm2) with LoRA (``--lora-layers``: the
  top N blocks; 0 all), a loss on the log-softmax of the last half of ``--shape`` B×T random tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ppo as bench_ppo  # noqa: E402  (bench/ppo.py: the peers' tiny models)


def _classes(lm):
    from peft.tuners.lora.layer import Linear as LoraLinear

    from rlhfkit.models.lora import FusedLoraLinear

    layers = [m for m in lm.modules() if type(m) is FusedLoraLinear]
    if not layers:
        raise SystemExit("no fused LoRA layers in the model: nothing to compare")

    def use(name: str) -> None:
        for m in layers:
            m.__class__ = FusedLoraLinear if name == "fused" else LoraLinear

    return use, len(layers)


def alternate(run_one, use, steps: int) -> dict[str, list[float]]:
    """``steps`` rounds; each runs both classes, in alternating order. run_one() → seconds of one measured step."""
    times: dict[str, list[float]] = {"fused": [], "peft": []}
    for i in range(steps):
        for name in ("fused", "peft") if i % 2 == 0 else ("peft", "fused"):
            use(name)
            times[name].append(run_one())
    use("fused")
    return times


def grpo(a) -> tuple[dict, str]:
    from rlhfkit.train.ppo import prompt_batch

    tiny = Path(a.tiny)
    bench_ppo.ensure_tiny(tiny, a.threads)
    prompts = [json.loads(x)["prompt"] for x in (tiny / "prompts.jsonl").read_text().splitlines() if x.strip()]
    # bench/algos.py's GRPO job with its defaults, built by the same worker code
    job = {"algorithm": "grpo", "model": str(tiny / "small"), "reward_model": str(tiny / "small-rm"), "batch": 16,
           "epochs": 1, "response_length": 32, "lora_r": 16, "lora_layers": 0, "kl": 0.05, "lr": 1e-5, "seed": 0,
           "temperature": 1.0, "group_size": 2, "plain_prompts": True}
    hp, model, tok, score_fn, optimizer, kl_ctl, step_fn = bench_ppo.ours_setup(job)
    state = {"it": 0, "norm": None}

    def one() -> float:
        it = state["it"]
        step = step_fn(model, tok, optimizer, kl_ctl, prompt_batch(prompts, it, hp.prompts_per_iteration, hp.seed),
                       score_fn, None, iteration=it, seed=hp.seed, hp=hp, norm=state["norm"])
        state["it"], state["norm"] = it + 1, step.rollout.norm
        return step.stats["time/update_s"]

    use, n = _classes(model.lm)
    for _ in range(2):  # warm-up
        one()
    return alternate(one, use, a.steps), f"GRPO update phase (time/update_s), peers' tiny GPT-2, {n} LoRA layers"


def forward_backward(a) -> tuple[dict, str]:
    import torch

    from rlhfkit.models.load import add_lora, load_causal_lm, resolve

    lm = add_lora(load_causal_lm(str(resolve(a.model)), device="cpu", dtype="float32"), r=16, alpha=32,
                  top_layers=a.lora_layers)
    B, T = (int(x) for x in a.shape.split("x"))
    torch.manual_seed(0)
    ids = torch.randint(0, lm.get_input_embeddings().weight.shape[0], (B, T))

    def one() -> float:
        t = time.process_time()
        lm.zero_grad(set_to_none=True)
        logits = lm(input_ids=ids).logits[:, T // 2 :]
        torch.log_softmax(logits.float(), -1)[..., 0].sum().backward()
        return time.process_time() - t

    use, n = _classes(lm)
    one()
    return alternate(one, use, a.steps), f"forward + backward of {a.model} at {B}×{T}, {n} LoRA layers"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="", help="forward + backward of this causal LM instead of GRPO updates")
    ap.add_argument("--lora-layers", type=int, default=0, help="with --model: LoRA on the top N blocks (0: all)")
    ap.add_argument("--shape", default="16x96", help="with --model: batch × tokens")
    ap.add_argument("--steps", type=int, default=12, help="measured steps per class")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tiny", default=str(bench_ppo.DEFAULT_TINY), help="folder of the peers' tiny models")
    a = ap.parse_args()
    bench_ppo.worker_setup({"threads": a.threads, "clock": "cpu"})  # rlhfkit's own timers count CPU seconds too
    from rlhfkit.machine import cpu_line

    times, what = forward_backward(a) if a.model else grpo(a)
    fused, peft = (statistics.median(times[k]) for k in ("fused", "peft"))
    print(f"CPU: {cpu_line()}; {a.threads} thread(s), float32, CPU seconds; {what}; {a.steps} steps per class, alternating")
    print("| layers | median s | min–max s |")
    print("|---|---|---|")
    for k in ("fused", "peft"):
        print(f"| {'rlhfkit FusedLoraLinear' if k == 'fused' else 'peft lora.Linear'} | {statistics.median(times[k]):.4f} | "
              f"{min(times[k]):.4f}–{max(times[k]):.4f} |")
    print(f"\nfused / peft: {fused / peft:.3f} (median of per-round ratios "
          f"{statistics.median(f / p for f, p in zip(times['fused'], times['peft'])):.3f})")


if __name__ == "__main__":
    main()
