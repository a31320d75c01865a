"""Throw-away PostgreSQL schemas for the store's tests and benchmarks (the app never uses this).

A store URL can name a schema through libpq's ``options``: ``…/db?options=-csearch_path%3DNAME``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from rlhfkit.feedback.store import database_url


def unreachable(url: str) -> str | None:
    """Why no PostgreSQL server answers at ``url`` (its password hidden); None when one does."""
    engine = create_engine(database_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as e:  # noqa: BLE001 — whatever keeps us from the server, say it
        shown = database_url(url).render_as_string(hide_password=True)
        return f"no PostgreSQL server at {shown} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    finally:
        engine.dispose()


@contextmanager
def scratch_schema(url: str, prefix: str = "t") -> Iterator[str]:
    """A new, empty schema on the server at ``url``, dropped with everything in it afterwards; yields
    a store URL that uses it."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    base = database_url(url)
    engine = create_engine(base, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {name}"))
    try:
        yield base.update_query_dict({"options": f"-csearch_path={name}"}).render_as_string(hide_password=False)
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {name} CASCADE"))
        engine.dispose()
