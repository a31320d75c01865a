"""``RUN_DIR/eval/report.html``: what a run did and whether it worked, in one self-contained page.

The page renders whatever artifacts the run directory holds; a stage that has not run yet leaves its
section saying so. Plots are matplotlib PNGs inlined as ``data:`` URIs, the CSS is inline, and there
is no JavaScript, so the file can be mailed or archived alone.

Model outputs, prompts and labeler names are untrusted text: Jinja2 escapes every value, and the
page's Content-Security-Policy forbids scripts and every fetch, so an escaping slip could neither run
code nor reach the network (defence in depth; OWASP XSS prevention cheat sheet, rules 1 and "CSP").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.eval.fmt import as_dict, finite, fmt_interval, fmt_num, fmt_pct, fmt_setting, fmt_signed, value
from rlhfkit.eval.plots import (POLICY_COLOUR, TRAIN_COLOUR, curves_plot, reliability_plot, toxicity_bar_plot,
                                toxicity_hist_plot)
from rlhfkit.eval.variants import variants_section
from rlhfkit.metric_names import ENDING_MEANING, ENDINGS, EVAL_KEYS, METRICS

REPORT_FILE = "report.html"
MAX_SAMPLES = 12
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

# Colours: the reference model is always grey, the aligned policy always blue (every plot and table).

PPO_PANELS = ["objective/score", "gold/score", "objective/kl", "policy/entropy", "value/loss", "policy/clipfrac"]
"""The PPO curves the report plots (labels and meanings from rlhfkit.metric_names); RLOO and GRPO have no value loss."""

DPO_PANELS = ["dpo/loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "policy/grad_norm"]
"""The DPO curves (TRL's names for the implicit rewards)."""

ALGORITHM_NAMES = {"ppo": "PPO", "rloo": "RLOO", "grpo": "GRPO", "dpo": "DPO"}

RM_HEADLINE = {"accuracy": "reward_model/accuracy", "gold_accuracy": "reward_model/gold_accuracy",
               "margin": "reward_model/margin", "ece": "reward_model/ece", "loss": "reward_model/loss"}
"""eval.json key of the reward model → its metric name."""

ALIASES = {"smollm2": "SmolLM2-135M-Instruct", "minilm": "all-MiniLM-L6-v2", "gold": "the gold scorer"}


# ---------------------------------------------------------------------------------------------
# Reading artifacts (a missing or unreadable one becomes a reason, never an exception)
# ---------------------------------------------------------------------------------------------


@dataclass
class Artifact:
    data: Any = None
    problem: str | None = None  # why there is no data: "not run …" or "could not read …"


def _read_json(run_dir: Path, rel: str, stage: str) -> Artifact:
    path = run_dir / rel
    if not path.exists():
        return Artifact(problem=f"Not run: {rel} does not exist (run `rlhfkit {stage}`).")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Artifact(problem=f"Could not read {rel}: {exc}")
    if not isinstance(data, dict):
        return Artifact(problem=f"Could not read {rel}: expected a JSON object")
    return Artifact(data)


def _read_yaml(run_dir: Path, rel: str) -> Artifact:
    import yaml

    path = run_dir / rel
    if not path.exists():
        return Artifact(data={}, problem=f"{rel} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return Artifact(data={}, problem=f"Could not read {rel}: {exc}")
    return Artifact(data if isinstance(data, dict) else {})


def _read_jsonl_dicts(path: Path) -> list[dict]:
    """Every JSON-object line (others skipped: the report shows what it can)."""
    out = []
    if not path.exists():
        return out
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
    return out


def _read_metrics(run_dir: Path, stage: str) -> Artifact:
    from rlhfkit.train.metrics import read_metrics

    path = run_dir / "logs" / "metrics.csv"
    if not path.exists():
        return Artifact(data={}, problem="Not run: logs/metrics.csv does not exist.")
    try:
        return Artifact(read_metrics(path, stage))
    except (KeyError, ValueError, OSError) as exc:  # a foreign or damaged CSV
        return Artifact(data={}, problem=f"Could not read logs/metrics.csv: {type(exc).__name__}: {exc}")


def _count_lines(path: Path) -> int | None:
    if not path.exists():
        return None
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())


# ---------------------------------------------------------------------------------------------
# Judgement and plain-language summary (pure functions of the loaded artifacts)
# ---------------------------------------------------------------------------------------------


def _name(x: Any) -> str:
    return ALIASES.get(str(x), str(x))


GRPO_ADVANTAGES = {"group": "group-normalised advantages",
                   "batch": "advantages centred per group and divided by the batch's std",
                   "none": "advantages centred per group, not divided by a std (Dr. GRPO)"}
"""What the report says of GRPO's advantages, by ``scale_rewards``."""

LOSS_AVERAGES = {"dapo": "", "grpo": ", each completion's tokens averaged before the completions (as the GRPO paper)",
                 "dr_grpo": ", token losses summed over completions × the token limit (Dr. GRPO)"}
"""What the report adds for a critic-free run's ``loss_type`` (nothing for the default)."""


def what_was_done(config: dict, *, n_completions: int | None, n_prompts: int | None, n_pairs: int | None,
                  feedback: dict | None, rm_eval: dict | None, ppo_iterations: int | None,
                  ev: dict | None, algorithm: str = "ppo") -> list[tuple[str, str]]:
    """(stage, plain-language sentence) per pipeline stage, from the resolved configs and counts."""
    steps = []
    gen = config.get("generate") or {}
    if gen or n_completions:
        model = _name(gen.get("model", "the policy"))
        text = f"The instruct model {model} wrote"
        if n_completions is not None:
            text += f" {n_completions:,} completions"
            if n_prompts:
                text += f" for {n_prompts:,} prompts"
        else:
            text += " completions"
        if gen.get("k"):
            text += f" ({gen['k']} per prompt"
            if finite(gen.get("temperature")):
                text += f", temperature {fmt_setting(gen['temperature'])}"
            if gen.get("max_new_tokens"):
                text += f", at most {gen['max_new_tokens']} new tokens"
            text += ")"
        steps.append(("Generate", text + "."))
    else:
        steps.append(("Generate", "not run"))

    label = config.get("label") or {}
    if feedback or label:
        if feedback:
            n_lab = feedback.get("n_labelers")
            flagged = [row.get("labeler") for row in feedback.get("labelers") or [] if row.get("flagged")]
            text = (f"{fmt_num(n_lab)} labelers ranked the completions of each prompt: "
                    f"{fmt_num(feedback.get('n_rankings'))} rankings of {fmt_num(feedback.get('n_tasks'))} tasks")
            if label.get("simulate"):
                text += (f" (simulated labelers following the written guideline, {label.get('careless', 0)} "
                         f"careless by design; each task ranked by {label.get('overlap', '?')})")
            text += f". Quality checks flagged {len(flagged)} labeler{'s' if len(flagged) != 1 else ''}"
            text += f": {', '.join(map(str, flagged))}." if flagged else "."
        else:
            text = f"{label.get('simulate', 0)} simulated labelers were set up to rank the completions."
        steps.append(("Label", text))
    else:
        steps.append(("Label", "not run"))

    pairs = config.get("pairs") or {}
    if n_pairs is not None or pairs:
        text = f"Every ranking became preference pairs (best over worse): {fmt_num(n_pairs)} pairs"
        if pairs.get("drop_flagged"):
            text += ", leaving out the flagged labelers' rankings"
        steps.append(("Pairs", text + "."))
    else:
        steps.append(("Pairs", "not run"))

    rm = config.get("train_rm") or {}
    if rm_eval or rm:
        backbone = _name((rm_eval or {}).get("backbone") or rm.get("backbone", "?"))
        text = f"A reward model ({backbone} with a scalar head) learned to score the preferred completion higher"
        used = ((rm_eval or {}).get("pairs") or {}) if isinstance((rm_eval or {}).get("pairs"), dict) else {}
        n_train = used.get("train", (rm_eval or {}).get("n_train"))
        if n_train is not None:
            text += f", trained on {fmt_num(n_train)} pairs"
        acc = _rm_scalar(rm_eval or {}, "accuracy")
        n_held = used.get("heldout")
        if acc is not None and isinstance(n_held, int):
            from rlhfkit.eval.metrics import proportion_text

            text += f"; it ranks {proportion_text(acc, n_held, 'held-out pairs')} the labelers' way"
        elif acc is not None:
            text += f"; it ranks {fmt_pct(acc)} of held-out pairs the labelers' way"
        steps.append(("Reward model", text + "."))
    else:
        steps.append(("Reward model", "not run"))

    ppo = config.get("ppo") or {}
    dpo = config.get("dpo") or {}
    if algorithm == "dpo" and dpo:
        text = (f"DPO trained the policy directly on the preference pairs for {fmt_num(dpo.get('epochs'))} epoch(s) "
                f"of {fmt_num(dpo.get('batch_size'))} pairs per step (LoRA adapters of rank {dpo.get('lora_r')}; the "
                f"reference is the base with them off), {dpo.get('loss_type')} loss, β = {fmt_setting(dpo.get('beta'))}"
                "; the reward model was trained for evaluation only")
        steps.append(("DPO", text + "."))
    elif ppo or ppo_iterations:
        name = ALGORITHM_NAMES.get(ppo.get("algorithm", "ppo"), "PPO")
        its = ppo_iterations if ppo_iterations is not None else ppo.get("iterations")
        text = f"{name} fine-tuned the policy for {fmt_num(its)} iterations"
        if ppo.get("batch_size"):
            text += f" of {ppo['batch_size']} rollouts"
        if name != "PPO":
            how = ("leave-one-out baseline, KL in the reward" if name == "RLOO" else
                   GRPO_ADVANTAGES.get(ppo.get("scale_rewards", "group"), GRPO_ADVANTAGES["group"]) + ", KL in the loss"
                   + (" weighted by the probability ratio (the reverse KL's gradient)" if ppo.get("kl_bias_correction")
                      else ""))
            how += LOSS_AVERAGES.get(ppo.get("loss_type", "dapo"), "")
            if ppo.get("importance_sampling_level") == "sequence":
                how += ", one probability ratio per completion (GSPO)"
            text += f" ({ppo.get('group_size')} per prompt, no critic: {how})"
        if ppo.get("lora_r"):
            text += f" (LoRA adapters of rank {ppo['lora_r']})"
        text += ", maximising the reward-model score minus β × KL to the frozen reference"
        if finite(ppo.get("kl_coef")):
            text += f"; β = {fmt_setting(ppo['kl_coef'])}"
            if ppo.get("adaptive_kl"):
                text += f", adapted towards a KL of {fmt_setting(ppo.get('kl_target'))} nats"
            elif ppo["kl_coef"] == 0:
                text += " (no KL penalty: expect reward hacking)"
        if finite(ppo.get("kl_budget")) and ppo["kl_budget"] > 0:
            text += f"; stop if KL exceeds {fmt_setting(ppo['kl_budget'])} nats"
        steps.append((name, text + "."))
    else:
        steps.append(("PPO", "not run"))

    if ev:
        per = int(ev.get("samples_per_prompt") or 1)
        times = f" ({per} samples each)" if per > 1 else ""
        text = (f"The reference and the aligned policy answered the same {fmt_num(ev.get('n_prompts'))} "
                f"held-out prompts{times} with the same sampling settings; both were scored and compared.")
        steps.append(("Evaluate", text))
    else:
        steps.append(("Evaluate", "not run"))
    return steps


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _rm_scalar(rm: dict, key: str) -> float | None:
    """A headline reward-model number: top level first, then the held-out block (train/reward.py)."""
    for source in (rm, rm.get("heldout") if isinstance(rm.get("heldout"), dict) else {}):
        if finite(source.get(key)):
            return float(source[key])
    return None


def flatten_scalars(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) for every scalar in a nested dict; lists (histories, bins) are left out."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out.extend(flatten_scalars(v, f"{prefix}{k}."))
        elif v is None or isinstance(v, (str, int, float, bool)):
            out.append((f"{prefix}{k}", v))
    return out


def eval_rows(ev: dict) -> list[dict]:
    """One row per metric present in either model: label, meaning, both values, Δ and its tone."""
    models = as_dict(ev.get("models"))
    ref, pol = as_dict(models.get("reference")), as_dict(models.get("policy"))
    table = [(k, METRICS[f"eval/{k}"]) for k in EVAL_KEYS]
    extra = [(k, None) for k in list(ref) + [k for k in pol if k not in ref] if k not in EVAL_KEYS]
    rows = []
    for key, m in table + extra:
        label, better, pct, meaning = (m.label, m.better, m.percent, m.meaning) if m else (key, 0, False, "")
        if key not in ref and key not in pol:
            continue
        r, p = value(ref.get(key)), value(pol.get(key))
        delta = p - r if r is not None and p is not None else None
        tone = "neutral"
        if delta is not None and better and delta != 0:
            tone = "good" if delta * better > 0 else "bad"
        rows.append({"label": label, "meaning": meaning, "reference": fmt_interval(ref.get(key), pct),
                     "policy": fmt_interval(pol.get(key), pct), "delta": fmt_signed(delta, pct), "tone": tone,
                     "better": {1: "higher is better", -1: "lower is better"}.get(better, "")})
    return rows


def agreement_matrix(report: dict) -> dict:
    """Labelers × labelers table of pairwise agreement (cells carry the share and its pair count)."""
    names = [row["labeler"] for row in report.get("labelers") or []]
    for row in report.get("pairwise_table") or []:
        for n in row.get("labelers", []):
            if n not in names:
                names.append(n)
    cells = {}
    for row in report.get("pairwise_table") or []:
        a, b = row["labelers"]
        cells[(a, b)] = cells[(b, a)] = row
    grid = []
    for a in names:
        line = []
        for b in names:
            row = cells.get((a, b))
            share = row.get("agreement") if row else None
            line.append({"self": a == b, "text": fmt_pct(share) if row else "",
                         "title": f"{row['agree']}/{row['total']} pairs" if row else "",
                         "bg": _heat(share) if finite(share) else ""})
        grid.append({"name": a, "cells": line})
    return {"names": names, "rows": grid}


def _heat(share: float) -> str:
    """Background for an agreement share: white at chance (0.5) to blue at 1, red below chance."""
    t = max(-1.0, min(1.0, (share - 0.5) / 0.5))
    if t >= 0:
        r, g, b = (int(255 - t * (255 - c)) for c in (147, 197, 253))
    else:
        r, g, b = (int(255 + t * (255 - c)) for c in (252, 165, 165))
    return f"#{r:02x}{g:02x}{b:02x}"


# Figures are drawn at 2 pixels per CSS pixel (96 CSS px per inch) and shown at ---------------
# Sections
# ---------------------------------------------------------------------------------------------


def _ppo_section(metrics: Artifact, config: dict, algorithm: str = "ppo") -> dict:
    name = ALGORITHM_NAMES.get(algorithm, "PPO")
    if metrics.problem:
        return {"problem": metrics.problem, "name": name}
    m = metrics.data
    if not m:
        return {"problem": f"Not run: logs/metrics.csv has no {name} rows (run `rlhfkit {'dpo' if name == 'DPO' else 'ppo'}`).",
                "name": name}
    names = DPO_PANELS if name == "DPO" else PPO_PANELS
    budget = (config.get("ppo") or {}).get("kl_budget")
    budget = float(budget) if finite(budget) and budget > 0 else None
    panels = []
    for key in names:
        if m.get(key):
            panels.append((METRICS[key].label, [("policy", m[key], POLICY_COLOUR)], budget if key == "objective/kl" else None))
    if not panels:
        return {"problem": f"logs/metrics.csv has {name} rows but none of the plotted metrics.", "name": name}
    last = max(s for pts in m.values() for s, _ in pts)
    first = min(s for pts in m.values() for s, _ in pts)
    unit = "step" if name == "DPO" else "iteration"
    return {"plot": curves_plot(panels, f"{name} {unit}"), "iterations": last - first + 1, "name": name, "unit": unit,
            "legend": [(title, meaning, fmt_num(m[key][0][1]), fmt_num(m[key][-1][1]))
                       for key, title, meaning in [(k, METRICS[k].label, METRICS[k].meaning) for k in names]
                       if m.get(key)]}


def _rm_curves(metrics: dict, rm_eval: dict | None) -> dict | None:
    """Reward-model training curves: metrics.csv's train_rm rows, else eval.json's history."""
    if not metrics and rm_eval and isinstance(rm_eval.get("history"), list):
        for entry in rm_eval["history"]:
            if isinstance(entry, dict) and finite(entry.get("step")):
                for k, v in entry.items():
                    if k not in ("step", "epoch") and finite(v):
                        metrics.setdefault(k, []).append((int(entry["step"]), float(v)))
    if not metrics:
        return None
    panels, used = [], set()
    for key in sorted(metrics):
        if key in used or key.rsplit("/", 1)[-1].startswith("train_"):
            continue
        base = key.rsplit("/", 1)
        train_key = f"{base[0]}/train_{base[1]}" if len(base) == 2 else None
        series = [("held-out" if train_key in metrics else key, metrics[key], POLICY_COLOUR)]
        if train_key in metrics:
            series.insert(0, ("train", metrics[train_key], TRAIN_COLOUR))
            used.add(train_key)
        panels.append((base[-1].replace("_", " "), series, None))
    for key in sorted(metrics):  # train-only metrics with no held-out partner
        if key not in used and key.rsplit("/", 1)[-1].startswith("train_"):
            title = key.rsplit("/", 1)[-1].replace("_", " ")
            panels.append((title, [("train", metrics[key], TRAIN_COLOUR)], None))
    return curves_plot(panels[:9], "optimizer step")


def _rm_section(rm: Artifact, metrics: Artifact) -> dict:
    curves = _rm_curves(dict(metrics.data or {}), rm.data)
    if rm.data is None:
        return {"problem": rm.problem, "curves": curves}
    d = rm.data
    headline = []
    for key, name in RM_HEADLINE.items():
        v, m = _rm_scalar(d, key), METRICS[name]
        if v is not None:
            headline.append({"label": m.label, "value": fmt_pct(v) if m.percent else fmt_num(v), "meaning": m.meaning})
    bins = d.get("calibration")
    if not isinstance(bins, list) and isinstance(d.get("heldout"), dict):
        bins = d["heldout"].get("calibration")
    reliability = None
    if isinstance(bins, list) and any(isinstance(b, dict) for b in bins):
        reliability = reliability_plot([b for b in bins if isinstance(b, dict)])
    details = [(k, fmt_num(v) if not isinstance(v, str) else v) for k, v in flatten_scalars(d)]
    return {"headline": headline, "details": details, "reliability": reliability, "curves": curves}


def _feedback_section(fb: Artifact) -> dict:
    if fb.data is None:
        return {"problem": fb.problem}
    from rlhfkit.feedback.report import careful_agreement

    r = fb.data
    try:
        careful = careful_agreement(r)
    except (KeyError, TypeError, ValueError):
        careful = None
    labelers = []
    for row in r.get("labelers") or []:
        labelers.append({
            "name": row.get("labeler"), "n": fmt_num(row.get("n_rankings")),
            "consensus": fmt_pct(row.get("consensus_agreement")), "bias": fmt_signed(row.get("position_bias")),
            "f_rate": fmt_pct(row.get("f_rate")), "tie_rate": fmt_pct(row.get("tie_rate")),
            "gold": fmt_pct(row.get("gold_accuracy")), "score": fmt_num(row.get("score")),
            "flagged": bool(row.get("flagged")), "reasons": row.get("reasons") or [],
        })
    stats = [
        ("Rankings", fmt_num(r.get("n_rankings")), "one labeler ordering one prompt's completions"),
        ("Tasks ranked by ≥ 2", f"{fmt_num(r.get('n_overlap_tasks'))} of {fmt_num(r.get('n_tasks'))}",
         "overlap is what agreement is measured on"),
        ("Pairwise agreement, all", fmt_pct(r.get("pairwise_agreement")),
         "share of completion pairs two labelers order the same way (50% = chance)"),
        ("Pairwise agreement, not flagged", fmt_pct(careful),
         "the same among labelers not flagged; InstructGPT reports ~73%"),
        ("Kendall τ-b", fmt_num(r.get("kendall_tau_b_mean")),
         "mean rank correlation between two labelers' rankings (1 = identical)"),
        ("Krippendorff α (ordinal)", fmt_num(r.get("krippendorff_alpha_ordinal")),
         "chance-corrected agreement (0 = chance, 1 = perfect)"),
    ]
    return {"stats": stats, "labelers": labelers, "matrix": agreement_matrix(r)}


def _eval_section(ev: Artifact, samples: list[dict]) -> dict:
    if ev.data is None:
        return {"problem": ev.problem}
    d = ev.data
    win = as_dict(d.get("win_rate"))
    extra = []
    for key, judge in (("reward_model", "the reward model"), ("gold", "the gold scorer")):
        if isinstance(win.get(key), dict):
            extra.append({"label": f"Win rate, judged by {judge}", "value": fmt_interval(win[key], pct=True),
                          "meaning": "share of prompts where the policy's completion beats the reference's "
                                     "(50% = no better)"})
    if d.get("kl") is not None:
        budget = d.get("kl_budget")
        extra.append({"label": "KL(policy ‖ reference)", "value": fmt_interval(d["kl"]),
                      "meaning": "how far the policy moved from the reference, in nats per completion"
                                 + (f"; budget {fmt_setting(budget)}" if finite(budget) and budget > 0 else "")})
    extra += _ending_rows(as_dict(d.get("gold_win_by_ending")))
    known = {"models", "win_rate", "kl", "kl_budget", "verdict", "variants", "gold_win_by_ending"}  # variants: own section
    settings = [(k, fmt_num(v) if not isinstance(v, str) else v)
                for k, v in flatten_scalars({k: v for k, v in d.items() if k not in known})]
    models = as_dict(d.get("models"))
    ref_tox = [as_dict(s.get("reference_scores")).get("toxicity") for s in samples]
    pol_tox = [as_dict(s.get("policy_scores")).get("toxicity") for s in samples]
    toxicity_plot, toxicity_alt = None, ""
    if samples and all(finite(x) for x in ref_tox + pol_tox):
        toxicity_plot = toxicity_hist_plot([float(x) for x in ref_tox], [float(x) for x in pol_tox])
        toxicity_alt = "histogram of P(offensive) per completion, reference and policy"
    elif all(value(as_dict(models.get(m)).get("toxicity")) is not None for m in ("reference", "policy")):
        toxicity_plot = toxicity_bar_plot(models["reference"]["toxicity"], models["policy"]["toxicity"])
        toxicity_alt = "bar chart of mean P(offensive) with 95% intervals, reference and policy"
    verdict = as_dict(d.get("verdict"))  # judged by eval.verdict when eval.json was written; shown as is here
    checks = [c for c in verdict.get("checks", []) if isinstance(c, dict)]
    line = verdict.get("sentence") or "No verdict in eval.json (written by an older rlhfkit: re-run `rlhfkit eval`)."
    return {"rows": eval_rows(d), "extra": extra, "settings": settings, "toxicity_plot": toxicity_plot,
            "toxicity_alt": toxicity_alt, "passed": verdict.get("passed"), "verdict": line, "checks": checks}


def _ending_rows(by_ending: dict) -> list[dict]:
    """The gold win rate split by which replies ended within the token limit: where the win comes from."""
    rows = []
    for case, (*_, label) in ENDINGS.items():
        entry = as_dict(by_ending.get(case))
        if not entry.get("n") or not isinstance(entry.get("gold_win_rate"), dict):
            continue
        meaning = ENDING_MEANING if not rows else ""
        rows.append({"label": f"Gold win, {label}", "value": f"{fmt_interval(entry['gold_win_rate'], pct=True)}, "
                                                             f"{entry['n']} pairs", "meaning": meaning})
    return rows


def _sample_item(s: dict) -> dict:
    item = {"prompt": str(s.get("prompt", ""))}
    for side in ("reference", "policy"):
        scores = as_dict(s.get(f"{side}_scores"))
        item[side] = str(s.get(side, ""))
        item[f"{side}_scores"] = [(label, fmt_num(scores.get(key))) for key, label in
                                  (("reward_model", "reward"), ("gold", "gold"), ("toxicity", "P(offensive)"))
                                  if key in scores]
    if finite(s.get("kl")):  # the policy's KL to the reference on this completion (nats)
        item["policy_scores"].append(("KL", fmt_num(s["kl"])))
    return item


def _margin(s: dict, key: str) -> float | None:
    p, r = as_dict(s.get("policy_scores")).get(key), as_dict(s.get("reference_scores")).get(key)
    return p - r if finite(p) and finite(r) else None


def _samples_section(run_dir: Path, samples: list[dict]) -> dict:
    """At most MAX_SAMPLES pairs, chosen to be read: where the gold scorer prefers the policy most, where it
    prefers the reference most, and where the reward model and the gold scorer disagree (the proxy rewarding
    what the judge does not: reward hacking shows there first). Without gold scores: the first pairs."""
    if not samples:
        if (run_dir / "eval" / "samples.jsonl").exists():
            return {"problem": "eval/samples.jsonl holds no readable samples."}
        return {"problem": "Not run: eval/samples.jsonl does not exist (run `rlhfkit eval`)."}
    gold = [(m, i) for i, s in enumerate(samples) if (m := _margin(s, "gold")) is not None]
    if not gold:
        return {"groups": [{"title": "Samples", "note": "", "items": [_sample_item(s) for s in samples[:MAX_SAMPLES]]}],
                "shown": min(len(samples), MAX_SAMPLES), "total": len(samples)}
    used: set[int] = set()

    def pick(candidates: list[tuple[float, int]], n: int) -> list[dict]:
        out = []
        for _, i in sorted(candidates, reverse=True):
            if len(out) == n:
                break
            if i not in used:
                used.add(i)
                out.append(_sample_item(samples[i]))
        return out

    split = MAX_SAMPLES // 2
    groups = [
        {"title": "Where the gold scorer prefers the aligned policy most", "note": "the largest gold-score gains",
         "items": pick([(m, i) for m, i in gold if m > 0], split)},
        {"title": "Where the reward model and the gold scorer disagree",
         "note": "the reward model prefers the policy's reply, the independent judge the reference's: what the "
                 "proxy rewards and a careful reader would not (reward hacking shows here first)",
         "items": pick([(rm, i) for m, i in gold if m < 0 and (rm := _margin(samples[i], "reward_model") or 0) > 0],
                       (MAX_SAMPLES - split) // 2)},
    ]
    groups.append({"title": "Where the gold scorer prefers the reference most", "note": "the largest gold-score losses",
                   "items": pick([(-m, i) for m, i in gold if m < 0], MAX_SAMPLES - split - len(groups[1]["items"]))})
    groups = [g for g in groups if g["items"]]
    return {"groups": groups, "shown": sum(len(g["items"]) for g in groups), "total": len(samples)}


def _machine_section(run_dir: Path) -> dict | None:
    """The machine and each stage's wall seconds (and its model's dtype), from RUN_DIR/run.json (`rlhfkit pipeline`)."""
    from rlhfkit.machine import one_line

    art = _read_json(run_dir, "run.json", "pipeline")
    if art.data is None:
        return None
    stages = [(name, t["seconds"], t.get("dtype")) for name, t in as_dict(art.data.get("stages")).items()
              if isinstance(t, dict) and finite(t.get("seconds"))]
    return {"machine": one_line(as_dict(art.data.get("machine"))),
            "stages": ", ".join(f"{name} {fmt_num(float(sec))} s" + (f" ({dtype})" if isinstance(dtype, str) else "")
                                for name, sec, dtype in stages),
            "total": fmt_num(float(art.data["seconds"])) if finite(art.data.get("seconds")) else "—"}


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def build_context(run_dir: str | Path) -> dict:
    """Everything the template shows, read from the run directory (nothing here raises on a
    missing or damaged artifact; the section names the problem instead)."""
    run_dir = Path(run_dir)
    config = _read_yaml(run_dir, "config.yaml").data
    fb = _read_json(run_dir, "feedback_report.json", "label report")
    rm = _read_json(run_dir, "reward_model/eval.json", "train-rm")
    ev = _read_json(run_dir, "eval/eval.json", "eval")
    policy_config = _read_yaml(run_dir, "policy/config.yaml").data
    algorithm = policy_config.get("algorithm", "ppo") if isinstance(policy_config, dict) else "ppo"
    ppo_metrics = _read_metrics(run_dir, "dpo" if algorithm == "dpo" else "ppo")
    rm_metrics = _read_metrics(run_dir, "train_rm")
    samples = _read_jsonl_dicts(run_dir / "eval" / "samples.jsonl")
    completions = _read_jsonl_dicts(run_dir / "completions.jsonl")

    ppo = _ppo_section(ppo_metrics, config, algorithm)
    evaluation = _eval_section(ev, samples)
    summary = what_was_done(
        config,
        n_completions=len(completions) if (run_dir / "completions.jsonl").exists() else None,
        n_prompts=len({c.get("prompt_id") for c in completions}) or None,
        n_pairs=_count_lines(run_dir / "pairs.jsonl"), feedback=fb.data, rm_eval=rm.data,
        ppo_iterations=ppo.get("iterations"), ev=ev.data, algorithm=algorithm,
    )
    return {
        "title": f"rlhfkit report — {run_dir.resolve().name}",
        "run_name": run_dir.resolve().name,
        "csp": CSP,
        "steps": summary,
        "verdict": {"passed": evaluation.get("passed"), "line": evaluation.get("verdict"),
                    "checks": evaluation.get("checks", [])},
        "ppo": ppo,
        "feedback": _feedback_section(fb),
        "rm": _rm_section(rm, rm_metrics),
        "eval": evaluation,
        "variants": variants_section(ev.data),
        "samples": _samples_section(run_dir, samples),
        "machine": _machine_section(run_dir),
    }


def render_report(context: dict) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,  # every value is untrusted text unless proven otherwise
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(REPORT_FILE).render(**context)


def write_report(run_dir: str | Path) -> Path:
    """Render RUN_DIR/eval/report.html from whatever the run directory holds; returns its path."""
    from rlhfkit.data.io import atomic_write_text

    out = Path(run_dir) / "eval" / REPORT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, render_report(build_context(run_dir)))
    return out
