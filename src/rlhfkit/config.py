"""One dataclass per stage. Each field is documented once; that text is also the CLI's ``--help``.

A config is built from the dataclass defaults, then a YAML file (``--config``), then command-line
options. Every run writes what it resolved into ``RUN_DIR/config.yaml`` under the stage's name.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit.data.errors import RlhfkitError


def opt(default: Any, help: str) -> Any:
    """A config field with its one documentation string."""
    return field(default=default, metadata={"help": help})


@dataclass
class GenerateConfig:
    """Sample K completions per prompt with the policy."""

    run_dir: str = opt("runs/demo", "Run directory: completions.jsonl and config.yaml go here.")
    model: str = opt("smollm2", "Policy: a local folder, a hub id, or 'smollm2' (SmolLM2-135M-Instruct from PyPI).")
    prompts: str = opt("default", "Prompts JSONL ({id, prompt, split}) or 'default' (the prompts shipped with rlhfkit).")
    split: str = opt("train", "Which prompts to complete: train, eval or all.")
    num_prompts: int = opt(0, "Use only the first N prompts of the split (0 = all).")
    k: int = opt(4, "Completions sampled per prompt.")
    max_new_tokens: int = opt(48, "Most tokens generated per completion.")
    temperature: float = opt(0.7, "Sampling temperature (0 = greedy); PPO samples at the same temperature.")
    system_prompt: str = opt("", "System turn of the chat template ('' = the model's default); use the same in ppo and eval.")
    top_p: float = opt(1.0, "Nucleus sampling: keep the smallest token set with this much probability.")
    batch_size: int = opt(16, "Completions generated together (rows of one batch share the KV cache step).")
    seed: int = opt(0, "Random seed: the same seed gives the same completions.")
    device: str = opt("auto", "cpu, cuda, or auto (cuda when available).")
    force: bool = opt(False, "Overwrite a finished completions.jsonl.")

    def validate(self) -> None:
        _check(self.split in ("train", "eval", "all"), "split", f"must be train, eval or all, got {self.split!r}")
        _check(self.k >= 1, "k", "must be ≥ 1")
        _check(self.max_new_tokens >= 1, "max_new_tokens", "must be ≥ 1")
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        _check(self.temperature >= 0, "temperature", "must be ≥ 0")
        _check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _check(self.num_prompts >= 0, "num_prompts", "must be ≥ 0")


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise RlhfkitError(f"config field '{name}' {message}")


def _coerce(value: Any, kind: Any, name: str, where: str) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise RlhfkitError(f"{where}: field '{name}' must be {kind.__name__}, got {value!r}")


def field_types(cls: type) -> dict[str, Any]:
    """Field name → its Python type (int, float, str, bool)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def load_config(cls: type, path: str | Path | None = None, overrides: dict | None = None, *, section: str | None = None):
    """Defaults ← YAML file (its ``section`` mapping if it has one) ← overrides; validated."""
    import yaml

    types = field_types(cls)
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise RlhfkitError(f"{path}: config file does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise RlhfkitError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise RlhfkitError(f"{path}: a config file must be a mapping of field: value")
        if section and isinstance(data.get(section), dict):
            data = {**{k: v for k, v in data.items() if k in types and not isinstance(v, dict)}, **data[section]}
        elif section:
            data = {k: v for k, v in data.items() if not isinstance(v, dict)}
        for key, value in data.items():
            if key not in types:
                raise RlhfkitError(f"{path}: unknown field '{key}' for {section or cls.__name__}")
            values[key] = _coerce(value, types[key], key, str(path))
    for key, value in (overrides or {}).items():
        if key not in types:
            raise RlhfkitError(f"unknown option '{key}' for {section or cls.__name__}")
        values[key] = _coerce(value, types[key], key, "command line")
    cfg = cls(**values)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def save_resolved(run_dir: str | Path, section: str, cfg: Any) -> Path:
    """Merge ``cfg`` into ``RUN_DIR/config.yaml`` under ``section`` (atomic write)."""
    import yaml

    from rlhfkit.data.io import atomic_write_text

    path = Path(run_dir) / "config.yaml"
    data = yaml.safe_load(path.read_text()) if path.exists() else {}
    data = data if isinstance(data, dict) else {}
    data[section] = dataclasses.asdict(cfg)
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path


@dataclass
class PPOConfig:
    """PPO with a KL penalty against the frozen reference, on a LoRA policy."""

    run_dir: str = opt("runs/demo", "Run directory: reads reward_model/, writes policy/ and logs/.")
    model: str = opt("smollm2", "Initial policy (and reference): local folder, hub id, or 'smollm2'.")
    reward_model: str = opt("", "Reward model folder ('' = RUN_DIR/reward_model; 'gold' = the gold scorer itself).")
    prompts: str = opt("default", "Prompts JSONL or 'default'; the train split is used for rollouts.")
    iterations: int = opt(12, "Stop after this many PPO iterations (rollout + update).")
    target_reward: float = opt(float("inf"), "Stop once objective/score (mean normalised reward) reaches this.")
    kl_budget: float = opt(25.0, "Stop when objective/kl (nats per completion) exceeds this (0 = no budget).")
    batch_size: int = opt(16, "Rollouts (prompt + completion) per iteration.")
    minibatch_size: int = opt(8, "Rollouts per gradient step in the update phase.")
    ppo_epochs: int = opt(4, "Passes over each iteration's rollouts.")
    max_new_tokens: int = opt(40, "Most tokens per completion.")
    temperature: float = opt(0.7, "Sampling temperature, also used when recomputing log-probs.")
    system_prompt: str = opt("", "System turn of the chat template ('' = the model's default), as in generate.")
    lr: float = opt(2e-4, "Adam learning rate (LoRA adapters and value head).")
    lora_r: int = opt(16, "LoRA rank; 0 = full fine-tuning with a separate frozen reference copy.")
    lora_alpha: int = opt(32, "LoRA scaling numerator (scale = alpha / r).")
    lora_layers: int = opt(8, "Adapt only the top N transformer blocks (0 = all): backward stops below them.")
    kl_coef: float = opt(0.05, "β: weight of the per-token KL penalty (0 = no penalty: watch reward hacking).")
    adaptive_kl: bool = opt(False, "Adapt β towards kl_target (Ziegler et al. 2019).")
    kl_target: float = opt(6.0, "Target KL (nats per completion) for the adaptive controller.")
    kl_horizon: float = opt(10000.0, "Horizon (in rollouts) of the adaptive KL controller.")
    gamma: float = opt(1.0, "Discount over response tokens.")
    lam: float = opt(0.95, "GAE λ.")
    clip_eps: float = opt(0.2, "Trust region: the probability ratio is clipped to 1 ± clip_eps.")
    vf_clip: float = opt(0.2, "Value predictions are clipped to old value ± vf_clip.")
    vf_coef: float = opt(0.1, "c1: weight of the value loss.")
    ent_coef: float = opt(0.0, "c2: weight of the entropy bonus (encourages exploration).")
    max_grad_norm: float = opt(1.0, "Gradient clipping norm.")
    penalize_missing_eos: bool = opt(True, "Give completions that never end a fixed score instead of theirs.")
    missing_eos_penalty: float = opt(-1.0, "The fixed score of a completion that hit max_new_tokens.")
    ratio_alarm: float = opt(10.0, "Stop when the mean max probability ratio of an iteration exceeds this.")
    gold: bool = opt(True, "Also log gold/score (the independent gold scorer) each iteration.")
    save_every: int = opt(4, "Checkpoint every N iterations (and at the end).")
    sample_every: int = opt(4, "Print a table of sample completions every N iterations (0 = never).")
    seed: int = opt(0, "Random seed.")
    device: str = opt("auto", "cpu, cuda, or auto.")
    resume: bool = opt(False, "Continue from RUN_DIR/policy's checkpoint.")
    force: bool = opt(False, "Start over even if RUN_DIR/policy exists.")

    def validate(self) -> None:
        _check(self.iterations >= 1, "iterations", "must be ≥ 1")
        _check(self.batch_size >= 2, "batch_size", "must be ≥ 2 (advantages are whitened over the batch)")
        _check(1 <= self.minibatch_size <= self.batch_size, "minibatch_size", "must be in 1..batch_size")
        _check(self.temperature > 0, "temperature", "must be > 0 (PPO needs a sampling distribution)")
        _check(self.kl_coef >= 0, "kl_coef", "must be ≥ 0")
        _check(self.lora_r >= 0, "lora_r", "must be ≥ 0")
        _check(not (self.resume and self.force), "resume", "and force exclude each other")


@dataclass
class LabelConfig:
    """Turn completions into ranking tasks and have simulated labelers rank them."""

    run_dir: str = opt("runs/demo", "Run directory: reads completions.jsonl, writes feedback.db.")
    store: str = opt("", "Feedback store: '' = RUN_DIR/feedback.db (SQLite), or a sqlite:/// or postgresql:// URL.")
    simulate: int = opt(6, "Number of simulated labelers (0 = only import tasks, for people in the web app).")
    careless: int = opt(1, "How many of the simulated labelers are careless (near-random).")
    noise: float = opt(0.35, "σ of a careful simulated labeler's noise, in gold-score units (0.35 gives ~72% agreement).")
    position_bias: float = opt(0.1, "Bonus a simulated labeler gives the completion shown first.")
    overlap: int = opt(3, "How many different labelers rank each task.")
    criterion: str = opt("helpful, honest and harmless (see the guideline)", "The alignment criterion shown with each task.")
    seed: int = opt(0, "Random seed (labelers, display orders).")

    def validate(self) -> None:
        _check(self.simulate >= 0, "simulate", "must be ≥ 0")
        _check(0 <= self.careless <= self.simulate, "careless", "must be in 0..simulate")
        _check(self.overlap >= 1, "overlap", "must be ≥ 1")
        _check(not self.simulate or self.overlap <= self.simulate, "overlap", "cannot exceed the number of labelers")
        _check(self.noise >= 0, "noise", "must be ≥ 0")


@dataclass
class PairsConfig:
    """Export every pair of every current ranking as preference pairs."""

    run_dir: str = opt("runs/demo", "Run directory: reads feedback.db, writes pairs.jsonl.")
    store: str = opt("", "Feedback store ('' = RUN_DIR/feedback.db).")
    drop_flagged: bool = opt(True, "Leave out the rankings of labelers flagged as poor by `label report`.")
    weight: str = opt("none", "Per-pair weight: none (1.0), quality (the labeler's quality score).")
    trl: str = opt("", "Also write the pairs in TRL's format (prompt/chosen/rejected) to this file.")

    def validate(self) -> None:
        _check(self.weight in ("none", "quality"), "weight", f"must be none or quality, got {self.weight!r}")


@dataclass
class EvalConfig:
    """Reference (initial) model against the aligned policy on held-out prompts."""

    run_dir: str = opt("runs/demo", "Run directory: reads policy/ and reward_model/, writes eval/.")
    policy: str = opt("", "Trained policy folder ('' = RUN_DIR/policy); its config names the base model.")
    reward_model: str = opt("", "Reward model folder ('' = RUN_DIR/reward_model).")
    prompts: str = opt("default", "Prompts JSONL or 'default'; the eval split is used.")
    num_prompts: int = opt(0, "Use only the first N eval prompts (0 = all).")
    samples_per_prompt: int = opt(1, "Completions per prompt and model.")
    max_new_tokens: int = opt(0, "Most tokens per completion (0 = as in PPO).")
    temperature: float = opt(0.0, "Sampling temperature (0 = as in PPO).")
    batch_size: int = opt(16, "Prompts generated together.")
    kl_budget: float = opt(0.0, "KL budget the verdict checks against (0 = PPO's kl_budget).")
    gold: bool = opt(True, "Also score with the gold scorer (the independent judge).")
    seed: int = opt(1234, "Random seed: the reference and the policy get the same sampling seeds.")
    device: str = opt("auto", "cpu, cuda, or auto.")
    report: bool = opt(True, "Write eval/report.html after the evaluation.")

    def validate(self) -> None:
        _check(self.samples_per_prompt >= 1, "samples_per_prompt", "must be ≥ 1")
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        _check(self.num_prompts >= 0, "num_prompts", "must be ≥ 0")
