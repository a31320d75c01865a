"""The web app's settings, from ``RLHFKIT_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from rlhfkit.feedback.store import DEFAULT_TTL_S


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RLHFKIT_")

    assignment_ttl_s: float = Field(
        DEFAULT_TTL_S, gt=0, description="Seconds a task stays held for a labeler before it returns to the pool."
    )
    session_ttl_s: float = Field(
        7 * 86400, gt=0, description="Seconds a sign-in lasts (signing out or `label revoke` ends it sooner)."
    )
    allowed_hosts: list[str] = Field(
        ["127.0.0.1", "localhost"],
        description="Host names the app answers to (JSON list); any other Host header gets 400 (DNS rebinding).",
    )
    secure_cookies: bool = Field(
        False, description="Mark cookies Secure on plain HTTP too; they always are on a request that came over HTTPS."
    )
    max_upload_mb: float = Field(200.0, gt=0, description="Largest completions.jsonl an admin may upload.")
    max_body_kb: float = Field(1024.0, gt=0, description="Largest body of any other request.")
    signin_failures_per_minute: int = Field(
        10, ge=1, description="Failed sign-ins from one address per minute before it is refused for a while (429)."
    )
    busy_timeout_s: float = Field(
        10.0, gt=0, description="Seconds a write waits for the database before the app answers 503 (Retry-After)."
    )
    criterion: str = Field(
        "helpful, honest and harmless (see the guideline)", description="Default criterion for imported tasks."
    )
