"""What ``rlhfkit label serve``, ``label invite`` and ``label revoke`` do."""

from __future__ import annotations

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.feedback.label import ensure_guideline, open_store, store_location
from rlhfkit.feedback.web.security import hash_token, new_token

INVITE_TTL_S = 7 * 86400
"""How long an invite link stays valid before it is used."""


def invite(run_dir: str, store: str, name: str, admin: bool = False, base_url: str = "http://127.0.0.1:8000",
           reissue: bool = False) -> str:
    """Register a human labeler (an admin with ``admin``) and return their personal sign-in link; with
    ``reissue``, a new link for a labeler already registered (their unused older link stops working).

    The link signs in once, within INVITE_TTL_S, and only its token's hash is stored: it is shown once.
    """
    from rlhfkit.feedback.store import NotFoundError

    token = new_token()
    role = "admin" if admin else "labeler"
    # must_exist: a mistyped --run-dir must not quietly create an empty store (an explicit --store may)
    with open_store(run_dir, store, must_exist=not store) as s:
        if reissue:
            try:
                labeler = s.get_labeler(name)
            except NotFoundError:
                raise RlhfkitError(f"no labeler {name!r}: invite them without --reissue") from None
            if labeler.kind != "human":
                raise RlhfkitError(f"{name!r} is a {labeler.kind} labeler; only people sign in")
            if admin and labeler.role != "admin":
                raise RlhfkitError(f"{name!r} is registered as a labeler; a re-issued link does not change the role")
        else:
            if any(lab.name == name for lab in s.list_labelers()):
                raise RlhfkitError(f"labeler {name!r} already exists; `rlhfkit label invite {name} --reissue` gives "
                                   "them a new link (the old one stops working), `label revoke` signs them out")
            s.add_labeler(name, kind="human", role=role)
        s.add_invite(name, hash_token(token), INVITE_TTL_S)
    return f"{base_url.rstrip('/')}/login?token={token}"


def revoke(run_dir: str, store: str, name: str) -> str:
    """Sign ``name`` out of every browser and cancel their unused links; their rankings stay."""
    with open_store(run_dir, store, must_exist=True) as s:
        sessions, links = s.revoke(name)
    return (f"{name}: {sessions} sessions ended, {links} unused links cancelled; "
            f"`rlhfkit label invite {name} --reissue` lets them in again")


def serve(run_dir: str, store: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the labeling app on the run's store until interrupted (the shipped guideline is stored first)."""
    import uvicorn

    from rlhfkit.feedback.web.app import create_app
    from rlhfkit.feedback.web.settings import Settings

    with open_store(run_dir, store, must_exist=not store) as s:
        ensure_guideline(s)
    settings = Settings()
    if host not in ("0.0.0.0", "::", "") and host not in settings.allowed_hosts:  # the address asked for is a name too
        settings = settings.model_copy(update={"allowed_hosts": [*settings.allowed_hosts, host]})
    # No access log: sign-in URLs carry the token, and a log line would keep it in plain text.
    # Behind a TLS proxy on this machine, uvicorn trusts its X-Forwarded-Proto/-For (forwarded_allow_ips).
    uvicorn.run(create_app(store_location(run_dir, store), settings), host=host, port=port, access_log=False)
