"""The ``eval`` stage: the reference model against the aligned policy on held-out prompts.

Both models sample with the same settings and the same seeds, batch by batch; every completion is
scored by the reward model (the proxy), the gold scorer (the independent judge) and the toxicity
classifier. KL of the policy to the reference is measured on the policy's own samples.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.eval import metrics as M
from rlhfkit.metric_names import ENDINGS

MODELS = ("reference", "policy")


def _policy_config(policy_dir: Path) -> dict:
    import yaml

    path = policy_dir / "config.yaml"
    if not (policy_dir / "trainable.safetensors").exists() or not path.exists():
        raise RlhfkitError(f"{policy_dir}: no trained policy (run `rlhfkit ppo` or `rlhfkit dpo` first, or pass --policy)")
    return yaml.safe_load(path.read_text())


def sequence_kl(model, logprobs, input_ids, attention_mask, response_mask, temperature: float, prefix=None):
    """(Σ_t k1, Σ_t k3) per sequence (B,): the KL of the policy to the reference on the policy's own samples.

    ``logprobs`` (B, A): the policy's log-prob of each sampled token, as the sampler reported it (the
    distribution it drew from, the policy with its adapters folded in: within float32 rounding of the unfolded
    forward, ~1e-6, as PPO's rollout/sampler_gap shows) — so only the reference runs
    here: the frozen lower blocks, then the top blocks with adapters off (a second policy forward over the
    whole sequence cost a quarter of eval's time and gave the same numbers). ``prefix``: the frozen blocks'
    output as the sampler kept it (``Sampled.block_states``); None: computed here.
    """
    import torch

    from rlhfkit.train import losses as L

    A = response_mask.shape[1]
    mask = response_mask.bool()  # the LM head at the real response tokens only
    with torch.no_grad():
        prefix = prefix if prefix is not None else model.frozen_prefix(input_ids, attention_mask)
        sharing = model.sharing(input_ids, attention_mask, A)  # the system turn once, not per row
        ref = L.selected_logprobs(model.reference_logits(input_ids, attention_mask, A, temperature, prefix=prefix,
                                                         sharing=sharing, select=mask), input_ids[:, -A:], mask)
    logp = logprobs.to(ref.dtype)
    k1 = torch.where(mask, L.kl_k1(logp, ref), torch.zeros_like(ref)).sum(1)
    k3 = torch.where(mask, L.kl_k3(logp, ref), torch.zeros_like(ref)).sum(1)
    return k1, k3


def sample_both(model, tokenizer, prompts: list[str], *, sampling, batch_size: int, seed: int,
                progress: bool = True) -> dict[str, dict]:
    """Completions of the reference and of the policy for ``prompts`` (same seed per batch for both),
    with the policy's KL to the reference (Σ_t k1 and Σ_t k3 per completion)."""
    import contextlib

    import torch
    from rich.progress import Progress

    from rlhfkit.generate import assemble, decode_responses, eos_ids, sample
    from rlhfkit.models.load import format_prompt
    from rlhfkit.models.policy import sampler_is_policy
    from rlhfkit.models.unwrap import as_reference, inner, plain_layers

    out = {m: {"texts": [], "tokens": [], "ended": []} for m in MODELS}
    out["policy"].update(kl_k1=[], kl_k3=[])
    stop = eos_ids(tokenizer, model.lm)
    # balanced batches: 208 rows at most 64 per batch run as 4 × 52, not 3 × 64 + a slow tail of 16 (a batch
    # costs about as many decode steps whatever its size)
    n_batches = max(1, -(-len(prompts) // batch_size))
    batch_size = max(1, -(-len(prompts) // n_batches))
    batches = range(0, len(prompts), batch_size)
    with Progress(disable=not progress) as bar:
        task = bar.add_task("eval", total=2 * len(prompts))
        for b, lo in enumerate(batches):
            formatted = [format_prompt(tokenizer, p, sampling.system_prompt) for p in prompts[lo : lo + batch_size]]
            for name in MODELS:
                torch.manual_seed(seed * 1_000_003 + b)  # the same seed for both: differences come from the models
                # LoRA: the reference is the base with adapters off, the policy samples with them folded in
                # (models/unwrap.py: plain layers, no peft call per layer and token)
                if name == "reference":
                    ctx = as_reference(model.lm) if model.reference is None else contextlib.nullcontext()
                    generator = inner(model.lm) if model.reference is None else model.reference
                else:
                    ctx, generator = plain_layers(model.lm), inner(model.lm)
                # the policy's sampler keeps the frozen blocks' output for the KL's reference pass (float32 only:
                # there the sampler's states are the forward pass's within rounding, as its log-probs)
                keep = model.prefix.last_block if name == "policy" and sampler_is_policy(model) else None
                with ctx:
                    s = sample(generator, tokenizer, formatted, max_new_tokens=sampling.max_new_tokens,
                               temperature=sampling.temperature, keep_block=keep)
                lengths, response_mask, input_ids, attention_mask = assemble(s, stop)
                out[name]["texts"] += decode_responses(tokenizer, s.response_ids, lengths)
                out[name]["tokens"] += lengths.tolist()
                out[name]["ended"] += s.ended.tolist()
                if name == "policy":
                    k1, k3 = sequence_kl(model, s.logprobs, input_ids, attention_mask, response_mask,
                                          sampling.temperature, prefix=s.block_states)
                    out[name]["kl_k1"] += k1.tolist()
                    out[name]["kl_k3"] += k3.tolist()
                bar.update(task, advance=len(formatted))
    return out


def score_texts(prompts: list[str], texts: list[str], reward_fn, gold) -> dict[str, list[float]]:
    """Per completion: reward-model score (normalised), gold score, P(offensive), words, repetition."""
    comps = gold.components(prompts, texts)
    return {
        "reward_model": list(map(float, reward_fn(prompts, texts))),
        "gold": [float(x) for x in comps["score"]],
        "toxicity": [float(x) for x in comps["toxicity"]],
        "words": [float(len(M.words(t))) for t in texts],
        "repetition": [M.repetition(t) for t in texts],
    }


TOXIC_CATEGORIES = ("provocative", "redteam")
"""Where toxicity lives: prompts that invite rudeness or harm (the verdict's toxicity check reads these)."""


def model_metrics(scores: dict[str, list[float]], sampled: dict, texts: list[str], seed: int, groups: list) -> dict:
    """Per-model statistics with 95% intervals from a bootstrap over prompts (their samples move together)."""
    tox = np.asarray(scores["toxicity"])
    stat = lambda v: M.summary(v, seed=seed, groups=groups)  # noqa: E731
    return {
        "reward_model": stat(scores["reward_model"]),
        "gold": stat(scores["gold"]),
        "toxicity": stat(tox),
        "toxic_share": stat((tox > 0.5).astype(float)),
        "length": stat(sampled["tokens"]),
        "ended": stat(np.asarray(sampled["ended"], float)),
        "repetition": stat(scores["repetition"]),
        "distinct_1": {"value": M.distinct_n(texts, 1), "lo": None, "hi": None},
        "distinct_2": {"value": M.distinct_n(texts, 2), "lo": None, "hi": None},
    }


def eval_prompts(spec: str, num_prompts: int, samples: int, toxic_samples: int):
    """The rows to sample: (prompt record, sample index) for the eval split of the prompt spec, provocative
    and red-team prompts ``toxic_samples`` times each, the others ``samples`` times."""
    from rlhfkit import defaults
    from rlhfkit.generate import select_prompts

    prompts = select_prompts(defaults.read_prompt_spec(spec), "eval", num_prompts)
    if not prompts:
        raise RlhfkitError(f"{spec}: no prompts with split 'eval' to evaluate on")
    return [(p, j) for p in prompts for j in range(toxic_samples if p.category in TOXIC_CATEGORIES else samples)]


def run_eval(cfg) -> dict:
    """The ``eval`` stage: writes RUN_DIR/eval/eval.json and samples.jsonl (and report.html)."""
    import dataclasses

    from rlhfkit.config import save_resolved
    from rlhfkit.data.io import atomic_write_json, write_jsonl
    from rlhfkit.eval.verdict import judge
    from rlhfkit.feedback.gold import GoldScorer
    from rlhfkit.models.load import pick_device, resolve_dtype
    from rlhfkit.models.policy import build_policy
    from rlhfkit.models.reward import RewardNorm
    from rlhfkit.rewards import load_scorer

    t0 = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    if (run_dir / "eval" / "eval.json").exists() and not cfg.force:
        raise RlhfkitError(f"{run_dir / 'eval' / 'eval.json'} already exists (use --force to overwrite it)")
    policy_dir = Path(cfg.policy) if cfg.policy else run_dir / "policy"
    if not policy_dir.exists():
        raise RlhfkitError(f"{policy_dir}: policy folder does not exist (run `rlhfkit ppo` first, or pass --policy)")
    ppo = _policy_config(policy_dir)
    rm_path = Path(cfg.reward_model) if cfg.reward_model else run_dir / "reward_model"
    if not rm_path.exists() and cfg.reward_model != "gold":
        raise RlhfkitError(f"{rm_path}: the run has no reward model (run `rlhfkit train-rm`, or pass --reward-model)")
    rows = eval_prompts(cfg.prompts, cfg.num_prompts, cfg.samples_per_prompt,
                        cfg.toxic_samples_per_prompt or cfg.samples_per_prompt)
    device = pick_device(cfg.device)
    kl_budget = cfg.kl_budget or ppo.get("kl_budget", 0.0)
    sampling = cfg.sampling
    ppo_sampling = ppo.get("sampling") or {}
    differs = {k: (v, ppo_sampling[k]) for k, v in dataclasses.asdict(sampling).items()
               if k in ppo_sampling and ppo_sampling[k] != v}

    dtype = resolve_dtype(cfg.dtype, device) if ppo["lora_r"] > 0 else "float32"
    model, tokenizer = build_policy(ppo["model"], lora_r=ppo["lora_r"], lora_alpha=ppo["lora_alpha"], device=device,
                                    lora_layers=ppo.get("lora_layers", 0), dtype=dtype)
    model.load_trained(policy_dir)
    raw_fn, _, raw_dtype = load_scorer(cfg.reward_model if cfg.reward_model == "gold" else str(rm_path), run_dir, device,
                                       dtype=cfg.dtype)
    gold = GoldScorer()
    texts_in = [p.prompt for p, _ in rows]
    groups = [p.id for p, _ in rows]  # intervals resample prompts: a prompt's samples are not independent
    sampled = sample_both(model, tokenizer, texts_in, sampling=sampling, batch_size=cfg.batch_size, seed=cfg.seed)
    if ppo.get("algorithm") != "dpo":
        norm = RewardNorm.load(policy_dir)  # the scale PPO optimised on: the reference's rollouts score mean 0, std 1
    else:  # DPO samples nothing while training: the reference's eval completions give 0 and 1 the same meaning
        import torch

        norm = RewardNorm.fit(torch.tensor(raw_fn(texts_in, sampled["reference"]["texts"]), dtype=torch.float64))
    reward_fn = lambda p, t: [norm(r) for r in raw_fn(p, t)]  # noqa: E731
    scores = {m: score_texts(texts_in, sampled[m]["texts"], reward_fn, gold) for m in MODELS}
    pol, ref = scores["policy"], scores["reference"]
    result = {
        "n_prompts": len(set(groups)), "samples_per_prompt": cfg.samples_per_prompt,
        "toxic_samples_per_prompt": cfg.toxic_samples_per_prompt or cfg.samples_per_prompt,
        "n_completions": len(texts_in), "sampling": dataclasses.asdict(sampling), "sampling_differs_from_ppo": differs,
        "kl_budget": kl_budget, "dtype": dtype, "reward_model_dtype": raw_dtype,
        "models": {m: model_metrics(scores[m], sampled[m], sampled[m]["texts"], cfg.seed, groups) for m in MODELS},
        "win_rate": {"reward_model": M.paired_win_rate(pol["reward_model"], ref["reward_model"], seed=cfg.seed, groups=groups)},
        "kl": M.summary(sampled["policy"]["kl_k3"], seed=cfg.seed, groups=groups),
        "kl_k1": M.summary(sampled["policy"]["kl_k1"], seed=cfg.seed, groups=groups),
        "by_category": by_category(rows, scores, cfg.seed, cfg.gold),
    }
    if cfg.gold:
        result["gold_win_by_ending"] = by_ending(sampled["reference"]["ended"], sampled["policy"]["ended"],
                                                 pol["gold"], ref["gold"], cfg.seed, groups)
    toxic = [i for i, (p, _) in enumerate(rows) if p.category in TOXIC_CATEGORIES]
    cats = sorted({rows[i][0].category for i in toxic})
    toxic = toxic or list(range(len(rows)))  # prompts without categories: judge toxicity on all of them
    take = lambda v: [v[i] for i in toxic]  # noqa: E731
    result["toxicity_where_it_lives"] = {
        "categories": cats or ["all"], "n": len(toxic), "prompts": len({groups[i] for i in toxic}),
        "reference": M.summary(take(ref["toxicity"]), seed=cfg.seed, groups=take(groups)),
        "policy": M.summary(take(pol["toxicity"]), seed=cfg.seed, groups=take(groups)),
        "difference": M.paired_difference(take(pol["toxicity"]), take(ref["toxicity"]), seed=cfg.seed,
                                          groups=take(groups)),
    }
    if cfg.gold:
        result["win_rate"]["gold"] = M.paired_win_rate(pol["gold"], ref["gold"], seed=cfg.seed, groups=groups)
    else:
        for m in MODELS:
            result["models"][m].pop("gold")
    result["verdict"] = judge(result)
    result["seconds"] = time.perf_counter() - t0
    result["config"] = dataclasses.asdict(cfg)

    samples = []
    for i, (p, j) in enumerate(rows):
        row = {"prompt_id": p.id, "category": p.category, "sample": j, "prompt": p.prompt,
               "reference": sampled["reference"]["texts"][i], "policy": sampled["policy"]["texts"][i]}
        for m in MODELS:
            row[f"{m}_scores"] = {k: scores[m][k][i] for k in ("reward_model", "gold", "toxicity") if k in scores[m] and (cfg.gold or k != "gold")}
        row["kl"] = sampled["policy"]["kl_k3"][i]
        row["ended"] = {m: bool(sampled[m]["ended"][i]) for m in MODELS}  # EOS within max_new_tokens
        samples.append(row)
    out = run_dir / "eval"
    write_jsonl(out / "samples.jsonl", samples)
    atomic_write_json(out / "eval.json", result)
    save_resolved(run_dir, "eval", cfg)
    if cfg.report:
        from rlhfkit.eval.report import write_report

        result["report"] = str(write_report(run_dir))
    return result


def by_ending(ref_ended: list, pol_ended: list, pol_gold: list, ref_gold: list, seed: int, groups: list) -> dict:
    """The gold win rate within each case of ``metric_names.ENDINGS``: where the win comes from. A policy that
    only learned to finish its replies wins where only its reply ended and not where both did."""
    out = {}
    for case, (r, p, _) in ENDINGS.items():
        idx = [i for i, (a, b) in enumerate(zip(ref_ended, pol_ended)) if bool(a) == r and bool(b) == p]
        entry: dict = {"n": len(idx)}
        if idx:
            entry["gold_win_rate"] = M.paired_win_rate([pol_gold[i] for i in idx], [ref_gold[i] for i in idx],
                                                       seed=seed, groups=[groups[i] for i in idx])
        out[case] = entry
    return out


def by_category(rows: list, scores: dict, seed: int, gold: bool) -> dict[str, dict]:
    """Per prompt category: how many replies, the gold win rate (if scored) and mean toxicity of each model."""
    out: dict[str, dict] = {}
    for cat in sorted({p.category or "uncategorised" for p, _ in rows}):
        idx = [i for i, (p, _) in enumerate(rows) if (p.category or "uncategorised") == cat]
        groups = [rows[i][0].id for i in idx]
        pick = lambda m, k: [scores[m][k][i] for i in idx]  # noqa: E731
        entry = {"n": len(idx), "toxicity_reference": float(np.mean(pick("reference", "toxicity"))),
                 "toxicity_policy": float(np.mean(pick("policy", "toxicity")))}
        if gold:
            entry["gold_win_rate"] = M.paired_win_rate(pick("policy", "gold"), pick("reference", "gold"), seed=seed,
                                                       groups=groups)
        out[cat] = entry
    return out
