"""Batched sampling with the KV cache: K completions per prompt.

rlhfkit specifies the sampling distribution completely: softmax(logits / temperature), truncated to
the top_k most likely tokens and then to the top_p nucleus when those are on, and nothing else. So
``sample`` runs its own decode loop over the model's forward instead of ``model.generate``: generate
fills every setting left at its global default from the model's own ``generation_config`` (hub instruct
models ship top_p, top_k, repetition_penalty, temperature…), and PPO would then sample from one
distribution while computing log-probs from softmax(logits / T) ([N-det]: same temperature when
sampling and when recomputing log-probs). ``sample`` also returns each sampled token's log-prob under
the distribution it was drawn from.

Speed (bench/generate.py; SmolLM2-135M, float32, 2-core AVX2 EPYC, batch 64, 40 new tokens). A profile
of ``model.generate`` there: a third of the time is the prefill, and a fifth of each decode step is its
sampling (torch.multinomial draws an exponential number for every token of the 49k vocabulary); the
linear layers take most of the rest and already run near the core's peak. So the loop here saves work
rather than making the math faster; the distribution stays the same (greedy output is token-identical
to model.generate's in the bench):
- the tokens every prompt starts with (chat template, system turn: about half of a short prompt) run
  through the model once, and each distinct prompt once — the generate stage's K samples of a prompt
  share one prefill (``_prefill``);
- a token is drawn by inverting the CDF with one uniform number per row (``draw``);
- rows that have ended leave the batch, and the loop stops when none is left;
- the LM head runs only at the last position of the prefill.

[N-det] Huang et al. 2024, "The N Implementation Details of RLHF with PPO".
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rlhfkit.data.records import Completion, Prompt
from rlhfkit.models.load import format_prompt
from rlhfkit.models.prefix import shared_prefix_length


@dataclass
class Sampled:
    """One batch of samples. B = batch, P = prompt tokens (left-padded), A = response tokens."""

    prompt_ids: "torch.Tensor"  # (B, P) left-padded
    prompt_mask: "torch.Tensor"  # (B, P) 1 on real prompt tokens
    response_ids: "torch.Tensor"  # (B, A) pad after EOS; A ≤ max_new_tokens
    ended: "torch.Tensor"  # (B,) bool: the completion emitted EOS within the limit
    logprobs: "torch.Tensor"  # (B, A) float32: log-prob of each sampled token under the distribution it was
    #                           drawn from (see `draw`); 0 after EOS, and 0 for greedy (probability 1)
    hidden: "torch.Tensor | None" = None  # (B, A, H) with ``hidden_states``: what the LM head read to predict
    #                                       each response token (the state before it); junk after EOS
    block_states: "torch.Tensor | None" = None  # (B, P + A, H) with ``keep_block``: that block's output at every
    #                                       prompt and response token, in ``assemble``'s columns; 0 off its mask


def eos_ids(tokenizer, model) -> list[int]:
    """Every token id that ends a completion (the tokenizer's EOS and the model's generation EOS)."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return sorted(i for i in ids if i is not None and i != tokenizer.pad_token_id)


def truncate(scores: "torch.Tensor", top_k: int = 0, top_p: float = 1.0) -> "torch.Tensor":
    """``scores`` (B, V) with the tokens outside the top_k, then outside the top_p nucleus, set to −inf.

    top_k = 0 or top_p = 1 turn that step off. Tokens tied with the k-th score stay in. The nucleus is the
    smallest set of most likely tokens whose probability reaches top_p (the most likely token always stays).
    """
    import torch

    V = scores.shape[-1]
    if 0 < top_k < V:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = scores.sort(dim=-1, descending=True)  # (B, V)
        probs = ordered.softmax(-1)
        before = probs.cumsum(-1) - probs  # (B, V): mass of the tokens ranked above each one
        drop = torch.zeros_like(before, dtype=torch.bool).scatter_(1, order, before >= top_p)
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


def _inverse_cdf(weights: "torch.Tensor", u: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Draw index i of each row with probability weights[i] / Σ weights by inverting the CDF at u.

    weights: (B, V) ≥ 0 float32; u: (B, 1) float64 uniform in [0, 1). Returns (indices (B,), Σ weights (B,) float64).
    The CDF is accumulated in float64: a float32 cumsum over 49k tokens drifts by up to ~1e-3, which would shift
    probability between tokens. (One cumsum over the vocabulary, float64 included, is faster on CPU than a CDF of
    block sums and then one inside the chosen block: 2.4 vs 3.5 ms at 16 × 49k, 0.13 vs 0.38 ms at 16 × 2k.)
    """
    import torch

    cdf = weights.cumsum(-1, dtype=torch.float64)  # (B, V)
    target = u * cdf[:, -1:]  # (B, 1) in [0, total)
    # the first token whose CDF exceeds the target: never a zero-weight token (its CDF equals the one before it),
    # and in range, since u·total < total in floating point for u < 1; past the end only with a NaN CDF (NaN
    # logits), which the log-prob then carries
    i = torch.searchsorted(cdf, target, right=True)[:, 0].clamp_(max=weights.shape[1] - 1)  # (B,)
    return i, cdf[:, -1]


def draw(logits: "torch.Tensor", *, temperature: float, top_k: int = 0, top_p: float = 1.0):
    """One token per row from softmax(logits / temperature), truncated by ``truncate`` when top_k/top_p are on.

    logits: (B, V). Returns (tokens (B,), log-probs (B,) float32). The log-prob is under the distribution the
    token was drawn from: temperature-scaled and, with truncation on, renormalised over the kept tokens.
    temperature 0: the argmax (first on ties, as ``model.generate``), log-prob 0.
    Randomness: one torch.rand number per row from the global generator (seed it with torch.manual_seed).
    """
    import torch

    B = logits.shape[0]
    if temperature == 0:
        return logits.argmax(-1), torch.zeros(B, device=logits.device)
    scores = logits.float() / temperature  # (B, V)
    if top_k > 0 or top_p < 1.0:
        scores = truncate(scores, top_k, top_p)
    top = scores.amax(-1, keepdim=True)  # (B, 1)
    weights = (scores - top).exp_()  # (B, V) probabilities up to the normaliser; the largest is 1
    u = torch.rand(B, 1, dtype=torch.float64, device=logits.device)
    tokens, total = _inverse_cdf(weights, u)
    # log p(token) = score − max − log Σ exp(score − max)
    logprobs = scores.gather(1, tokens[:, None])[:, 0] - top[:, 0] - total.log().float()
    return tokens, logprobs


def left_pad(rows: list[list[int]], pad_id: int, device=None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Token lists → (ids (B, P), mask (B, P)), left-padded: every row's last token sits in the last column."""
    import torch

    P = max(map(len, rows))
    ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, P - len(row) :] = torch.tensor(row)
            mask[i, P - len(row) :] = 1
    return ids.to(device), mask.to(device)


def _prefill(model, rows: list[list[int]], pad_id: int, device):
    """Run the prompts through the model once; returns (cache, logits (B, V) at each prompt's last token,
    suffix mask (B, S), expand (B,): each row's index among the U distinct prompts the model ran): the cache
    holds the shared prefix (L tokens), then each row's left-padded suffix.

    Two savings with the same result: the tokens every prompt starts with (chat template and system turn,
    often half the prompt) run once, at batch 1; then each distinct suffix runs once, and rows with the same
    prompt (K samples of it) get copies of its cache. The cache holds prefix, padding, suffix: RoPE sees the
    positions passed (counted over real tokens), the mask hides the padding, so where the padding sits
    in the cache changes nothing.
    """
    import torch
    from transformers import DynamicCache

    from rlhfkit.models.policy import position_ids

    cache = DynamicCache(config=model.config)
    # A sliding attention window counts cache columns: padding between prefix and suffix would narrow it.
    # With a single distinct prompt a separate prefix pass saves nothing and costs one more pass over the weights.
    L = 0 if any(cache.is_sliding) or len(set(map(tuple, rows))) == 1 else shared_prefix_length(rows)
    first: dict[tuple[int, ...], int] = {}
    slot = [first.setdefault(tuple(row[L:]), len(first)) for row in rows]  # row → its distinct suffix
    suffixes = [list(s) for s in first]  # (U,) distinct suffixes, each ≥ 1 token
    U = len(suffixes)
    if L:
        prefix = torch.tensor([rows[0][:L]], device=device)  # (1, L)
        model(input_ids=prefix, position_ids=torch.arange(L, device=device)[None], past_key_values=cache, use_cache=True,
              logits_to_keep=1)
        cache.batch_repeat_interleave(U)
    ids, mask = left_pad(suffixes, pad_id, device)  # (U, S)
    full_mask = torch.cat([mask.new_ones(U, L), mask], dim=1)  # (U, L + S)
    out = model(input_ids=ids, attention_mask=full_mask, position_ids=L + position_ids(mask), past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1]  # (U, V)
    expand = torch.tensor(slot, device=device)  # (B,)
    if U < len(rows):
        cache.batch_select_indices(expand)
        logits = logits[expand]
    return cache, logits, full_mask[expand], expand


def sample(model, tokenizer, texts: list[str], *, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
           top_k: int = 0, hidden_states: bool = False, keep_block=None) -> Sampled:
    """One completion per (already formatted) prompt text: left-padded, KV-cached, each token drawn by ``draw``.

    Only the arguments shape the distribution — never the model's generation_config. Positions count real
    tokens only (``position_ids``); a row that emits an EOS id (``eos_ids``) is padded with the pad token
    from then on and leaves the batch, and the loop stops when every row has ended. The prefill is shared
    (``_prefill``).
    """
    rows = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return sample_ids(model, tokenizer, rows, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                      top_k=top_k, hidden_states=hidden_states, keep_block=keep_block)


def sample_ids(model, tokenizer, rows: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
               top_p: float = 1.0, top_k: int = 0, on_step=None, hidden_states: bool = False,
               keep_block=None) -> Sampled:
    """``sample`` on prompts already tokenized (``rows``: B lists of ids).

    ``hidden_states``: also keep what the LM head read at each step (``Sampled.hidden``): PPO's value head reads
    the same states, so the rollout needs no second forward pass for its values (train/ppo.py ``experience``).
    ``keep_block``: a transformer block of ``model``; its output at every prompt and response token is kept
    (``Sampled.block_states``): the last frozen block's, so PPO and evaluation need not run the frozen lower
    blocks over the finished rollouts again (models/prefix.py). None when the block returns no plain tensor.

    ``on_step(rows, tokens)``, when given, is called after every step with the batch indices of the rows that
    drew a token and those tokens (lists, EOS included), and returns the batch indices to end now: how
    `rlhfkit serve` streams each token and ends a row at a stop string, its own token limit, or when its
    client goes away. A row it ends is ``ended`` like one that drew EOS.
    """
    import contextlib

    import torch

    from rlhfkit.models.prefix import block_output, head_input

    device, pad = model.device, tokenizer.pad_token_id
    prompt_ids, prompt_mask = left_pad(rows, pad, device)  # (B, P)
    B = len(rows)
    stop = torch.tensor(eos_ids(tokenizer, model), device=device)
    response = torch.full((B, max_new_tokens), pad, dtype=torch.long, device=device)  # (B, A_max)
    logprobs = torch.zeros(B, max_new_tokens, device=device)  # (B, A_max)
    ended = torch.zeros(B, dtype=torch.bool, device=device)
    # The cache holds only the rows still running (b of them): `rows_in` maps them to the batch.
    rows_in = torch.arange(B, device=device)  # (b,)
    next_position = prompt_mask.sum(1, keepdim=True)  # (b, 1): each row's first response position
    hidden = states = None  # (B, A_max, H) with hidden_states, (B, P + A_max, H) with keep_block
    # hidden_states: models/prefix.head_input hands over what the LM head reads at each forward
    with (torch.no_grad(), (head_input(model) if hidden_states else contextlib.nullcontext()) as box,
          (block_output(keep_block) if keep_block is not None else contextlib.nullcontext()) as kept):
        cache, logits, mask, expand = _prefill(model, rows, pad, device)  # mask: (b, C) over the cache's C columns
        if hidden_states:  # the prefill's last head call ran the U distinct prompts; expand: row → its prompt
            state = box[-1][:, -1][expand]  # (B, H)
            hidden = state.new_zeros(B, max_new_tokens, state.shape[-1])
            hidden[:, 0] = state
        if kept:
            states = _prompt_states(kept, rows, expand, max_new_tokens)
        mask = torch.cat([mask, mask.new_ones(B, max_new_tokens)], dim=1)  # (b, C + A_max): generated tokens attend
        C = mask.shape[1] - max_new_tokens
        for t in range(max_new_tokens):
            token, logprob = draw(logits, temperature=temperature, top_k=top_k, top_p=top_p)  # (b,), (b,)
            running = ~ended[rows_in]  # (b,) rows that ended but still sit in the cache get nothing more
            response[rows_in, t] = torch.where(running, token, pad)
            logprobs[rows_in, t] = torch.where(running, logprob, 0.0)
            ended[rows_in] |= running & torch.isin(token, stop)
            if on_step is not None:
                live = running.nonzero()[:, 0]  # (r,) rows that drew a token this step
                ends = on_step(rows_in[live].tolist(), token[live].tolist())
                ended[torch.tensor(ends, dtype=torch.long, device=device)] = True
            running = ~ended[rows_in]
            if t + 1 == max_new_tokens or not bool(running.any()):
                break
            # Drop ended rows from the batch once they are an eighth of it: each later step then costs less,
            # and the cache copy this takes is about one step's worth of cache traffic.
            if int((~running).sum()) >= max(1, len(rows_in) // 8):
                keep = running.nonzero()[:, 0]  # (b',)
                cache.batch_select_indices(keep)
                rows_in, token, mask, next_position = rows_in[keep], token[keep], mask[keep], next_position[keep]
            out = model(input_ids=token[:, None], attention_mask=mask[:, : C + t + 1], position_ids=next_position + t,
                        past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1]  # (b, V)
            if hidden_states:
                hidden[rows_in, t + 1] = box[-1][:, -1]  # (b, H): the state before token t + 1
            if states is not None:
                states[rows_in, prompt_ids.shape[1] + t] = kept.pop()[:, -1]  # (b, H) at response token t
    A = t + 1
    out = Sampled(prompt_ids, prompt_mask, response[:, :A], ended, logprobs[:, :A], None if hidden is None else hidden[:, :A])
    if states is not None:  # 0 off the attention mask (padding, after EOS): never read, and no junk from pad rows
        real = assemble(out, stop.tolist())[3].bool()  # (B, P + A)
        out.block_states = states[:, : real.shape[1]].masked_fill_(~real[..., None], 0.0)
    return out


def _prompt_states(kept: list, rows: list[list[int]], expand, max_new_tokens: int):
    """(B, P + A_max, H): ``_prefill``'s block outputs laid out as ``assemble``'s prompt columns (left-padded),
    zeros for the response columns to come. ``kept``: the outputs of the shared-prefix pass (1, L, H), when it
    ran, then of the distinct suffixes (U, S, H), left-padded; ``expand``: row → its suffix. Emptied."""
    suffix = kept.pop()[expand]  # (B, S, H): suffix j of row i in column P − S + j, as in the left-padded prompt
    prefix = kept.pop() if kept else None  # (1, L, H): the tokens every row starts with
    B, S, H = suffix.shape
    P = max(map(len, rows))
    states = suffix.new_zeros(B, P + max_new_tokens, H)
    states[:, P - S : P] = suffix
    if prefix is not None:  # row i: prefix in columns P − len_i … P − len_i + L − 1, before its own suffix
        L = prefix.shape[1]
        for i, row in enumerate(rows):
            states[i, P - len(row) : P - len(row) + L] = prefix[0]
    return states


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
    """The completion texts: tokens before EOS, special tokens dropped, whitespace trimmed.

    A byte-level vocabulary can emit a NUL byte; it is not text (PostgreSQL cannot store it, the feedback
    store refuses it), so it becomes U+FFFD, the replacement character, as an undecodable byte would.
    """
    return [tokenizer.decode(row[: int(n)], skip_special_tokens=True).replace("\x00", "\ufffd").strip()
            for row, n in zip(response_ids, lengths)]


def generate_completions(model, tokenizer, prompts: list[Prompt], *, k: int, max_new_tokens: int, temperature: float,
                         top_p: float, batch_size: int, seed: int, model_name: str, system_prompt: str = "",
                         progress: bool = True):
    """K completions per prompt. Returns (completions, stats) with stats = tokens, seconds, tokens/s.

    Rows are sorted by prompt length so a batch wastes little padding, then put back in order; a prompt's
    K rows sit side by side, so ``sample`` runs the prompt through the model once for all of them.
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


def written_completions(prompts: list[Prompt], seed: int) -> list[Completion]:
    """Per prompt, the prompt file's written replies put up for ranking beside the samples: one of its
    reference replies and, where it has one, one of its harmful replies (chosen by ``seed``).

    Sampled replies rarely show the contrast that matters most on red-team and provocative prompts (11 of
    512 demo samples were toxic): a kind refusal next to harmful compliance. InstructGPT's comparison data
    likewise mixed labeler-written replies with model samples. Labelers rank them like any other reply.
    """
    import random

    out = []
    for p in prompts:
        rng = random.Random(f"{seed}:{p.id}")
        for tag, pool in (("reference", p.references), ("harmful", p.harmful)):
            if pool:
                out.append(Completion(prompt_id=p.id, completion_id=f"{p.id}-{tag}", text=rng.choice(pool),
                                      model=f"written:{tag}", sampling={}, prompt=p.prompt))
    return out


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
    if cfg.written:
        by_prompt = {p.id: [] for p in prompts}
        for c in completions + written_completions(prompts, cfg.seed):
            by_prompt[c.prompt_id].append(c)
        completions = [c for cs in by_prompt.values() for c in cs]
    save_resolved(cfg.run_dir, "generate", cfg)
    write_jsonl(out, completions)
    ended = sum(c.sampling.get("ended", False) for c in completions)
    return {"path": str(out), "prompts": len(prompts), "completions": len(completions), "ended": ended,
            "dtype": str(model.dtype).removeprefix("torch."), **stats}
