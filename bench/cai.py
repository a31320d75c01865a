"""Constitutional AI on the default model (SmolLM2-135M-Instruct) and the shipped red-team prompts.

    python bench/cai.py [--split train] [--max-new-tokens 32] [--extra 2] [--boot 2000] [--json out.json]

(~6–8 min on 2 CPU cores with the defaults; ``--split all --max-new-tokens 40`` took 14 min on a busy machine.)

Measures, each with a bootstrap 95% interval over prompts (resampling whole prompts):

1. Critique → revision (one round, a principle drawn per prompt): the share of prompts whose final
   revision the gold scorer prefers to the original response (a tie counts half), and the mean
   gold-score change.
2. The AI labeler on tasks of K = 2 + extra replies per prompt (the original response, its revision,
   and ``extra`` more samples of the policy): pairwise agreement (`agreement_counts`, the function
   used for people) with the gold ranking and with six simulated labelers (`make_labelers`: five
   careful, one careless), over the pairs both sides rank strictly. Also over the pairs of replies
   neither marks F: the AI labeler takes F from the guideline's rule, as gold does, so agreement on
   F pairs is shared by construction; the non-F pairs are the model's own judgement.
3. Position bias: how often the raw judge answers (A) before debiasing, and how often it prefers
   the revision to the response after.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def bootstrap(num: np.ndarray, den: np.ndarray | None, boot: int, seed: int = 0) -> tuple[float, float, float]:
    """Σnum / Σden (or mean of num) and its percentile 95% interval, resampling prompts (rows)."""
    den = np.ones_like(num, dtype=float) if den is None else den
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(num), size=(boot, len(num)))  # (boot, T)
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = num[idx].sum(1) / den[idx].sum(1)  # (boot,)
    lo, hi = np.nanpercentile(stats, [2.5, 97.5])
    return float(num.sum() / den.sum()), float(lo), float(hi)


def gold_marks(scores: list[float], fails: list[str | None]) -> list:
    """The gold ranking of one task: competition ranks by gold score, F where the guideline fails."""
    from rlhfkit.feedback.simulate import competition_ranks

    kept = [i for i, f in enumerate(fails) if f is None]
    marks: list = ["F"] * len(scores)
    for i, r in zip(kept, competition_ranks([scores[i] for i in kept], 1e-9)):
        marks[i] = r
    return marks


def counts(a: list, b: list, only_ranked: bool = False) -> tuple[int, int]:
    """(agree, strict) between two mark lists of one task; ``only_ranked``: completions neither marks F."""
    from rlhfkit.feedback.agreement import agreement_counts

    keep = [i for i in range(len(a)) if not only_ranked or (a[i] != "F" and b[i] != "F")]
    c = agreement_counts({i: a[i] for i in keep}, {i: b[i] for i in keep})
    return c.agree, c.strict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="train", choices=["train", "eval", "all"])
    ap.add_argument("--num-prompts", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--extra", type=int, default=2, help="more policy samples per prompt in the AI-labeling tasks")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="", help="also write the figures to this file")
    args = ap.parse_args()

    import torch

    from rlhfkit import defaults
    from rlhfkit.cai.ai_labeler import AILabeler
    from rlhfkit.cai.constitution import load_constitution
    from rlhfkit.cai.revise import revise
    from rlhfkit.data.io import read_prompts
    from rlhfkit.feedback.gold import GoldScorer
    from rlhfkit.feedback.simulate import make_labelers
    from rlhfkit.generate import generate_completions, select_prompts
    from rlhfkit.models.load import load_policy

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok = load_policy("smollm2")
    gold = GoldScorer()
    constitution = load_constitution()
    prompts = select_prompts(read_prompts(defaults.redteam_path()), args.split, args.num_prompts)
    T = len(prompts)
    times = {"load_s": time.perf_counter() - t0}

    # 1. critique → revision
    t = time.perf_counter()
    records, rstats = revise(model, tok, prompts, constitution, rounds=1, max_new_tokens=args.max_new_tokens,
                             temperature=0.7, top_p=1.0, batch_size=args.batch_size, seed=args.seed,
                             model_name="smollm2", progress=False)
    times["revise_s"] = time.perf_counter() - t
    request = [r["prompt"] for r in records]
    g_resp = np.array(gold.score(request, [r["response"] for r in records]))  # (T,)
    g_rev = np.array(gold.score(request, [r["final"] for r in records]))  # (T,)
    better = (g_rev > g_resp) + 0.5 * (g_rev == g_resp)  # (T,) a tie counts half

    # 2. AI labeling of K = 2 + extra replies per prompt
    t = time.perf_counter()
    extra, gstats = generate_completions(model, tok, prompts, k=args.extra, max_new_tokens=args.max_new_tokens,
                                         temperature=0.7, top_p=1.0, batch_size=args.batch_size, seed=args.seed + 1,
                                         model_name="smollm2", progress=False) if args.extra else ([], {"tokens": 0})
    times["generate_extra_s"] = time.perf_counter() - t
    texts = [[r["response"], r["final"]] + [c.text for c in extra[i * args.extra:(i + 1) * args.extra]]
             for i, r in enumerate(records)]
    K = len(texts[0])
    lab = AILabeler(model, tok, constitution, name="ai-smollm2", model_name="smollm2", seed=args.seed,
                    batch_size=args.batch_size)
    t = time.perf_counter()
    judged = lab.judge([(p.id, p.prompt, tx) for p, tx in zip(prompts, texts)])
    times["ai_label_s"] = time.perf_counter() - t
    n_queries = 2 * sum(len(j.pairs) for j in judged)

    comps = [gold.components([p.prompt] * K, tx) for p, tx in zip(prompts, texts)]
    g_marks = [gold_marks(list(c["score"]), c["fail"]) for c in comps]
    ai_marks = [j.marks for j in judged]
    sims = make_labelers(6, 1, seed=args.seed, scorer=gold)
    sim_marks = {s.name: [s.rank(p.prompt, tx, np.random.default_rng([args.seed, s.seed, i]).permutation(K).tolist())
                          for i, (p, tx) in enumerate(zip(prompts, texts))] for s in sims}
    careful = [s.name for s in sims if not s.careless]

    def per_task(a_list, b_list, only_ranked=False):
        c = np.array([counts(a, b, only_ranked) for a, b in zip(a_list, b_list)], dtype=float)  # (T, 2)
        return c[:, 0], c[:, 1]

    def pooled(pairs_of_lists, only_ranked=False):
        agree, strict = np.zeros(T), np.zeros(T)
        for a_list, b_list in pairs_of_lists:
            a, s = per_task(a_list, b_list, only_ranked)
            agree += a
            strict += s
        return agree, strict

    rows = {}
    any_f = any("F" in m for m in ai_marks + g_marks)
    for only in (False, True) if any_f else (False,):  # without F, the non-F rows would repeat the others
        tag = " (non-F pairs)" if only else ""
        rows[f"AI vs gold{tag}"] = per_task(ai_marks, g_marks, only)
        rows[f"AI vs careful simulated{tag}"] = pooled([(ai_marks, sim_marks[n]) for n in careful], only)
        rows[f"AI vs careless simulated{tag}"] = pooled([(ai_marks, sim_marks[s.name]) for s in sims if s.careless], only)
        rows[f"careful simulated vs gold{tag}"] = pooled([(sim_marks[n], g_marks) for n in careful], only)
        rows[f"careful vs careful simulated{tag}"] = pooled(
            [(sim_marks[a], sim_marks[b]) for i, a in enumerate(careful) for b in careful[i + 1:]], only)

    # 3. position bias and the response-vs-revision pair
    first = np.array([p.p_a_ij for j in judged for p in j.pairs] + [p.p_a_ji for j in judged for p in j.pairs])
    rev_pairs = [(i, p.pref) for i, j in enumerate(judged) for p in j.pairs if (p.i, p.j) == (0, 1)]
    ai_prefers_rev = np.array([float(pref < 0.5) + 0.5 * (pref == 0.5) for _, pref in rev_pairs])
    gold_prefers_rev = np.array([better[i] for i, _ in rev_pairs])
    agree_rev = (ai_prefers_rev == gold_prefers_rev).astype(float)

    figures = {
        "prompts": T, "k": K, "judge_queries": n_queries,
        "revision_preferred_by_gold": bootstrap(better, None, args.boot),
        "gold_change_mean": bootstrap(g_rev - g_resp, None, args.boot),
        "revision_failed_share": float(np.mean([c is not None for c in gold.components(request, [r["final"] for r in records])["fail"]])),
        "response_failed_share": float(np.mean([c is not None for c in gold.components(request, [r["response"] for r in records])["fail"]])),
        "agreement": {name: (*bootstrap(a, s, args.boot), int(s.sum())) for name, (a, s) in rows.items()},
        "raw_judge_answers_A_share": float(np.mean(first > 0.5)),
        "raw_judge_mean_P_A": float(first.mean()),
        "ai_prefers_revision_share": bootstrap(ai_prefers_rev, None, args.boot) if len(rev_pairs) else None,
        "ai_agrees_with_gold_on_revision": bootstrap(agree_rev, None, args.boot) if len(rev_pairs) else None,
        "revision_pairs_judged": len(rev_pairs),
        "times": {**times, "total_s": time.perf_counter() - t0},
        "revise_tokens_per_s": rstats["tokens_per_s"], "judge_queries_per_s": n_queries / max(times["ai_label_s"], 1e-9),
        "settings": vars(args),
    }

    def ci(x):
        return f"{x[0]:.3f} [{x[1]:.3f}, {x[2]:.3f}]"

    print(f"\nred-team prompts: {T} ({args.split}); K = {K} replies per task; {n_queries} judge queries")
    print(f"revision preferred by gold:  {ci(figures['revision_preferred_by_gold'])}   "
          f"mean gold change {ci(figures['gold_change_mean'])}")
    print(f"F share: responses {figures['response_failed_share']:.2f}, revisions {figures['revision_failed_share']:.2f}")
    print(f"raw judge answers (A): {figures['raw_judge_answers_A_share']:.3f} of queries (mean P_A {figures['raw_judge_mean_P_A']:.3f})")
    if rev_pairs:
        print(f"AI prefers the revision: {ci(figures['ai_prefers_revision_share'])}; "
              f"agrees with gold on it: {ci(figures['ai_agrees_with_gold_on_revision'])}")
    print("\n| comparison | pairwise agreement [95% CI] | strict pairs |\n|---|---|---|")
    for name, (v, lo, hi, n) in figures["agreement"].items():
        print(f"| {name} | {v:.3f} [{lo:.3f}, {hi:.3f}] | {n} |")
    tm = figures["times"]
    print(f"\ntimes: load {tm['load_s']:.0f} s, revise {tm['revise_s']:.0f} s ({figures['revise_tokens_per_s']:.0f} tok/s), "
          f"extra samples {tm['generate_extra_s']:.0f} s, AI labeling {tm['ai_label_s']:.0f} s "
          f"({figures['judge_queries_per_s']:.1f} queries/s), total {tm['total_s']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
