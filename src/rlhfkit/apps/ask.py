"""`rlhfkit ask` and `rlhfkit rag-index`: the apps from the command line."""

from __future__ import annotations


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
