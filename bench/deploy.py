"""What the alignment survives: deployment variants of an aligned policy, side by side, on held-out prompts.

    python bench/deploy.py --policy RUN_DIR/policy                 # the default variants, 24 prompts × 2 samples
    python bench/deploy.py --policy RUN_DIR/policy --variants fp32,int8 --prompts 8 --batch1-prompts 2
    python bench/deploy.py --policy RUN_DIR/policy --folder student=ship/student   # + any exported hf folder

The measuring is ``rlhfkit.eval.variants.compare_variants`` — the same table ``rlhfkit eval --variants …``
adds to eval.json and the report (that module's docstring says what each variant and column is); this
script runs it on the policy's own prompt set and prints the markdown table with the CPU and thread count.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    from rlhfkit.eval.variants import DEFAULT, VARIANTS

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

    import torch

    from rlhfkit.data.errors import RlhfkitError
    from rlhfkit.eval.variants import compare_variants, markdown_table, parse_folders, split_names

    torch.set_num_threads(args.threads)
    try:
        section = compare_variants(args.policy, split_names(args.variants), parse_folders(",".join(args.folder)),
                                   num_prompts=args.prompts, samples=args.samples, batch1_prompts=args.batch1_prompts,
                                   recover_steps=args.recover_steps, seed=args.seed,
                                   echo=lambda line: print(line, file=sys.stderr, flush=True))
    except RlhfkitError as exc:
        sys.exit(f"error: {exc}")
    s = section["settings"]
    print(f"# {s['cpu']}; torch {s['torch']}, {s['threads']} threads, {s['compute']}; policy {s['policy']} "
          f"(base {s['base_model']}); {s['n_prompts']} held-out prompts ({s['prompts']}) × {s['samples_per_prompt']} "
          f"= {s['n_completions']} completions, max_new_tokens {s['max_new_tokens']}, T {s['temperature']}; "
          f"batch-1 speed on {s['batch1_prompts']} prompts; prune50_lora {s['recover_steps']} steps; seed {s['seed']}; "
          f"{s['seconds']:.0f} s")
    print()
    print(markdown_table(section))


if __name__ == "__main__":
    main()
