"""Post-training int8 quantisation for CPU serving: dynamic int8 on every ``nn.Linear`` (torch.ao).

Why torch.ao's dynamic quantisation and not torchao: measured on the project's 2-core EPYC (AVX2, no
AVX512/VNNI; torch 2.13, fp32 baseline, a 576→1536→576 MLP at batch 16): torch.ao dynamic int8 (fbgemm
kernels) 1.6× faster than fp32; torchao 0.18 int8 weight-only 0.9× (it de-quantises per call) and
int8 dynamic activation 0.04× (no CPU int8 kernel path). torch.ao is part of torch (no new
dependency); it is deprecated in favour of torchao, which is the move once torchao has fast CPU kernels.

Dynamic quantisation needs no calibration pass: each activation's range is measured per batch at run
time; the weights get one scale per output channel (symmetric, zero point 0). Embeddings and the
output head stay float (the head is tied to the embedding in the default policy).

Accuracy caveat, measured (bench/deploy.py, a SmolLM2-135M policy): the per-tensor activation scale
meets SmolLM2's outlier features (Dettmers et al. 2022, LLM.int8()): KL to the float policy ~80 nats
per 40-token completion, most of it from mlp.down_proj (float down_proj: 91 → 19 nats on 4 prompts).
GGUF Q8_0 (weight-only, blocks of 32) keeps KL < 0.1. Check the KL column before shipping int8.

On disk: ``model.int8.safetensors`` holds each quantised weight as int8 plus its float32 per-channel
scales (``NAME.weight_int8``, ``NAME.weight_scale``) and every other tensor as is; ``load_int8``
rebuilds the exact same quantised modules. This folder needs rlhfkit to load (transformers has no
reader for torch.ao's packed weights).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

from rlhfkit.data.errors import RlhfkitError

INT8_FILE = "model.int8.safetensors"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # torch.ao says on every call that it is deprecated (see the module docstring for why we use it).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


def _target_linears(model) -> list[str]:
    """Names of the nn.Linear layers inside the transformer blocks (not the output head)."""
    from torch import nn

    out_head = model.get_output_embeddings()
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not out_head]
    if not names:
        kinds = sorted({type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__ or "Conv1D" in type(m).__name__})
        raise RlhfkitError(f"int8 quantisation works on nn.Linear layers; {type(model).__name__} has none "
                           f"(its projections are {', '.join(kinds) or 'of another kind'})")
    return names


def quantize_int8(model):
    """``model`` (float32, CPU) with its block linears replaced by dynamic int8 ones, in place; returns it."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if next(model.parameters()).dtype != torch.float32:
        raise RlhfkitError("int8 quantisation starts from float32 weights (export with --dtype float32)")
    names = _target_linears(model)
    with _quiet():
        return quantize_dynamic(model, {n: per_channel_dynamic_qconfig for n in names}, dtype=torch.qint8, inplace=True)


def _quantized_modules(model) -> dict:
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    return {n: m for n, m in model.named_modules() if isinstance(m, QLinear)}


def int8_state(model) -> dict:
    """Plain tensors for safetensors: int8 weights + per-channel scales of the quantised linears, the rest as is."""
    state = {}
    qmods = _quantized_modules(model)
    with _quiet():
        for name, mod in qmods.items():
            w = mod.weight()  # a per-channel qint8 tensor (out, in)
            state[f"{name}.weight_int8"] = w.int_repr().contiguous()
            state[f"{name}.weight_scale"] = w.q_per_channel_scales().float().contiguous()
            if mod.bias() is not None:
                state[f"{name}.bias"] = mod.bias().detach().contiguous()
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
    save_file(int8_state(model), str(path), metadata={"format": "pt", "quantization": "torch.ao dynamic int8, per-channel"})
    return path


def load_int8(folder: str | Path):
    """The causal LM saved by ``save_int8`` in ``folder`` (with its config.json), quantised, in eval mode."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    if not (folder / INT8_FILE).exists():
        raise RlhfkitError(f"{folder}: no {INT8_FILE} (not an int8 export)")
    state = load_file(str(folder / INT8_FILE))
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    qnames = [k[: -len(".weight_int8")] for k in state if k.endswith(".weight_int8")]
    modules = dict(model.named_modules())
    plain = {k: v for k, v in state.items() if not k.endswith((".weight_int8", ".weight_scale"))}
    for name in qnames:  # the float weight the int8 one stands for: exact, so re-quantising gives the same int8
        plain[f"{name}.weight"] = state[f"{name}.weight_int8"].float() * state[f"{name}.weight_scale"][:, None]
    missing, unexpected = model.load_state_dict(plain, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RlhfkitError(f"{folder}: {INT8_FILE} does not match config.json ({(unexpected or missing)[:3]} …)")
    model.tie_weights()
    model.eval()
    with _quiet():
        quantize_int8(model)
        for name, mod in _quantized_modules(model).items():
            scale = state[f"{name}.weight_scale"].double()
            w = torch.quantize_per_channel(state[f"{name}.weight_int8"].float() * state[f"{name}.weight_scale"][:, None],
                                           scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
            mod.set_weight_bias(w, mod.bias())
    if set(_quantized_modules(model)) != set(qnames):
        raise RlhfkitError(f"{folder}: the quantised layers in {INT8_FILE} are not this model's linears")
    return model
