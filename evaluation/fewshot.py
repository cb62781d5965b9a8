"""Few-shot and linear-probe protocols on precomputed, L2-normalised features.

SimpleShot (Wang et al. 2019) with CL2N, as the paper's evaluation: subtract the support-set mean, L2-normalise,
classify by the nearest class centroid; k shots per class, the rest of each class is the query set; one seeded
fold per `random.seed(fold)`.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np


def _cl2n(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
    x = x - mean
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def simpleshot_fold(features: np.ndarray, labels: np.ndarray, k: int, fold: int) -> float:
    rng = random.Random(fold)
    support, query = [], []
    for c in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == c).tolist()
        if len(idx) <= k:
            continue  # a class needs at least one query image
        rng.shuffle(idx)
        support += idx[:k]
        query += idx[k:]
    if not query:
        raise ValueError(f"no class has more than k={k} images")
    mean = features[support].mean(axis=0)
    s, q = _cl2n(features[support], mean), _cl2n(features[query], mean)
    classes = sorted(set(labels[support].tolist()))
    centroids = np.stack([s[labels[support] == c].mean(axis=0) for c in classes])
    pred = np.array(classes)[np.argmax(q @ centroids.T, axis=1)]
    return float(np.mean(pred == labels[query]))


def simpleshot(
    features: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5), folds: int = 5
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in ks:
        accs = [simpleshot_fold(features, labels, k, fold) for fold in range(folds)]
        out[f"few_shot_k{k}_acc"] = float(np.mean(accs))
        out[f"few_shot_k{k}_std"] = float(np.std(accs))
    return out


def linear_probe(
    features: np.ndarray, labels: np.ndarray, train_fraction: float = 0.5, seed: int = 0, c: float = 1.0
) -> dict[str, Any]:
    """Multinomial logistic regression on a stratified, seeded split (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    keep = counts[labels] >= 2  # stratification needs two images of a class
    x, y = features[keep], labels[keep]
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, train_size=train_fraction, stratify=y, random_state=seed)
    clf = LogisticRegression(C=c, max_iter=2000).fit(x_tr, y_tr)
    return {"linear_probe_acc": float(clf.score(x_te, y_te)), "linear_probe_n_test": len(y_te)}
