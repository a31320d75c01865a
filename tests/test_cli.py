"""Every CLI command end to end on tiny settings, and bad input → one-line error, exit 2, no partial output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfkit.cli import app

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def write_prompts(path: Path, n: int = 6) -> Path:
    lines = [json.dumps({"id": f"q{i}", "prompt": f"why does the dog {i} run?", "split": "eval" if i % 3 == 2 else "train"})
             for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_help_is_instant_and_lists_stages():
    # a fresh interpreter: --help must not import torch or transformers
    code = "import sys; from rlhfkit.cli import app; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    result = invoke("--help")
    assert result.exit_code == 0
    for stage in ["generate", "label", "pairs", "ppo"]:
        assert stage in result.output


def test_generate_label_report_pairs(tiny_llama, tmp_path):
    run = tmp_path / "run"
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    r = invoke("generate", "--run-dir", run, "--model", tiny_llama, "--prompts", prompts, "--k", 4,
               "--max-new-tokens", 8, "--temperature", 1.0, "--device", "cpu", "--num-prompts", 8)
    assert r.exit_code == 0, r.output
    # issue 19.16: more prompts asked for than the split holds is said, not silent
    assert f"note: --num-prompts 8, but split 'train' of {prompts} holds only 4 prompts: all 4 used" in r.output
    completions = [json.loads(line) for line in (run / "completions.jsonl").read_text().splitlines()]
    assert len(completions) == 4 * 4  # 4 train prompts × K
    assert "generate" in (run / "config.yaml").read_text()

    r = invoke("label", "--run-dir", run, "--simulate", 4, "--careless", 1, "--overlap", 2)
    assert r.exit_code == 0, r.output
    assert "8 rankings" in r.output  # 4 tasks × overlap 2
    r = invoke("label", "report", "--run-dir", run)
    assert r.exit_code == 0, r.output
    assert "Krippendorff" in r.output and "sim-01" in r.output
    r = invoke("pairs", "--run-dir", run, "--no-drop-flagged", "--trl", tmp_path / "trl.jsonl")
    assert r.exit_code == 0, r.output
    pairs = [json.loads(line) for line in (run / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["chosen"] != p["rejected"] and p["source"] == "simulated" for p in pairs)
    trl = [json.loads(line) for line in (tmp_path / "trl.jsonl").read_text().splitlines()]
    assert len(trl) == len(pairs) and set(trl[0]) == {"prompt", "chosen", "rejected"}
    r = invoke("pairs", "--run-dir", run)  # issue 19.6: pairs refuses to overwrite, as every stage does
    assert r.exit_code == 2 and "pairs.jsonl already exists (use --force to overwrite it)" in r.output
    r = invoke("pairs", "--run-dir", run, "--no-drop-flagged", "--force")
    assert r.exit_code == 0, r.output
    # a finished artifact is not overwritten without --force
    r = invoke("generate", "--run-dir", run, "--model", tiny_llama, "--prompts", prompts, "--device", "cpu")
    assert r.exit_code == 2 and "already exists" in r.output


@pytest.mark.parametrize(
    "content, expect",
    [
        ('{"id": "a", "prompt": "hi"}\n{"id": "b", "prompt": \n', "prompts.jsonl:2"),
        ('{"id": "a", "prompt": "hi"}\n{"id": "b"}\n', "prompts.jsonl:2: missing field 'prompt'"),
        ('{"id": "a", "prompt": "   "}\n', "prompts.jsonl:1: field 'prompt' is empty"),
        ('{"id": "a", "prompt": "hi", "split": "dev"}\n', "prompts.jsonl:1: field 'split'"),
    ],
)
def test_bad_prompts_one_line_error_no_output(tiny_llama, tmp_path, content, expect):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(content)
    run = tmp_path / "run"
    r = invoke("generate", "--run-dir", run, "--model", tiny_llama, "--prompts", prompts, "--split", "all")
    assert r.exit_code == 2
    assert expect in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (run / "completions.jsonl").exists()


def test_bad_config_values_are_refused(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("k: 0\n")
    r = invoke("generate", "--config", cfg, "--run-dir", tmp_path)
    assert r.exit_code == 2 and "config field 'k' must be ≥ 1" in r.output
    cfg.write_text("bogus: 1\n")
    r = invoke("generate", "--config", cfg)
    assert r.exit_code == 2 and "unknown field 'bogus'" in r.output


def test_label_without_completions_and_report_without_store(tmp_path):
    r = invoke("label", "--run-dir", tmp_path)
    assert r.exit_code == 2 and "no completions" in r.output
    r = invoke("label", "report", "--run-dir", tmp_path)
    assert r.exit_code == 2 and "no feedback store" in r.output
