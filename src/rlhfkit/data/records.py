"""Record types that flow between stages, one JSONL line each.

Every record has ``from_dict`` (strict: names the missing or bad field) and ``to_dict``.
Validation errors raise :class:`rlhfkit.data.errors.RecordError`; the JSONL reader adds the
file and line to the message.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Union

from rlhfkit.data.errors import RecordError

FAIL = "F"
"""The mark a labeler gives a nonsensical, empty or irrelevant completion instead of a rank."""

Mark = Union[int, str]  # a rank 1..K (1 = best; equal ranks = a tie) or FAIL


def _require(d: dict, name: str, kind: type | tuple, *, nonempty: bool = False) -> Any:
    if name not in d:
        raise RecordError(f"missing field '{name}'", field=name)
    value = d[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise RecordError(f"field '{name}' must be {want}, got {type(value).__name__}", field=name)
    if nonempty and isinstance(value, str) and not value.strip():
        raise RecordError(f"field '{name}' is empty", field=name)
    return value


def _optional(d: dict, name: str, kind: type | tuple, default: Any) -> Any:
    if d.get(name) is None:
        return default
    return _require(d, name, kind)


def _strings(d: dict, name: str) -> tuple[str, ...]:
    """An optional list of non-empty strings (absent = ())."""
    value = _optional(d, name, list, [])
    if not all(isinstance(x, str) and x.strip() for x in value):
        raise RecordError(f"field '{name}' must be a list of non-empty strings", field=name)
    return tuple(value)


@dataclass(frozen=True)
class Prompt:
    """A prompt to complete. ``split`` is ``train`` or ``eval`` (held out for evaluation).

    Optional, what a careful reader expects of a reply (the gold scorer reads them; see feedback/gold.py):
    ``references`` good replies, ``facts`` groups of alternatives a correct reply mentions (one of each
    group), ``wrong`` phrases of a confidently wrong reply, ``harmful`` replies that comply with a harmful
    request. ``category`` groups prompts in reports (provocative prompts are where toxicity lives).
    """

    id: str
    prompt: str
    split: str = "train"
    category: str = ""
    references: tuple[str, ...] = ()
    facts: tuple[tuple[str, ...], ...] = ()
    wrong: tuple[str, ...] = ()
    harmful: tuple[str, ...] = ()
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "eval")

    @classmethod
    def from_dict(cls, d: dict) -> "Prompt":
        split = _optional(d, "split", str, "train")
        if split not in cls.SPLITS:
            raise RecordError(f"field 'split' must be one of {cls.SPLITS}, got {split!r}", field="split")
        facts = _optional(d, "facts", list, [])
        if not all(isinstance(g, list) and g and all(isinstance(x, str) and x.strip() for x in g) for g in facts):
            raise RecordError("field 'facts' must be a list of non-empty lists of strings (alternatives)", field="facts")
        return cls(id=str(_require(d, "id", (str, int))), prompt=_require(d, "prompt", str, nonempty=True), split=split,
                   category=_optional(d, "category", str, ""), references=_strings(d, "references"),
                   facts=tuple(tuple(g) for g in facts), wrong=_strings(d, "wrong"), harmful=_strings(d, "harmful"))

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"id": self.id, "prompt": self.prompt, "split": self.split}
        if self.category:
            out["category"] = self.category
        for name in ("references", "wrong", "harmful"):
            if getattr(self, name):
                out[name] = list(getattr(self, name))
        if self.facts:
            out["facts"] = [list(g) for g in self.facts]
        return out


@dataclass(frozen=True)
class Completion:
    """One sampled completion of a prompt (``text`` is the reply only, without the prompt)."""

    prompt_id: str
    completion_id: str
    text: str
    model: str = ""
    sampling: dict = field(default_factory=dict)
    prompt: str = ""  # the prompt text, carried along so later stages need no join

    @classmethod
    def from_dict(cls, d: dict) -> "Completion":
        return cls(
            prompt_id=str(_require(d, "prompt_id", (str, int))),
            completion_id=str(_require(d, "completion_id", (str, int))),
            text=_require(d, "text", str),
            model=_optional(d, "model", str, ""),
            sampling=_optional(d, "sampling", dict, {}),
            prompt=_optional(d, "prompt", str, ""),
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Ranking:
    """One labeler's judgement of the K completions of one prompt.

    ``marks`` maps completion_id → rank (1 = best; equal ranks are a tie) or ``"F"`` (fail).
    """

    ranking_id: str
    prompt_id: str
    labeler: str
    marks: dict[str, Mark]
    prompt: str = ""
    texts: dict[str, str] = field(default_factory=dict)  # completion_id → text, for export

    @classmethod
    def from_dict(cls, d: dict) -> "Ranking":
        marks = _require(d, "marks", dict)
        if not marks:
            raise RecordError("field 'marks' is empty", field="marks")
        for cid, mark in marks.items():
            if mark == FAIL:
                continue
            if not isinstance(mark, int) or isinstance(mark, bool) or not 1 <= mark <= len(marks):
                raise RecordError(
                    f"field 'marks': completion {cid!r} has mark {mark!r}; want a rank 1..{len(marks)} or 'F'",
                    field="marks",
                )
        texts = _optional(d, "texts", dict, {})
        unknown = sorted(set(texts) - set(marks)) if texts else []
        if unknown:
            raise RecordError(f"field 'texts' names completions not ranked: {unknown}", field="texts")
        return cls(
            ranking_id=str(_require(d, "ranking_id", (str, int))),
            prompt_id=str(_require(d, "prompt_id", (str, int))),
            labeler=_require(d, "labeler", str, nonempty=True),
            marks=dict(marks),
            prompt=_optional(d, "prompt", str, ""),
            texts=dict(texts),
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Pair:
    """A preference: ``chosen`` was preferred to ``rejected`` for ``prompt`` (label [1, 0])."""

    prompt: str
    chosen: str
    rejected: str
    weight: float = 1.0
    labeler: str = ""
    source: str = ""
    ranking_id: str = ""
    prompt_id: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> "Pair":
        chosen = _require(d, "chosen", str, nonempty=True)
        # An empty reply may lose (the guideline marks it F, and the reward model should learn that),
        # but a preferred reply must have text.
        rejected = _require(d, "rejected", str)
        if chosen == rejected:
            raise RecordError("fields 'chosen' and 'rejected' are the same text", field="rejected")
        weight = _optional(d, "weight", float, 1.0)
        if not weight >= 0.0 or weight == float("inf"):
            raise RecordError(f"field 'weight' must be a finite number ≥ 0, got {weight!r}", field="weight")
        return cls(
            prompt=_require(d, "prompt", str, nonempty=True),
            chosen=chosen,
            rejected=rejected,
            weight=weight,
            labeler=_optional(d, "labeler", str, ""),
            source=_optional(d, "source", str, ""),
            ranking_id=str(_optional(d, "ranking_id", (str, int), "")),
            prompt_id=str(_optional(d, "prompt_id", (str, int), "")),
        )

    def to_dict(self) -> dict:
        return asdict(self)
