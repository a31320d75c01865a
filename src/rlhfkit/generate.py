"""Batched sampling with the KV cache: K completions per prompt."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rlhfkit.data.records import Completion, Prompt
from rlhfkit.models.load import format_prompt


@dataclass
class Sampled:
    """One batch of samples. B = batch, P = prompt tokens (left-padded), A = response tokens."""

    prompt_ids: "torch.Tensor"  # (B, P) left-padded
    prompt_mask: "torch.Tensor"  # (B, P) 1 on real prompt tokens
    response_ids: "torch.Tensor"  # (B, A) pad after EOS; A ≤ max_new_tokens
    ended: "torch.Tensor"  # (B,) bool: the completion emitted EOS within the limit


def eos_ids(tokenizer, model) -> list[int]:
    """Every token id that ends a completion (the tokenizer's EOS and the model's generation EOS)."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return sorted(i for i in ids if i is not None and i != tokenizer.pad_token_id)


def sample(model, tokenizer, texts: list[str], *, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
           top_k: int = 0) -> Sampled:
    """Sample one completion per (already formatted) prompt text, left-padded, with the KV cache."""
    import torch
    from transformers import GenerationConfig

    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    stop = eos_ids(tokenizer, model)
    config = GenerationConfig(
        do_sample=temperature > 0, temperature=temperature if temperature > 0 else None,
        top_p=top_p if temperature > 0 else None, top_k=top_k if temperature > 0 else None,
        max_new_tokens=max_new_tokens, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id, use_cache=True,
    )
    with torch.no_grad():
        out = model.generate(**enc, generation_config=config)
    P = enc["input_ids"].shape[1]
    response = out[:, P:]  # (B, A)
    ended = torch.isin(response, torch.tensor(stop, device=response.device)).any(dim=1)
    return Sampled(enc["input_ids"], enc["attention_mask"], response, ended)


def response_length(response_ids, stop: list[int]):
    """(B,) number of response tokens up to and including the first EOS; all A if a row never ends.

    Only EOS decides: generation pads a row after its EOS, so a row without one is all real tokens
    (even if it sampled the pad token's id as an ordinary token).
    """
    import torch

    B, A = response_ids.shape
    is_stop = torch.isin(response_ids, torch.tensor(stop, device=response_ids.device))
    first_stop = is_stop.int().argmax(1) + 1  # (B,) argmax finds the first True
    return torch.where(is_stop.any(1), first_stop, torch.full_like(first_stop, A))


def assemble(s: Sampled, stop: list[int]):
    """Prompt + response as one sequence: (lengths (B,), response_mask (B, A), input_ids (B, T), attention_mask (B, T)).

    The attention mask covers the real prompt tokens and the response up to and including EOS.
    """
    import torch

    lengths = response_length(s.response_ids, stop)  # (B,)
    A = s.response_ids.shape[1]
    response_mask = (torch.arange(A, device=lengths.device)[None, :] < lengths[:, None]).long()  # (B, A)
    input_ids = torch.cat([s.prompt_ids, s.response_ids], dim=1)  # (B, T = P + A)
    attention_mask = torch.cat([s.prompt_mask, response_mask], dim=1)  # (B, T)
    return lengths, response_mask, input_ids, attention_mask


def decode_responses(tokenizer, response_ids, lengths) -> list[str]:
    """The completion texts: tokens before EOS, special tokens dropped, whitespace trimmed."""
    return [tokenizer.decode(row[: int(n)], skip_special_tokens=True).strip() for row, n in zip(response_ids, lengths)]


def generate_completions(model, tokenizer, prompts: list[Prompt], *, k: int, max_new_tokens: int, temperature: float,
                         top_p: float, batch_size: int, seed: int, model_name: str, system_prompt: str = "",
                         progress: bool = True):
    """K completions per prompt. Returns (completions, stats) with stats = tokens, seconds, tokens/s.

    Rows are sorted by prompt length so a batch wastes little padding, then put back in order.
    Each batch reseeds torch from ``seed`` and its index: the same seed gives the same texts.
    """
    import torch
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    formatted = [format_prompt(tokenizer, p.prompt, system_prompt) for p in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in formatted]
    rows = [(i, j) for i in range(len(prompts)) for j in range(k)]
    rows.sort(key=lambda r: (lengths[r[0]], r))
    stop = eos_ids(tokenizer, model)
    texts: dict[tuple[int, int], tuple[str, bool, int]] = {}
    n_tokens = 0
    start = time.perf_counter()
    columns = [TextColumn("generate"), BarColumn(), TextColumn("{task.completed}/{task.total} completions"),
               TextColumn("{task.fields[tps]:.0f} tok/s"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("generate", total=len(rows), tps=0.0)
        for b, lo in enumerate(range(0, len(rows), batch_size)):
            chunk = rows[lo : lo + batch_size]
            torch.manual_seed(seed * 1_000_003 + b)
            s = sample(model, tokenizer, [formatted[i] for i, _ in chunk], max_new_tokens=max_new_tokens,
                       temperature=temperature, top_p=top_p)
            n = response_length(s.response_ids, stop)
            n_tokens += int(n.sum())
            for (i, j), text, ended, length in zip(chunk, decode_responses(tokenizer, s.response_ids, n), s.ended, n):
                texts[(i, j)] = (text, bool(ended), int(length))
            bar.update(task, advance=len(chunk), tps=n_tokens / (time.perf_counter() - start))
    seconds = time.perf_counter() - start
    sampling = {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed,
                "system_prompt": system_prompt}
    completions = []
    for i, p in enumerate(prompts):
        for j in range(k):
            text, ended, length = texts[(i, j)]
            completions.append(Completion(prompt_id=p.id, completion_id=f"{p.id}-{j}", text=text, model=model_name,
                                          sampling={**sampling, "ended": ended, "tokens": length}, prompt=p.prompt))
    return completions, {"tokens": n_tokens, "seconds": seconds, "tokens_per_s": n_tokens / max(seconds, 1e-9)}


def select_prompts(prompts: list[Prompt], split: str, num_prompts: int) -> list[Prompt]:
    """The prompts of ``split`` ('all' keeps every one), the first ``num_prompts`` of them (0 = all)."""
    chosen = [p for p in prompts if split == "all" or p.split == split]
    return chosen[:num_prompts] if num_prompts else chosen


def run_generate(cfg) -> dict:
    """The ``generate`` stage: writes RUN_DIR/completions.jsonl. Returns a summary."""
    from pathlib import Path

    from rlhfkit import defaults
    from rlhfkit.config import save_resolved
    from rlhfkit.data.errors import RlhfkitError
    from rlhfkit.data.io import write_jsonl
    from rlhfkit.models.load import load_policy, pick_device

    out = Path(cfg.run_dir) / "completions.jsonl"
    if out.exists() and not cfg.force:
        raise RlhfkitError(f"{out} already exists (use --force to overwrite)")
    prompts = select_prompts(defaults.read_prompt_spec(cfg.prompts), cfg.split, cfg.num_prompts)
    if not prompts:
        raise RlhfkitError(f"{cfg.prompts}: no prompts in split '{cfg.split}'")
    model, tokenizer = load_policy(cfg.model, device=pick_device(cfg.device), dtype=cfg.dtype)
    completions, stats = generate_completions(
        model, tokenizer, prompts, k=cfg.k, max_new_tokens=cfg.sampling.max_new_tokens,
        temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p, batch_size=cfg.batch_size, seed=cfg.seed,
        model_name=cfg.model, system_prompt=cfg.sampling.system_prompt,
    )
    save_resolved(cfg.run_dir, "generate", cfg)
    write_jsonl(out, completions)
    ended = sum(c.sampling["ended"] for c in completions)
    return {"path": str(out), "prompts": len(prompts), "completions": len(completions), "ended": ended, **stats}
