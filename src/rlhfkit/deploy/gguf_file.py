"""Write a causal LM and its tokenizer as one GGUF file (llama.cpp's format) with the ``gguf`` package.

Tensor names come from gguf's own name map — the same map transformers' GGUF loader reads them back
with — and the metadata keys are llama.cpp's (``{arch}.context_length`` …, ``tokenizer.ggml.*``,
``general.sampling.*``). Llama's q/k projections are stored permuted, as llama.cpp's
convert_hf_to_gguf.py stores them (its rotary embedding pairs dimensions differently); the loader
undoes the permutation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlhfkit.data.errors import RlhfkitError

GGUF_TYPES = ("f16", "q8_0")
GGUF_ARCHITECTURES = ("llama", "qwen2")
"""model_type values we write: both are read back by transformers' GGUF loader and run by llama.cpp."""

_CONTROL, _NORMAL, _USER_DEFINED, _UNUSED = 3, 1, 4, 5  # gguf.TokenType values (llama.cpp's vocab types)


def gguf_filename(gguf_type: str) -> str:
    return f"model.{gguf_type}.gguf"


def check_gguf_support(config) -> None:
    """Refuse, with the reason, a model whose GGUF the loaders would read back wrongly."""
    arch = config.model_type
    if arch not in GGUF_ARCHITECTURES:
        raise RlhfkitError(f"GGUF export supports {', '.join(GGUF_ARCHITECTURES)} models; this policy is {arch!r} "
                           "(export it with --format hf)")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise RlhfkitError(f"GGUF export: rope scaling {rope.get('rope_type')!r} is not written (only plain RoPE)")
    if arch == "llama" and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        raise RlhfkitError("GGUF export: llama with attention or MLP biases is not a llama.cpp llama")


def _rope_theta(config) -> float:
    theta = getattr(config, "rope_theta", None)
    return float(theta if theta is not None else (config.rope_parameters or {})["rope_theta"])


def _permute_qk(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute: HF keeps each head's rotary halves apart,
    # ggml interleaves them; transformers' LlamaTensorProcessor applies the inverse on load.
    if n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _pre_tokenizer_name(pre: dict) -> str | None:
    """llama.cpp's name for how the tokenizer splits text before BPE, or None when we cannot name it.

    Plain ``ByteLevel`` with its regex is GPT-2's split ('gpt2'); a ``Split`` by a regex followed by
    ``ByteLevel`` is named by transformers' own table of the splits it rebuilds from a GGUF.
    """
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt2"
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel":
        regex = (steps[0].get("pattern") or {}).get("Regex")
        return next((name for name, split in GGUF_PRE_TOKENIZER_SPLITS.items() if split == regex), None)
    return None


def _vocab(tokenizer, n_rows: int) -> dict:
    """tokens, token types, merges and pre-tokenizer name of a byte-level BPE tokenizer (llama.cpp 'gpt2' model)."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model, pre = state["model"], _pre_tokenizer_name(state.get("pre_tokenizer") or {})
    if model.get("type") != "BPE" or pre is None:
        raise RlhfkitError("GGUF export needs a byte-level BPE tokenizer with a split llama.cpp knows; this one is "
                           f"{model.get('type')} with pre-tokenizer {(state.get('pre_tokenizer') or {}).get('type')} "
                           "(use --format hf)")
    n = len(tokenizer)
    if n > n_rows:
        raise RlhfkitError(f"the tokenizer has {n} tokens but the model only {n_rows} embedding rows")
    tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    special = set(tokenizer.all_special_ids)
    added = {i for i, t in tokenizer.added_tokens_decoder.items()}
    types = [_CONTROL if i in special else _USER_DEFINED if i in added else _NORMAL for i in range(n)]
    # llama.cpp pads a vocabulary shorter than the embedding with unused placeholders the same way.
    tokens += [f"[PAD{i}]" for i in range(n, n_rows)]
    types += [_UNUSED] * (n_rows - n)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre}


def _tensors(model, arch: str):
    """(gguf name, float32 numpy array) for every weight, in the model's order; a tied output is left out."""
    import gguf
    import torch

    cfg = model.config
    names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch),
                                     cfg.num_hidden_layers)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # the loader ties the output to token_embd when output.weight is absent
        base, _, suffix = name.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise RlhfkitError(f"GGUF export: no GGUF name for tensor {name!r} of {arch}")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if arch == "llama" and gguf_name.endswith(("attn_q", "attn_k")):
            kv = cfg.num_attention_heads if gguf_name.endswith("attn_q") else cfg.num_key_value_heads
            data = _permute_qk(data, cfg.num_attention_heads, kv)
        yield f"{gguf_name}.{suffix}", data


def write_gguf(model, tokenizer, path: str | Path, gguf_type: str, sampling: dict, name: str = "") -> Path:
    """Write ``model`` (a llama or qwen2 causal LM) and ``tokenizer`` to ``path`` at F16 or Q8_0.

    Q8_0 (blocks of 32 int8 values with one f16 scale) applies to 2-D weights whose rows are a
    multiple of 32 long; other 2-D weights are F16 and 1-D ones (norms, biases) F32, as llama.cpp does.
    ``sampling``: temperature/top_p/top_k the policy was aligned with → general.sampling.* defaults.
    """
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise RlhfkitError(f"gguf type must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    cfg = model.config
    check_gguf_support(cfg)
    arch = cfg.model_type
    n_rows = model.get_input_embeddings().weight.shape[0]
    vocab = _vocab(tokenizer, n_rows)
    q8 = gguf_type == "q8_0"

    w = gguf.GGUFWriter(str(path), arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name or "rlhfkit aligned policy")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(_rope_theta(cfg))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(n_rows)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if q8 else gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    w.add_token_merges(vocab["merges"])
    for key, token_id in (("bos", tokenizer.bos_token_id), ("eos", tokenizer.eos_token_id),
                          ("unk", tokenizer.unk_token_id), ("pad", tokenizer.pad_token_id)):
        if token_id is not None:
            getattr(w, f"add_{key}_token_id")(token_id)
    ids = tokenizer("a").input_ids
    w.add_add_bos_token(bool(ids) and ids[0] == tokenizer.bos_token_id)
    if getattr(tokenizer, "chat_template", None):
        w.add_chat_template(tokenizer.chat_template)
    w.add_sampling_temp(float(sampling.get("temperature", 1.0)))
    w.add_sampling_top_p(float(sampling.get("top_p", 1.0)))
    w.add_sampling_top_k(int(sampling.get("top_k", 0)))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    for tname, data in _tensors(model, arch):
        if data.ndim == 1:
            w.add_tensor(tname, data)
        elif q8 and data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
            w.add_tensor(tname, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(tname, data.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)
