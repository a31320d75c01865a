"""``rlhfkit pipeline CONFIG``: generate → label → pairs → train-rm → ppo → eval (→ report) from one YAML.

The policy stage follows the top-level ``algorithm``: ppo, rloo or grpo (the ``ppo`` stage and section, with
that algorithm) or dpo (the ``dpo`` stage and section, trained on the run's pairs; the reward model is then
trained for evaluation only).

A stage whose outputs are complete for the same config is skipped: when a stage finishes, a marker
``RUN_DIR/.stages/STAGE.done`` records the hash of its resolved config. A changed config re-runs
that stage and every stage after it. An interrupted PPO run continues from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rlhfkit.data.errors import RlhfkitError

STAGES = ("generate", "label", "pairs", "train_rm", "ppo", "eval")
# Top-level keys given to every stage that has the field ('sampling': a mapping of SamplingConfig fields,
# so generate, ppo and eval sample alike).
SHARED = ("run_dir", "seed", "dtype", "system_prompt", "sampling", "algorithm")
ALGORITHMS = ("ppo", "rloo", "grpo", "dpo")
"""What trains the policy: PPO, the critic-free RLOO / GRPO (the ppo stage), or DPO (the dpo stage)."""
# Fields that say how to run, not what to compute: they do not invalidate a finished stage.
_VOLATILE = {"force", "resume", "device", "report", "run_dir"}


@dataclass
class Stage:
    name: str
    config_cls: type
    run: Callable[[Any], dict]
    done_when: Callable[[Path], bool]  # the stage's outputs exist


def stages(feedback: str = "simulated", algorithm: str = "ppo") -> dict[str, Stage]:
    """The stages in order, keyed by slot (STAGES); a stage's own name is its YAML section and marker.

    ``feedback``: 'simulated' labelers, or 'ai' (the constitution's AI labeler, RLAIF). ``algorithm``: the
    policy slot runs ppo (also for rloo and grpo) or dpo."""
    from rlhfkit.config import EvalConfig, GenerateConfig, LabelConfig, PairsConfig, PPOConfig, RewardConfig
    from rlhfkit.eval.variants import run_eval_with_variants
    from rlhfkit.feedback.label import run_label, run_pairs
    from rlhfkit.generate import run_generate
    from rlhfkit.train.ppo import run_ppo

    if feedback == "ai":
        from rlhfkit.cai.ai_labeler import run_ai_label
        from rlhfkit.config import CaiLabelConfig  # noqa: I001 (only needed for AI feedback)

        label = Stage("label", CaiLabelConfig, run_ai_label, lambda d: (d / "feedback.db").exists())
    elif feedback == "simulated":
        label = Stage("label", LabelConfig, run_label, lambda d: (d / "feedback.db").exists())
    else:
        raise RlhfkitError(f"feedback must be 'simulated' or 'ai', got {feedback!r}")
    if algorithm not in ALGORITHMS:
        raise RlhfkitError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    policy_done = lambda d: (d / "policy" / "trainable.safetensors").exists()  # noqa: E731
    if algorithm == "dpo":
        from rlhfkit.config import DpoConfig
        from rlhfkit.train.dpo import run_dpo

        policy = Stage("dpo", DpoConfig, run_dpo, policy_done)
    else:
        policy = Stage("ppo", PPOConfig, run_ppo, policy_done)
    return {
        "generate": Stage("generate", GenerateConfig, run_generate, lambda d: (d / "completions.jsonl").exists()),
        "label": label,
        "pairs": Stage("pairs", PairsConfig, run_pairs, lambda d: (d / "pairs.jsonl").exists()),
        "train_rm": Stage("train_rm", RewardConfig, train_rm_with_gold, lambda d: (d / "reward_model" / "eval.json").exists()),
        "ppo": policy,
        "eval": Stage("eval", EvalConfig, run_eval_with_variants, lambda d: (d / "eval" / "eval.json").exists()),
    }


def train_rm_with_gold(cfg) -> dict:
    """train-rm, also measuring the gold scorer on the same held-out pairs (the bound labeler noise sets);
    the pipeline's stage and the ``train-rm`` command both run this."""
    from rlhfkit.feedback.gold import GoldScorer
    from rlhfkit.train.reward_stage import run_train_rm

    return run_train_rm(cfg, gold_scorer=GoldScorer().score)


def config_hash(cfg) -> str:
    data = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _VOLATILE}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _marker(run_dir: Path, stage: str) -> Path:
    return run_dir / ".stages" / f"{stage}.done"


def resolve_stage_configs(config_path: str | Path | None, overrides: dict[str, dict] | None = None) -> dict[str, Any]:
    """Each stage's config from the pipeline YAML (top-level run_dir/seed shared, one section per stage)."""
    from rlhfkit.config import field_types, load_config, nested_configs, read_yaml

    data: dict = {}
    if config_path is not None:
        path = Path(config_path)
        data = read_yaml(path, "pipeline config") or {}
        if not isinstance(data, dict):
            raise RlhfkitError(f"{path}: a pipeline config must be a mapping")
        unknown = sorted(set(data) - set(STAGES) - set(SHARED) - {"feedback", "dpo"})
        if unknown:
            raise RlhfkitError(f"{path}: unknown key(s) {unknown}; expected {list(SHARED)}, feedback or a stage: "
                               f"{list(STAGES) + ['dpo']}")
    overrides = overrides or {}
    shared = {k: data[k] for k in SHARED if k in data}
    shared.update(overrides.get("*", {}))
    out = {"_feedback": data.get("feedback", "simulated"), "_algorithm": shared.get("algorithm", "ppo")}
    for name, stage in stages(out["_feedback"], out["_algorithm"]).items():
        fields = set(field_types(stage.config_cls)) | set(nested_configs(stage.config_cls))
        section = data.get(stage.name) or {}
        if not isinstance(section, dict):
            raise RlhfkitError(f"{config_path}: section '{stage.name}' must be a mapping")
        values = {k: v for k, v in shared.items() if k in fields}
        values.update(section)
        values.update(overrides.get(stage.name, {}))
        where = f"{config_path}: {stage.name}" if config_path is not None else "command line"
        out[name] = load_config(stage.config_cls, None, values, section=stage.name, where=where)
    return out


def run_pipeline(config_path: str | Path | None, *, overrides: dict[str, dict] | None = None, force: bool = False,
                 echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage in order, skipping those already complete for the same config."""
    configs = resolve_stage_configs(config_path, overrides)
    run_dir = Path(configs["generate"].run_dir)
    registry = stages(configs.pop("_feedback"), configs.pop("_algorithm"))
    _refuse_stale_rankings(registry, configs, run_dir, force)
    summaries: dict[str, Any] = {}
    rerun = force  # once a stage runs, every stage after it must run too: its inputs changed
    t_all = time.perf_counter()
    timings: dict[str, Any] = {}
    for name in STAGES:
        stage, cfg = registry[name], configs[name]
        if Path(cfg.run_dir) != run_dir:
            raise RlhfkitError(f"stage '{name}' has run_dir {cfg.run_dir}; every stage must share {run_dir}")
        marker, digest = _marker(run_dir, stage.name), config_hash(cfg)
        complete = marker.exists() and marker.read_text().strip() == digest and stage.done_when(run_dir)
        if complete and not rerun:
            echo(f"[{stage.name}] skipped: already complete for this config")
            summaries[name] = {"skipped": True}
            timings[stage.name] = {"skipped": True}
            continue
        interrupted = not marker.exists() and not rerun  # started earlier, never finished
        marker.unlink(missing_ok=True)
        _prepare(stage.name, cfg, run_dir, interrupted=interrupted, force=force)
        echo(f"[{stage.name}] running …" + (" (continuing an interrupted run)" if getattr(cfg, "resume", False) else ""))
        t0 = time.perf_counter()
        summaries[name] = stage.run(cfg)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(digest + "\n")
        timings[stage.name] = {"seconds": round(time.perf_counter() - t0, 1)}
        dtype = summaries[name].get("dtype") if isinstance(summaries[name], dict) else None
        if dtype:  # the precision the stage's model ran in (dtype auto resolved on this machine)
            timings[stage.name]["dtype"] = dtype
        record_run(run_dir, timings, time.perf_counter() - t_all)
        precision = f" ({dtype})" if dtype else ""
        echo(f"[{stage.name}] done in {time.perf_counter() - t0:.0f} s{precision}: {describe(stage.name, summaries[name])}")
        rerun = True
    summaries["seconds"] = time.perf_counter() - t_all
    summaries["stages"] = timings
    return summaries


def _refuse_stale_rankings(registry: dict, configs: dict, run_dir: Path, force: bool) -> None:
    """Before anything runs: a change upstream of label would make feedback.db's rankings rank completions
    that no longer exist. Say so now, naming the stage — not after regenerating, with a misleading error."""
    db = run_dir / "feedback.db"
    if force or not db.exists() or not _marker(run_dir, "label").exists():
        return
    for name in STAGES[: STAGES.index("label")]:
        marker, stage = _marker(run_dir, name), registry[name]
        if not (marker.exists() and marker.read_text().strip() == config_hash(configs[name])
                and stage.done_when(run_dir)):
            raise RlhfkitError(
                f"the {name} config changed since {db} was labeled: its rankings are of the old completions, and "
                f"re-running {name} would strand them. Use a new run_dir (the old run stays as it is), or "
                "`rlhfkit pipeline --force` to start this run over (its rankings are deleted)")


RUN_FILE = "run.json"
"""RUN_DIR/run.json: the machine and each stage's wall seconds of the last pipeline run, and the dtype its model ran
in where it runs one (the report shows them)."""


def record_run(run_dir: Path, timings: dict, seconds: float) -> None:
    from rlhfkit import machine
    from rlhfkit.data.io import atomic_write_json

    atomic_write_json(run_dir / RUN_FILE, {"machine": machine.describe(), "stages": timings,
                                           "seconds": round(seconds, 1)})


def _prepare(name: str, cfg, run_dir: Path, *, interrupted: bool, force: bool) -> None:
    """Set a stage's force/resume so it overwrites stale outputs, or continues an interrupted run."""
    if name == "label":
        db = run_dir / "feedback.db"
        if db.exists() and force:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
        elif db.exists() and not interrupted:
            # The store of record may hold people's rankings: never delete it behind their back.
            raise RlhfkitError(f"{db} holds rankings made under another label config; "
                               "use a new run_dir, or `rlhfkit pipeline --force` to start the run over")
        return  # an interrupted labeling continues: the assignment queue knows what is left
    if name in ("ppo", "dpo"):  # both write RUN_DIR/policy: the other's marker no longer describes it
        _marker(run_dir, "dpo" if name == "ppo" else "ppo").unlink(missing_ok=True)
    if name in ("ppo", "dpo") and interrupted and (run_dir / "policy" / "trainer_state.pt").exists():
        import yaml

        saved = yaml.safe_load((run_dir / "policy" / "config.yaml").read_text())
        ours = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _VOLATILE}
        same = saved.get("algorithm", "ppo") == getattr(cfg, "algorithm", "dpo") and {
            k: v for k, v in saved.items() if k not in _VOLATILE and k != "algorithm"} == {
            k: v for k, v in ours.items() if k != "algorithm"}
        cfg.resume, cfg.force = same, not same  # continue only the run this config started
        return
    if hasattr(cfg, "force"):
        cfg.force = True


def describe(name: str, s: dict) -> str:
    """One line on what a stage did."""
    if name == "generate":
        return f"{s['completions']} completions of {s['prompts']} prompts, {s['tokens_per_s']:.0f} tokens/s → {s['path']}"
    if name == "label":
        return f"{s['rankings']} rankings of {s['tasks_added'] + s['tasks_existing']} tasks → {s['store']}"
    if name == "pairs":
        flagged = f" (flagged and dropped: {', '.join(s['flagged'])})" if s["flagged"] else ""
        return f"{s['pairs']} pairs from {s['rankings']} rankings{flagged} → {s['path']}"
    if name == "train_rm":
        from rlhfkit.eval.metrics import proportion_text

        acc = (s.get("heldout") or {}).get("accuracy", s.get("accuracy"))
        n = (s.get("pairs") or {}).get("heldout") if isinstance(s.get("pairs"), dict) else None
        if not isinstance(acc, float):
            return str(s)
        # the count and interval: "100%" from 2 held-out pairs must not read like a result
        shown = proportion_text(acc, n, "held-out pairs") if isinstance(n, int) else f"{acc:.1%}"
        return f"held-out accuracy {shown}{_gold_and_left(s)} → {s.get('path', 'reward_model/')}"
    if name == "ppo":
        gold = f", gold {s['gold_first']:+.2f} → {s['gold_last']:+.2f}" if "gold_first" in s else ""
        return f"{s['iterations']} iterations ({s['stop_reason']}); score {s['score_first']:+.2f} → {s['score_last']:+.2f}{gold}"
    if name == "dpo":
        return (f"{s['steps']} steps on {s['pairs']} pairs; loss {s['loss_first']:.3f} → {s['loss_last']:.3f}, "
                f"last epoch's pair accuracy {s['accuracy_last_epoch']:.0%}, margin {s['margin_last_epoch']:+.3f}")
    if name == "eval":
        ref, pol = s["models"]["reference"], s["models"]["policy"]
        parts = [f"reward {ref['reward_model']['value']:+.2f} → {pol['reward_model']['value']:+.2f}"]
        if "gold" in pol:
            parts.append(f"gold {ref['gold']['value']:.2f} → {pol['gold']['value']:.2f}")
        parts.append(f"toxicity {ref['toxicity']['value']:.3f} → {pol['toxicity']['value']:.3f}")
        parts.append(f"KL {s['kl']['value']:.2f}")
        return ", ".join(parts) + (f"; report → {s['report']}" if "report" in s else "")
    return ""


def _gold_and_left(s: dict) -> str:
    gold = s.get("gold_accuracy")
    extra = f", gold scorer {gold:.1%} on the same pairs" if isinstance(gold, float) else ""
    if s.get("skipped_rows"):
        extra += f"; {s['skipped_rows']} bad rows of {s['pairs_spec']} left out (listed in eval.json)"
    return extra


def seed_from(source: Path, target: Path, configs: dict[str, Any], upto: str) -> list[str]:
    """Copy the finished stages up to ``upto`` from ``source`` when their configs match ours.

    `rlhfkit demo --no-kl` starts from the KL run's completions, rankings and reward model, so the
    two runs differ in the KL penalty only (and the second takes minutes less)."""
    import shutil

    copied = []
    outputs = {"generate": ["completions.jsonl"], "label": ["feedback.db"], "pairs": ["pairs.jsonl", "feedback_report.json"],
               "train_rm": ["reward_model"]}
    for name in STAGES[: STAGES.index(upto) + 1]:
        marker = _marker(source, name)
        if not (marker.exists() and marker.read_text().strip() == config_hash(configs[name])):
            break
        for rel in outputs[name]:
            src, dst = source / rel, target / rel
            if src.is_dir():
                shutil.copytree(src, dst, dirs_exist_ok=True)
            elif src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        _marker(target, name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(marker, _marker(target, name))
        copied.append(name)
    return copied
