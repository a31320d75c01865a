"""Constitutional AI: the constitution file, critique → revision, SFT, and the AI labeler (RLAIF).

The AI labeler is tested for exactness on a tiny model: its preferences are the answer-token
probabilities of the model's own forward pass, and a judge that always answers "A" has no
preference at all once both display orders are averaged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhfkit.cai import ai_labeler as AI
from rlhfkit.config import CaiReviseConfig, SftConfig
from rlhfkit.cai.constitution import Constitution, Principle, draw_principles, load_constitution
from rlhfkit.cai.revise import clean_output, run_revise
from rlhfkit.config import load_config
from rlhfkit.data.errors import RlhfkitError
from rlhfkit.data.records import FAIL

torch.set_num_threads(2)


def tiny_constitution(n: int = 3) -> Constitution:
    return Constitution("tiny", "1", tuple(
        Principle(f"p{i}", f"critique request {i}", f"revision request {i}", f"Which reply is better {i}?")
        for i in range(n)
    ), "<test>")


# ---- the constitution file ----------------------------------------------------------------------


def test_default_constitution_loads():
    c = load_constitution()
    assert c.name == "rlhfkit-default"
    assert 8 <= len(c.principles) <= 12
    assert len(set(c.ids)) == len(c.ids)
    for p in c.principles:
        assert p.critique_request and p.revision_request and p.comparison_question.startswith("Which")
        assert "\n" not in p.revision_request  # folded YAML is joined into one line
    assert c.get("harmless").id == "harmless"


@pytest.mark.parametrize("text, message", [
    ("name: x\nversion: 1\n", "field 'principles' is missing"),
    ("name: x\nversion: 1\nprinciples: []\n", "field 'principles' must be a non-empty list"),
    ("name: x\nversion: 1\nextra: 2\nprinciples: []\n", "unknown field(s) ['extra']"),
    ("name: x\nversion: 1\nprinciples:\n  - id: a\n    critique_request: c\n    revision_request: r\n",
     "principles[0]: field 'comparison_question' is missing"),
    ("name: x\nversion: 1\nprinciples:\n  - {id: a, critique_request: c, revision_request: r, comparison_question: ''}\n",
     "principles[0].comparison_question must be non-empty text"),
    ("name: x\nversion: 1\nprinciples:\n  - {id: a, critique_request: c, revision_request: r, comparison_question: q}\n"
     "  - {id: a, critique_request: c, revision_request: r, comparison_question: q}\n", "principles[1].id: duplicate id 'a'"),
    ("name: x\nversion: 1\nprinciples:\n  - {id: a, critique: c, revision_request: r, comparison_question: q}\n",
     "principles[0]: unknown field(s) ['critique']"),
    ("name: [x\n", "not valid YAML"),
])
def test_constitution_errors_name_file_and_field(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(RlhfkitError) as e:
        load_constitution(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_missing_constitution_file(tmp_path):
    with pytest.raises(RlhfkitError, match="constitution file does not exist"):
        load_constitution(tmp_path / "nope.yaml")


def test_principles_drawn_per_key_not_per_call_order():
    c = load_constitution()
    a = [p.id for p in draw_principles(c, 4, seed=0, key="r0001")]
    assert a == [p.id for p in draw_principles(c, 4, seed=0, key="r0001")]
    assert [p.id for p in draw_principles(c, 4, seed=1, key="r0001")] != a or \
        [p.id for p in draw_principles(c, 4, seed=2, key="r0001")] != a
    drawn = {p.id for k in range(200) for p in draw_principles(c, 1, seed=0, key=f"k{k}")}
    assert drawn == set(c.ids)  # uniform over 10 principles: 200 draws miss one with prob ~ 10·0.9^200


# ---- critique → revision -------------------------------------------------------------------------


@pytest.mark.parametrize("raw, clean", [
    ("Revision: Be kind.", "Be kind."),
    ("Here's the revised reply:\n\nBe kind to others.", "Be kind to others."),
    ('"I cannot help with that."', "I cannot help with that."),
    ("Sure! Here is a new version of the response: Hello there.", "Hello there."),
    ("Critique: The reply is rude.", "The reply is rude."),
    ("Be nice.\n\nRewrite the reply so that it is harmless", "Be nice."),
    ("The reply is rude.\nRequest: foo", "The reply is rude."),
    ('Someone asked an AI assistant: "x"\nThe actual text', "The actual text"),
    ("Responses vary a lot: some are good.", "Responses vary a lot: some are good."),
    ("Revision:", ""),
])
def test_clean_output(raw, clean):
    assert clean_output(raw) == clean


def write_prompts(path: Path, texts: list[str], split: str = "train") -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": t, "split": split}) + "\n" for i, t in enumerate(texts)))
    return path


def test_revise_chains_every_step_and_saves_it(tmp_path, tiny_llama, monkeypatch):
    """Each critique quotes the text of the previous step, each revision quotes its critique, with the
    principle drawn for that prompt and round; every step is saved, cleaned. The tiny model really generates;
    a spy records what each step asked and got, puts a small model's lead-in before each text (which must
    be cleaned off) and leaves one revision as the bare lead-in (which cleans up to nothing)."""
    import rlhfkit.cai.revise as R

    real = R._generate
    calls = []  # (user turns, raw outputs) of each generation step

    def spy(model, tokenizer, user_turns, **kw):
        outputs, n = real(model, tokenizer, user_turns, **kw)
        outputs = [f"Revision: {o}" for o in outputs]
        if len(calls) == 4:
            outputs[1] = "Revision:"  # round 2's revision of prompt 1
        calls.append((list(user_turns), outputs))
        return outputs, n

    monkeypatch.setattr(R, "_generate", spy)
    texts = ["hello the cat", "why does the dog run?"]
    prompts = write_prompts(tmp_path / "p.jsonl", texts)
    cfg = load_config(CaiReviseConfig, None, dict(run_dir=str(tmp_path / "run"), model=str(tiny_llama),
                                                  prompts=str(prompts), rounds=2, max_new_tokens=8, device="cpu", seed=3))
    summary = run_revise(cfg, progress=False)
    assert len(calls) == 5  # response, then (critique, revision) × 2
    assert calls[0][0] == texts
    records = [json.loads(l) for l in (tmp_path / "run" / "cai" / "revisions.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in records] == ["q0", "q1"]
    c = load_constitution()
    for i, rec in enumerate(records):
        drawn = draw_principles(c, 2, seed=3, key=rec["prompt_id"])
        assert rec["principles"] == [p.id for p in drawn]
        out = [clean_output(raw[i]) for _, raw in calls]  # what each step produced for prompt i, cleaned
        assert not any(o.startswith("Revision:") for o in out)
        assert rec["response"] == out[0] and rec["critiques"] == [out[1], out[3]] and rec["revisions"] == [out[2], out[4]]
        turn = [turns[i] for turns, _ in calls]
        assert f'"{texts[i]}"' in turn[1] and f'"{out[0]}"' in turn[1] and turn[1].endswith(drawn[0].critique_request)
        assert f'"{out[0]}"' in turn[2] and f"Critique: {out[1]}" in turn[2] and turn[2].endswith(drawn[0].revision_request)
        current = out[2] or out[0]  # round 2 works on round 1's revision (the response if that came out empty)
        assert f'"{current}"' in turn[3] and turn[3].endswith(drawn[1].critique_request)
        assert f"Critique: {out[3]}" in turn[4] and turn[4].endswith(drawn[1].revision_request)
        assert rec["final"] == (out[4] or current)
    assert records[1]["revisions"][1] == "" and records[1]["final"] == (records[1]["revisions"][0] or records[1]["response"])
    assert summary["empty_revisions"] == sum(not x for r in records for x in r["revisions"]) >= 1
    assert summary["changed"] == sum(r["final"] != r["response"] for r in records)
    with pytest.raises(RlhfkitError, match="already exists"):
        run_revise(cfg, progress=False)


def test_revise_runs_on_a_tiny_model(tmp_path, tiny_llama):
    prompts = write_prompts(tmp_path / "p.jsonl", ["hello the cat", "why does the dog run?", "what is a good book?"])
    cfg = load_config(CaiReviseConfig, None, dict(run_dir=str(tmp_path / "run"), model=str(tiny_llama),
                                                  prompts=str(prompts), rounds=1, max_new_tokens=6, device="cpu"))
    summary = run_revise(cfg, progress=False)
    records = [json.loads(l) for l in Path(summary["path"]).read_text().splitlines()]
    assert [r["prompt_id"] for r in records] == ["q0", "q1", "q2"]
    assert all(len(r["critiques"]) == len(r["revisions"]) == len(r["principles"]) == 1 for r in records)
    assert summary["tokens"] > 0


# ---- SFT -----------------------------------------------------------------------------------------


def test_collate_masks_prompt_and_padding():
    from rlhfkit.train.sft import IGNORE, collate

    batch = collate([([5, 6, 7, 8], 2), ([9, 10, 11], 1)], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 11, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 7, 8], [IGNORE, 10, 11, IGNORE]]


def test_encode_example_cuts_the_reply_not_the_prompt(tiny_llama):
    from rlhfkit.models.load import format_prompt, load_tokenizer
    from rlhfkit.train.sft import encode_example

    tok = load_tokenizer(str(tiny_llama))
    n_prompt = len(tok(format_prompt(tok, "hello"), add_special_tokens=False)["input_ids"])
    ids, n = encode_example(tok, "hello", "the cat runs", tok.eos_token_id, 64)
    assert n == n_prompt and ids[-1] == tok.eos_token_id and len(ids) > n + 1
    cut, n2 = encode_example(tok, "hello", "the cat runs", tok.eos_token_id, n_prompt + 1)
    assert n2 == n_prompt and len(cut) == n_prompt + 1
    assert encode_example(tok, "hello", "x", tok.eos_token_id, n_prompt) is None


def write_revisions(path: Path, n: int = 6) -> Path:
    replies = ["the cat is kind and helps the child.", "please be polite to the teacher.", "the dog likes the friend.",
               "hello, the book is good.", "thank you, the music is warm.", "sorry, the river is cold today."]
    lines = [json.dumps({"prompt_id": f"q{i}", "prompt": f"what does the {w} do?", "final": replies[i % len(replies)]})
             for i, w in zip(range(n), ["cat", "dog", "bird", "tree", "sun", "moon", "city", "road"])]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines + [json.dumps({"prompt": "say it", "final": ""})]) + "\n")  # "" fails: left out
    return path


def test_sft_moves_lora_only_lowers_loss_and_merged_model_matches(tmp_path, tiny_llama):
    from safetensors.torch import load_file

    from rlhfkit.models.load import load_policy
    from rlhfkit.train.metrics import read_metrics
    from rlhfkit.train.sft import run_sft

    run = tmp_path / "run"
    write_revisions(run / "cai" / "revisions.jsonl")
    cfg = load_config(SftConfig, None, dict(run_dir=str(run), model=str(tiny_llama), epochs=6, batch_size=3, lr=1e-2,
                                            lora_r=4, lora_alpha=8, device="cpu"))
    s = run_sft(cfg, progress=False)
    assert s["examples"] == 6 and s["dropped_failed"] == 1
    assert s["loss_after"] < s["loss_before"] - 0.5  # a tiny set is learnt quickly
    adapter = load_file(str(run / "sft" / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(float(v.abs().max()) > 0 for v in lora_b)  # B starts at 0: every adapter moved

    base, tok = load_policy(str(tiny_llama))
    merged, _ = load_policy(str(run / "sft" / "merged"))
    from peft import PeftModel

    with_adapter = PeftModel.from_pretrained(load_policy(str(tiny_llama))[0], str(run / "sft" / "adapter"))
    ids = tok(["hello the cat runs"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        l_base, l_merged, l_adapter = (m(ids).logits for m in (base, merged, with_adapter))
    # merged = ORIGINAL base + saved adapter: so training moved the adapter and nothing else
    assert torch.allclose(l_merged, l_adapter, atol=1e-4)
    assert not torch.allclose(l_merged, l_base, atol=1e-3)
    losses = read_metrics(run / "logs" / "metrics.csv", stage="sft")
    assert len(losses["sft/loss"]) == s["steps"] == 6 * 2 and len(losses["sft/epoch_loss"]) == 6
    with pytest.raises(RlhfkitError, match="already exists"):
        run_sft(cfg, progress=False)


def test_sft_names_a_bad_line(tmp_path):
    from rlhfkit.train.sft import read_sft_examples

    path = tmp_path / "r.jsonl"
    path.write_text('{"prompt": "a", "final": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(RlhfkitError, match=r"r.jsonl:2: .*'final'"):
        read_sft_examples(path)


# ---- the AI labeler: pure parts ------------------------------------------------------------------


def test_debiasing_cancels_a_pure_position_bias_and_is_antisymmetric():
    assert AI.debiased_preference(1.0, 1.0) == 0.5  # always "A", whatever is shown
    assert AI.debiased_preference(0.0, 0.0) == 0.5  # always "B"
    assert AI.debiased_preference(0.8, 0.8) == 0.5  # a constant lean to A, no content preference
    assert AI.debiased_preference(0.9, 0.3) == pytest.approx(0.8)  # ½(0.9 + 0.7)
    for pa_xy, pa_yx in [(0.9, 0.3), (0.2, 0.7), (0.55, 0.41)]:
        assert AI.debiased_preference(pa_xy, pa_yx) + AI.debiased_preference(pa_yx, pa_xy) == pytest.approx(1.0)


def _pref(upper: dict) -> np.ndarray:
    k = 1 + max(j for _, j in upper)
    p = np.full((k, k), 0.5)
    for (i, j), v in upper.items():
        p[i, j], p[j, i] = v, 1 - v
    return p


def test_ranks_by_pairwise_wins_hand_worked():
    # wins: 0: .7+.6+.9 = 2.2; 1: .3+.5+.8 = 1.6; 2: .4+.5+.8 = 1.7; 3: .1+.2+.2 = 0.5
    p = _pref({(0, 1): .7, (0, 2): .6, (0, 3): .9, (1, 2): .5, (1, 3): .8, (2, 3): .8})
    assert AI.ranks_by_wins(p, [False] * 4) == [1, 3, 2, 4]
    # 1 and 2 both win .4 + .5 + .8 = 1.7: tied, competition ranks 1, 2, 2, 4
    p = _pref({(0, 1): .6, (0, 2): .6, (0, 3): .9, (1, 2): .5, (1, 3): .8, (2, 3): .8})
    assert AI.ranks_by_wins(p, [False] * 4) == [1, 2, 2, 4]
    # a failed completion is F and its pairs do not count: 0: 1.2, 1: .9, 2: .9
    assert AI.ranks_by_wins(p, [False, False, False, True]) == [1, 2, 2, FAIL]
    # within eps: a tie; beyond: not
    p = _pref({(0, 1): 0.50004})
    assert AI.ranks_by_wins(p, [False, False], eps=1e-4) == [1, 1]
    assert AI.ranks_by_wins(p, [False, False], eps=1e-5) == [1, 2]


class _MergingTokenizer:
    """Tokenizes "(A" as one token: the answer cannot be read as the next token after "(" ."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1, 2] if text.endswith("(") else [1, 3]}

    def convert_ids_to_tokens(self, ids):
        return [str(i) for i in ids]


def test_answer_tokens_are_checked():
    with pytest.raises(RlhfkitError, match="does not put 'A' in a token of its own"):
        AI.answer_token_ids(_MergingTokenizer())


# ---- the AI labeler on a tiny model --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_judge(tiny_llama):
    from rlhfkit.models.load import load_policy

    model, tok = load_policy(str(tiny_llama))
    return model, tok


TASK = ("t1", "why does the dog run?", ["the dog runs because it is happy.", "no no no no.", "sorry, the dog likes the sun and the river today.",
                                        "the dog sees a bird and runs."])


def test_ai_preferences_are_the_answer_token_probabilities(tiny_judge):
    """Each pair's P_A, computed here with one unpadded forward per judge text, equals what the
    labeler read in its padded batches; the marks follow those probabilities by pairwise wins."""
    model, tok = tiny_judge
    c = tiny_constitution()
    lab = AI.AILabeler(model, tok, c, name="ai-tiny", model_name="tiny", seed=5, batch_size=4)
    (j,) = lab.judge([TASK])
    key, request, texts = TASK
    # "no no no no." fails the guideline (a looping word): never asked
    assert j.marks[1] == FAIL and j.fail_reasons == {1: "repetitive: one word makes up most of the reply"}
    assert {(p.i, p.j) for p in j.pairs} == {(0, 2), (0, 3), (2, 3)}
    a_id, b_id = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")
    principles = dict(zip([(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)], draw_principles(c, 6, seed=5, key=key)))

    def p_a(first, second, question):
        ids = tok(AI.judge_text(tok, request, first, second, question), return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            probs = model(**ids).logits[0, -1].softmax(-1)
        return float(probs[a_id] / (probs[a_id] + probs[b_id]))

    pref = np.full((4, 4), 0.5)
    for pj in j.pairs:
        q = principles[pj.i, pj.j]
        assert pj.principle == q.id
        assert pj.p_a_ij == pytest.approx(p_a(texts[pj.i], texts[pj.j], q.comparison_question), abs=1e-5)
        assert pj.p_a_ji == pytest.approx(p_a(texts[pj.j], texts[pj.i], q.comparison_question), abs=1e-5)
        assert 0 < pj.mass_ij <= 1
        pref[pj.i, pj.j] = 0.5 * (pj.p_a_ij + 1 - pj.p_a_ji)
        pref[pj.j, pj.i] = 1 - pref[pj.i, pj.j]
    wins = {i: sum(pref[i, k] for k in (0, 2, 3) if k != i) for i in (0, 2, 3)}
    order = sorted(wins, key=lambda i: -wins[i])
    assert [j.marks[i] for i in order] == [1, 2, 3]  # a random tiny model has no ties
    assert math.isnan(j.wins[1]) and j.wins[order[0]] == pytest.approx(wins[order[0]])


def test_a_judge_that_always_answers_a_has_no_preference(tiny_llama):
    """lm_head bias +30 on "A": P_A ≈ 1 in every order, so every debiased preference is ½ and all tie."""
    from rlhfkit.models.load import load_policy

    model, tok = load_policy(str(tiny_llama))
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[tok.convert_tokens_to_ids("A")] = 30.0
    model.lm_head = head
    lab = AI.AILabeler(model, tok, tiny_constitution(), name="ai-biased", model_name="biased")
    (j,) = lab.judge([TASK])
    assert all(p.p_a_ij > 0.999 and p.p_a_ji > 0.999 for p in j.pairs)  # the raw judge only says "A"
    assert all(p.pref == pytest.approx(0.5, abs=1e-9) for p in j.pairs)
    assert j.marks == [1, FAIL, 1, 1]


def test_identical_replies_tie(tiny_judge):
    """With one principle, two identical replies meet the third in identical prompts: equal win totals
    up to float32 noise across batch rows (~1e-8), far inside tie_eps, so they share a rank."""
    model, tok = tiny_judge
    lab = AI.AILabeler(model, tok, tiny_constitution(1), name="ai-tiny", model_name="tiny")
    (j,) = lab.judge([("t", "hello the cat", ["the cat is kind.", "the cat is kind.", "the dog is rude and bad."])])
    assert j.marks[0] == j.marks[1] and j.wins[0] == pytest.approx(j.wins[1], abs=1e-6)
    assert j.pairs[0].pref == pytest.approx(0.5, abs=1e-6)  # the pair of identical replies


def test_batching_across_tasks_changes_nothing(tiny_judge):
    model, tok = tiny_judge
    tasks = [TASK, ("t2", "hello the cat", ["the cat is kind to the child.", "hello friend, the cat sings.", "the cat reads a book."])]
    lab1 = AI.AILabeler(model, tok, tiny_constitution(), name="a", model_name="m", batch_size=1)
    lab8 = AI.AILabeler(model, tok, tiny_constitution(), name="a", model_name="m", batch_size=8)
    together = lab8.judge(tasks)
    for task, j in zip(tasks, together):
        (alone,) = lab1.judge([task])
        assert alone.marks == j.marks
        assert [p.pref for p in alone.pairs] == pytest.approx([p.pref for p in j.pairs], abs=1e-5)


def test_label_with_ai_stores_rankings_like_any_labeler(tmp_path, tiny_judge):
    from rlhfkit.data.pairs import ranking_to_pairs
    from rlhfkit.feedback.label import ensure_guideline
    from rlhfkit.feedback.store import FeedbackStore

    model, tok = tiny_judge
    lab = AI.AILabeler(model, tok, tiny_constitution(), name="ai-tiny", model_name="tiny-llama", seed=1)
    tasks = [TASK, ("t2", "hello the cat", ["the cat is kind to the child.", "", "the cat reads a book."])]
    with FeedbackStore(tmp_path / "f.db") as store:
        version = ensure_guideline(store)
        store.add_tasks([(key, prompt, [(f"{key}-{i}", t) for i, t in enumerate(texts)]) for key, prompt, texts in tasks],
                        criterion="hhh", overlap=1)
        assert AI.label_with_ai(store, lab, guideline_version=version, progress=False) == 2
        assert AI.label_with_ai(store, lab, guideline_version=version, progress=False) == 0  # resumes: nothing left
        labeler = store.get_labeler("ai-tiny")
        assert labeler.kind == "ai" and labeler.meta["model"] == "tiny-llama" and labeler.meta["principles"] == ["p0", "p1", "p2"]
        rankings = store.current_rankings()
        history = {r.prompt_id: r for r in store.history()}
        other = AI.AILabeler(model, tok, tiny_constitution(), name="ai-tiny", model_name="other-model")
        with pytest.raises(RlhfkitError, match="already in the store as a different labeler"):
            AI.label_with_ai(store, other, guideline_version=version, progress=False)
    expected = dict(zip([key for key, _, _ in tasks], lab.judge(tasks)))
    assert sorted(r.prompt_id for r in rankings) == sorted(expected)  # one ranking per task, no more, no fewer
    for r in rankings:
        key, j = r.prompt_id, expected[r.prompt_id]
        assert r.labeler == "ai-tiny"
        assert r.marks == {f"{key}-{i}": m for i, m in enumerate(j.marks)}
        audit = json.loads(history[key].comment)["ai_pairs"]
        assert {a["principle"] for a in audit} <= {"p0", "p1", "p2"} and len(audit) == len(j.pairs)
    assert history["t2"].fail_reasons == {"t2-1": "fails the guideline (empty)"}
    pairs = [p for r in rankings for p in ranking_to_pairs(r, source="ai")]
    assert pairs and all(p.labeler == "ai-tiny" and p.source == "ai" for p in pairs)


# ---- the loop with AI feedback, end to end -------------------------------------------------------


def test_loop_with_ai_feedback_end_to_end(tmp_path, tiny_llama):
    """generate → cai label (CLI) → pairs → train-rm → ppo, on tiny models."""
    from typer.testing import CliRunner

    from rlhfkit.cli import app
    from rlhfkit.config import GenerateConfig, PairsConfig, PPOConfig, RewardConfig
    from rlhfkit.data.io import read_pairs
    from rlhfkit.feedback.label import run_pairs
    from rlhfkit.generate import run_generate
    from rlhfkit.train.ppo import run_ppo
    from rlhfkit.train.reward_stage import run_train_rm

    run = tmp_path / "run"
    prompts = write_prompts(tmp_path / "p.jsonl", ["why does the dog run?", "hello the cat", "what is a good book?",
                                                  "please help the child"])
    run_generate(load_config(GenerateConfig, None, dict(run_dir=str(run), model=str(tiny_llama), prompts=str(prompts),
                                                        k=3, max_new_tokens=16, temperature=1.0, device="cpu")))
    result = CliRunner().invoke(app, ["cai", "label", "--run-dir", str(run), "--model", str(tiny_llama),
                                      "--device", "cpu", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert "4 tasks added" in result.output and "4 rankings by ai-" in result.output
    s = run_pairs(load_config(PairsConfig, None, dict(run_dir=str(run), drop_flagged=False)))
    pairs = read_pairs(run / "pairs.jsonl")
    assert s["pairs"] == len(pairs) > 0 and {p.source for p in pairs} == {"ai"}
    # train-rm in a folder of its own, fed this run's pairs through its `pairs` setting
    rm_run = tmp_path / "rm"
    rm_args = dict(run_dir=str(rm_run), pairs=str(run / "pairs.jsonl"), backbone=str(tiny_llama), epochs=1,
                   batch_size=4, max_length=64, eval_fraction=0.0, device="cpu")
    rm = run_train_rm(load_config(RewardConfig, None, rm_args), progress=False)
    assert rm["pairs"]["used"] == len(pairs)  # the AI labeler's pairs are what the reward model learnt from
    summary = run_ppo(load_config(PPOConfig, None, dict(
        run_dir=str(run), model=str(tiny_llama), reward_model=str(rm_run / "reward_model"), prompts=str(prompts), iterations=1,
        batch_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=6, sample_every=0, device="cpu", gold=False)))
    assert summary["iterations"] == 1 and math.isfinite(summary["score_last"])
    assert (run / "policy" / "adapter_config.json").exists()


def test_cli_revise_then_sft_then_generate_from_the_merged_model(tmp_path, tiny_llama):
    """`cai revise` → `sft` → the merged folder works as --model; bad input is one line, exit 2."""
    from typer.testing import CliRunner

    from rlhfkit.cli import app

    runner = CliRunner()
    run = tmp_path / "run"
    prompts = write_prompts(tmp_path / "p.jsonl", ["hello the cat", "why does the dog run?"])
    r = runner.invoke(app, ["cai", "revise", "--run-dir", str(run), "--model", str(tiny_llama), "--prompts", str(prompts),
                            "--max-new-tokens", "6", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "revised 2 responses" in r.output and (run / "cai" / "revisions.jsonl").exists()
    r = runner.invoke(app, ["sft", "--run-dir", str(run), "--model", str(tiny_llama), "--epochs", "1", "--lora-r", "2",
                            "--no-drop-failed", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert f"--model {run / 'sft' / 'merged'}" in r.output.replace("\n", "")
    assert "Writing model shards" not in r.output  # issue 19.16: no stray progress bar from transformers
    r = runner.invoke(app, ["generate", "--run-dir", str(run), "--model", str(run / "sft" / "merged"), "--prompts",
                            str(prompts), "--k", "2", "--max-new-tokens", "4", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["cai", "label", "--run-dir", str(tmp_path / "empty"), "--model", str(tiny_llama)])
    assert r.exit_code == 2 and "no completions" in r.output
    r = runner.invoke(app, ["cai", "revise", "--run-dir", str(run), "--rounds", "0"])
    assert r.exit_code == 2 and "rounds" in r.output
