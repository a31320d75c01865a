"""What the alignment survives: `rlhfkit eval --variants` on a tiny PPO-trained policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.config import PPOConfig, load_config
from rlhfkit.eval.report import write_report
from rlhfkit.eval.variants import compare_variants
from rlhfkit.train.ppo import run_ppo

runner = CliRunner()


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _train(root: Path, model: Path) -> Path:
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"why does the cat {i} run?",
                                           "split": "eval" if i % 2 else "train"}) + "\n" for i in range(8)))
    run = root / "run"
    # lr 1e-2: one iteration moves the adapters clearly away from the base model
    run_ppo(load_config(PPOConfig, None, dict(
        run_dir=str(run), model=str(model), reward_model="gold", prompts=str(prompts), iterations=1, batch_size=4,
        minibatch_size=2, ppo_epochs=1, max_new_tokens=6, sample_every=0, device="cpu", lora_layers=0, lr=1e-2,
        gold=False)))
    return run


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llama) -> Path:
    return _train(tmp_path_factory.mktemp("variants"), tiny_llama)


def test_fp32_and_its_export_reproduce_the_policy_and_pruning_moves_it(run, tmp_path):
    ship = tmp_path / "ship"
    assert _cli("export", run, "--out", ship).exit_code == 0
    section = compare_variants(run / "policy", ["fp32", "prune50"], {"shipped": str(ship)}, num_prompts=3, samples=2,
                               batch1_prompts=1, seed=0)
    rows = {r["name"]: r for r in section["rows"]}
    assert list(rows) == ["fp32", "prune50", "shipped"]
    assert section["settings"]["n_prompts"] == 3 and section["settings"]["n_completions"] == 6
    for name in ("fp32", "shipped"):  # the same weights sampled with the same seeds: the aligned policy itself
        assert rows[name]["kl"] == {"value": 0.0, "lo": 0.0, "hi": 0.0}, name
        assert rows[name]["gold_win_vs_aligned"] == {"value": 0.5, "lo": 0.5, "hi": 0.5}, name
        assert rows[name]["gold"] == rows["fp32"]["gold"] and rows[name]["toxicity"] == rows["fp32"]["toxicity"]
    assert rows["prune50"]["kl"]["value"] > 1e-3 and rows["prune50"]["kl"]["lo"] >= 0  # KL ≥ 0 per completion
    # magnitude pruning stores the zeros: the file is as large as fp32's
    assert rows["prune50"]["size_bytes"] == rows["fp32"]["size_bytes"] == rows["shipped"]["size_bytes"]
    for r in rows.values():
        assert r["tokens_per_s_b1"] > 0 and r["tokens_per_s_b16"] > 0 and r["peak_rss_bytes"] >= 0


def test_eval_adds_the_table_to_eval_json_and_the_report(run):
    base = ["eval", "--run-dir", run, "--reward-model", "gold", "--device", "cpu", "--variant-prompts", 2,
            "--variant-samples", 1, "--variant-batch1-prompts", 1]
    result = _cli(*base, "--variants", "fp32,prune50")
    assert result.exit_code == 0, result.output
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert "models" in ev and [r["name"] for r in ev["variants"]["rows"]] == ["fp32", "prune50"]
    html = (run / "eval" / "report.html").read_text()
    assert 'id="variants"' in html and "prune50" in html and "What the alignment survives" in html
    assert "| prune50 |" in result.output  # the table in the terminal
    samples = (run / "eval" / "samples.jsonl").read_bytes()

    # --variants-only replaces the table (with --force) and leaves the before/after evaluation as it was
    result = _cli(*base, "--variants", "fp32", "--variants-only")
    assert result.exit_code == 2 and "already has a variants table" in result.output and "--force" in result.output
    assert json.loads((run / "eval" / "eval.json").read_text()) == ev
    result = _cli(*base, "--variants", "fp32", "--variants-only", "--force")
    assert result.exit_code == 0, result.output
    again = json.loads((run / "eval" / "eval.json").read_text())
    assert [r["name"] for r in again["variants"]["rows"]] == ["fp32"]
    assert {k: v for k, v in again.items() if k != "variants"} == {k: v for k, v in ev.items() if k != "variants"}
    assert (run / "eval" / "samples.jsonl").read_bytes() == samples


def test_bad_input_names_what_and_writes_nothing(run, tmp_path):
    not_a_model = tmp_path / "junk"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hello")
    empty_run = tmp_path / "empty"
    empty_run.mkdir()
    base = ["eval", "--run-dir", run, "--reward-model", "gold", "--device", "cpu", "--force"]
    eval_dir = run / "eval"
    before = {p.name: p.read_bytes() for p in eval_dir.iterdir()} if eval_dir.exists() else {}
    cases = [
        ((*base, "--variants", "fp32,int4"), ["variants", "int4", "gguf_q8_0"]),
        ((*base, "--variants", "fp32", "--variant-folder", f"junk={not_a_model}"),
         ["junk=", "not a transformers model folder"]),
        ((*base, "--variant-folder", f"gone={tmp_path / 'gone'}"), ["gone=", "no such folder"]),
        ((*base, "--variant-folder", "student"), ["variant_folder", "NAME=DIR"]),
        ((*base, "--variants-only"), ["variants_only", "--variants"]),
        (("eval", "--run-dir", empty_run, "--variants", "fp32", "--variants-only"), ["no trained policy", "empty"]),
        (("eval", "--run-dir", empty_run, "--reward-model", "gold", "--variants", "fp32"), ["empty", "policy"]),
    ]
    for args, words in cases:
        result = _cli(*args)
        assert result.exit_code == 2 and all(w in result.output for w in words), (args, result.output)
    after = {p.name: p.read_bytes() for p in eval_dir.iterdir()} if eval_dir.exists() else {}
    assert after == before  # nothing rewritten, no temporary file left beside eval.json
    assert list(empty_run.iterdir()) == []


def test_a_variant_the_architecture_cannot_take_fails_before_the_evaluation(tiny_models, tmp_path):
    run = _train(tmp_path, tiny_models["gpt2"])  # GPT-2 is no llama.cpp llama/qwen2: no GGUF of it
    result = _cli("eval", "--run-dir", run, "--reward-model", "gold", "--device", "cpu", "--variants", "fp32,gguf_q8_0")
    assert result.exit_code == 2 and "GGUF" in result.output and "'gpt2'" in result.output, result.output
    assert not (run / "eval").exists()  # refused before the before/after evaluation ran


def test_the_report_shows_variant_names_as_text(tmp_path):
    (tmp_path / "eval").mkdir()
    row = {"name": "<script>alert(1)</script>", "size_bytes": 2e6, "tokens_per_s_b1": 4.0, "tokens_per_s_b16": 8.0,
           "peak_rss_bytes": 1e6, "gold": {"value": 1.0, "lo": 0.5, "hi": 1.5},
           "toxicity": {"value": 0.1, "lo": 0.0, "hi": 0.2}, "kl": {"value": 0.25, "lo": 0.1, "hi": 0.4},
           "gold_win_vs_aligned": {"value": 0.5, "lo": 0.25, "hi": 0.75}}
    fp32 = {**row, "name": "fp32", "size_bytes": 4e6, "tokens_per_s_b1": 2.0}
    (tmp_path / "eval" / "eval.json").write_text(json.dumps({"variants": {"settings": {"n_prompts": 3},
                                                                          "rows": [fp32, row]}}))
    html = write_report(tmp_path).read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # ratios to the fp32 row, worked by hand: 2 MB of 4 MB, 4 of 2 tokens/s; the win rate in percent
    assert "2.000 (0.50×)" in html and "4.000 (2.00×)" in html and "50% [25%, 75%]" in html
    assert "0.250 [0.100, 0.400]" in html
