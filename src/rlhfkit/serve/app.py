"""``create_app(engine)``: the OpenAI-compatible app; ``run_serve(cfg)``: what `rlhfkit serve` does."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from rlhfkit.serve.batching import BatchWorker
from rlhfkit.serve.engine import Engine
from rlhfkit.serve.routes import ApiError, router
from rlhfkit.serve.schemas import Unsupported
from rlhfkit.serve.settings import ServeSettings

log = logging.getLogger("rlhfkit.serve")


def _validation_error(request: Request, exc: RequestValidationError):
    # OpenAI answers a malformed request with 400 and names the field in `param`
    first = exc.errors()[0]
    param = ".".join(str(p) for p in first["loc"][1:]) or None
    message = "; ".join(f"{'.'.join(map(str, e['loc'][1:])) or 'body'}: {e['msg']}" for e in exc.errors())
    return ApiError(400, message, param=param).response()


def _http_error(request: Request, exc: HTTPException):
    message = f"Unknown request URL: {request.method} {request.url.path}" if exc.status_code == 404 else str(exc.detail)
    return ApiError(exc.status_code, message, headers=exc.headers).response()


def _server_error(request: Request, exc: Exception):
    log.exception("error answering %s %s", request.method, request.url.path)  # details stay in the server log
    return ApiError(500, "The server had an error while processing your request.", type_="server_error").response()


def _too_large(request: Request, status: int, detail: str):
    return ApiError(status, detail).response()


def create_app(engine: Engine, settings: ServeSettings | None = None) -> FastAPI:
    """The app over ``engine``; its generation thread starts and stops with the app (lifespan)."""
    from rlhfkit.feedback.web.security import BodyLimit

    settings = settings or ServeSettings()
    worker = BatchWorker(engine, wait_s=settings.batch_wait_ms / 1000, max_queue=settings.max_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="rlhfkit serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine, app.state.worker, app.state.created = engine, worker, int(time.time())
    app.state.api_key = settings.api_key.get_secret_value()
    app.add_middleware(BodyLimit, default_bytes=round(settings.max_body_kb * 1e3), per_path={}, respond=_too_large)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts, www_redirect=False)
    app.include_router(router)
    app.add_exception_handler(ApiError, lambda r, e: e.response())
    app.add_exception_handler(Unsupported, lambda r, e: ApiError(400, str(e), param=e.param).response())
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)
    return app


def build_engine(model: str, *, device: str, dtype: str, max_batch: int, max_tokens: int, name: str = "",
                 seed: int = 0) -> Engine:
    """The engine over a run directory, a policy folder, or a model (see ``engine.load_served``)."""
    import torch

    from rlhfkit.models.load import pick_device
    from rlhfkit.serve.engine import load_served

    torch.manual_seed(seed)
    lm, tokenizer, defaults, found = load_served(model, device=pick_device(device), dtype=dtype, max_tokens=max_tokens)
    return Engine(lm, tokenizer, name=name or found, defaults=defaults, max_batch=max_batch)


def run_serve(cfg) -> None:
    """Serve until interrupted (``ServeConfig``); the API key comes from --api-key or RLHFKIT_SERVE_API_KEY."""
    import uvicorn

    settings = ServeSettings()
    update: dict = {}
    if cfg.api_key:
        update["api_key"] = cfg.api_key
    if cfg.host not in ("0.0.0.0", "::", "") and cfg.host not in settings.allowed_hosts:  # its own address is a name too
        update["allowed_hosts"] = [*settings.allowed_hosts, cfg.host]
    settings = ServeSettings(**{**settings.model_dump(), **update}) if update else settings
    engine = build_engine(cfg.model, device=cfg.device, dtype=cfg.dtype, max_batch=cfg.max_batch,
                          max_tokens=cfg.max_tokens, name=cfg.name, seed=cfg.seed)
    key_note = "API key required" if settings.api_key.get_secret_value() else "no API key"
    print(f"serving '{engine.name}' at http://{cfg.host}:{cfg.port}/v1 ({key_note}; Ctrl-C stops it)", flush=True)
    uvicorn.run(create_app(engine, settings), host=cfg.host, port=cfg.port, log_level="warning")
