"""Why dynamic int8 loses the alignment and weight-only int8 keeps it: per-layer error and KL, on a real policy.

    python bench/int8_layers.py --policy RUN_DIR/policy --prompts 8

Per block linear: relative output error ‖y_q − y‖/‖y‖ on the policy's own activations (its completions of
held-out prompts, teacher-forced) for torch.ao dynamic int8 (int8 activations, one scale per tensor) and for
weight-only per-channel int8 (``deploy.quantize.Int8Linear``), and the input's outlier ratio (largest
channel's max |x| over the median channel's). Then KL(aligned ‖ quantised) in nats per completion for the
whole model quantised each way, and dynamic with mlp.down_proj left float.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy import kl_per_completion, run_sampler  # noqa: E402  (bench/deploy.py)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", required=True)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from torch import nn

    from rlhfkit.deploy.quantize import Int8Linear, _quiet, quantize_int8
    from rlhfkit.eval.run import eval_prompts
    from rlhfkit.generate import assemble, eos_ids
    from rlhfkit.machine import cpu_line
    from rlhfkit.models.load import format_prompt
    from rlhfkit.models.policy import load_aligned, position_ids

    torch.set_num_threads(args.threads)
    merged, tok, config = load_aligned(args.policy)
    sampling = dict(config["sampling"])
    texts = [format_prompt(tok, p.prompt, sampling.get("system_prompt", ""))
             for p, _ in eval_prompts(config.get("prompts", "default"), args.prompts, 1, 1)]
    print(f"# {cpu_line()}; torch {torch.__version__}; policy {args.policy}; {len(texts)} held-out prompts")
    samples = run_sampler(merged, tok, texts, 16, sampling, 0)[0]
    head = merged.get_output_embeddings()
    linears = {n: m for n, m in merged.named_modules() if isinstance(m, nn.Linear) and m is not head}
    inputs: dict[str, list] = defaultdict(list)
    hooks = []
    for n, m in linears.items():
        hooks.append(m.register_forward_hook(lambda mod, inp, out, n=n: inputs[n].append(inp[0].detach())))
    with torch.no_grad():
        for s in samples:
            _, _, ids, attn = assemble(s, eos_ids(tok, merged))
            merged(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn))
            for n in linears:  # real tokens only: (tokens, in)
                inputs[n][-1] = inputs[n][-1][attn.bool()]
    for h in hooks:
        h.remove()
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    rows = []
    with torch.no_grad(), _quiet():
        for n, m in linears.items():
            x = torch.cat(inputs[n])
            y = m(x)
            dyn = quantize_dynamic(nn.Sequential(copy.deepcopy(m)), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
            err = lambda yq: float((yq - y).norm() / y.norm())  # noqa: E731
            ch = x.abs().amax(0)
            rows.append((n, err(dyn(x)), err(Int8Linear.from_linear(m)(x)), float(ch.max() / ch.median())))
    by_kind = defaultdict(list)
    for r in rows:
        by_kind[r[0].rsplit(".", 1)[-1]].append(r)
    print("\n| linear | dynamic: mean (max) rel. error | weight-only: mean (max) | outlier ratio: mean (max) |")
    print("|---|---:|---:|---:|")
    for kind, rs in by_kind.items():
        cols = [(sum(r[i] for r in rs) / len(rs), max(r[i] for r in rs)) for i in (1, 2, 3)]
        print(f"| {kind} | {cols[0][0]:.3f} ({cols[0][1]:.3f}) | {cols[1][0]:.4f} ({cols[1][1]:.4f}) "
              f"| {cols[2][0]:.0f} ({cols[2][1]:.0f}) |")
    print("\nworst 5 under dynamic int8:", ", ".join(f"{r[0]} {r[1]:.2f}" for r in sorted(rows, key=lambda r: -r[1])[:5]))

    def kl(model) -> float:
        return sum(kl_per_completion(merged, model, tok, s, sampling["temperature"]) * s.response_ids.shape[0]
                   for s in samples) / len(texts)

    with _quiet():
        keep = [n for n in linears if not n.endswith("down_proj")]
        partial = quantize_dynamic(copy.deepcopy(merged), {n: per_channel_dynamic_qconfig for n in keep}, dtype=torch.qint8)
        print(f"\nKL(aligned ‖ ·), nats per completion: dynamic int8 {kl(quantize_int8(copy.deepcopy(merged), 'int8-dynamic')):.3g}; "
              f"dynamic, down_proj float {kl(partial):.3g}; weight-only int8 {kl(quantize_int8(copy.deepcopy(merged), 'int8')):.3g}")


if __name__ == "__main__":
    main()
