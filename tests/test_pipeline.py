"""`rlhfkit pipeline` end to end on tiny models: every stage runs, a re-run skips, a change re-runs
from the changed stage on, and the loop runs with AI feedback (RLAIF) too."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from rlhfkit.pipeline import run_pipeline


def _config(tmp_path: Path, model: Path, **extra) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": f"q{i}", "prompt": f"why does the dog {i} run so often?", "split": "eval" if i % 4 == 3 else "train"}
            for i in range(8)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "run_dir": str(tmp_path / "run"), "seed": 0,
        "generate": {"model": str(model), "prompts": str(prompts), "k": 3, "max_new_tokens": 8, "temperature": 1.0, "device": "cpu"},
        "label": {"simulate": 3, "careless": 0, "overlap": 2},
        "pairs": {"drop_flagged": False},
        "train_rm": {"backbone": str(model), "epochs": 1, "batch_size": 4, "lr": 1e-3, "device": "cpu", "eval_fraction": 0.34},
        "ppo": {"model": str(model), "prompts": str(prompts), "iterations": 2, "batch_size": 4, "minibatch_size": 2,
                "ppo_epochs": 1, "max_new_tokens": 6, "sample_every": 0, "device": "cpu", "lora_layers": 0},
        "eval": {"prompts": str(prompts), "device": "cpu"},
    }
    for key, value in extra.items():
        cfg.setdefault(key, {}) if isinstance(value, dict) else None
        if isinstance(value, dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_pipeline_runs_skips_and_reruns_from_a_change(tiny_llama, tmp_path):
    lines: list[str] = []
    # each model stage its own precision: run.json, the terminal line and the report say which each ran in
    dtypes = {"generate": "bfloat16", "train_rm": "float32", "ppo": "bfloat16", "eval": "float32"}
    cfg = _config(tmp_path, tiny_llama, **{stage: {"dtype": dtype} for stage, dtype in dtypes.items()})
    summaries = run_pipeline(cfg, echo=lines.append)
    run = tmp_path / "run"
    for artifact in ["completions.jsonl", "feedback.db", "pairs.jsonl", "reward_model/eval.json",
                     "policy/trainable.safetensors", "eval/eval.json", "eval/report.html"]:
        assert (run / artifact).exists(), artifact
    assert set(yaml.safe_load((run / "config.yaml").read_text())) >= {"generate", "label", "pairs", "train_rm", "ppo", "eval"}
    stages = json.loads((run / "run.json").read_text())["stages"]
    assert {name: t.get("dtype") for name, t in stages.items()} == {**dtypes, "label": None, "pairs": None}
    assert any(line.startswith("[ppo] done in") and "s (bfloat16):" in line for line in lines)
    # the reward model scores in the precision of the stage that uses it (not what auto picks on this machine)
    assert summaries["ppo"]["reward_model_dtype"] == "bfloat16"
    assert json.loads((run / "eval" / "eval.json").read_text())["reward_model_dtype"] == "float32"
    assert "generate" in (report := (run / "eval" / "report.html").read_text()) and " s (bfloat16), label " in report

    lines.clear()
    run_pipeline(cfg, echo=lines.append)
    assert sum("skipped" in line for line in lines) == 6

    # more PPO iterations: generate … train_rm are skipped, ppo and eval run again
    data = yaml.safe_load(cfg.read_text())
    data["ppo"]["iterations"] = 3
    cfg.write_text(yaml.safe_dump(data))
    lines.clear()
    run_pipeline(cfg, echo=lines.append)
    skipped = [line.split("]")[0].strip("[") for line in lines if "skipped" in line]
    assert skipped == ["generate", "label", "pairs", "train_rm"]
    history = json.loads((run / "eval" / "eval.json").read_text())
    assert history["n_prompts"] == 2


def test_interrupted_ppo_resumes(tiny_llama, tmp_path):
    cfg = _config(tmp_path, tiny_llama)
    run_pipeline(cfg, echo=lambda _: None)
    run = tmp_path / "run"
    (run / ".stages" / "ppo.done").unlink()  # as if stopped before PPO finished (its checkpoint is kept)
    (run / ".stages" / "eval.done").unlink()
    lines: list[str] = []
    run_pipeline(cfg, echo=lines.append)
    assert any("[ppo] running … (continuing an interrupted run)" in line for line in lines)


def test_pipeline_with_ai_feedback(tiny_llama, tmp_path):
    cfg = _config(tmp_path, tiny_llama, feedback="ai", label={"model": str(tiny_llama), "device": "cpu"})
    data = yaml.safe_load(cfg.read_text())
    data["label"] = {"model": str(tiny_llama), "device": "cpu"}
    cfg.write_text(yaml.safe_dump(data))
    run_pipeline(cfg, echo=lambda _: None)
    run = tmp_path / "run"
    pairs = [json.loads(x) for x in (run / "pairs.jsonl").read_text().splitlines()]
    assert pairs and {p["source"] for p in pairs} == {"ai"}
    assert (run / "eval" / "eval.json").exists()


def test_pipeline_algorithms_swap_only_the_policy_stage(tiny_llama, tmp_path):
    """`algorithm: dpo` trains the policy on the run's pairs (the dpo stage), `algorithm: grpo` runs the ppo stage
    critic-free; the stages before are reused, eval reads each policy and the report names the algorithm."""
    cfg = _config(tmp_path, tiny_llama, algorithm="dpo",
                  dpo={"model": str(tiny_llama), "batch_size": 4, "lora_layers": 0, "device": "cpu", "max_length": 48})
    lines: list[str] = []
    run_pipeline(cfg, echo=lines.append)
    run = tmp_path / "run"
    assert any(line.startswith("[dpo] done") for line in lines) and not any("[ppo]" in line for line in lines)
    assert yaml.safe_load((run / "policy" / "config.yaml").read_text())["algorithm"] == "dpo"
    ref_score = json.loads((run / "eval" / "eval.json").read_text())["models"]["reference"]["reward_model"]["value"]
    assert abs(ref_score) < 1e-6  # no PPO norm: the reference's eval completions define 0
    report = (run / "eval" / "report.html").read_text()
    assert "DPO trained the policy directly on the preference pairs" in report
    assert "<h2>DPO training</h2>" in report

    data = yaml.safe_load(cfg.read_text())
    data["algorithm"] = "grpo"
    data["ppo"].update(group_size=2)
    cfg.write_text(yaml.safe_dump(data))
    lines.clear()
    run_pipeline(cfg, echo=lines.append)
    skipped = [line.split("]")[0].strip("[") for line in lines if "skipped" in line]
    assert skipped == ["generate", "label", "pairs", "train_rm"]
    assert yaml.safe_load((run / "policy" / "config.yaml").read_text())["algorithm"] == "grpo"
    report = (run / "eval" / "report.html").read_text()
    assert "<h2>GRPO training</h2>" in report and "group-normalised advantages, KL in the loss" in report


def test_a_change_upstream_of_labeled_rankings_is_refused_before_anything_runs(tiny_llama, tmp_path):
    """issue 19.4: a finished label stage and a changed generate config → one clear refusal, nothing regenerated."""
    from rlhfkit.data.errors import RlhfkitError
    from rlhfkit.pipeline import config_hash, resolve_stage_configs

    cfg = _config(tmp_path, tiny_llama)
    run = tmp_path / "run"
    stages = run / ".stages"
    stages.mkdir(parents=True)
    configs = resolve_stage_configs(cfg)
    (stages / "generate.done").write_text(config_hash(configs["generate"]) + "\n")
    (stages / "label.done").write_text(config_hash(configs["label"]) + "\n")
    (run / "completions.jsonl").write_text("old\n")
    (run / "feedback.db").write_text("")
    data = yaml.safe_load(cfg.read_text())
    data["generate"]["max_new_tokens"] = 9
    cfg.write_text(yaml.safe_dump(data))
    try:
        run_pipeline(cfg, echo=lambda line: None)
        raise AssertionError("not refused")
    except RlhfkitError as exc:
        assert str(exc).startswith(f"the generate config changed since {run / 'feedback.db'} was labeled")
    assert (run / "completions.jsonl").read_text() == "old\n"


def test_each_stage_command_reads_the_shipped_pipeline_yaml():
    """`rlhfkit STAGE -c demo.yaml` takes that stage's section plus the shared fields, the same values the
    pipeline resolves (the label stage once refused the pipeline's shared `sampling:` as an unknown section)."""
    from rlhfkit import defaults
    from rlhfkit.config import load_config
    from rlhfkit.pipeline import resolve_stage_configs, stages

    demo = defaults.demo_path()
    resolved = resolve_stage_configs(demo)
    for slot, stage in stages("simulated", "ppo").items():
        alone = load_config(stage.config_cls, demo, {}, section=stage.name)
        assert alone == resolved[slot], stage.name
