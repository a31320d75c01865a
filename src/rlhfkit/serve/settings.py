"""`rlhfkit serve`'s environment settings (pydantic-settings, ``RLHFKIT_SERVE_*``); the CLI options override them."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RLHFKIT_SERVE_")

    api_key: SecretStr = Field(
        SecretStr(""), description="Clients must send 'Authorization: Bearer KEY' ('' = no key: keep the server on "
                                   "127.0.0.1). From the environment, so it never shows in a process list.")
    allowed_hosts: list[str] = Field(
        ["127.0.0.1", "localhost"],
        description="Host names the server answers to (JSON list); others get 400 (DNS rebinding from a web page).")
    max_body_kb: float = Field(1024.0, gt=0, description="Largest request body.")
    max_queue: int = Field(256, ge=1, description="Requests waiting for the model before new ones get 503 (Retry-After).")
    batch_wait_ms: float = Field(
        10.0, ge=0, description="How long the first request of a batch waits for others to join it.")
