"""What the apps talk to: a chat function, messages in, the assistant's reply out.

``Chat = Callable[[list[dict]], str]``. ``local_chat`` runs a model in this process (the same engine as
`rlhfkit serve`: a run directory's aligned policy or any model); ``openai_chat`` talks to any
OpenAI-compatible server — `rlhfkit serve` or a larger hosted model, so an app is one option away from
a bigger model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

Chat = Callable[[list[dict]], str]


def local_chat(model: str, *, max_tokens: int = 256, temperature: float = 0.0, seed: int = 0, device: str = "cpu",
               dtype: str = "float32") -> Chat:
    """A Chat over ``model`` (run directory, policy folder, model folder or 'smollm2'), greedy by default."""
    from rlhfkit.serve.app import build_engine
    from rlhfkit.serve.engine import Sampling

    engine = build_engine(model, device=device, dtype=dtype, max_batch=1, max_tokens=max_tokens, seed=seed)
    sampling = Sampling(max_tokens=max_tokens, temperature=temperature, seed=seed if temperature > 0 else None)

    def chat(messages: list[dict]) -> str:
        prompt = engine.chat_prompt(messages)
        budget = engine.token_budget(len(engine.encode(prompt)), None)  # never past the context window
        return engine.complete([prompt], replace(sampling, max_tokens=min(budget, max_tokens)))[0]

    chat.engine = engine  # type: ignore[attr-defined]  (RAG measures prompts with its tokenizer)
    return chat


def openai_chat(base_url: str, model: str, *, api_key: str = "none", max_tokens: int = 256,
                temperature: float = 0.0) -> Chat:
    """A Chat over an OpenAI-compatible server (e.g. `rlhfkit serve` at http://127.0.0.1:8000/v1)."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key)

    def chat(messages: list[dict]) -> str:
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens,
                                           temperature=temperature)
        return r.choices[0].message.content or ""

    return chat
