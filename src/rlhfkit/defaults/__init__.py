"""The embedded default: prompts, labeler guideline and red-team prompts shipped inside the package."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def prompts_path() -> Path:
    """The default prompt set (train/eval split) that rlhfkit ships."""
    return HERE / "prompts.jsonl"


def redteam_path() -> Path:
    """Red-team prompts for the Constitutional AI stage."""
    return HERE / "redteam.jsonl"


def guideline_path() -> Path:
    """The default labeler guideline (Markdown, first line 'version: N')."""
    return HERE / "guideline.md"


def demo_path() -> Path:
    """The pipeline config `rlhfkit demo` runs."""
    return HERE / "demo.yaml"


def constitution_path() -> Path:
    """The default constitution for the Constitutional AI stage."""
    return HERE / "constitution.yaml"
