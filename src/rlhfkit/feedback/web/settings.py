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
    secure_cookies: bool = Field(False, description="Send the session cookie only over HTTPS (set behind TLS).")
    max_upload_mb: float = Field(200.0, gt=0, description="Largest completions.jsonl an admin may upload.")
    criterion: str = Field(
        "helpful, honest and harmless (see the guideline)", description="Default criterion for imported tasks."
    )
