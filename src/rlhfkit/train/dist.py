"""Data parallelism on PyTorch's own ``torch.distributed``: one process per device, launched by ``torchrun``.

Nothing here is a home-made engine: the process group, DDP and FSDP2 (``fully_shard``) are PyTorch's;
this module only reads torchrun's environment, wraps the policy, and sums statistics across ranks.
Without torchrun's environment (``WORLD_SIZE`` unset or 1) every helper is the identity of one process,
so single-process runs take exactly the code path they always did.

Strategies (``strategy`` in the trainers' configs):
  ddp   every rank holds the whole model; DDP all-reduces the gradients of what trains (the LoRA adapters and
        the value head, or every weight in full fine-tuning) — frozen base weights are neither broadcast
        nor synchronised.
  fsdp  FSDP2: ``fully_shard`` on each decoder block, then on the whole policy (PyTorch's FSDP2 tutorial);
        each rank stores 1/N of every weight and gathers a block's weights around its forward. It keeps the
        ``PeftModel`` intact, so the reference = adapters off still works (FSDP1 does not: TRL's issue).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.models.unwrap import fsdp_parts

STRATEGIES = ("ddp", "fsdp")
START_TIMEOUT_S = 300.0
"""Default seconds the ranks wait for each other (process-group start, then every collective)."""


@dataclass(frozen=True)
class World:
    """Where this process sits: rank among ``size`` processes, and the device it drives."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that prints, logs metrics and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init(device: str, timeout_s: float = START_TIMEOUT_S) -> World:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA) and return this process's World.

    ``device``: the stage's resolved device ('cpu', 'cuda', 'mps'); under torchrun each rank takes
    cuda:LOCAL_RANK. ``timeout_s`` bounds the start and every later collective, so a rank that never
    arrives fails the run with an error instead of hanging it.
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if tdist.is_initialized():
        return World(rank, size, local_rank)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("mps"):
        raise RlhfkitError("device: torch.distributed does not run on mps; use cpu or cuda under torchrun")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    try:
        tdist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as exc:  # a missing peer surfaces here after timeout_s (DistStoreError, RuntimeError)
        raise RlhfkitError(f"torch.distributed: rank {rank} of {size} could not start the process group "
                           f"({backend}) within {timeout_s:.0f} s: {exc}") from None
    return World(rank, size, local_rank)


def device_of(world: World, device: str) -> str:
    """The device this rank drives: cuda:LOCAL_RANK under torchrun on CUDA, else ``device``."""
    return f"cuda:{world.local_rank}" if world.distributed and device.startswith("cuda") else device


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def close() -> None:
    """Tear the process group down. On a normal exit every rank first meets at a barrier, which on gloo also waits
    for the rank's earlier asynchronous work (FSDP's reduce-scatters): work still holding tensors when the interpreter
    finalizes aborts the rank at exit ("terminate called without an active exception", seen once in CI under FSDP).
    Not while an exception propagates (called from a ``finally``): a rank that failed alone would wait out the
    collective timeout for peers that never come, and the barrier's error would replace the real one."""
    if tdist.is_initialized():
        if _on() and sys.exc_info()[0] is None:
            tdist.barrier()
        tdist.destroy_process_group()


def _on() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def rank() -> int:
    return tdist.get_rank() if _on() else 0


def world_size() -> int:
    return tdist.get_world_size() if _on() else 1


def is_main() -> bool:
    return rank() == 0


def _comm(t: Tensor) -> Tensor:
    """A copy of ``t`` on the device the backend communicates from (nccl: this rank's GPU; gloo: where it is)."""
    if tdist.get_backend() == "nccl":
        return t.detach().to(torch.device("cuda", torch.cuda.current_device()), copy=True)
    return t.detach().clone()


def _all_reduce(t: Tensor, op) -> Tensor:
    if not _on():
        return t
    out = _comm(t)
    tdist.all_reduce(out, op=op)
    return out.to(t.device)


def all_sum(t: Tensor) -> Tensor:
    """Σ over ranks of ``t`` (a new tensor on ``t``'s device; ``t`` itself on one process). No autograd through it."""
    return _all_reduce(t, tdist.ReduceOp.SUM)


def all_mean(t: Tensor) -> Tensor:
    """Mean over ranks of ``t`` (equal weight per rank)."""
    return all_sum(t) / world_size() if _on() else t


def all_max(t: Tensor) -> Tensor:
    """Max over ranks of ``t``."""
    return _all_reduce(t, tdist.ReduceOp.MAX)


def all_gather_rows(t: Tensor) -> Tensor:
    """(N·b, …) the ranks' ``t`` (b, …) stacked in rank order; every rank must pass the same shape."""
    if not _on():
        return t
    mine = _comm(t)
    parts = [torch.empty_like(mine) for _ in range(world_size())]
    tdist.all_gather(parts, mine)
    return torch.cat(parts).to(t.device)


def mean_stats(stats: dict[str, float], maxima: Sequence[str] = ()) -> dict[str, float]:
    """Per-rank metrics → the run's: the mean over ranks (each rank has the same number of rollouts and
    minibatches, so a mean of means is the global mean), the max for the names in ``maxima``."""
    if not _on():
        return stats
    keys = sorted(stats)
    v = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64)
    mean, top = all_mean(v), all_max(v)
    return {k: (top[i] if k in maxima else mean[i]).item() for i, k in enumerate(keys)}


def shard(items: Sequence, what: str = "batch", even: bool = True) -> list:
    """This rank's contiguous share of a global batch (rank r gets rows r·b … r·b + b − 1, b = len / N).

    ``even=False`` (a batch the data cut short, e.g. an epoch's last): shares differ by at most one row;
    a loss normalised by the global count (``global_count``) keeps the update exact.
    Every rank still needs a row: DDP and FSDP wait for every rank's backward.
    """
    n, size = len(items), world_size()
    if even and n % size:
        raise RlhfkitError(f"{what} of {n} does not split evenly over {size} processes: make it a multiple of {size}")
    if n < size:
        raise RlhfkitError(f"{what} of {n} cannot give each of {size} processes a row: make it at least {size}")
    lo, hi = (n * r // size for r in (rank(), rank() + 1))
    return list(items[lo:hi])


def check_divisible(name: str, n: int, what: str) -> None:
    """``name`` (a global batch size of ``n`` ``what``) must split evenly over the processes: the trainers'
    start-up check, so a run fails before it loads anything."""
    size = world_size()
    if n % size:
        raise RlhfkitError(f"{name}: {n} {what} do not split over {size} processes; make it a multiple of {size}")


def check_step_fills_ranks(smallest: int, what: str, total: int) -> None:
    """Every rank takes a share of every step: the smallest step (an epoch's last batch, or the shortest of
    length-grouped batches) must hold at least one of ``what`` per process. ``total``: how many there are."""
    size = world_size()
    if smallest < size:
        raise RlhfkitError(f"batch_size: a step would have {smallest} {what} for {size} processes; pick a batch size "
                           f"that leaves at least {size} ({total} {what})")


def global_count(n: Tensor | float) -> Tensor:
    """The ``normalizer`` of a loss summed over this rank's share (losses.py: exact accumulation): the global
    count (tokens, pairs, or their weight) divided by N, because DDP and FSDP average the ranks' gradients —
    so the update is the one-process update on the whole batch. One process: ``n`` itself."""
    t = torch.as_tensor(n, dtype=torch.float32)
    return all_sum(t) / world_size() if _on() else t


def rank_seed(seed: int, iteration: int) -> int:
    """The sampling seed of (seed, rank, iteration). Rank 0 keeps the one-process formula, so a one-process
    run samples exactly as before; other ranks draw independent streams."""
    base = seed * 1_000_003 + iteration
    r = rank()
    if r == 0:
        return base
    import numpy as np

    return int(np.random.SeedSequence([seed, r, iteration]).generate_state(1, np.uint64)[0] % (2**63 - 1))


# --------------------------------------------------------------------------------------------------
# Wrapping the policy
# --------------------------------------------------------------------------------------------------


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of ``model`` (the one ModuleList as long as the config's num_hidden_layers)."""
    cfg = next(m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "get_text_config"))
    n = cfg.get_text_config().num_hidden_layers
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(lists) != 1:
        raise RlhfkitError(f"{type(model).__name__}: cannot find its decoder blocks for FSDP")
    return lists[0]


def wrap(model: nn.Module, strategy: str, device: str, forward_methods: Sequence[str] = (),
         find_unused: bool = False) -> nn.Module:
    """The module to call for training forwards: ``model`` itself on one process, DDP(model) or FSDP2-sharded.

    DDP keeps ``model`` unchanged inside (``.module``); FSDP2 shards ``model`` in place and returns it, and
    registers ``forward_methods`` (methods other than forward that run the model, e.g. the reference's) so
    they gather the weights too. ``find_unused``: DDP must not wait for gradients of trainable weights that
    some losses leave out (the value head under RLOO / GRPO).
    """
    if not _on():
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        # Only what trains is synchronised: the frozen base is the same checkpoint on every rank, and
        # broadcasting it would cost one copy of the model per rank at start for nothing.
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        frozen += [n for n, _ in model.named_buffers()]
        DDP._set_params_and_buffers_to_ignore_for_model(model, frozen)
        ids = [torch.device(device).index] if device.startswith("cuda") else None
        return DDP(model, device_ids=ids, find_unused_parameters=find_unused)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        for block in decoder_blocks(model):
            fully_shard(block)
        fully_shard(model)
        for name in forward_methods:
            register_fsdp_forward_method(model, name)
        return model
    raise RlhfkitError(f"strategy: must be one of {', '.join(STRATEGIES)}, got {strategy!r}")


def inner(wrapped: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper (FSDP2 shards in place: the module itself)."""
    return getattr(wrapped, "module", wrapped)


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Within: every FSDP2-sharded part of ``model`` holds its full weights, gathered once on entry.

    Generation runs a forward per new token, and ranks whose completions end early stop stepping before
    the others: with per-forward gathers they would wait forever for peers' collectives. Gathering once
    per ``generate`` call makes the decode loop free of collectives (and saves a gather per block per
    token). A no-op for unsharded models.
    """
    parts = fsdp_parts(model)
    if not parts:
        yield
        return
    # FSDP2 picks its root at the first forward; the decode loop calls the LM inside the root, so settle
    # the root now (else the first block called would take that role and the next root forward fails).
    parts[0]._get_fsdp_state()._lazy_init()
    for m in parts:
        m.set_reshard_after_forward(False)
        m.unshard()
    try:
        yield
    finally:
        for m in parts:
            m.reshard()
            m.set_reshard_after_forward(True)


def trainable_state(wrapped: nn.Module, everywhere: bool = False) -> dict[str, Tensor]:
    """Full (unsharded) tensors of what trains, on CPU, keyed as in the unwrapped model; every rank must call it.

    Under FSDP only rank 0 receives them (the others: {}), unless ``everywhere`` (a copy every rank restores
    later, e.g. the best weights so far)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    model = inner(wrapped)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if not _on():
        return {n: t.detach().cpu().clone() for n, t in model.state_dict().items() if n in names}
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=not everywhere))
    return {n: t.detach().cpu().clone() if everywhere else t for n, t in state.items() if n in names}


def optimizer_state(wrapped: nn.Module, optimizer) -> dict:
    """The optimizer's full state (gathered from FSDP shards); every rank must call it."""
    if not _on():
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(inner(wrapped), optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(wrapped: nn.Module, optimizer, state: dict) -> None:
    """Put a full optimizer state (``optimizer_state``) back, resharding it for FSDP."""
    if not _on():
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # strict=False: a trainable weight no loss reached (the value head under DPO, RLOO, GRPO) has no Adam state yet,
    # in the checkpoint as in the optimizer it is restored into
    set_optimizer_state_dict(inner(wrapped), optimizer, state,
                             options=StateDictOptions(full_state_dict=True, strict=False))


def load_trainable(wrapped: nn.Module, state: dict[str, Tensor]) -> None:
    """Full tensors of what trains → the (possibly sharded) model."""
    model = inner(wrapped)
    if not _on():
        model.load_state_dict(state, strict=False)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def full_copy(wrapped: nn.Module, build: Callable[[], nn.Module]) -> nn.Module | None:
    """The whole model, to write on rank 0 (None on the others); every rank must call it.

    One process or DDP: the model itself (every rank holds it whole). FSDP2: its shards gathered to rank 0
    (``get_model_state_dict``, full, offloaded to CPU) into ``build()`` — a fresh unwrapped model of the
    same structure — because a sharded module's ``state_dict`` is shards even while gathered.
    """
    model = inner(wrapped)
    if not _on():
        return model
    if not fsdp_parts(model):
        return model if is_main() else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main():
        return None
    fresh = build()
    fresh.load_state_dict(state)
    return fresh


def barrier() -> None:
    if _on():
        tdist.barrier()


# --------------------------------------------------------------------------------------------------
# Sharded checkpoints (FSDP): torch.distributed.checkpoint, each rank writing its own shards
# --------------------------------------------------------------------------------------------------

SHARDED_DIR = "dcp"
"""The checkpoint's sub-folder of DCP shards (one ``__R_0.distcp`` file per rank, and ``.metadata``)."""


def sharded(wrapped: nn.Module) -> bool:
    """FSDP2 under torchrun: the trainer state is saved as shards, not gathered to rank 0."""
    return _on() and bool(fsdp_parts(inner(wrapped)))


@contextlib.contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """data.io.atomic_directory for every rank: rank 0 makes the temp folder and tells the others its path (so the
    ranks must share a filesystem); it replaces ``folder`` only after every rank's body is done. Every rank calls it."""
    from rlhfkit.data.io import atomic_directory

    if not _on():
        with atomic_directory(folder) as tmp:
            yield tmp
        return
    if is_main():
        with atomic_directory(folder) as tmp:
            tdist.broadcast_object_list([str(tmp)], src=0)
            yield tmp
            tdist.barrier()  # every rank's shards are written: only now the rename
    else:
        path = [None]
        tdist.broadcast_object_list(path, src=0)
        yield Path(path[0])
        tdist.barrier()


def _dcp_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # what trains only (the frozen base is the model's own checkpoint); strict=False as load_optimizer_state
    return StateDictOptions(ignore_frozen_params=True, strict=False)


def save_trainer(folder: Path, wrapped: nn.Module, optimizer) -> dict | None:
    """The trained weights' and the optimizer's state for a checkpoint being written to ``folder`` (atomic_folder's
    temp); every rank calls it. FSDP: each rank writes its shards to folder/SHARDED_DIR with ``dcp.save`` and this
    returns None; else the full optimizer state (optimizer_state) for rank 0 to write."""
    if not sharded(wrapped):
        return optimizer_state(wrapped, optimizer)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(inner(wrapped), optimizer, options=_dcp_options())
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=Path(folder) / SHARDED_DIR)
    return None


def load_trainer(folder: Path, wrapped: nn.Module, optimizer, saved_size: int) -> bool:
    """save_trainer's shards in ``folder`` back into the sharded model and optimizer (``dcp.load`` then
    ``set_state_dict``); every rank calls it. False (nothing loaded) when ``folder`` holds no shards: the caller
    loads the full state instead. ``saved_size``: the world size that wrote them — resume is exact only at the
    same size (each rank's sampling stream depends on its rank), so another size is refused."""
    shards = Path(folder) / SHARDED_DIR
    if not shards.is_dir():
        return False
    if saved_size != world_size() or not sharded(wrapped):
        raise RlhfkitError(f"{folder}: a checkpoint sharded by FSDP over {saved_size} processes resumes only with "
                           f"--strategy fsdp over {saved_size} processes; this run has {world_size()}")
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(inner(wrapped), optimizer, options=_dcp_options())
    state = {"model": model_sd, "optimizer": optim_sd}
    # the partial load below must not hide a damaged checkpoint: every weight, and the optimizer's state, must be there
    saved = set(dcp.FileSystemReader(str(shards)).read_metadata().state_dict_metadata)
    missing = [f"model.{k}" for k in model_sd if f"model.{k}" not in saved]
    if not any(k.startswith("optimizer.state.") for k in saved):
        missing.append("optimizer.state")
    if missing:
        raise RlhfkitError(f"{shards}: the checkpoint lacks {', '.join(missing[:3])}"
                           f"{f' and {len(missing) - 3} more' if len(missing) > 3 else ''}; use --force to start over")
    # in place, into this rank's shards. Partial: a trainable weight no loss reached (the value head under DPO, RLOO,
    # GRPO) has no Adam state in the checkpoint, while get_state_dict made one for the fresh optimizer (a zero step)
    dcp.load(state, checkpoint_id=shards,
             planner=dcp.DefaultLoadPlanner(allow_partial_load=True))
    set_state_dict(inner(wrapped), optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=_dcp_options())
    return True
