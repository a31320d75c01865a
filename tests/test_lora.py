"""models.lora: LoRA layers that add the adapter's product inside the base layer's GEMM.

The independent reference is peft's own ``lora.Linear.forward`` (called on the same layer, or the whole model with
its layers' class put back to peft's): outputs and gradients agree to float32 rounding. Which path ran is read off
the autograd graph: peft ends in an add, the fused layer in an addmm.
"""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from rlhfkit.models.load import add_lora, load_policy
from rlhfkit.models.lora import FusedLoraLinear, fuse_lora
from rlhfkit.models.reward import RewardModel

from conftest import lora_policy


def _layers(lm) -> list:
    return [m for m in lm.modules() if isinstance(m, LoraLinear)]


def _last_op(y: torch.Tensor) -> str:
    """The autograd node that produced ``y``, looking through views."""
    fn = y.grad_fn
    while fn.name().startswith(("ViewBackward", "UnsafeViewBackward", "ReshapeAliasBackward")):
        fn = fn.next_functions[0][0]
    return fn.name()


def _run(layer, forward, x):
    """(output, input gradient, lora_A gradient, lora_B gradient) of ``forward(layer, x)`` under a fixed loss."""
    x = x.clone().requires_grad_()
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    a.grad = b.grad = None
    y = forward(layer, x)
    torch.manual_seed(1)
    (y * torch.randn_like(y)).sum().backward()
    return y.detach(), x.grad, a.grad.clone(), b.grad.clone(), _last_op(y)


# llama: nn.Linear without bias (W is out × in); gpt2: Conv1D with bias (W is in × out, fan_in_fan_out)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fused_layer_computes_what_peft_computes_with_its_gradients(tiny_models, arch):
    lm = lora_policy(tiny_models[arch])[0].lm
    layers = _layers(lm)
    assert layers and all(type(m) is FusedLoraLinear for m in layers)  # add_lora swapped every one
    torch.manual_seed(2)
    for layer in layers:
        x = torch.randn(3, 5, layer.in_features)
        fused = _run(layer, FusedLoraLinear.forward, x)
        peft = _run(layer, LoraLinear.forward, x)
        assert fused[4] == "AddmmBackward0" and peft[4] == "AddBackward0"  # each path ran as named
        delta = (peft[0] - layer.get_base_layer()(x)).abs().max()
        assert delta > 1e-2  # the adapter changes the output: its product is tested, not only the base
        for got, want in zip(fused[:4], peft[:4]):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fused_model_computes_peft_model_logits_and_adapter_gradients(tiny_models, arch):
    lm = lora_policy(tiny_models[arch])[0].lm
    ids = torch.tensor([[5, 17, 3, 99, 42, 7], [8, 8, 1, 60, 2, 30]])

    def logits_and_grads():
        lm.zero_grad(set_to_none=True)
        logits = lm(input_ids=ids).logits
        torch.log_softmax(logits, -1)[..., 0].sum().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in lm.named_parameters() if p.requires_grad}

    fused_logits, fused_grads = logits_and_grads()
    for layer in _layers(lm):
        layer.__class__ = LoraLinear  # peft's own layers, same weights
    peft_logits, peft_grads = logits_and_grads()
    assert fuse_lora(lm) == len(_layers(lm)) > 0  # and back: every layer counted
    torch.testing.assert_close(fused_logits, peft_logits, rtol=1e-5, atol=1e-5)
    assert fused_grads.keys() == peft_grads.keys() and fused_grads
    for name in fused_grads:
        torch.testing.assert_close(fused_grads[name], peft_grads[name], rtol=1e-4, atol=1e-6)


def test_what_the_fused_path_does_not_cover_runs_peft_forward_unchanged(tiny_models):
    """Adapters off (the reference), autocast, a bfloat16 base under float32 adapters, dropout: peft's forward,
    bit for bit."""
    torch.manual_seed(3)
    lm = lora_policy(tiny_models["llama"])[0].lm
    layer = _layers(lm)[0]
    x = torch.randn(2, 4, layer.in_features)
    with torch.no_grad():
        with lm.disable_adapter():
            assert layer._fusable(x, (), {}) is None
            assert torch.equal(layer(x), layer.get_base_layer()(x))
        assert layer._fusable(x, (), {}) == "default"  # and back on once the block ends
        assert layer._fusable(x.double(), (), {}) is None  # input in another dtype than the weights
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the reward model's bfloat16: float32 weights, autocast
            assert layer._fusable(x, (), {}) is None
            out = layer(x)
            assert out.dtype == torch.bfloat16 and torch.equal(out, LoraLinear.forward(layer, x))

    bf16 = lora_policy(tiny_models["llama"], dtype="bfloat16")[0].lm
    layer = _layers(bf16)[0]
    assert layer.get_base_layer().weight.dtype == torch.bfloat16 and layer.lora_A["default"].weight.dtype == torch.float32
    x = torch.randn(2, 4, layer.in_features, dtype=torch.bfloat16)
    with torch.no_grad():
        assert layer._fusable(x, (), {}) is None
        assert torch.equal(layer(x), LoraLinear.forward(layer, x))

    base, _ = load_policy(str(tiny_models["llama"]), device="cpu")
    dropped = add_lora(base, r=4, alpha=8, dropout=0.1)
    layer = _layers(dropped)[0]
    assert type(layer) is FusedLoraLinear and layer._fusable(x.float(), (), {}) is None


def test_lora_reward_model_trains_under_bfloat16_autocast(tiny_llama):
    """train-rm's LoRA reward model with dtype bfloat16 (what auto picks on AVX512-BF16 CPUs): its layers are the
    fused ones, and under autocast they score and backpropagate (the in-place sum would mix dtypes)."""
    rm = RewardModel.from_backbone(str(tiny_llama), device="cpu", lora_r=4, dtype="bfloat16")
    assert any(type(m) is FusedLoraLinear for m in rm.model.modules())
    out = rm.forward(rm.encode(["why does the cat run?"] * 2, ["it is happy", "no"]))
    out.sum().backward()
    grads = [p.grad for n, p in rm.model.named_parameters() if "lora_B" in n]
    assert out.shape == (2,) and torch.isfinite(out).all() and grads and all(g is not None for g in grads)
