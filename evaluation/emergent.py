"""Emergent-property measures (working definitions after the BioCLIP 2 paper's emergent-property section).

On L2-normalised embeddings, for images grouped by species and by an intra-species variable (life stage, sex):

* separation: the Fisher discriminant ratio tr(S_B) / tr(S_W) between the variant groups of one species,
  S_B = sum_g n_g (mu_g - mu)(mu_g - mu)^T, S_W = sum_g sum_{x in g} (x - mu_g)(x - mu_g)^T, averaged over the
  species that have at least two variant groups. Higher means the variants are more separated.
* orthogonality share rho: U_k = the top-k left singular vectors of the centred species-mean embeddings (the
  directions along which species differ); delta = variant mean - species mean for every (species, variant);
  rho = sum ||U_k^T delta||^2 / sum ||delta||^2. Near 0: intra-species variation lies outside the species span
  (orthogonal); near 1: inside it. `k` is recorded with the value. Read rho against `orthogonality_rho_null`,
  the same share for every image's residual from its (species, variant) mean (within-group noise): when embeddings are
  low-rank, every direction lies mostly in the top-k span, and only rho below the null means "orthogonal".
* effective rank (participation ratio (sum s^2)^2 / sum s^4 of the centred singular values), reported for all
  embeddings and for the species means: when the embedding's effective rank is not well above k, the top-k
  species span already holds nearly every direction the embedding has, and no variation can have a low share.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def effective_rank(x: np.ndarray) -> float:
    """Participation ratio of the centred rows' singular values: d for isotropic data in d dims, 1 for a line."""
    s2 = np.linalg.svd(x - x.mean(axis=0), compute_uv=False) ** 2
    return float(s2.sum() ** 2 / np.sum(s2**2)) if s2.sum() > 0 else 0.0


def fisher_ratio(features: np.ndarray, groups: np.ndarray) -> float:
    mu = features.mean(axis=0)
    sb = sw = 0.0
    for g in np.unique(groups):
        x = features[groups == g]
        mg = x.mean(axis=0)
        sb += len(x) * float(np.sum((mg - mu) ** 2))
        sw += float(np.sum((x - mg) ** 2))
    return sb / sw if sw > 0 else float("inf")


def separation(features: np.ndarray, species: np.ndarray, variant: np.ndarray) -> dict[str, Any]:
    feats = _normalise(features)
    ratios = []
    for s in np.unique(species):
        mask = species == s
        if len(np.unique(variant[mask])) >= 2 and mask.sum() > len(np.unique(variant[mask])):
            ratios.append(fisher_ratio(feats[mask], variant[mask]))
    if not ratios:
        raise ValueError("no species has two variant groups with more images than groups (S_W would be 0)")
    return {"separation_fdr": float(np.mean(ratios)), "separation_n_species": len(ratios)}


def orthogonality(
    features: np.ndarray, species: np.ndarray, variant: np.ndarray, k: int = 10
) -> dict[str, Any]:
    feats = _normalise(features)
    by_species: dict[Any, list[int]] = defaultdict(list)
    for i, s in enumerate(species.tolist()):
        by_species[s].append(i)
    names = sorted(by_species)
    means = np.stack([feats[by_species[s]].mean(axis=0) for s in names])
    centred = means - means.mean(axis=0)
    u, _, _ = np.linalg.svd(centred.T, full_matrices=False)  # columns span the inter-species directions
    k = min(k, u.shape[1])
    basis = u[:, :k]
    deltas = []
    for s, mean in zip(names, means, strict=True):
        idx = np.array(by_species[s])
        for v in np.unique(variant[idx]):
            deltas.append(feats[idx[variant[idx] == v]].mean(axis=0) - mean)
    d = np.stack(deltas)
    total = float(np.sum(d**2))
    inside = float(np.sum((d @ basis) ** 2))
    # Null reference: within-group noise, each image minus its (species, variant) mean.
    residuals = feats.copy()
    for s in names:
        idx = np.array(by_species[s])
        for v in np.unique(variant[idx]):
            members = idx[variant[idx] == v]
            residuals[members] -= feats[members].mean(axis=0)
    return {
        "orthogonality_rho": inside / total if total > 0 else float("nan"),
        "orthogonality_k": k,
        "orthogonality_rho_null": float(np.sum((residuals @ basis) ** 2) / max(np.sum(residuals**2), 1e-12)),
        "intra_species_norm": float(np.sqrt(total / len(d))),
        "embedding_effective_rank": effective_rank(feats),
        "species_span_effective_rank": effective_rank(means),
    }
