"""``rlhfkit doctor``: parameter counts from config.json against the models themselves (built on the meta device: no
memory), LoRA counts against peft's, and the estimate's arithmetic (FSDP divides what it shards). The estimate
against a measured peak is bench/memory.py (a memory figure is no test assertion)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.train.memory import Plan, estimate, read_shape


def true_count(folder) -> int:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    auto = AutoModel if config.model_type == "bert" else AutoModelForCausalLM
    with torch.device("meta"):
        return sum(p.numel() for p in auto.from_config(config).parameters())


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_parameter_count_is_the_models(tiny_models, arch):
    assert read_shape(tiny_models[arch]).params == true_count(tiny_models[arch])


def test_parameter_count_of_the_shipped_models():
    from rlhfkit.models.load import minilm_path

    assert read_shape(minilm_path()).params == true_count(minilm_path())  # BERT: biases, positions, pooler


def test_lora_count_is_peft_trainable_count(tiny_llama):
    from rlhfkit.models.load import add_lora, load_policy

    lm = add_lora(load_policy(str(tiny_llama))[0], r=4, alpha=8, top_layers=1)
    trained = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    assert read_shape(tiny_llama).lora_params(4, 1) == trained


def test_fsdp_divides_what_it_shards_and_lora_trains_little(tiny_llama):
    shape = read_shape(tiny_llama)
    plan = Plan(stage="ppo", lora_r=0, lora_layers=0, dtype="float32", batch_size=8, minibatch_size=4,
                prompt_tokens=16, new_tokens=16, strategy="ddp", world_size=2)
    ddp = estimate(shape, plan)
    fsdp = estimate(shape, Plan(**{**plan.__dict__, "strategy": "fsdp"}))
    for part in ("weights", "gradients", "adam"):
        assert fsdp[part] == pytest.approx(ddp[part] / 2)
    assert ddp["adam"] == 2 * ddp["gradients"] == 8 * shape.params  # fp32 gradient, two fp32 moments
    lora = estimate(shape, Plan(**{**plan.__dict__, "lora_r": 4}))
    assert lora["gradients"] == 4 * shape.lora_params(4, 0) and "reference" not in lora  # adapters off = reference


def test_doctor_command_says_what_to_change(tiny_llama):
    r = CliRunner().invoke(app, ["doctor", "--model", str(tiny_llama), "--reward-model", "gold", "--lora-r", "0",
                                 "--world-size", "2", "--device-memory-gib", "0.001"])
    assert r.exit_code == 0, r.output
    assert "does NOT fit" in r.output and "try --lora-r 16" in r.output and "try --strategy fsdp" in r.output
    ok = CliRunner().invoke(app, ["doctor", "--model", str(tiny_llama), "--reward-model", "gold",
                                  "--device-memory-gib", "100"])
    assert ok.exit_code == 0 and "fits in 100.0 GiB" in ok.output and "  try " not in ok.output
    bad = CliRunner().invoke(app, ["doctor", "--model", str(tiny_llama), "--stage", "rm"])
    assert bad.exit_code == 2 and "stage" in bad.output
