"""``rlhfkit dpo`` on tiny models.

Independent sources: an unpadded plain forward of each (prompt, reply) for the log-probs; a freshly loaded
base model for the reference; log 2 (the DPO loss when policy = reference); a run straight through for resume.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from rlhfkit.cli import app
from rlhfkit.config import DpoConfig, load_config
from rlhfkit.data.errors import RlhfkitError
from rlhfkit.generate import eos_ids
from rlhfkit.models.load import format_prompt, load_policy
from rlhfkit.models.policy import PolicyWithValue, build_policy
from rlhfkit.train import dpo as D
from rlhfkit.train.metrics import read_metrics

from run_checks import PAIRS, assert_same_training



def write_pairs(path, pairs=PAIRS, weights=None):
    rows = [{"prompt": p, "chosen": c, "rejected": r, "weight": 1.0 if weights is None else weights[i]}
            for i, (p, c, r) in enumerate(pairs)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _cfg(run_dir, model, **kw):
    base = dict(run_dir=str(run_dir), model=str(model), pairs=str(write_pairs(run_dir.parent / "pairs.jsonl")),
                batch_size=4, epochs=2, lr=5e-2, lora_r=4, lora_alpha=8, lora_layers=0, max_length=48, save_every=1,
                device="cpu", dtype="float32")
    base.update(kw)
    return load_config(DpoConfig, None, base)


def _model(tiny_llama, perturb=0.0):
    torch.manual_seed(0)  # LoRA A is drawn at random
    model, tok = build_policy(str(tiny_llama), lora_r=4, lora_alpha=8, device="cpu")
    if perturb:
        torch.manual_seed(5)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, perturb)
    return model, tok


def _encoded(model, tok, max_length=48):
    kw = dict(eos_id=eos_ids(tok, model.lm)[0], system_prompt="", max_length=max_length)
    return [(D.encode(tok, p, c, **kw), D.encode(tok, p, r, **kw)) for p, c, r in PAIRS]


def plain_logp(lm, tok, prompt: str, reply: str, eos_id: int) -> float:
    """log π(reply + EOS | prompt) from one unpadded forward, no rlhfkit layout code."""
    p = tok(format_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
    r = tok(reply, add_special_tokens=False)["input_ids"] + [eos_id]
    with torch.no_grad():
        logits = lm(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(r)[:, None]).sum().item()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("shared", [False, True], ids=["pair-rows", "shared-prompt"])
def test_batched_logps_equal_plain_forwards_and_reference_is_the_base(tiny_models, arch, shared):
    """Both layouts — chosen and rejected as separate rows, or one row with the prompt once and a 4-D mask
    (SharedPromptBatch) — give each reply the log-prob of its own unpadded forward, policy and reference."""
    model, tok = _model(tiny_models[arch], perturb=0.3)  # policy ≠ reference: a mix-up would show
    enc = _encoded(model, tok)
    eos = eos_ids(tok, model.lm)[0]
    assert D.shared_prompt_ok(model.lm)
    dtype = torch.float32 if shared else None
    batch = D.pair_batch(enc, [0, 1, 2], tok.pad_token_id, "cpu", dtype)
    if shared:  # the prompt once per row; prompt, chosen and rejected each padded somewhere
        assert batch.input_ids.shape == (3, max(len(enc[i][0][0]) + batch.n_chosen for i in range(3))
                                         + max(len(enc[i][1][1]) for i in range(3)))
        assert batch.reply_mask[:, : batch.n_chosen].eq(0).any() and batch.reply_mask[:, batch.n_chosen :].eq(0).any()
    else:
        assert batch.attention_mask[:, 0].eq(0).any() and batch.reply_mask[:, -1].eq(0).any()  # both paddings used
    with torch.no_grad():
        got = D.batch_logps(model, batch, average=False)  # (2, 3)
    ref = D.reference_logps(model, enc, batch_size=4, pad_id=tok.pad_token_id, device="cpu", average=False,
                            shared_dtype=dtype)
    base, _ = load_policy(str(tiny_models[arch]))
    for i in range(3):
        p, c, r = PAIRS[i]
        assert got[0, i].item() == pytest.approx(plain_logp(model.lm, tok, p, c, eos), abs=1e-4)
        assert got[1, i].item() == pytest.approx(plain_logp(model.lm, tok, p, r, eos), abs=1e-4)
        assert ref[i, 0].item() == pytest.approx(plain_logp(base, tok, p, c, eos), abs=1e-4)
        assert ref[i, 1].item() == pytest.approx(plain_logp(base, tok, p, r, eos), abs=1e-4)
    assert (got[0] - ref[:3, 0]).abs().max() > 1e-2  # the adapters really moved the policy away


def test_a_prompt_cut_differently_for_each_reply_is_not_shared(tiny_llama):
    """encode cuts a long prompt to fit each reply: where the two prompts differ, the pair keeps a row per reply
    (sharing the chosen reply's prompt would condition the rejected one on the wrong tokens)."""
    model, tok = _model(tiny_llama, perturb=0.3)
    kw = dict(eos_id=eos_ids(tok, model.lm)[0], system_prompt="", max_length=24)
    long = "why does the big dog run so often today my friend? " * 3
    enc = [(D.encode(tok, long, "yes", **kw), D.encode(tok, long, "no no no no no no no no no no", **kw))]
    assert enc[0][0][0] != enc[0][1][0]
    batch = D.pair_batch(enc, [0], tok.pad_token_id, "cpu", torch.float32)
    assert isinstance(batch, D.PairBatch)
    with torch.no_grad():
        got = D.batch_logps(model, batch, average=False)[:, 0]
    for j, (p, r) in enumerate(enc[0]):
        with torch.no_grad():
            logits = model.lm(input_ids=torch.tensor([p + r])).logits[0, len(p) - 1 : -1]
        want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r)[:, None]).sum().item()
        assert got[j].item() == pytest.approx(want, abs=1e-4)


def test_a_step_on_the_shared_prompt_layout_equals_one_on_separate_rows(tiny_llama):
    """Same loss, same gradients: the updated adapters agree to float rounding."""
    results = []
    for dtype in (None, torch.float32):
        model, tok = _model(tiny_llama, perturb=0.3)
        enc = _encoded(model, tok)
        ref = D.reference_logps(model, enc, batch_size=4, pad_id=tok.pad_token_id, device="cpu", average=False,
                                shared_dtype=dtype)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        idx = [0, 2, 3, 5]
        stats = D.dpo_step(model, opt, D.pair_batch(enc, idx, tok.pad_token_id, "cpu", dtype), ref[idx],
                           torch.ones(4), beta=0.5, loss_type="sigmoid", label_smoothing=0.0, max_grad_norm=1e9, step=0)
        results.append((stats, {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}))
    (s0, w0), (s1, w1) = results
    assert s0["dpo/loss"] == pytest.approx(s1["dpo/loss"], rel=1e-5)
    assert any((w0[n] - _model(tiny_llama, perturb=0.3)[0].state_dict()[n]).abs().max() > 1e-3 for n in w0)  # moved
    for n in w0:
        torch.testing.assert_close(w0[n], w1[n], atol=1e-5, rtol=1e-4)


def test_encode_cuts_a_long_prompt_from_the_left_and_keeps_eos_when_it_fits(tiny_llama):
    _, tok = _model(tiny_llama)
    p, r = D.encode(tok, "word " * 200, "short reply", eos_id=7, system_prompt="", max_length=32)
    assert len(p) + len(r) == 32 and r[-1] == 7 and len(r) < 16
    full = tok(format_prompt(tok, "word " * 200), add_special_tokens=False)["input_ids"]
    assert p == full[-len(p):]  # the end of the prompt, next to the reply, is kept


def test_step_weights_pairs(tiny_llama):
    """Weights (1, 0) train exactly as the first pair alone: a zero-weight pair adds nothing."""
    results = []
    for idx, w in (([0, 1], [1.0, 0.0]), ([0], [1.0])):
        model, tok = _model(tiny_llama, perturb=0.3)
        enc = _encoded(model, tok)
        ref = D.reference_logps(model, enc, batch_size=4, pad_id=tok.pad_token_id, device="cpu", average=False)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
        batch = D.pair_batch(enc, idx, tok.pad_token_id, "cpu")
        D.dpo_step(model, opt, batch, ref[idx], torch.tensor(w), beta=0.5, loss_type="sigmoid", label_smoothing=0.0,
                   max_grad_norm=1e9, step=0)
        results.append({n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n})
    for n in results[0]:
        torch.testing.assert_close(results[0][n], results[1][n], atol=1e-6, rtol=1e-5)


def test_run_dpo_learns_the_pairs_and_caches_the_reference_once(tiny_llama, tmp_path, monkeypatch):
    calls = []
    original = PolicyWithValue.reference_logits
    monkeypatch.setattr(PolicyWithValue, "reference_logits", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    s = run = D.run_dpo(_cfg(tmp_path / "run", tiny_llama, epochs=6))
    assert len(calls) == 2  # ⌈6 pairs / 4⌉ batches, once, not once per step or epoch
    assert run["steps"] == 12 and run["algorithm"] == "dpo"
    assert s["loss_first"] == pytest.approx(math.log(2), abs=1e-4)  # LoRA B = 0: policy = reference at step 0
    m = read_metrics(tmp_path / "run" / "logs" / "metrics.csv", "dpo")
    # policy = reference at step 0: every margin 0 up to float rounding (the reference ran in other batches)
    assert abs(m["rewards/margins"][0][1]) < 1e-6 and [k for k, _ in m["rewards/margins"]] == list(range(12))
    assert s["accuracy_last_epoch"] == 1.0 and s["margin_last_epoch"] > 0.1 and s["loss_last"] < math.log(2) - 0.1
    # the trained folder is a policy eval can load (ppo's layout) and names its algorithm
    from rlhfkit.models.policy import load_aligned

    lm, _, config = load_aligned(tmp_path / "run" / "policy")
    assert config["algorithm"] == "dpo" and not hasattr(lm, "disable_adapter")
    base, _ = load_policy(str(tiny_llama))
    for n, p in base.named_parameters():  # LoRA merged in: the base weights moved, but only by the adapters' product
        assert p.shape == lm.get_parameter(n).shape


def test_resume_is_exact_and_does_not_recompute_the_reference(tiny_llama, tmp_path, monkeypatch):
    D.run_dpo(_cfg(tmp_path / "a", tiny_llama, epochs=2, save_every=100))
    D.run_dpo(_cfg(tmp_path / "b", tiny_llama, epochs=1))
    calls = []
    original = PolicyWithValue.reference_logits
    monkeypatch.setattr(PolicyWithValue, "reference_logits", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    D.run_dpo(_cfg(tmp_path / "b", tiny_llama, epochs=2, resume=True))
    assert not calls
    ma, mb = assert_same_training(tmp_path / "a", tmp_path / "b", "dpo")
    assert ma["dpo/loss"] == mb["dpo/loss"] and len(ma["dpo/loss"]) == 4
    with pytest.raises(RlhfkitError, match="other pairs or settings"):
        D.run_dpo(_cfg(tmp_path / "b", tiny_llama, epochs=3, beta=0.5, resume=True))


def test_ipo_and_zero_weight_pairs(tiny_llama, tmp_path):
    cfg = _cfg(tmp_path / "run", tiny_llama, epochs=1, loss_type="ipo",
               pairs=str(write_pairs(tmp_path / "w.jsonl", weights=[1, 0, 1, 1, 1, 0.5])))
    s = D.run_dpo(cfg)
    assert s["pairs"] == 5 and s["steps"] == 2  # the zero-weight pair is left out
    assert s["loss_first"] == pytest.approx((1 / (2 * 0.1)) ** 2, rel=1e-4)  # IPO at h = 0: (0 − 1/(2β))² = 25


def test_max_pairs_trains_on_a_seeded_subset_in_file_order(tiny_llama, tmp_path):
    from rlhfkit.data.formats import load_pairs

    pairs = load_pairs(str(write_pairs(tmp_path / "p.jsonl")))
    some = D.subset(pairs, 4, seed=3)
    assert len(some) == 4 and len({p.chosen for p in some}) == 4  # distinct pairs
    assert [pairs.index(p) for p in some] == sorted(pairs.index(p) for p in some)  # file order kept
    assert D.subset(pairs, 4, seed=3) == some and D.subset(pairs, 0, seed=3) == pairs == D.subset(pairs, 9, seed=3)
    assert any(D.subset(pairs, 4, seed=k) != some for k in range(4, 10))  # the seed draws it
    s = D.run_dpo(_cfg(tmp_path / "run", tiny_llama, epochs=1, max_pairs=4))
    assert s["pairs"] == 4 and s["steps"] == 1


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "pairs.jsonl:3: .*prompt"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "pairs.jsonl:3: fields 'chosen' and 'rejected' are the same"),
])
def test_bad_pairs_are_one_line_errors_with_file_and_line_and_write_nothing(tiny_llama, tmp_path, bad, message):
    path = write_pairs(tmp_path / "pairs.jsonl")
    lines = path.read_text().splitlines()
    lines[2] = json.dumps(bad)
    path.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["dpo", "--run-dir", str(run), "--model", str(tiny_llama), "--pairs", str(path)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    import re

    assert re.search(message, result.output), result.output
    assert not run.exists()


def test_config_refuses_bad_settings():
    for bad, word in ((dict(loss_type="hinge"), "loss_type"), (dict(loss_type="ipo", label_smoothing=0.1), "label_smoothing"),
                      (dict(label_smoothing=0.5), "label_smoothing"), (dict(beta=0), "beta"), (dict(lora_r=0), "lora_r")):
        with pytest.raises(RlhfkitError, match=word):
            load_config(DpoConfig, None, bad)


def test_demo_refuses_an_unknown_algorithm_and_no_kl_with_dpo(tmp_path):
    for args, word in ((["--algorithm", "ppo2"], "--algorithm must be one of ppo, rloo, grpo, dpo"),
                       (["--algorithm", "dpo", "--no-kl"], "--no-kl turns off the KL penalty of ppo, rloo and grpo")):
        result = CliRunner().invoke(app, ["demo", "--run-dir", str(tmp_path / "demo"), *args])
        assert result.exit_code == 2 and word in result.output, result.output
    assert not any(tmp_path.iterdir())
