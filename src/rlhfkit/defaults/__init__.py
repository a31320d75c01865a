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


SHIPPED = {"default": "prompts.jsonl", "redteam": "redteam.jsonl"}
"""Names of the shipped prompt sets."""


def prompt_files(spec: str) -> list[Path]:
    """The files a prompt spec names: 'default', 'redteam', a path, or several joined by '+'
    ('default+redteam': the chat prompts and the red-team requests)."""
    return [HERE / SHIPPED[part] if part in SHIPPED else Path(part) for part in spec.split("+")]


def read_prompt_spec(spec: str) -> list:
    """Every prompt of every file of ``spec`` (data.records.Prompt); ids must be unique across them.

    One file: its order. Several: interleaved in proportion to their sizes (each prompt keyed by its relative
    position in its file), so the first N prompts of a split draw on every file.
    """
    from rlhfkit.data.errors import RlhfkitError
    from rlhfkit.data.io import read_prompts

    keyed, seen = [], {}
    for f, path in enumerate(prompt_files(spec)):
        if not path.exists():
            raise RlhfkitError(f"{path}: prompts file does not exist")
        prompts = read_prompts(path)
        for j, p in enumerate(prompts):
            if p.id in seen:
                raise RlhfkitError(f"{path}: prompt id {p.id!r} is also in {seen[p.id]}")
            seen[p.id] = path
            keyed.append(((j + 0.5) / len(prompts), f, p))
    return [p for _, _, p in sorted(keyed, key=lambda t: t[:2])]


def guideline_path() -> Path:
    """The default labeler guideline (Markdown, first line 'version: N')."""
    return HERE / "guideline.md"


def demo_path() -> Path:
    """The pipeline config `rlhfkit demo` runs."""
    return HERE / "demo.yaml"


def constitution_path() -> Path:
    """The default constitution for the Constitutional AI stage."""
    return HERE / "constitution.yaml"
