"""Request bodies of the OpenAI API subset `rlhfkit serve` answers, and the response objects it sends.

Fields real clients send that change nothing here (user, metadata, store, …) are accepted and
ignored; fields that would change the answer in a way this server does not do (tools, logprobs,
penalties, JSON mode) are refused with a 400 naming the field, never silently dropped.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 4  # as OpenAI: up to 4 stop sequences


class Unsupported(ValueError):
    """A request asks for something this server does not do; ``param`` names the field (→ 400)."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def as_template_message(self) -> dict:
        # 'developer' is the newer name OpenAI gives the system turn
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampled(BaseModel):
    """Sampling fields both endpoints share (OpenAI's names and ranges)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # not OpenAI's, but vLLM's and common
    n: int = Field(1, ge=1, le=8)
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict | None = None
    logprobs: bool | int | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise ValueError(f"at most {MAX_STOP} non-empty stop sequences")
        return stops

    def refuse_unsupported(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise Unsupported(name, f"{name} is not supported by this server (leave it out or 0)")
        if self.logit_bias:
            raise Unsupported("logit_bias", "logit_bias is not supported by this server")
        if self.logprobs:
            raise Unsupported("logprobs", "logprobs are not supported by this server")


class ChatRequest(_Sampled):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list | None = None
    tool_choice: str | dict | None = None
    response_format: dict | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.tools:
            raise Unsupported("tools", "tool calling is not supported by this server")
        if self.response_format and self.response_format.get("type") != "text":
            raise Unsupported("response_format", "only response_format {'type': 'text'} is supported")

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampled):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for this endpoint
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.echo:
            raise Unsupported("echo", "echo is not supported by this server")
        if self.suffix:
            raise Unsupported("suffix", "suffix (insertion) is not supported by this server")
        if self.best_of not in (None, 1):
            raise Unsupported("best_of", "best_of is not supported by this server")

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt


# ---- responses (plain dicts, shaped as OpenAI's) --------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "rlhfkit"}


def chat_completion(cid: str, model: str, choices: list[tuple[str, str]], use: dict) -> dict:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": reason} for i, (text, reason) in enumerate(choices)],
            "usage": use}


def chat_chunk(cid: str, model: str, index: int | None, delta: dict | None = None, finish_reason: str | None = None,
               use: dict | None = None) -> dict:
    choices = [] if index is None else [{"index": index, "delta": delta or {}, "logprobs": None,
                                         "finish_reason": finish_reason}]
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": choices, "usage": use}


def text_completion(cid: str, model: str, choices: list[tuple[str, str]], use: dict | None,
                    obj: str = "text_completion", first_index: int = 0) -> dict:
    return {"id": cid, "object": obj, "created": int(time.time()), "model": model,
            "choices": [{"index": first_index + i, "text": text, "logprobs": None, "finish_reason": reason}
                        for i, (text, reason) in enumerate(choices)],
            "usage": use}


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error shape: the official clients read ``error.message`` (and raise by status code)."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
