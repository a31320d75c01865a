"""What the alignment survives: deployment variants of an aligned policy, side by side, on held-out prompts.

    python bench/deploy.py --policy RUN_DIR/policy                 # every variant, 16 held-out prompts
    python bench/deploy.py --policy RUN_DIR/policy --variants fp32,int8 --prompts 8 --batch1-prompts 2
    python bench/deploy.py --policy RUN_DIR/policy --folder student=ship/student   # + any exported hf folder

Variants, each made from the merged float32 policy (``load_aligned``) the way ``rlhfkit export`` makes it:
  fp32        the merged policy (transformers folder, float32)
  bf16        cast to bfloat16 (fast only on CPUs with AVX512-BF16/AMX; emulated, slower, elsewhere)
  int8        torch.ao dynamic int8 linears (``--quantize int8``; size = model.int8.safetensors)
  gguf_q8_0   written as GGUF Q8_0, read back by transformers' GGUF loader — which de-quantises to
              float32, so its speed is fp32's; its size is the .gguf file's
  prune50     50% of every block linear's weights zeroed by magnitude (stored dense: fp32's size)
  mlp50       50% of the MLP channels removed (a smaller model)

Per variant: size on disk of the export folder; new tokens/s at batch 1 (the first --batch1-prompts prompts,
one at a time) and at batch 16 (rlhfkit's sampler, the policy's own sampling settings, new tokens counted up
to EOS); the mean gold score of the batch-16 completions; and KL(aligned ‖ variant) in nats per completion,
exact over the vocabulary at every token of the *aligned* policy's own batch-16 completions (at the sampling
temperature; computed by losses.distillation_loss's soft term, so no second copy of the formula).
Gold means over 16 prompts are noisy (±0.05 or so): read them beside the KL, which has no sampling noise.
Timings move with whatever else runs on the machine: the CPU and thread count are printed with them.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import cpu_description  # noqa: E402  (bench/generate.py: one way of naming the CPU)

VARIANTS = ("fp32", "bf16", "int8", "gguf_q8_0", "prune50", "mlp50")


def build(name: str, merged, tok, sampling: dict, folder: Path):
    """(runtime model, bytes on disk) of one variant, its export written into ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlhfkit.deploy.export import folder_bytes, prepare, write_hf
    from rlhfkit.deploy.gguf_file import write_gguf

    folder.mkdir(parents=True)
    if name == "gguf_q8_0":
        write_gguf(merged, tok, folder / "model.q8_0.gguf", "q8_0", sampling)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.q8_0.gguf", dtype=torch.float32)
        return model.eval(), folder_bytes(folder / "model.q8_0.gguf")
    opts = {"fp32": {}, "bf16": {"dtype": "bfloat16"}, "int8": {"int8": True}, "prune50": {"sparsity": 0.5},
            "mlp50": {"sparsity": 0.5, "structured": True}}[name]
    model = prepare(copy.deepcopy(merged), **opts)
    write_hf(model, tok, folder, sampling, int8=name == "int8")
    weights = [p for p in folder.iterdir() if p.suffix == ".safetensors"]
    return model.eval(), sum(p.stat().st_size for p in weights)


def run_sampler(model, tok, texts, batch: int, sampling: dict, seed: int):
    """(samples per batch, new tokens, seconds) with rlhfkit's sampler."""
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True, help="An aligned policy folder (RUN_DIR/policy).")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"Comma-separated, from {', '.join(VARIANTS)}.")
    ap.add_argument("--prompts", type=int, default=16, help="Held-out (eval split) prompts of the shipped set.")
    ap.add_argument("--batch1-prompts", type=int, default=4, help="Prompts sampled one at a time for batch-1 speed.")
    ap.add_argument("--folder", action="append", default=[], metavar="NAME=DIR",
                    help="Also compare an exported transformers folder (rlhfkit distil/export output); repeatable.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from rlhfkit import defaults
    from rlhfkit.feedback.gold import GoldScorer
    from rlhfkit.generate import decode_responses, eos_ids, response_length, select_prompts
    from rlhfkit.models.load import format_prompt
    from rlhfkit.models.policy import load_aligned

    torch.set_num_threads(args.threads)
    merged, tok, config = load_aligned(args.policy)
    sampling = dict(config["sampling"])
    prompts = select_prompts(defaults.read_prompt_spec("default"), "eval", args.prompts)
    texts = [format_prompt(tok, p.prompt, sampling.get("system_prompt", "")) for p in prompts]
    raw = [p.prompt for p in prompts]
    gold = GoldScorer()
    print(f"# {cpu_description()}; torch {torch.__version__}, {args.threads} threads; policy {args.policy} "
          f"(base {config['model']}); {len(texts)} held-out prompts, max_new_tokens {sampling['max_new_tokens']}, "
          f"T {sampling['temperature']}; seed {args.seed}")
    rows = []
    aligned_samples = run_sampler(merged, tok, texts, 16, sampling, args.seed)[0]  # what KL is measured on
    with tempfile.TemporaryDirectory() as tmp:
        folders = dict(f.split("=", 1) for f in args.folder)
        for name in [v for v in args.variants.split(",") if v] + list(folders):
            if name in folders:
                from transformers import AutoModelForCausalLM

                model = AutoModelForCausalLM.from_pretrained(folders[name], dtype=torch.float32).eval()
                size = sum(p.stat().st_size for p in Path(folders[name]).glob("*.safetensors"))
            else:
                model, size = build(name, merged, tok, sampling, Path(tmp) / name)
            _, n1, s1 = run_sampler(model, tok, texts[: args.batch1_prompts], 1, sampling, args.seed)
            samples, n16, s16 = run_sampler(model, tok, texts, 16, sampling, args.seed)
            completions = [c for s in samples for c in decode_responses(tok, s.response_ids,
                                                                       response_length(s.response_ids, eos_ids(tok, model)))]
            kl = sum(kl_per_completion(merged, model, tok, s, sampling["temperature"]) * s.response_ids.shape[0]
                     for s in aligned_samples) / len(texts)
            g = sum(gold.score(raw, completions)) / len(completions)
            rows.append((name, size / 1e6, n1 / s1, n16 / s16, g, kl))
            print(f"  {name}: done", file=sys.stderr, flush=True)
            del model
    print(f"\n| variant | size MB | tok/s b=1 | tok/s b=16 | gold | KL(aligned‖variant) nats/completion |")
    print("|---|---:|---:|---:|---:|---:|")
    base = rows[0]
    for name, mb, t1, t16, g, kl in rows:
        print(f"| {name} | {mb:.1f} ({mb / base[1]:.2f}×) | {t1:.1f} ({t1 / base[2]:.2f}×) | {t16:.1f} ({t16 / base[3]:.2f}×) "
              f"| {g:+.3f} | {kl:.2g} |")


if __name__ == "__main__":
    main()
