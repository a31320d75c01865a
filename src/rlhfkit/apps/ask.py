"""`rlhfkit ask`, `rlhfkit rag-index` and `rlhfkit apps-eval`: the apps from the command line."""

from __future__ import annotations

from rlhfkit.data.errors import RlhfkitError


def run_rag_index(cfg) -> dict:
    from rlhfkit.apps.rag import RagIndex

    index = RagIndex.build(cfg.docs, cfg.index)
    sources = {c.source for c in index.chunks}
    return {"index": cfg.index, "files": len(sources), "chunks": len(index.chunks)}


def _chat(cfg):
    import os

    from rlhfkit.apps.llm import local_chat, openai_chat

    if cfg.base_url:
        name = cfg.served_name
        if not name:
            from openai import OpenAI

            name = OpenAI(base_url=cfg.base_url, api_key=os.environ.get("RLHFKIT_SERVE_API_KEY", "none")).models.list().data[0].id
        return openai_chat(cfg.base_url, name, api_key=os.environ.get("RLHFKIT_SERVE_API_KEY", "none"),
                           max_tokens=cfg.max_tokens)
    return local_chat(cfg.model, max_tokens=cfg.max_tokens, seed=cfg.seed, device=cfg.device, dtype=cfg.dtype)


def run_ask(cfg) -> str:
    """The answer (and how it was reached) as printable text."""
    from rlhfkit.apps import cot, pal, rag, react

    chat = _chat(cfg)
    if cfg.method == "plain":
        reply = chat(cot.plain_messages(cfg.question))
        return f"{reply}\n\nanswer: {cot.extract_answer(reply)}"
    if cfg.method == "cot":
        reply = chat(cot.cot_messages(cfg.question))
        return f"{reply}\n\nanswer: {cot.extract_answer(reply)}"
    if cfg.method == "pal":
        out = pal.solve(chat, cfg.question)
        return f"program (run in the sandbox):\n{out.program}\nanswer: {out.answer} {out.reason()}".rstrip()
    index = rag.RagIndex.load(cfg.index)
    if cfg.method == "rag":
        engine = getattr(chat, "engine", None)
        fits = rag.context_fits(engine, cfg.max_tokens) if engine is not None else None
        out = rag.answer(chat, index, cfg.question, k=cfg.k, fits=fits)
        shown = "\n".join(f"[{i}] {h.chunk.cite()} (similarity {h.score:.2f})" for i, h in enumerate(out.shown, 1))
        cited = ", ".join(h.chunk.cite() for h in out.cited) or "none"
        return f"{out.text}\n\ndocuments shown:\n{shown}\ncited: {cited}"
    tools = {"search": react.search_tool(index), "compute": react.compute_tool}
    return react.run(chat, cfg.question, tools, max_steps=cfg.max_steps).render()


def _reference(cfg) -> str | None:
    """The model to compare with: --reference, else the base model the run's policy was trained from."""
    import yaml

    from rlhfkit.serve.engine import find_policy_dir

    if cfg.reference.lower() == "none":
        return None
    if cfg.reference:
        return cfg.reference
    policy = find_policy_dir(cfg.model)
    if policy is None:
        return None
    base = (yaml.safe_load((policy / "config.yaml").read_text()) or {}).get("model") if (policy / "config.yaml").exists() else None
    if not base:
        raise RlhfkitError(f"{policy}/config.yaml: no field 'model' names the base model (give --reference)")
    return base


def run_apps_eval(cfg) -> str:
    """Score the model (and its reference) with each method; write every reply to JSON; the table and
    some transcripts as printable text. Models load one at a time."""
    import sys
    import time
    from dataclasses import asdict
    from pathlib import Path

    from rlhfkit.apps import evaluate as ev
    from rlhfkit.serve.engine import find_policy_dir

    policy = find_policy_dir(cfg.model)
    out = Path(cfg.out) if cfg.out else None
    if out is None:
        if policy is None or policy.name != "policy":
            raise RlhfkitError(f"{cfg.model} is not a run directory: give --out for the JSON")
        out = policy.parent / "apps_eval.json"
    if out.exists() and not cfg.force:
        raise RlhfkitError(f"{out} exists (--force overwrites it)")
    methods = cfg.method_list()
    n = cfg.limit or None
    problems = ev.read_problems(cfg.problems or ev.PROBLEMS)[:n]
    questions = ev.read_questions(cfg.questions or ev.QUESTIONS)[:n]
    models = {"aligned" if policy is not None else "model": cfg.model}
    reference = _reference(cfg)
    if reference is not None:
        models["reference"] = reference
    if "pal" in methods:  # refuse before anything loads if the kernel cannot isolate the programs
        from rlhfkit.apps.sandbox import run_python

        run_python("pass")
    index = None
    if "rag" in methods:
        from rlhfkit.apps.rag import RagIndex

        index = RagIndex.build(cfg.docs or ev.HANDBOOK)
    settings = ev.Settings(answer_tokens=cfg.answer_tokens, reasoning_tokens=cfg.reasoning_tokens, k=cfg.k)
    from rlhfkit.apps.rag import context_fits
    from rlhfkit.data.io import atomic_write_json
    from rlhfkit.machine import describe
    from rlhfkit.serve.app import build_engine

    engines = {}
    for role, spec in models.items():  # both at once (two small models): the table fills in row by row
        engine = build_engine(spec, device=cfg.device, dtype=cfg.dtype, max_batch=cfg.max_batch,
                              max_tokens=max(cfg.answer_tokens, cfg.reasoning_tokens), seed=cfg.seed)
        engines[f"{role}: {engine.name}"] = engine
    results: dict[str, dict] = {label: {} for label in engines}
    seconds: dict[str, dict] = {label: {} for label in engines}
    for method in methods:
        items = problems if ev.TASKS[method] == "arithmetic" else questions
        for label, engine in engines.items():
            start = time.perf_counter()
            records = ev.run_method(ev.engine_generate(engine), method, items, settings, index,
                                    context_fits(engine, settings.answer_tokens))
            results[label][method] = {"summary": ev.summarize(records), "records": records}
            seconds[label][method] = round(time.perf_counter() - start, 1)
            s = results[label][method]["summary"]
            print(f"{method}, {label}: {s['correct']}/{s['n']} right in {seconds[label][method]} s", file=sys.stderr,
                  flush=True)
            atomic_write_json(out, {  # after every method: a long run interrupted keeps what it measured
                "settings": asdict(cfg), "machine": describe(), "seconds": seconds, "models": models,
                "summary": {lb: {m: r["summary"] for m, r in res.items()} for lb, res in results.items()},
                "records": {lb: {m: r["records"] for m, r in res.items()} for lb, res in results.items()},
            })
    parts = []
    if cfg.examples:
        for method in methods:
            for label, res in results.items():
                shown = ev.examples(res[method]["records"], cfg.examples)
                parts.append(f"--- {method}, {label} ---\n" + "\n\n".join(ev.transcript(r) for r in shown))
    from rlhfkit.machine import one_line

    parts.append(f"greedy; {one_line(describe())}, dtype {cfg.dtype}; answer_tokens {cfg.answer_tokens}, "
                 f"reasoning_tokens {cfg.reasoning_tokens}, k {cfg.k}; seconds {seconds}\n"
                 "accuracy (right/items) [95% Wilson interval]:\n" + ev.table(results) + f"\n→ {out}")
    return "\n\n".join(parts)
