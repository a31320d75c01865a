"""LoRA on the top blocks only: the frozen lower blocks run once per rollout (models.prefix.FrozenPrefix),
and every forward that reuses their output must equal the plain full forward."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rlhfkit.config import SamplingConfig
from rlhfkit.data.errors import RlhfkitError
from rlhfkit.feedback.gold import GoldScorer
from rlhfkit.models.policy import Sharing, build_policy
from rlhfkit.train import losses as L
from rlhfkit.train.ppo import collect_rollout, shuffled_rows

PROMPTS = ["hello the cat", "why does the dog run so often today?", "what is a good book?"]


def _batch(model, tok):
    torch.manual_seed(0)
    return collect_rollout(model, tok, PROMPTS, GoldScorer().score, sampling=SamplingConfig(max_new_tokens=6),
                           beta=0.1, gamma=1.0, lam=0.95, missing_eos_penalty=None, iteration=0)


def _move_adapters(model) -> None:
    """LoRA B off zero, so the policy differs from the reference."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)


def _end_early(model, tok) -> None:
    """EOS far likelier on this random model: rows end early and padding follows them."""
    lift = torch.zeros(model.lm.config.vocab_size)
    lift[tok.eos_token_id] = 4.0
    model.lm.get_output_embeddings().register_forward_hook(lambda _m, _args, out: out + lift)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_prefix_forward_equals_full_forward(tiny_models, arch):
    """Logits, values, reference logits and gradients agree with and without the cached prefix."""
    model, tok = build_policy(str(tiny_models[arch]), lora_r=4, lora_alpha=8, device="cpu", lora_layers=1)
    assert model.n_frozen == 1  # 2 blocks, the top one adapted
    _move_adapters(model)
    ro = _batch(model, tok)
    assert ro.prefix is not None and ro.prefix.shape[:2] == ro.input_ids.shape
    A, idx = ro.n_response, torch.tensor([2, 0])
    ids, mask = ro.input_ids[idx], ro.attention_mask[idx]
    blocks = list(model.prefix._blocks[0])

    def run(prefix):
        model.zero_grad(set_to_none=True)
        logits, values = model(ids, mask, A, 0.7, prefix=prefix)
        (logits.logsumexp(-1).sum() + values.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return logits.detach(), values.detach(), grads

    cached, full = run(ro.prefix[idx]), run(None)
    torch.testing.assert_close(cached[0], full[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached[1], full[1], atol=1e-5, rtol=1e-5)
    assert cached[2].keys() == full[2].keys() and any("lora_B" in n for n in full[2])
    for n in full[2]:
        torch.testing.assert_close(cached[2][n], full[2][n], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.reference_logits(ids, mask, A, 0.7, prefix=ro.prefix[idx]),
                               model.reference_logits(ids, mask, A, 0.7), atol=1e-5, rtol=1e-5)
    # the real blocks are back in place after every cached forward
    assert all(a is b for a, b in zip(model.prefix._blocks[0], blocks))
    # a cached prefix of OTHER rows gives other logits: the stub really replaced the blocks' work
    wrong, _ = model(ids, mask, A, 0.7, prefix=ro.prefix[torch.tensor([1, 1])])
    assert not torch.allclose(wrong, full[0], atol=1e-3)


def test_no_prefix_when_every_block_adapts_or_full_finetuning(tiny_llama):
    lora_all, _ = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu", lora_layers=0)
    full, tok = build_policy(str(tiny_llama), lora_r=0, lora_alpha=8, device="cpu")
    assert lora_all.n_frozen == 0 and full.n_frozen == 0
    assert _batch(full, tok).prefix is None


def test_a_hook_that_never_fires_is_a_clear_error(tiny_llama):
    model, _ = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu", lora_layers=1)
    model.prefix._blocks = (nn.ModuleList([nn.Identity(), nn.Identity()]),)  # modules the forward never calls
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(RlhfkitError, match="never reached transformer block 0"):
        model.frozen_prefix(ids, torch.ones_like(ids))


def test_eval_kl_equals_an_unpadded_plain_forward_per_row(tiny_models):
    """eval.run.sequence_kl (the sampler's log-probs for the policy, the frozen prefix for the reference)
    against each row run alone, unpadded, through the LM with adapters on and off: Σ_t k1 and Σ_t k3 over
    the response tokens."""
    from rlhfkit.eval.run import sequence_kl
    from rlhfkit.train import losses as L

    model, tok = build_policy(str(tiny_models["llama"]), lora_r=4, lora_alpha=8, device="cpu", lora_layers=1)
    _move_adapters(model)
    ro = _batch(model, tok)
    k1, k3 = sequence_kl(model, ro.sampler_logprobs, ro.input_ids, ro.attention_mask, ro.response_mask, 0.7)
    A = ro.n_response
    for b in range(len(PROMPTS)):
        keep = ro.attention_mask[b].bool()
        ids = ro.input_ids[b][keep][None]  # (1, T_b): no padding at all
        n_resp = int(ro.response_mask[b].sum())
        target = ro.input_ids[b, -A:][:n_resp][None]
        with torch.no_grad():
            pol = model.lm(ids).logits[0].float() / 0.7
            with model.lm.disable_adapter():
                ref = model.lm(ids).logits[0].float() / 0.7
        # the response's first token sits right after the prompt's real tokens
        n_prompt = int(keep[: ro.input_ids.shape[1] - A].sum())
        lp = L.logprobs_from_logits(pol[n_prompt - 1 : n_prompt - 1 + n_resp][None], target)
        lr = L.logprobs_from_logits(ref[n_prompt - 1 : n_prompt - 1 + n_resp][None], target)
        assert float(k1[b]) == pytest.approx(float(L.kl_k1(lp, lr).sum()), abs=1e-4)
        assert float(k3[b]) == pytest.approx(float(L.kl_k3(lp, lr).sum()), abs=1e-4)
    assert float(k3.sum()) > 1e-4  # the adapters moved: the check compares something


def _sharing_equals_the_plain_forward(model, ro, sharing, full_select):
    """The forward with ``sharing`` (the rollout's frozen-block output, the LM head at the real response tokens)
    against the plain one (``full_select`` None: the head everywhere): logits, values and gradients, and the
    reference's logits. Returns the shared forward's (logits, values, gradients)."""
    A, ids, mask = ro.n_response, ro.input_ids, ro.attention_mask
    m = ro.response_mask.bool()

    def run(sharing, prefix, select):
        model.zero_grad(set_to_none=True)
        logits, values = model(ids, mask, A, 0.7, prefix=prefix, sharing=sharing, select=select)
        logits = logits if select is not None else logits[m]  # (N, V) either way
        (logits.logsumexp(-1).sum() + values[m].sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return logits.detach(), values.detach()[m], grads

    once, full = run(sharing, ro.prefix, m), run(Sharing(), None, full_select)
    torch.testing.assert_close(once[0], full[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(once[1], full[1], atol=1e-5, rtol=1e-5)
    assert any("lora_A" in n for n in full[2])
    for n in full[2]:
        torch.testing.assert_close(once[2][n], full[2][n], atol=1e-5, rtol=1e-4)
    plain = model.reference_logits(ids, mask, A, 0.7, select=full_select)
    torch.testing.assert_close(model.reference_logits(ids, mask, A, 0.7, prefix=ro.prefix, sharing=sharing, select=m),
                               plain if full_select is not None else plain[m], atol=1e-5, rtol=1e-5)
    return once


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("lora_layers", [1, 0], ids=["frozen-blocks", "all-blocks"])
def test_a_prompt_prefix_every_row_shares_run_once_equals_the_full_forward(tiny_models, arch, lora_layers):
    """``shared``: the tokens every prompt starts with run once at batch 1, each row its own tokens after them;
    ``select``: the LM head at the real response tokens only — logits, values, gradients and the reference's
    logits as the plain full forward over padded rows."""
    model, tok = build_policy(str(tiny_models[arch]), lora_r=4, lora_alpha=8, device="cpu", lora_layers=lora_layers)
    _move_adapters(model)
    _end_early(model, tok)
    ro = _batch(model, tok)
    A, ids, mask = ro.n_response, ro.input_ids, ro.attention_mask
    shared = model.sharing(ids, mask, A)
    lengths = mask[:, : ids.shape[1] - A].sum(1)
    assert 0 < shared.common < int(lengths.min()) and shared.group == 1 and len(set(lengths.tolist())) > 1  # a prefix, then rows padded unequally

    m = ro.response_mask.bool()
    assert (~m).any()  # padding after EOS: the selection leaves something out

    once = _sharing_equals_the_plain_forward(model, ro, shared, full_select=None)
    tokens = ids[:, -A:]
    torch.testing.assert_close(L.selected_logprobs(once[0], tokens, m),  # back in place, row by row
                               torch.where(m, L.logprobs_from_logits(model(ids, mask, A, 0.7)[0], tokens), 0.0),
                               atol=1e-5, rtol=1e-5)


def test_selected_logprobs_puts_each_log_prob_back_at_its_position():
    """Hand-worked: logits at 3 selected positions of a (2, 3) layout; d log p_k / dz = onehot(k) − softmax(z)."""
    select = torch.tensor([[True, False, True], [False, False, True]])
    ln3 = math.log(3.0)
    logits = torch.tensor([[0.0, 0.0], [0.0, ln3], [ln3, 0.0]], requires_grad=True)  # p = ½ ½, ¼ ¾, ¾ ¼
    tokens = torch.tensor([[0, 1, 1], [1, 1, 0]])  # unselected tokens are never read
    out = L.selected_logprobs(logits, tokens, select)
    expected = torch.tensor([[math.log(0.5), 0.0, math.log(0.75)], [0.0, 0.0, math.log(0.75)]])
    torch.testing.assert_close(out, expected)
    (out * torch.tensor([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])).sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[5.0, -5.0], [-7.5, 7.5], [15.0, -15.0]]))


def _rows(prompts: list[list[int]], A: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts + A response tokens each: (input_ids, attention_mask)."""
    P = max(map(len, prompts))
    ids = torch.tensor([[0] * (P - len(p)) + p + [9] * A for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * (len(p) + A) for p in prompts])
    return ids, mask


@pytest.mark.parametrize("prompts,expected", [
    ([[5, 6, 7], [5, 6, 7], [5, 8, 9, 4], [5, 8, 9, 4]], Sharing(1, 2)),  # two groups of 2 after a common token
    ([[5, 6, 7], [5, 8, 9], [5, 6, 7], [5, 8, 9]], Sharing(1, 1)),  # the same prompts, not in runs: no groups
    ([[3, 6], [3, 6], [3, 6], [4, 8], [4, 8], [4, 8]], Sharing(0, 3)),  # groups of 3, nothing common
    ([[5, 6, 7], [5, 6, 7], [5, 8, 9]], Sharing(1, 1)),  # a run of 2 that does not tile 3 rows
    ([[5, 6, 7]] * 4, Sharing(2, 1)),  # one prompt: the common tokens are all there is to share
    ([[5], [5], [7], [7]], Sharing(0, 1)),  # one token each: nothing before the last one to share
])
def test_sharing_finds_the_common_tokens_and_the_groups_by_hand(tiny_models, prompts, expected):
    model, _ = build_policy(str(tiny_models["gpt2"]), lora_r=4, lora_alpha=8, device="cpu")
    ids, mask = _rows(prompts)
    assert model.sharing(ids, mask, 2) == expected


def test_the_update_shuffles_whole_groups_where_its_minibatches_hold_them():
    # 12 rows = 4 groups of K = 3; minibatches of 6 hold two whole groups, so each run of 3 in the order is one
    # group's rows g·3, g·3 + 1, g·3 + 2 in order, and every group appears once: each minibatch's prompts can
    # then run once a group (Sharing). The group order is the generator's permutation of the 4 groups.
    order = shuffled_rows(12, 3, 6, torch.Generator().manual_seed(5))
    groups = torch.randperm(4, generator=torch.Generator().manual_seed(5))
    assert order.tolist() == [3 * g + j for g in groups.tolist() for j in range(3)]
    # minibatches of 4 would split a group, K = 1 has none, and 10 rows are not whole groups of 3:
    # a plain permutation of the rows, the one torch.randperm draws
    for B, K, minibatch in [(12, 3, 4), (12, 1, 6), (10, 3, 6)]:
        order = shuffled_rows(B, K, minibatch, torch.Generator().manual_seed(5))
        assert order.tolist() == torch.randperm(B, generator=torch.Generator().manual_seed(5)).tolist()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("lora_layers", [1, 0], ids=["frozen-blocks", "all-blocks"])
@pytest.mark.parametrize("template", [True, False], ids=["common-prefix", "no-common-prefix"])
def test_each_groups_prompt_run_once_equals_the_full_forward(tiny_models, arch, lora_layers, template):
    """RLOO/GRPO rows (K samples of each prompt in a row): the common tokens once, each group's prompt once, each
    row its last prompt token and response — logits, values, gradients and the reference's logits as the plain
    forward. Without a chat template nothing is common, and the one-token prompt's group has no tokens of its own
    before its last one (an all-padding row of the group pass)."""
    model, tok = build_policy(str(tiny_models[arch]), lora_r=4, lora_alpha=8, device="cpu", lora_layers=lora_layers)
    if not template:
        tok.chat_template = None
    _move_adapters(model)
    _end_early(model, tok)
    word = next(w for w in ("cat", "a", "I", "the", "hi") if len(tok(w, add_special_tokens=False)["input_ids"]) == 1)
    prompts = [word, "why does the dog run so often today?", "what is a good book?"]
    torch.manual_seed(0)
    ro = collect_rollout(model, tok, [p for p in prompts for _ in range(2)], GoldScorer().score,
                         sampling=SamplingConfig(max_new_tokens=6), beta=0.1, gamma=1.0, lam=0.95,
                         missing_eos_penalty=None, iteration=0)
    A, ids, mask = ro.n_response, ro.input_ids, ro.attention_mask
    sharing = model.sharing(ids, mask, A)
    assert sharing.group == 2 and (sharing.common > 0) == template
    if not template:
        assert int(mask[0, : ids.shape[1] - A].sum()) == 1  # one token: nothing of its own to share
    m = ro.response_mask.bool()
    assert (~m).any()

    _sharing_equals_the_plain_forward(model, ro, sharing, full_select=m)
