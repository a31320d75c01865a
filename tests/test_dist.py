"""PPO over torch.distributed: two real processes over gloo (tests/dist_worker.py, one subprocess per rank with
torchrun's environment) against ONE process given the same global batch — the same completions, rewards,
advantages, loss and LoRA gradients. A hard timeout kills the ranks, so a hang fails the test instead of CI.

Tolerances: the one-process reference left-pads and sums in another order, so float32 rounding differs;
advantages and scores agree within 1e-4 absolute, the loss within 1e-5 relative, every gradient within
1e-4 of that tensor's largest entry. KL at step 0, the checkpoint round trip and reference-vs-base are exact
up to 1e-6.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_worker import HP, PROMPTS

WORKER = Path(__file__).with_name("dist_worker.py")
# The ranks' collectives time out after 60 s (dist_worker: dist.init), so a hang inside a collective ends the ranks
# with an error; this kills them in any case. 300 s is generous: both ranks of one strategy used ~20 s of CPU in all
# (measured, ddp, 2-core EPYC), so on free cores the launch takes about that; on a
# machine shared with heavy jobs raise it with RLHFKIT_DIST_TEST_TIMEOUT.
TIMEOUT_S = float(os.environ.get("RLHFKIT_DIST_TEST_TIMEOUT", "300"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], log: Path, n: int = 2, timeout: float = TIMEOUT_S, script: str = WORKER.name) -> None:
    """Run ``script`` (beside this file; default WORKER) with ``args`` as ``n`` ranks (the environment torchrun gives: RANK, WORLD_SIZE, MASTER_*); fail on a
    non-zero exit or when they are not done within ``timeout`` (every rank is killed)."""
    env = {**os.environ, "WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1"}
    procs = []
    for r in range(n):
        out = open(log.with_suffix(f".{r}.log"), "w")
        procs.append(subprocess.Popen([sys.executable, str(WORKER.with_name(script)), *args], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                      stdout=out, stderr=subprocess.STDOUT))
    try:
        for p in procs:
            p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"ranks still running after {timeout} s (a hang): see {log.parent}")
    for r, p in enumerate(procs):
        if p.returncode:
            tail = log.with_suffix(f".{r}.log").read_text()[-3000:]
            pytest.fail(f"rank {r} exited with {p.returncode}:\n{tail}")


def pad_left(t: torch.Tensor, width: int, value) -> torch.Tensor:
    return torch.cat([t.new_full((t.shape[0], width - t.shape[1]), value), t], dim=1)


def one_process(model_dir: Path, ranks: list[dict]):
    """The reference: one process, no process group, on the concatenation of the ranks' completions."""
    from rlhfkit.config import PPOConfig, load_config
    from rlhfkit.feedback.gold import GoldScorer
    from rlhfkit.generate import Sampled
    from rlhfkit.models.policy import build_policy
    from rlhfkit.train.ppo import experience, ppo_update, seed_everything

    A = {d["response_ids"].shape[1] for d in ranks}
    assert len(A) == 1, f"every row of one rank ended early ({A}): pick another seed for this test"
    P = max(d["prompt_ids"].shape[1] for d in ranks)
    seed_everything(0)
    model, tok = build_policy(str(model_dir), lora_r=HP["lora_r"], lora_alpha=HP["lora_alpha"], device="cpu")
    s = Sampled(torch.cat([pad_left(d["prompt_ids"], P, tok.pad_token_id) for d in ranks]),
                torch.cat([pad_left(d["prompt_mask"], P, 0) for d in ranks]),
                torch.cat([d["response_ids"] for d in ranks]), torch.cat([d["ended"] for d in ranks]),
                torch.cat([d["sampler_logprobs"] for d in ranks]))
    prompts = [p for d in ranks for p in d["prompts"]]
    assert prompts == PROMPTS
    hp = load_config(PPOConfig, None, {**HP, "model": str(model_dir)})
    ro = experience(model, tok, prompts, s, GoldScorer().score, temperature=1.0, beta=0.1, gamma=hp.gamma, lam=hp.lam,
                    missing_eos_penalty=None, iteration=0)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=HP["lr"], eps=1e-5)
    stats = ppo_update(model, optimizer, ro, epochs=1, minibatch_size=len(prompts), clip_eps=hp.clip_eps,
                       vf_clip=hp.vf_clip, vf_coef=hp.vf_coef, ent_coef=hp.ent_coef, temperature=1.0,
                       max_grad_norm=HP["max_grad_norm"], generator=torch.Generator().manual_seed(0), iteration=0)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return ro, stats, grads


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def run(request, tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"dist-{request.param}")
    launch([str(tiny_llama), str(out), request.param], out / "rank")
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return request.param, out, ranks, one_process(tiny_llama, ranks)


def test_two_ranks_match_one_process_on_the_global_batch(run):
    strategy, _, ranks, (ro, stats, grads) = run
    # rewards normalised and advantages whitened over BOTH ranks' rollouts (all-reduce), not each half alone
    assert torch.allclose(torch.cat([d["raw"] for d in ranks]), ro.raw_scores, atol=1e-5)
    assert torch.allclose(torch.cat([d["scores"] for d in ranks]), ro.scores, atol=1e-4)
    assert torch.allclose(torch.cat([d["advantages"] for d in ranks]), ro.advantages, atol=1e-4)
    # the loss of the global minibatch (token mean over both ranks' tokens), logged as the run's
    for d in ranks:
        assert d["stats0"]["loss/total"] == pytest.approx(stats["loss/total"], rel=1e-5, abs=1e-7)
    # LoRA (and value-head) gradients averaged by DDP / FSDP = one process's on the whole minibatch
    assert set(ranks[0]["grads"]) == set(grads)
    assert any("lora_B" in n and g.abs().max() > 0 for n, g in grads.items())
    for d in ranks:
        for n, g in grads.items():
            assert (d["grads"][n] - g).abs().max() <= 1e-4 * g.abs().max() + 1e-8, (strategy, n)


def test_step_zero_has_ratio_one_and_zero_kl_on_every_rank(run):
    for d in run[2]:
        s = d["stats0"]
        # π_old is the sampler's log-probs (float32), the reference a full forward: equal up to rounding
        assert abs(s["objective/kl"]) < 1e-6 and abs(s["objective/kl_k1"]) < 1e-6
        assert s["policy/ratio_max"] == pytest.approx(1.0, abs=1e-6)
        assert s["policy/ratio_mean"] == pytest.approx(1.0, abs=1e-6)


def test_uneven_completion_lengths_do_not_hang(run):
    # rank 0 decoded 2 steps, rank 1 7; both then ran collective forwards and another iteration
    assert [d["uneven"] for d in run[2]] == [2, 7]


def test_reference_is_the_base_with_adapters_off_after_wrapping(run):
    for d in run[2]:
        assert d["ref_vs_base"] < 1e-5
        assert d["policy_vs_base"] > 1e-3  # the adapters moved, and are on outside the reference


def test_checkpoint_round_trip_resumes_exactly(run):
    from safetensors.torch import load_file

    strategy, out, ranks, _ = run
    main = ranks[0]
    assert {"trainable.safetensors", "adapter_model.safetensors", "trainer_state.pt"} <= set(main["ckpt_files"])
    assert ("dcp" in main["ckpt_files"]) == (strategy == "fsdp")  # FSDP: the trainer state as DCP shards
    assert ranks[1]["ckpt_files"] is None  # only rank 0 writes
    assert main["trained_after_vs_restored"] <= 1e-6
    for d in ranks:
        assert d["stats1"]["loss/total"] == d["stats1_restored"]["loss/total"]
    # the peft adapter holds the full (gathered) weights even when the model was sharded
    trained, adapter = load_file(out / "ckpt" / "trainable.safetensors"), load_file(out / "ckpt" / "adapter_model.safetensors")
    lora = {k: v for k, v in trained.items() if "lora_" in k}
    assert len(adapter) == len(lora)
    for k, v in adapter.items():
        match = [t for n, t in lora.items() if n.replace(".default", "").endswith(k.removeprefix("base_model.model."))]
        assert len(match) == 1 and torch.equal(match[0], v), k


def test_a_step_with_fewer_rows_than_processes_is_refused(monkeypatch):
    """The start-up check dpo, sft and train-rm share: every rank needs a row of the smallest step."""
    from rlhfkit.data.errors import RlhfkitError
    from rlhfkit.train import dist

    dist.check_step_fills_ranks(1, "pairs", 9)  # one process: any step will do
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    dist.check_step_fills_ranks(2, "pairs", 10)
    with pytest.raises(RlhfkitError, match=r"a step would have 1 pairs for 2 processes; .* at least 2 \(9 pairs\)"):
        dist.check_step_fills_ranks(1, "pairs", 9)
