"""Post-training int8 quantisation for CPU serving: per-channel weight-only int8 (default) or torch.ao dynamic int8.

``int8`` — weight-only: each block linear's weight is stored as int8 with one float scale per output
channel (symmetric, step = max|w_row|/127) and multiplied without de-quantising it first by torch's own
``torch._weight_int8pack_mm`` (the kernel torchao's and gpt-fast's int8 weight-only paths call), fed
bfloat16 activations: on this project's AVX2 EPYC its float32-activation path is scalar (~50× slower
than float32 at batch 16), its bfloat16 path vectorised. Activations are never quantised.
``int8-dynamic`` — torch.ao ``quantize_dynamic``: the same int8 weights, and activations quantised to
8 bits per tensor at run time (fbgemm int8×int8 kernels; deprecated in torch in favour of torchao).

Why weight-only is the default, measured on a demo policy (SmolLM2-135M, 8 held-out prompts; per layer:
‖y_int8 − y‖/‖y‖ on the policy's own activations): dynamic int8's error is 5–7% in q/k/o/gate/up, 14% in
v_proj and 20% (up to 43%) in mlp.down_proj, whose input (the SwiGLU product) has outlier channels
30–100× the median channel's size — one 8-bit scale per tensor cannot hold both (Dettmers et al. 2022,
LLM.int8()). KL to the float policy: 77 nats per completion (all dynamic), 15 (down_proj kept float),
37 (the 10 worst layers kept float); weight-only per-channel int8 errs ≤ 2% in every layer: KL 0.19.
Speed: dynamic int8 is the faster kernel at batch 16 (fbgemm), weight-only is faster at batch 1 (a
quarter of the weight bytes to read) — bench/deploy.py prints both. Embeddings and the (tied) output
head stay float in both.

The kernel wants the input width a multiple of 32 (checked on torch 2.13: widths like 12 give wrong
results, 37 crashes); other widths de-quantise the weight per call (correct, slow).

On disk: ``model.int8.safetensors`` holds each quantised weight as int8 plus its float32 per-channel
scales (``NAME.weight_int8``, ``NAME.weight_scale``) and every other tensor as is; its metadata names the
method, and ``load_int8`` rebuilds the same modules. This folder needs rlhfkit to load.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from rlhfkit.data.errors import RlhfkitError

INT8_FILE = "model.int8.safetensors"
INT8_METHODS = ("int8", "int8-dynamic")
KERNEL_WIDTH = 32  # _weight_int8pack_mm's input width must be a multiple of this (see the docstring)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # torch.ao says on every call that it is deprecated (see the module docstring for why it is offered).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def int8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 (out, in), float32 scale (out,)): symmetric per output channel, w ≈ q · scale, |q| ≤ 127."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).tiny)  # an all-zero row keeps scale > 0
    return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


class Int8Linear(nn.Module):
    """y = x · (q · scale)ᵀ + b with q int8 (out, in) and one scale per output channel (weight-only int8)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.register_buffer("weight_int8", q.contiguous())
        self.register_buffer("weight_scale", scale.float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> "Int8Linear":
        return cls(*int8_per_channel(lin.weight), lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (N, in)
        if self.in_features % KERNEL_WIDTH == 0 and x2.shape[0] > 0:
            y = torch._weight_int8pack_mm(x2.to(torch.bfloat16).contiguous(), self.weight_int8,
                                          self.weight_scale.to(torch.bfloat16)).to(x.dtype)  # (N, out)
        else:
            y = x2 @ (self.weight_int8.to(x.dtype) * self.weight_scale.to(x.dtype)[:, None]).T
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _target_linears(model) -> list[str]:
    """Names of the nn.Linear layers inside the transformer blocks (not the output head)."""
    out_head = model.get_output_embeddings()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not out_head]
    if not names:
        kinds = sorted({type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__ or "Conv1D" in type(m).__name__})
        raise RlhfkitError(f"int8 quantisation works on nn.Linear layers; {type(model).__name__} has none "
                           f"(its projections are {', '.join(kinds) or 'of another kind'})")
    return names


def quantize_int8(model, method: str = "int8"):
    """``model`` (float32, CPU) with its block linears replaced by int8 ones (``method`` in INT8_METHODS), in place."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if method not in INT8_METHODS:
        raise RlhfkitError(f"int8 method must be one of {', '.join(INT8_METHODS)}, got {method!r}")
    if next(model.parameters()).dtype != torch.float32:
        raise RlhfkitError("int8 quantisation starts from float32 weights (export with --dtype float32)")
    names = _target_linears(model)
    if method == "int8-dynamic":
        with _quiet():
            return quantize_dynamic(model, {n: per_channel_dynamic_qconfig for n in names}, dtype=torch.qint8, inplace=True)
    for name in names:
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        setattr(holder, child, Int8Linear.from_linear(getattr(holder, child)))
    return model


def _quantized_modules(model) -> dict:
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    return {n: m for n, m in model.named_modules() if isinstance(m, (QLinear, Int8Linear))}


def int8_method(model) -> str:
    kinds = {type(m) for m in _quantized_modules(model).values()}
    if not kinds:
        raise RlhfkitError("the model has no int8 layers (quantise it first)")
    return "int8" if kinds == {Int8Linear} else "int8-dynamic"


def int8_state(model) -> dict:
    """Plain tensors for safetensors: int8 weights + per-channel scales of the quantised linears, the rest as is."""
    state = {}
    qmods = _quantized_modules(model)
    with _quiet():
        for name, mod in qmods.items():
            if isinstance(mod, Int8Linear):
                q, scale, bias = mod.weight_int8, mod.weight_scale, mod.bias
            else:
                w = mod.weight()  # a per-channel qint8 tensor (out, in)
                q, scale, bias = w.int_repr(), w.q_per_channel_scales().float(), mod.bias()
            state[f"{name}.weight_int8"] = q.contiguous()
            state[f"{name}.weight_scale"] = scale.contiguous()
            if bias is not None:
                state[f"{name}.bias"] = bias.detach().contiguous()
    inside = tuple(f"{n}." for n in qmods)
    ptrs: set[int] = set()
    for key, t in model.state_dict().items():
        if key.startswith(inside) or not hasattr(t, "data_ptr") or t.is_quantized:
            continue
        if t.data_ptr() in ptrs:  # tied weights (lm_head = embed_tokens): stored once, tied again on load
            continue
        ptrs.add(t.data_ptr())
        state[key] = t.detach().contiguous()
    return state


def save_int8(model, folder: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(folder) / INT8_FILE
    save_file(int8_state(model), str(path), metadata={"format": "pt", "method": int8_method(model),
                                                     "quantization": "int8 weights, one scale per output channel"})
    return path


def load_int8(folder: str | Path):
    """The causal LM saved by ``save_int8`` in ``folder`` (with its config.json), quantised, in eval mode."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    if not (folder / INT8_FILE).exists():
        raise RlhfkitError(f"{folder}: no {INT8_FILE} (not an int8 export)")
    with safe_open(str(folder / INT8_FILE), framework="pt") as f:
        method = (f.metadata() or {}).get("method", "int8-dynamic")  # files before weight-only were dynamic
    if method not in INT8_METHODS:
        raise RlhfkitError(f"{folder / INT8_FILE}: metadata field 'method' is {method!r}, not one of {', '.join(INT8_METHODS)}")
    state = load_file(str(folder / INT8_FILE))
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    qnames = [k[: -len(".weight_int8")] for k in state if k.endswith(".weight_int8")]
    plain = {k: v for k, v in state.items() if not k.endswith((".weight_int8", ".weight_scale"))}
    for name in qnames:  # the float weight the int8 one stands for: exact, so re-quantising gives the same int8
        plain[f"{name}.weight"] = state[f"{name}.weight_int8"].float() * state[f"{name}.weight_scale"][:, None]
    missing, unexpected = model.load_state_dict(plain, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RlhfkitError(f"{folder}: {INT8_FILE} does not match config.json ({(unexpected or missing)[:3]} …)")
    model.tie_weights()
    model.eval()
    quantize_int8(model, method)
    with _quiet():
        for name, mod in _quantized_modules(model).items():  # the stored int8 and scales, bit for bit
            q, scale = state[f"{name}.weight_int8"], state[f"{name}.weight_scale"]
            if isinstance(mod, Int8Linear):
                mod.weight_int8.copy_(q)
                mod.weight_scale.copy_(scale)
                continue
            w = torch.quantize_per_channel(q.float() * scale[:, None], scale.double(),
                                           torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
            mod.set_weight_bias(w, mod.bias())
    if set(_quantized_modules(model)) != set(qnames):
        raise RlhfkitError(f"{folder}: the quantised layers in {INT8_FILE} are not this model's linears")
    return model
