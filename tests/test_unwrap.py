"""models.unwrap.plain_layers: sampling through plain layers with the adapters folded in, and put back exactly.

Independent references: peft's own forward with the adapters on (the policy) and with them switched off
(the reference); the tensors the model held before the block (identity and bits).
"""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import LoraLayer

from rlhfkit.config import PPOConfig, load_config
from rlhfkit.generate import assemble, eos_ids, sample
from rlhfkit.models.load import format_prompt
from rlhfkit.models.unwrap import inner, plain_layers
from rlhfkit.train import losses as L
from rlhfkit.train.ppo import collect_rollout

from conftest import lora_policy


def _lift_eos(model, tok):
    """EOS ~7× likelier on the random model: rows end early and leave the batch."""
    head = model.lm.get_output_embeddings()
    lift = torch.zeros(head.out_features)
    lift[tok.eos_token_id] = 2.0
    head.register_forward_hook(lambda _m, _args, out: out + lift)


def _logits(lm, ids):
    with torch.no_grad():
        return lm(input_ids=ids).logits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # nn.Linear (W is out × in) and GPT-2's Conv1D (in × out)
def test_folded_layers_compute_the_policy_and_the_reference_and_leave_the_model_as_it_was(tiny_models, arch):
    model, _ = lora_policy(tiny_models[arch], lora_layers=1)  # LoRA on the top block only: the others are untouched
    lm = model.lm
    ids = torch.tensor([[5, 17, 3, 99, 42, 7]])
    policy = _logits(lm, ids)
    with lm.disable_adapter():
        reference = _logits(lm, ids)
    assert (policy - reference).abs().max() > 1e-2  # the adapters matter, so folding them in is tested
    before = {n: (p, p.data_ptr(), p.detach().clone()) for n, p in lm.named_parameters()}
    n_lora = sum(isinstance(m, LoraLayer) for m in lm.modules())
    assert n_lora > 0

    with plain_layers(lm) as folded:
        assert folded
        assert not any(isinstance(m, LoraLayer) for m in lm.modules())  # plain layers only
        torch.testing.assert_close(_logits(lm, ids), policy, atol=1e-5, rtol=1e-5)
    with plain_layers(lm, adapters=False) as plain:
        assert plain
        assert torch.equal(_logits(lm, ids), reference)  # the base weights themselves: bit for bit

    after = dict(lm.named_parameters())
    assert after.keys() == before.keys() and sum(isinstance(m, LoraLayer) for m in lm.modules()) == n_lora
    for name, (param, ptr, value) in before.items():
        assert after[name] is param and param.data_ptr() == ptr and torch.equal(param, value), name
    assert torch.equal(_logits(lm, ids), policy)


def test_bfloat16_weights_are_not_folded(tiny_llama):
    """A LoRA delta folded into bfloat16 weights is rounded to 8 bits of mantissa: not the policy; left as is."""
    model, _ = lora_policy(tiny_llama, dtype="bfloat16")
    with plain_layers(model.lm) as folded:
        assert not folded
        assert any(isinstance(m, LoraLayer) for m in model.lm.modules())


@pytest.mark.parametrize("critic", [True, False], ids=["ppo", "critic-free"])
def test_rollouts_take_the_samplers_logprobs_and_values_and_they_equal_a_forward_pass(tiny_llama, critic):
    """On float32 weights the rollout runs no policy forward: π_old is the sampler's log-probs and V_old the value
    head on the states its LM head read (0 without a critic). Both equal a forward pass over the finished
    rollouts within float32 rounding, token by token; the KL and the advantages follow."""
    model, tok = lora_policy(tiny_llama, lora_layers=1)
    assert model.n_frozen > 0  # the frozen blocks' output is the sampler's too: the reference pass reads it
    torch.nn.init.normal_(model.value_head.weight, std=0.5)  # zero-initialised: values of 0 would prove nothing
    _lift_eos(model, tok)
    hp = load_config(PPOConfig, None, dict(max_new_tokens=12, temperature=0.7))
    score = lambda prompts, texts: [float(len(t)) for t in texts]  # noqa: E731
    prompts = ["hello the cat", "why does the big dog run", "a b c", "hello the cat"]  # a repeat: shared prefill
    torch.manual_seed(3)
    ro = collect_rollout(model, tok, prompts, score, sampling=hp.sampling, beta=0.1, gamma=1.0, lam=0.95,
                         missing_eos_penalty=None, iteration=0, critic=critic)
    assert not ro.recomputed
    m = ro.response_mask.bool()
    assert m.sum() > 10 and ro.ended.any() and (~m).any()  # rows of unequal length, some dropped from the batch
    with torch.no_grad():
        logits, values = model(ro.input_ids, ro.attention_mask, ro.n_response, 0.7)
    logprobs = L.logprobs_from_logits(logits, ro.input_ids[:, -ro.n_response:])
    torch.testing.assert_close(ro.logprobs[m], logprobs[m], atol=1e-5, rtol=1e-5)
    assert torch.equal(ro.logprobs[m], ro.sampler_logprobs[m]) and (ro.logprobs[~m] == 0).all()
    if critic:
        assert values[m].abs().min() > 0  # the head says something at every token
        torch.testing.assert_close(ro.values[m], values[m], atol=1e-5, rtol=1e-5)
    else:
        assert (ro.values == 0).all()
    torch.testing.assert_close(ro.kl[m], (logprobs - ro.ref_logprobs)[m], atol=1e-5, rtol=1e-5)
    reference = L.logprobs_from_logits(model.reference_logits(ro.input_ids, ro.attention_mask, ro.n_response, 0.7),
                                       ro.input_ids[:, -ro.n_response:])  # every block of the reference run here
    torch.testing.assert_close(ro.ref_logprobs[m], reference[m], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("system", [None, "Answer in one short sentence, please."], ids=["raw-text", "chat-template"])
def test_the_sampler_keeps_the_frozen_blocks_output_of_every_token_it_saw_and_drew(tiny_models, arch, system):
    """``keep_block``: the last frozen block's output at every prompt and response token, in ``assemble``'s columns,
    equals the frozen-prefix pass over the finished rows wherever a later token reads it — with a prompt prefix
    shared by every row (run once at batch 1), repeated prompts (one prefill for both) and rows that end early."""
    model, tok = lora_policy(tiny_models[arch], lora_layers=1)
    assert model.n_frozen > 0
    _lift_eos(model, tok)
    prompts = ["hello the cat", "why does the big dog run", "a b c", "hello the cat"]
    # raw text: no token shared by every row (one prefill pass); the chat template: a prefix run once at batch 1
    texts = prompts if system is None else [format_prompt(tok, p, system) for p in prompts]
    torch.manual_seed(3)
    with plain_layers(model.lm):
        s = sample(inner(model.lm), tok, texts, max_new_tokens=12, temperature=0.7, keep_block=model.prefix.last_block)
    lengths, _, input_ids, attention_mask = assemble(s, eos_ids(tok, model.lm))
    assert s.ended.any() and (lengths < 12).any() and (lengths == s.response_ids.shape[1]).any()
    full = model.frozen_prefix(input_ids, attention_mask)  # (B, T, H)
    assert s.block_states.shape == full.shape
    # read by a later token: every real token but each row's last (its output would predict past the reply)
    real = attention_mask.bool()
    read = real & (real.long().cumsum(1) < real.sum(1, keepdim=True))
    assert read.sum() > 20
    torch.testing.assert_close(s.block_states[read], full[read], atol=1e-5, rtol=1e-5)
    assert (s.block_states[~real] == 0).all()
