"""The ``train-rm`` and ``score`` stages: files in, a reward model (or scores) out."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.models.reward import RewardModel


def run_train_rm(cfg, *, gold_scorer: Callable[[list[str], list[str]], list[float]] | None = None,
                 progress: bool = True) -> dict:
    """The ``train-rm`` stage: RUN_DIR/reward_model/ with eval.json. Returns the eval report (+ paths)."""
    from rlhfkit.config import save_resolved
    from rlhfkit.data.errors import RecordError
    from rlhfkit.data.formats import load_pairs
    from rlhfkit.train.reward import train_reward_model

    run_dir = Path(cfg.run_dir)
    out = run_dir / "reward_model"
    ckpt = run_dir / "reward_model.ckpt"
    if out.exists() and not cfg.force:
        raise RlhfkitError(f"{out} already exists (use --force to overwrite)")
    if ckpt.exists() and not (cfg.resume or cfg.force):
        raise RlhfkitError(f"{ckpt}: an unfinished run's checkpoint (use --resume to continue or --force to start over)")
    spec = cfg.pairs or str(run_dir / "pairs.jsonl")
    skipped: list[RecordError] = []
    # Public HH/TRL files hold a few malformed rows: skip and count them. Our own pairs are read strictly.
    pairs = load_pairs(spec, skipped=skipped)
    reasons = [str(e) for e in skipped]  # "FILE:LINE: why", one per row left out
    try:
        report = train_reward_model(pairs, cfg, out_dir=out, run_dir=run_dir, checkpoint_path=ckpt,
                                    gold_scorer=gold_scorer, progress=progress)
    except RlhfkitError as exc:
        if not skipped:
            raise
        raise RlhfkitError(f"{exc}; {len(skipped)} of {len(skipped) + len(pairs)} rows of {spec} were left out, "
                           f"first: {reasons[0]}") from None
    main = os.environ.get("RANK", "0") == "0"  # under torchrun rank 0 alone writes (train_reward_model has ended
    # the process group by now)
    if skipped and main:  # recorded beside the metrics, so a reader of eval.json knows what the model was trained on
        from rlhfkit.data.io import atomic_write_json

        report["skipped_rows"] = {"count": len(skipped), "rows": len(skipped) + len(pairs), "why": reasons}
        atomic_write_json(out / "eval.json", report)
    if main:
        save_resolved(run_dir, "train_rm", cfg)
    return {**report, "path": str(out), "pairs_spec": spec, "skipped_rows": len(skipped), "skipped": reasons}


def read_score_input(lines: Iterator[str], name: str = "<stdin>") -> list[tuple[dict, str, str]]:
    """(record to echo, prompt, completion) per non-blank line.

    A line that is a JSON object needs 'completion' or 'text' (completions.jsonl works as is) and
    may have 'prompt'; a line starting with '{' must be one. Any other line is a completion without a
    prompt (the record {"text": line}).
    """
    from rlhfkit.data.errors import RecordError

    items = []
    for n, line in enumerate(lines, start=1):
        text = line.rstrip("\n").rstrip("\r")
        if not text.strip():
            continue
        obj = None
        if text.lstrip().startswith("{"):
            # a line that opens like JSON and does not parse is a broken record (a cut line), not a text to score
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise RecordError(f"not valid JSON ({exc.msg} at column {exc.colno}); a line starting with '{{' must "
                                  "be a JSON object", path=name, line=n) from None
        if isinstance(obj, dict):
            completion = obj.get("completion", obj.get("text"))
            prompt = obj.get("prompt", "")
            if not isinstance(completion, str) or not completion.strip():
                raise RecordError("needs a non-empty string field 'completion' (or 'text')", field="completion",
                                  path=name, line=n)
            if not isinstance(prompt, str):
                raise RecordError("field 'prompt' must be a string", field="prompt", path=name, line=n)
            items.append((obj, prompt, completion))
        else:
            items.append(({"text": text}, "", text))
    return items


def run_score(cfg, *, stdin=None, stdout=None) -> dict:
    """The ``score`` command: one JSON line per input line, the input record plus 'reward'."""
    import sys

    model_dir = Path(cfg.model) if cfg.model else Path(cfg.run_dir) / "reward_model"
    rm = RewardModel.load(model_dir, device=cfg.device, dtype=cfg.dtype)
    if cfg.input == "-":
        items = read_score_input(iter(stdin or sys.stdin))
    else:
        try:
            with open(cfg.input, encoding="utf-8") as f:
                items = read_score_input(iter(f), cfg.input)
        except FileNotFoundError:
            raise RlhfkitError(f"{cfg.input}: file not found") from None
    t0 = time.perf_counter()
    rewards = rm.score([p for _, p, _ in items], [c for _, _, c in items], batch_size=cfg.batch_size,
                       normalize=cfg.normalize) if items else []
    seconds = time.perf_counter() - t0
    lines = "".join(json.dumps({**rec, "reward": r}, ensure_ascii=False) + "\n" for (rec, _, _), r in zip(items, rewards))
    if cfg.output == "-":
        (stdout or sys.stdout).write(lines)
    else:
        from rlhfkit.data.io import atomic_write_text

        atomic_write_text(cfg.output, lines)
    return {"scored": len(items), "seconds": seconds, "texts_per_s": len(items) / seconds if seconds > 0 else None,
            "model": str(model_dir), "output": cfg.output}
