"""What the feedback store accepts: the limits and checks shared by every way in.

The store applies them to every write; the task import applies them line by line (so an error names
the file, the line and the field) and the web API's request schemas take their bounds from here, so
an import can never hold a task the API could not accept a ranking of. Pure functions, no database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.data.records import FAIL, Mark

MAX_ID_CHARS = 200
"""Longest prompt, completion or labeler id (their columns are VARCHAR(200); PostgreSQL enforces it)."""

MIN_COMPLETIONS, MAX_COMPLETIONS = 2, 100
"""How many completions one task may have: a ranking needs two, and the API takes ranks 1..100."""


class StoreError(RlhfkitError):
    """A write or lookup the store's rules refuse; the database is unchanged."""


def check_text(value, what: str) -> str:
    """``value`` if it is text both databases store as is. NUL cannot be stored by PostgreSQL and is
    never part of a real reply; a lone surrogate (JSON "\\ud800") is not valid UTF-8."""
    if not isinstance(value, str):
        raise StoreError(f"{what} must be text, got {type(value).__name__}")
    if "\x00" in value:
        raise StoreError(f"{what} contains a NUL character (at character {value.index(chr(0)) + 1})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise StoreError(f"{what} contains a lone surrogate (at character {e.start + 1}): not valid Unicode") from None
    return value


def check_id(value, what: str) -> str:
    """A non-empty id of at most MAX_ID_CHARS characters."""
    check_text(value, what)
    if not value.strip():
        raise StoreError(f"{what} is empty")
    if len(value) > MAX_ID_CHARS:
        raise StoreError(f"{what} has {len(value)} characters; at most {MAX_ID_CHARS} are allowed")
    return value


def check_completion_ids(ids: Sequence[str], what: str) -> None:
    """A task's completion ids: MIN..MAX_COMPLETIONS of them, no two alike."""
    if not MIN_COMPLETIONS <= len(ids) <= MAX_COMPLETIONS:
        raise StoreError(f"{what} has {len(ids)} completions; a task needs {MIN_COMPLETIONS} to {MAX_COMPLETIONS}")
    if len(set(ids)) != len(ids):
        raise StoreError(f"{what}: duplicate completion ids {list(ids)}")


def parse_marks(marks, completion_ids: Sequence[str]) -> dict[str, Mark]:
    """Marks as {completion_id: rank 1..K or "F"} naming exactly ``completion_ids``, in their order.

    Accepts a mapping or a list of (completion_id, mark) pairs; a pair list may not name a completion twice.
    """
    pairs = list(marks.items()) if isinstance(marks, Mapping) else list(marks)
    k = len(completion_ids)
    given: dict[str, Mark] = {}
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise StoreError(f"marks: want (completion_id, mark) pairs, got {pair!r}")
        cid, mark = pair
        if cid in given:
            raise StoreError(f"marks: completion {cid!r} is marked twice")
        if cid not in completion_ids:
            raise StoreError(f"marks: unknown completion {cid!r}; this task has {list(completion_ids)}")
        if mark != FAIL and (not isinstance(mark, int) or isinstance(mark, bool) or not 1 <= mark <= k):
            raise StoreError(f"marks: completion {cid!r} has mark {mark!r}; want a rank 1..{k} or {FAIL!r}")
        given[cid] = mark
    missing = [cid for cid in completion_ids if cid not in given]
    if missing:
        raise StoreError(f"marks: completions not marked: {missing}")
    return {cid: given[cid] for cid in completion_ids}


def check_fail_reasons(fail_reasons, marks: dict[str, Mark]) -> dict[str, str] | None:
    if fail_reasons is None:
        return None
    if not isinstance(fail_reasons, Mapping):
        raise StoreError("fail_reasons: want a mapping completion_id → reason")
    for cid, reason in fail_reasons.items():
        if marks.get(cid) != FAIL:
            raise StoreError(f"fail_reasons: completion {cid!r} is not marked {FAIL!r}")
        if not isinstance(reason, str) or not reason.strip():
            raise StoreError(f"fail_reasons: completion {cid!r} needs a non-empty reason")
        check_text(reason, f"fail_reasons: the reason for {cid!r}")
    return dict(fail_reasons)


def check_shown_order(shown_order, completion_ids: Sequence[str]) -> list[str]:
    order = list(shown_order)
    if len(order) != len(completion_ids) or sorted(order, key=str) != sorted(completion_ids):
        raise StoreError(f"shown_order {order} is not an ordering of this task's completions {list(completion_ids)}")
    return order
