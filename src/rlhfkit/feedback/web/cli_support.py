"""What ``rlhfkit label serve`` and ``rlhfkit label invite`` do."""

from __future__ import annotations

from rlhfkit.feedback.label import ensure_guideline, open_store, store_location
from rlhfkit.feedback.web.security import hash_token, new_token


def invite(run_dir: str, store: str, name: str, admin: bool = False, base_url: str = "http://127.0.0.1:8000") -> str:
    """Register a human labeler (an admin with ``admin``) and return their personal sign-in link.

    Only the token's hash is stored, so the link is shown once: whoever holds it signs in as ``name``.
    """
    token = new_token()
    with open_store(run_dir, store) as s:
        s.add_labeler(name, kind="human", role="admin" if admin else "labeler", token_hash=hash_token(token))
    return f"{base_url.rstrip('/')}/login?token={token}"


def serve(run_dir: str, store: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the labeling app on the run's store until interrupted (the shipped guideline is stored first)."""
    import uvicorn

    from rlhfkit.feedback.web.app import create_app

    with open_store(run_dir, store) as s:
        ensure_guideline(s)
    # No access log: sign-in URLs carry the token, and a log line would keep it in plain text.
    uvicorn.run(create_app(store_location(run_dir, store)), host=host, port=port, access_log=False)
