"""LoRA layers that add the adapter's product inside the base layer's output, in one GEMM.

peft computes a LoRA linear layer as ``base(x) + lora_B(lora_A(x)) · s``: after the two small matmuls come two
passes over the (tokens, out) output — the scaling, then the sum — and in the backward a third (the gradient
scaled by s before ``lora_B``'s). ``FusedLoraLinear`` computes the same sum as y = base(x), then
``y.addmm_(x·Aᵀ, Bᵀ, alpha=s)``: the scaling is applied to the (tokens, r)·(r, out) product inside the GEMM and the
sum accumulated into y in place; autograd's addmm backward scales only (tokens, r) and (r, out) tensors. On the
peers' 3.7M GPT-2 (LoRA r = 16 on every linear layer, one float32 CPU thread, 2-core AMD EPYC with AVX-512) a
GRPO step's update phase took 0.168 s instead of 0.185 (bench/lora.py; on SmolLM2, LoRA on 8 of 30 blocks, no
difference). Outputs agree with peft's to float32 rounding (the product is scaled before it is added, not after).

The fused path covers what rlhfkit builds: one active vanilla adapter (no DoRA or other variant, no LoRA bias, no
dropout), an ``nn.Linear`` or GPT-2 ``Conv1D`` base, input, adapters and base weights in one dtype, no autocast.
Anything else — a bfloat16 base under float32 adapters, autocast (the reward model's bfloat16), adapters switched
off (the reference), merged, several adapters, peft's ``adapter_names`` — runs peft's own forward, unchanged. The
class is a subclass of peft's ``lora.Linear``, swapped in on the instance: saving, loading, merging and
``isinstance`` checks see peft's layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import Tensor, nn


def single_adapter(layer) -> str | None:
    """The name of the one active adapter of peft LoRA layer ``layer`` when all it adds is s·B·A·x: not merged or
    switched off, no variant (DoRA …), no LoRA bias; None otherwise. What both this module's fused forward and
    ``unwrap.plain_layers``' folding of W + s·B·A need."""
    if (layer.merged or layer.disable_adapters or len(layer.active_adapters) != 1 or layer.lora_variant
            or any(layer.lora_bias.values())):
        return None
    name = layer.active_adapters[0]
    return name if name in layer.lora_A else None


def _plain_base(module: nn.Module) -> bool:
    """nn.Linear or GPT-2's Conv1D (x·W + b, W stored in × out) exactly: forwards this module computes itself."""
    return type(module) is nn.Linear or (type(module).__name__ == "Conv1D" and getattr(module, "bias", None) is not None)


class FusedLoraLinear(LoraLinear):
    """peft's ``lora.Linear`` with the adapter's product added in one in-place addmm (see the module doc)."""

    def _fusable(self, x: Tensor, args: tuple, kwargs: dict) -> str | None:
        """The active adapter's name when the fused path computes this call exactly as peft would; else None."""
        name = None if args or kwargs else single_adapter(self)
        if name is None:
            return None
        if torch.is_autocast_enabled(x.device.type):  # autocast casts the matmuls, not the in-place sum: peft's way
            return None
        if not isinstance(self.lora_dropout[name], nn.Identity):
            return None
        base = self.get_base_layer()
        if not _plain_base(base):
            return None
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        if not (x.dtype == a.dtype == b.dtype == base.weight.dtype):
            return None
        return name

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        name = self._fusable(x, args, kwargs)
        if name is None:
            return super().forward(x, *args, **kwargs)
        base = self.get_base_layer()
        a, b = self.lora_A[name].weight, self.lora_B[name].weight  # (r, in), (out, r)
        x2 = x.reshape(-1, x.shape[-1])  # (N, in)
        # (N, out) as the base layer computes it, as a fresh tensor: the in-place sum must not go into a view
        # (autograd would copy the gradient back through it), and Conv1D.forward returns one
        y = F.linear(x2, base.weight, base.bias) if type(base) is nn.Linear else torch.addmm(base.bias, x2, base.weight)
        y.addmm_(x2 @ a.t(), b.t(), alpha=self.scaling[name])  # y += s·(x·Aᵀ)·Bᵀ
        return y.view(*x.shape[:-1], y.shape[-1])


def with_lora(model: nn.Module, config) -> nn.Module:
    """``model`` wrapped by peft with the adapters ``config`` (a peft ``LoraConfig``) describes, its LoRA linear
    layers fused: every place rlhfkit adds adapters comes through here."""
    from peft import get_peft_model

    from rlhfkit.models.load import quiet_transformers

    with quiet_transformers():  # peft calls a transformers method deprecated in 5.x
        model = get_peft_model(model, config)
    fuse_lora(model)
    return model


def fuse_lora(model: nn.Module) -> int:
    """Make every peft ``lora.Linear`` in ``model`` a ``FusedLoraLinear`` (in place, weights untouched). Returns
    how many layers it changed."""
    changed = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = FusedLoraLinear
            changed += 1
    return changed
