"""The promotion gates and the paired bootstrap, against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from factory_assets.ml import promotion


def test_bootstrap_of_two_users_spans_their_differences():
    # differences 0 and 1: a resample of two users has mean 0 (p=1/4), 0.5 (p=1/2) or 1 (p=1/4), so the
    # 2.5th and 97.5th percentiles of the bootstrap distribution are exactly 0 and 1
    mean, low, high = promotion.paired_bootstrap_ci(np.array([0.5, 1.0]), np.array([0.5, 0.0]), n_resamples=4000)
    assert (mean, low, high) == (0.5, 0.0, 1.0)


def test_bootstrap_of_a_constant_difference_is_degenerate():
    assert promotion.paired_bootstrap_ci(np.full(5, 0.3), np.full(5, 0.1)) == pytest.approx((0.2, 0.2, 0.2))


def test_bootstrap_interval_matches_the_normal_approximation():
    # 200 users, difference +0.1 for half and -0.1 for the others: mean 0, standard error
    # 0.1 / sqrt(200) = 0.00707, so the 95% interval is about 0 +/- 1.96 * 0.00707 = +/- 0.0139
    diff = np.tile([0.1, -0.1], 100)
    mean, low, high = promotion.paired_bootstrap_ci(diff + 0.5, np.full(200, 0.5), n_resamples=5000)
    assert mean == pytest.approx(0.0, abs=1e-12)
    assert low == pytest.approx(-0.0139, abs=0.002) and high == pytest.approx(0.0139, abs=0.002)


def test_bootstrap_refuses_unpaired_samples():
    with pytest.raises(ValueError, match="paired"):
        promotion.paired_bootstrap_ci(np.zeros(3), np.zeros(4))


def test_champion_gate_needs_the_interval_above_minus_tolerance():
    candidate, champion = np.array([0.5, 1.0]), np.array([0.5, 0.0])  # interval [0, 1] as above
    assert promotion.not_worse_than_champion(candidate, champion, 0.0, 7, n_resamples=4000).passed
    assert not promotion.not_worse_than_champion(champion, candidate, 0.5, 7, n_resamples=4000).passed  # [-1, 0]
    assert promotion.not_worse_than_champion(champion, candidate, 1.0, 7, n_resamples=4000).passed
    waived = promotion.not_worse_than_champion(champion, candidate, 0.0, 7, champion_must_go="erased data")
    assert waived.passed and "must be replaced" in waived.reason
    assert promotion.not_worse_than_champion(candidate, None, 0.0, None).passed


def test_baseline_gate_margin_by_hand():
    # best baseline 0.30, margin 10 %: needs >= 0.33
    assert promotion.beats_baseline(0.33, {"popularity": 0.1, "repeat": 0.30}, 0.10).passed
    gate = promotion.beats_baseline(0.329, {"popularity": 0.1, "repeat": 0.30}, 0.10)
    assert not gate.passed and gate.metadata["best_baseline"] == "repeat"
    assert not promotion.beats_baseline(float("nan"), {"popularity": 0.1, "repeat": 0.3}, 0.0).passed


@pytest.mark.parametrize(
    ("failing", "verdict"),
    [
        ((), promotion.PROMOTE),
        ((promotion.NOT_WORSE_THAN_CHAMPION,), promotion.SHADOW),
        ((promotion.BEATS_BASELINE,), promotion.REJECT),
        ((promotion.SAFE_TO_SERVE, promotion.NOT_WORSE_THAN_CHAMPION), promotion.REJECT),
    ],
)
def test_verdicts(failing, verdict):
    gates = [promotion.GateResult(name, name not in failing, f"{name} reason") for name in promotion.GATES]
    assert promotion.decide(gates)[0] == verdict
