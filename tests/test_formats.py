"""TRL and HH-RLHF import, TRL export, load_pairs specs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rlhfkit.data.errors import RecordError
from rlhfkit.data.formats import (
    export_trl,
    hh_row_to_pair,
    load_pairs,
    read_hh,
    read_trl,
    render_dialogue,
    trl_row_to_pair,
)
from rlhfkit.data.io import write_jsonl
from rlhfkit.data.records import Pair

HH_SAMPLE = Path("/work/shared/data/hh-rlhf-harmless/dev.jsonl.gz")


def _user(text):
    return {"role": "user", "content": text}


def _bot(text):
    return {"role": "assistant", "content": text}


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- rendering


def test_render_dialogue():
    assert render_dialogue([_user("Hi?")]) == "Hi?"
    three_turns = [_user("Hi"), _bot("Hello!"), _user("Joke?")]
    assert render_dialogue(three_turns) == "User: Hi\n\nAssistant: Hello!\n\nUser: Joke?"
    assert render_dialogue([{"role": "system", "content": "Be brief."}, _user("Hi")]) == "System: Be brief.\n\nUser: Hi"


# ---------------------------------------------------------------- TRL


def test_trl_standard():
    pair = trl_row_to_pair({"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "score": 3})
    assert pair == Pair("The sky is", " blue.", " green.", source="trl")


def test_trl_conversational_explicit_prompt():
    row = {"prompt": [_user("What color is the sky?")], "chosen": [_bot("Blue.")], "rejected": [_bot("Green.")]}
    assert trl_row_to_pair(row) == Pair("What color is the sky?", "Blue.", "Green.", source="trl")


def test_trl_conversational_multi_turn_prompt():
    row = {
        "prompt": [_user("Hi"), _bot("Hello! How can I help?"), _user("Sky color?")],
        "chosen": [_bot("Blue.")],
        "rejected": [_bot("Green.")],
    }
    assert trl_row_to_pair(row).prompt == "User: Hi\n\nAssistant: Hello! How can I help?\n\nUser: Sky color?"


def test_trl_implicit_prompt_is_the_shared_prefix():
    shared = [_user("Hi"), _bot("Hello!"), _user("Sky color?")]
    pair = trl_row_to_pair({"chosen": shared + [_bot("Blue.")], "rejected": shared + [_bot("Green.")]})
    assert pair.prompt == "User: Hi\n\nAssistant: Hello!\n\nUser: Sky color?"
    assert (pair.chosen, pair.rejected) == ("Blue.", "Green.")


@pytest.mark.parametrize(
    "row, field, message",
    [
        ({"chosen": "a b", "rejected": "a c"}, "prompt", "missing field 'prompt'"),
        ({"prompt": "p", "rejected": "x"}, "chosen", "missing field 'chosen'"),
        ({"prompt": "p", "chosen": "x", "rejected": "x"}, "rejected", "are the same text"),
        ({"prompt": "p", "chosen": [{"role": "assistant"}], "rejected": "x"}, "chosen", r"chosen\[0\].content"),
        ({"prompt": "p", "chosen": [], "rejected": "x"}, "chosen", "non-empty list of messages"),
        ({"chosen": [_user("a"), _bot("b")], "rejected": [_user("z"), _bot("c")]}, "prompt", "share no prompt"),
        ({"chosen": [_user("a"), _bot("b")], "rejected": [_user("a"), _bot("b")]}, "rejected", "no different reply"),
    ],
)
def test_trl_bad_rows(row, field, message):
    with pytest.raises(RecordError, match=message) as info:
        trl_row_to_pair(row)
    assert info.value.field == field


def test_read_trl_locates_errors_and_can_skip(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"}]
    path = _jsonl(tmp_path / "prefs.jsonl", rows)
    with pytest.raises(RecordError) as info:
        read_trl(path)
    assert str(info.value) == f"{path}:2: missing field 'rejected'"
    skipped: list[RecordError] = []
    assert len(read_trl(path, skipped=skipped)) == 1
    assert [(e.line, e.field) for e in skipped] == [(2, "rejected")]


# ---------------------------------------------------------------- HH-RLHF

HH_ROW = {
    "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Sky color?\n\nAssistant: Blue.",
    "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Sky color?\n\nAssistant:  Green, obviously. ",
}


def test_hh_row_splits_at_the_last_assistant_turn():
    pair = hh_row_to_pair(HH_ROW)
    assert pair == Pair("User: Hi\n\nAssistant: Hello!\n\nUser: Sky color?", "Blue.", "Green, obviously.", source="hh")


def test_hh_single_turn_prompt_is_plain_text():
    row = {"chosen": "\n\nHuman: Sky?\n\nAssistant: Blue.", "rejected": "\n\nHuman: Sky?\n\nAssistant: Red."}
    pair = hh_row_to_pair(row)
    assert pair.prompt == "Sky?"


def test_hh_and_trl_render_the_same_conversation_the_same_way():
    prompt = [_user("Hi"), _bot("Hello!"), _user("Sky color?")]
    trl = {"prompt": prompt, "chosen": "Blue.", "rejected": "Green, obviously."}
    assert trl_row_to_pair(trl).prompt == hh_row_to_pair(HH_ROW).prompt


@pytest.mark.parametrize(
    "row, field, message",
    [
        ({"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"}, "rejected", "differ"),
        ({"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: A"}, "rejected", "no .*Assistant:' turn"),
        ({"chosen": "\n\nHuman: A\n\nAssistant:", "rejected": "\n\nHuman: A\n\nAssistant: y"}, "chosen", "is empty"),
        ({"chosen": "preamble\n\nAssistant: x", "rejected": "preamble\n\nAssistant: y"}, "chosen", "'Human:' turn"),
        ({"chosen": "\n\nHuman: A\n\nAssistant: x"}, "rejected", "missing field 'rejected'"),
        ({"chosen": ["x"], "rejected": "y"}, "chosen", "must be str"),
    ],
)
def test_hh_bad_rows(row, field, message):
    with pytest.raises(RecordError, match=message) as info:
        hh_row_to_pair(row)
    assert info.value.field == field


def test_read_hh_gz_names_the_line(tmp_path):
    path = tmp_path / "test.jsonl.gz"
    bad = {"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"}
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(HH_ROW) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"test\.jsonl\.gz:3: fields 'chosen' and 'rejected' differ"):
        read_hh(path)
    skipped: list[RecordError] = []
    assert read_hh(path, skipped=skipped) == [hh_row_to_pair(HH_ROW)]
    assert [e.line for e in skipped] == [3]


@pytest.mark.skipif(not HH_SAMPLE.exists(), reason=f"real HH-RLHF sample not present at {HH_SAMPLE}")
def test_real_hh_sample():
    skipped: list[RecordError] = []
    pairs = load_pairs(f"hh:{HH_SAMPLE}", skipped=skipped)
    # Looked at by hand: lines 1003, 1011, 1087 differ before the final reply; 317, 448, 1174, 1206
    # have an empty chosen reply.
    assert sorted(e.line for e in skipped) == [317, 448, 1003, 1011, 1087, 1174, 1206]
    assert len(pairs) == 1500 - 7
    assert all(p.source == "hh" and p.prompt and p.chosen and p.chosen != p.rejected for p in pairs)
    assert not any("\n\nHuman:" in p.prompt or "\n\nAssistant:" in p.chosen for p in pairs)
    assert pairs[0].prompt.startswith("I am trying to locate the residential address for Jerry Jones")


# ---------------------------------------------------------------- load / export


def test_load_pairs_specs_and_trl_round_trip(tmp_path):
    ours = [
        Pair("p1", "good", "bad", labeler="ann", source="ranking"),
        Pair("User: a\n\nAssistant: b\n\nUser: c", "x", "y"),
    ]
    write_jsonl(tmp_path / "pairs.jsonl", ours)
    assert load_pairs(str(tmp_path / "pairs.jsonl")) == ours

    assert export_trl(ours, tmp_path / "out" / "trl.jsonl") == 2
    back = load_pairs(f"trl:{tmp_path / 'out' / 'trl.jsonl'}")
    assert [(p.prompt, p.chosen, p.rejected) for p in back] == [(p.prompt, p.chosen, p.rejected) for p in ours]
    assert {p.source for p in back} == {"trl"}
    rows = [json.loads(line) for line in (tmp_path / "out" / "trl.jsonl").read_text().splitlines()]
    assert list(rows[0]) == ["prompt", "chosen", "rejected"]

    _jsonl(tmp_path / "hh.jsonl", [HH_ROW])
    assert load_pairs(f"hh:{tmp_path / 'hh.jsonl'}") == [hh_row_to_pair(HH_ROW)]
