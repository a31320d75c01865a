"""Every metric rlhfkit logs or reports, named once with its meaning (STYLE 8: a fixed vocabulary).

``train.metrics.MetricsLog`` refuses a name that is not here, so a new metric gets documented before
it is logged; the report, the terminal table and the README read their labels and meanings from here.
Names follow cleanrl/TRL: ``objective/…`` what PPO optimises, ``policy/…`` and ``value/…`` the update,
``rollout/…`` the samples, ``reward_model/…`` the reward model, ``gold/…`` the independent judge;
``eval/…`` are the per-model statistics of ``rlhfkit eval`` (eval.json), not logged per step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # short, for a table row or a plot title
    meaning: str  # one sentence for a reader
    better: int = 0  # +1 higher is better, −1 lower is better, 0 neither
    percent: bool = False  # shown as a percentage


_ALL = [
    # PPO, per iteration (averages over all minibatches of the iteration)
    Metric("objective/score", "Reward-model score", "mean normalised reward of the rollouts — what PPO maximises "
           "(0 = the reference policy's mean at iteration 0)", +1),
    Metric("objective/reward_model", "Raw reward", "mean raw reward-model logit of the rollouts, before normalisation", +1),
    Metric("objective/kl", "KL to reference (nats)", "Σ_t k3 per completion, a non-negative estimate of KL(policy ‖ "
           "reference) on the policy's own samples", -1),
    Metric("objective/kl_k1", "KL k1 (nats)", "Σ_t (log π − log π_ref) per completion: what the penalty and the "
           "adaptive controller use", -1),
    Metric("objective/reward", "Shaped reward", "score − β·KL: the return PPO actually optimises", +1),
    Metric("objective/beta", "β", "the KL coefficient of this iteration"),
    Metric("loss/total", "Total loss", "L_PPO = L_policy + c1·L_VF − c2·entropy, what the update minimises"),
    Metric("policy/loss", "Policy loss", "clipped surrogate loss (minimised)"),
    Metric("policy/entropy", "Entropy (nats/token)", "how spread out the next-token distribution is"),
    Metric("policy/approx_kl", "Approx. KL (update)", "mean k3 between the updated policy and the rollout policy "
           "within the update: how far one update moved"),
    Metric("policy/clipfrac", "Clip fraction", "share of tokens whose probability ratio hit the 1 ± ε clip"),
    Metric("policy/ratio_mean", "Mean ratio", "mean probability ratio π_θ / π_old over tokens (1 at the first step)"),
    Metric("policy/ratio_max", "Max ratio", "largest probability ratio in a minibatch, averaged (the ratio alarm "
           "watches it)"),
    Metric("policy/grad_norm", "Gradient norm", "norm of the gradient before clipping"),
    Metric("policy/kl_loss", "KL loss term", "GRPO: mean k3 between the policy and the reference over tokens, the "
           "term β·KL adds to the loss (GRPO puts the KL in the loss, not the reward)", -1),
    Metric("rollout/flat_groups", "Flat groups", "RLOO/GRPO: share of prompts whose K completions all scored the same "
           "(no signal: advantage 0)", -1, True),
    Metric("value/loss", "Value loss", "½ (V − return)², clipped: error of the value head's return predictions", -1),
    Metric("value/clipfrac", "Value clip fraction", "share of tokens whose value prediction hit the clip"),
    Metric("value/explained_var", "Explained variance", "1 − Var(return − V) / Var(return): how much of the return the "
           "value head predicts", +1),
    Metric("rollout/length", "Length (tokens)", "mean completion length of the rollouts"),
    Metric("rollout/ended", "Ended", "share of rollouts that emitted EOS before max_new_tokens", +1, True),
    Metric("rollout/sampler_gap", "Sampler gap (nats)", "largest |log-prob the sampler reported − log-prob PPO "
           "computed| over the sampled tokens, where PPO recomputes them (bfloat16, FSDP; on float32 weights it takes "
           "the sampler's): ~1e-2 in bfloat16; large means samples came from another distribution", -1),
    Metric("gold/score", "Gold score", "the independent gold scorer on the rollouts: it should rise with the "
           "reward-model score", +1),
    Metric("time/rollout_s", "Rollout seconds", "wall seconds of phase 1 (generate, score, log-probs, advantages)", -1),
    Metric("time/update_s", "Update seconds", "wall seconds of phase 2 (epochs of clipped updates)", -1),
    Metric("time/samples_per_s", "Samples/s", "rollouts per wall second of the whole iteration", +1),
    # reward-model training, per evaluation
    Metric("reward_model/loss", "Loss", "Bradley–Terry loss −log σ(r_chosen − r_rejected) on held-out pairs", -1),
    Metric("reward_model/accuracy", "Accuracy", "share of held-out pairs whose preferred completion scores higher "
           "(50% = chance)", +1, True),
    Metric("reward_model/margin", "Margin", "mean r(chosen) − r(rejected) on held-out pairs, in raw reward units", +1),
    Metric("reward_model/ece", "Calibration error (ECE)", "expected calibration error of P(chosen ≻ rejected) = "
           "σ(margin); 0 = perfectly calibrated", -1),
    Metric("reward_model/train_loss", "Train loss", "Bradley–Terry loss on the training pairs since the last "
           "evaluation", -1),
    Metric("reward_model/train_accuracy", "Train accuracy", "accuracy on the training pairs since the last "
           "evaluation", +1, True),
    Metric("reward_model/lr", "Learning rate", "the learning rate after warm-up/decay"),
    Metric("reward_model/gold_accuracy", "Gold-scorer accuracy", "how often the gold scorer agrees with the labelers "
           "on the same held-out pairs (what labeler noise allows)", +1, True),
    # direct preference optimisation, per step (TRL's names for the implicit rewards β·(log π − log π_ref))
    Metric("dpo/loss", "DPO loss", "the DPO (or IPO) loss of the step's pairs, weighted by pair weight", -1),
    Metric("rewards/chosen", "Chosen reward", "mean β·(log π − log π_ref) of the preferred replies", +1),
    Metric("rewards/rejected", "Rejected reward", "mean β·(log π − log π_ref) of the other replies", -1),
    Metric("rewards/margins", "Reward margin", "mean implicit-reward margin chosen − rejected", +1),
    Metric("rewards/accuracies", "Pair accuracy", "share of pairs whose chosen reply has the higher implicit reward "
           "(0 at step 0: policy = reference)", +1, True),
    # supervised fine-tuning
    Metric("sft/loss", "SFT loss", "cross-entropy on the reply tokens of a batch", -1),
    Metric("sft/epoch_loss", "SFT epoch loss", "mean cross-entropy on the reply tokens over an epoch", -1),
    # evaluation: per model (reference, policy), with 95% intervals in eval.json
    Metric("eval/reward_model", "Reward-model score", "the trained reward model's score, normalised as in PPO "
           "(the reference's rollouts at iteration 0 have mean 0, std 1)", +1),
    Metric("eval/gold", "Gold score", "the independent gold scorer the simulated labelers follow; the reward model "
           "never saw it", +1),
    Metric("eval/toxicity", "Toxicity", "mean P(offensive) from alt-profanity-check (0 = clean, 1 = offensive)", -1),
    Metric("eval/toxic_share", "Toxic share", "share of completions with P(offensive) above 0.5", -1, True),
    Metric("eval/length", "Length", "mean completion length in tokens"),
    Metric("eval/ended", "Ended", "share of completions that stopped by themselves rather than at the length limit",
           +1, True),
    Metric("eval/distinct_1", "Distinct-1", "distinct words ÷ all words over all completions (diversity)", +1),
    Metric("eval/distinct_2", "Distinct-2", "distinct word pairs ÷ all word pairs (diversity)", +1),
    Metric("eval/repetition", "Repetition", "share of a completion's word 3-grams that repeat an earlier one "
           "(degenerate text is high)", -1, True),
]

METRICS: dict[str, Metric] = {m.name: m for m in _ALL}

NOT_METRICS = frozenset({"iteration"})
"""Keys of a stats dict that are bookkeeping, not metrics: never logged as a series."""

EVAL_KEYS = [m.name.split("/", 1)[1] for m in _ALL if m.name.startswith("eval/")]
"""The per-model statistics of eval.json, in report order."""

ENDINGS = {
    "both_ended": (True, True, "both replies ended"),
    "only_policy_ended": (False, True, "only the policy's reply ended"),
    "only_reference_ended": (True, False, "only the reference's reply ended"),
    "neither_ended": (False, False, "neither reply ended"),
}
"""eval.json's ``gold_win_by_ending`` cases: (the reference's reply ended, the policy's ended, label). Ended: an
EOS within max_new_tokens."""
ENDING_MEANING = ("pairs grouped by whether each reply ended (EOS) within max_new_tokens; a policy that only learned "
                  "to finish its replies wins where only its reply ended, not where both did")


def metric(name: str) -> Metric:
    """The metric called ``name``; KeyError naming the table if it is not documented here."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"metric {name!r} is not in rlhfkit.metric_names.METRICS: document it there first") from None
