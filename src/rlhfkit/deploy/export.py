"""``rlhfkit export``: the aligned policy as something you can ship.

hf   → a transformers folder: LoRA merged into the weights, safetensors, the tokenizer with its chat
       template, and a generation_config that samples as the policy was aligned (temperature, top_p,
       top_k, max_new_tokens of its PPO config); ``AutoModelForCausalLM.from_pretrained`` loads it alone.
       With quantize=int8 the block linears are int8 (weight-only, per channel; or torch.ao dynamic with
       int8-dynamic) in model.int8.safetensors instead (see deploy/quantize.py).
gguf → one ``model.{f16,q8_0}.gguf`` for llama.cpp-style runtimes (see deploy/gguf_file.py).

Every export also writes ``export.json``: where it came from and what was done to it.
"""

from __future__ import annotations

import time
from pathlib import Path

from rlhfkit.data.errors import RlhfkitError

EXPORT_RECORD = "export.json"


def policy_folder(run_dir: str | Path) -> Path:
    """RUN_DIR/policy, or RUN_DIR itself when it is a policy folder."""
    from rlhfkit.models.policy import TRAINABLE_FILE

    run_dir = Path(run_dir)
    return run_dir if (run_dir / TRAINABLE_FILE).exists() else run_dir / "policy"


def generation_config(sampling: dict, tokenizer):
    """transformers' GenerationConfig for the distribution the policy was aligned with.

    top_k is written even when 0 (off): transformers' own default is 50, which would truncate.
    """
    from transformers import GenerationConfig

    temperature = float(sampling.get("temperature", 1.0))
    sample = temperature > 0
    kwargs = dict(temperature=temperature, top_p=float(sampling.get("top_p", 1.0)),
                  top_k=int(sampling.get("top_k", 0))) if sample else {}
    return GenerationConfig(do_sample=sample, max_new_tokens=int(sampling.get("max_new_tokens", 40)),
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id, **kwargs)


def write_hf(model, tokenizer, folder: Path, sampling: dict, *, int8: bool = False) -> None:
    """save_pretrained of model + tokenizer (+ its chat template) into ``folder``, with the aligned sampling."""
    from rlhfkit.deploy.quantize import save_int8

    model.generation_config = generation_config(sampling, tokenizer)
    if int8:
        model.config.save_pretrained(folder)
        model.generation_config.save_pretrained(folder)
        save_int8(model, folder)
    else:
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def prepare(model, *, sparsity: float = 0.0, structured: bool = False, dtype: str = "float32", quantize: str = "none"):
    """The merged float32 policy → the variant to ship (pruned, then cast or quantised: none, int8, int8-dynamic), in place."""
    import torch

    from rlhfkit.deploy.prune import prune_magnitude, prune_mlp_channels
    from rlhfkit.deploy.quantize import quantize_int8

    if sparsity > 0:
        (prune_mlp_channels if structured else prune_magnitude)(model, sparsity)
    if quantize != "none":
        return quantize_int8(model, quantize)
    return model.to(getattr(torch, dtype))


def run_export(cfg) -> dict:
    """Export RUN_DIR/policy as ``cfg.format`` into ``cfg.out`` (atomically); a summary dict."""
    import copy
    import json

    from rlhfkit import __version__
    from rlhfkit.data.io import atomic_directory
    from rlhfkit.deploy.distil import recover
    from rlhfkit.deploy.gguf_file import check_gguf_support, gguf_filename, write_gguf
    from rlhfkit.deploy.prune import check_sparsity
    from rlhfkit.models.policy import load_aligned

    start = time.time()
    out = Path(cfg.out)
    check_sparsity(cfg.sparsity)
    if out.exists() and not cfg.force:
        raise RlhfkitError(f"{out}: already exists (use --force to replace it)")
    source = policy_folder(cfg.run_dir)
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise RlhfkitError(f"{out}: would write inside the policy folder {source}")
    model, tokenizer, config = load_aligned(source, device="cpu", dtype="float32")
    sampling = dict(config.get("sampling") or {})
    if cfg.format == "gguf":
        check_gguf_support(model.config)  # before any work: an unsupported architecture fails fast
    int8 = cfg.quantize != "none"
    teacher = copy.deepcopy(model) if cfg.recover_steps else None
    model = prepare(model, sparsity=cfg.sparsity, structured=cfg.structured)
    recovery = None
    if teacher is not None:
        model, recovery = recover(model, teacher, tokenizer, config, steps=cfg.recover_steps)
        del teacher
    model = prepare(model, dtype="float32" if cfg.format == "gguf" else cfg.dtype, quantize=cfg.quantize)
    record = {
        "source": str(source.resolve()), "base_model": config.get("model"), "format": cfg.format,
        "gguf_type": cfg.gguf_type if cfg.format == "gguf" else None, "dtype": cfg.dtype if cfg.format == "hf" else None,
        "quantize": cfg.quantize, "sparsity": cfg.sparsity, "structured": cfg.structured, "recovery": recovery,
        "sampling": sampling,
        # the system turn the policy was aligned with ('' = the chat template's default): pass it when you prompt
        "system_prompt": sampling.get("system_prompt", ""), "rlhfkit": __version__,
    }
    with atomic_directory(out) as tmp:
        if cfg.format == "gguf":
            write_gguf(model, tokenizer, tmp / gguf_filename(cfg.gguf_type), cfg.gguf_type, sampling,
                       name=f"{config.get('model')} aligned by rlhfkit")
        else:
            write_hf(model, tokenizer, tmp, sampling, int8=int8)
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return {"path": str(out), "bytes": folder_bytes(out), "seconds": time.time() - start, **record}


def folder_bytes(path: str | Path) -> int:
    """Size on disk of a file or of every file under a folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
