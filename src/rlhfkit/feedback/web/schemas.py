"""Request and response bodies of the JSON API (the store's dataclasses never go over the wire as is).

The bounds here only keep absurd input (a 10 MB comment, a 30-digit task id) away from the store;
the rules of what a ranking may be are the store's, and its refusals come back as 400/404/409.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

CompletionId = Annotated[str, Field(min_length=1, max_length=200)]
Mark = Union[Annotated[StrictInt, Field(ge=1, le=1000)], Literal["F"]]
TaskId = Annotated[int, Field(ge=1, le=2**53)]


class RankingIn(BaseModel):
    """One labeler's ranking of the task they were assigned; the display order is the server's."""

    model_config = ConfigDict(extra="forbid")

    task_id: TaskId
    marks: Annotated[dict[CompletionId, Mark], Field(max_length=100)] = Field(
        description="completion_id → rank (1 = best, equal ranks = a tie) or 'F' (fail)"
    )
    fail_reasons: Annotated[dict[CompletionId, Annotated[str, Field(max_length=1000)]], Field(max_length=100)] = {}
    comment: Annotated[str, Field(max_length=5000)] = ""
    checked_facts: bool = False

    @model_validator(mode="after")
    def _every_fail_has_a_reason(self) -> "RankingIn":
        # The guideline asks for a reason with every F; the store checks the reasons it is given.
        missing = [cid for cid, m in self.marks.items() if m == "F" and not self.fail_reasons.get(cid, "").strip()]
        if missing:
            raise ValueError(f"give a reason for each completion marked F: {missing}")
        return self


class SkipIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: TaskId


class RankingOut(BaseModel):
    ranking_id: int
    task_id: int
    seconds_spent: float


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
