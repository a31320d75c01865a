"""New tokens/s of `rlhfkit generate` on the default model at batch 1, 16 and 64, beside plain
`model.generate` (the reference) on the same prompts, settings, seed and weights, in one process;
once with float32 weights and once with bfloat16 (what ``dtype: auto`` picks on a CPU with
AVX512-BF16 or AMX, and on a GPU).

    python bench/generate.py [--model smollm2] [--prompts 64] [--max-new-tokens 32] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def plain_generate(model, tok, texts, batch_size, max_new_tokens, temperature, seed):
    """The reference: tokenizer + model.generate, batch by batch, as a user would write it."""
    import torch

    n_new = 0
    for b, lo in enumerate(range(0, len(texts), batch_size)):
        torch.manual_seed(seed + b)
        enc = tok(texts[lo : lo + batch_size], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                 max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        # count tokens up to and including EOS, as rlhfkit does
        for row in new:
            hits = (row == tok.eos_token_id).nonzero()
            n_new += int(hits[0]) + 1 if len(hits) else len(row)
    return n_new


def main() -> None:
    import torch

    from rlhfkit import defaults
    from rlhfkit.data.io import read_prompts
    from rlhfkit.generate import generate_completions
    from rlhfkit.models.load import format_prompt, load_policy, pick_device

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = pick_device(args.device)
    prompts = read_prompts(defaults.prompts_path())[: args.prompts]
    print(f"model {args.model} on {device} ({torch.get_num_threads()} threads), {len(prompts)} prompts, "
          f"{args.max_new_tokens} new tokens max, temperature 0.7; load average {os.getloadavg()[0]:.2f}")
    first = {}
    for dtype in ("float32", "bfloat16"):
        model, tok = load_policy(args.model, device=device, dtype=dtype)
        texts = [format_prompt(tok, p.prompt) for p in prompts]
        # warm-up (first calls allocate)
        generate_completions(model, tok, prompts[:2], k=1, max_new_tokens=4, temperature=0.7, top_p=1.0, batch_size=2,
                             seed=0, model_name=args.model, progress=False)
        for batch in (1, 16, 64):
            n_prompts = prompts if batch > 1 else prompts[:16]  # batch 1 is slow: 16 prompts suffice
            t = time.perf_counter()
            _, stats = generate_completions(model, tok, n_prompts, k=1, max_new_tokens=args.max_new_tokens,
                                            temperature=0.7, top_p=1.0, batch_size=batch, seed=0,
                                            model_name=args.model, progress=False)
            ours = stats["tokens"] / (time.perf_counter() - t)
            t = time.perf_counter()
            n = plain_generate(model, tok, texts[: len(n_prompts)], batch, args.max_new_tokens, 0.7, 0)
            plain = n / (time.perf_counter() - t)
            first.setdefault(batch, ours)
            print(f"{dtype:>8} batch {batch:>2}: rlhfkit generate {ours:7.1f} new tokens/s | plain model.generate "
                  f"{plain:7.1f} new tokens/s | ratio {ours / plain:.2f} | vs float32 rlhfkit {ours / first[batch]:.2f}×")


if __name__ == "__main__":
    main()
