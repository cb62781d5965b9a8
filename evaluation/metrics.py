"""Small shared metric functions (pure numpy / scikit-learn)."""

from __future__ import annotations

import numpy as np


def macro_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """F1 per class, averaged with equal weight over the classes present in `labels` or `predictions`."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, average="macro", zero_division=0))


def binary_f1(truth: np.ndarray, predictions: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(truth, predictions, zero_division=0))
