"""JSONL and JSON files: strict reading located at file:line, atomic writing.

Every artifact in a run directory is written through :func:`_atomic_open`: the text goes to a
temporary file in the target's directory, is fsynced, then renamed over the target with
``os.replace`` (atomic on POSIX and Windows within one filesystem). A crash or an exception
mid-write leaves either the old file or the new one, never a partial one.

Reading is strict: a malformed line, a line that is not a JSON object, a duplicated key or a bad
field raises :class:`RecordError` naming the file, the 1-based line and the field. Blank lines are
skipped (they still count for line numbers). Files ending in ``.gz`` are read through gzip.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TypeVar

from rlhfkit.data.errors import RecordError, RlhfkitError
from rlhfkit.data.pairs import validate_ranking
from rlhfkit.data.records import Completion, Pair, Prompt, Ranking

R = TypeVar("R")
PathLike = str | os.PathLike


# ---------------------------------------------------------------- reading


class _DupDict(dict):
    """A JSON object that had a repeated key (``json`` would silently keep the last value)."""

    duplicate: str = ""


def _object_hook(items: list[tuple[str, Any]]) -> dict:
    d: dict = {}
    for key, value in items:
        if key in d:
            out = _DupDict(items)
            out.duplicate = key
            return out
        d[key] = value
    return d


def _find_duplicate(obj: Any, field: str | None) -> tuple[str, str | None] | None:
    """The first repeated key in ``obj`` and the top-level field it sits under."""
    if isinstance(obj, _DupDict):
        return obj.duplicate, field
    children = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in children:
        found = _find_duplicate(value, field if field is not None else str(key))
        if found:
            return found
    return None


def parse_json_object(raw: bytes) -> dict:
    """One JSONL line (or a request body) → a dict; RecordError (not yet located) if it is not one JSON
    object, or an object that repeats a key."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"not valid UTF-8 (byte {e.start + 1})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_object_hook)
    except json.JSONDecodeError as e:
        raise RecordError(f"invalid JSON: {e.msg} (column {e.colno})") from None
    except RecursionError:
        raise RecordError("invalid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise RecordError(f"line is a JSON {type(obj).__name__}, want an object")
    dup = _find_duplicate(obj, None)
    if dup:
        key, field = dup
        where = "" if field is None else f" in field '{field}'"
        raise RecordError(f"duplicate key {key!r}{where}", field=field if field is not None else key)
    return obj


def iter_jsonl_dicts(path: PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_no, dict)`` for each non-blank line of a JSONL (or ``.jsonl.gz``) file.

    ``line_no`` is 1-based. Raises :class:`RlhfkitError` if the file cannot be opened or read and
    :class:`RecordError` located at ``path:line`` for a line that is not one JSON object.
    """
    name = str(path)
    opener = gzip.open if name.endswith(".gz") else open
    try:
        f = opener(path, "rb")
    except FileNotFoundError:
        raise RlhfkitError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise RlhfkitError(f"{name}: is a directory, want a JSONL file") from None
    except OSError as e:
        raise RlhfkitError(f"{name}: cannot open: {e.strerror or e}") from None
    with f:
        line_no = 0
        try:
            for line_no, raw in enumerate(f, start=1):
                if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
                    raw = raw[3:]
                if not raw.strip():
                    continue
                try:
                    obj = parse_json_object(raw)
                except RecordError as e:
                    raise e.at(name, line_no) from None
                yield line_no, obj
        except (OSError, EOFError) as e:  # e.g. a truncated or corrupt .gz
            raise RlhfkitError(f"{name}: cannot read after line {line_no}: {e}") from None


def read_jsonl(path: PathLike, record_type: type[R]) -> list[R]:
    """Read every record of a JSONL file with ``record_type.from_dict``; errors name file:line:field."""
    records = []
    for line_no, d in iter_jsonl_dicts(path):
        try:
            records.append(record_type.from_dict(d))  # type: ignore[attr-defined]
        except RecordError as e:
            raise e.at(str(path), line_no) from None
    return records


def _read_unique(
    path: PathLike, record_type: type[R], key: str, check: Callable[[R], None] | None = None
) -> list[R]:
    """Like :func:`read_jsonl`, refusing a second record with the same ``key`` attribute.

    ``check``, if given, is called on each record and may raise :class:`RecordError`.
    """
    first_line: dict[str, int] = {}
    records = []
    for line_no, d in iter_jsonl_dicts(path):
        try:
            record = record_type.from_dict(d)  # type: ignore[attr-defined]
            value = getattr(record, key)
            if value in first_line:
                raise RecordError(f"duplicate {key} {value!r} (first on line {first_line[value]})", field=key)
            if check is not None:
                check(record)
        except RecordError as e:
            raise e.at(str(path), line_no) from None
        first_line[value] = line_no
        records.append(record)
    return records


def read_prompts(path: PathLike) -> list[Prompt]:
    """Read ``prompts.jsonl``; prompt ids must be unique."""
    return _read_unique(path, Prompt, "id")


def read_completions(path: PathLike, check: Callable[[Completion], None] | None = None) -> list[Completion]:
    """Read ``completions.jsonl``; completion ids must be unique across the file. ``check`` may refuse
    a record with :class:`RecordError` (located here)."""
    return _read_unique(path, Completion, "completion_id", check)


def read_rankings(path: PathLike, completions: Mapping[str, set[str]] | None = None) -> list[Ranking]:
    """Read a rankings JSONL file; ranking ids must be unique.

    With ``completions`` (prompt_id → the ids of its completions) every ranking is also checked by
    :func:`rlhfkit.data.pairs.validate_ranking`: it must mark exactly that prompt's completions.
    """
    def check(ranking: Ranking) -> None:
        if ranking.prompt_id not in completions:
            raise RecordError(f"unknown prompt_id {ranking.prompt_id!r}", field="prompt_id")
        validate_ranking(ranking, completions[ranking.prompt_id])

    return _read_unique(path, Ranking, "ranking_id", check if completions is not None else None)


def read_pairs(path: PathLike) -> list[Pair]:
    """Read ``pairs.jsonl``. Repeated pairs are kept: two labelers agreeing is two votes."""
    return read_jsonl(path, Pair)


# ---------------------------------------------------------------- writing


def _umask() -> int:
    # Read once at import, since reading the umask means setting it (not thread-safe).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create 0600/0700; give the results the modes an ordinary open()/mkdir() would.
_NEW_FILE_MODE = 0o666 & ~_umask()
_NEW_DIR_MODE = 0o777 & ~_umask()


@contextlib.contextmanager
def _atomic_open(path: PathLike, binary: bool = False) -> Iterator[IO]:
    """A file handle (text, or bytes) whose content replaces ``path`` only if the ``with`` body succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same directory as the target, so os.replace is a rename within one filesystem (atomic).
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="\n")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        mode = target.stat().st_mode & 0o7777 if target.exists() else _NEW_FILE_MODE
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _as_dict(item: Any) -> dict:
    if isinstance(item, Mapping):
        return dict(item)
    to_dict = getattr(item, "to_dict", None)
    if to_dict is None:
        raise TypeError(f"cannot write a {type(item).__name__} as a JSONL record (no to_dict)")
    return to_dict()


def write_jsonl(path: PathLike, records: Iterable[Any]) -> int:
    """Atomically write records (objects with ``to_dict``, or dicts) one JSON object a line.

    Returns the number of lines written. If ``records`` raises part-way, ``path`` is untouched.
    """
    n = 0
    with _atomic_open(path) as f:
        for item in records:
            f.write(json.dumps(_as_dict(item), ensure_ascii=False) + "\n")
            n += 1
    return n


def atomic_write_text(path: PathLike, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    with _atomic_open(path) as f:
        f.write(text)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Atomically replace ``path`` with ``data`` (a checkpoint serialised in memory, say)."""
    with _atomic_open(path, binary=True) as f:
        f.write(data)


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON, keys in their given order, non-ASCII kept."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _aside(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def restore_interrupted(target: PathLike) -> None:
    """Undo a replacement that a crash cut between its two renames (see :func:`atomic_directory`)."""
    target = Path(target)
    old = _aside(target)
    if old.exists() and not target.exists():
        os.replace(old, target)


@contextlib.contextmanager
def atomic_directory(target: PathLike) -> Iterator[Path]:
    """A fresh temporary folder beside ``target`` that replaces ``target`` only if the ``with`` body succeeds.

    The one writer of every model and checkpoint folder. POSIX cannot rename over a non-empty folder,
    so the old one is renamed aside (``.NAME.old``), the new one renamed in, and only then the old one
    deleted: at every instant either the old or the new complete folder exists under one of the two
    names, and :func:`restore_interrupted` (called here first) puts the old one back after a crash
    between the renames. An exception in the body leaves ``target`` untouched and removes the temp.
    """
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    restore_interrupted(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, _NEW_DIR_MODE)
        old = _aside(target)
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
