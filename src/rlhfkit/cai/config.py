"""Configs of the Constitutional AI stages (``cai revise``, ``cai label``) and of ``sft``.

To be moved into :mod:`rlhfkit.config` with the other stage configs.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.config import _check, opt


@dataclass
class CaiReviseConfig:
    """Constitutional AI, supervised stage: response → critique → revision, for red-team prompts."""

    run_dir: str = opt("runs/demo", "Run directory: cai/revisions.jsonl and config.yaml go here.")
    model: str = opt("smollm2", "The model that answers, critiques and revises: a local folder, a hub id, or 'smollm2'.")
    prompts: str = opt("redteam", "Prompts JSONL ({id, prompt, split}) or 'redteam' (the red-team prompts shipped with rlhfkit).")
    split: str = opt("train", "Which prompts to use: train, eval or all.")
    num_prompts: int = opt(0, "Use only the first N prompts of the split (0 = all).")
    constitution: str = opt("default", "Constitution YAML (principles with critique/revision requests) or 'default'.")
    rounds: int = opt(1, "Critique → revision rounds per prompt; each round draws a principle at random.")
    max_new_tokens: int = opt(64, "Most tokens per response, critique and revision.")
    temperature: float = opt(0.7, "Sampling temperature of every step (0 = greedy; small models loop when greedy).")
    top_p: float = opt(1.0, "Nucleus sampling for every step.")
    batch_size: int = opt(16, "Sequences generated together.")
    seed: int = opt(0, "Random seed: principles drawn and texts sampled follow it.")
    device: str = opt("auto", "cpu, cuda, or auto (cuda when available).")
    force: bool = opt(False, "Overwrite a finished cai/revisions.jsonl.")

    def validate(self) -> None:
        _check(self.split in ("train", "eval", "all"), "split", f"must be train, eval or all, got {self.split!r}")
        _check(self.num_prompts >= 0, "num_prompts", "must be ≥ 0")
        _check(self.rounds >= 1, "rounds", "must be ≥ 1")
        _check(self.max_new_tokens >= 1, "max_new_tokens", "must be ≥ 1")
        _check(self.temperature >= 0, "temperature", "must be ≥ 0")
        _check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1")


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
    device: str = opt("auto", "cpu, cuda, or auto (cuda when available).")

    def validate(self) -> None:
        _check(self.overlap >= 1, "overlap", "must be ≥ 1")
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        _check(self.max_reply_tokens >= 1, "max_reply_tokens", "must be ≥ 1")
        _check(self.tie_eps >= 0, "tie_eps", "must be ≥ 0")


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
    device: str = opt("auto", "cpu, cuda, or auto (cuda when available).")
    force: bool = opt(False, "Overwrite a finished RUN_DIR/sft.")

    def validate(self) -> None:
        _check(self.epochs >= 1, "epochs", "must be ≥ 1")
        _check(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        _check(self.lr > 0, "lr", "must be > 0")
        _check(self.lora_r >= 0, "lora_r", "must be ≥ 0")
        _check(self.lora_layers >= 0, "lora_layers", "must be ≥ 0")
        _check(self.max_length >= 8, "max_length", "must be ≥ 8")
