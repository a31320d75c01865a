"""Evaluation: metrics against hand-computed values, and the eval stage end to end on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rlhfkit.config import EvalConfig, PPOConfig, load_config
from rlhfkit.data.errors import RlhfkitError
from rlhfkit.eval import metrics as M
from rlhfkit.eval.run import by_ending, run_eval
from rlhfkit.train.ppo import run_ppo


def test_distinct_n_by_hand():
    # "a b a b" → words a,b,a,b: unigrams 4, distinct 2 → 0.5; bigrams (a,b),(b,a),(a,b): distinct 2 of 3
    assert M.distinct_n(["a b a b"], 1) == 0.5
    assert M.distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    # across texts: "x y" + "x z" → unigrams x,y,x,z: 3 distinct of 4
    assert M.distinct_n(["x y", "x z"], 1) == 0.75
    assert M.distinct_n([""], 2) == 0.0


def test_repetition_by_hand():
    # "go go go go go": trigrams (go,go,go) ×3 → 1 distinct of 3 → repetition 2/3
    assert M.repetition("go go go go go") == pytest.approx(2 / 3)
    assert M.repetition("the cat sat on the mat") == 0.0
    assert M.repetition("hi there") == 0.0  # no trigram at all


def test_win_rate_counts_ties_half():
    # wins: 3>1, ties: 2=2, losses: 0<5 → (1 + 0.5 + 0) / 3
    assert M.win_rate([3, 2, 0], [1, 2, 5]) == pytest.approx(0.5)
    assert M.win_rate([1, 1], [1, 1]) == 0.5
    with pytest.raises(ValueError):
        M.win_rate([1], [1, 2])


def test_bootstrap_interval_contains_the_mean_and_shrinks():
    rng = np.random.default_rng(0)
    small, big = rng.normal(1.0, 1.0, 20), rng.normal(1.0, 1.0, 2000)
    v, lo, hi = M.bootstrap_ci(small)
    assert lo <= v <= hi and v == pytest.approx(small.mean())
    _, lo2, hi2 = M.bootstrap_ci(big)
    assert hi2 - lo2 < hi - lo
    # a constant sample has a zero-width interval at the constant
    assert M.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    w = M.paired_win_rate([1, 2, 3, 4], [0, 0, 0, 0])
    assert w == {"value": 1.0, "lo": 1.0, "hi": 1.0}


def _prompts(tmp_path, eval_split=True):
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": f"q{i}", "prompt": f"why does the cat {i} run?", "split": "eval" if eval_split and i % 2 else "train"}
            for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _zero_adapters(policy_dir):
    """The trained policy with every LoRA B set to 0: the adapters then add exactly nothing, so this policy
    IS the reference (the value head and the A matrices are left as trained)."""
    from safetensors.torch import load_file, save_file

    path = policy_dir / "trainable.safetensors"
    state = load_file(str(path))
    lora_b = [k for k in state if "lora_B" in k]
    assert lora_b  # the policy trained LoRA adapters: there is something to switch off
    save_file({k: (v.zero_() if k in lora_b else v) for k, v in state.items()}, str(path))


def test_gold_win_by_ending_by_hand():
    ref_ended, pol_ended = [1, 1, 0, 0, 0, 1], [1, 1, 1, 1, 0, 0]
    pol_gold, ref_gold = [1, 0, 2, 3, 5, 0], [0, 1, 1, 1, 5, 1]
    out = by_ending(ref_ended, pol_ended, pol_gold, ref_gold, 0, list("abcdef"))
    # both ended: rows 0, 1 (1 > 0 wins, 0 < 1 loses); only the policy's: rows 2, 3 (both win);
    # only the reference's: row 5 (0 < 1); neither: row 4 (5 = 5, a tie counts half)
    assert {k: v["n"] for k, v in out.items()} == {"both_ended": 2, "only_policy_ended": 2,
                                                   "only_reference_ended": 1, "neither_ended": 1}
    assert {k: v["gold_win_rate"]["value"] for k, v in out.items()} == {
        "both_ended": 0.5, "only_policy_ended": 1.0, "only_reference_ended": 0.0, "neither_ended": 0.5}
    # a case without pairs has no rate (nothing to bootstrap), not a 0
    out = by_ending([1, 1], [1, 1], [1, 0], [0, 0], 0, ["a", "b"])
    assert out["both_ended"]["gold_win_rate"]["value"] == 0.75 and out["neither_ended"] == {"n": 0}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bfloat16: what auto picks on AVX512-BF16 CPUs
def test_eval_end_to_end_on_tiny_policy(tiny_llama, tmp_path, dtype):
    prompts = _prompts(tmp_path)
    run = tmp_path / "run"
    # lr 1e-2: one iteration moves the adapters far enough that the policy's KL to the reference is clearly > 0
    run_ppo(load_config(PPOConfig, None, dict(run_dir=str(run), model=str(tiny_llama), reward_model="gold", prompts=str(prompts),
                                              iterations=1, batch_size=4, minibatch_size=2, ppo_epochs=1, max_new_tokens=6,
                                              sample_every=0, device="cpu", lora_layers=0, lr=1e-2, dtype=dtype)))
    eval_cfg = dict(run_dir=str(run), reward_model="gold", prompts=str(prompts), device="cpu", samples_per_prompt=2,
                    report=False, dtype=dtype)
    result = run_eval(load_config(EvalConfig, None, eval_cfg))
    assert result["n_prompts"] == 4 and result["n_completions"] == 8
    assert result["dtype"] == dtype  # the precision asked for is the one the models ran in
    samples = [json.loads(x) for x in (run / "eval" / "samples.jsonl").read_text().splitlines()]
    eval_prompts = [f"why does the cat {i} run?" for i in (1, 3, 5, 7)]
    assert [s["prompt"] for s in samples] == [p for p in eval_prompts for _ in range(2)]
    # The summary is of the samples written, each model's own: a swap of reference and policy would show.
    for m in ("reference", "policy"):
        gold = [s[f"{m}_scores"]["gold"] for s in samples]
        assert result["models"][m]["gold"]["value"] == pytest.approx(np.mean(gold))
    ref_gold = [s["reference_scores"]["gold"] for s in samples]
    pol_gold = [s["policy_scores"]["gold"] for s in samples]
    assert result["win_rate"]["gold"]["value"] == pytest.approx(M.win_rate(pol_gold, ref_gold))
    kls = [s["kl"] for s in samples]
    assert result["kl"]["value"] == pytest.approx(np.mean(kls))
    assert min(kls) >= 0.0 and result["kl"]["value"] > 1e-3  # k3 ≥ 0 per sample; a trained policy is not the reference
    assert json.loads((run / "eval" / "eval.json").read_text())["verdict"]["checks"]
    # where the win comes from: every pair in exactly the case its two replies' endings say
    cases = {"both_ended": (True, True), "only_policy_ended": (False, True), "only_reference_ended": (True, False),
             "neither_ended": (False, False)}
    for case, (r, p) in cases.items():
        assert result["gold_win_by_ending"][case]["n"] == sum(
            (s["ended"]["reference"], s["ended"]["policy"]) == (r, p) for s in samples)

    # The same policy with its adapters switched off is the reference itself. With the same seeds both
    # models must then write the same texts, the KL must be 0 for every sample, every win rate ½, and the
    # reference's numbers must not move: the reference never depends on the policy's weights.
    _zero_adapters(run / "policy")
    same = run_eval(load_config(EvalConfig, None, {**eval_cfg, "force": True}))
    samples = [json.loads(x) for x in (run / "eval" / "samples.jsonl").read_text().splitlines()]
    assert [s["policy"] for s in samples] == [s["reference"] for s in samples]
    # the policy's log-probs come from the sampler's cached decode steps, the reference's from one forward over
    # the sequence: equal up to rounding of the two paths (a wrong reference would be off by whole nats). In
    # float32 3e-12 was measured; with a bfloat16 base up to 1.3e-5 (AVX512-BF16 kernels) and 1.2e-5 (AVX2 ones)
    tol = {"float32": 1e-5, "bfloat16": 1e-4}[dtype]
    assert all(abs(s["kl"]) < tol for s in samples) and abs(same["kl"]["value"]) < tol
    assert same["win_rate"]["gold"]["value"] == 0.5 and same["win_rate"]["reward_model"]["value"] == 0.5
    assert same["models"]["reference"] == result["models"]["reference"]
    assert same["models"]["policy"] == same["models"]["reference"]


def test_eval_errors(tiny_llama, tmp_path):
    with pytest.raises(RlhfkitError, match="policy folder does not exist"):
        run_eval(load_config(EvalConfig, None, dict(run_dir=str(tmp_path / "none"))))
    prompts = _prompts(tmp_path, eval_split=False)
    run = tmp_path / "run"
    run_ppo(load_config(PPOConfig, None, dict(run_dir=str(run), model=str(tiny_llama), reward_model="gold", prompts=str(prompts),
                                              iterations=1, batch_size=2, minibatch_size=2, ppo_epochs=1, max_new_tokens=4,
                                              sample_every=0, device="cpu")))
    with pytest.raises(RlhfkitError, match="no reward model"):
        run_eval(load_config(EvalConfig, None, dict(run_dir=str(run), prompts=str(prompts))))
    with pytest.raises(RlhfkitError, match="no prompts with split 'eval'"):
        run_eval(load_config(EvalConfig, None, dict(run_dir=str(run), prompts=str(prompts), reward_model="gold")))


def test_wilson_interval_by_hand_and_small_samples_said():
    # issue 19.14. 2 of 2: centre (1 + z²/4)/(1 + z²/2) = 1.9604/2.9208 = 0.67119, half z·√(z²/16)/2.9208 = 0.32881
    lo, hi = M.wilson_interval(1.0, 2)
    assert lo == pytest.approx(0.34238, abs=1e-5) and hi == 1.0
    lo, hi = M.wilson_interval(0.5, 100)  # ≈ 0.5 ± 1.96·0.05 for large n: [0.4038, 0.5962]
    assert (lo, hi) == pytest.approx((0.40383, 0.59617), abs=1e-5)
    assert M.proportion_text(1.0, 2, "held-out pairs") == (
        "100.0% of 2 held-out pairs (95% interval 34%–100%; under 50 held-out pairs: a rough figure)")
    assert "rough" not in M.proportion_text(0.5, 100, "pairs")
