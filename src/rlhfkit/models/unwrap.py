"""Sampling from a LoRA policy through plain layers: the adapters folded into copies of the weights for the
duration of a ``with`` block, then everything put back exactly as it was.

Why: peft computes a LoRA layer as base(x) + B(A(x))·s, each a separate call with its own checks, on every
decode step. At the batch sizes of RL rollouts that overhead is a large part of a step (on the peers' 3.7M
GPT-2 most of it). For sampling — no gradients, the weights fixed — the layer can be the base layer holding
W + s·B·A instead (peft's ``merge`` does that in place, but its ``unmerge`` subtracts the delta again, which
does not give W back bit for bit; the reference is W, so here the original tensors are kept and restored).

Only float32 (or float64) weights are folded: folding a small adapter delta into bfloat16 weights rounds it to
the weights' 8 bits of mantissa, so the sampler would draw from a visibly different policy than the one PPO
computes log-probs for. In float32 the sampled distribution differs from the unmerged forward by rounding
(≤ ~1e-5 in log-prob; PPO reports it as rollout/sampler_gap). Anything this does not cover — other LoRA
variants, merged or several active adapters, FSDP-sharded weights, a model without peft — runs as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_MERGEABLE = ("float32", "float64")


def fsdp_parts(module) -> list:
    """The submodules of ``module`` (itself included) that FSDP2 shards: it owns where their weights live."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in module.modules() if isinstance(m, FSDPModule)]


def _lora_layers(lm, fold: bool) -> list[tuple[str, object]] | None:
    """(name, layer) of every LoRA layer of ``lm`` when all of them can be swapped for their base layers (and,
    with ``fold``, their adapters folded into the weights); None otherwise."""
    import torch

    try:
        from peft.tuners.lora import LoraLayer

        from rlhfkit.models.lora import single_adapter
    except ImportError:  # pragma: no cover - peft is a dependency
        return None
    if fsdp_parts(lm):  # FSDP owns where its weights live: not ours to swap
        return None
    layers = [(n, m) for n, m in lm.named_modules() if isinstance(m, LoraLayer)]
    if not layers:
        return None
    for _, m in layers:
        base = m.get_base_layer()
        weight = getattr(base, "weight", None)
        if (single_adapter(m) is None or not isinstance(weight, torch.nn.Parameter)
                or type(weight.data) is not torch.Tensor  # an FSDP DTensor or another subclass: leave it alone
                or (fold and str(weight.dtype).removeprefix("torch.") not in _MERGEABLE)):
            return None
    return layers


def _folded(layer, weight):
    """W + s·B·A as a new tensor, in one addmm (peft's get_delta_weight forms B·A, transposes and scales it first:
    the same sum, three more passes over the weight). GPT-2's Conv1D stores W as (in, out): W + s·Aᵀ·Bᵀ."""
    import torch

    name = layer.active_adapters[0]
    a, b = layer.lora_A[name].weight, layer.lora_B[name].weight  # (r, in), (out, r)
    if a.dtype != weight.dtype or b.dtype != weight.dtype:
        return weight + layer.get_delta_weight(name).to(weight.dtype)
    s = layer.scaling[name]
    return torch.addmm(weight, a.T, b.T, alpha=s) if layer.fan_in_fan_out else torch.addmm(weight, b, a, alpha=s)


@contextlib.contextmanager
def plain_layers(lm, *, adapters: bool = True) -> Iterator[bool]:
    """Inside the block every LoRA layer of ``lm`` is replaced by its base layer, whose weight is W + s·B·A
    (``adapters`` True: the policy) or W itself (False: the reference, exactly). Yields whether it did;
    when it cannot (see the module doc) the model runs unchanged — with ``adapters`` False the caller must
    then switch the adapters off itself. For no-grad forward passes only: the folded weights are copies."""
    import torch

    layers = _lora_layers(lm, fold=adapters)
    if layers is None:
        yield False
        return
    swapped = []  # (parent, attribute, lora layer, base layer, original weight)
    try:
        with torch.no_grad():
            for name, layer in layers:
                parent_name, _, attr = name.rpartition(".")
                parent = lm.get_submodule(parent_name)
                base = layer.get_base_layer()
                original = base.weight.data
                if adapters:
                    base.weight.data = _folded(layer, original)
                setattr(parent, attr, base)
                swapped.append((parent, attr, layer, base, original))
        yield True
    finally:
        for parent, attr, layer, base, original in reversed(swapped):
            base.weight.data = original  # the very tensor it had: bit for bit
            setattr(parent, attr, layer)


@contextlib.contextmanager
def as_reference(lm) -> Iterator[None]:
    """Inside the block ``lm`` (a peft model) computes the frozen reference, the base with the adapters off:
    through the plain base layers where ``plain_layers`` applies (no peft call per layer), else peft's switch."""
    with contextlib.ExitStack() as stack:
        if not stack.enter_context(plain_layers(lm, adapters=False)):
            stack.enter_context(lm.disable_adapter())
        yield


def inner(lm):
    """The transformers model inside a peft wrapper (``lm`` itself otherwise), adapters and all: the same function
    without peft's own forward around it (~1 ms per decode step on the peers' tiny GPT-2, a tenth of the step)."""
    get = getattr(lm, "get_base_model", None)
    return get() if callable(get) else lm
