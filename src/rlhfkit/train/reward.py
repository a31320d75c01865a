"""Training the reward model: Bradley–Terry on preference pairs, one numbered loop.

``train_reward_model`` follows the recipe step by step:
  1 check the pairs and hold out whole prompts, 2 build the model and encode each distinct text once,
  3 optimiser and schedule (or a checkpoint to resume), 4 epochs of length-grouped batches, each step
  loss = −log σ(r_chosen − r_rejected) with chosen and rejected in one forward pass, evaluated on the
  held-out pairs (best weights kept, early stop), 5 a checkpoint after each epoch, 6 the report and
  the model folder, written atomically.

The model and its input format live in ``models/reward.py``; the pure data preparation in
``reward_data.py``; the metrics in ``reward_metrics.py``; the stage (files, CLI) in ``reward_stage.py``.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.data.records import Pair
from rlhfkit.models.reward import RewardModel, Row, reward_stats
from rlhfkit.train import dist
from rlhfkit.train.reward_data import (check_pairs, fingerprint, length_grouped_batches, linear_schedule, prompt_units,
                                      split_by_prompt)
from rlhfkit.train.reward_metrics import pair_metrics

MAX_GRAD_NORM = 1.0
"""Gradient-norm clip, the transformers Trainer's default (TRL's RewardTrainer inherits it)."""

Scorer = Callable[[list[str], list[str]], list[float]]


@dataclass
class EncodedPairs:
    """The pairs as model inputs: each distinct (prompt, completion) encoded once.

    A prompt's K completions recur across its C(K,2) pairs and across labelers; a step scores each
    distinct text once and reads every pair off those scores (InstructGPT, Ouyang et al. 2022 §3.5:
    all comparisons of a prompt as one batch element — K forward rows instead of 2·C(K,2) per ranking).
    """

    pairs: list[Pair]
    texts: list[Row]  # distinct encoded (prompt, completion)s
    chosen: list[int]  # pair i: index into texts of its chosen reply
    rejected: list[int]  # … and of its rejected one
    weights: list[float]
    train: list[int]  # indices of training pairs
    heldout: list[int]  # indices of held-out pairs (whole prompts)

    def take(self, idx: Sequence[int]) -> tuple[list[Row], list[int], list[int], list[float]]:
        """(the distinct rows of these pairs, each pair's chosen and rejected position among them, weights)."""
        used = sorted({self.chosen[i] for i in idx} | {self.rejected[i] for i in idx})
        where = {t: k for k, t in enumerate(used)}
        return ([self.texts[t] for t in used], [where[self.chosen[i]] for i in idx],
                [where[self.rejected[i]] for i in idx], [self.weights[i] for i in idx])

    def length(self, i: int) -> int:
        """Padded length of pair i's rows (its longer side)."""
        return max(len(self.texts[self.chosen[i]]["input_ids"]), len(self.texts[self.rejected[i]]["input_ids"]))


@dataclass
class TrainState:
    """Where training stands: everything a checkpoint needs besides weights, optimiser and RNG."""

    epoch: int = 0
    step: int = 0
    best_loss: float = math.inf
    best_step: int = 0
    best_epoch: float = 0.0
    best: dict | None = None  # trainable weights at the best held-out loss
    since_best: int = 0  # evaluations since the held-out loss last improved
    stopped_early: bool = False
    history: list[dict] = field(default_factory=list)
    # since the last evaluation: pairs seen, Σ loss·pairs, pairs ranked right (ties ½)
    window: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])


def _disable_dropout(model) -> None:
    # Dropout makes the chosen and rejected rows of one forward pass see different noise and the
    # reward noisy; TRL's RewardConfig(disable_dropout=True) and Huang et al. 2024 turn it off.
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _atomic_torch_save(obj: Any, path: Path) -> None:
    import io

    import torch

    from rlhfkit.data.io import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def encode_pairs(rm: RewardModel, pairs: list[Pair], eval_fraction: float, seed: int) -> EncodedPairs:
    """Encode each distinct (prompt, completion) once; hold out whole prompts."""
    train, heldout = split_by_prompt(pairs, eval_fraction, seed)
    if not train:
        raise RlhfkitError("no pairs left to train on after holding out prompts (lower eval_fraction)")
    texts = sorted({(p.prompt, c) for p in pairs for c in (p.chosen, p.rejected)})
    index = {t: k for k, t in enumerate(texts)}
    rows = rm.encode([t[0] for t in texts], [t[1] for t in texts])
    return EncodedPairs(pairs, rows, [index[(p.prompt, p.chosen)] for p in pairs],
                        [index[(p.prompt, p.rejected)] for p in pairs], [float(p.weight) for p in pairs], train, heldout)


def evaluate_pairs(rm: RewardModel, rows: Sequence[Row], chosen: Sequence[int], rejected: Sequence[int],
                   weights: Sequence[float], batch_size: int = 64) -> dict[str, float]:
    """:func:`pair_metrics` of pairs over ``rows`` (chosen[i], rejected[i]: positions in rows), raw rewards."""
    r = rm.raw_scores(list(rows), batch_size)
    return pair_metrics([r[i] for i in chosen], [r[i] for i in rejected], weights)


def train_step(rm: RewardModel, rows: Sequence[Row], chosen: Sequence[int], rejected: Sequence[int],
               weights: Sequence[float], optimizer, scheduler, params, runner=None) -> tuple[float, float]:
    """One optimizer step on B pairs: their U distinct texts in ONE forward pass, the loss over the pairs.

    ``runner``: under torchrun, the DDP / FSDP wrapper of ``rm.net``, and the B pairs this rank's share of the
    step's: the loss is Σ w·l over the share / (all ranks' Σ w / N), and DDP / FSDP average the gradients, so the
    update is one process's on the whole step (losses.py: exact accumulation).
    Returns the whole step's (loss, pairs ranked right, ties ½). A non-finite loss returns before any update.
    """
    import torch

    from rlhfkit.train.losses import bradley_terry_loss

    r = rm.forward(list(rows), runner)  # (U,)
    r_c, r_r = r[torch.tensor(list(chosen))], r[torch.tensor(list(rejected))]  # (B,) each
    w = torch.tensor(list(weights), device=r.device)  # (B,)
    loss = bradley_terry_loss(r_c, r_r, weight=w, normalizer=dist.global_count(w.sum()))
    loss_value = dist.all_mean(loss.detach()).item()  # the same on every rank, so all stop together
    if not math.isfinite(loss_value):
        return loss_value, 0.0
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
    optimizer.step()
    scheduler.step()
    with torch.no_grad():
        correct = dist.all_sum(((r_c > r_r).float() + 0.5 * (r_c == r_r).float()).sum()).item()
    return loss_value, correct


def evaluate(rm: RewardModel, data: EncodedPairs, state: TrainState, epoch: float, lr: float, patience: int,
             runner=None) -> dict:
    """Held-out metrics now; keep the weights if the held-out loss is the best so far; maybe stop early.

    Under torchrun every rank evaluates all held-out pairs (the same weights, so the same decisions) and keeps
    the best weights whole (``runner``: the DDP / FSDP wrapper of ``rm.net``)."""
    values: dict[str, float] = {}
    n, loss_sum, correct = state.window
    if n > 0:
        values["reward_model/train_loss"] = loss_sum / n
        values["reward_model/train_accuracy"] = correct / n
    if data.heldout:
        m = evaluate_pairs(rm, *data.take(data.heldout))
        values.update({"reward_model/loss": m["loss"], "reward_model/accuracy": m["accuracy"],
                       "reward_model/margin": m["margin"], "reward_model/ece": m["ece"]})
        if m["loss"] < state.best_loss:
            state.best_loss, state.best_step, state.best_epoch = m["loss"], state.step, epoch
            state.best, state.since_best = dist.trainable_state(runner if runner is not None else rm.net, everywhere=True), 0
        else:
            state.since_best += 1
        state.stopped_early = patience > 0 and state.since_best >= patience
    values["reward_model/lr"] = lr
    state.history.append({"step": state.step, "epoch": round(epoch, 4), **values})
    state.window = [0.0, 0.0, 0.0]
    return values


def train_reward_model(pairs: Sequence[Pair], hp, *, out_dir: str | Path, run_dir: str | Path | None = None,
                       checkpoint_path: str | Path | None = None, gold_scorer: Scorer | None = None,
                       progress: bool = True) -> dict:
    """Train a reward model on ``pairs`` with the hyper-parameters of ``hp`` (a RewardConfig); write it with
    eval.json to ``out_dir``. Returns the eval report.

    Held-out pairs: ``hp.eval_fraction`` of the prompts, whole. AdamW, linear warm-up and decay, gradient
    clipping at 1. Evaluated every ``hp.eval_every`` steps (0 = at each epoch's end); training stops after
    ``hp.patience`` evaluations without a lower held-out loss (0 = never) and keeps the best weights. The
    checkpoint (default ``OUT_DIR.ckpt``) is written after each epoch; ``hp.resume`` continues from it. A
    non-finite loss stops the run naming epoch and batch; nothing is written to ``out_dir`` then.
    ``gold_scorer(prompts, completions)`` gives the gold scorer's accuracy on the same held-out pairs. With
    ``run_dir``, every evaluation is logged to RUN_DIR/logs/metrics.csv (stage ``train_rm``).
    """
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from rlhfkit.models.load import pick_device
    from rlhfkit.train.metrics import MetricsLog

    device = pick_device(hp.device)
    started = not dist.is_initialized()
    world = dist.init(device, hp.dist_timeout)  # one process (no torchrun): World(0, 1)
    device = dist.device_of(world, device)
    dist.check_divisible("batch_size", hp.batch_size, "pairs")  # each rank takes 1/N of every step's pairs
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    ckpt = Path(checkpoint_path) if checkpoint_path else out_dir.with_name(out_dir.name + ".ckpt")
    # 1. check the pairs; the held-out split keeps each prompt's pairs on one side
    n_given = len(pairs)
    pairs = check_pairs(pairs)
    digest = fingerprint(pairs, hp)
    # 2. the model (a seeded fresh head) and the encoded pairs
    def fresh(device: str) -> RewardModel:
        return RewardModel.from_backbone(hp.backbone, max_length=hp.max_length, lora_r=hp.lora_r, device=device,
                                         seed=hp.seed, dtype=hp.dtype, pooling=hp.pooling)

    rm = fresh(device)
    _disable_dropout(rm.model)
    data = encode_pairs(rm, pairs, hp.eval_fraction, hp.seed)
    # find_unused: an encoder's pooler (and, with mean pooling, its own head) trains but gets no gradient
    runner = dist.wrap(rm.net, hp.strategy, device, find_unused=True)  # one process: rm.net itself
    # 3. AdamW without weight decay on biases and LayerNorm gains (1-d tensors), as in BERT and the HF Trainer
    params = [p for p in rm.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": hp.weight_decay},
                                   {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=hp.lr)
    # each epoch's batches, drawn up front (seeded by epoch): whole prompts, alike lengths, ≥ batch_size pairs
    lengths, units = {i: data.length(i) for i in data.train}, prompt_units(data.pairs, data.train)
    epochs = [length_grouped_batches(lengths, hp.batch_size, random.Random(hp.seed * 1_000_003 + e), units=units)
              for e in range(hp.epochs)]
    dist.check_step_fills_ranks(min(len(b) for e in epochs for b in e), "pairs", len(data.train))
    total_steps = sum(len(b) for b in epochs)
    warmup = int(hp.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: linear_schedule(s, warmup, total_steps))
    state = TrainState()
    if hp.resume:
        if not ckpt.exists():
            raise RlhfkitError(f"{ckpt}: no checkpoint to resume from (run without --resume)")
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        if saved.get("fingerprint") != digest:
            raise RlhfkitError(f"{ckpt}: made with other pairs or settings; use --force to start over")
        dist.load_trainable(runner, saved["trainable"])
        dist.load_optimizer_state(runner, optimizer, saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]

    log = MetricsLog(run_dir, "train_rm") if run_dir is not None and world.main else None  # rank 0 logs
    if log is not None:  # a resumed run re-logs what follows its checkpoint; a fresh one starts over
        log.resume_from(state.step) if hp.resume else log.start_fresh()
    columns = [TextColumn("train-rm"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("held-out acc {task.fields[acc]}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    timer = {"wall": 0.0, "cpu": 0.0, "pairs": 0}  # training steps only, evaluations excluded

    def check_in(epoch: float, bar, task) -> None:
        values = evaluate(rm, data, state, epoch, scheduler.get_last_lr()[0], hp.patience, runner)
        if log is not None:
            log.log(state.step, values)
        acc = values.get("reward_model/accuracy")
        bar.update(task, acc=f"{acc:.3f}" if acc is not None else "-")
        rm.model.train()

    with contextlib.ExitStack() as stack:
        if log is not None:
            stack.callback(log.close)
        bar = stack.enter_context(Progress(*columns, disable=not (progress and world.main), transient=False))
        task = bar.add_task("train", total=total_steps, completed=state.step, loss=float("nan"), acc="-")
        # 4. epochs of length-grouped batches (little padding), evaluated along the way
        while state.epoch < hp.epochs and not state.stopped_early:
            rm.model.train()
            batches = epochs[state.epoch]
            for b, idx in enumerate(batches, start=1):
                t0, c0 = time.perf_counter(), time.process_time()
                mine = dist.shard(idx, "a step's pairs", even=False)  # this rank's share of the step
                loss, correct = train_step(rm, *data.take(mine), optimizer, scheduler, params, runner)
                timer["wall"] += time.perf_counter() - t0
                timer["cpu"] += time.process_time() - c0
                if not math.isfinite(loss):
                    raise RlhfkitError(
                        f"reward-model loss is {loss} at epoch {state.epoch + 1}, batch {b} of {len(batches)}: "
                        f"training stopped, no model written (lower --lr, or check the backbone's weights)")
                state.step += 1
                timer["pairs"] += len(idx)
                state.window = [state.window[0] + len(idx), state.window[1] + loss * len(idx), state.window[2] + correct]
                bar.update(task, advance=1, loss=loss)
                if hp.eval_every and state.step % hp.eval_every == 0 and b < len(batches):
                    check_in(state.epoch + b / len(batches), bar, task)
                    if state.stopped_early:
                        break
            if not state.stopped_early:
                check_in(state.epoch + 1.0, bar, task)
            state.epoch += 1
            # 5. a checkpoint after each epoch: weights, optimiser, schedule, RNG and where training stands
            trained, opt_state = dist.trainable_state(runner), dist.optimizer_state(runner, optimizer)  # collectives
            if world.main:
                _atomic_torch_save({"fingerprint": digest, "trainable": trained, "optimizer": opt_state,
                                    "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                                    "state": state}, ckpt)

    # 6. the best weights, the report, the model folder (atomically); the checkpoint is then superseded
    if state.best is not None:
        dist.load_trainable(runner, state.best)
    rm.model.eval()
    report = _report(rm, data, state, hp, n_given=n_given, gold_scorer=gold_scorer)
    report.update(train_seconds=round(timer["wall"], 3), train_cpu_seconds=round(timer["cpu"], 3),
                  pairs_per_s=timer["pairs"] / timer["wall"] if timer["wall"] > 0 else None,
                  seconds=round(time.perf_counter() - t_start, 3), history=state.history)
    # FSDP: the shards gathered into a fresh CPU copy on rank 0 (None on the others); else rm.net itself
    whole = dist.full_copy(runner, lambda: fresh("cpu").net)
    if world.main:
        rm.model = whole.model
        rm.save(out_dir, report=report)
        with contextlib.suppress(FileNotFoundError):
            ckpt.unlink()
    dist.barrier()
    if started:
        dist.close()
    return report


def _report(rm: RewardModel, data: EncodedPairs, state: TrainState, hp, *, n_given: int,
            gold_scorer: Scorer | None) -> dict[str, Any]:
    """eval.json: what was trained on, held-out metrics (and the gold scorer's accuracy on the same pairs),
    training-pair metrics, and the score statistics over the training completions."""
    from rlhfkit.eval.metrics import win_rate

    pairs = data.pairs
    report: dict[str, Any] = {
        "backbone": hp.backbone, "format": rm.format, "max_length": rm.max_length, "lora_r": hp.lora_r,
        "dtype": rm.compute_dtype,  # what dtype auto became: the score statistics below were computed in it
        "pairs": {"given": n_given, "used": len(pairs), "train": len(data.train), "heldout": len(data.heldout),
                  "train_prompts": len({pairs[i].prompt for i in data.train}),
                  "heldout_prompts": len({pairs[i].prompt for i in data.heldout})},
        "epochs_run": state.epoch, "steps": state.step, "stopped_early": state.stopped_early,
        "best_step": state.best_step if state.best is not None else state.step,
        "best_epoch": state.best_epoch if state.best is not None else float(state.epoch),
    }
    if data.heldout:
        report["heldout"] = evaluate_pairs(rm, *data.take(data.heldout))
        if gold_scorer is not None:
            held = [pairs[i] for i in data.heldout]
            g = gold_scorer([p.prompt for p in held] * 2, [p.chosen for p in held] + [p.rejected for p in held])
            report["gold_accuracy"] = win_rate(g[: len(held)], g[len(held) :])
    # Score statistics over the distinct training completions: `rlhfkit score` normalises with them, so
    # scores read on a common scale (PPO normalises on its reference's rollouts instead: ppo.RewardNorm).
    texts = sorted({(pairs[i].prompt, c) for i in data.train for c in (pairs[i].chosen, pairs[i].rejected)})
    raw = dict(zip(texts, rm.raw_scores(rm.encode([t[0] for t in texts], [t[1] for t in texts]))))
    report["train"] = pair_metrics([raw[(pairs[i].prompt, pairs[i].chosen)] for i in data.train],
                                   [raw[(pairs[i].prompt, pairs[i].rejected)] for i in data.train],
                                   [data.weights[i] for i in data.train])
    rm.mean, rm.std = reward_stats(list(raw.values()))
    report["reward_stats"] = {"mean": rm.mean, "std": rm.std, "texts": len(texts)}
    return report
