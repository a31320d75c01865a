"""Request and response bodies of the JSON API (the store's dataclasses never go over the wire as is).

The bounds here only keep absurd input (a 10 MB comment, a 30-digit task id) away from the store;
the rules of what a ranking may be are the store's (:mod:`rlhfkit.feedback.rules`, whose limits these
bounds are, so that every imported task can be ranked), and its refusals come back as 400/404/409.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from rlhfkit.feedback.rules import MAX_COMPLETIONS, MAX_ID_CHARS

CompletionId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
Mark = Union[Annotated[StrictInt, Field(ge=1, le=MAX_COMPLETIONS)], Literal["F"]]
MAX_ROW_ID = 2**31 - 1  # ids and versions are INTEGER columns: 32 bits on PostgreSQL
RowId = Annotated[int, Field(ge=1, le=MAX_ROW_ID)]


class CorrectionIn(BaseModel):
    """A labeler's amended ranking of a task they ranked (the display order is the one they saw then)."""

    model_config = ConfigDict(extra="forbid")

    marks: Annotated[dict[CompletionId, Mark], Field(max_length=MAX_COMPLETIONS)] = Field(
        description="completion_id → rank (1 = best, equal ranks = a tie) or 'F' (fail)"
    )
    fail_reasons: Annotated[
        dict[CompletionId, Annotated[str, Field(max_length=1000)]], Field(max_length=MAX_COMPLETIONS)
    ] = {}
    comment: Annotated[str, Field(max_length=5000)] = ""
    checked_facts: bool = False

    @model_validator(mode="after")
    def _every_fail_has_a_reason(self):
        # The guideline asks for a reason with every F; the store checks the reasons it is given.
        missing = [cid for cid, m in self.marks.items() if m == "F" and not self.fail_reasons.get(cid, "").strip()]
        if missing:
            raise ValueError(f"give a reason for each completion marked F: {missing}")
        return self


class RankingIn(CorrectionIn):
    """One labeler's ranking of the task they were assigned; the display order is the server's."""

    task_id: RowId


class SkipIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: RowId


class RankingOut(BaseModel):
    ranking_id: int
    task_id: int
    seconds_spent: float | None = Field(description="from the assignment to the submission; null for a correction")


class CompletionOut(BaseModel):
    letter: str
    completion_id: str
    text: str


class TaskOut(BaseModel):
    """A held task, its completions in the order this labeler sees them."""

    task_id: int
    prompt_id: str
    prompt: str
    criterion: str
    completions: list[CompletionOut]
    expires_at: datetime


class ProgressOut(BaseModel):
    tasks: int
    rankings_needed: int
    rankings_done: int
    tasks_complete: int
    mine: int


class NextTaskOut(BaseModel):
    task: TaskOut | None = Field(description="null when no task is left for this labeler")
    progress: ProgressOut


class MeOut(BaseModel):
    name: str
    role: str
    csrf_token: str
    guideline_version: int | None
    guideline_confirmed: bool
