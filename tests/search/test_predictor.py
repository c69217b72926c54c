import numpy as np
import pytest
from scipy import stats

from ajpq.core.policy import CompressionPolicy, LayerPolicy
from ajpq.search.predictor import AccuracyPredictor, policy_features


def test_fit_ranks_held_out_rows_of_a_noisy_linear_truth():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (60, 12))
    truth = x @ rng.normal(0, 1, 12)
    y = truth + rng.normal(0, 0.3 * truth.std(), 60)
    model = AccuracyPredictor.fit(x[:40], y[:40])
    rho = stats.spearmanr(model.predict(x[40:]), truth[40:])[0]
    assert rho > 0.8
    assert model.records == 40 and model.alpha in (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def test_pure_noise_gets_strong_shrinkage():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (40, 30))
    model = AccuracyPredictor.fit(x, rng.normal(0, 1, 40))
    assert model.alpha >= 10.0  # leave-one-out prefers shrinking towards the mean


def test_fit_rejects_too_few_rows():
    with pytest.raises(ValueError, match="two or more rows"):
        AccuracyPredictor.fit(np.zeros((1, 3)), np.zeros(1))


def test_features_say_kept_share_bits_and_activation_bits():
    policy = CompressionPolicy(
        "m",
        (1, 3, 8, 8),
        "sig",
        layers=(
            LayerPolicy("a", (0, 4, 4, 8), 8),
            LayerPolicy("b", (2, 2), 4),
        ),
    )
    np.testing.assert_allclose(policy_features(policy), [0.75, 16 / 3 / 8, 1.0, 1.0, 0.25, 0.5])
