"""`rlhfkit doctor`'s estimate against a measured peak: one sft step (the shipped ``sft_step``: forward, backward,
AdamW) of SmolLM2-135M with LoRA on a batch of fixed-length rows, one process on CPU.

Measured: the process's peak resident memory (ru_maxrss) minus its resident memory after the imports, before the
model loads — what the run adds. Estimated: ``train.memory.estimate`` for the same plan, without the fixed
framework allowance (the imports are in the baseline).

    python bench/memory.py [--model smollm2] [--batch 4] [--prompt 64] [--reply 64] [--lora-r 16]
"""

from __future__ import annotations

import argparse
import resource
import subprocess

import torch

from rlhfkit.models.load import add_lora, load_policy, resolve
from rlhfkit.train.memory import FRAMEWORK_BYTES, GIB, Plan, estimate, read_shape
from rlhfkit.train.sft import sft_step


def rss() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--reply", type=int, default=64)
    ap.add_argument("--lora-r", type=int, default=16)
    a = ap.parse_args()
    torch.manual_seed(0)
    base = rss()
    lm, tok = load_policy(a.model, device="cpu")
    if a.lora_r:
        lm = add_lora(lm, r=a.lora_r, alpha=2 * a.lora_r, dropout=0.0)
    vocab = lm.config.vocab_size
    rows = [(torch.randint(3, vocab, (a.prompt + a.reply,)).tolist(), a.prompt) for _ in range(a.batch)]
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-4)
    sft_step(lm, optimizer, rows, pad_id=tok.pad_token_id, step=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # KiB on Linux
    plan = Plan(stage="sft", lora_r=a.lora_r, lora_layers=0, dtype="float32", batch_size=a.batch, minibatch_size=a.batch,
                prompt_tokens=a.prompt, new_tokens=a.reply, strategy="ddp", world_size=1)
    parts = estimate(read_shape(resolve(a.model)), plan)
    est = sum(parts.values()) - FRAMEWORK_BYTES
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")
    print(f"CPU: {name}; torch {torch.__version__}; float32; {a.model}, LoRA r={a.lora_r}, batch {a.batch} × "
          f"{a.prompt}+{a.reply} tokens, one sft step")
    print("estimate parts (GiB): " + ", ".join(f"{k} {v / GIB:.3f}" for k, v in parts.items() if k != "framework"))
    print(f"estimated {est / GIB:.3f} GiB; measured peak RSS rise {(peak - base) / GIB:.3f} GiB; "
          f"ratio estimate / measured {est / (peak - base):.2f}")


if __name__ == "__main__":
    main()
