"""``sft``: supervised fine-tuning on (prompt, reply) pairs: the SL stage of Constitutional AI.

Bai et al. 2022 §3 fine-tune the model on its own revisions of red-team answers ("SL-CAI"); the
result is the starting policy of the RL stage. The loss is the usual next-token cross-entropy on
the reply tokens only: prompt tokens (in the chat template) and padding get label −100, so the
model learns to answer, not to reproduce prompts (the causal LM's own loss, which shifts the
labels by one and averages over the labelled tokens of the batch).

Output, written atomically (a temporary folder renamed into place)::

    RUN_DIR/sft/adapter/   the LoRA adapter (peft), with the tokenizer
    RUN_DIR/sft/merged/    base + adapter merged: a plain model folder; pass it as --model to
                           generate / cai label / ppo to start from the fine-tuned policy
    RUN_DIR/sft/train.json examples used, loss before and after, per-epoch losses
    RUN_DIR/sft/config.yaml
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

from rlhfkit.data.errors import RecordError, RlhfkitError

IGNORE = -100  # the label PyTorch's cross-entropy (and HF's causal LM loss) skips


def read_sft_examples(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, reply) pairs from a JSONL whose lines have 'prompt' and 'final' (``cai revise``
    output) or 'completion'. Errors name file:line and the field."""
    from rlhfkit.data.io import iter_jsonl_dicts

    examples = []
    for line, d in iter_jsonl_dicts(path):
        reply_field = "final" if "final" in d else "completion"
        for name in ("prompt", reply_field):
            if name not in d:
                raise RecordError("want fields 'prompt' and 'final' (or 'completion')", field=name).at(str(path), line)
            if not isinstance(d[name], str):
                raise RecordError(f"field '{name}' must be text", field=name).at(str(path), line)
        if not d["prompt"].strip():
            raise RecordError("field 'prompt' is empty", field="prompt").at(str(path), line)
        examples.append((d["prompt"], d[reply_field]))
    return examples


def encode_example(tokenizer, prompt: str, reply: str, eos_id: int, max_length: int) -> tuple[list[int], int] | None:
    """(token ids, number of prompt tokens) of the chat-formatted prompt followed by the reply and EOS.

    Prompt and reply are tokenized separately, as generation sees them (the reply's tokens follow
    the prompt's). Too long: the reply's end is cut (EOS with it); None when not even one reply
    token fits after the prompt.
    """
    from rlhfkit.models.load import format_prompt

    p = tokenizer(format_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    r = tokenizer(reply, add_special_tokens=False)["input_ids"] + [eos_id]
    if len(p) >= max_length:
        return None
    return (p + r)[:max_length], len(p)


def collate(rows: list[tuple[list[int], int]], pad_id: int) -> dict:
    """Right-padded batch: input_ids, attention_mask (B, T); labels (B, T) = ids on reply tokens, −100 elsewhere."""
    import torch

    T = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for b, (ids, n_prompt) in enumerate(rows):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention_mask[b, : len(ids)] = 1
        labels[b, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def mean_loss(model, rows, pad_id: int, batch_size: int) -> float:
    """Token-weighted mean reply loss over ``rows`` (no gradient)."""
    import torch

    total, tokens = 0.0, 0
    with torch.no_grad():
        for lo in range(0, len(rows), batch_size):
            batch = {k: v.to(model.device) for k, v in collate(rows[lo : lo + batch_size], pad_id).items()}
            n = int((batch["labels"][:, 1:] != IGNORE).sum())  # labels are shifted by one inside the loss
            total += float(model(**batch).loss) * n
            tokens += n
    return total / max(tokens, 1)


def sft_step(model, optimizer, rows, *, pad_id: int, step: int, wrapped=None) -> tuple[float, int]:
    """One update on a batch of encoded examples → (the batch's reply loss, its reply tokens).

    Under torchrun ``rows`` is this rank's share of the step's batch and ``wrapped`` its DDP / FSDP module: each rank
    sums its token losses and divides by (all ranks' tokens / N), and DDP / FSDP average the gradients, so the update
    is one process's on the whole batch (losses.py: exact accumulation; transformers' Trainer does the same with
    ``num_items_in_batch`` and average_tokens_across_devices). Loss and token count returned are the whole batch's.
    """
    import torch

    from rlhfkit.train import dist

    batch = {k: v.to(model.device) for k, v in collate(rows, pad_id).items()}
    n = (batch["labels"][:, 1:] != IGNORE).sum()  # labels are shifted by one inside the loss
    # the causal LM's loss with num_items_in_batch: Σ token losses / num_items_in_batch (transformers loss_utils)
    loss = (wrapped if wrapped is not None else model)(**batch, num_items_in_batch=dist.global_count(n)).loss
    total = dist.all_mean(loss.detach())  # the batch's loss: each rank's term is N × its share of it
    if not torch.isfinite(total):  # the same on every rank, so all stop together
        raise RlhfkitError(f"sft: loss is {float(total)} at step {step}; lower --lr")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(total), int(dist.all_sum(n))


def train_sft(model, rows, *, pad_id: int, epochs: int, batch_size: int, lr: float, seed: int, log=None,
              progress: bool = True, wrapped=None) -> dict:
    """AdamW over the trainable parameters; the batch order is a seeded shuffle per epoch.
    ``wrapped``: under torchrun, the DDP / FSDP module of ``model`` (each rank trains on its share of every batch).
    Returns {loss_before, loss_after, epoch_losses, steps}."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from rlhfkit.train import dist

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model.eval()  # dropout off (LoRA dropout is 0 too): the loss measured is the loss trained
    loss_before = mean_loss(model, rows, pad_id, batch_size)
    steps_per_epoch = math.ceil(len(rows) / batch_size)
    step, epoch_losses = 0, []
    columns = [TextColumn("sft"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress) as bar:
        task = bar.add_task("sft", total=epochs * steps_per_epoch, loss=loss_before)
        for epoch in range(epochs):
            order = list(range(len(rows)))
            rng.shuffle(order)
            sums = [0.0, 0]
            for lo in range(0, len(order), batch_size):
                # this rank's share of the step's examples (the epoch's last batch may split unevenly)
                chunk = dist.shard([rows[i] for i in order[lo : lo + batch_size]], "a step's examples", even=False)
                value, n = sft_step(model, optimizer, chunk, pad_id=pad_id, step=step, wrapped=wrapped)
                sums[0] += value * n
                sums[1] += n
                if log is not None:
                    log.log(step, {"sft/loss": value})
                step += 1
                bar.update(task, advance=1, loss=value)
            epoch_losses.append(sums[0] / max(sums[1], 1))
            if log is not None:
                log.log(step - 1, {"sft/epoch_loss": epoch_losses[-1]})
    loss_after = mean_loss(model, rows, pad_id, batch_size)
    return {"loss_before": loss_before, "loss_after": loss_after, "epoch_losses": epoch_losses, "steps": step}


def save_sft(out: Path, model, tokenizer, *, lora: bool, merge: bool, report: dict, config: dict) -> None:
    """Write ``out`` atomically: adapter/ (LoRA), merged/ (a plain model folder), train.json, config.yaml."""
    import yaml

    from rlhfkit.data.io import atomic_directory, atomic_write_json
    from rlhfkit.models.load import quiet_transformers

    with atomic_directory(out) as tmp, quiet_transformers():  # no stray "Writing model shards" bar
        if lora:
            model.save_pretrained(tmp / "adapter")
            tokenizer.save_pretrained(tmp / "adapter")
        if merge or not lora:
            full = model.merge_and_unload() if lora else model  # W ← W + (α/r)·B·A: no adapter needed to load it
            full.save_pretrained(tmp / "merged")
            tokenizer.save_pretrained(tmp / "merged")
        atomic_write_json(tmp / "train.json", report)
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def run_sft(cfg, *, progress: bool = True) -> dict:
    """The ``sft`` stage: RUN_DIR/sft/ (adapter, merged model, train.json). Returns the report."""
    import dataclasses

    from rlhfkit.config import save_resolved
    from rlhfkit.feedback.gold import fail_reason
    from rlhfkit.generate import eos_ids
    from rlhfkit.models.load import add_lora, load_policy, pick_device
    from rlhfkit.train import dist
    from rlhfkit.train.metrics import MetricsLog

    run_dir = Path(cfg.run_dir)
    out = run_dir / "sft"
    if out.exists() and not cfg.force:
        raise RlhfkitError(f"{out} already exists (use --force to overwrite)")
    data = Path(cfg.data) if cfg.data else run_dir / "cai" / "revisions.jsonl"
    if not data.exists():
        raise RlhfkitError(f"{data}: no training data (run `rlhfkit cai revise` first, or pass --data)")
    examples = read_sft_examples(data)
    failed = [e for e in examples if fail_reason(e[1]) is not None] if cfg.drop_failed else []
    examples = [e for e in examples if not (cfg.drop_failed and fail_reason(e[1]) is not None)]

    device = pick_device(cfg.device)
    started = not dist.is_initialized()
    world = dist.init(device, cfg.dist_timeout)  # one process (no torchrun): World(0, 1)
    device = dist.device_of(world, device)
    dist.check_divisible("batch_size", cfg.batch_size, "examples")  # each rank takes 1/N of every batch
    model, tokenizer = load_policy(cfg.model, device=device)
    stop = eos_ids(tokenizer, model)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id in stop else stop[0]
    encoded = [encode_example(tokenizer, p, r, eos, cfg.max_length) for p, r in examples]
    rows = [e for e in encoded if e is not None]
    if not rows:
        raise RlhfkitError(f"{data}: no usable examples ({len(failed)} fail the guideline, "
                           f"{len(encoded)} whose prompt alone exceeds max_length {cfg.max_length})")
    dist.check_step_fills_ranks(len(rows) % cfg.batch_size or cfg.batch_size, "examples", len(rows))  # the last batch

    def adapted(model):
        import torch

        torch.manual_seed(cfg.seed)  # the adapters' initial weights: the same on every rank, and reproducible
        return add_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=0.0, top_layers=cfg.lora_layers)

    if cfg.lora_r > 0:
        model = adapted(model)
    wrapped = dist.wrap(model, cfg.strategy, device)  # one process: the model itself
    log = MetricsLog(run_dir, "sft") if world.main else None  # metrics and files: rank 0 only
    if log:
        log.start_fresh()
    start = time.perf_counter()
    try:
        history = train_sft(model, rows, pad_id=tokenizer.pad_token_id, epochs=cfg.epochs, batch_size=cfg.batch_size,
                            lr=cfg.lr, seed=cfg.seed, log=log, progress=progress and world.main, wrapped=wrapped)
    finally:
        if log:
            log.close()
    report = {"data": str(data), "examples": len(rows), "dropped_failed": len(failed),
              "dropped_too_long": len(encoded) - len(rows), "reply_tokens": sum(len(i) - n for i, n in rows),
              **history, "seconds": time.perf_counter() - start, "base_model": cfg.model}
    # FSDP: the shards gathered into a fresh CPU copy on rank 0 (None on the others); else the model itself
    def fresh():
        lm = load_policy(cfg.model, device="cpu")[0]
        return adapted(lm) if cfg.lora_r > 0 else lm

    whole = dist.full_copy(wrapped, fresh)
    if world.main:
        save_sft(out, whole, tokenizer, lora=cfg.lora_r > 0, merge=cfg.merge, report=report,
                 config=dataclasses.asdict(cfg))
        save_resolved(run_dir, "sft", cfg)
    dist.barrier()
    if started:
        dist.close()
    return {**report, "path": str(out), "merged": str(out / "merged") if (cfg.merge or cfg.lora_r == 0) else None}
