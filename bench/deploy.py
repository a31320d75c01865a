"""What the alignment survives: deployment variants of an aligned policy, side by side, on held-out prompts.

    python bench/deploy.py --policy RUN_DIR/policy                 # the default variants, 24 prompts × 2 samples
    python bench/deploy.py --policy RUN_DIR/policy --variants fp32,int8 --prompts 8 --batch1-prompts 2
    python bench/deploy.py --policy RUN_DIR/policy --folder student=ship/student   # + any exported hf folder

Variants, each made from the merged float32 policy (``load_aligned``) the way ``rlhfkit export`` makes it:
  fp32          the merged policy (transformers folder, float32): the reference every other row is compared to
  bf16          cast to bfloat16 (fast only on CPUs with AVX512-BF16/AMX; emulated, slower, elsewhere)
  int8          weight-only per-channel int8 linears (``--quantize int8``; size = model.int8.safetensors)
  int8_dynamic  torch.ao dynamic int8: int8 activations too (``--quantize int8-dynamic``)
  gguf_q8_0     written as GGUF Q8_0, read back by transformers' GGUF loader — which de-quantises to
                float32, so its speed and memory are fp32's; its size is the .gguf file's
  prune50       50% of every block linear's weights zeroed by magnitude (stored dense: fp32's size)
  prune50_lora  prune50, then ``--recover-steps`` LoRA distillation steps towards the policy on its own
                samples of the run's train prompts (``rlhfkit export --sparsity 0.5 --recover-steps N``)
  mlp50         50% of the MLP channels removed (a smaller model; not in the default list)
  --folder NAME=DIR  an exported transformers folder, e.g. the ``rlhfkit distil`` student

Per variant, on ``--prompts`` held-out prompts (eval split of the policy's prompt set) × ``--samples``:
  size on disk of the weights; new tokens/s at batch 1 (the first ``--batch1-prompts`` prompts one at a time)
  and at batch 16 (rlhfkit's sampler, the policy's own sampling settings, new tokens counted up to EOS);
  peak memory = peak resident set while the variant is built and samples at batch 16, minus the resident
  set before (the aligned reference and the scorers stay loaded; polled every 5 ms); mean gold score and
  mean toxicity (P(offensive), the gold scorer's component) of its completions; KL(aligned ‖ variant) in
  nats per completion, exact over the vocabulary at every token of the *aligned* policy's own completions
  (at the sampling temperature; losses.distillation_loss's soft term); gold win rate against the aligned
  policy's completions of the same prompts (ties ½), 95% interval from a bootstrap over prompts.
Same seeds for every variant, so fp32 reproduces the reference (win 50%, KL 0). Timings move with whatever
else runs on the machine: the CPU and thread count are printed with them.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = ("fp32", "bf16", "int8", "int8_dynamic", "gguf_q8_0", "prune50", "prune50_lora", "mlp50")
DEFAULT = "fp32,bf16,int8,int8_dynamic,gguf_q8_0,prune50,prune50_lora"


def rss() -> int:
    """Resident set size of this process in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident set above the level at entry, polled in a thread (``with PeakRSS() as p: …; p.bytes``)."""

    def __init__(self, every: float = 0.005):
        self.every, self.bytes = every, 0

    def __enter__(self):
        self.base, self.peak, self._stop = rss(), rss(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.bytes = max(self.peak, rss()) - self.base


def build(name: str, merged, tok, config: dict, folder: Path, recover_steps: int):
    """(runtime model, bytes of weights on disk) of one variant, its export written into ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlhfkit.deploy.distil import recover
    from rlhfkit.deploy.export import prepare, write_hf
    from rlhfkit.deploy.gguf_file import write_gguf

    sampling = dict(config["sampling"])
    folder.mkdir(parents=True)
    if name == "gguf_q8_0":
        write_gguf(merged, tok, folder / "model.q8_0.gguf", "q8_0", sampling)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.q8_0.gguf", dtype=torch.float32)
        return model.eval(), (folder / "model.q8_0.gguf").stat().st_size
    opts = {"fp32": {}, "bf16": {"dtype": "bfloat16"}, "int8": {"quantize": "int8"},
            "int8_dynamic": {"quantize": "int8-dynamic"}, "prune50": {"sparsity": 0.5},
            "prune50_lora": {"sparsity": 0.5}, "mlp50": {"sparsity": 0.5, "structured": True}}[name]
    model = prepare(copy.deepcopy(merged), **opts)
    if name == "prune50_lora":
        model, _ = recover(model, merged, tok, config, steps=recover_steps)
    write_hf(model, tok, folder, sampling, int8="quantize" in opts)
    return model.eval(), sum(p.stat().st_size for p in folder.iterdir() if p.suffix == ".safetensors")


def run_sampler(model, tok, texts, batch: int, sampling: dict, seed: int):
    """(samples per batch, new tokens, seconds) with rlhfkit's sampler; batch i seeded with seed + i."""
    import torch

    from rlhfkit.generate import eos_ids, response_length, sample

    out, tokens, seconds = [], 0, 0.0
    for i, lo in enumerate(range(0, len(texts), batch)):
        torch.manual_seed(seed + i)
        t0 = time.perf_counter()
        s = sample(model, tok, texts[lo : lo + batch], max_new_tokens=sampling["max_new_tokens"],
                   temperature=sampling["temperature"], top_p=sampling.get("top_p", 1.0), top_k=sampling.get("top_k", 0))
        seconds += time.perf_counter() - t0
        tokens += int(response_length(s.response_ids, eos_ids(tok, model)).sum())
        out.append(s)
    return out, tokens, seconds


def completions(model, tok, samples) -> list[str]:
    from rlhfkit.generate import decode_responses, eos_ids, response_length

    stop = eos_ids(tok, model)
    return [c for s in samples for c in decode_responses(tok, s.response_ids, response_length(s.response_ids, stop))]


def kl_per_completion(aligned, variant, tok, s, temperature: float) -> float:
    """Mean over completions of Σ_t KL(aligned_T ‖ variant_T) on the aligned policy's sample ``s``."""
    import torch

    from rlhfkit.generate import assemble, eos_ids
    from rlhfkit.models.policy import position_ids
    from rlhfkit.train.losses import distillation_loss

    _, response_mask, input_ids, attention_mask = assemble(s, eos_ids(tok, aligned))
    A = response_mask.shape[1]
    logits = []
    with torch.no_grad():
        for m in (aligned, variant):
            out = m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask))
            logits.append(out.logits[:, -A - 1 : -1].float())  # (B, A, V): the logits that predicted each response token
    B = input_ids.shape[0]
    # α = 0: only the soft term, T²·Σ KL / B with normalizer B — divide T² back out
    loss, _ = distillation_loss(logits[1], logits[0], s.response_ids, response_mask, temperature, 0.0, normalizer=B)
    return float(loss) / temperature**2


def table(rows: list[dict]) -> str:
    """The markdown table; ratios against the first row (the fp32 reference)."""
    base = rows[0]
    out = ["| variant | size MB | tok/s b=1 | tok/s b=16 | peak MB | gold | toxicity | KL nats/compl. | gold win vs aligned [95%] |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        out.append(f"| {r['name']} | {r['mb']:.0f} ({r['mb'] / base['mb']:.2f}×) | {r['tps1']:.1f} ({r['tps1'] / base['tps1']:.2f}×) "
                   f"| {r['tps16']:.1f} ({r['tps16'] / base['tps16']:.2f}×) | {r['peak_mb']:.0f} | {r['gold']:+.2f} "
                   f"| {r['toxicity']:.3f} | {r['kl']:.2g} | {100 * r['win']['value']:.0f}% "
                   f"[{100 * r['win']['lo']:.0f}, {100 * r['win']['hi']:.0f}] |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True, help="An aligned policy folder (RUN_DIR/policy).")
    ap.add_argument("--variants", default=DEFAULT, help=f"Comma-separated, from {', '.join(VARIANTS)}.")
    ap.add_argument("--prompts", type=int, default=24, help="Held-out (eval split) prompts of the policy's prompt set.")
    ap.add_argument("--samples", type=int, default=2, help="Completions per prompt.")
    ap.add_argument("--batch1-prompts", type=int, default=2, help="Prompts sampled one at a time for batch-1 speed.")
    ap.add_argument("--recover-steps", type=int, default=30, help="LoRA recovery steps of prune50_lora.")
    ap.add_argument("--folder", action="append", default=[], metavar="NAME=DIR",
                    help="Also compare an exported transformers folder (rlhfkit distil/export output); repeatable.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from rlhfkit.eval.metrics import paired_win_rate
    from rlhfkit.eval.run import eval_prompts
    from rlhfkit.feedback.gold import GoldScorer
    from rlhfkit.machine import cpu_line
    from rlhfkit.models.load import format_prompt
    from rlhfkit.models.policy import load_aligned

    unknown = [v for v in args.variants.split(",") if v and v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    merged, tok, config = load_aligned(args.policy)
    sampling = dict(config["sampling"])
    rows_ = eval_prompts(config.get("prompts", "default"), args.prompts, args.samples, args.samples)
    texts = [format_prompt(tok, p.prompt, sampling.get("system_prompt", "")) for p, _ in rows_]
    raw = [p.prompt for p, _ in rows_]
    groups = [p.id for p, _ in rows_]
    gold = GoldScorer()
    print(f"# {cpu_line()}; torch {torch.__version__}, {args.threads} threads, float32 compute; policy {args.policy} "
          f"(base {config['model']}); {len(set(groups))} held-out prompts ({config.get('prompts')}) × {args.samples} "
          f"= {len(texts)} completions, max_new_tokens {sampling['max_new_tokens']}, T {sampling['temperature']}; "
          f"batch-1 speed on {args.batch1_prompts} prompts; prune50_lora {args.recover_steps} steps; seed {args.seed}")
    aligned_samples = run_sampler(merged, tok, texts, 16, sampling, args.seed)[0]
    aligned_gold = gold.components(raw, completions(merged, tok, aligned_samples))["score"]
    folders = dict(f.split("=", 1) for f in args.folder)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [v for v in args.variants.split(",") if v] + list(folders):
            t0 = time.time()
            with PeakRSS() as peak:
                if name in folders:
                    model = AutoModelForCausalLM.from_pretrained(folders[name], dtype=torch.float32).eval()
                    size = sum(p.stat().st_size for p in Path(folders[name]).glob("*.safetensors"))
                else:
                    model, size = build(name, merged, tok, config, Path(tmp) / name, args.recover_steps)
                samples, n16, s16 = run_sampler(model, tok, texts, 16, sampling, args.seed)
            _, n1, s1 = run_sampler(model, tok, texts[: args.batch1_prompts * args.samples : args.samples], 1, sampling,
                                    args.seed)
            comps = gold.components(raw, completions(model, tok, samples))
            kl = sum(kl_per_completion(merged, model, tok, s, sampling["temperature"]) * s.response_ids.shape[0]
                     for s in aligned_samples) / len(texts)
            rows.append({"name": name, "mb": size / 1e6, "tps1": n1 / s1, "tps16": n16 / s16, "peak_mb": peak.bytes / 1e6,
                         "gold": float(np.mean(comps["score"])), "toxicity": float(np.mean(comps["toxicity"])), "kl": kl,
                         "win": paired_win_rate(comps["score"], aligned_gold, seed=args.seed, groups=groups)})
            print(f"  {name}: {time.time() - t0:.0f} s  {table(rows).splitlines()[-1]}", file=sys.stderr, flush=True)
            del model
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
