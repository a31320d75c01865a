"""KL coefficient controllers: hand-worked updates and exact state round trips."""

from __future__ import annotations

from rlhfkit.train.kl_control import AdaptiveKLController, FixedKLController


def close(a, b, tol=1e-6):
    return abs(float(a) - float(b)) <= tol

def test_adaptive_kl_controller_hand_case():
    ctl = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10_000)
    # KL 9: e = 9/6 − 1 = 0.5 → clipped to 0.2; β = 0.1 · (1 + 0.2·256/10000) = 0.1 · 1.00512 = 0.100512
    assert close(ctl.update(9.0, n_steps=256), 0.100512, tol=1e-9)
    # KL 5.4: e = −0.1 (inside the clip); β = 0.100512 · (1 − 0.1·256/10000) = 0.100512 · 0.99744 = 0.1002547
    ctl.update(5.4, n_steps=256)
    assert close(ctl.value, 0.100512 * 0.99744, tol=1e-12)
    # on target: unchanged
    before = ctl.value
    ctl.update(6.0, n_steps=256)
    assert close(ctl.value, before, tol=1e-15)


def test_kl_controllers_state_round_trip():
    ctl = AdaptiveKLController(init_beta=0.2, target=3.0, horizon=1000)
    ctl.update(0.0, n_steps=64)  # e = −1 → −0.2: β = 0.2 · (1 − 0.2·64/1000) = 0.2 · 0.9872 = 0.19744
    assert close(ctl.value, 0.19744, tol=1e-12)
    resumed = AdaptiveKLController(init_beta=0.2, target=3.0, horizon=1000)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.value == ctl.value
    assert resumed.update(10.0, 64) == ctl.update(10.0, 64)

    fixed = FixedKLController(0.05)
    assert fixed.update(100.0, n_steps=64) == 0.05 and fixed.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05
