"""train-rm, dpo and sft over torch.distributed: two real processes over gloo (tests/dist_stages_worker.py, one launch
per strategy serves every check) against ONE process given the same global batch.

Tolerances: the ranks pad their shares to other lengths and sum in another order, so float32 rounding differs:
losses within 1e-5 relative, every gradient within 1e-4 of that tensor's largest entry, reference log-probs within
1e-4 absolute; end-to-end runs (several Adam steps, where rounding compounds) within 1e-3. Resume at the same world
size is exact (bit-identical weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dist_stages_worker import configs, dpo_part, rm_part, sft_part
from run_checks import PAIRS, assert_same_training
from test_dist import launch


def write_inputs(out):
    (out / "pairs.jsonl").write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n"
                                             for p, c, r in PAIRS))
    (out / "revisions.jsonl").write_text("".join(json.dumps({"prompt": p, "final": c}) + "\n"
                                                 for p, c, _ in PAIRS + PAIRS[:2]))  # 8 examples: 2 batches of 4


@pytest.fixture(scope="module")
def one(tiny_llama, tmp_path_factory):
    """The one-process reference: the same step functions on the whole global batch, and the same runs."""
    from rlhfkit.train.dpo import run_dpo
    from rlhfkit.train.reward_stage import run_train_rm
    from rlhfkit.train.sft import run_sft

    out = tmp_path_factory.mktemp("one")
    write_inputs(out)
    m = str(tiny_llama)
    cfg = configs(m, out, "ddp")
    return {"dpo": dpo_part(m, None), "sft": sft_part(m, None), "rm": rm_part(m, None),
            "sft_run": run_sft(cfg["sft"], progress=False), "rm_run": run_train_rm(cfg["rm"], progress=False),
            "dpo_run": run_dpo(cfg["dpo"]("dpo", epochs=2))}


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def two(request, tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"stages-{request.param}")
    write_inputs(out)
    launch([str(tiny_llama), str(out), request.param], out / "rank", script="dist_stages_worker.py")
    return request.param, out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def close_grads(mine: dict, ref: dict, what: str) -> None:
    assert set(mine) == set(ref) and ref, what
    assert any(g.abs().max() > 0 for g in ref.values()), what
    for n, g in ref.items():
        assert (mine[n] - g).abs().max() <= 1e-4 * g.abs().max() + 1e-8, (what, n)


def test_dpo_step_equals_one_process_on_the_global_batch(one, two):
    strategy, _, ranks = two
    # the reference log-probs: each rank computed ⌈5/2⌉ pairs (rank 1 padded), every rank holds all 5
    for d in ranks:
        assert d["dpo"]["ref"].shape == (5, 2)
        assert torch.allclose(d["dpo"]["ref"], one["dpo"]["ref"], atol=1e-4), strategy
    for d in ranks:  # loss and metrics of the weighted global batch (shares of 1 and 2 pairs), on every rank
        for k, v in one["dpo"]["stats"].items():
            if k != "policy/grad_norm":
                assert d["dpo"]["stats"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), (strategy, k)
        close_grads(d["dpo"]["grads"], one["dpo"]["grads"], f"dpo {strategy}")


def test_sft_step_equals_one_process_on_the_global_batch(one, two):
    strategy, _, ranks = two
    for d in ranks:
        assert d["sft"]["tokens"] == one["sft"]["tokens"]
        assert d["sft"]["loss"] == pytest.approx(one["sft"]["loss"], rel=1e-5)
        close_grads(d["sft"]["grads"], one["sft"]["grads"], f"sft {strategy}")


def test_reward_step_equals_one_process_on_the_global_batch(one, two):
    strategy, _, ranks = two
    for d in ranks:
        assert d["rm"]["loss"] == pytest.approx(one["rm"]["loss"], rel=1e-5)
        assert d["rm"]["correct"] == one["rm"]["correct"]
        close_grads(d["rm"]["grads"], one["rm"]["grads"], f"train-rm {strategy}")


def test_runs_match_one_process_and_only_rank0_writes(one, two):
    from rlhfkit.models.reward import RewardModel
    from rlhfkit.train.metrics import read_metrics

    strategy, out, ranks = two
    for d in ranks:
        assert d["sft_run"]["loss_after"] == pytest.approx(one["sft_run"]["loss_after"], rel=1e-3)
        assert d["rm_run"]["heldout"]["loss"] == pytest.approx(one["rm_run"]["heldout"]["loss"], rel=1e-3)
    # one metrics row per step, from rank 0 alone (rank 1 appending would double them)
    assert len(read_metrics(out / "sft" / "logs" / "metrics.csv", "sft")["sft/loss"]) == 2
    dpo = read_metrics(out / "dpo_straight" / "logs" / "metrics.csv", "dpo")["dpo/loss"]
    dpo_one = read_metrics(Path(one["dpo_run"]["path"]).parent / "logs" / "metrics.csv", "dpo")["dpo/loss"]
    assert [v for _, v in dpo] == pytest.approx([v for _, v in dpo_one], rel=1e-3)
    # the written models are whole (FSDP gathers to rank 0) and load in one process
    rm = RewardModel.load(out / "rm" / "reward_model", device="cpu")
    assert rm.score(["hi"], ["hello"], normalize=False)[0] == pytest.approx(
        RewardModel.load(one["rm_run"]["path"], device="cpu").score(["hi"], ["hello"], normalize=False)[0], abs=1e-3)
    assert (out / "sft" / "sft" / "merged" / "config.json").exists()


def test_dpo_resume_is_exact_at_the_same_world_size(two):
    _, out, _ = two
    ma, mb = assert_same_training(out / "dpo_straight", out / "dpo_resumed", "dpo")
    assert ma["dpo/loss"] == mb["dpo/loss"] and len(ma["dpo/loss"]) == 6


def test_ppo_resume_is_exact_and_fsdp_checkpoints_are_sharded(two, tiny_llama, tmp_path):
    import shutil

    from rlhfkit.data.errors import RlhfkitError
    from rlhfkit.train.ppo import run_ppo

    strategy, out, _ = two
    ma, mb = assert_same_training(out / "ppo_straight", out / "ppo_resumed", "ppo")
    assert ma["loss/total"] == mb["loss/total"] and len(ma["loss/total"]) == 2
    policy = out / "ppo_resumed" / "policy"
    state = torch.load(policy / "trainer_state.pt", weights_only=False)
    assert state["world_size"] == 2
    if strategy == "ddp":  # today's format: the full optimizer state in trainer_state.pt, no shards
        assert state["optimizer"]["state"] and not (policy / "dcp").exists()
        return
    # FSDP: each rank wrote its own shard file (torch.distributed.checkpoint), none of it in trainer_state.pt
    assert state["optimizer"] is None
    assert {p.name for p in (policy / "dcp").iterdir()} == {"__0_0.distcp", "__1_0.distcp", ".metadata"}
    assert not [p for p in policy.parent.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    # one process cannot resume a checkpoint sharded over two: refused, naming both sizes
    shutil.copytree(out / "ppo_resumed", tmp_path / "run")
    with pytest.raises(RlhfkitError, match="over 2 processes.*this run has 1"):
        run_ppo(configs(str(tiny_llama), tmp_path, "fsdp")["ppo"]("run", iterations=3, resume=True))
