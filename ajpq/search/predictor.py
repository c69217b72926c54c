"""An accuracy predictor fitted on a search's own records (APQ's screening, small): ridge
regression on per-layer features of a policy, its strength chosen by leave-one-out error.

It screens proposals (``agent.screen``): of k proposals only the most promising is scored, so
the search spends its evaluations where the predictor expects accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ajpq.core.policy import CompressionPolicy

__all__ = ["AccuracyPredictor", "policy_features"]

ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def policy_features(policy: CompressionPolicy) -> np.ndarray:
    """Per layer: the kept share of channels, the mean weight bits of the kept ones and the
    activation bits (both over 8); what decides a policy's accuracy at the scale of a layer."""
    rows = []
    for layer in policy.layers:
        bits = np.asarray(layer.weight_bits, dtype=np.float64)
        kept = bits > 0
        rows.append(
            [
                kept.mean() if bits.size else 1.0,
                bits[kept].mean() / 8.0 if kept.any() else 0.0,
                min(float(layer.act_bits), 8.0) / 8.0,
            ]
        )
    return np.asarray(rows, dtype=np.float64).reshape(-1)


@dataclass(frozen=True)
class AccuracyPredictor:
    """Ridge regression on standardised features; ``alpha`` chosen by leave-one-out error."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    alpha: float
    records: int

    @classmethod
    def fit(cls, features: np.ndarray, targets: np.ndarray) -> AccuracyPredictor:
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(targets, dtype=np.float64)
        if x.ndim != 2 or len(x) != len(y) or len(y) < 2:
            raise ValueError(f"need two or more rows of features and targets, got {x.shape}")
        mean = x.mean(axis=0)
        scale = np.where(x.std(axis=0) > 1e-12, x.std(axis=0), 1.0)
        z = (x - mean) / scale
        bias = float(y.mean())
        centred = y - bias
        best: tuple[float, float, np.ndarray] | None = None
        for alpha in ALPHAS:
            # hat matrix in sample space (n x n), fine for the few hundred records of a search
            kernel = z @ z.T
            inverse = np.linalg.inv(kernel + alpha * np.eye(len(y)))
            hat = kernel @ inverse
            residual = (centred - hat @ centred) / np.clip(1.0 - np.diag(hat), 1e-6, None)
            error = float(np.mean(residual**2))
            if best is None or error < best[0]:
                best = (error, alpha, z.T @ (inverse @ centred))
        _, alpha, weights = best
        return cls(mean, scale, weights, bias, alpha, len(y))

    def predict(self, features: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        return (x - self.mean) / self.scale @ self.weights + self.bias
