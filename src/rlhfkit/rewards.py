"""What a run is rewarded with: a trained reward model folder, or the gold scorer itself (for experiments).

Shared by the stages that score rollouts (ppo) and evaluations (eval); the raw score, since each
normalises on its own terms (PPO on the reference's rollouts: models.reward.RewardNorm).
"""

from __future__ import annotations

import os
from pathlib import Path

from rlhfkit.data.errors import RlhfkitError
from rlhfkit.models.reward import RewardModel, Scorer


def load_scorer(spec: str, run_dir: str | os.PathLike, device: str, dtype: str = "auto") -> tuple[Scorer, str, str | None]:
    """(scorer, its name, the precision it computes in) for the raw reward: a trained reward model folder's logit
    (``dtype`` as the stage's: float32, bfloat16 autocast, or auto), or 'gold' (the gold scorer itself: None).

    Raw: PPO normalises on the reference's rollouts (RewardNorm), not with the model's stored statistics.
    """
    if spec == "gold":
        from rlhfkit.feedback.gold import GoldScorer  # the judge itself as the reward: no proxy to hack

        return GoldScorer().score, "gold", None
    path = Path(spec) if spec else Path(run_dir) / "reward_model"
    if not path.exists():
        raise RlhfkitError(f"{path}: no reward model (run `rlhfkit train-rm` first, or pass --reward-model)")
    rm = RewardModel.load(path, device=device, dtype=dtype)
    return (lambda prompts, texts: rm.score(prompts, texts, normalize=False)), str(path), rm.compute_dtype
