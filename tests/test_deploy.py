"""rlhfkit export (transformers folder, GGUF F16/Q8_0), int8 quantisation and pruning, on tiny PPO-trained policies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.config import PPOConfig, load_config
from rlhfkit.data.errors import RlhfkitError
from rlhfkit.train.ppo import run_ppo

runner = CliRunner()
TEXT = "why does the cat run? <|im_start|>hello, kind friend!"


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _train(root: Path, model: Path) -> Path:
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"why does the cat {i} run?", "split": "train"}) + "\n"
                               for i in range(4)))
    run = root / "run"
    # sampling that differs from every default, so the exported generation_config must have read it
    run_ppo(load_config(PPOConfig, None, dict(
        run_dir=str(run), model=str(model), reward_model="gold", prompts=str(prompts), iterations=1, batch_size=4,
        minibatch_size=2, ppo_epochs=1, max_new_tokens=7, temperature=0.9, sample_every=0, device="cpu",
        lora_layers=0, lr=1e-2, gold=False)))
    return run


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory, tiny_llama) -> Path:
    return _train(tmp_path_factory.mktemp("llama_run"), tiny_llama)


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory, tiny_models) -> Path:
    return _train(tmp_path_factory.mktemp("gpt2_run"), tiny_models["gpt2"])


@pytest.fixture(scope="module")
def merged(llama_run):
    """(merged float32 model, tokenizer, PPO config) through load_aligned: what every export starts from."""
    from rlhfkit.models.policy import load_aligned

    return load_aligned(llama_run / "policy")


def _logits(model, tok) -> torch.Tensor:
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits.float()  # (1, T, V)


# ------------------------------------------------------------------------------------ hf folder


def test_hf_export_loads_with_automodel_alone_and_samples_as_aligned(llama_run, merged, tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = tmp_path / "hf"
    result = _cli("export", llama_run, "--out", out)
    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(out)  # no peft, no rlhfkit
    tok = AutoTokenizer.from_pretrained(out)
    assert not any("lora" in k for k in model.state_dict())
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    lm, ref_tok, config = merged
    assert tok(TEXT).input_ids == ref_tok(TEXT).input_ids and tok.chat_template == ref_tok.chat_template
    torch.testing.assert_close(_logits(model, tok), _logits(lm, ref_tok), atol=1e-6, rtol=1e-6)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert (_logits(model, tok) - _logits(base, tok)).abs().max() > 1e-3  # the adapters were merged in, not dropped
    gen = GenerationConfig.from_pretrained(out)
    assert config["sampling"]["temperature"] == 0.9 and config["sampling"]["max_new_tokens"] == 7
    assert (gen.do_sample, gen.temperature, gen.top_p, gen.top_k, gen.max_new_tokens) == (True, 0.9, 1.0, 0, 7)
    assert gen.eos_token_id == tok.eos_token_id and gen.pad_token_id == tok.pad_token_id != tok.eos_token_id
    record = json.loads((out / "export.json").read_text())
    assert record["source"] == str((llama_run / "policy").resolve()) and record["base_model"] == str(tiny_llama)
    # a generate() call with nothing but the folder's own settings runs and stops within max_new_tokens
    torch.manual_seed(0)
    ids = tok(TEXT, return_tensors="pt")
    new = model.generate(**ids).shape[1] - ids.input_ids.shape[1]
    assert 1 <= new <= 7


def test_hf_export_bfloat16_halves_the_weights(llama_run, tmp_path):
    from transformers import AutoModelForCausalLM

    assert _cli("export", llama_run, "--out", tmp_path / "f32").exit_code == 0
    assert _cli("export", llama_run, "--out", tmp_path / "bf16", "--dtype", "bfloat16").exit_code == 0
    f32, bf16 = (tmp_path / "f32" / "model.safetensors").stat().st_size, (tmp_path / "bf16" / "model.safetensors").stat().st_size
    assert 0.45 < bf16 / f32 < 0.55
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16


def test_export_refuses_to_overwrite_without_force(llama_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _cli("export", llama_run, "--out", out)
    assert result.exit_code == 2 and "already exists" in result.output and "--force" in result.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert _cli("export", llama_run, "--out", out, "--force").exit_code == 0
    assert (out / "model.safetensors").exists() and not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folder left beside it


@pytest.mark.parametrize("args, words", [
    (["--sparsity", "1.0"], "sparsity"),
    (["--sparsity", "-0.1"], "sparsity"),
    (["--format", "onnx"], "format"),
    (["--gguf-type", "q4_0", "--format", "gguf"], "gguf_type"),
    (["--quantize", "int8", "--format", "gguf"], "quantize"),
])
def test_export_bad_options_fail_clearly_and_write_nothing(llama_run, tmp_path, args, words):
    result = _cli("export", llama_run, "--out", tmp_path / "out", *args)
    assert result.exit_code == 2 and words in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_export_of_a_run_without_a_policy_fails_clearly(tmp_path):
    (tmp_path / "run").mkdir()
    result = _cli("export", tmp_path / "run", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "no trained policy" in result.output and "rlhfkit ppo" in result.output
    assert not (tmp_path / "out").exists()


def test_gpt2_policy_refuses_gguf_and_int8_naming_the_architecture(gpt2_run, tmp_path):
    result = _cli("export", gpt2_run, "--out", tmp_path / "g", "--format", "gguf")
    assert result.exit_code == 2 and "'gpt2'" in result.output and "llama" in result.output
    result = _cli("export", gpt2_run, "--out", tmp_path / "q", "--quantize", "int8")
    assert result.exit_code == 2 and "nn.Linear" in result.output and "Conv1D" in result.output
    assert list(tmp_path.iterdir()) == []
    assert _cli("export", gpt2_run, "--out", tmp_path / "hf").exit_code == 0  # the plain export works for any model


# ------------------------------------------------------------------------------------ GGUF


def _gguf_back(folder: Path, name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32),
            AutoTokenizer.from_pretrained(folder, gguf_file=name))


def test_gguf_f16_and_q8_0_read_back_by_transformers(llama_run, merged, tmp_path):
    from gguf import GGMLQuantizationType, GGUFReader

    lm, ref_tok, _ = merged
    want = _logits(lm, ref_tok)
    scale = want.abs().max()
    err, sizes = {}, {}
    for t in ("f16", "q8_0"):
        out = tmp_path / t
        result = _cli("export", llama_run, "--out", out, "--format", "gguf", "--gguf-type", t)
        assert result.exit_code == 0, result.output
        model, tok = _gguf_back(out, f"model.{t}.gguf")
        assert tok(TEXT).input_ids == ref_tok(TEXT).input_ids
        assert tok.chat_template == ref_tok.chat_template and tok.eos_token == ref_tok.eos_token
        err[t] = float((_logits(model, tok) - want).abs().max() / scale)
        sizes[t] = (out / f"model.{t}.gguf").stat().st_size
        reader = GGUFReader(str(out / f"model.{t}.gguf"))
        assert reader.fields["general.sampling.temp"].contents() == pytest.approx(0.9)
        assert reader.fields["general.sampling.top_k"].contents() == 0
        kinds = {x.name: x.tensor_type for x in reader.tensors}
        assert kinds["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32
        assert kinds["blk.0.ffn_down.weight"] == (GGMLQuantizationType.F16 if t == "f16" else GGMLQuantizationType.Q8_0)
    # F16 keeps 11 significant bits (relative rounding 2^-11 ≈ 5e-4 per weight); Q8_0 one int8 step of a block's
    # max (1/254 ≈ 4e-3): the logits drift by about that, relative to their size, and no more.
    assert err["f16"] < 2e-3 and err["q8_0"] < 3e-2
    assert err["f16"] < err["q8_0"]  # Q8_0 really is coarser
    assert sizes["q8_0"] < 0.7 * sizes["f16"]


def test_gguf_qwen2_reads_back_too(tiny_models, tmp_path):
    from rlhfkit.deploy.gguf_file import write_gguf
    from rlhfkit.models.load import load_policy

    lm, tok = load_policy(str(tiny_models["qwen2"]))
    write_gguf(lm, tok, tmp_path / "q.gguf", "f16", {"temperature": 0.7})
    model, gtok = _gguf_back(tmp_path, "q.gguf")
    assert gtok(TEXT).input_ids == tok(TEXT).input_ids
    want = _logits(lm, tok)
    assert (_logits(model, gtok) - want).abs().max() < 2e-3 * want.abs().max()


# ------------------------------------------------------------------------------------ int8


@pytest.mark.parametrize("method", ["int8", "int8-dynamic"])
def test_int8_export_is_smaller_and_its_logits_stay_close(llama_run, merged, tmp_path, method):
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    from rlhfkit.deploy.export import prepare
    from rlhfkit.deploy.quantize import INT8_FILE, Int8Linear, load_int8
    from rlhfkit.models.policy import load_aligned

    assert _cli("export", llama_run, "--out", tmp_path / "f32").exit_code == 0
    result = _cli("export", llama_run, "--out", tmp_path / "int8", "--quantize", method)
    assert result.exit_code == 0, result.output
    q = load_int8(tmp_path / "int8")
    kind = Int8Linear if method == "int8" else QLinear
    assert sum(isinstance(m, kind) for m in q.modules()) == 2 * 7  # q k v o gate up down in 2 blocks
    assert not any(isinstance(m, torch.nn.Linear) for m in q.model.layers.modules())  # no block linear left float
    lm, tok, _ = merged
    want, got = _logits(lm, tok), _logits(q, tok)
    # per-channel int8 weights (step = max/127; weight-only feeds the kernel bfloat16 activations, dynamic
    # quantises them to int8 per batch): ~1% of the logits' size
    assert (got - want).abs().max() < 5e-2 * want.abs().max()
    assert (got - want).abs().max() > 0  # it is not the float model
    # the saved int8 model is the one quantised in memory, exactly
    fresh = prepare(load_aligned(llama_run / "policy")[0], quantize=method)
    torch.testing.assert_close(got, _logits(fresh, tok), atol=0, rtol=0)
    f32 = (tmp_path / "f32" / "model.safetensors").stat().st_size
    int8 = (tmp_path / "int8" / INT8_FILE).stat().st_size
    assert int8 < 0.6 * f32  # block linears at 1 byte instead of 4; the (tied) embedding stays float32


def test_int8_per_channel_by_hand():
    from rlhfkit.deploy.quantize import int8_per_channel

    w = torch.tensor([[1.27, -0.635, 0.0], [0.0, 0.0, 0.0], [-2.54, 1.0, 0.01]])
    q, scale = int8_per_channel(w)
    # row 0: step 1.27/127 = 0.01 → 127, -63.5 → -64 (round half to even gives -64), 0
    # row 2: step 0.02 → -127, 50, 0.5 → 0 (half to even); the zero row keeps a positive scale, all zeros
    assert q.tolist() == [[127, -64, 0], [0, 0, 0], [-127, 50, 0]]
    torch.testing.assert_close(scale[[0, 2]], torch.tensor([0.01, 0.02]))
    assert scale[1] > 0


@pytest.mark.parametrize("width", [64, 24])  # 64: torch's int8 kernel; 24: not a multiple of 32, de-quantised per call
def test_int8_linear_equals_its_dequantised_weight(width):
    from rlhfkit.deploy.quantize import Int8Linear

    torch.manual_seed(0)
    lin = torch.nn.Linear(width, 40)
    q = Int8Linear.from_linear(lin)
    x = torch.randn(3, 5, width)  # (batch, tokens, in)
    w = q.weight_int8.float() * q.weight_scale[:, None]
    want = torch.nn.functional.linear(x, w, lin.bias)  # (3, 5, 40)
    got = q(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    # the kernel's bfloat16 activations round each x to 8 significant bits (2^-9 relative): a dot of 64 terms
    # errs ~1e-2 of its size at most; the de-quantising path is exact up to float32 summation order
    tol = 2e-2 if width % 32 == 0 else 1e-5
    assert (got - want).abs().max() <= tol * want.abs().max()
    assert (torch.nn.functional.linear(x, lin.weight, lin.bias) - got).abs().max() > 0  # int8, not the float weight


# ------------------------------------------------------------------------------------ pruning


def test_magnitude_pruning_zeroes_the_smallest_share_exactly(merged):
    import copy

    from rlhfkit.deploy.prune import _block_linears, prune_magnitude, sparsity_of

    lm = copy.deepcopy(merged[0])
    before = [m.weight.detach().clone() for m in _block_linears(lm)]
    prune_magnitude(lm, 0.5)
    assert sparsity_of(lm) == pytest.approx(0.5)
    for w0, m in zip(before, _block_linears(lm)):
        w = m.weight.detach()
        kept = w != 0
        assert kept.float().mean() == pytest.approx(0.5)
        assert torch.equal(w[kept], w0[kept])  # survivors untouched
        assert w0[~kept].abs().max() <= w0[kept].abs().min()  # the removed ones were the smallest
    assert isinstance(lm.model.layers[0].mlp.down_proj.weight, torch.nn.Parameter)  # no pruning hooks left
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(RlhfkitError, match=r"sparsity must be in \[0, 1\)"):
            prune_magnitude(lm, bad)


def test_structured_pruning_removes_dead_channels_first_and_saves_smaller(merged, tmp_path):
    import copy

    from transformers import AutoModelForCausalLM

    from rlhfkit.deploy.prune import prune_mlp_channels

    lm, tok, _ = merged
    lm = copy.deepcopy(lm)
    size = lm.config.intermediate_size  # 128
    dead = torch.arange(0, size, 4)  # a quarter of the channels contribute nothing: zero their down_proj columns
    with torch.no_grad():
        for layer in lm.model.layers:
            layer.mlp.down_proj.weight[:, dead] = 0.0
    want = _logits(lm, tok)
    prune_mlp_channels(lm, 0.25)
    assert lm.config.intermediate_size == 96 and lm.model.layers[1].mlp.up_proj.weight.shape == (96, 64)
    torch.testing.assert_close(_logits(lm, tok), want, atol=1e-5, rtol=1e-5)  # exactly the dead ones went
    lm.save_pretrained(tmp_path / "s")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    torch.testing.assert_close(_logits(back, tok), want, atol=1e-5, rtol=1e-5)


def test_structured_export_via_cli(llama_run, tmp_path):
    from transformers import AutoConfig

    result = _cli("export", llama_run, "--out", tmp_path / "s", "--sparsity", "0.5", "--structured")
    assert result.exit_code == 0, result.output
    assert AutoConfig.from_pretrained(tmp_path / "s").intermediate_size == 64
    assert json.loads((tmp_path / "s" / "export.json").read_text())["structured"] is True


# ------------------------------------------------------------------------------------ distillation and recovery


def test_shallow_student_keeps_every_second_block_and_generates(tiny_models):
    from rlhfkit.deploy.distil import shallow_student
    from rlhfkit.generate import sample
    from rlhfkit.models.load import format_prompt
    from rlhfkit.models.tiny import build_model, build_tokenizer

    tok = build_tokenizer()
    teacher = build_model("llama", len(tok), layers=4, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                          bos_id=tok.bos_token_id).eval()
    student = shallow_student(teacher, 2)
    assert student.config.num_hidden_layers == 2 and len(student.model.layers) == 2 and teacher.config.num_hidden_layers == 4
    for s_block, t_idx in zip(student.model.layers, (0, 2)):
        assert torch.equal(s_block.mlp.up_proj.weight, teacher.model.layers[t_idx].mlp.up_proj.weight)
        assert s_block.mlp.up_proj.weight.data_ptr() != teacher.model.layers[t_idx].mlp.up_proj.weight.data_ptr()
    assert [b.self_attn.layer_idx for b in student.model.layers] == [0, 1]  # the KV cache's slots
    torch.manual_seed(0)
    s = sample(student, tok, [format_prompt(tok, "hello")] * 2, max_new_tokens=5, temperature=1.0)
    assert s.response_ids.shape[0] == 2
    # the cached sampler's log-probs are those of a plain forward of the student (layer_idx renumbered right)
    ids = torch.cat([s.prompt_ids, s.response_ids], 1)
    with torch.no_grad():
        logits = student(ids, attention_mask=torch.cat([s.prompt_mask, torch.ones_like(s.response_ids)], 1)).logits
    A = s.response_ids.shape[1]
    lp = torch.log_softmax(logits[:, -A - 1 : -1].float(), -1).gather(-1, s.response_ids[..., None])[..., 0]
    torch.testing.assert_close(lp[0], s.logprobs[0], atol=1e-4, rtol=1e-4)


def test_distil_cli_brings_the_student_closer_to_the_policy(llama_run, tmp_path):
    from transformers import AutoModelForCausalLM

    result = _cli("distil", "--run-dir", llama_run, "--out", tmp_path / "student", "--num-prompts", "4",
                  "--batch-size", "4", "--steps", "15", "--lr", "1e-2", "--alpha", "0")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "student" / "export.json").read_text())["distilled"]
    assert (record["teacher_layers"], record["layers"], record["completions"]) == (2, 1, 4)
    # α = 0: the loss is T²·KL alone, so the KL on the teacher's samples it trained on must fall
    assert record["after"]["kl"] < 0.5 * record["before"]["kl"]
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    assert student.config.num_hidden_layers == 1 and not any("lora" in k for k in student.state_dict())


def test_recovery_after_magnitude_pruning_keeps_the_zeros(llama_run, merged, tmp_path):
    import copy

    from rlhfkit.deploy.distil import recover
    from rlhfkit.deploy.prune import prune_magnitude, sparsity_of

    teacher, tok, config = merged
    student = prune_magnitude(copy.deepcopy(teacher), 0.5)
    recovered, stats = recover(student, teacher, tok, config, steps=15, num_prompts=4, batch_size=4, lr=1e-3)
    assert stats["after"]["kl"] < 0.5 * stats["before"]["kl"]
    assert sparsity_of(recovered) == pytest.approx(0.5)  # the merged LoRA update did not fill the pruned weights
    result = _cli("export", llama_run, "--out", tmp_path / "r", "--recover-steps", "3")
    assert result.exit_code == 2 and "recover_steps" in result.output and not (tmp_path / "r").exists()
    result = _cli("export", llama_run, "--out", tmp_path / "r", "--sparsity", "0.5", "--recover-steps", "3")
    assert result.exit_code == 0 and "recovered in 3 steps" in result.output, result.output
