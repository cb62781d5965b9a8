"""The BioCLIP 2 paper's task protocols on precomputed features, each with its seeds and repeats.

- `mlp_head`: FishNet and AwA2. Linear(D, 512) -> Dropout(0.5) -> Linear(512, L) on the raw (unnormalised)
  image features, BCEWithLogits, Adam, StepLR(20, 0.5), `runs` seeded runs. Predictions threshold the *raw
  logits* at 0.5, as the paper's code does (that is probability > 0.62, not > 0.5; kept for parity).
- `newt_svc`: NeWT. Per task, features centred on the task's training mean and L2-normalised, then
  StandardScaler + SVC tuned by RandomizedSearchCV (100 draws of C, kernel, gamma); micro-accuracy over every
  test image of every task; the tasks run in parallel processes.
- `semi_supervised_kmeans` + `cluster_accuracy`: Herbarium19 generalised category discovery.
- `simpleshot_split`: PlantDoc, k shots per class drawn from the train side, scored on the whole test side.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


# --- FishNet / AwA2 ------------------------------------------------------------------------------------------


def all_labels_correct(pred: np.ndarray, truth: np.ndarray) -> float:
    """FishNet's score: the share of images whose every label is right."""
    return float(np.mean(np.all(pred == truth, axis=1)))


def macro_f1_over_labels(pred: np.ndarray, truth: np.ndarray) -> float:
    """AwA2's score: F1 per attribute column, averaged (an attribute never present nor predicted scores 0, as
    scikit-learn's zero_division default)."""
    from sklearn.metrics import f1_score

    return float(f1_score(truth, pred, average="macro", zero_division=0))


def macro_f1_upstream(pred: np.ndarray, truth: np.ndarray) -> float:
    """AwA2 as the BioCLIP 2 evaluator computes it: `f1_score(..., average="macro", labels=np.unique(y_true))`.
    On a multi-label matrix `labels` selects *columns*, so this averages attributes 0 and 1 only. Reported
    beside `macro_f1` so results can be set against the published figure."""
    from sklearn.metrics import f1_score

    return float(f1_score(truth, pred, average="macro", labels=np.unique(truth), zero_division=0))


HEAD_METRICS = {
    "all_correct": all_labels_correct,
    "macro_f1": macro_f1_over_labels,
    "macro_f1_upstream": macro_f1_upstream,
}


def mlp_head(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    metrics: tuple[str, ...],
    lr: float,
    epochs: int = 50,
    runs: int = 3,
    seed: int = 0,
    batch_size: int = 64,
    hidden: int = 512,
) -> dict[str, Any]:
    """Train the paper's two-layer head `runs` times (seeds seed, seed+1, ...); mean and std of each of
    `metrics` (names in HEAD_METRICS) on the test side."""
    import torch

    xtr, ytr = torch.as_tensor(x_train, dtype=torch.float32), torch.as_tensor(y_train, dtype=torch.float32)
    xte = torch.as_tensor(x_test, dtype=torch.float32)
    scores: dict[str, list[float]] = {m: [] for m in metrics}
    for run in range(runs):
        torch.manual_seed(seed + run)
        head = torch.nn.Sequential(
            torch.nn.Linear(xtr.shape[1], hidden),
            torch.nn.Dropout(0.5),
            torch.nn.Linear(hidden, ytr.shape[1]),
        )
        opt = torch.optim.Adam(head.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.5)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        for _ in range(epochs):
            head.train()
            for idx in torch.randperm(len(xtr)).split(batch_size):
                loss = loss_fn(head(xtr[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
        head.eval()
        with torch.no_grad():
            pred = (head(xte) > 0.5).numpy().astype(np.int64)
        for m in metrics:
            scores[m].append(HEAD_METRICS[m](pred, np.asarray(y_test)))
        log.info("head run %d/%d: %s %.4f", run + 1, runs, metrics[0], scores[metrics[0]][-1])
    out: dict[str, Any] = {}
    for m in metrics:
        out[m], out[f"{m}_std"] = float(np.mean(scores[m])), float(np.std(scores[m]))
    return {
        **out,
        "runs": runs,
        "n_train": len(x_train),
        "n_test": len(x_test),
    }


# --- NeWT ----------------------------------------------------------------------------------------------------


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _newt_search(seed: int, n_iter: int, cv: int):
    import scipy.stats
    from sklearn.model_selection import RandomizedSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return RandomizedSearchCV(
        make_pipeline(StandardScaler(), SVC(C=1.0, kernel="rbf")),
        {
            "svc__C": scipy.stats.loguniform(a=1e-3, b=1e1),
            "svc__kernel": ["rbf", "linear", "sigmoid", "poly"],
            "svc__gamma": scipy.stats.loguniform(a=1e-4, b=1e-3),
        },
        n_iter=n_iter,
        cv=cv,
        n_jobs=1,
        random_state=seed,
    )


def newt_task(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int, n_iter: int = 100, cv: int = 5
) -> np.ndarray:
    """One NeWT task: centre on the training mean, L2-normalise, search and fit; predictions for x_test."""
    mean = x_train.mean(axis=0, keepdims=True)
    search = _newt_search(seed, n_iter, cv).fit(_l2(x_train - mean), y_train)
    return search.predict(_l2(x_test - mean))


def newt_svc(
    features: np.ndarray,
    task: np.ndarray,
    label: np.ndarray,
    is_train: np.ndarray,
    *,
    runs: int = 3,
    seed: int = 0,
    n_iter: int = 100,
    cv: int = 5,
    n_jobs: int | None = None,
) -> dict[str, Any]:
    """Micro-accuracy over all tasks, `runs` seeded searches; tasks spread over `n_jobs` processes (all cores
    by default) because 164 searches of 100 draws each dominate the suite otherwise."""
    from joblib import Parallel, delayed

    names = sorted(set(task.tolist()))
    jobs = n_jobs or os.cpu_count() or 1
    scores = []
    for run in range(runs):
        work = []
        for name in names:
            m = task == name
            tr, te = m & is_train, m & ~is_train
            work.append((features[tr], label[tr], features[te], label[te]))
        preds = Parallel(n_jobs=jobs)(
            delayed(newt_task)(xtr, ytr, xte, seed + run, n_iter, cv) for xtr, ytr, xte, _ in work
        )
        truth = np.concatenate([w[3] for w in work])
        scores.append(float(np.mean(np.concatenate(preds) == truth)))
        log.info("NeWT run %d/%d: micro-accuracy %.4f over %d tasks", run + 1, runs, scores[-1], len(names))
    return {
        "micro_acc": float(np.mean(scores)),
        "micro_acc_std": float(np.std(scores)),
        "runs": runs,
        "n_tasks": len(names),
        "n_test": int((~is_train).sum()),
    }


# --- Herbarium19 (generalised category discovery) ------------------------------------------------------------


def _sq_dist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum((x**2).sum(1)[:, None] - 2 * x @ c.T + (c**2).sum(1)[None, :], 0.0)


def kmeans_pp_extend(x: np.ndarray, centers: np.ndarray, k: int, rng: np.random.RandomState) -> np.ndarray:
    """k-means++ seeding that keeps the given centers and draws the rest from x, each with probability
    proportional to its squared distance to the nearest center so far."""
    centers = centers.reshape(-1, x.shape[1])
    while len(centers) < k:
        d2 = _sq_dist(x, centers).min(axis=1)
        cum = np.cumsum(d2 / d2.sum()) if d2.sum() > 0 else np.linspace(1 / len(x), 1, len(x))
        pick = int(np.searchsorted(cum, rng.rand()))
        centers = np.vstack([centers, x[min(pick, len(x) - 1)]])
    return centers


def semi_supervised_kmeans(
    x_labelled: np.ndarray,
    y_labelled: np.ndarray,
    x_unlabelled: np.ndarray,
    k: int,
    *,
    seed: int,
    max_iter: int = 10,
    tol: float = 1e-4,
) -> np.ndarray:
    """GCD's semi-supervised k-means (Vaze et al. 2022): the labelled classes' means are the first centers, the
    other k - n_labelled_classes are seeded by k-means++ over the unlabelled points; labelled points stay in
    their class's cluster, unlabelled points move to the nearest center; stops after `max_iter` or when the
    squared total center shift is below `tol`. Returns the unlabelled points' cluster ids. A cluster left empty
    keeps its previous center (the reference implementation would turn it into NaN)."""
    rng = np.random.RandomState(seed)
    classes = np.unique(y_labelled)
    fixed = np.searchsorted(classes, y_labelled)
    centers = np.stack([x_labelled[y_labelled == c].mean(axis=0) for c in classes])
    centers = kmeans_pp_extend(x_unlabelled, centers, k, rng)
    every = np.vstack([x_labelled, x_unlabelled])
    assign = fixed
    for _ in range(max_iter):
        old = centers.copy()
        assign = np.concatenate([fixed, _sq_dist(x_unlabelled, centers).argmin(axis=1)])
        for c in range(k):
            members = assign == c
            if members.any():
                centers[c] = every[members].mean(axis=0)
        if np.sqrt(((centers - old) ** 2).sum(axis=1)).sum() ** 2 < tol:
            break
    return assign[len(x_labelled) :]


def cluster_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Per-image correctness under the best one-to-one map of clusters to classes (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    d = int(max(y_pred.max(), y_true.max())) + 1
    w = np.zeros((d, d), dtype=np.int64)
    np.add.at(w, (y_pred, y_true), 1)
    rows, cols = linear_sum_assignment(w.max() - w)
    mapping = dict(zip(rows.tolist(), cols.tolist(), strict=True))
    return np.array([mapping[p] == t for p, t in zip(y_pred.tolist(), y_true.tolist(), strict=True)])


def gcd_herbarium(
    features: np.ndarray,
    labels: np.ndarray,
    old_classes: np.ndarray,
    n_classes: int,
    *,
    prop_labelled: float = 0.8,
    runs: int = 3,
    seed: int = 0,
    max_iter: int = 10,
) -> dict[str, Any]:
    """The paper's Herbarium19 protocol: labelled = a `prop_labelled` share (drawn once, numpy seed `seed`) of
    the images of the 'Old' classes; everything else is unlabelled. After semi-supervised k-means with
    k = all classes, accuracy is computed as the BioCLIP 2 evaluator does: one Hungarian match over the
    unlabelled images of Old classes, another over those of New classes, averaged over all unlabelled images
    (`acc_all`). `acc_all_joint` is the single-match variant of the GCD paper, for reference."""
    is_old = np.isin(labels, old_classes)
    old_idx = np.flatnonzero(is_old)
    np.random.seed(seed)
    chosen = old_idx[np.random.choice(len(old_idx), size=int(prop_labelled * len(old_idx)), replace=False)]
    labelled = np.zeros(len(labels), dtype=bool)
    labelled[chosen] = True
    u_labels, u_old = labels[~labelled], is_old[~labelled]
    accs, joint, old_acc, new_acc = [], [], [], []
    for run in range(runs):
        pred = semi_supervised_kmeans(
            features[labelled],
            labels[labelled],
            features[~labelled],
            n_classes,
            seed=seed + run,
            max_iter=max_iter,
        )
        correct = np.zeros(len(u_labels), dtype=bool)
        for part in (u_old, ~u_old):
            if part.any():
                correct[part] = cluster_accuracy(u_labels[part], pred[part])
        accs.append(float(correct.mean()))
        joint.append(float(cluster_accuracy(u_labels, pred).mean()))
        old_acc.append(float(correct[u_old].mean()) if u_old.any() else float("nan"))
        new_acc.append(float(correct[~u_old].mean()) if (~u_old).any() else float("nan"))
        log.info("Herbarium19 run %d/%d: clustering accuracy %.4f", run + 1, runs, accs[-1])
    return {
        "acc_all": float(np.mean(accs)),
        "acc_all_std": float(np.std(accs)),
        "acc_old": float(np.mean(old_acc)),
        "acc_new": float(np.mean(new_acc)),
        "acc_all_joint": float(np.mean(joint)),
        "runs": runs,
        "n_labelled": int(labelled.sum()),
        "n_unlabelled": int((~labelled).sum()),
    }


# --- PlantDoc ------------------------------------------------------------------------------------------------


def simpleshot_predict(x_support: np.ndarray, y_support: np.ndarray, x_query: np.ndarray) -> np.ndarray:
    """SimpleShot with CL2N: subtract the support mean, L2-normalise, nearest class centroid by Euclidean
    distance (the centroids are means of unit vectors, not renormalised, as the paper's code)."""
    mean = x_support.mean(axis=0)
    s, q = _l2(x_support - mean), _l2(x_query - mean)
    classes = np.unique(y_support)
    centroids = np.stack([s[y_support == c].mean(axis=0) for c in classes])
    return classes[_sq_dist(q, centroids).argmin(axis=1)]


def simpleshot_split(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    k: int = 1,
    repeats: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """`repeats` draws (numpy seed seed+r) of k training images per class; accuracy on the whole test side."""
    accs = []
    for r in range(repeats):
        np.random.seed(seed + r)
        support = []
        for c in np.unique(y_train):
            idx = np.flatnonzero(y_train == c)
            np.random.shuffle(idx)
            support += idx[:k].tolist()
        support_idx = np.array(support)
        pred = simpleshot_predict(x_train[support_idx], y_train[support_idx], x_test)
        accs.append(float(np.mean(pred == y_test)))
    return {f"k{k}_acc": float(np.mean(accs)), f"k{k}_acc_std": float(np.std(accs)), "repeats": repeats}
