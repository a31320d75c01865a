"""rlhfkit.train.losses against values worked out by hand, and invariants."""

import math

import pytest
import torch

from rlhfkit.train import losses as L


def close(actual, expected, tol=1e-5):
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    return torch.allclose(actual, expected, atol=tol, rtol=0)


# --------------------------------------------------------------------------------------------- Bradley–Terry


def test_bt_loss_hand_value():
    # −log σ(2 − 0) = log(1 + e^−2) = 0.126928
    loss = L.bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0]))
    assert close(loss, 0.126928)


def test_bt_loss_mean_over_pairs():
    # diffs 2 and 0: (0.126928 + log 2) / 2 = (0.126928 + 0.693147) / 2 = 0.410038
    loss = L.bradley_terry_loss(torch.tensor([2.0, 1.0]), torch.tensor([0.0, 1.0]))
    assert close(loss, 0.410038)


def test_bt_loss_weighted():
    # weights (1, 3): (1·0.126928 + 3·0.693147) / 4 = 2.206370 / 4 = 0.551593
    loss = L.bradley_terry_loss(
        torch.tensor([2.0, 1.0]), torch.tensor([0.0, 1.0]), weight=torch.tensor([1.0, 3.0])
    )
    assert close(loss, 0.551593)


def test_bt_loss_margin():
    # diff 2, margin 1: log(1 + e^−1) = 0.313262 (scalar and per-pair margins agree)
    r_c, r_r = torch.tensor([2.0]), torch.tensor([0.0])
    assert close(L.bradley_terry_loss(r_c, r_r, margin=1.0), 0.313262)
    assert close(L.bradley_terry_loss(r_c, r_r, margin=torch.tensor([1.0])), 0.313262)


def test_bt_loss_stable_for_large_negative_margin():
    # −log σ(−200) = 200 + log(1 + e^−200) ≈ 200; naive log(sigmoid) would give inf.
    loss = L.bradley_terry_loss(torch.tensor([0.0]), torch.tensor([200.0]))
    assert torch.isfinite(loss) and close(loss, 200.0)


def test_preference_probability():
    # σ(2) = 1 / (1 + e^−2) = 0.880797; P(a≻b) + P(b≻a) = 1
    a, b = torch.tensor([2.0]), torch.tensor([0.0])
    assert close(L.preference_probability(a, b), 0.880797)
    assert close(L.preference_probability(a, b) + L.preference_probability(b, a), 1.0)


# --------------------------------------------------------------------------------------------- masked reductions


def test_masked_mean_sum_var_ignore_padding_even_if_garbage():
    x = torch.tensor([[1.0, 2.0, 3.0, float("inf")], [4.0, float("nan"), 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert close(L.masked_sum(x, mask), 10.0)
    assert close(L.masked_mean(x, mask), 2.5)  # (1+2+3+4)/4
    assert close(L.masked_mean(x, mask, dim=-1), [2.0, 4.0])
    # values 1,2,3,4: mean 2.5, Σ(x−m)² = 2.25+0.25+0.25+2.25 = 5 → biased 1.25, unbiased 5/3
    assert close(L.masked_var(x, mask, unbiased=False), 1.25)
    assert close(L.masked_var(x, mask), 5 / 3)


def test_masked_var_refuses_too_few_entries():
    with pytest.raises(ValueError):
        L.masked_var(torch.tensor([[1.0, 2.0]]), torch.tensor([[1, 0]]))


def test_masked_whiten_hand_case():
    # valid (1, 2, 3): mean 2, unbiased var 1 → (−1, 0, 1); padding stays 0
    x = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert close(L.masked_whiten(x, mask), [[-1.0, 0.0, 1.0, 0.0]])
    # shift_mean=False only rescales: (−1, 0, 1) + 2
    assert close(L.masked_whiten(x, mask, shift_mean=False), [[1.0, 2.0, 3.0, 0.0]])


def test_masked_whiten_mean0_std1_on_valid_entries():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=g) * 5 + 3
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[1, 4:] = False
    mask[3, 2:] = False
    x[~mask] = 1e6  # padding garbage must not move the moments
    w = L.masked_whiten(x, mask)
    valid = w[mask]
    assert close(valid.mean(), 0.0)
    assert close(valid.std(unbiased=True), 1.0, tol=1e-4)
    assert torch.all(w[~mask] == 0)


# --------------------------------------------------------------------------------------------- KL estimators


def test_kl_estimators_zero_when_policy_equals_reference():
    logp = torch.log(torch.tensor([[0.1, 0.5, 0.9]]))
    for estimator in (L.kl_k1, L.kl_k2, L.kl_k3):
        assert torch.all(estimator(logp, logp) == 0)


def test_kl_estimators_hand_values():
    # π = 0.5, π_ref = 0.25: log r = log(0.25/0.5) = −log 2
    # k1 = log 2 = 0.693147; k2 = ½ (log 2)² = 0.240227; k3 = r − 1 − log r = 0.5 − 1 + 0.693147 = 0.193147
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    assert close(L.kl_k1(logp, ref), 0.693147)
    assert close(L.kl_k2(logp, ref), 0.240227)
    assert close(L.kl_k3(logp, ref), 0.193147)


def test_k3_non_negative_and_unbiased():
    g = torch.Generator().manual_seed(1)
    assert torch.all(L.kl_k3(torch.randn(1000, generator=g) * 3, torch.randn(1000, generator=g) * 3) >= 0)
    # Monte Carlo: tokens sampled from π, mean of k1 and k3 → KL(π‖π_ref) computed exactly.
    p = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())  # 0.6 log 3 + 0.1 log 0.2 = 0.498232
    assert close(exact, 0.498232)
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=g)
    logp, ref = p.log()[tokens], q.log()[tokens]
    assert close(L.kl_k1(logp, ref).mean(), exact, tol=0.01)
    assert close(L.kl_k3(logp, ref).mean(), exact, tol=0.01)


# --------------------------------------------------------------------------------------------- KL-shaped reward


def _two_rows():
    # row 0: 4 generated tokens; row 1: 2 generated tokens then 2 padding positions (garbage log-probs)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    logp = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, -0.5, 9.0, 9.0]])
    ref_logp = torch.zeros(2, 4)
    return mask, logp, ref_logp


def test_last_valid_index():
    mask, _, _ = _two_rows()
    assert L.last_valid_index(mask).tolist() == [3, 1]


def test_score_at_last_generated_token_not_padding():
    mask, logp, ref = _two_rows()
    score = torch.tensor([1.0, 2.0])
    rewards, kl = L.kl_penalized_rewards(score, logp, ref, mask, beta=0.5, last_index=torch.tensor([3, 1]))
    # row 0: −0.5·(0.1, 0.2, 0.3, 0.4) + (0, 0, 0, 1) = (−0.05, −0.1, −0.15, 0.8)
    # row 1: −0.5·(0.5, −0.5) then padding 0; score 2 at index 1 → (−0.25, 2.25, 0, 0)
    assert close(rewards, [[-0.05, -0.1, -0.15, 0.8], [-0.25, 2.25, 0.0, 0.0]])
    assert close(kl, [[0.1, 0.2, 0.3, 0.4], [0.5, -0.5, 0.0, 0.0]])
    # invariant: each row's rewards sum to score − β·Σ_t k1
    assert close(rewards.sum(-1), score - 0.5 * kl.sum(-1))


@pytest.mark.parametrize("bad", [[3, 3], [3, 2], [3, 0], [4, 1]])
def test_score_index_off_by_one_is_refused(bad):
    # [3, 3] and [3, 2]: padding; [3, 0]: mid-response; [4, 1]: one past the end of row 0
    mask, logp, ref = _two_rows()
    with pytest.raises(ValueError):
        L.kl_penalized_rewards(torch.ones(2), logp, ref, mask, beta=0.1, last_index=torch.tensor(bad))


def test_empty_response_is_refused():
    # an empty row's last index is −1, which would wrap around onto padding
    mask = torch.tensor([[1, 1], [0, 0]])
    with pytest.raises(ValueError):
        L.kl_penalized_rewards(torch.ones(2), torch.zeros(2, 2), torch.zeros(2, 2), mask, 0.1, L.last_valid_index(mask))


# --------------------------------------------------------------------------------------------- GAE


def test_gae_gamma_lambda_one_equals_reward_to_go():
    g = torch.Generator().manual_seed(2)
    rewards, values = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    advantages, returns = L.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    for b in range(3):
        n = int(mask[b].sum())
        for t in range(5):
            if t < n:
                reward_to_go = float(rewards[b, t:n].sum())
                assert close(returns[b, t], reward_to_go)
                assert close(advantages[b, t], reward_to_go - float(values[b, t]))
            else:
                assert returns[b, t] == 0 and advantages[b, t] == 0


def test_gae_hand_case_gamma_lambda_half():
    # r = (1, 0, 2), V = (0.5, 1, 0.25), γ = λ = 0.5, γλ = 0.25
    # δ2 = 2 + 0 − 0.25 = 1.75                 Â2 = 1.75
    # δ1 = 0 + 0.5·0.25 − 1 = −0.875           Â1 = −0.875 + 0.25·1.75 = −0.4375
    # δ0 = 1 + 0.5·1 − 0.5 = 1.0               Â0 = 1.0 + 0.25·(−0.4375) = 0.890625
    # returns = Â + V = (1.390625, 0.5625, 2.0)
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 0.25]])
    advantages, returns = L.gae(rewards, values, torch.ones(1, 3), gamma=0.5, lam=0.5)
    assert close(advantages, [[0.890625, -0.4375, 1.75]])
    assert close(returns, [[1.390625, 0.5625, 2.0]])


def test_gae_bootstraps_zero_after_last_valid_token():
    # Same episode followed by padding whose value predictions are garbage: nothing changes.
    rewards = torch.tensor([[1.0, 0.0, 2.0, 7.0, 7.0]])
    values = torch.tensor([[0.5, 1.0, 0.25, 100.0, float("nan")]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    advantages, returns = L.gae(rewards, values, mask, gamma=0.5, lam=0.5)
    assert close(advantages, [[0.890625, -0.4375, 1.75, 0.0, 0.0]])
    assert close(returns, [[1.390625, 0.5625, 2.0, 0.0, 0.0]])


def test_gae_refuses_mask_with_holes():
    with pytest.raises(ValueError):
        L.gae(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([[1, 0, 1]]), gamma=1.0, lam=0.95)


# --------------------------------------------------------------------------------------------- PPO losses


def test_clipped_policy_loss_hand_cases():
    # token 0: ρ = 1.5, Â = +1 → min(1.5, 1.2) = 1.2 (clipped active)
    # token 1: ρ = 0.5, Â = −1 → min(−0.5, −0.8) = −0.8 (clipped active)
    # token 2: ρ = 1.5, Â = −1 → min(−1.5, −1.2) = −1.5 (unclipped active)
    # token 3: padding with a garbage log-prob that would overflow exp()
    # loss = −mean(1.2, −0.8, −1.5) = 1.1 / 3 = 0.366667; clipfrac = 2/3
    # ratio mean = (1.5 + 0.5 + 1.5) / 3 = 1.166667, max 1.5
    # approx_kl = mean(ρ − 1 − log ρ): 1.5 → 0.094535, 0.5 → 0.193147 → (2·0.094535 + 0.193147)/3 = 0.127406
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.5, 1.0]]))
    logp[0, 3] = 1000.0
    logp.requires_grad_(True)
    old_logp = torch.zeros(1, 4)
    advantages = torch.tensor([[1.0, -1.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = L.clipped_policy_loss(logp, old_logp, advantages, mask, clip_eps=0.2)
    assert close(loss, 0.366667)
    assert close(stats["clipfrac"], 2 / 3)
    assert close(stats["ratio_mean"], 1.166667)
    assert close(stats["ratio_max"], 1.5)
    assert close(stats["approx_kl"], 0.127406)
    loss.backward()
    # Clipped tokens get no gradient; token 2: d/dlogp (−Â·ρ)/3 = ρ/3 = 0.5; padding: 0, not NaN.
    assert close(logp.grad, [[0.0, 0.0, 0.5, 0.0]])


def test_clipped_policy_loss_clip_higher_hand_case():
    # DAPO's clip-higher, ε = 0.2 below and ε_high = 0.6 above, on test_clipped_policy_loss_hand_cases' tokens:
    # token 0: ρ = 1.5 < 1.6, Â = +1 → min(1.5, 1.5) = 1.5, now unclipped: it gets the gradient −Â·ρ/3 = −0.5
    # token 1: ρ = 0.5, Â = −1 → the lower clip is unchanged: min(−0.5, −0.8) = −0.8 (clipped)
    # token 2: ρ = 1.5, Â = −1 → min(−1.5, −1.5) = −1.5, gradient +0.5 as before
    # loss = −mean(1.5, −0.8, −1.5) = 0.8 / 3 = 0.266667; clipfrac 1/3 (the clipped term strictly larger: token 1)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.5]])).requires_grad_(True)
    loss, stats = L.clipped_policy_loss(logp, torch.zeros(1, 3), torch.tensor([[1.0, -1.0, -1.0]]), torch.ones(1, 3),
                                        clip_eps=0.2, clip_eps_high=0.6)
    assert close(loss, 0.266667) and close(stats["clipfrac"], 1 / 3)
    loss.backward()
    assert close(logp.grad, [[-0.5, 0.0, 0.5]])
    # ε_high = ε is the symmetric clip, bit for bit
    a = L.clipped_policy_loss(logp, torch.zeros(1, 3), torch.tensor([[1.0, -1.0, -1.0]]), torch.ones(1, 3), 0.2)[0]
    b = L.clipped_policy_loss(logp, torch.zeros(1, 3), torch.tensor([[1.0, -1.0, -1.0]]), torch.ones(1, 3), 0.2,
                              clip_eps_high=0.2)[0]
    assert torch.equal(a, b) and close(a, -(1.2 - 0.8 - 1.5) / 3)


def test_clipped_policy_loss_at_old_policy():
    logp = torch.log(torch.tensor([[0.2, 0.7, 0.4]]))
    advantages = torch.tensor([[1.0, -2.0, 4.0]])
    loss, stats = L.clipped_policy_loss(logp, logp.clone(), advantages, torch.ones(1, 3), clip_eps=0.2)
    assert close(loss, -1.0)  # −mean(Â) = −(1 − 2 + 4)/3
    assert stats["clipfrac"] == 0 and stats["approx_kl"] == 0
    assert stats["ratio_mean"] == 1 and stats["ratio_max"] == 1


def test_clipped_value_loss_hand_case():
    # token 0: V = 1.5, V_old = 1, R = 2: clip(V) = 1.2 → max((−0.5)², (−0.8)²) = 0.64 (clipped larger)
    # token 1: V = 0.5, V_old = 1, R = 2: clip(V) = 0.8 → max((−1.5)², (−1.2)²) = 2.25 (unclipped larger)
    # token 2: padding
    # loss = ½ · (0.64 + 2.25) / 2 = 0.7225; clipfrac = 1/2
    values = torch.tensor([[1.5, 0.5, 99.0]])
    old_values = torch.tensor([[1.0, 1.0, 0.0]])
    returns = torch.tensor([[2.0, 2.0, 0.0]])
    loss, clipfrac = L.clipped_value_loss(values, old_values, returns, torch.tensor([[1, 1, 0]]), clip_range=0.2)
    assert close(loss, 0.7225)
    assert close(clipfrac, 0.5)


def test_entropy_from_logits():
    # uniform over V → log V, also for huge logits; −inf (banned) tokens contribute 0
    assert close(L.entropy_from_logits(torch.zeros(2, 3, 7)), torch.full((2, 3), math.log(7)))
    assert close(L.entropy_from_logits(torch.full((1, 1, 5), 1e4)), [[math.log(5)]])
    inf = float("inf")
    assert close(L.entropy_from_logits(torch.tensor([[[0.0, 0.0, -inf]]])), [[math.log(2)]])
    assert close(L.entropy_from_logits(torch.tensor([[[0.0, -inf, -inf]]])), [[0.0]])
    # p = (1/4, 3/4): H = −(¼ log ¼ + ¾ log ¾) = 0.562335; temperature divides the logits first
    logits = torch.tensor([[[0.0, math.log(3)]]])
    assert close(L.entropy_from_logits(logits), [[0.562335]])
    assert close(L.entropy_from_logits(2 * logits, temperature=2.0), [[0.562335]])
    # the gradient (an entropy bonus): p = (1/3, 2/3, 0), H = 0.636514, dH/dz_i = −p_i (ln p_i + H) = (0.154033,
    # −0.154033, 0) — finite beside a banned token
    z = torch.tensor([[[0.0, math.log(2), -inf]]], requires_grad=True)
    h = L.entropy_from_logits(z)
    h.sum().backward()
    assert close(h, [[0.636514]])
    assert close(z.grad, [[[0.154033, -0.154033, 0.0]]])


def test_logprobs_from_logits():
    # logits (0, log 3): p = (1/4, 3/4)
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, math.log(3)]]])
    tokens = torch.tensor([[1, 0]])
    assert close(L.logprobs_from_logits(logits, tokens), [[math.log(0.75), math.log(0.25)]])
    # temperature 2: logits (0, ½ log 3) → p(1) = √3 / (1 + √3)
    s3 = math.sqrt(3)
    lp = L.logprobs_from_logits(logits, tokens, temperature=2.0)
    assert close(lp, [[math.log(s3 / (1 + s3)), math.log(1 / (1 + s3))]])


def test_logprobs_match_categorical_on_random_logits():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 11, generator=g) * 4
    tokens = torch.randint(0, 11, (2, 4), generator=g)
    expected = torch.distributions.Categorical(logits=logits / 0.7).log_prob(tokens)
    assert close(L.logprobs_from_logits(logits, tokens, temperature=0.7), expected)


def test_ppo_total_loss():
    # 0.5 + 0.1·2.0 − 0.01·1.5 = 0.685
    total = L.ppo_total_loss(torch.tensor(0.5), torch.tensor(2.0), torch.tensor(1.5), vf_coef=0.1, ent_coef=0.01)
    assert close(total, 0.685)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    assert close(L.explained_variance(returns.clone(), returns, mask), 1.0)
    assert close(L.explained_variance(torch.full((1, 4), 2.0), returns, mask), 0.0)  # constant predictor
    # R − V = (0, 0, 1): biased var 2/9; Var(R) = 2/3 → 1 − 1/3 = 0.666667
    assert close(L.explained_variance(torch.tensor([[1.0, 2.0, 2.0, 0.0]]), returns, mask), 0.666667)


# --------------------------------------------------------------------------------------------- gradient accumulation


def _grad(fn, param):
    param.grad = None
    fn().backward()
    return param.grad.clone()


def test_policy_and_value_loss_exact_under_gradient_accumulation():
    g = torch.Generator().manual_seed(4)
    B, A = 4, 5
    param = torch.randn(B, A, generator=g).requires_grad_(True)  # stands in for log-probs / values
    old = torch.randn(B, A, generator=g) * 0.1
    adv = torch.randn(B, A, generator=g)
    returns = torch.randn(B, A, generator=g)
    lengths = torch.tensor([5, 1, 3, 2])  # unequal token counts make naive averaging wrong
    mask = torch.arange(A)[None, :] < lengths[:, None]
    n_total = int(mask.sum())  # 11
    micro = [slice(0, 1), slice(1, 4)]  # 5 tokens and 6 tokens

    def policy(rows, normalizer=None):
        return L.clipped_policy_loss(param[rows], old[rows], adv[rows], mask[rows], 0.2, normalizer)[0]

    def value(rows, normalizer=None):
        return L.clipped_value_loss(param[rows], old[rows], returns[rows], mask[rows], 0.2, normalizer)[0]

    for loss_fn in (policy, value):
        full = _grad(lambda: loss_fn(slice(None)), param)
        # accumulate: each microbatch divides by the global token count
        param.grad = None
        for rows in micro:
            loss_fn(rows, normalizer=n_total).backward()
        assert torch.allclose(param.grad, full, atol=1e-6)
        # equivalently: microbatch means scaled by (microbatch tokens / total tokens)
        scaled = sum(_grad(lambda: loss_fn(r), param) * (int(mask[r].sum()) / n_total) for r in micro)
        assert torch.allclose(scaled, full, atol=1e-6)
        # and the naive average of microbatch means is NOT the full-batch gradient
        naive = sum(_grad(lambda: loss_fn(r), param) for r in micro) / len(micro)
        assert not torch.allclose(naive, full, atol=1e-3)


def test_bt_loss_exact_under_gradient_accumulation():
    g = torch.Generator().manual_seed(5)
    r = torch.randn(2, 6, generator=g).requires_grad_(True)  # (chosen, rejected) × 6 pairs
    w = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.25, 3.0])
    full = _grad(lambda: L.bradley_terry_loss(r[0], r[1], weight=w), r)
    r.grad = None
    for rows in (slice(0, 2), slice(2, 6)):
        L.bradley_terry_loss(r[0, rows], r[1, rows], weight=w[rows], normalizer=w.sum()).backward()
    assert torch.allclose(r.grad, full, atol=1e-6)


# --------------------------------------------------------------------------------------------- distillation
# V = 2, teacher logits (0, 0) → p_t = (½, ½); student logits (ln 3, 0).
#   T = 1: p_s = (¾, ¼); KL(p_t ‖ p_s) = ½ ln(½/¾) + ½ ln(½/¼) = ½ ln(4/3) = 0.143841.
#   T = 2: z/T = (ln √3, 0) → p_s = (√3/(1+√3), 1/(1+√3)) = (0.633975, 0.366025);
#          KL = ½ ln((1+√3)/(2√3)) + ½ ln((1+√3)/2) = ½ ln((2+√3)/(2√3)) = 0.037252; T²·KL = 0.149009.
#   CE at T = 1: −ln ¾ = 0.287682 (token 0), −ln ¼ = 1.386294 (token 1).
#   ∂(T²·KL)/∂z_s = T·(p_s − p_t) = 2·(0.633975 − ½, 0.366025 − ½) = (2 − √3, √3 − 2) = (0.267949, −0.267949).
STUDENT = torch.tensor([[[math.log(3.0), 0.0]]])  # (B=1, A=1, V=2)
TEACHER = torch.tensor([[[0.0, 0.0]]])
ONE = torch.ones(1, 1, dtype=torch.bool)


def test_distillation_loss_hand_values():
    loss, stats = L.distillation_loss(STUDENT, TEACHER, torch.tensor([[0]]), ONE, temperature=1.0, alpha=0.0)
    assert close(loss, 0.143841) and close(stats["kl"], 0.143841) and close(stats["ce"], 0.287682)
    loss, stats = L.distillation_loss(STUDENT, TEACHER, torch.tensor([[0]]), ONE, temperature=2.0, alpha=0.0)
    assert close(stats["kl"], 0.037252) and close(loss, 0.149009)  # T² = 4 times the soft KL
    # α = ½ adds half the hard-label CE, always at T = 1: 0.149009 + ½·0.287682 = 0.292850
    loss, _ = L.distillation_loss(STUDENT, TEACHER, torch.tensor([[0]]), ONE, temperature=2.0, alpha=0.5)
    assert close(loss, 0.292850)
    loss, _ = L.distillation_loss(STUDENT, TEACHER, torch.tensor([[1]]), ONE, temperature=2.0, alpha=0.5)
    assert close(loss, 0.149009 + 0.5 * 1.386294)


def test_distillation_gradient_hand_value_and_teacher_gets_none():
    student = STUDENT.clone().requires_grad_(True)
    teacher = TEACHER.clone().requires_grad_(True)
    loss, _ = L.distillation_loss(student, teacher, torch.tensor([[0]]), ONE, temperature=2.0, alpha=0.0)
    loss.backward()
    assert close(student.grad[0, 0], [2 - math.sqrt(3), math.sqrt(3) - 2])
    assert teacher.grad is None  # the teacher is a fixed target
    # the hard term alone: ∂CE/∂z = p_s(T=1) − onehot(0) = (¾ − 1, ¼), times α = 2
    student.grad = None
    L.distillation_loss(student, teacher, torch.tensor([[0]]), ONE, temperature=2.0, alpha=2.0)[0].backward()
    assert close(student.grad[0, 0], [2 - math.sqrt(3) + 2 * (-0.25), math.sqrt(3) - 2 + 2 * 0.25])


def test_distillation_loss_zero_soft_term_when_student_is_teacher():
    g = torch.Generator().manual_seed(6)
    z = torch.randn(3, 4, 7, generator=g)
    tokens = torch.randint(0, 7, (3, 4), generator=g)
    mask = torch.ones(3, 4, dtype=torch.bool)
    for T in (1.0, 3.0):
        loss, stats = L.distillation_loss(z, z, tokens, mask, temperature=T, alpha=0.7)
        assert close(stats["kl"], 0.0, tol=1e-6)
        ce = -L.logprobs_from_logits(z, tokens).mean()
        assert close(loss, 0.7 * ce, tol=1e-5)


def test_distillation_loss_ignores_padding_even_if_garbage():
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    tokens = torch.randint(0, 5, (2, 3), generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    clean, _ = L.distillation_loss(s, t, tokens, mask, temperature=2.0, alpha=0.5)
    s2, t2 = s.clone(), t.clone()
    s2[~mask], t2[~mask] = float("nan"), float("inf")
    dirty, _ = L.distillation_loss(s2, t2, tokens, mask, temperature=2.0, alpha=0.5)
    assert torch.isfinite(dirty) and close(dirty, clean)
    # the same as the mean over the three valid tokens computed one at a time
    per = [L.distillation_loss(s[b : b + 1, a : a + 1], t[b : b + 1, a : a + 1], tokens[b : b + 1, a : a + 1],
                               ONE, temperature=2.0, alpha=0.5)[0] for b, a in ((0, 0), (0, 1), (1, 0))]
    assert close(clean, sum(per) / 3)


def test_distillation_loss_exact_under_gradient_accumulation():
    g = torch.Generator().manual_seed(8)
    z = torch.randn(3, 4, 6, generator=g).requires_grad_(True)
    t = torch.randn(3, 4, 6, generator=g)
    tokens = torch.randint(0, 6, (3, 4), generator=g)
    mask = torch.arange(4)[None, :] < torch.tensor([4, 1, 2])[:, None]
    fn = lambda rows, n=None: L.distillation_loss(z[rows], t[rows], tokens[rows], mask[rows], 2.0, 0.5, n)[0]  # noqa: E731
    full = _grad(lambda: fn(slice(None)), z)
    z.grad = None
    for rows in (slice(0, 1), slice(1, 3)):
        fn(rows, int(mask.sum())).backward()
    assert torch.allclose(z.grad, full, atol=1e-6)


def test_losses_imports_torch_only():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(L))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert roots <= {"torch", "math", "__future__"}


# --------------------------------------------------------------------------------------------- DPO


def _dpo(loss_type="sigmoid", label_smoothing=0.0, beta=0.1, weight=None):
    # log-ratios: chosen −1 − (−2) = +1, rejected −3 − (−2) = −1, so h = 2
    pc, pr = torch.tensor([-1.0], requires_grad=True), torch.tensor([-3.0], requires_grad=True)
    loss, stats = L.dpo_loss(pc, pr, torch.tensor([-2.0]), torch.tensor([-2.0]), beta, loss_type, label_smoothing,
                             weight=weight)
    return loss, stats, pc, pr


def test_dpo_sigmoid_hand_value_and_trl_stats():
    # β·h = 0.2: −log σ(0.2) = log(1 + e^−0.2) = log 1.818731 = 0.598139
    loss, stats, _, _ = _dpo()
    assert close(loss, 0.598139)
    assert close(stats["rewards/chosen"], [0.1]) and close(stats["rewards/rejected"], [-0.1])
    assert close(stats["rewards/margins"], [0.2]) and close(stats["rewards/accuracies"], [1.0])


def test_dpo_is_log2_when_policy_equals_reference():
    # h = 0 whatever the log-probs: −log σ(0) = log 2 = 0.693147, and accuracy 0 (a tie is not a win)
    lp = torch.tensor([-4.0, -7.0])
    loss, stats = L.dpo_loss(lp, lp.flip(0), lp, lp.flip(0), beta=0.5)
    assert close(loss, math.log(2)) and close(stats["rewards/accuracies"], [0.0, 0.0])


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    # d/dπ_c [−log σ(βh)] = −β·σ(−βh) = −0.1·σ(−0.2) = −0.1·0.450166 = −0.0450166; +0.0450166 for π_r
    for kind in ("sigmoid", "ipo"):
        loss, _, pc, pr = _dpo(kind, beta=0.1)
        loss.backward()
        assert pc.grad.item() < 0 < pr.grad.item(), kind  # gradient descent raises chosen, lowers rejected
    loss, _, pc, pr = _dpo()
    loss.backward()
    assert close(pc.grad, [-0.0450166]) and close(pr.grad, [0.0450166])


def test_dpo_ipo_hand_value():
    # (h − 1/(2β))² = (2 − 5)² = 9; gradient in π_c: 2·(2 − 5) = −6
    loss, _, pc, _ = _dpo("ipo")
    assert close(loss, 9.0)
    loss.backward()
    assert close(pc.grad, [-6.0])


def test_dpo_label_smoothing_hand_value():
    # 0.9·log(1+e^−0.2) + 0.1·log(1+e^0.2) = 0.598139 + 0.1·0.2 = 0.618139 (log(1+e^x) − log(1+e^−x) = x)
    loss, _, _, _ = _dpo(label_smoothing=0.1)
    assert close(loss, 0.618139)


def test_dpo_weights_and_bad_arguments():
    # pairs with h = 2 (0.598139) and h = 0 (log 2), weights 3 and 1: (3·0.598139 + 0.693147) / 4 = 0.621891
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -2.0])
    ref = torch.tensor([-2.0, -2.0])
    loss, _ = L.dpo_loss(pc, pr, ref, ref, 0.1, weight=torch.tensor([3.0, 1.0]))
    assert close(loss, 0.621891)
    with pytest.raises(ValueError, match="loss_type"):
        L.dpo_loss(pc, pr, ref, ref, 0.1, "hinge")
    with pytest.raises(ValueError, match="sigmoid loss only"):
        L.dpo_loss(pc, pr, ref, ref, 0.1, "ipo", 0.1)


# --------------------------------------------------------------------------------------------- RLOO, GRPO


def test_rloo_baseline_is_the_mean_of_the_others():
    # group 1 (1, 2, 6): baselines (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5 → advantages −3, −1.5, 4.5
    # group 2 (0, 0, 3): baselines 1.5, 1.5, 0 → −1.5, −1.5, 3
    adv = L.rloo_advantages(torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0]), 3)
    assert close(adv, [-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])


def test_rloo_invariants_on_random_groups():
    r = torch.randn(5 * 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    adv = L.rloo_advantages(r, 4).view(5, 4)
    g = r.view(5, 4)
    for i in range(4):  # sample i's baseline, from the others alone
        others = torch.cat([g[:, :i], g[:, i + 1 :]], dim=1).mean(1)
        assert close(adv[:, i], g[:, i] - others)
    # A_i = K/(K−1)·(R_i − mean): sums to 0 per group
    assert close(adv.sum(1), torch.zeros(5))


def test_grpo_advantages_mean_zero_std_one_per_group():
    r = torch.randn(6 * 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3 + 2
    adv = L.group_normalized_advantages(r, 5).view(6, 5)
    assert close(adv.mean(1), torch.zeros(6))
    assert close(adv.std(1), torch.ones(6), tol=1e-3)  # eps 1e-4 in the denominator
    # hand value: group (1, 3): mean 2, unbiased std √2 → ∓1/√2 = ∓0.707107
    assert close(L.group_normalized_advantages(torch.tensor([1.0, 3.0]), 2), [-0.707107, 0.707107], tol=1e-4)


def test_grpo_all_equal_group_gives_zero_not_nan():
    adv = L.group_normalized_advantages(torch.tensor([0.7, 0.7, 0.7, 1.0, 2.0, 3.0]), 3)
    assert torch.isfinite(adv).all()
    assert close(adv[:3], torch.zeros(3)) and close(adv[3:], [-1.0, 0.0, 1.0], tol=2e-4)  # std 1: 1/(1 + 1e-4)


def test_grpo_scale_batch_and_none_hand_values():
    # groups (1, 3) and (0, 0): centred (−1, 1) and (0, 0)
    r = torch.tensor([1.0, 3.0, 0.0, 0.0])
    # none (Dr. GRPO): the centred scores as they are; the flat group stays 0
    assert torch.equal(L.group_normalized_advantages(r, 2, scale="none"), torch.tensor([-1.0, 1.0, 0.0, 0.0]))
    # batch: one std over all four, mean 1, squared deviations 0 + 4 + 1 + 1 = 6, unbiased 6/3 → √2 = 1.414214
    want = [-1 / (math.sqrt(2) + 1e-4), 1 / (math.sqrt(2) + 1e-4), 0.0, 0.0]
    assert close(L.group_normalized_advantages(r, 2, scale="batch"), want, tol=1e-6)
    # group, for contrast: (1, 3) has its own std √2 and (0, 0) none, so the same values here — but not when the
    # groups' spreads differ: (0, 4) next to (1, 3) is ∓0.707 by its group's std (2√2), ∓1.095 by the batch's: mean 2,
    # squared deviations 1 + 1 + 4 + 4 = 10, unbiased std √(10/3) = 1.825742
    r = torch.tensor([1.0, 3.0, 0.0, 4.0])
    assert close(L.group_normalized_advantages(r, 2)[2:], [-0.707107, 0.707107], tol=1e-4)
    assert close(L.group_normalized_advantages(r, 2, scale="batch")[2:], [-1.095445, 1.095445], tol=1e-4)
    # batch = every rank's rewards: this rank's (1, 3) divided by the std of all four (1, 3, 0, 0)
    assert close(L.group_normalized_advantages(torch.tensor([1.0, 3.0]), 2, scale="batch",
                                               batch=torch.tensor([1.0, 3.0, 0.0, 0.0])), want[:2], tol=1e-6)
    with pytest.raises(ValueError, match="scale must be one of group, batch, none"):
        L.group_normalized_advantages(r, 2, scale="std")


def test_sequence_weights_hand_values_and_the_losses_they_give():
    # two completions: 1 real token with advantage +2, 3 real tokens with advantage −1 (A = 3 columns)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    adv = torch.tensor([[2.0, 0.0, 0.0], [-1.0, -1.0, -1.0]])
    logp = torch.zeros(2, 3)  # ρ = 1: each token's loss is −Â
    assert L.sequence_weights("dapo", mask, 5)[0] is None and L.sequence_weights("dapo", mask, 5)[1] == 4
    w, n = L.sequence_weights("grpo", mask, 5)
    assert close(w, [[1.0], [1 / 3]]) and n == 2
    assert L.sequence_weights("dr_grpo", mask, 5)[0] is None and L.sequence_weights("dr_grpo", mask, 5)[1] == 10
    # dapo: −(2 − 3) / 4 tokens = 0.25; grpo: −(2/1 − 3/3) / 2 completions = −0.5; dr_grpo: −(2 − 3) / (2·5) = 0.1
    for loss_type, want in (("dapo", 0.25), ("grpo", -0.5), ("dr_grpo", 0.1)):
        w, n = L.sequence_weights(loss_type, mask, 5)
        assert close(L.clipped_policy_loss(logp, logp, adv, mask, 0.2, n, weight=w)[0], want), loss_type
    # the KL term the same way: k3 = e^−1 = 0.367879 on the first completion's token, 0 on the others (ref = logp)
    ref = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    for loss_type, want in (("dapo", 0.367879 / 4), ("grpo", 0.367879 / 2), ("dr_grpo", 0.367879 / 10)):
        w, n = L.sequence_weights(loss_type, mask, 5)
        assert close(L.kl_loss(logp, ref, mask, n, w), want), loss_type
    with pytest.raises(ValueError, match="loss_type must be one of dapo, grpo, dr_grpo"):
        L.sequence_weights("bnpo", mask, 5)
    with pytest.raises(ValueError, match="max_tokens must be ≥ 1, got 0"):
        L.sequence_weights("dr_grpo", mask, 0)


def test_group_advantages_refuse_k1_and_ragged_batches():
    for fn in (L.rloo_advantages, L.group_normalized_advantages):
        with pytest.raises(ValueError, match="≥ 2"):
            fn(torch.zeros(4), 1)
        with pytest.raises(ValueError, match="do not split"):
            fn(torch.zeros(5), 2)


def test_kl_loss_zero_at_reference_with_zero_gradient_and_hand_value():
    logp = torch.tensor([[-1.0, -2.0, 5.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0]])
    ref = torch.tensor([[-1.0, -2.0, float("nan")]])  # garbage at padding must not leak
    loss = L.kl_loss(logp, ref, mask)
    loss.backward()
    assert close(loss, 0.0) and close(logp.grad, torch.zeros(1, 3))
    # one token, log r = ref − logp = −1: k3 = e^−1 − 1 + 1 = 0.367879; d/dlogp = 1 − e^−1 = 0.632121 > 0
    logp = torch.tensor([[0.0]], requires_grad=True)
    loss = L.kl_loss(logp, torch.tensor([[-1.0]]), torch.tensor([[1]]))
    loss.backward()
    assert close(loss, 0.367879) and close(logp.grad, [[0.632121]])


def test_kl_loss_weighted_by_the_ratio_has_the_reverse_kl_gradient():
    # token 1: ratio 1 (logp = old = 0), ref −1: k3 = e^−1 = 0.367879, gradient k3 + (1 − e^−1) = 1 = logp − ref;
    # token 2: old −0.5 so ratio e^0.5 = 1.648721: value e^−1·e^0.5 = 0.606531, gradient 1.648721·1; token 3 padding
    logp = torch.tensor([[0.0, 0.0, 3.0]], requires_grad=True)
    ref, old = torch.tensor([[-1.0, -1.0, float("nan")]]), torch.tensor([[0.0, -0.5, float("nan")]])
    loss = L.kl_loss(logp, ref, torch.tensor([[1, 1, 0]]), old_logp=old)
    loss.backward()
    assert close(loss, (0.367879 + 0.606531) / 2) and close(logp.grad, [[0.5, 1.648721 / 2, 0.0]])
    # on policy (ratio 1) the gradient is (log π − log π_ref) / N per token, the reverse KL's; k3's own is 1 − π_ref/π
    g = torch.Generator().manual_seed(0)
    logp, ref = -torch.rand(3, 5, generator=g) * 3, -torch.rand(3, 5, generator=g) * 3
    mask = torch.ones(3, 5)
    for old_logp, want in ((logp, logp - ref), (None, 1 - torch.exp(ref - logp))):
        x = logp.clone().requires_grad_(True)
        L.kl_loss(x, ref, mask, old_logp=old_logp).backward()
        assert close(x.grad, want / 15)


@pytest.mark.parametrize("name", ["MISSING_EOS_MODES", "GRPO_SCALES", "LOSS_TYPES", "RATIO_LEVELS"])
def test_config_accepts_exactly_the_values_losses_implements(name):
    import rlhfkit.config as config  # torch-free, so it holds its own copy of each tuple

    assert getattr(config, name) == getattr(L, name)


def test_sequence_level_ratio_clips_each_completion_once_by_hand():
    # row 0: token log-ratios 0.2, −0.6 (mean −0.2: ratio e^−0.2 = 0.818731, inside [0.8, 1.2]); row 1: 0.3 × 3 (ratio
    # e^0.3 = 1.349859 > 1.2 with A > 0: clipped, no gradient); padding's old log-prob is NaN and must not leak
    logp = torch.zeros(2, 3, requires_grad=True)
    old = torch.tensor([[-0.2, 0.6, float("nan")], [-0.3, -0.3, -0.3]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    loss, stats = L.clipped_policy_loss(logp, old, torch.ones(2, 3), mask, 0.2, level="sequence")
    loss.backward()
    assert close(loss, (2 * -0.818731 + 3 * -1.2) / 5) and close(stats["clipfrac"], 3 / 5)
    # each row-0 token's loss is −e^mean, mean = (l0 + l1)/2: over the 5-token mean, d/dl_t = 2 · (−0.818731 / 2) / 5
    assert close(logp.grad, [[-0.818731 / 5, -0.818731 / 5, 0.0], [0.0, 0.0, 0.0]])
    assert close(L.log_ratios(logp, old, mask, "sequence"), [[-0.2, -0.2, 0.0], [0.3, 0.3, 0.3]])
    # the KL term weighted per completion: k3 (e^−1 at log π_ref − log π = −1, else 0) × e^0.2, mean over 2 tokens
    kl = L.kl_loss(torch.zeros(1, 2), torch.tensor([[-1.0, 0.0]]), torch.ones(1, 2),
                   old_logp=torch.tensor([[0.2, -0.6]]), level="sequence")
    assert close(kl, 0.367879 * 1.221403 / 2)
    with pytest.raises(ValueError, match="level must be one of token, sequence"):
        L.log_ratios(logp, old, mask, "sentence")


def test_missing_eos_scores_by_hand():
    scores, ended = torch.tensor([0.5, -0.3, 1.2]), torch.tensor([True, False, False])
    # replace: the cut-off rows score the penalty, whatever the reward model said
    assert L.missing_eos_scores(scores, ended, -1.0, "replace").tolist() == [0.5, -1.0, -1.0]
    # subtract: the cut-off rows keep their order, lowered by 1 (-0.3 - 1, 1.2 - 1)
    torch.testing.assert_close(L.missing_eos_scores(scores, ended, -1.0, "subtract"), torch.tensor([0.5, -1.3, 0.2]))
    with pytest.raises(ValueError, match="replace"):
        L.missing_eos_scores(scores, ended, -1.0, "clip")
