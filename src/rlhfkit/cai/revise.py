"""``cai revise``: the supervised stage of Constitutional AI (Bai et al. 2022, §3).

For each red-team prompt the model answers, then critiques its own answer against a principle drawn
at random, then revises it; with ``rounds`` > 1 the revision is critiqued and revised again, each
round with a new principle. The final revisions are the data of ``rlhfkit sft``.

Bai et al. show the model the conversation and put the critique and revision requests in later
turns, with few-shot examples. A 135M model follows neither a long context nor a multi-turn setup
well, so each step here is ONE user turn, no examples: the request and the reply (and the critique)
quoted, then the constitution's request. Every step runs batched over all prompts.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.data.records import Prompt


def critique_prompt(request: str, reply: str, critique_request: str) -> str:
    """The user turn that asks for a critique of ``reply`` to ``request``."""
    return f'Someone asked an AI assistant: "{request}"\n\nThe assistant replied: "{reply}"\n\n{critique_request}'


def revision_prompt(request: str, reply: str, critique: str, revision_request: str) -> str:
    """The user turn that asks for a revision of ``reply`` in the light of ``critique``."""
    return (f'Someone asked an AI assistant: "{request}"\n\nThe assistant replied: "{reply}"\n\n'
            f"Critique: {critique}\n\n{revision_request}")


# Lead-ins a small model puts before the text asked for: "Here's the revised reply:", "Revision:".
_LEAD_IN = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly)[,!.]?\s*)?"
    r"(?:(?:here\s+is|here's|here\s+are)\b[^\n:]{0,60}?(?:reply|response|version|message|revision|critique|answer)"
    r"|(?:(?:a|the|my)\s+)?(?:revised|rewritten|new|improved|updated|final)?\s*"
    r"(?:reply|response|revision|version|critique|answer)(?:\s+\d+)?)\s*:\s*",
    re.IGNORECASE,
)
# Lines where the model starts echoing the prompt it was given: the output ends there.
_ECHO = re.compile(
    r"^\s*(?:someone asked an ai assistant|the assistant replied|request\s*:|critique\s*:|rewrite the reply"
    r"|write only the new reply)",
    re.IGNORECASE | re.MULTILINE,
)
_QUOTES = {'"': '"', "“": "”", "'": "'"}


def clean_output(text: str) -> str:
    """A generated critique or revision without lead-ins ("Revision:", "Here is the new reply:"),
    without a trailing echo of the prompt, and without quotes wrapped around all of it."""
    text = text.strip()
    while True:  # peel lead-ins and echoed prompt lines off the start
        m = _LEAD_IN.match(text)
        if m and m.end() > 0:
            text = text[m.end():].strip()
        elif _ECHO.match(text):
            text = text.split("\n", 1)[1].strip() if "\n" in text else ""
        else:
            break
    m = _ECHO.search(text)
    if m:  # the model went on to echo the prompt: the output ends there
        text = text[: m.start()].strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]] and text.count(text[0]) <= 2:
        text = text[1:-1].strip()
    return text


def _generate(model, tokenizer, user_turns: list[str], *, seed: int, max_new_tokens: int, temperature: float,
              top_p: float, batch_size: int, progress: bool) -> tuple[list[str], int]:
    """One batched generation step over ``user_turns`` (sorted by length inside); texts in input order."""
    from rlhfkit.generate import generate_completions

    turns = [Prompt(id=str(i), prompt=t) for i, t in enumerate(user_turns)]
    completions, stats = generate_completions(
        model, tokenizer, turns, k=1, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
        batch_size=batch_size, seed=seed, model_name="", progress=progress,
    )
    return [c.text for c in completions], stats["tokens"]


def revise(model, tokenizer, prompts: list[Prompt], constitution, *, rounds: int, max_new_tokens: int,
           temperature: float, top_p: float, batch_size: int, seed: int, model_name: str,
           progress: bool = True) -> tuple[list[dict], dict]:
    """Response → (critique → revision) × ``rounds`` for every prompt. Returns (records, stats).

    A record: {prompt_id, prompt, split, model, constitution, principles, response, critiques,
    revisions, final}; ``principles[r]`` is the id used in round r. A revision that cleans up to
    nothing is kept as "" and the next round (and ``final``) uses the last non-empty text.
    """
    from rlhfkit.cai.constitution import draw_principles

    if not prompts:
        raise RlhfkitError("no prompts to revise")
    start = time.perf_counter()
    step = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, batch_size=batch_size,
                progress=progress)
    drawn = [draw_principles(constitution, rounds, seed=seed, key=p.id) for p in prompts]  # (N, rounds)
    responses, tokens = _generate(model, tokenizer, [p.prompt for p in prompts], seed=seed * 1009, **step)
    responses = [clean_output(r) for r in responses]
    current = list(responses)
    critiques: list[list[str]] = [[] for _ in prompts]
    revisions: list[list[str]] = [[] for _ in prompts]
    for r in range(rounds):
        turns = [critique_prompt(p.prompt, cur, d[r].critique_request) for p, cur, d in zip(prompts, current, drawn)]
        texts, n = _generate(model, tokenizer, turns, seed=seed * 1009 + 2 * r + 1, **step)
        tokens += n
        for i, t in enumerate(texts):
            critiques[i].append(clean_output(t))
        turns = [revision_prompt(p.prompt, cur, critiques[i][r], drawn[i][r].revision_request)
                 for i, (p, cur) in enumerate(zip(prompts, current))]
        texts, n = _generate(model, tokenizer, turns, seed=seed * 1009 + 2 * r + 2, **step)
        tokens += n
        for i, t in enumerate(texts):
            revisions[i].append(clean_output(t))
            current[i] = revisions[i][-1] or current[i]
    label = f"{constitution.name} v{constitution.version}"
    records = [
        {"prompt_id": p.id, "prompt": p.prompt, "split": p.split, "model": model_name, "constitution": label,
         "principles": [x.id for x in d], "response": resp, "critiques": crit, "revisions": rev, "final": final}
        for p, d, resp, crit, rev, final in zip(prompts, drawn, responses, critiques, revisions, current)
    ]
    seconds = time.perf_counter() - start
    return records, {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / max(seconds, 1e-9)}


def run_revise(cfg, *, progress: bool = True) -> dict:
    """The ``cai revise`` stage: writes RUN_DIR/cai/revisions.jsonl. Returns a summary."""
    from rlhfkit import defaults
    from rlhfkit.cai.constitution import load_constitution
    from rlhfkit.config import save_resolved
    from rlhfkit.data.io import write_jsonl
    from rlhfkit.generate import select_prompts
    from rlhfkit.models.load import load_policy, pick_device

    out = Path(cfg.run_dir) / "cai" / "revisions.jsonl"
    if out.exists() and not cfg.force:
        raise RlhfkitError(f"{out} already exists (use --force to overwrite)")
    constitution = load_constitution(cfg.constitution)
    prompts = select_prompts(defaults.read_prompt_spec(cfg.prompts), cfg.split, cfg.num_prompts)
    if not prompts:
        raise RlhfkitError(f"{cfg.prompts}: no prompts in split '{cfg.split}'")
    model, tokenizer = load_policy(cfg.model, device=pick_device(cfg.device), dtype=cfg.dtype)
    records, stats = revise(
        model, tokenizer, prompts, constitution, rounds=cfg.rounds, max_new_tokens=cfg.sampling.max_new_tokens,
        temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p, batch_size=cfg.batch_size, seed=cfg.seed,
        model_name=cfg.model, progress=progress,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, records)
    save_resolved(cfg.run_dir, "cai_revise", cfg)
    changed = sum(r["final"] != r["response"] for r in records)
    empty = sum(not x for r in records for x in r["revisions"])
    return {"path": str(out), "prompts": len(records), "rounds": cfg.rounds, "changed": changed,
            "empty_revisions": empty, **stats}
