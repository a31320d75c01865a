"""``rlhfkit dpo``: direct preference optimisation on preference pairs, on a LoRA policy.

No reward model and no sampling: the policy is pushed to raise log π(chosen) − log π(rejected) relative to
the frozen reference ([DPO] Rafailov et al. 2023). The reference is the base with the adapters off, so one
copy of the weights serves both, and its log-probs never change: they are computed once, before the first
step, and kept with the checkpoint (a resumed run does not recompute them). The loss is
``losses.dpo_loss`` (sigmoid, IPO, label smoothing); a pair's ``weight`` (labeler quality, from
``rlhfkit pairs --weight quality``) weights its term.

Output: RUN_DIR/policy, laid out as ppo's (trainable.safetensors, adapter/, config.yaml, trainer_state.pt),
so ``rlhfkit eval`` and ``load_aligned`` read it unchanged; plus ref_logps.safetensors.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.data.records import Pair
from rlhfkit.models.load import format_prompt
from rlhfkit.models.policy import Packed, PolicyWithValue, additive_mask
from rlhfkit.train import dist
from rlhfkit.train import losses as L

REF_FILE = "ref_logps.safetensors"


@dataclass
class PairBatch:
    """b pairs as 2b sequences: rows 0..b−1 the chosen replies, rows b..2b−1 the rejected ones (same prompts).

    T = P + A: the prompt left-padded to P, then the reply (with EOS) right-padded to A, as a rollout's layout.
    """

    input_ids: Tensor  # (2b, T)
    attention_mask: Tensor  # (2b, T) 1 on prompt and reply tokens
    reply_mask: Tensor  # (2b, A) 1 on reply tokens (incl. EOS)

    @property
    def n_reply(self) -> int:
        return self.reply_mask.shape[1]


def encode(tokenizer, prompt: str, reply: str, *, eos_id: int, system_prompt: str, max_length: int) -> tuple[list[int], list[int]]:
    """(prompt ids, reply ids + EOS) as the sampler sees them: the chat-formatted prompt, then the reply's own tokens.

    Too long: the prompt keeps its last max_length // 2 tokens (its end is nearest the reply), the reply is cut.
    """
    p = tokenizer(format_prompt(tokenizer, prompt, system_prompt), add_special_tokens=False)["input_ids"]
    r = tokenizer(reply, add_special_tokens=False)["input_ids"] + [eos_id]
    if len(p) + len(r) > max_length:
        p = p[-max(max_length - len(r), max_length // 2):]
        r = r[: max_length - len(p)]
    return p, r


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> PairBatch:
    """Sequences (prompt ids, reply ids) → left-padded prompts + right-padded replies."""
    P = max(len(p) for p, _ in rows)
    A = max(len(r) for _, r in rows)
    n = len(rows)
    input_ids = torch.full((n, P + A), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, P + A), dtype=torch.long)
    for i, (p, r) in enumerate(rows):
        input_ids[i, P - len(p) : P] = torch.tensor(p)
        input_ids[i, P : P + len(r)] = torch.tensor(r)
        attention_mask[i, P - len(p) : P + len(r)] = 1
    return PairBatch(input_ids, attention_mask, attention_mask[:, P:].clone())


def sequence_logps(logits: Tensor, batch: PairBatch, average: bool) -> Tensor:
    """(2b,) log π(reply | prompt): the sum over reply tokens, or their mean (IPO, as TRL). logits (2b, A, V)."""
    lp = L.logprobs_from_logits(logits, batch.input_ids[:, -batch.n_reply:])  # (2b, A)
    return L.masked_mean(lp, batch.reply_mask, dim=-1) if average else L.masked_sum(lp, batch.reply_mask, dim=-1)


@dataclass
class SharedPromptBatch:
    """b pairs as b rows: the prompt once (left-padded to P), the chosen reply (right-padded to C), then the
    rejected one (right-padded to R); T = P + C + R. A 4-D mask lets each reply see the prompt and itself only,
    and each reply's positions continue from its prompt, so every reply token gets the log-prob it gets in
    ``PairBatch``'s layout — with the prompt run once instead of twice (prefix sharing: Wang et al. 2024,
    "Accelerating Direct Preference Optimization with Prefix Sharing").
    """

    input_ids: Tensor  # (b, T)
    packed: Packed  # mask (b, 1, T, T), positions (b, T), keep (C + R,): the positions predicting each reply token
    targets: Tensor  # (b, C + R) the chosen reply's tokens, then the rejected one's
    reply_mask: Tensor  # (b, C + R) 1 on reply tokens (incl. EOS)
    n_chosen: int  # C


def collate_shared(rows: list[tuple[list[int], list[int], list[int]]], pad_id: int, dtype: torch.dtype) -> SharedPromptBatch:
    """(prompt ids, chosen ids, rejected ids) per pair → ``SharedPromptBatch`` (its mask in ``dtype``)."""
    b = len(rows)
    P, C, R = (max(len(r[k]) for r in rows) for k in range(3))
    T = P + C + R
    input_ids = torch.full((b, T), pad_id, dtype=torch.long)
    segment = torch.full((b, T), -1, dtype=torch.long)  # 0 prompt, 1 chosen, 2 rejected, −1 padding
    positions = torch.zeros((b, T), dtype=torch.long)
    for i, (p, c, r) in enumerate(rows):
        for start, ids, seg, first in ((P - len(p), p, 0, 0), (P, c, 1, len(p)), (P + C, r, 2, len(p))):
            input_ids[i, start : start + len(ids)] = torch.tensor(ids)
            segment[i, start : start + len(ids)] = seg
            positions[i, start : start + len(ids)] = torch.arange(first, first + len(ids))
    real = segment >= 0
    q, k = segment[:, :, None], segment[:, None, :]  # (b, T, 1), (b, 1, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # key index ≤ query index: replies come after the prompt
    allowed = causal & real[:, :, None] & real[:, None, :] & ((k == 0) | (k == q))  # (b, T, T)
    allowed |= torch.eye(T, dtype=torch.bool) & ~real[:, :, None]  # padding rows see themselves: no empty softmax row
    mask = additive_mask(allowed[:, None], dtype)  # (b, 1, T, T)
    # the first token of each reply is predicted at the prompt's last position, the others at the token before
    keep = torch.cat([torch.tensor([P - 1]), torch.arange(P, P + C - 1), torch.tensor([P - 1]), torch.arange(P + C, T - 1)])
    targets = torch.cat([input_ids[:, P : P + C], input_ids[:, P + C :]], dim=1)  # (b, C + R)
    reply_mask = torch.cat([real[:, P : P + C], real[:, P + C :]], dim=1).long()
    return SharedPromptBatch(input_ids, Packed(mask, positions, keep), targets, reply_mask, C)


def shared_prompt_ok(lm) -> bool:
    """Whether ``lm`` takes ``SharedPromptBatch``'s custom 4-D mask as it is: SDPA or eager attention (flash
    attention kernels take no such mask) and no sliding-window layers (whose window a custom mask would replace)."""
    from transformers import DynamicCache

    config = lm.config.get_text_config()
    return (getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
            and not any(DynamicCache(config=lm.config).is_sliding))


def pair_batch(encoded: list[tuple[tuple, tuple]], idx: list[int], pad_id: int, device: str,
               shared_dtype: torch.dtype | None = None) -> PairBatch | SharedPromptBatch:
    """The pairs ``idx`` as a batch: ``SharedPromptBatch`` when ``shared_dtype`` is given (its mask's dtype) and
    each pair's two replies follow the same prompt ids, else ``PairBatch`` (``encode`` cuts a long prompt to fit
    each reply, so the two can differ)."""
    if shared_dtype is not None and all(encoded[i][0][0] == encoded[i][1][0] for i in idx):
        b = collate_shared([(encoded[i][0][0], encoded[i][0][1], encoded[i][1][1]) for i in idx], pad_id, shared_dtype)
        packed = Packed(*(t.to(device) for t in dataclasses.astuple(b.packed)))
        return SharedPromptBatch(b.input_ids.to(device), packed, b.targets.to(device), b.reply_mask.to(device),
                                 b.n_chosen)
    b = collate([encoded[i][0] for i in idx] + [encoded[i][1] for i in idx], pad_id)
    return PairBatch(*(t.to(device) for t in dataclasses.astuple(b)))


def batch_logps(model_fn, batch: PairBatch | SharedPromptBatch, average: bool) -> Tensor:
    """(2, b) log π(chosen), log π(rejected) per pair, sums over reply tokens (IPO: means), from
    ``model_fn(input_ids, attention_mask, n_reply, temperature, packed=…)``: the policy's forward (its logits)
    or the reference's logits."""
    if isinstance(batch, PairBatch):
        out = model_fn(batch.input_ids, batch.attention_mask, batch.n_reply, 1.0)
        logits = out[0] if isinstance(out, tuple) else out  # forward returns (logits, values)
        return sequence_logps(logits, batch, average).view(2, -1)
    out = model_fn(batch.input_ids, None, 0, 1.0, packed=batch.packed)
    logits = out[0] if isinstance(out, tuple) else out  # (b, C + R, V)
    lp = L.logprobs_from_logits(logits, batch.targets)  # (b, C + R)
    reduce = L.masked_mean if average else L.masked_sum
    C = batch.n_chosen
    return torch.stack([reduce(lp[:, :C], batch.reply_mask[:, :C], dim=-1),
                        reduce(lp[:, C:], batch.reply_mask[:, C:], dim=-1)])


@torch.no_grad()
def reference_logps(model: PolicyWithValue, encoded, *, batch_size: int, pad_id: int, device: str,
                    average: bool, shared_dtype: torch.dtype | None = None) -> Tensor:
    """(N, 2) reference log-probs of every pair's chosen and rejected reply: the base with adapters off, once.

    Under torchrun each rank computes a contiguous 1/N of the pairs and every rank gathers all N: a step's share
    can be any pairs of the epoch's order, so each rank needs them all, and this costs 1/N of the forwards of
    computing all on every rank (and the checkpoint holds the same tensor as one process's). The last share is
    padded with repeats of the last pair, so every rank runs as many forwards — FSDP's gathers are collectives.
    """
    n, size = len(encoded), dist.world_size()
    per = -(-n // size)  # ceil
    mine = [min(i, n - 1) for i in range(dist.rank() * per, (dist.rank() + 1) * per)]
    out = []
    for lo in range(0, per, batch_size):
        batch = pair_batch(encoded, mine[lo : lo + batch_size], pad_id, device, shared_dtype)
        out.append(batch_logps(model.reference_logits, batch, average).T.cpu())  # (b, 2): [chosen, rejected]
    return dist.all_gather_rows(torch.cat(out))[:n]  # (N, 2)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The pair order of an epoch: a pure function of (seed, epoch), so a resumed run sees what a straight one would."""
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def dpo_step(model: PolicyWithValue, optimizer, batch: PairBatch | SharedPromptBatch, ref: Tensor, weight: Tensor, *, beta: float,
             loss_type: str, label_smoothing: float, max_grad_norm: float, step: int,
             wrapped: torch.nn.Module | None = None) -> dict[str, float]:
    """One update on b pairs. ref: (b, 2) cached reference log-probs; weight: (b,). Returns the step's metrics.

    wrapped: the DDP / FSDP module to run the forward through (train/dist.py); None: ``model``. Under torchrun the
    b pairs are this rank's share of the step's; loss and metrics are the whole step's.
    """
    forward = wrapped if wrapped is not None else model
    logps = batch_logps(forward, batch, average=loss_type == "ipo")  # (2, b): chosen, rejected
    # Σ w·l over this rank's pairs / (all ranks' Σ w / N): with DDP / FSDP averaging the gradients, one process's
    # update on all the step's pairs (losses.py: exact accumulation); one process: the plain weighted mean.
    loss, stats = L.dpo_loss(logps[0], logps[1], ref[:, 0], ref[:, 1], beta, loss_type, label_smoothing,
                             weight=weight, normalizer=dist.global_count(weight.sum()))
    total = dist.all_mean(loss.detach())  # the step's loss (each rank's term is N × its share of it)
    if not torch.isfinite(total):  # every rank sees the same total, so all stop together
        raise RlhfkitError(f"step {step}: non-finite DPO loss (NaN or inf); the last good checkpoint is kept")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
    optimizer.step()
    # per-pair statistics: means over all the step's pairs (shares may differ in size by one)
    sums = dist.all_sum(torch.stack([*(v.sum() for v in stats.values()), weight.new_tensor(float(len(weight)))]).double())
    return {"dpo/loss": total.item(), **{k: (sums[i] / sums[-1]).item() for i, k in enumerate(stats)},
            "policy/grad_norm": float(grad_norm)}


def _fingerprint(pairs: list[Pair], cfg) -> str:
    """What a checkpoint must share with the run resuming it: the pairs and every setting that changes what is
    computed (more epochs or another save interval continue the same run)."""
    from rlhfkit.train.reward_data import fingerprint

    return fingerprint(pairs, dataclasses.replace(cfg, epochs=1, save_every=1))


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer, ref: Tensor, step: int, config: dict,
                    history: list[dict], fingerprint: str) -> None:
    """Write ``folder`` atomically: a crash keeps the last complete checkpoint.

    ``model``: the PolicyWithValue or its DDP / FSDP wrapper; under torchrun every rank calls this, as ppo's
    checkpoint (FSDP: the trainer state sharded in folder/dcp; the trained weights in full from rank 0).
    """
    import yaml
    from safetensors.torch import save_file

    from rlhfkit.train.ppo import save_trained

    trained = dist.trainable_state(model)  # collective: full tensors on rank 0
    with dist.atomic_folder(folder) as tmp:
        opt_state = dist.save_trainer(tmp, model, optimizer)  # collective; None when sharded
        if dist.is_main():
            save_trained(tmp, dist.inner(model), trained, config["model"])  # ppo's layout
            save_file({"ref_logps": ref.contiguous()}, str(tmp / REF_FILE))
            torch.save({"step": step, "optimizer": opt_state, "world_size": dist.world_size(), "history": history,
                        "fingerprint": fingerprint}, tmp / "trainer_state.pt")
            (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    dist.barrier()  # no rank runs on before the folder is complete


def load_pairs_checked(spec: str) -> list[Pair]:
    """Pairs with weight > 0; bad ones refused naming file:line (Pair.from_dict) or the pair's number."""
    from rlhfkit.data.formats import load_pairs
    from rlhfkit.train.reward_data import check_pairs

    return check_pairs(load_pairs(spec))


def subset(pairs: list[Pair], max_pairs: int, seed: int) -> list[Pair]:
    """At most ``max_pairs`` of ``pairs`` (0 = all), drawn at random with ``seed``, in their file order."""
    if not max_pairs or len(pairs) <= max_pairs:
        return pairs
    keep = np.sort(np.random.default_rng(seed).choice(len(pairs), size=max_pairs, replace=False))
    return [pairs[i] for i in keep]


def run_dpo(cfg) -> dict:
    """The ``dpo`` stage: trains RUN_DIR/policy from pairs. Returns a summary."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from safetensors.torch import load_file

    from rlhfkit.config import save_resolved
    from rlhfkit.generate import eos_ids
    from rlhfkit.models.load import pick_device, resolve_dtype
    from rlhfkit.models.policy import build_policy
    from rlhfkit.train.metrics import MetricsLog
    from rlhfkit.train.ppo import policy_output, restore_trainer, seed_everything

    run_dir = Path(cfg.run_dir)
    out = policy_output(run_dir, resume=cfg.resume, force=cfg.force)
    spec = cfg.pairs or str(run_dir / "pairs.jsonl")
    pairs = load_pairs_checked(spec)  # before anything is written: bad input leaves the run directory as it was
    pairs = subset(pairs, cfg.max_pairs, cfg.seed)
    fingerprint = _fingerprint(pairs, cfg)
    state = None
    if cfg.resume:
        state = torch.load(out / "trainer_state.pt", weights_only=False)
        if state["fingerprint"] != fingerprint:
            raise RlhfkitError(f"{out}: the checkpoint was trained on other pairs or settings; use --force to start over")

    device = pick_device(cfg.device)
    started = not dist.is_initialized()
    world = dist.init(device, cfg.dist_timeout)  # one process (no torchrun): World(0, 1)
    device = dist.device_of(world, device)
    dist.check_divisible("batch_size", cfg.batch_size, "pairs")  # each rank takes 1/N of every step's pairs
    steps_per_epoch = math.ceil(len(pairs) / cfg.batch_size)
    last_step = len(pairs) - (steps_per_epoch - 1) * cfg.batch_size  # pairs in an epoch's last step
    dist.check_step_fills_ranks(last_step, "pairs", len(pairs))
    seed_everything(cfg.seed)
    dtype = resolve_dtype(cfg.dtype, device)
    model, tokenizer = build_policy(cfg.model, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, device=device,
                                    lora_layers=cfg.lora_layers, dtype=dtype)
    if world.distributed and cfg.strategy == "fsdp":
        model.prefix.n_frozen = 0  # the frozen-block cache swaps blocks out of a forward: not with sharded blocks
    # DPO never uses the value head (trainable, so the checkpoint stays ppo's layout): DDP must not wait for it
    wrapped = dist.wrap(model, cfg.strategy, device, forward_methods=("reference_logits", "frozen_prefix"),
                        find_unused=True)
    eos_id, pad_id = eos_ids(tokenizer, model.lm)[0], tokenizer.pad_token_id
    # each pair's prompt runs once, for both replies, where the model takes the custom mask (SharedPromptBatch)
    shared_dtype = next(model.lm.parameters()).dtype if shared_prompt_ok(model.lm) else None
    enc = dict(eos_id=eos_id, system_prompt=cfg.sampling.system_prompt, max_length=cfg.max_length)
    encoded = [(encode(tokenizer, p.prompt, p.chosen, **enc), encode(tokenizer, p.prompt, p.rejected, **enc))
               for p in pairs]
    weights = torch.tensor([p.weight for p in pairs], dtype=torch.float32)
    # after wrapping: FSDP2 replaces the parameters by their shards
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, eps=1e-5)
    config = {**dataclasses.asdict(cfg), "algorithm": "dpo"}
    console = Console(stderr=True)
    t_start = time.perf_counter()
    if state is not None:
        restore_trainer(out, wrapped, optimizer, state)
        ref = load_file(str(out / REF_FILE))["ref_logps"]
        start, history = state["step"], state["history"]
    else:
        ref = reference_logps(model, encoded, batch_size=cfg.batch_size, pad_id=pad_id, device=device,
                              average=cfg.loss_type == "ipo", shared_dtype=shared_dtype)
        start, history = 0, []
    log = MetricsLog(run_dir, "dpo") if world.main else None  # metrics and files: rank 0 only
    if log and state is not None:
        log.resume_from(start - 1)
    elif log:
        log.start_fresh()
    if world.main:
        save_resolved(run_dir, "dpo", cfg)

    total = cfg.epochs * steps_per_epoch
    columns = [TextColumn("dpo"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("loss {task.fields[loss]:.3f}  acc {task.fields[acc]:.0%}"), TimeElapsedColumn(),
               TimeRemainingColumn()]
    hp = dict(beta=cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing,
              max_grad_norm=cfg.max_grad_norm)
    try:
        with Progress(*columns, console=console, disable=not world.main) as bar:
            task = bar.add_task("dpo", total=total, completed=start, loss=float("nan"), acc=float("nan"))
            for step in range(start, total):
                epoch, k = divmod(step, steps_per_epoch)
                idx = epoch_order(len(pairs), cfg.seed, epoch)[k * cfg.batch_size : (k + 1) * cfg.batch_size]
                idx = dist.shard(idx, "a step's pairs", even=False)  # this rank's share (the last step may be short)
                batch = pair_batch(encoded, idx, pad_id, device, shared_dtype)
                stats = dpo_step(model, optimizer, batch, ref[idx].to(device), weights[idx].to(device), step=step,
                                 wrapped=wrapped, **hp)
                history.append(stats)
                if log:
                    log.log(step, stats)
                bar.update(task, advance=1, loss=stats["dpo/loss"], acc=stats["rewards/accuracies"])
                if (step + 1) % cfg.save_every == 0 or step + 1 == total:
                    save_checkpoint(out, wrapped, optimizer, ref, step + 1, config, history, fingerprint)
    finally:
        if log:
            log.close()
        if started:
            dist.close()
    first, last = history[0], history[-1]
    window = history[-steps_per_epoch:]  # the last epoch's steps
    return {"path": str(out), "algorithm": "dpo", "pairs": len(pairs), "pairs_spec": spec, "steps": len(history),
            "seconds": time.perf_counter() - t_start, "dtype": dtype, "loss_first": first["dpo/loss"],
            "loss_last": last["dpo/loss"],
            "accuracy_last_epoch": float(np.mean([h["rewards/accuracies"] for h in window])),
            "margin_last_epoch": float(np.mean([h["rewards/margins"] for h in window]))}
