"""A logistic-regression long/flat model in numpy (no new dependency).

``fit(features, labels)`` gets the training rows and their forward ``hold_bars`` log returns; it
learns P(forward return > 0) with an L2-penalised logistic regression (Newton's method on
standardised features) and goes long where that probability exceeds :data:`ENTRY_PROBABILITY`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

L2 = 1.0  # penalty per training row, on standardised features
ENTRY_PROBABILITY = 0.55
NEWTON_STEPS = 25


@dataclass
class FittedLogistic:
    mean: np.ndarray = field(repr=False)
    scale: np.ndarray = field(repr=False)
    coef: np.ndarray = field(repr=False)
    hyperparams: dict

    def probability(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return 1.0 / (1.0 + np.exp(-(z @ self.coef[1:] + self.coef[0])))

    def positions(self, features: np.ndarray) -> np.ndarray:
        """1 (long) where P(up) > ENTRY_PROBABILITY, else 0 (flat): one per row."""
        return (self.probability(features) > ENTRY_PROBABILITY).astype(np.float64)


class LogisticLongFlat:
    def fit(self, features: np.ndarray, labels: np.ndarray) -> FittedLogistic:
        x = np.asarray(features, dtype=np.float64)
        y = (np.asarray(labels) > 0).astype(np.float64)
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale == 0] = 1.0
        design = np.column_stack([np.ones(len(x)), (x - mean) / scale])
        penalty = L2 * np.eye(design.shape[1])
        penalty[0, 0] = 0.0  # the intercept is not shrunk
        coef = np.zeros(design.shape[1])
        steps = 0
        while steps < NEWTON_STEPS:
            steps += 1
            p = 1.0 / (1.0 + np.exp(-(design @ coef)))
            gradient = design.T @ (p - y) + penalty @ coef
            hessian = (design * (p * (1 - p))[:, None]).T @ design + penalty
            step = np.linalg.solve(hessian, gradient)
            coef -= step
            if np.max(np.abs(step)) < 1e-8:
                break
        return FittedLogistic(
            mean=mean,
            scale=scale,
            coef=coef,
            hyperparams={
                "model": "logistic_long_flat",
                "l2": L2,
                "entry_probability": ENTRY_PROBABILITY,
                "newton_steps": steps,
                "train_bars": int(len(x)),
                "train_up_share": float(y.mean()),
            },
        )
