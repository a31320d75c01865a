"""New tokens/s of rlhfkit's sampler (`rlhfkit.generate.sample`) beside plain `model.generate`, in one
process, on the same batches, settings and weights, runs interleaved (A B, then B A) and repeated.

    python bench/generate.py                          # batch 1, 16, 64 × 40 new tokens, float32, 2 repeats
    python bench/generate.py --repeats 3 --threads 1 --clock cpu   # CPU seconds: comparable on a busy machine
    python bench/generate.py --batches 64 --dtype float32,bfloat16   # also bfloat16 (fast only with AVX512-BF16/AMX)

Workload (the demo's): SmolLM2-135M-Instruct ('smollm2'), the first 64 train prompts shipped with rlhfkit
through the chat template with the demo's system prompt (~33–45 prompt tokens, left-padded), at most 40
new tokens, temperature 0.7, top_p 1, top_k 0 ("sampled") and temperature 0 ("greedy"); batch 1 runs the
first --batch1-prompts prompts only (it is slow). One more row is the generate stage's shape: 16 prompts
× K = 4 samples each in one batch of 64 (rlhfkit prefills each distinct prompt once).
New tokens are counted up to and including EOS, the same way for both. ``model.generate`` gets every
sampling setting explicitly (do_sample, temperature, top_k=0, top_p=1), so nothing comes from the
model's generation_config. The greedy rows also check that rlhfkit's greedy output is token-identical
to ``model.generate``'s. Each repeat seeds both sides alike with its own seed: sampled lengths differ
between the two samplers within a repeat (and a batch runs until its last row ends), which averages out
over repeats. Ratios are taken within one repeat (the two runs sit next to each other), and the spread
over repeats is printed: other processes on the machine move absolute figures a lot.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cpu_description() -> str:
    """The CPU model and the vector/bf16 flags that decide float32 vs bfloat16 speed."""
    from rlhfkit.machine import cpu_line

    return cpu_line()


def plain_generate(model, tok, texts, batch_size, max_new_tokens, temperature, seed, stop):
    """The reference: tokenizer + model.generate, batch by batch. Returns the responses (one tensor per batch)."""
    import torch

    responses = []
    for b, lo in enumerate(range(0, len(texts), batch_size)):
        torch.manual_seed(seed + b)
        enc = tok(texts[lo : lo + batch_size], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else dict(do_sample=False)
        with torch.no_grad():
            out = model.generate(**enc, **sampling, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                 eos_token_id=stop)
        responses.append(out[:, enc["input_ids"].shape[1] :])
    return responses


def rlhfkit_sample(model, tok, texts, batch_size, max_new_tokens, temperature, seed, stop):
    import torch

    from rlhfkit.generate import sample

    responses = []
    for b, lo in enumerate(range(0, len(texts), batch_size)):
        torch.manual_seed(seed + b)
        responses.append(sample(model, tok, texts[lo : lo + batch_size], max_new_tokens=max_new_tokens,
                                temperature=temperature).response_ids)
    return responses


def main() -> None:
    import torch
    import yaml

    from rlhfkit import defaults
    from rlhfkit.data.io import read_prompts

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dtype", default="float32", help="comma-separated: float32, bfloat16")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch1-prompts", type=int, default=16, help="prompts for the batch-1 rows (slow)")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall seconds, or this process's CPU seconds (robust to other processes with --threads 1)")
    ap.add_argument("--no-k4", action="store_true", help="skip the 16 prompts × K=4 row")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time

    system_prompt = yaml.safe_load(defaults.demo_path().read_text())["system_prompt"]
    prompts = [p for p in read_prompts(defaults.prompts_path()) if p.split == "train"][: args.prompts]
    print(f"CPU: {cpu_description()}")
    first: dict[str, float] = {}  # row → rlhfkit's median new tokens/s in the first dtype
    failures = []
    for i, dtype in enumerate(args.dtype.split(",")):
        failures += run_dtype(args, dtype, prompts, system_prompt, clock, first, is_first=i == 0)
    if failures:
        raise SystemExit(f"greedy output differs from model.generate: {failures}")


def run_dtype(args, dtype, prompts, system_prompt, clock, first, is_first) -> list:
    """All rows in one dtype; prints the per-repeat lines and the summary table. Returns greedy mismatches."""
    import torch

    from rlhfkit.generate import eos_ids, response_length
    from rlhfkit.models.load import format_prompt, load_policy

    model, tok = load_policy(args.model, dtype=dtype)
    stop = eos_ids(tok, model)
    texts = [format_prompt(tok, p.prompt, system_prompt) for p in prompts]
    n_tok = [len(r) for r in tok(texts, add_special_tokens=False)["input_ids"]]
    print(f"\nmodel {args.model}, {dtype}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{len(texts)} prompts of {min(n_tok)}–{max(n_tok)} tokens; ≤ {args.max_new_tokens} new tokens; "
          f"{args.clock} clock; {args.repeats} repeats; load average {os.getloadavg()[0]:.1f}")

    rows = []  # (label, texts, batch size, temperature)
    for b in (int(x) for x in args.batches.split(",")):
        subset = texts if b > 1 else texts[: args.batch1_prompts]
        rows.append((f"batch {b:>2} sampled T={args.temperature}", subset, b, args.temperature))
        rows.append((f"batch {b:>2} greedy", subset, b, 0.0))
    if not args.no_k4 and len(texts) >= 16:
        k4 = [t for t in texts[:16] for _ in range(4)]  # the generate stage puts a prompt's K samples side by side
        rows.append((f"batch 64 sampled, 16 prompts × K=4", k4, 64, args.temperature))

    sides = {"rlhfkit": rlhfkit_sample, "generate": plain_generate}
    rlhfkit_sample(model, tok, texts[:2], 2, 4, args.temperature, 0, stop)  # warm-up: first calls allocate
    plain_generate(model, tok, texts[:2], 2, 4, args.temperature, 0, stop)
    speed = {(label, side): [] for label, *_ in rows for side in sides}
    work = {}  # (label, side) → "new tokens / steps" of the last repeat
    greedy_same: dict[str, tuple[int, int]] = {}
    for r in range(args.repeats):
        for label, subset, batch, temperature in rows:
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]  # A B, then B A: drift cancels in the ratio
            out = {}
            for side in order:
                t = clock()
                responses = sides[side](model, tok, subset, batch, args.max_new_tokens, temperature, 1000 * r, stop)
                seconds = clock() - t
                out[side] = responses
                n_new = sum(int(response_length(x, stop).sum()) for x in responses)
                speed[(label, side)].append(n_new / seconds)
                work[(label, side)] = f"{n_new} tokens, {sum(x.shape[1] for x in responses)} steps, {seconds:.1f}s"
            if temperature == 0 and r == 0:
                same = total = 0
                for a, b in zip(out["rlhfkit"], out["generate"]):
                    la, lb = response_length(a, stop), response_length(b, stop)
                    for i in range(len(a)):
                        total += 1
                        same += int(la[i] == lb[i] and torch.equal(a[i, : la[i]], b[i, : lb[i]]))
                greedy_same[label] = (same, total)
            ratio = speed[(label, "rlhfkit")][-1] / speed[(label, "generate")][-1]
            print(f"  repeat {r + 1} {label}: rlhfkit {speed[(label, 'rlhfkit')][-1]:6.1f} ({work[(label, 'rlhfkit')]}) | "
                  f"model.generate {speed[(label, 'generate')][-1]:6.1f} ({work[(label, 'generate')]}) new tokens/s | "
                  f"ratio {ratio:.2f} (load {os.getloadavg()[0]:.1f})", flush=True)

    print(f"\nnew tokens/s, {dtype}, median [min–max] over {args.repeats} repeats; ratio = rlhfkit / model.generate "
          f"within each repeat")
    for label, *_ in rows:
        ours, ref = speed[(label, "rlhfkit")], speed[(label, "generate")]
        ratios = [a / b for a, b in zip(ours, ref)]
        line = (f"{label:36s} rlhfkit {statistics.median(ours):6.1f} [{min(ours):.1f}–{max(ours):.1f}] | model.generate "
                f"{statistics.median(ref):6.1f} [{min(ref):.1f}–{max(ref):.1f}] | ratio {statistics.median(ratios):.2f} "
                f"[{min(ratios):.2f}–{max(ratios):.2f}]")
        if label in greedy_same:
            same, total = greedy_same[label]
            line += f" | greedy identical to model.generate: {same}/{total} rows"
        if is_first:
            first[label] = statistics.median(ours)
        elif label in first:
            line += f" | rlhfkit vs the first dtype {statistics.median(ours) / first[label]:.2f}×"
        print(line)
    return [(dtype, k, v) for k, v in greedy_same.items() if v[0] != v[1]]


if __name__ == "__main__":
    main()
