"""The plain, frozen dataclasses :class:`rlhfkit.feedback.store.FeedbackStore` hands out (no ORM
object ever leaves the store). Import them from ``rlhfkit.feedback.store``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rlhfkit.data.records import Mark


@dataclass(frozen=True)
class Labeler:
    """A registered labeler."""

    id: int
    name: str
    kind: str  # human | simulated | ai
    role: str  # labeler | admin
    meta: dict
    created_at: datetime


@dataclass(frozen=True)
class Guideline:
    """One version of the labeling guideline."""

    version: int
    text: str
    created_at: datetime


@dataclass(frozen=True)
class Task:
    """A prompt and its completions, to be ranked."""

    task_id: int
    prompt_id: str
    prompt: str
    criterion: str
    overlap: int  # how many different labelers must rank it
    completions: tuple[tuple[str, str], ...]  # (completion_id, text) in import order
    is_gold: bool


@dataclass(frozen=True)
class Assignment:
    """A task held for one labeler until ``expires_at`` (naive UTC)."""

    task: Task
    labeler: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class StoredRanking:
    """A ranking row with everything the labeler gave; ``current`` is False once a correction supersedes it."""

    ranking_id: int
    task_id: int
    prompt_id: str
    labeler: str
    marks: dict[str, Mark]
    fail_reasons: dict[str, str]
    shown_order: list[str]
    guideline_version: int | None
    seconds_spent: float | None
    comment: str | None
    checked_facts: bool
    created_at: datetime
    supersedes: int | None
    current: bool


@dataclass(frozen=True)
class ImportCounts:
    """What ``add_tasks`` did."""

    added: int
    existing: int  # already in the store with the same prompt and completions


@dataclass(frozen=True)
class Progress:
    """How far labeling has got."""

    tasks: int
    rankings_needed: int  # Σ overlap over tasks
    rankings_done: int  # Σ min(labelers who ranked the task, overlap)
    tasks_complete: int
