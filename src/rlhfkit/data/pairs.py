"""Rankings → preference pairs.

A ranking of K completions gives every pair of completions with different marks, the better one
chosen: ``K choose 2`` pairs minus the ties (InstructGPT, Ouyang et al. 2022, §3.5, trains the
reward model on all ``K choose 2`` comparisons of a ranking). A completion marked ``F`` (fail)
loses to every ranked completion; two ``F`` completions give no pair, like a tie.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import combinations

from rlhfkit.data.errors import RecordError
from rlhfkit.data.records import FAIL, Mark, Pair, Ranking


def validate_ranking(
    ranking: Ranking | Sequence[tuple[str, Mark]], completion_ids: set[str] | frozenset[str]
) -> dict[str, Mark]:
    """Check that a ranking marks exactly ``completion_ids``, each once, with 1..K or ``F``.

    ``ranking`` is a :class:`Ranking` or a raw list of ``(completion_id, mark)`` entries (as a form
    submits them; only a raw list can repeat a completion). Returns the marks as a dict.
    Raises :class:`RecordError` with field ``marks``.
    """
    if isinstance(ranking, Ranking):
        entries: Iterable[tuple[str, Mark]] = ranking.marks.items()
    else:
        entries = ranking
    marks: dict[str, Mark] = {}
    for cid, mark in entries:
        if cid in marks:
            raise RecordError(f"field 'marks': completion {cid!r} is marked twice", field="marks")
        marks[cid] = mark
    unknown = sorted(set(marks) - set(completion_ids))
    if unknown:
        raise RecordError(f"field 'marks' names unknown completions: {unknown}", field="marks")
    missing = sorted(set(completion_ids) - set(marks))
    if missing:
        raise RecordError(f"field 'marks' leaves completions unmarked: {missing}", field="marks")
    k = len(completion_ids)
    for cid, mark in marks.items():
        if mark == FAIL:
            continue
        if not isinstance(mark, int) or isinstance(mark, bool) or not 1 <= mark <= k:
            raise RecordError(
                f"field 'marks': completion {cid!r} has mark {mark!r}; want a rank 1..{k} or '{FAIL}'",
                field="marks",
            )
    return marks


def _prefers(a: Mark, b: Mark) -> bool:
    """Whether mark ``a`` beats mark ``b`` (a lower rank wins; any rank beats F)."""
    if a == FAIL:
        return False
    return b == FAIL or a < b  # type: ignore[operator]


def ranking_to_pairs(ranking: Ranking, *, source: str = "ranking", weight: float = 1.0) -> list[Pair]:
    """Every preference a ranking states, as pairs (better completion chosen).

    Pairs come in the order of their two completion ids (sorted), so the output does not depend on
    the order in which the marks are listed. Two completions with the same text give no pair even
    if marked differently: a pair of identical texts carries no preference (and ``Pair`` refuses
    it). The labeler, ranking id and prompt id are kept on every pair.

    Raises :class:`RecordError` for bad marks, a missing text (field ``texts``) or an empty prompt.
    """
    marks = validate_ranking(ranking, set(ranking.marks))
    where = f"ranking {ranking.ranking_id!r}"
    pairs = []
    for a, b in combinations(sorted(marks), 2):
        if _prefers(marks[a], marks[b]):
            chosen, rejected = a, b
        elif _prefers(marks[b], marks[a]):
            chosen, rejected = b, a
        else:  # a tie, or both F
            continue
        for cid in (chosen, rejected):
            if not isinstance(ranking.texts.get(cid), str):
                raise RecordError(f"{where}: field 'texts' has no text for completion {cid!r}", field="texts")
        if ranking.texts[chosen] == ranking.texts[rejected]:
            continue
        try:
            pair = Pair.from_dict(
                {
                    "prompt": ranking.prompt,
                    "chosen": ranking.texts[chosen],
                    "rejected": ranking.texts[rejected],
                    "weight": weight,
                    "labeler": ranking.labeler,
                    "source": source,
                    "ranking_id": ranking.ranking_id,
                    "prompt_id": ranking.prompt_id,
                }
            )
        except RecordError as e:
            raise RecordError(f"{where}, completions {chosen!r} > {rejected!r}: {e.message}", field=e.field) from None
        pairs.append(pair)
    return pairs


def rankings_to_pairs(
    rankings: Iterable[Ranking], *, source: str = "ranking", weight: float = 1.0
) -> list[Pair]:
    """:func:`ranking_to_pairs` over many rankings, concatenated in the given order."""
    return [pair for ranking in rankings for pair in ranking_to_pairs(ranking, source=source, weight=weight)]
