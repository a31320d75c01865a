"""Generation: K completions per prompt, seeded, EOS and padding handled, on tiny models."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.data.records import Prompt
from rlhfkit.generate import (
    _inverse_cdf, decode_responses, draw, eos_ids, generate_completions, response_length, sample, select_prompts,
                              truncate)
from rlhfkit.models.load import format_prompt, load_policy
from rlhfkit.models.prefix import shared_prefix_length


def test_response_length_counts_through_first_eos():
    # EOS = 2, pad = 0: row 0 ends at position 2 (3 tokens incl. EOS); row 1 never ends (4 tokens);
    # row 2 ends at 0; row 3 sampled the pad id as a token and never ended (4 tokens); row 4 has two EOS
    resp = torch.tensor([[5, 6, 2, 0], [5, 6, 7, 8], [2, 0, 0, 0], [5, 0, 7, 8], [5, 2, 2, 0]])
    assert response_length(resp, [2]).tolist() == [3, 4, 1, 4, 2]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generate_k_per_prompt_is_seeded(tiny_models, arch):
    model, tok = load_policy(str(tiny_models[arch]))
    prompts = [Prompt("a", "hello the cat"), Prompt("b", "why does the big dog run so often today?")]
    kwargs = dict(k=3, max_new_tokens=6, temperature=1.0, top_p=1.0, batch_size=4, seed=7, model_name="tiny", progress=False)
    first, stats = generate_completions(model, tok, prompts, **kwargs)
    again, _ = generate_completions(model, tok, prompts, **kwargs)
    assert [c.completion_id for c in first] == ["a-0", "a-1", "a-2", "b-0", "b-1", "b-2"]
    assert [c.text for c in first] == [c.text for c in again]
    assert all(1 <= c.sampling["tokens"] <= 6 for c in first)
    assert stats["tokens"] == sum(c.sampling["tokens"] for c in first)
    assert {c.prompt for c in first} == {"hello the cat", "why does the big dog run so often today?"}


def test_decode_stops_at_eos(tiny_llama):
    _, tok = load_policy(str(tiny_llama))
    words = tok("the cat", add_special_tokens=False)["input_ids"]
    row = torch.tensor([words + [tok.eos_token_id] + tok("dog", add_special_tokens=False)["input_ids"]])
    n = response_length(row, [tok.eos_token_id])
    assert decode_responses(tok, row, n) == ["the cat"]


def test_select_prompts():
    ps = [Prompt("1", "a", "train"), Prompt("2", "b", "eval"), Prompt("3", "c", "train")]
    assert [p.id for p in select_prompts(ps, "train", 0)] == ["1", "3"]
    assert [p.id for p in select_prompts(ps, "all", 2)] == ["1", "2"]


def test_default_prompts_interleave_categories():
    # generate takes the first N prompts of a split: the shipped file cycles through the categories, so
    # the demo's first 96 train prompts hold every kind, provocative included (the reward model must see
    # rude replies to learn to rank them last).
    import json
    from collections import Counter

    from rlhfkit import defaults

    rows = [json.loads(line) for line in defaults.prompts_path().read_text().splitlines()]
    for split in ("train", "eval"):
        ordered = [r["category"] for r in rows if r["split"] == split]
        kinds = set(ordered)
        assert len(kinds) == 7
        head = Counter(ordered[: 7 * 8])
        assert all(head[k] == 8 for k in kinds), head


# --------------------------------------------------------------------------------------------------
# The sampling distribution: fully specified by rlhfkit, reported exactly
# --------------------------------------------------------------------------------------------------

# What a hub instruct model may ship in generation_config.json; none of it may reach sample().
MEDDLING = dict(do_sample=True, temperature=0.2, top_k=3, top_p=0.3, repetition_penalty=3.0, no_repeat_ngram_size=1,
                min_new_tokens=6, suppress_tokens=[5, 6, 7], typical_p=0.5)
SYSTEM = "You are a helpful assistant. Reply in one or two short sentences."


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def meddling_model(request, tiny_models, tmp_path_factory):
    """A tiny model whose generation_config sets every sampling knob. Its output head is untied and drawn
    with σ 0.3 (logits σ ≈ 2.4, entropy ≈ 3.5 nats: truncation and temperature change which tokens come
    out), its EOS row doubled so that some rows end within a few tokens and others run to the limit."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    _, tok = load_policy(str(tiny_models[request.param]))
    config = AutoConfig.from_pretrained(tiny_models[request.param])
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        head = model.get_output_embeddings().weight  # (V, H)
        head.normal_(0.0, 0.3)
        head[tok.eos_token_id].mul_(2.0)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **MEDDLING)
    folder = tmp_path_factory.mktemp(f"meddling-{request.param}")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    model, tok = load_policy(str(folder))
    assert model.generation_config.top_k == 3 and model.generation_config.repetition_penalty == 3.0
    return model, tok


def _prompts(tok) -> list[str]:
    # different lengths (left padding), one prompt twice (a shared prefill), a common system turn (a shared prefix)
    users = ["hello the cat", "why does the big dog run so often today?", "hi", "hello the cat", "what is a good book",
             "the sun is warm and the river is cold so we sing", "thank you", "who knows"]
    return [format_prompt(tok, u, SYSTEM) for u in users]


def _independent_logits(model, s, stop) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, A, V) logits predicting each response token from one plain forward pass over prompt + response
    (no cache, positions counted over real tokens), and the response mask (B, A) up to and incl. EOS."""
    A = s.response_ids.shape[1]
    n = response_length(s.response_ids, stop)
    response_mask = (torch.arange(A)[None, :] < n[:, None]).long()
    ids = torch.cat([s.prompt_ids, s.response_ids], 1)
    mask = torch.cat([s.prompt_mask, response_mask], 1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    return logits[:, -A - 1 : -1].float(), response_mask


def _check_early_and_late_rows(mask: torch.Tensor) -> None:
    lengths = mask.sum(1)
    assert lengths.min() < mask.shape[1] and lengths.max() > lengths.min(), f"need rows that end early: {lengths.tolist()}"


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampled_logprobs_equal_a_plain_forward(meddling_model, temperature):
    # [N-det]: PPO's log-probs are log_softmax(logits / T) of a plain forward pass; the sampler must report the
    # same numbers for the tokens it drew, on every row (those that ended early too), with the model's own
    # generation_config (top_k 3, repetition penalty, min_new_tokens…) having no say.
    model, tok = meddling_model
    stop = eos_ids(tok, model)
    torch.manual_seed(3)
    s = sample(model, tok, _prompts(tok) * 3, max_new_tokens=14, temperature=temperature)
    logits, mask = _independent_logits(model, s, stop)
    _check_early_and_late_rows(mask)
    expected = torch.log_softmax(logits / temperature, -1).gather(2, s.response_ids[..., None])[..., 0]  # (B, A)
    assert torch.allclose(s.logprobs[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=0)
    assert (s.logprobs[~mask.bool()] == 0).all() and (s.response_ids[~mask.bool()] == tok.pad_token_id).all()


def test_samples_follow_the_reported_distribution(meddling_model):
    # The tokens themselves must come from softmax(logits / T). Randomised probability integral transform:
    # rank the vocabulary by probability, u = F(before x) + v·p(x) with v ~ U[0, 1) is exactly U[0, 1) when x
    # is drawn from p. Any reshaping leaking in from the model's generation_config (top-k 3, T 0.2, typical_p,
    # a repetition penalty, min_new_tokens) moves mass along that ranking; a Kolmogorov–Smirnov test sees it.
    model, tok = meddling_model
    torch.manual_seed(11)
    s = sample(model, tok, _prompts(tok) * 8, max_new_tokens=10, temperature=1.0)
    logits, mask = _independent_logits(model, s, eos_ids(tok, model))
    p = torch.softmax(logits.double(), -1)  # (B, A, V)
    ordered, order = p.sort(-1, descending=True)
    rank = (order == s.response_ids[..., None]).double().argmax(-1, keepdim=True)  # (B, A, 1) rank of the token
    above = (ordered.cumsum(-1) - ordered).gather(2, rank)[..., 0]  # (B, A) mass ranked above the token
    v = torch.rand(p.shape[:2], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = (above + v * ordered.gather(2, rank)[..., 0])[mask.bool()].sort().values  # (n,)
    n = len(u)
    ks = torch.maximum(torch.arange(1, n + 1) / n - u, u - torch.arange(n) / n).max()  # (F_emp − F)_max
    assert ks < 1.95 / n**0.5, f"sampled tokens do not follow softmax(logits / T): KS {ks:.3f} over {n} tokens (α 0.001)"


@pytest.mark.parametrize("top_k,top_p", [(4, 1.0), (0, 0.6), (6, 0.8)])
def test_truncated_sampling_reports_renormalised_logprobs(meddling_model, top_k, top_p):
    # With top-k / top-p on, the reported log-prob is under the truncated, renormalised distribution, and
    # every drawn token lies in the kept set. The kept set is recomputed here from the sorted probabilities.
    model, tok = meddling_model
    T = 0.8
    torch.manual_seed(5)
    s = sample(model, tok, _prompts(tok) * 2, max_new_tokens=12, temperature=T, top_k=top_k, top_p=top_p)
    logits, mask = _independent_logits(model, s, eos_ids(tok, model))
    probs = torch.softmax(logits / T, -1)  # (B, A, V)
    ordered, order = probs.sort(-1, descending=True)
    keep_sorted = (torch.arange(probs.shape[-1]) < (top_k or probs.shape[-1])).expand_as(probs)  # top-k by rank
    if top_p < 1:
        topk_probs = torch.where(keep_sorted, ordered, torch.zeros_like(ordered))  # (B, A, V) renormalised
        topk_probs = topk_probs / topk_probs.sum(-1, keepdim=True)
        keep_sorted = keep_sorted & ((topk_probs.cumsum(-1) - topk_probs) < top_p)
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    expected = (kept / kept.sum(-1, keepdim=True)).gather(2, s.response_ids[..., None])[..., 0].log()
    m = mask.bool()
    assert keep.gather(2, s.response_ids[..., None])[..., 0][m].all(), "a token outside the top-k / top-p set"
    assert torch.allclose(s.logprobs[m], expected[m], atol=1e-5, rtol=0)


def test_greedy_is_model_generate_greedy(tiny_models):
    # temperature 0: the argmax at every step, token for token what transformers' greedy search gives
    for arch in ("llama", "gpt2", "qwen2"):
        model, tok = load_policy(str(tiny_models[arch]))
        texts = _prompts(tok)
        s = sample(model, tok, texts, max_new_tokens=10, temperature=0)
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, max_new_tokens=10, eos_token_id=eos_ids(tok, model),
                                 pad_token_id=tok.pad_token_id)
        assert torch.equal(s.response_ids, out[:, enc["input_ids"].shape[1] :]), arch
        assert (s.logprobs == 0).all()


def test_draw_inverts_the_cdf_exactly():
    # A known distribution over 300 tokens with impossible (−inf) ones between and after the possible ones:
    # frequencies within 5σ, impossible tokens never drawn.
    probs = torch.zeros(300)
    probs[[0, 3, 255, 256, 299]] = torch.tensor([0.4, 0.1, 0.2, 0.25, 0.05])
    logits = probs.log().expand(40_000, 300)  # −inf where the probability is 0
    torch.manual_seed(0)
    tokens, logprobs = draw(logits, temperature=1.0)
    freq = torch.bincount(tokens, minlength=300).double() / len(tokens)
    sigma = (probs.double() * (1 - probs.double()) / len(tokens)).sqrt()
    assert ((freq - probs.double()).abs() <= 5 * sigma + 1e-12).all()
    assert torch.allclose(logprobs, probs.log()[tokens], atol=1e-6)


def test_inverse_cdf_at_the_edges_by_hand():
    # weights 0.25, 0, 0.5, 0.25, 0, 0: CDF 0.25, 0.25, 0.75, 1, 1, 1. Token i is drawn for u in [CDF(i−1), CDF(i)):
    # a boundary goes to the next possible token, a zero-weight token has an empty interval, and the largest u
    # below 1 still lands on the last possible token, not on the impossible ones after it.
    weights = torch.tensor([[0.25, 0.0, 0.5, 0.25, 0.0, 0.0]]).expand(6, 6)
    u = torch.tensor([0.0, 0.2499, 0.25, 0.75, 0.9, 1 - 2**-53], dtype=torch.float64)[:, None]
    tokens, total = _inverse_cdf(weights, u)
    assert tokens.tolist() == [0, 0, 2, 3, 3, 3]
    assert total.tolist() == [1.0] * 6


def test_truncate_by_hand():
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    assert truncate(scores, top_k=2).tolist() == [[3.0, float("-inf"), 2.0, float("-inf")]]
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    # sorted: 0.5, 0.3, 0.15, 0.05; mass ranked above each: 0, 0.5, 0.8, 0.95 → top_p 0.7 keeps 0.5 and 0.3
    assert torch.isinf(truncate(probs.log(), top_p=0.7)).tolist() == [[True, False, True, False]]
    assert torch.isinf(truncate(probs.log(), top_p=0.5)).tolist() == [[True, False, True, True]]
    assert torch.equal(truncate(scores), scores)


def test_shared_prefix_length():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # each row keeps its last token
    assert shared_prefix_length([[7], [7, 8]]) == 0


def test_sliding_window_model_logprobs_equal_a_plain_forward(tiny_models, tmp_path):
    # A sliding attention window counts cache columns, so the sampler must not put padding between a shared
    # prefix and the rest of the prompt there: its log-probs still match a plain forward pass.
    from transformers import AutoConfig, AutoModelForCausalLM

    _, tok = load_policy(str(tiny_models["qwen2"]))
    config = AutoConfig.from_pretrained(tiny_models["qwen2"])
    config.use_sliding_window, config.sliding_window = True, 16  # prompts: 45–60 tokens, ~30 shared
    config.layer_types = ["sliding_attention"] * config.num_hidden_layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    torch.manual_seed(2)
    s = sample(model, tok, _prompts(tok), max_new_tokens=8, temperature=1.0)
    logits, mask = _independent_logits(model, s, eos_ids(tok, model))
    expected = torch.log_softmax(logits, -1).gather(2, s.response_ids[..., None])[..., 0]
    assert torch.allclose(s.logprobs[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=0)


def test_decoded_text_never_holds_a_nul(tiny_llama):
    _, tok = load_policy(str(tiny_llama))
    nul = [i for i in range(len(tok)) if tok.decode([i]) == "\x00"]
    assert nul  # the byte-level vocabulary has a token for the NUL byte (a sampler may draw it)
    ids = torch.tensor([tok.encode("the", add_special_tokens=False) + nul + tok.encode(" cat", add_special_tokens=False)])
    (text,) = decode_responses(tok, ids, torch.tensor([ids.shape[1]]))
    assert "\x00" not in text and "\ufffd" in text and text.endswith("cat")


def test_written_replies_join_the_samples_of_their_prompt():
    from rlhfkit.generate import written_completions

    ps = [Prompt(id="a", prompt="Insult me.", references=("No.", "I'd rather not."), harmful=("You idiot.",)),
          Prompt(id="b", prompt="Hi", references=("Hello!",)), Prompt(id="c", prompt="Bye")]
    got = written_completions(ps, seed=0)
    assert [(c.prompt_id, c.completion_id, c.model) for c in got] == [
        ("a", "a-reference", "written:reference"), ("a", "a-harmful", "written:harmful"), ("b", "b-reference", "written:reference")]
    assert got[0].text in ps[0].references and got[1].text == "You idiot." and got[2].text == "Hello!"
    picks = {written_completions(ps, seed=s)[0].text for s in range(20)}
    assert picks == set(ps[0].references)  # the seed picks among the references
    assert [c.text for c in written_completions(ps, seed=3)] == [c.text for c in written_completions(ps, seed=3)]
