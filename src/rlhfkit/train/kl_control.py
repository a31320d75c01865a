"""KL coefficient controllers: the β of the per-token KL penalty, fixed or adapted towards a target.

Stateful (β changes between iterations and is checkpointed), so they live here rather than among the
pure functions of ``losses.py``.

References: [Zieg] Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences";
[lmhp] OpenAI lm-human-preferences, lm_human_preferences/train_policy.py.
"""

from __future__ import annotations

import math


class AdaptiveKLController:
    """Adaptive β that steers the KL towards a target ([Zieg] "log-space proportional controller"; [lmhp]).

    e = clip(KL / target − 1, −0.2, 0.2);  β ← β · (1 + e · n_steps / horizon).
    current_kl is the per-sequence KL (mean over the batch of Σ_t k1), as [lmhp] feeds objective/kl;
    n_steps is the number of episodes (rollouts) in the batch; horizon is in episodes.
    """

    def __init__(self, init_beta: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got {target}, {horizon}")
        self.value = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        value = float(state["value"])
        if not math.isfinite(value):
            raise ValueError(f"KL controller state holds a non-finite beta: {value}")
        self.value = value


class FixedKLController:
    """Constant β with the AdaptiveKLController interface ([lmhp] FixedKLController)."""

    def __init__(self, beta: float):
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
