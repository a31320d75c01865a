"""Configs of the reward-model stages (``train-rm`` and ``score``); to be moved into rlhfkit.config."""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.config import _check, opt


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
    weight_decay: float = opt(0.0, "AdamW weight decay (not applied to biases and LayerNorm gains).")
    warmup_ratio: float = opt(0.1, "Share of the steps warming the learning rate up linearly; then it decays linearly to 0.")
    seed: int = opt(0, "Random seed: the held-out split, head initialisation and batch order follow it.")
    device: str = opt("auto", "cpu, cuda, or auto (cuda when available).")
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
        _check(self.weight_decay >= 0, "weight_decay", "must be ≥ 0")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)")
        _check(not (self.resume and self.force), "resume", "cannot be combined with force")


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
    device: str = opt("auto", "cpu, cuda, or auto (cuda when available).")

    def validate(self) -> None:
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1")
