"""How often the gold scorer prefers what a person prefers.

1. The person-judged pairs written for the project (tests/data/judged_pairs.jsonl), kind by kind, on the
   DEV half (the gold's weights were fitted there) and the TEST half (held out).
2. Real human labels: Anthropic HH-RLHF harmless-base pairs (../shared/data, 1,500 pairs; prompts without
   references, so only the reference-free signals speak), if present.
3. Throughput: replies scored per second.

    python bench/gold.py [--hh PATH] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless" / "dev.jsonl.gz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hh", default=str(HH), help="HH-RLHF JSONL(.gz) with chosen/rejected dialogues")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from rlhfkit.feedback.gold import GoldScorer, agreement

    from rlhfkit.machine import cpu_line

    print(f"machine: {cpu_line()}, {torch.get_num_threads()} threads, float32")
    pairs = [json.loads(line) for line in (ROOT / "tests" / "data" / "judged_pairs.jsonl").read_text().splitlines()]
    gold = GoldScorer()
    kinds = sorted({p["kind"] for p in pairs})
    results = {split: agreement(gold, [p for p in pairs if p["split"] == split]) for split in ("dev", "test")}
    print(f"\nperson-judged pairs ({len(pairs)}): share where the gold prefers the better reply")
    print(f"{'kind':22s} {'dev':>12s} {'test (held out)':>18s}")
    for kind in kinds + ["all"]:
        d, t = results["dev"][kind], results["test"][kind]
        print(f"{kind:22s} {d['agree']:5.0f}/{d['n']:<3d} {d['share']:4.0%} {t['agree']:8.0f}/{t['n']:<3d} {t['share']:4.0%}")

    hh = Path(a.hh)
    if hh.exists():
        from rlhfkit.data.formats import load_pairs

        skipped: list = []
        hh_pairs = load_pairs(f"hh:{hh}", skipped=skipped)
        rows = [{"prompt": p.prompt, "better": p.chosen, "worse": p.rejected, "kind": "hh"} for p in hh_pairs]
        t0 = time.perf_counter()
        res = agreement(GoldScorer(expected={}), rows)["hh"]
        seconds = time.perf_counter() - t0
        print(f"\nHH-RLHF harmless-base {hh.name}: {res['agree']:.0f}/{res['n']} = {res['share']:.1%} agree with the "
              f"human label ({len(skipped)} malformed rows skipped); {2 * res['n'] / seconds:.0f} replies/s")
    else:
        print(f"\n{hh} absent: HH-RLHF check skipped")


if __name__ == "__main__":
    main()
