"""Issue 19: the traps a newcomer hit in the CLI, one test each (exit codes and messages as a user sees them)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rlhfkit.cli import app

runner = CliRunner()


def invoke(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def write_prompts(path: Path, n: int = 6) -> Path:
    lines = [json.dumps({"id": f"q{i}", "prompt": f"why does the dog {i} run?", "split": "eval" if i % 3 == 2 else "train"})
             for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


TINY_PPO = ("--iterations", 1, "--batch-size", 2, "--minibatch-size", 2, "--ppo-epochs", 1, "--max-new-tokens", 4,
            "--reward-model", "gold", "--no-gold", "--sample-every", 0, "--device", "cpu", "--dtype", "float32")


# 1 ---------------------------------------------------------------------------------------------------------------

def test_ppo_resume_and_eval_use_the_runs_own_settings(tiny_llama, tmp_path):
    run, prompts = tmp_path / "run", write_prompts(tmp_path / "mine.jsonl")
    r = invoke("ppo", "--run-dir", run, "--model", tiny_llama, "--prompts", prompts, *TINY_PPO)
    assert r.exit_code == 0, r.output
    started = yaml.safe_load((run / "policy" / "config.yaml").read_text())

    # --resume with nothing but one more iteration: the run's prompts, model, batch and tokens, not the defaults
    r = invoke("ppo", "--run-dir", run, "--resume", "--iterations", 2, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert f"resuming with the settings of {run / 'policy' / 'config.yaml'}" in r.output
    assert "note: iterations = 2 differs from this run's 1" in r.output
    resumed = yaml.safe_load((run / "policy" / "config.yaml").read_text())
    assert resumed == {**started, "iterations": 2, "resume": True}
    assert yaml.safe_load((run / "config.yaml").read_text())["ppo"]["prompts"] == str(prompts)

    # eval without --prompts evaluates the run's prompts, sampled as PPO sampled; it says where they came from
    r = invoke("eval", "--run-dir", run, "--reward-model", "gold", "--no-gold", "--no-report", "--batch-size", 2,
               "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert f"from {run / 'config.yaml'} [ppo]: prompts='{prompts}', max_new_tokens=4" in r.output
    result = json.loads((run / "eval" / "eval.json").read_text())
    assert result["config"]["prompts"] == str(prompts) and result["n_prompts"] == 2  # q2, q5: the eval split
    assert result["sampling"]["max_new_tokens"] == 4 and result["sampling_differs_from_ppo"] == {}

    # 6: a second eval refuses to overwrite; a value that differs from the run's is named before that
    r = invoke("eval", "--run-dir", run, "--reward-model", "gold", "--max-new-tokens", 6)
    assert r.exit_code == 2
    assert "note: max_new_tokens = 6 differs from this run's 4" in r.output
    assert "eval.json already exists (use --force to overwrite it)" in r.output


def test_a_new_run_has_nothing_to_inherit(tmp_path):
    from rlhfkit.cli import resolve
    from rlhfkit.config import PPOConfig

    cfg = resolve(PPOConfig, "ppo", None, {"run_dir": str(tmp_path / "new")})
    assert cfg.prompts == "default" and cfg.model == "smollm2"
    from rlhfkit.config import ServeConfig  # a command without a run directory

    assert resolve(ServeConfig, "serve", None, {}) == ServeConfig()


# 5, 6 ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("stage, option, value, message", [
    ("ppo", "--max-new-tokens", 0, "config field 'max_new_tokens' must be ≥ 1"),
    ("ppo", "--ppo-epochs", 0, "config field 'ppo_epochs' must be ≥ 1"),
    ("ppo", "--gamma", 1.5, "config field 'gamma' must be in [0, 1]"),
    ("eval", "--max-new-tokens", -5, "config field 'max_new_tokens' must be ≥ 1"),
    ("eval", "--temperature", -1, "config field 'temperature' must be ≥ 0"),
    ("generate", "--top-p", 0, "config field 'top_p' must be in (0, 1]"),
])
def test_bad_options_are_refused_before_anything_loads_or_is_made(tiny_llama, tmp_path, stage, option, value, message):
    run = tmp_path / "run"
    model = ("--model", tiny_llama) if stage != "eval" else ()
    reward = ("--reward-model", "gold") if stage != "generate" else ()
    r = invoke(stage, "--run-dir", run, *model, *reward, option, value, "--device", "cpu")
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), lines
    assert not run.exists()


def test_a_yaml_syntax_error_is_one_line_naming_file_and_line(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("run_dir: runs/x\ngenerate:\n  k: [4\n")
    for args in (("pipeline", bad), ("generate", "--config", bad)):
        r = invoke(*args)
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and re.match(rf"error: {re.escape(str(bad))}:\d+: not valid YAML", lines[0]), lines


# 2, 11 -----------------------------------------------------------------------------------------------------------

def test_help_shows_every_default():
    r = invoke("ppo", "--help", env={"COLUMNS": "300"})
    assert r.exit_code == 0
    for text in ["[default: runs/demo]", "[default: 12]", "[default: smollm2]", "[default: 0.7]", "[default: true]",
                 "[default: '']"]:
        assert text in r.output, text


def test_version():
    from rlhfkit import __version__

    r = invoke("--version")
    assert r.exit_code == 0, r.output
    assert r.output.strip() == f"rlhfkit {__version__}"


# 12 --------------------------------------------------------------------------------------------------------------

def test_yaml_mistakes_name_the_file_and_field(tmp_path):
    pipe = tmp_path / "p.yaml"
    pipe.write_text("run_dir: runs/x\nppo:\n  iterations: many\n")
    r = invoke("pipeline", pipe)
    assert r.exit_code == 2
    assert f"error: {pipe}: ppo: field 'iterations' must be int, got 'many'" in r.output
    pipe.write_text("run_dir: runs/x\nppo:\n  iteratoins: 3\n")
    r = invoke("pipeline", pipe)
    assert r.exit_code == 2
    assert f"{pipe}: ppo: unknown field 'iteratoins' for ppo; did you mean 'iterations'?" in r.output
    cfg = tmp_path / "c.yaml"
    cfg.write_text("generat:\n  k: 2\n")
    r = invoke("generate", "--config", cfg, "--run-dir", tmp_path / "run")
    assert r.exit_code == 2
    assert f"{cfg}: unknown section 'generat'; did you mean 'generate'?" in r.output
    assert not (tmp_path / "run").exists()


# 9 ---------------------------------------------------------------------------------------------------------------

def test_score_refuses_a_cut_json_line():
    from rlhfkit.data.errors import RlhfkitError
    from rlhfkit.train.reward_stage import read_score_input

    lines = ['{"prompt": "p", "completion": "fine"}\n', '{"prompt": "p", "completion": "cut off he\n']
    with pytest.raises(RlhfkitError, match=r"^in.jsonl:2: not valid JSON \(Unterminated string"):
        read_score_input(iter(lines), "in.jsonl")


# 10 --------------------------------------------------------------------------------------------------------------

# the host cannot be bound: were the store check broken, serve fails instead of serving forever
@pytest.mark.parametrize("command", [("label", "invite", "ann"), ("label", "serve", "--host", "256.0.0.1")])
def test_a_mistyped_run_dir_makes_no_store(tmp_path, command):
    typo = tmp_path / "runs" / "dmeo"
    r = invoke(*command, "--run-dir", typo)
    assert r.exit_code == 2, r.output
    assert f"{typo / 'feedback.db'}: no feedback store (check --run-dir/--store" in r.output
    assert not typo.exists()


# 15 --------------------------------------------------------------------------------------------------------------

def test_a_hub_id_while_offline_says_how_to_go_online(monkeypatch):
    from rlhfkit.data.errors import RlhfkitError
    from rlhfkit.models.load import resolve

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RlhfkitError, match=r"^gpt2: not a local folder, and the model hub is off .* HF_HUB_OFFLINE=0"):
        resolve("gpt2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert resolve("gpt2") == "gpt2"  # a hub id, left to transformers
    with pytest.raises(RlhfkitError, match="model folder does not exist"):
        resolve("./no/such/folder")


# TRL's option names -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alias, value, message", [
    ("--learning-rate", 0, "config field 'lr' must be > 0"),
    ("--cliprange", 0, "config field 'clip_eps' must be > 0"),
    ("--epsilon-high", -1, "config field 'clip_eps_high' must be ≥ 0"),
    ("--response-length", 0, "config field 'max_new_tokens' must be ≥ 1"),
])
def test_trl_option_names_are_aliases(tmp_path, alias, value, message):
    r = invoke("ppo", "--output-dir", tmp_path / "run", alias, value)
    assert r.exit_code == 2 and f"error: {message}" in r.output, r.output
    r = invoke("train-rm", "--num-train-epochs", 0, "--output-dir", tmp_path / "run")
    assert r.exit_code == 2 and "config field 'epochs' must be ≥ 1" in r.output, r.output


@pytest.mark.parametrize("flag", ["--use-bias-correction-kl", "--no-use-bias-correction-kl"])
def test_trl_names_of_switches_are_aliases_too(tmp_path, flag):
    r = invoke("ppo", "--output-dir", tmp_path / "run", flag, "--learning-rate", 0)  # parsed, then lr refused
    assert r.exit_code == 2 and "config field 'lr' must be > 0" in r.output, r.output


# 14 --------------------------------------------------------------------------------------------------------------

def test_label_report_fits_80_columns_and_warns_on_few_rankings(capsys, monkeypatch):
    from rlhfkit.feedback.report import print_feedback_report

    monkeypatch.setenv("COLUMNS", "80")
    row = {"labeler": "sim-01", "n_rankings": 4, "consensus_agreement": 0.75, "position_bias": 0.1, "f_rate": 0.0,
           "tie_rate": 0.0, "gold_accuracy": 0.5, "score": 0.61, "flagged": False, "reasons": []}
    report = {"n_rankings": 8, "n_tasks": 4, "n_labelers": 2, "n_overlap_tasks": 4, "pairwise_agreement": 0.7,
              "pairwise_table": [], "kendall_tau_b_mean": 0.4, "krippendorff_alpha_ordinal": 0.3,
              "labelers": [row, {**row, "labeler": "sim-02", "n_rankings": 5}]}
    print_feedback_report(report)
    out = capsys.readouterr().out
    assert "…" not in out and "labeler " in out and "sim-01" in out and "consensus" in out
    assert "fewer than 20 rankings per labeler (fewest: 4) are rough" in " ".join(out.split())


# 4 ---------------------------------------------------------------------------------------------------------------

def test_generate_force_says_what_it_invalidates(tiny_llama, tmp_path):
    run = tmp_path / "run"
    (run / "reward_model").mkdir(parents=True)
    (run / "feedback.db").write_text("")
    args = ("generate", "--run-dir", run, "--model", tiny_llama, "--prompts", write_prompts(tmp_path / "p.jsonl"),
            "--k", 2, "--max-new-tokens", 2, "--device", "cpu")
    r = invoke(*args, "--force")
    assert r.exit_code == 0, r.output
    assert (f"note: completions.jsonl replaced; feedback.db, reward_model in {run} were made from the old completions"
            in " ".join(r.output.split()))
