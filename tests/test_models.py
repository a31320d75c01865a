"""Model loading: tiny models of three architectures, the padding rule, LoRA, and the real SmolLM2."""

from __future__ import annotations

import math

import pytest
import torch

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.models.load import add_lora, format_prompt, load_policy, load_tokenizer, resolve


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_tiny_models_load_with_pad_distinct_from_eos(tiny_models, arch):
    model, tok = load_policy(str(tiny_models[arch]))
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert tok.padding_side == "left"
    assert not model.training  # dropout off
    out = model(**tok(["hello the cat"], return_tensors="pt"))
    assert out.logits.shape[-1] >= len(tok)


def test_gpt2s_gelu_is_swapped_and_computes_what_transformers_loads(tiny_models):
    """load_policy swaps GPT-2's six-op gelu_new for SigmoidGELU (x·σ(2u), the same function): the logits equal a
    plain transformers load of the same folder to float rounding, and the gradient too."""
    from transformers import AutoModelForCausalLM
    from transformers.activations import NewGELUActivation

    from rlhfkit.models.activations import SigmoidGELU as GELUTanh

    model, tok = load_policy(str(tiny_models["gpt2"]))
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_models["gpt2"])).eval()
    kinds = lambda m: {type(x) for x in m.modules()}  # noqa: E731
    assert NewGELUActivation in kinds(plain) and NewGELUActivation not in kinds(model) and GELUTanh in kinds(model)
    assert model.config.activation_function == "gelu_new"  # the config, and so a saved model, unchanged
    ids = tok(["hello the cat sat on the mat"], return_tensors="pt")["input_ids"]
    outs, grads = [], []
    for m in (model, plain):
        emb = m.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = m(inputs_embeds=emb).logits
        logits.square().mean().backward()
        outs.append(logits.detach())
        grads.append(emb.grad)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sigmoid_gelu_is_gelu_new_and_so_is_its_gradient(dtype):
    """x·σ(2u) = ½·x·(1 + tanh u) (tanh u = 2σ(2u) − 1), u = √(2/π)(x + 0.044715x³), at the points that matter:
    far out on both sides (where ½·x·(1 + tanh u) cancels), around 0, and at the hand-worked gelu_new(1) =
    ½(1 + tanh(0.7978846·1.044715)) = 0.8411920; the written-out backward against autograd through the tanh form
    in float64 (and by gradcheck), and the float32 path against PyTorch's fused kernel. bfloat16 takes the fused kernel."""
    from rlhfkit.models.activations import SigmoidGELU

    x = torch.tensor([-12.0, -5.0, -1.0, -0.3, 0.0, 1e-4, 0.3, 1.0, 2.5, 8.0], dtype=torch.float64)
    tanh_form = lambda t: 0.5 * t * (1 + torch.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3)))  # noqa: E731
    gelu = SigmoidGELU()
    xd = x.to(dtype).requires_grad_(True)
    y = gelu(xd)
    y.backward(torch.ones_like(y))
    xr = x.to(dtype).double().requires_grad_(True)
    ref = tanh_form(xr)
    ref.backward(torch.ones_like(ref))
    tol = {torch.float32: 2e-6, torch.float64: 1e-12, torch.bfloat16: 2e-2}[dtype]
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), ref.detach(), atol=tol, rtol=tol)
    torch.testing.assert_close(xd.grad.double(), xr.grad, atol=tol, rtol=tol)
    assert float(gelu(torch.tensor([1.0], dtype=torch.float64))) == pytest.approx(0.8411920, abs=1e-7)
    if dtype == torch.float64:  # the written-out backward itself (float64 takes the fused kernel in the module)
        from rlhfkit.models.activations import _SigmoidGELUFunction

        assert torch.autograd.gradcheck(_SigmoidGELUFunction.apply, (x.clone().requires_grad_(True),))
    if dtype == torch.float32:
        big = torch.randn(64, 256)
        torch.testing.assert_close(gelu(big), torch.nn.functional.gelu(big, approximate="tanh"), atol=1e-6, rtol=1e-5)


def test_chat_template_is_used(tiny_llama):
    tok = load_tokenizer(str(tiny_llama))
    text = format_prompt(tok, "why the sun?")
    assert text == "<|im_start|>user\nwhy the sun?<|im_end|>\n<|im_start|>assistant\n"


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(RlhfkitError, match="does not exist"):
        resolve(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RlhfkitError, match="not a model folder"):
        resolve(str(tmp_path / "empty"))


def test_lora_trains_only_adapters(tiny_llama):
    model, _ = load_policy(str(tiny_llama))
    peft_model = add_lora(model, r=4, alpha=8)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # adapters start as the identity (B = 0): the wrapped model computes what the base did
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        with peft_model.disable_adapter():
            base = peft_model(input_ids=ids).logits
        wrapped = peft_model(input_ids=ids).logits
    torch.testing.assert_close(base, wrapped)


@pytest.mark.slow
def test_real_smollm2_loads_and_answers(smollm2_dir):
    model, tok = load_policy("smollm2")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token != tok.eos_token
    enc = tok([format_prompt(tok, "What is the capital of France?")], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:])
