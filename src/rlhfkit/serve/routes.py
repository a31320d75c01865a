"""/v1/models, /v1/chat/completions and /v1/completions, streamed (server-sent events) or not."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from rlhfkit.serve import schemas
from rlhfkit.serve.engine import Engine, Job, Sampling


class ApiError(Exception):
    """An error answered in OpenAI's shape (``schemas.error_body``) with this HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.type, self.param, self.code, self.headers = status, type_, param, code, headers

    def response(self) -> JSONResponse:
        body = schemas.error_body(str(self), self.type, self.param, self.code)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def check_api_key(request: Request) -> None:
    """With an API key set, every /v1 request must carry it as a bearer token (compared in constant time)."""
    key = request.app.state.api_key
    if not key:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer KEY'.", code="invalid_api_key")


router = APIRouter(prefix="/v1", dependencies=[Depends(check_api_key)])


def _engine(request: Request, model: str | None = None) -> Engine:
    engine: Engine = request.app.state.engine
    if model is not None and model != engine.name:
        raise ApiError(404, f"The model '{model}' does not exist; this server has '{engine.name}'.", param="model",
                       code="model_not_found")
    return engine


def _sampling(engine: Engine, req: schemas._Sampled, n_prompt: int, max_tokens: int | None) -> Sampling:
    from rlhfkit.data.errors import RlhfkitError

    try:
        budget = engine.token_budget(n_prompt, max_tokens)
    except RlhfkitError as exc:
        raise ApiError(400, str(exc), param="messages", code="context_length_exceeded") from None
    d = engine.defaults
    return Sampling(max_tokens=budget, temperature=d.temperature if req.temperature is None else req.temperature,
                    top_p=d.top_p if req.top_p is None else req.top_p, top_k=d.top_k if req.top_k is None else req.top_k,
                    stop=tuple(req.stop), seed=req.seed)


class Feed:
    """Jobs' text and endings as they happen, carried from the generating thread into this event loop."""

    def __init__(self, jobs: list[Job]):
        loop, self.queue = asyncio.get_running_loop(), asyncio.Queue()
        self.jobs = jobs
        for i, job in enumerate(jobs):
            job.on_text = lambda piece, i=i: loop.call_soon_threadsafe(self.queue.put_nowait, (i, piece))
            job.on_done = lambda i=i: loop.call_soon_threadsafe(self.queue.put_nowait, (i, None))

    def submit(self, request: Request) -> None:
        from rlhfkit.serve.batching import QueueFull

        try:
            request.app.state.worker.submit(self.jobs)
        except QueueFull as exc:
            raise ApiError(503, str(exc), type_="server_error", code="overloaded", headers={"retry-after": "1"}) from None

    async def events(self) -> AsyncIterator[tuple[int, str | None]]:
        """(job index, text piece) for each piece, (job index, None) when that job has ended; then stops."""
        open_jobs = len(self.jobs)
        try:
            while open_jobs:
                i, piece = await self.queue.get()
                open_jobs -= piece is None
                yield i, piece
        finally:  # the client went away (or we are done): rows still generating stop at the next step
            for job in self.jobs:
                job.cancelled = True

    async def wait(self) -> None:
        async for _ in self.events():
            pass
        failed = next((j.error for j in self.jobs if j.error is not None), None)
        if failed is not None:
            raise failed


def _sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


def _stream(feed: Feed, first: list[dict], piece_chunk, end_chunk, usage_chunk) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        for chunk in first:
            yield _sse(chunk)
        async for i, piece in feed.events():
            job = feed.jobs[i]
            if piece is not None:
                yield _sse(piece_chunk(i, piece))
            elif job.error is not None:  # the status line is sent already: the error goes in the stream
                yield _sse(schemas.error_body("generation failed on the server", "server_error"))
                return
            else:
                yield _sse(end_chunk(i, job.finish_reason))
        if usage_chunk is not None:
            yield _sse(usage_chunk())
        yield _sse("[DONE]")

    return StreamingResponse(body(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


def _usage(jobs: list[Job], prompt_tokens: int) -> dict:
    return schemas.usage(prompt_tokens, sum(j.tokens for j in jobs))


@router.get("/models")
def list_models(request: Request) -> dict:
    return {"object": "list", "data": [schemas.model_card(_engine(request).name, request.app.state.created)]}


@router.get("/models/{model_id:path}")
def get_model(model_id: str, request: Request) -> dict:
    return schemas.model_card(_engine(request, model_id).name, request.app.state.created)


@router.post("/chat/completions")
async def chat_completions(req: schemas.ChatRequest, request: Request):
    req.refuse_unsupported()
    engine = _engine(request, req.model)
    ids = engine.encode(engine.chat_prompt([m.as_template_message() for m in req.messages]))
    sampling = _sampling(engine, req, len(ids), req.token_limit())
    feed = Feed([Job(ids, sampling) for _ in range(req.n)])
    feed.submit(request)
    cid, name = schemas.new_id("chatcmpl"), engine.name
    if req.stream:
        want_usage = req.stream_options is not None and req.stream_options.include_usage
        first = [schemas.chat_chunk(cid, name, i, {"role": "assistant", "content": ""}) for i in range(req.n)]
        return _stream(
            feed, first,
            piece_chunk=lambda i, piece: schemas.chat_chunk(cid, name, i, {"content": piece}),
            end_chunk=lambda i, reason: schemas.chat_chunk(cid, name, i, {}, reason),
            usage_chunk=(lambda: schemas.chat_chunk(cid, name, None, use=_usage(feed.jobs, len(ids) * req.n)))
            if want_usage else None)
    await feed.wait()
    return schemas.chat_completion(cid, name, [(j.text, j.finish_reason) for j in feed.jobs],
                                   _usage(feed.jobs, len(ids) * req.n))


@router.post("/completions")
async def completions(req: schemas.CompletionRequest, request: Request):
    req.refuse_unsupported()
    engine = _engine(request, req.model)
    prompts = [engine.encode(p) for p in req.prompts()]
    if not prompts or any(not p for p in prompts):
        raise ApiError(400, "prompt must be a non-empty string or list of non-empty strings", param="prompt")
    jobs = [Job(ids, _sampling(engine, req, len(ids), req.max_tokens)) for ids in prompts for _ in range(req.n)]
    feed = Feed(jobs)
    feed.submit(request)
    cid, name = schemas.new_id("cmpl"), engine.name
    n_prompt = sum(len(p) for p in prompts) * req.n
    if req.stream:
        want_usage = req.stream_options is not None and req.stream_options.include_usage
        return _stream(
            feed, [],
            piece_chunk=lambda i, piece: schemas.text_completion(cid, name, [(piece, None)], None, first_index=i),
            end_chunk=lambda i, reason: schemas.text_completion(cid, name, [("", reason)], None, first_index=i),
            usage_chunk=(lambda: {**schemas.text_completion(cid, name, [], _usage(jobs, n_prompt))}) if want_usage else None)
    await feed.wait()
    return schemas.text_completion(cid, name, [(j.text, j.finish_reason) for j in jobs], _usage(jobs, n_prompt))
