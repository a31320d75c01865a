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


DTYPES = ("auto", "float32", "bfloat16")
"""Weight precisions a stage accepts; auto picks bfloat16 where the hardware runs it natively."""


PROMPTS_HELP = ("Prompts: a JSONL file ({id, prompt, split, …}), 'default' (the shipped chat prompts), 'redteam' (the "
                "shipped red-team requests), or several joined by '+' ('default+redteam').")


def device_opt() -> Any:
    """The ``device`` field every stage that runs a model has (one help text)."""
    return opt("auto", "cpu, cuda, or auto (cuda when available).")


def dtype_opt() -> Any:
    """The ``dtype`` field (one help text; README 'Precision and speed on CPU' says what each stage keeps in float32)."""
    return opt("auto", "Precision: float32, bfloat16, or auto (bfloat16 where the CPU or GPU runs it natively). "
                       "LoRA adapters, value head, losses and reward-model weights stay float32.")


STRATEGIES = ("ddp", "fsdp")
"""How trainers split work under torchrun (train/dist.py); one process ignores it."""


def strategy_opt() -> Any:
    """The ``strategy`` field of the trainers that run under torchrun (one help text)."""
    return opt("ddp", "Under torchrun (N processes): ddp (each rank holds the model; gradients of what trains are "
                      "averaged) or fsdp (FSDP2: each decoder block sharded over the ranks, for models that do not fit "
                      "on one device). Ignored by one process.")


def dist_timeout_opt() -> Any:
    return opt(300.0, "Under torchrun: seconds a rank waits for the others (process-group start and every "
                      "collective) before the run fails instead of hanging.")


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise RlhfkitError(f"config field '{name}' {message}")


def _check_dist(cfg: Any) -> None:
    """The torchrun fields every training stage has (strategy, dist_timeout)."""
    _check(cfg.strategy in STRATEGIES, "strategy", f"must be one of {', '.join(STRATEGIES)}")
    _check(cfg.dist_timeout > 0, "dist_timeout", "must be > 0")


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


def _hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def nested_configs(cls: type) -> dict[str, type]:
    """Fields that are configs themselves (``sampling``) → their dataclass."""
    return {name: kind for name, kind in _hints(cls).items() if dataclasses.is_dataclass(kind)}


def field_types(cls: type) -> dict[str, Any]:
    """Field name → its Python type (int, float, str, bool); a nested config's fields appear flat.

    A nested config's field names never clash with its parent's, so ``--temperature`` on the command
    line and ``temperature:`` in a stage's YAML section both reach ``sampling.temperature``.
    """
    out: dict[str, Any] = {}
    for name, kind in _hints(cls).items():
        out.update(field_types(kind) if dataclasses.is_dataclass(kind) else {name: kind})
    return out


def config_fields(cls: type) -> list[dataclasses.Field]:
    """Every leaf field (nested configs flattened), in declaration order: one CLI option each."""
    out = []
    for f in dataclasses.fields(cls):
        kind = _hints(cls)[f.name]
        out += config_fields(kind) if dataclasses.is_dataclass(kind) else [f]
    return out


def _flatten(cls: type, data: dict, where: str) -> dict[str, Any]:
    """Flat field → value: a nested mapping under a nested config's name (``sampling: {...}``) is opened."""
    nested = nested_configs(cls)
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in nested:
            if not isinstance(value, dict):
                raise RlhfkitError(f"{where}: '{key}' must be a mapping of its fields")
            inner = field_types(nested[key])
            for k in value:
                if k not in inner:
                    raise RlhfkitError(f"{where}: unknown field '{k}' in '{key}'")
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _build(cls: type, values: dict[str, Any]):
    nested = {name: _build(kind, values) for name, kind in nested_configs(cls).items()}
    own = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values and f.name not in nested}
    cfg = cls(**own, **nested)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


KNOWN_SECTIONS: set[str] = {"generate", "label", "pairs", "train_rm", "score", "ppo", "dpo", "eval", "cai_revise",
                              "cai_label", "sft"}
"""Section names a config file may hold (one per stage); ``cli.stage_command`` adds every stage it registers,
so a misspelled section (``generat:``) is refused rather than ignored."""


def read_yaml(path: Path, what: str = "config file") -> Any:
    """A YAML file's data; a syntax error is a one-line RlhfkitError naming the file and line."""
    import yaml

    if not path.exists():
        raise RlhfkitError(f"{path}: {what} does not exist")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RlhfkitError(f"{path}{line}: not valid YAML ({problem})") from None


def _check_sections(data: dict, nested: dict, where: str) -> None:
    """A mapping under a key that is neither a nested config nor a known stage is a misspelling."""
    for key, value in data.items():
        # 'sampling:' at the top of a pipeline YAML is shared: a stage that does not sample (label) ignores it
        if isinstance(value, dict) and key not in nested and key not in KNOWN_SECTIONS and key != "sampling":
            raise RlhfkitError(f"{where}: unknown section '{key}'{_hint(key, KNOWN_SECTIONS)} "
                               f"(sections: {', '.join(sorted(KNOWN_SECTIONS))})")


def _closest(word: str, choices: typing.Iterable[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, list(choices), n=1)
    return found[0] if found else None


def gather_config(cls: type, path: str | Path | None = None, overrides: dict | None = None, *,
                  section: str | None = None, where: str = "command line") -> dict[str, Any]:
    """The values a YAML file (its ``section`` mapping if it has one) and ``overrides`` give, flat and typed.

    Not validated: ``build_config`` does that once every source is merged. ``where`` names the source
    of ``overrides`` in errors (a pipeline passes its file).
    """
    types = field_types(cls)
    nested = nested_configs(cls)
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = read_yaml(path) or {}
        if not isinstance(data, dict):
            raise RlhfkitError(f"{path}: a config file must be a mapping of field: value")
        _check_sections(data, nested, str(path))
        # a pipeline YAML: the shared top-level fields (and a top-level 'sampling:'), then the stage's section
        if section and isinstance(data.get(section), dict):
            shared = {k: v for k, v in data.items() if (k in types and not isinstance(v, dict)) or k in nested}
            data = {**_flatten(cls, shared, str(path)), **_flatten(cls, data[section], f"{path}: {section}")}
        elif section:  # a file of this stage's fields (other stages' sections, if any, are not ours)
            data = _flatten(cls, {k: v for k, v in data.items() if not isinstance(v, dict) or k in nested}, str(path))
        else:
            data = _flatten(cls, data, str(path))
        for key, value in data.items():
            if key not in types:
                raise RlhfkitError(f"{path}: unknown field '{key}' for {section or cls.__name__}{_hint(key, types)}")
            values[key] = _coerce(value, types[key], key, str(path))
    for key, value in _flatten(cls, overrides or {}, where).items():
        if key not in types:
            what = "option" if where == "command line" else "field"
            raise RlhfkitError(f"{where}: unknown {what} '{key}' for {section or cls.__name__}{_hint(key, types)}")
        values[key] = _coerce(value, types[key], key, where)
    return values


def _hint(key: str, types: dict) -> str:
    near = _closest(key, types)
    return f"; did you mean '{near}'?" if near else ""


def build_config(cls: type, values: dict[str, Any]):
    """The validated config from flat, typed values (missing fields keep their defaults)."""
    return _build(cls, values)


def load_config(cls: type, path: str | Path | None = None, overrides: dict | None = None, *, section: str | None = None,
                where: str = "command line"):
    """Defaults ← YAML file (its ``section`` mapping if it has one) ← overrides; validated."""
    return _build(cls, gather_config(cls, path, overrides, section=section, where=where))


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
class SamplingConfig:
    """How the policy is prompted and sampled: one meaning per setting, the same in every stage that samples.

    The distribution is fully specified here: the model's own ``generation_config`` (a hub model may
    ship top_p, top_k, a repetition penalty…) is never applied, so PPO's log-probs are those of the
    distribution the samples came from.
    """

    system_prompt: str = opt("", "System turn of the chat template ('' = the model's default); keep it the same in "
                                 "generate, ppo and eval.")
    max_new_tokens: int = opt(40, "Most tokens generated per completion.")
    temperature: float = opt(0.7, "Sampling temperature; 0 = greedy (generate and cai only: ppo and eval need a "
                                  "distribution).")
    top_p: float = opt(1.0, "Nucleus sampling: keep the smallest token set with this much probability (1 = off; "
                            "ppo and eval need 1).")
    top_k: int = opt(0, "Keep only the k most likely tokens (0 = off; ppo and eval need 0).")

    def validate(self) -> None:
        _check(self.max_new_tokens >= 1, "max_new_tokens", "must be ≥ 1")
        _check(self.temperature >= 0, "temperature", "must be ≥ 0 (0 = greedy)")
        _check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _check(self.top_k >= 0, "top_k", "must be ≥ 0")

    def require_full_distribution(self, stage: str) -> None:
        """PPO's and eval's log-probs and KL are those of softmax(logits / T): no greedy, no truncation."""
        _check(self.temperature > 0, "temperature", f"must be > 0 in {stage} (it needs a sampling distribution)")
        _check(self.top_p == 1.0, "top_p", f"must be 1 in {stage} (its log-probs and KL are of the untruncated "
                                           "distribution)")
        _check(self.top_k == 0, "top_k", f"must be 0 in {stage} (its log-probs and KL are of the untruncated "
                                         "distribution)")


def sampling_opt(**defaults: Any) -> Any:
    """A stage's ``sampling`` field; ``defaults`` change a default, never a meaning (cai writes longer texts)."""
    return field(default_factory=lambda: SamplingConfig(**defaults), metadata={"help": "How the policy is sampled."})


@dataclass
class GenerateConfig:
    """Sample K completions per prompt with the policy."""

    run_dir: str = opt("runs/demo", "Run directory: completions.jsonl and config.yaml go here.")
    model: str = opt("smollm2", "Policy: a local folder, a hub id, or 'smollm2' (SmolLM2-135M-Instruct from PyPI).")
    prompts: str = opt("default", PROMPTS_HELP)
    split: str = opt("train", "Which prompts to complete: train, eval or all.")
    num_prompts: int = opt(0, "Use only the first N prompts of the split (0 = all).")
    k: int = opt(4, "Completions sampled per prompt.")
    written: bool = opt(False, "Also put the prompt file's written replies up for ranking: one reference reply and, "
                               "where it has them, one harmful reply per prompt (the contrast samples rarely show).")
    sampling: SamplingConfig = sampling_opt()
    batch_size: int = opt(16, "Completions generated together (rows of one batch share the KV cache step).")
    seed: int = opt(0, "Random seed: the same seed gives the same completions.")
    device: str = device_opt()
    dtype: str = dtype_opt()
    force: bool = opt(False, "Overwrite a finished completions.jsonl.")

    def validate(self) -> None:
        _check(self.split in ("train", "eval", "all"), "split", f"must be train, eval or all, got {self.split!r}")
        _check(self.k >= 1, "k", "must be ≥ 1")
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        _check(self.num_prompts >= 0, "num_prompts", "must be ≥ 0")
        _check(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")


@dataclass
class LabelConfig:
    """Turn completions into ranking tasks and have simulated labelers rank them."""

    run_dir: str = opt("runs/demo", "Run directory: reads completions.jsonl, writes feedback.db.")
    store: str = opt("", "Feedback store: '' = RUN_DIR/feedback.db (SQLite), or a sqlite:/// or postgresql:// URL.")
    simulate: int = opt(6, "Number of simulated labelers (0 = only import tasks, for people in the web app).")
    careless: int = opt(1, "How many of the simulated labelers are careless (near-random).")
    noise: float = opt(0.8, "σ of a careful simulated labeler's noise, in gold-score units (0.8 gives ~73% agreement).")
    position_bias: float = opt(0.2, "Bonus a simulated labeler gives the completion shown first, in gold-score units.")
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
    force: bool = opt(False, "Overwrite a finished pairs.jsonl (and the --trl file).")

    def validate(self) -> None:
        _check(self.weight in ("none", "quality"), "weight", f"must be none or quality, got {self.weight!r}")


@dataclass
class RewardConfig:
    """Train a reward model on preference pairs."""

    run_dir: str = opt("runs/demo", "Run directory: reward_model/ (with eval.json) and logs/metrics.csv go here.")
    pairs: str = opt("", "Pairs to train on: a pairs JSONL, 'hh:FILE' (HH-RLHF) or 'trl:FILE' (TRL preference "
                         "JSONL); '' = RUN_DIR/pairs.jsonl.")
    backbone: str = opt("minilm", "Backbone under the scalar head: a local folder, a hub id, or 'minilm' "
                                  "(all-MiniLM-L6-v2 from PyPI). Encoders and causal LMs both work.")
    epochs: int = opt(3, "Passes over the training pairs (early stopping may end sooner).")
    batch_size: int = opt(16, "Pairs per optimizer step (2× this many texts in one forward pass).")
    lr: float = opt(5e-5, "AdamW learning rate (peak, after linear warm-up). LoRA wants ~10× more.")
    max_length: int = opt(256, "Most tokens per (prompt, completion) input; the prompt is cut first.")
    eval_fraction: float = opt(0.2, "Share of the prompts held out (with all their pairs) for evaluation; 0 = none.")
    eval_every: int = opt(0, "Evaluate on the held-out pairs every N steps (0 = at the end of each epoch).")
    patience: int = opt(2, "Stop after this many evaluations without a lower held-out loss (0 = never).")
    lora_r: int = opt(0, "LoRA rank; the backbone stays frozen and only adapters and head train (0 = full fine-tuning).")
    pooling: str = opt("auto", "Encoders: mean (of the last hidden states), cls (the model's own head at [CLS]), or auto "
                               "(mean where the head is one linear layer). Causal LMs read the last token.")
    weight_decay: float = opt(0.0, "AdamW weight decay (not applied to biases and LayerNorm gains).")
    warmup_ratio: float = opt(0.1, "Share of the steps warming the learning rate up linearly; then it decays linearly to 0.")
    seed: int = opt(0, "Random seed: the held-out split, head initialisation and batch order follow it.")
    device: str = device_opt()
    dtype: str = dtype_opt()
    strategy: str = strategy_opt()
    dist_timeout: float = dist_timeout_opt()
    resume: bool = opt(False, "Continue an interrupted run from RUN_DIR/reward_model.ckpt (same pairs and settings).")
    force: bool = opt(False, "Overwrite a finished reward_model/ (and discard an unfinished run's checkpoint).")

    def validate(self) -> None:
        _check(self.epochs >= 1, "epochs", "must be ≥ 1")
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        _check(self.lr > 0, "lr", "must be > 0")
        _check(self.max_length >= 8, "max_length", "must be ≥ 8")
        _check(0 <= self.eval_fraction < 1, "eval_fraction", "must be in [0, 1)")
        _check(self.eval_every >= 0, "eval_every", "must be ≥ 0")
        _check(self.patience >= 0, "patience", "must be ≥ 0")
        _check(self.lora_r >= 0, "lora_r", "must be ≥ 0")
        _check(self.pooling in ("auto", "mean", "cls"), "pooling", f"must be auto, mean or cls, got {self.pooling!r}")
        _check(self.weight_decay >= 0, "weight_decay", "must be ≥ 0")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)")
        _check(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")
        _check(not (self.resume and self.force), "resume", "cannot be combined with force")
        _check_dist(self)


@dataclass
class ScoreConfig:
    """Score (prompt, completion) pairs with a trained reward model."""

    run_dir: str = opt("runs/demo", "Run directory whose reward_model/ scores (unless --model is given).")
    model: str = opt("", "Reward-model folder ('' = RUN_DIR/reward_model).")
    input: str = opt("-", "JSONL with 'completion' (or 'text') and optional 'prompt' per line, or plain text "
                          "lines (each a completion without prompt); '-' = stdin.")
    output: str = opt("-", "Where the JSONL with a 'reward' field goes; '-' = stdout.")
    batch_size: int = opt(64, "Texts scored together (sorted by length, so batches waste little padding).")
    normalize: bool = opt(True, "Normalise with the stored mean/std of the training completions (off = raw logit).")
    device: str = device_opt()
    dtype: str = dtype_opt()

    def validate(self) -> None:
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        _check(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")


ALGORITHMS = ("ppo", "rloo", "grpo")
"""Online RL algorithms of the ``ppo`` stage (train/ppo.py, train/critic_free.py)."""


MISSING_EOS_MODES = ("replace", "subtract")
"""ppo's missing_eos_mode values: losses.MISSING_EOS_MODES (config stays torch-free, so it cannot import it;
tests/test_losses.py holds the two equal)."""

GRPO_SCALES = ("group", "batch", "none")
"""grpo's scale_rewards values: losses.GRPO_SCALES (held equal the same way)."""

LOSS_TYPES = ("dapo", "grpo", "dr_grpo")
"""rloo's and grpo's loss_type values: losses.LOSS_TYPES (held equal the same way)."""

RATIO_LEVELS = ("token", "sequence")
"""rloo's and grpo's importance_sampling_level values: losses.RATIO_LEVELS (held equal the same way)."""


@dataclass
class PPOConfig:
    """PPO (or the critic-free RLOO and GRPO) with a KL penalty against the frozen reference, on a LoRA policy."""

    run_dir: str = opt("runs/demo", "Run directory: reads reward_model/, writes policy/ and logs/.")
    algorithm: str = opt("ppo", "ppo (value head, GAE); rloo (leave-one-out baseline over group_size samples per "
                                "prompt, KL in the reward); grpo (group-normalised advantages, KL in the loss).")
    group_size: int = opt(4, "rloo and grpo: completions sampled per prompt (K ≥ 2; batch_size must be a multiple); "
                             "ppo ignores it.")
    scale_rewards: str = opt("group", "grpo: what a completion's centred score is divided by: group (its group's std, "
                                      "GRPO), batch (the std over the iteration's whole batch) or none (Dr. GRPO: no "
                                      "division, so prompts the policy already answers evenly are not up-weighted).")
    loss_type: str = opt("dapo", "rloo and grpo: how the update averages its tokens' losses: dapo (every token the "
                                 "same: DAPO, TRL's default), grpo (each completion's mean, then their mean: the GRPO "
                                 "paper, a short completion's tokens weigh more) or dr_grpo (the sum over completions × "
                                 "max_new_tokens: Dr. GRPO). ppo ignores it.")
    importance_sampling_level: str = opt("token", "rloo and grpo: the probability ratio per token (PPO's) or per "
                                                  "sequence — the mean of a completion's token log-ratios, clipped "
                                                  "once for the whole completion (GSPO, Zheng et al. 2025, which "
                                                  "clips far tighter: clip_eps 3e-4, clip_eps_high 4e-4; TRL's name). "
                                                  "ppo ignores it.")
    model: str = opt("smollm2", "Initial policy (and reference): local folder, hub id, or 'smollm2'.")
    reward_model: str = opt("", "Reward model folder ('' = RUN_DIR/reward_model; 'gold' = the gold scorer itself).")
    prompts: str = opt("default", PROMPTS_HELP + " The train split is used for rollouts.")
    iterations: int = opt(12, "Stop after this many PPO iterations (rollout + update).")
    target_reward: float = opt(float("inf"), "Stop once objective/score (mean normalised reward) reaches this.")
    kl_budget: float = opt(25.0, "Stop when objective/kl (nats per completion) exceeds this (0 = no budget).")
    batch_size: int = opt(16, "Rollouts (prompt + completion) per iteration.")
    minibatch_size: int = opt(8, "Rollouts per gradient step in the update phase.")
    ppo_epochs: int = opt(4, "Passes over each iteration's rollouts.")
    sampling: SamplingConfig = sampling_opt()
    lr: float = opt(2e-4, "Adam learning rate (LoRA adapters and value head).")
    lora_r: int = opt(16, "LoRA rank; 0 = full fine-tuning with a separate frozen reference copy.")
    lora_alpha: int = opt(32, "LoRA scaling numerator (scale = alpha / r).")
    lora_layers: int = opt(8, "Adapt only the top N transformer blocks (0 = all): backward stops below them.")
    kl_coef: float = opt(0.05, "β: weight of the per-token KL penalty (0 = no penalty: watch reward hacking).")
    kl_bias_correction: bool = opt(False, "grpo: weight each token's KL term by the ratio π/π_old, which makes its "
                                          "gradient the reverse KL's (DeepSeek-V3.2; TRL's use_bias_correction_kl, "
                                          "on by default there); off, k3's own gradient, the forward KL's (the GRPO "
                                          "paper). ppo and rloo ignore it.")
    adaptive_kl: bool = opt(False, "Adapt β towards kl_target (Ziegler et al. 2019).")
    kl_target: float = opt(6.0, "Target KL (nats per completion) for the adaptive controller.")
    kl_horizon: float = opt(10000.0, "Horizon (in rollouts) of the adaptive KL controller.")
    gamma: float = opt(1.0, "Discount over response tokens.")
    lam: float = opt(0.95, "GAE λ.")
    clip_eps: float = opt(0.2, "Trust region: the probability ratio is clipped to 1 ± clip_eps.")
    clip_eps_high: float = opt(0.0, "The ratio's upper clip, 1 + clip_eps_high, when > 0 (DAPO's clip-higher, Yu et "
                                    "al. 2025: e.g. 0.28 beside clip_eps 0.2); 0 = clip_eps, PPO's symmetric clip.")
    vf_clip: float = opt(0.2, "Value predictions are clipped to old value ± vf_clip.")
    vf_coef: float = opt(0.1, "c1: weight of the value loss.")
    ent_coef: float = opt(0.0, "c2: weight of the entropy bonus (encourages exploration).")
    max_grad_norm: float = opt(1.0, "Gradient clipping norm.")
    penalize_missing_eos: bool = opt(True, "Penalise completions that never end (hit max_new_tokens).")
    missing_eos_penalty: float = opt(-1.0, "The penalty, in normalised score units (see missing_eos_mode).")
    missing_eos_mode: str = opt("replace", "replace: a completion that never ends scores missing_eos_penalty "
                                           "instead of its score (Stiennon et al. 2020); subtract: the penalty is "
                                           "added to its score (TRL's missing_eos_penalty), keeping the reward "
                                           "model's ranking of cut-off replies.")
    ratio_alarm: float = opt(10.0, "Stop when the mean max probability ratio of an iteration exceeds this.")
    length_alarm: float = opt(0.9, "Stop when this share of the last 3 iterations' completions hit max_new_tokens, "
                                   "having started below it (lengths drifting to the limit; 0 = off).")
    gold: bool = opt(True, "Also log gold/score (the independent gold scorer) each iteration.")
    save_every: int = opt(4, "Checkpoint every N iterations (and at the end).")
    sample_every: int = opt(4, "Print a table of sample completions every N iterations (0 = never).")
    seed: int = opt(0, "Random seed.")
    device: str = device_opt()
    dtype: str = dtype_opt()
    strategy: str = strategy_opt()
    dist_timeout: float = dist_timeout_opt()
    resume: bool = opt(False, "Continue from RUN_DIR/policy's checkpoint.")
    force: bool = opt(False, "Start over even if RUN_DIR/policy exists.")

    def validate(self) -> None:
        _check(self.iterations >= 1, "iterations", "must be ≥ 1")
        _check(self.algorithm in ALGORITHMS, "algorithm", f"must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        _check(self.batch_size >= 2, "batch_size", "must be ≥ 2 (advantages are whitened over the batch)")
        if self.algorithm != "ppo":
            _check(self.group_size >= 2, "group_size", f"must be ≥ 2 for {self.algorithm}: a completion's advantage "
                                                       "compares it with the other samples of its prompt")
            _check(self.batch_size % self.group_size == 0, "batch_size",
                   f"must be a multiple of group_size ({self.group_size}) for {self.algorithm}")
        _check(self.scale_rewards in GRPO_SCALES, "scale_rewards",
               f"must be one of {', '.join(GRPO_SCALES)}, got {self.scale_rewards!r}")
        _check(self.loss_type in LOSS_TYPES, "loss_type", f"must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")
        _check(self.importance_sampling_level in RATIO_LEVELS, "importance_sampling_level",
               f"must be one of {', '.join(RATIO_LEVELS)}, got {self.importance_sampling_level!r}")
        _check(1 <= self.minibatch_size <= self.batch_size, "minibatch_size", "must be in 1..batch_size")
        _check(self.ppo_epochs >= 1, "ppo_epochs", "must be ≥ 1")
        self.sampling.require_full_distribution("ppo")
        _check(self.lr > 0, "lr", "must be > 0")
        _check(self.kl_coef >= 0, "kl_coef", "must be ≥ 0")
        _check(self.kl_budget >= 0, "kl_budget", "must be ≥ 0 (0 = no budget)")
        _check(self.kl_target > 0, "kl_target", "must be > 0")
        _check(self.kl_horizon > 0, "kl_horizon", "must be > 0")
        _check(0 <= self.gamma <= 1, "gamma", "must be in [0, 1]")
        _check(0 <= self.lam <= 1, "lam", "must be in [0, 1]")
        _check(self.clip_eps > 0, "clip_eps", "must be > 0")
        _check(self.clip_eps_high >= 0, "clip_eps_high", "must be ≥ 0 (0 = clip_eps)")
        _check(self.vf_clip > 0, "vf_clip", "must be > 0")
        _check(self.vf_coef >= 0, "vf_coef", "must be ≥ 0")
        _check(self.ent_coef >= 0, "ent_coef", "must be ≥ 0")
        _check(self.max_grad_norm > 0, "max_grad_norm", "must be > 0")
        _check(self.ratio_alarm > 1, "ratio_alarm", "must be > 1")
        _check(self.save_every >= 0, "save_every", "must be ≥ 0")
        _check(self.sample_every >= 0, "sample_every", "must be ≥ 0")
        _check(self.lora_alpha > 0, "lora_alpha", "must be > 0")
        _check(self.lora_layers >= 0, "lora_layers", "must be ≥ 0")
        _check(0 <= self.length_alarm <= 1, "length_alarm", "must be in [0, 1]")
        _check(self.missing_eos_mode in MISSING_EOS_MODES, "missing_eos_mode",
               f"must be replace or subtract, got {self.missing_eos_mode!r}")
        _check(self.lora_r >= 0, "lora_r", "must be ≥ 0")
        _check(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")
        _check(self.lora_r > 0 or self.dtype != "bfloat16", "dtype", "bfloat16 needs LoRA (full fine-tuning trains float32 weights)")
        _check(not (self.resume and self.force), "resume", "and force exclude each other")
        _check_dist(self)

    @property
    def prompts_per_iteration(self) -> int:
        """Distinct prompts an iteration samples: batch_size, or batch_size / group_size for rloo and grpo."""
        return self.batch_size if self.algorithm == "ppo" else self.batch_size // self.group_size


DPO_LOSSES = ("sigmoid", "ipo")
"""DPO loss variants (train/losses.py dpo_loss); conservative DPO is sigmoid with label_smoothing > 0."""


@dataclass
class DpoConfig:
    """Direct preference optimisation on pairs, LoRA policy, reference = the base with adapters off.

    The policy is prompted through the chat template with ``system_prompt``, as ppo and eval do; the other
    sampling fields only matter to the stages that sample.
    """

    run_dir: str = opt("runs/demo", "Run directory: writes policy/ (as ppo does, so eval reads it) and logs/.")
    model: str = opt("smollm2", "Initial policy (and reference): local folder, hub id, or 'smollm2'.")
    pairs: str = opt("", "Pairs to train on: a pairs JSONL, 'hh:FILE' (HH-RLHF) or 'trl:FILE' (TRL preference "
                         "JSONL); '' = RUN_DIR/pairs.jsonl. A pair's 'weight' (labeler quality) weights its loss.")
    beta: float = opt(0.1, "β: strength of the implicit KL to the reference (higher stays closer).")
    loss_type: str = opt("sigmoid", "sigmoid (DPO) or ipo (IPO, on length-averaged log-probs).")
    label_smoothing: float = opt(0.0, "sigmoid only: assumed share of flipped labels (conservative DPO), in [0, 0.5).")
    epochs: int = opt(1, "Passes over the pairs.")
    max_pairs: int = opt(0, "Train on at most this many pairs, a random subset drawn with the seed (0 = all): each "
                           "pair costs a reference pass and a forward and backward of both replies, so on a CPU "
                           "thousands of pairs take an hour.")
    batch_size: int = opt(8, "Pairs per optimizer step (2× this many sequences in one forward pass).")
    lr: float = opt(1e-4, "Adam learning rate of the LoRA adapters (constant).")
    max_length: int = opt(256, "Most tokens per prompt + reply; a long prompt keeps its last half, the reply is cut.")
    sampling: SamplingConfig = sampling_opt()
    lora_r: int = opt(16, "LoRA rank (DPO here always trains adapters: the reference is the base with them off).")
    lora_alpha: int = opt(32, "LoRA scaling numerator (scale = alpha / r).")
    lora_layers: int = opt(8, "Adapt only the top N transformer blocks (0 = all).")
    max_grad_norm: float = opt(1.0, "Gradient clipping norm.")
    save_every: int = opt(50, "Checkpoint every N steps (and at the end).")
    seed: int = opt(0, "Random seed: the pair order of each epoch follows it.")
    device: str = device_opt()
    dtype: str = dtype_opt()
    strategy: str = strategy_opt()
    dist_timeout: float = dist_timeout_opt()
    resume: bool = opt(False, "Continue from RUN_DIR/policy's checkpoint (same pairs and settings).")
    force: bool = opt(False, "Start over even if RUN_DIR/policy exists.")

    def validate(self) -> None:
        _check(self.beta > 0, "beta", "must be > 0")
        _check(self.loss_type in DPO_LOSSES, "loss_type", f"must be one of {', '.join(DPO_LOSSES)}, got {self.loss_type!r}")
        _check(0 <= self.label_smoothing < 0.5, "label_smoothing", "must be in [0, 0.5)")
        _check(self.loss_type == "sigmoid" or self.label_smoothing == 0, "label_smoothing", "applies to loss_type sigmoid only")
        _check(self.max_pairs >= 0, "max_pairs", "must be ≥ 0 (0 = all)")
        _check(self.epochs >= 1, "epochs", "must be ≥ 1")
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        _check(self.lr > 0, "lr", "must be > 0")
        _check(self.max_length >= 8, "max_length", "must be ≥ 8")
        _check(self.lora_r >= 1, "lora_r", "must be ≥ 1 (the reference is the base with the adapters off)")
        _check(self.lora_layers >= 0, "lora_layers", "must be ≥ 0")
        _check(self.save_every >= 1, "save_every", "must be ≥ 1")
        _check(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")
        _check(not (self.resume and self.force), "resume", "and force exclude each other")
        _check_dist(self)


@dataclass
class DoctorConfig:
    """Memory per rank of a training run, estimated from the model's config.json before anything loads."""

    stage: str = opt("ppo", "The run to check: ppo (also rloo / grpo), dpo, sft or train-rm.")
    model: str = opt("smollm2", "The policy (train-rm: the reward backbone): a folder, a hub id, or an alias.")
    reward_model: str = opt("minilm", "ppo: the reward model's folder or backbone ('gold' or '' = none on the device).")
    lora_r: int = opt(16, "LoRA rank; 0 = full fine-tuning.")
    lora_layers: int = opt(0, "LoRA on the top N blocks only (0 = all).")
    dtype: str = opt("float32", "The frozen weights' dtype: float32 or bfloat16 (full fine-tuning trains float32).")
    batch_size: int = opt(64, "Global batch: prompts per ppo iteration, pairs per dpo / train-rm step, examples per sft step.")
    minibatch_size: int = opt(16, "ppo: rollouts per gradient step (global).")
    prompt_tokens: int = opt(128, "Tokens per prompt (left-padded: the batch's longest).")
    max_new_tokens: int = opt(128, "Tokens sampled per completion (dpo / sft: reply tokens).")
    strategy: str = strategy_opt()
    world_size: int = opt(1, "Processes (devices) the run uses under torchrun.")
    device_memory_gib: float = opt(0.0, "Memory of one device in GiB (0 = this machine's: the GPU's with CUDA, else RAM).")

    def validate(self) -> None:
        _check(self.stage in ("ppo", "rloo", "grpo", "dpo", "sft", "train-rm"), "stage",
               f"must be ppo, rloo, grpo, dpo, sft or train-rm, got {self.stage!r}")
        _check(self.lora_r >= 0, "lora_r", "must be ≥ 0")
        _check(self.lora_layers >= 0, "lora_layers", "must be ≥ 0")
        _check(self.dtype in ("float32", "bfloat16"), "dtype", "must be float32 or bfloat16")
        _check(self.world_size >= 1, "world_size", "must be ≥ 1")
        _check(self.batch_size >= 1 and self.batch_size % self.world_size == 0, "batch_size",
               f"must be a positive multiple of world_size ({self.world_size})")
        _check(self.minibatch_size >= 1 and self.minibatch_size % self.world_size == 0, "minibatch_size",
               f"must be a positive multiple of world_size ({self.world_size})")
        _check(self.prompt_tokens >= 1 and self.max_new_tokens >= 1, "max_new_tokens", "and prompt_tokens must be ≥ 1")
        _check(self.strategy in STRATEGIES, "strategy", f"must be one of {', '.join(STRATEGIES)}")
        _check(self.device_memory_gib >= 0, "device_memory_gib", "must be ≥ 0")


DEPLOY_VARIANTS = ("fp32", "bf16", "int8", "int8_dynamic", "gguf_q8_0", "prune50", "prune50_lora", "mlp50")
"""Deployment variants eval compares with the aligned policy (eval/variants.py builds and describes each)."""


@dataclass
class EvalConfig:
    """Reference (initial) model against the aligned policy on held-out prompts."""

    run_dir: str = opt("runs/demo", "Run directory: reads policy/ and reward_model/, writes eval/.")
    policy: str = opt("", "Trained policy folder ('' = RUN_DIR/policy); its config names the base model.")
    reward_model: str = opt("", "Reward model folder ('' = RUN_DIR/reward_model).")
    prompts: str = opt("default", PROMPTS_HELP + " The eval split is used.")
    num_prompts: int = opt(0, "Use only the first N eval prompts (0 = all).")
    samples_per_prompt: int = opt(1, "Completions per prompt and model (the same seeds for both models).")
    toxic_samples_per_prompt: int = opt(0, "Completions per provocative or red-team prompt, where toxicity lives "
                                           "(0 = samples_per_prompt).")
    sampling: SamplingConfig = sampling_opt()
    batch_size: int = opt(16, "Most completions sampled together (the rows are split into equal batches of at most this).")
    kl_budget: float = opt(0.0, "KL budget the verdict checks against (0 = PPO's kl_budget).")
    gold: bool = opt(True, "Also score with the gold scorer (the independent judge).")
    seed: int = opt(1234, "Random seed: the reference and the policy get the same sampling seeds.")
    device: str = device_opt()
    dtype: str = dtype_opt()
    report: bool = opt(True, "Write eval/report.html after the evaluation.")
    force: bool = opt(False, "Overwrite a finished eval/eval.json.")
    variants: str = opt("", "Deployment variants to compare with the aligned policy, comma-separated from "
                            f"{', '.join(DEPLOY_VARIANTS)} ('' = none): size, CPU speed at batch 1 and 16, peak "
                            "memory, gold, toxicity, KL to the policy and win rate against it, as eval.json's "
                            "'variants' table and a report section ('what the alignment survives').")
    variant_folder: str = opt("", "Also compare exported transformers folders (rlhfkit export/distil output): "
                                  "NAME=DIR, several joined by ','.")
    variants_only: bool = opt(False, "Only add the variants table to the finished eval/eval.json (the before/after "
                                     "evaluation is not redone; --force replaces an existing table).")
    variant_prompts: int = opt(16, "Held-out prompts the variants answer (the first N of the eval split).")
    variant_samples: int = opt(2, "Completions per prompt and variant (the aligned policy's own sampling settings "
                                  "and seeds).")
    variant_batch1_prompts: int = opt(2, "Prompts sampled one at a time for the batch-1 speed.")
    variant_recover_steps: int = opt(30, "LoRA recovery steps of prune50_lora.")

    def validate(self) -> None:
        unknown = [v.strip() for v in self.variants.split(",") if v.strip() and v.strip() not in DEPLOY_VARIANTS]
        _check(not unknown, "variants", f"unknown {', '.join(unknown)}; choose from {', '.join(DEPLOY_VARIANTS)}")
        _check(not self.variants_only or bool(self.variants.strip() or self.variant_folder.strip()), "variants_only",
               "needs --variants or --variant-folder")
        for name in ("variant_prompts", "variant_samples", "variant_batch1_prompts", "variant_recover_steps"):
            _check(getattr(self, name) >= 1, name, "must be ≥ 1")
        _check(self.samples_per_prompt >= 1, "samples_per_prompt", "must be ≥ 1")
        _check(self.toxic_samples_per_prompt >= 0, "toxic_samples_per_prompt", "must be ≥ 0")
        self.sampling.require_full_distribution("eval")
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        _check(self.kl_budget >= 0, "kl_budget", "must be ≥ 0")
        _check(self.num_prompts >= 0, "num_prompts", "must be ≥ 0")
        _check(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")


@dataclass
class CaiReviseConfig:
    """Constitutional AI, supervised stage: response → critique → revision, for red-team prompts."""

    run_dir: str = opt("runs/demo", "Run directory: cai/revisions.jsonl and config.yaml go here.")
    model: str = opt("smollm2", "The model that answers, critiques and revises: a local folder, a hub id, or 'smollm2'.")
    prompts: str = opt("redteam", PROMPTS_HELP)
    split: str = opt("train", "Which prompts to use: train, eval or all.")
    num_prompts: int = opt(0, "Use only the first N prompts of the split (0 = all).")
    constitution: str = opt("default", "Constitution YAML (principles with critique/revision requests) or 'default'.")
    rounds: int = opt(1, "Critique → revision rounds per prompt; each round draws a principle at random.")
    # 64 tokens: a critique and a revision need more room than a chat reply; small models loop when greedy
    sampling: SamplingConfig = sampling_opt(max_new_tokens=64)
    batch_size: int = opt(16, "Sequences generated together.")
    seed: int = opt(0, "Random seed: principles drawn and texts sampled follow it.")
    device: str = device_opt()
    dtype: str = dtype_opt()
    force: bool = opt(False, "Overwrite a finished cai/revisions.jsonl.")

    def validate(self) -> None:
        _check(self.split in ("train", "eval", "all"), "split", f"must be train, eval or all, got {self.split!r}")
        _check(self.num_prompts >= 0, "num_prompts", "must be ≥ 0")
        _check(self.rounds >= 1, "rounds", "must be ≥ 1")
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        _check(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")


@dataclass
class SftConfig:
    """Supervised fine-tuning (LoRA by default) on (prompt, revision) pairs, loss on the reply tokens only."""

    run_dir: str = opt("runs/demo", "Run directory: reads cai/revisions.jsonl, writes sft/ (adapter, merged model).")
    model: str = opt("smollm2", "The model to fine-tune: a local folder, a hub id, or 'smollm2'.")
    data: str = opt("", "Training data: JSONL with 'prompt' and 'final' (cai revise) or 'completion'; '' = RUN_DIR/cai/revisions.jsonl.")
    epochs: int = opt(3, "Passes over the training examples.")
    batch_size: int = opt(8, "Examples per optimizer step.")
    lr: float = opt(2e-4, "AdamW learning rate (LoRA wants ~10× more than full fine-tuning).")
    lora_r: int = opt(16, "LoRA rank; 0 = full fine-tuning.")
    lora_alpha: int = opt(32, "LoRA scaling numerator (scale = alpha / r).")
    lora_layers: int = opt(0, "Adapt only the top N transformer blocks (0 = all).")
    max_length: int = opt(256, "Most tokens per example (prompt + reply); the end of the reply is cut first.")
    drop_failed: bool = opt(True, "Leave out replies the guideline would mark F (empty, repetitive, not text).")
    merge: bool = opt(True, "Also save the base with the adapter merged in (RUN_DIR/sft/merged: a plain model folder for --model).")
    seed: int = opt(0, "Random seed: batch order follows it.")
    device: str = device_opt()
    strategy: str = strategy_opt()
    dist_timeout: float = dist_timeout_opt()
    force: bool = opt(False, "Overwrite a finished RUN_DIR/sft.")

    def validate(self) -> None:
        _check(self.epochs >= 1, "epochs", "must be ≥ 1")
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        _check(self.lr > 0, "lr", "must be > 0")
        _check(self.lora_r >= 0, "lora_r", "must be ≥ 0")
        _check(self.lora_layers >= 0, "lora_layers", "must be ≥ 0")
        _check(self.max_length >= 8, "max_length", "must be ≥ 8")
        _check_dist(self)


@dataclass
class CaiLabelConfig:
    """RLAIF: an AI labeler ranks the completions of RUN_DIR/completions.jsonl by a constitution."""

    run_dir: str = opt("runs/demo", "Run directory: reads completions.jsonl, writes feedback.db.")
    store: str = opt("", "Feedback store: '' = RUN_DIR/feedback.db (SQLite), or a sqlite:/// or postgresql:// URL.")
    model: str = opt("smollm2", "The judge: a causal LM (local folder, hub id, or 'smollm2') asked which reply is better.")
    constitution: str = opt("default", "Constitution YAML (its comparison questions are asked) or 'default'.")
    name: str = opt("", "The AI labeler's name in the store ('' = 'ai-' + the model's name).")
    overlap: int = opt(1, "Labelers per task for tasks imported here (1: the AI labeler alone ranks each task).")
    criterion: str = opt("helpful, honest and harmless (see the guideline)", "The alignment criterion stored with each task.")
    batch_size: int = opt(16, "Comparison prompts per forward pass (each pair is asked in both display orders).")
    max_reply_tokens: int = opt(128, "Replies are cut to this many tokens inside a comparison prompt.")
    tie_eps: float = opt(1e-4, "Completions whose pairwise-win totals differ by at most this are tied.")
    seed: int = opt(0, "Random seed of the principle drawn for each comparison.")
    device: str = device_opt()
    dtype: str = dtype_opt()

    def validate(self) -> None:
        _check(self.overlap >= 1, "overlap", "must be ≥ 1")
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        _check(self.max_reply_tokens >= 1, "max_reply_tokens", "must be ≥ 1")
        _check(self.tie_eps >= 0, "tie_eps", "must be ≥ 0")
        _check(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")


@dataclass
class ServeConfig:
    """An OpenAI-compatible HTTP API over an aligned policy or any causal LM."""

    model: str = opt("runs/demo", "What to serve: a run directory or its policy/ folder (the LoRA merged in, sampled "
                                  "as it was aligned), or a model folder, hub id or 'smollm2'.")
    name: str = opt("", "Model id clients ask for ('' = the run directory's or the model folder's name).")
    host: str = opt("127.0.0.1", "Address to listen on (0.0.0.0 = every interface: set an API key first).")
    port: int = opt(8000, "Port to listen on.")
    api_key: str = opt("", "Key clients must send as 'Authorization: Bearer KEY' ('' = RLHFKIT_SERVE_API_KEY, else "
                           "none). A key given here shows in process lists: prefer the environment variable.")
    max_batch: int = opt(8, "Most requests generated together in one batch.")
    max_tokens: int = opt(256, "New tokens of a chat reply whose request does not say (within the context window).")
    seed: int = opt(0, "Random seed at start (a request's own 'seed' makes that request reproducible).")
    device: str = device_opt()
    dtype: str = dtype_opt()

    def validate(self) -> None:
        _check(self.max_batch >= 1, "max_batch", "must be ≥ 1")
        _check(self.max_tokens >= 1, "max_tokens", "must be ≥ 1")
        _check(0 < self.port < 65536, "port", "must be in 1..65535")
        _check(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")


@dataclass
class RagIndexConfig:
    """Index a folder of text/Markdown files for RAG (MiniLM embeddings, a faiss index)."""

    docs: str = opt("docs", "Folder of .txt/.md files (searched recursively).")
    index: str = opt("rag-index", "Folder to write the index to (index.faiss, chunks.jsonl); replaced atomically.")

    def validate(self) -> None:
        _check(bool(self.docs), "docs", "must name a folder")
        _check(bool(self.index), "index", "must name a folder")


ASK_METHODS = ("plain", "cot", "pal", "rag", "react")


@dataclass
class AskConfig:
    """Ask the model one question through an app: plain, chain-of-thought, PAL, RAG or ReAct."""

    question: str = opt("", "The question.")
    method: str = opt("plain", f"How to answer: {', '.join(ASK_METHODS)}. pal and react run the model's Python in "
                               "a sandbox; rag and react search --index.")
    model: str = opt("runs/demo", "A run directory (its aligned policy), a model folder, or 'smollm2'.")
    base_url: str = opt("", "Instead of --model: an OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1 from "
                            "`rlhfkit serve`); the key comes from RLHFKIT_SERVE_API_KEY.")
    served_name: str = opt("", "With --base-url: the model id to ask for ('' = the server's first).")
    index: str = opt("rag-index", "RAG index folder (`rlhfkit rag-index`), for rag and react.")
    k: int = opt(4, "Documents retrieved for rag (as many as fit the context window are shown).")
    max_steps: int = opt(6, "Most ReAct steps.")
    max_tokens: int = opt(256, "Most new tokens per reply.")
    seed: int = opt(0, "Random seed (replies are greedy).")
    device: str = device_opt()
    dtype: str = dtype_opt()

    def validate(self) -> None:
        _check(bool(self.question.strip()), "question", "must not be empty")
        _check(self.method in ASK_METHODS, "method", f"must be one of {', '.join(ASK_METHODS)}")
        _check(self.k >= 1, "k", "must be ≥ 1")
        _check(self.max_steps >= 1, "max_steps", "must be ≥ 1")
        _check(self.max_tokens >= 1, "max_tokens", "must be ≥ 1")
        _check(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")


APPS_EVAL_METHODS = ("plain", "cot", "pal", "closed-book", "rag")


@dataclass
class AppsEvalConfig:
    """Score a model and its reference on arithmetic (plain, CoT, PAL) and handbook questions (closed-book, RAG)."""

    model: str = opt("runs/demo", "A run directory (its aligned policy), a policy or model folder, or 'smollm2'.")
    reference: str = opt("", "Compared with: '' = the run's base model (its reference); 'none' = nothing; or a model.")
    methods: str = opt(",".join(APPS_EVAL_METHODS), "Comma-separated methods to score.")
    limit: int = opt(0, "Only the first N items of each task (0 = all).")
    problems: str = opt("", "Arithmetic problems JSONL {id, question, answer, solution} ('' = the shipped set).")
    questions: str = opt("", "Document questions JSONL {id, question, answer, accept, source} ('' = the shipped set).")
    docs: str = opt("", "Folder of documents the questions are about ('' = the shipped handbook).")
    out: str = opt("", "JSON written with every reply ('' = MODEL/apps_eval.json for a run directory).")
    force: bool = opt(False, "Overwrite --out.")
    answer_tokens: int = opt(40, "Most new tokens of a plain, closed-book or RAG reply.")
    reasoning_tokens: int = opt(128, "Most new tokens of a chain-of-thought or PAL reply.")
    k: int = opt(3, "Documents retrieved for RAG (as many as fit the context window are shown).")
    examples: int = opt(2, "Transcripts printed per method and model.")
    max_batch: int = opt(8, "Prompts generated together.")
    seed: int = opt(0, "Random seed (replies are greedy).")
    device: str = device_opt()
    dtype: str = dtype_opt()

    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    def validate(self) -> None:
        bad = [m for m in self.method_list() if m not in APPS_EVAL_METHODS]
        _check(bool(self.method_list()) and not bad, "methods", f"must be some of {', '.join(APPS_EVAL_METHODS)}")
        for name in ("answer_tokens", "reasoning_tokens", "k", "max_batch"):
            _check(getattr(self, name) >= 1, name, "must be ≥ 1")
        _check(self.limit >= 0, "limit", "must be ≥ 0")
        _check(self.examples >= 0, "examples", "must be ≥ 0")
        _check(self.dtype in DTYPES, "dtype", f"must be one of {', '.join(DTYPES)}")


EXPORT_FORMATS = ("hf", "gguf")
EXPORT_QUANTIZE = ("none", "int8", "int8-dynamic")  # deploy/quantize.py: INT8_METHODS


@dataclass
class ExportConfig:
    """Ship the aligned policy: LoRA merged, as a transformers folder or a GGUF file; optionally pruned/quantised."""

    run_dir: str = opt("runs/demo", "Run directory whose policy/ is exported (or a policy folder itself).")
    out: str = opt("", "Output folder (required); replaced atomically, never half-written.")
    format: str = opt("hf", "hf: a transformers folder (safetensors, tokenizer, chat template, generation_config); "
                            "gguf: one GGUF file for llama.cpp-style runtimes (llama and qwen2 models).")
    gguf_type: str = opt("f16", "GGUF weight type: f16 or q8_0 (int8 blocks of 32 with one scale each).")
    dtype: str = opt("float32", "Weights of an hf export: float32 or bfloat16.")
    quantize: str = opt("none", "none; int8: weight-only int8 linears, one scale per output channel (keeps the "
                                "alignment); int8-dynamic: also int8 activations (torch.ao; faster at batch 16, loses "
                                "it on models with outlier activations such as SmolLM2). hf format, float32; loads "
                                "with rlhfkit.deploy.quantize.load_int8.")
    sparsity: float = opt(0.0, "Prune this share of weights before export, in [0, 1) (0 = no pruning).")
    structured: bool = opt(False, "Prune whole MLP channels (a smaller model) instead of single weights by magnitude.")
    recover_steps: int = opt(0, "After pruning: this many LoRA distillation steps towards the unpruned policy on its "
                                "own samples of the run's train prompts (0 = none).")
    force: bool = opt(False, "Replace an existing output folder.")

    def validate(self) -> None:
        _check(bool(self.out), "out", "is required (the folder to write)")
        _check(self.format in EXPORT_FORMATS, "format", f"must be one of {', '.join(EXPORT_FORMATS)}, got {self.format!r}")
        _check(self.gguf_type in ("f16", "q8_0"), "gguf_type", f"must be f16 or q8_0, got {self.gguf_type!r}")
        _check(self.dtype in ("float32", "bfloat16"), "dtype", f"must be float32 or bfloat16, got {self.dtype!r}")
        _check(self.quantize in EXPORT_QUANTIZE, "quantize", f"must be one of {', '.join(EXPORT_QUANTIZE)}, got {self.quantize!r}")
        _check(0.0 <= self.sparsity < 1.0, "sparsity", f"must be in [0, 1), got {self.sparsity}")
        _check(self.recover_steps >= 0, "recover_steps", "must be ≥ 0")
        _check(self.recover_steps == 0 or self.sparsity > 0, "recover_steps", "needs --sparsity > 0 (it recovers from pruning)")
        _check(self.quantize == "none" or self.format == "hf", "quantize", "int8 applies to the hf format (GGUF has q8_0)")
        _check(self.quantize == "none" or self.dtype == "float32", "quantize", "int8 starts from float32 (drop --dtype)")


@dataclass
class DistilConfig:
    """A shallower student of the aligned policy, trained on the policy's own samples (T²·KL + α·CE)."""

    run_dir: str = opt("runs/demo", "Run directory whose policy/ is the teacher (or a policy folder itself).")
    out: str = opt("", "Output folder (required): the student as a transformers folder, replaced atomically.")
    every: int = opt(2, "Keep every N-th decoder block of the teacher (2 = half the depth), initialised from it.")
    num_prompts: int = opt(64, "Train prompts of the run the teacher completes (its own samples are the data).")
    batch_size: int = opt(8, "Completions per step.")
    steps: int = opt(100, "Optimizer steps.")
    lr: float = opt(1e-3, "AdamW learning rate.")
    temperature: float = opt(2.0, "T: both distributions softened by T in the KL term (Hinton et al. 2015).")
    alpha: float = opt(0.5, "α: weight of the cross-entropy on the teacher's sampled tokens (hard labels).")
    lora_r: int = opt(16, "LoRA rank of the student's update, merged in at the end (0 = train every weight).")
    seed: int = opt(0, "Random seed of the teacher's samples and the training.")
    force: bool = opt(False, "Replace an existing output folder.")

    def validate(self) -> None:
        _check(bool(self.out), "out", "is required (the folder to write)")
        _check(self.every >= 2, "every", "must be ≥ 2")
        _check(self.num_prompts >= 1 and self.batch_size >= 1 and self.steps >= 1, "steps",
               "num_prompts, batch_size and steps must be ≥ 1")
        _check(self.lr > 0, "lr", "must be > 0")
        _check(self.temperature > 0, "temperature", "must be > 0")
        _check(self.alpha >= 0, "alpha", "must be ≥ 0")
        _check(self.lora_r >= 0, "lora_r", "must be ≥ 0")
