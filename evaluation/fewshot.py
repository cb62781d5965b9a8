"""Few-shot and linear-probe protocols on precomputed, L2-normalised features.

SimpleShot (Wang et al. 2019) with CL2N, as the paper's evaluation: subtract the support-set mean, L2-normalise,
classify by the nearest class centroid (Euclidean, as the paper's code); k shots per class, the rest of each class is the query set; one seeded
fold per `random.seed(fold)`.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from evaluation.metrics import binary_f1, macro_f1
from evaluation.protocols import simpleshot_predict


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
    pred = simpleshot_predict(features[support], labels[support], features[query])
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
    pred = clf.predict(x_te)
    return {
        "linear_probe_acc": float(np.mean(pred == y_te)),
        "linear_probe_macro_f1": macro_f1(y_te, pred),
        "linear_probe_n_test": len(y_te),
    }


def multi_label_probe(
    features: np.ndarray, targets: np.ndarray, train_fraction: float = 0.5, seed: int = 0, c: float = 1.0
) -> dict[str, Any]:
    """One logistic regression per binary label (FishNet-style traits) on a seeded split. The headline is the
    paper's all-labels-correct accuracy: an image counts only when every one of its labels is right."""
    from sklearn.linear_model import LogisticRegression

    targets = np.asarray(targets, dtype=int)
    order = np.random.default_rng(seed).permutation(len(features))
    cut = round(train_fraction * len(features))
    tr, te = order[:cut], order[cut:]
    if len(tr) == 0 or len(te) == 0:
        raise ValueError("multi-label probe needs images on both sides of the split")
    pred = np.zeros((len(te), targets.shape[1]), dtype=int)
    for j in range(targets.shape[1]):
        y = targets[tr, j]
        if len(set(y.tolist())) < 2:
            pred[:, j] = y[0]  # a label constant in training is predicted as that constant
        else:
            pred[:, j] = LogisticRegression(C=c, max_iter=2000).fit(features[tr], y).predict(features[te])
    truth = targets[te]
    return {
        "multi_label_all_correct": float(np.mean(np.all(pred == truth, axis=1))),
        "multi_label_label_acc": float(np.mean(pred == truth)),
        "multi_label_macro_f1": float(
            np.mean([binary_f1(truth[:, j], pred[:, j]) for j in range(truth.shape[1])])
        ),
        "multi_label_n_labels": int(targets.shape[1]),
        "multi_label_n_test": len(te),
    }
