"""Distillation from the aligned policy: a half-depth student, and recovery of a pruned model.

Both are the same step: a student learns the aligned policy's (the teacher's) next-token distribution on
the teacher's own samples, loss = T²·KL(teacher_T ‖ student_T) + α·CE (train/losses.py
``distillation_loss``, after Hinton et al. 2015). The student is either the teacher with every second
decoder block dropped (initialised from the teacher's, as DistilBERT's student, Sanh et al. 2019) or a
pruned copy; it trains LoRA adapters (``lora_r`` > 0) merged in at the end, or all its weights.
A magnitude-pruned student gets its zeros back after the merge, so it stays as sparse as it was pruned.
"""

from __future__ import annotations

import copy
import time

from rlhfkit.data.errors import RlhfkitError


def _decoder_layers(model):
    """The ModuleList of decoder blocks (Llama/Qwen2: model.layers; GPT-2: transformer.h)."""
    for outer, inner in (("model", "layers"), ("transformer", "h")):
        layers = getattr(getattr(model, outer, None), inner, None)
        if layers is not None:
            return getattr(model, outer), inner, layers
    raise RlhfkitError(f"cannot find the decoder blocks of {type(model).__name__} to build a shallower student")


def shallow_student(teacher, every: int = 2):
    """A copy of ``teacher`` keeping blocks 0, every, 2·every, …: half the depth for every = 2."""
    from torch import nn

    if every < 2:
        raise RlhfkitError(f"keep every N-th block needs N ≥ 2, got {every}")
    student = copy.deepcopy(teacher)
    parent, name, layers = _decoder_layers(student)
    kept = list(range(0, len(layers), every))
    setattr(parent, name, nn.ModuleList(layers[i] for i in kept))
    for new_idx, block in enumerate(getattr(parent, name)):
        for m in block.modules():  # the KV cache is indexed by each attention's layer_idx
            if hasattr(m, "layer_idx"):
                m.layer_idx = new_idx
    cfg = student.config
    cfg.num_hidden_layers = len(kept)
    if hasattr(cfg, "n_layer"):
        cfg.n_layer = len(kept)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in kept]
    return student


def teacher_samples(teacher, tokenizer, texts: list[str], sampling: dict, batch_size: int, seed: int) -> list:
    """The teacher's own completions of the (formatted) ``texts``: a list of generate.Sampled batches."""
    import torch

    from rlhfkit.generate import sample

    out = []
    for i, lo in enumerate(range(0, len(texts), batch_size)):
        torch.manual_seed(seed + i)
        out.append(sample(teacher, tokenizer, texts[lo : lo + batch_size], max_new_tokens=sampling["max_new_tokens"],
                          temperature=sampling["temperature"] or 1.0, top_p=sampling.get("top_p", 1.0),
                          top_k=sampling.get("top_k", 0)))
    return out


def _response_logits(model, input_ids, attention_mask, A: int):
    from rlhfkit.models.policy import position_ids

    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                logits_to_keep=A + 1, use_cache=False)
    return out.logits[:, :-1]  # (B, A, V): logits[:, t] predicted response token t


def distil(student, teacher, tokenizer, batches: list, *, steps: int, lr: float, temperature: float, alpha: float,
           lora_r: int = 16, seed: int = 0) -> tuple[object, dict]:
    """Train ``student`` towards ``teacher`` on ``batches`` (teacher_samples) for ``steps`` optimizer steps.

    Returns (the trained student, merged and in eval mode; stats with loss/kl/ce before and after).
    """
    import torch

    from rlhfkit.generate import assemble, eos_ids
    from rlhfkit.models.load import add_lora
    from rlhfkit.train.losses import distillation_loss

    if steps < 1 or not batches:
        raise RlhfkitError("distillation needs at least one step and one batch of teacher samples")
    torch.manual_seed(seed)
    stop = eos_ids(tokenizer, teacher)
    data = []
    with torch.no_grad():
        for s in batches:
            _, mask, ids, attn = assemble(s, stop)
            data.append((ids, attn, s.response_ids, mask, _response_logits(teacher, ids, attn, mask.shape[1]).float()))
    zeros = {n: p == 0 for n, p in student.named_parameters() if p.dim() == 2 and bool((p == 0).any())}
    model = add_lora(student, r=lora_r, alpha=2 * lora_r) if lora_r > 0 else student
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.eval()  # no dropout: the student is fitted to one fixed distribution

    def step_loss(m, batch):
        ids, attn, tokens, mask, teacher_logits = batch
        return distillation_loss(_response_logits(m, ids, attn, mask.shape[1]), teacher_logits, tokens, mask,
                                 temperature, alpha)

    def evaluate(m) -> dict:
        with torch.no_grad():
            parts = [step_loss(m, b) for b in data]
        return {"loss": sum(float(p[0]) for p in parts) / len(parts),
                **{k: sum(float(p[1][k]) for p in parts) / len(parts) for k in ("kl", "ce")}}

    start, before = time.time(), evaluate(model)
    for i in range(steps):
        loss, _ = step_loss(model, data[i % len(data)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
    if lora_r > 0:
        model = model.merge_and_unload()
    with torch.no_grad():  # pruned weights stay pruned: the merged update is masked out of them
        for n, p in model.named_parameters():
            if n in zeros:
                p.masked_fill_(zeros[n], 0.0)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    after = evaluate(model)  # of the model returned: merged, and re-pruned
    return model, {"before": before, "after": after, "steps": steps, "seconds": time.time() - start}


def train_texts(config: dict, tokenizer, num_prompts: int) -> list[str]:
    """The first ``num_prompts`` train prompts the policy was aligned on, formatted as it was prompted."""
    from rlhfkit import defaults
    from rlhfkit.generate import select_prompts
    from rlhfkit.models.load import format_prompt

    prompts = select_prompts(defaults.read_prompt_spec(config.get("prompts", "default")), "train", num_prompts)
    if not prompts:
        raise RlhfkitError(f"{config.get('prompts')}: no train prompts to sample the teacher on")
    system = (config.get("sampling") or {}).get("system_prompt", "")
    return [format_prompt(tokenizer, p.prompt, system) for p in prompts]


def recover(student, teacher, tokenizer, config: dict, *, steps: int, num_prompts: int = 32, batch_size: int = 8,
            lr: float = 1e-3, temperature: float = 2.0, alpha: float = 0.0, lora_r: int = 16, seed: int = 0):
    """A short LoRA distillation of ``student`` (pruned) from ``teacher`` (the aligned policy) on its own samples.

    α = 0 by default: recovery aims at the aligned distribution itself, which the soft term alone targets;
    the hard labels are single draws from it (noisier, and they pull towards those exact tokens)."""
    sampling = dict(config.get("sampling") or {})
    batches = teacher_samples(teacher, tokenizer, train_texts(config, tokenizer, num_prompts), sampling, batch_size, seed)
    return distil(student, teacher, tokenizer, batches, steps=steps, lr=lr, temperature=temperature, alpha=alpha,
                  lora_r=lora_r, seed=seed)


def run_distil(cfg) -> dict:
    """``rlhfkit distil``: a shallower student of RUN_DIR/policy → a transformers folder in ``cfg.out``."""
    import json
    from pathlib import Path

    from rlhfkit import __version__
    from rlhfkit.data.io import atomic_directory
    from rlhfkit.deploy.export import EXPORT_RECORD, folder_bytes, policy_folder, write_hf
    from rlhfkit.models.policy import load_aligned

    out = Path(cfg.out)
    if out.exists() and not cfg.force:
        raise RlhfkitError(f"{out}: already exists (use --force to replace it)")
    source = policy_folder(cfg.run_dir)
    teacher, tokenizer, config = load_aligned(source, device="cpu", dtype="float32")
    student = shallow_student(teacher, cfg.every)
    sampling = dict(config.get("sampling") or {})
    batches = teacher_samples(teacher, tokenizer, train_texts(config, tokenizer, cfg.num_prompts), sampling,
                              cfg.batch_size, cfg.seed)
    student, stats = distil(student, teacher, tokenizer, batches, steps=cfg.steps, lr=cfg.lr, temperature=cfg.temperature,
                            alpha=cfg.alpha, lora_r=cfg.lora_r, seed=cfg.seed)
    record = {"source": str(source.resolve()), "base_model": config.get("model"), "format": "hf", "distilled": {
        "layers": student.config.num_hidden_layers, "teacher_layers": teacher.config.num_hidden_layers,
        "steps": cfg.steps, "temperature": cfg.temperature, "alpha": cfg.alpha, "lora_r": cfg.lora_r,
        "completions": sum(b.response_ids.shape[0] for b in batches), **stats},
        "sampling": sampling, "system_prompt": sampling.get("system_prompt", ""), "rlhfkit": __version__}
    with atomic_directory(out) as tmp:
        write_hf(student, tokenizer, tmp, sampling)
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return {"path": str(out), "bytes": folder_bytes(out), **record["distilled"]}
