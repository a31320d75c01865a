"""JSONL reading (errors at file:line:field) and atomic writing."""

from __future__ import annotations

import gzip
import json
import os

import pytest

from rlhfkit.data import io
from rlhfkit.data.errors import RecordError, RlhfkitError
from rlhfkit.data.io import (
    atomic_write_json,
    atomic_write_text,
    iter_jsonl_dicts,
    read_completions,
    read_jsonl,
    read_pairs,
    read_prompts,
    read_rankings,
    write_jsonl,
)
from rlhfkit.data.records import Completion, Pair, Prompt


def _write_lines(path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _error(fn, *args, **kwargs) -> RecordError:
    with pytest.raises(RecordError) as info:
        fn(*args, **kwargs)
    return info.value


# ---------------------------------------------------------------- reading


def test_round_trip_prompts(tmp_path):
    prompts = [Prompt("p1", "Say hi.", "train"), Prompt("p2", "Écris un haïku ☃", "eval")]
    path = tmp_path / "prompts.jsonl"
    assert write_jsonl(path, prompts) == 2
    assert read_prompts(path) == prompts
    assert "☃" in path.read_text(encoding="utf-8")  # written as UTF-8, not \u escapes


def test_blank_lines_are_skipped_but_counted(tmp_path):
    path = tmp_path / "prompts.jsonl"
    _write_lines(path, ['{"id": "a", "prompt": "x"}', "", "   ", '{"id": "b", "prompt": "y"}'])
    assert [(n, d["id"]) for n, d in iter_jsonl_dicts(path)] == [(1, "a"), (4, "b")]


def test_malformed_line_is_located(tmp_path):
    path = tmp_path / "prompts.jsonl"
    _write_lines(path, ['{"id": "a", "prompt": "x"}', "", '{"id": "b", "prompt": '])
    err = _error(read_prompts, path)
    assert str(err).startswith(f"{path}:3: invalid JSON")
    assert (err.path, err.line) == (str(path), 3)


def test_non_object_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    _write_lines(path, ['["a", "x"]'])
    assert "prompts.jsonl:1: line is a JSON list, want an object" in str(_error(read_prompts, path))


def test_missing_field_names_file_line_and_field(tmp_path):
    path = tmp_path / "prompts.jsonl"
    _write_lines(path, ['{"id": "a", "prompt": "x"}', '{"id": "b"}'])
    err = _error(read_prompts, path)
    assert str(err) == f"{path}:2: missing field 'prompt'"
    assert err.field == "prompt"


def test_empty_prompt(tmp_path):
    path = tmp_path / "prompts.jsonl"
    _write_lines(path, ['{"id": "a", "prompt": "  "}'])
    err = _error(read_prompts, path)
    assert str(err) == f"{path}:1: field 'prompt' is empty" and err.field == "prompt"


def test_duplicate_prompt_id(tmp_path):
    path = tmp_path / "prompts.jsonl"
    _write_lines(path, ['{"id": "a", "prompt": "x"}', '{"id": "b", "prompt": "y"}', '{"id": "a", "prompt": "z"}'])
    err = _error(read_prompts, path)
    assert str(err) == f"{path}:3: duplicate id 'a' (first on line 1)" and err.field == "id"


def test_duplicate_completion_id(tmp_path):
    path = tmp_path / "completions.jsonl"
    rows = [Completion("p1", "c1", "hi"), Completion("p2", "c1", "yo")]
    write_jsonl(path, rows)
    err = _error(read_completions, path)
    assert (err.line, err.field) == (2, "completion_id")


def test_duplicate_json_key_is_refused_not_silently_dropped(tmp_path):
    # json.loads keeps the last of two equal keys; a labeler's repeated mark must not vanish.
    path = tmp_path / "rankings.jsonl"
    _write_lines(path, ['{"ranking_id": "r1", "prompt_id": "p1", "labeler": "ann", "marks": {"a": 1, "a": 2}}'])
    err = _error(read_rankings, path)
    assert str(err) == f"{path}:1: duplicate key 'a' in field 'marks'" and err.field == "marks"
    _write_lines(path, ['{"id": "x", "prompt": "p", "id": "y"}'])
    assert _error(read_prompts, path).field == "id"


def _ranking_line(**marks) -> str:
    return json.dumps({"ranking_id": "r1", "prompt_id": "p1", "labeler": "ann", "marks": marks})


def test_ranking_naming_an_unknown_completion(tmp_path):
    path = tmp_path / "rankings.jsonl"
    _write_lines(path, ["", _ranking_line(c1=1, c2=2, c9=3)])
    err = _error(read_rankings, path, {"p1": {"c1", "c2", "c3"}})
    assert str(err).startswith(f"{path}:2: field 'marks' names unknown completions: ['c9']")
    assert err.field == "marks"


def test_ranking_of_an_unknown_prompt(tmp_path):
    path = tmp_path / "rankings.jsonl"
    _write_lines(path, [_ranking_line(c1=1)])
    err = _error(read_rankings, path, {"p2": {"c1"}})
    assert (err.line, err.field) == (1, "prompt_id")
    assert len(read_rankings(path)) == 1  # without the completions map, no cross-check


def test_pairs_keep_repeats(tmp_path):
    path = tmp_path / "pairs.jsonl"
    pair = Pair("p", "good", "bad", labeler="ann", source="ranking")
    write_jsonl(path, [pair, pair.to_dict()])
    assert read_pairs(path) == [pair, pair]


def test_read_gzip(tmp_path):
    path = tmp_path / "prompts.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"id": "a", "prompt": "x"}\n\n{"id": "b", "prompt": "y"}\n')
    assert [p.id for p in read_jsonl(path, Prompt)] == ["a", "b"]


def test_invalid_utf8_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "\xff"}\n')
    assert str(_error(read_prompts, path)).startswith(f"{path}:2: not valid UTF-8")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(RlhfkitError, match="nope.jsonl: file not found"):
        read_prompts(path)


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(RlhfkitError, match="x.jsonl.gz: cannot read"):
        read_prompts(path)


# ---------------------------------------------------------------- atomic writing


def _exploding(n_good: int):
    for i in range(n_good):
        yield {"i": i}
    raise RuntimeError("generator failed")


def _dir_listing(path) -> list[str]:
    return sorted(os.listdir(path))


def test_write_failure_leaves_no_file(tmp_path):
    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError, match="generator failed"):
        write_jsonl(target, _exploding(1000))
    assert _dir_listing(tmp_path) == []  # neither the target nor a temp file


def test_write_failure_leaves_existing_file_untouched(tmp_path):
    target = tmp_path / "out.jsonl"
    write_jsonl(target, [{"old": 1}, {"old": 2}])
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        write_jsonl(target, _exploding(5))
    with pytest.raises(TypeError):  # an item that cannot be serialised, mid-way
        write_jsonl(target, [{"ok": 1}, object()])
    assert target.read_bytes() == before
    assert _dir_listing(tmp_path) == ["out.jsonl"]


def test_failed_rename_leaves_existing_file_untouched(tmp_path, monkeypatch):
    target = tmp_path / "eval.json"
    atomic_write_json(target, {"v": 1})

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(io.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert _dir_listing(tmp_path) == ["eval.json"]


def test_atomic_write_creates_parents_and_keeps_mode(tmp_path):
    target = tmp_path / "a" / "b" / "c.txt"
    atomic_write_text(target, "hello\n")
    assert target.read_text() == "hello\n"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # as open() would make it, not mkstemp's 0600
    os.chmod(target, 0o640)
    atomic_write_text(target, "again\n")
    assert target.stat().st_mode & 0o777 == 0o640


def test_atomic_write_json_format(tmp_path):
    target = tmp_path / "eval.json"
    atomic_write_json(target, {"zeta": "ü", "alpha": [1, 2]})
    assert target.read_text(encoding="utf-8") == '{\n  "zeta": "ü",\n  "alpha": [\n    1,\n    2\n  ]\n}\n'


# ---------------------------------------------------------------- atomic folders


def test_atomic_directory_replaces_only_on_success(tmp_path):
    from rlhfkit.data.io import atomic_directory

    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "w.bin").write_text("v1")
    assert (target / "w.bin").read_text() == "v1"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "w.bin").write_text("half")
            raise RuntimeError("crash while writing")
    assert (target / "w.bin").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp folder left behind
    with atomic_directory(target) as tmp:
        (tmp / "w.bin").write_text("v2")
    assert (target / "w.bin").read_text() == "v2" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_directory_recovers_a_crash_between_its_two_renames(tmp_path, monkeypatch):
    """Killed after the old folder was moved aside and before the new one took its place: the next writer (or
    restore_interrupted) puts the old one back first, so no complete model is ever lost."""
    import os

    from rlhfkit.data import io as dio

    target = tmp_path / "model"
    with dio.atomic_directory(target) as tmp:
        (tmp / "w.bin").write_text("v1")
    real = os.replace

    def crash_between_the_renames():
        calls = []

        def die_on_second(src, dst):
            calls.append(dst)
            if len(calls) == 2:
                raise KeyboardInterrupt  # the process dies here
            real(src, dst)

        monkeypatch.setattr(dio.os, "replace", die_on_second)
        with pytest.raises(KeyboardInterrupt):
            with dio.atomic_directory(target) as tmp:
                (tmp / "w.bin").write_text("v2")
        monkeypatch.setattr(dio.os, "replace", real)
        assert not target.exists() and (tmp_path / ".model.old" / "w.bin").read_text() == "v1"

    crash_between_the_renames()
    dio.restore_interrupted(target)
    assert (target / "w.bin").read_text() == "v1" and not (tmp_path / ".model.old").exists()
    # the next writer restores too, before anything else: even if it then fails, v1 is back
    crash_between_the_renames()
    with pytest.raises(RuntimeError):
        with dio.atomic_directory(target):
            raise RuntimeError("the next run fails as well")
    assert (target / "w.bin").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
