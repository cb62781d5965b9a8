"""Embedding plots written as PNG files: 2-D maps (PCA and t-SNE) coloured by a rank or a trait, and the 3-D
view of intra-species variant directions against the plane of the species means."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def embedding_maps(
    features: np.ndarray, colour_by: dict[str, list[str]], out_dir: Path, seed: int = 0
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    out_dir.mkdir(parents=True, exist_ok=True)
    maps = {"pca": PCA(n_components=2, random_state=seed).fit_transform(features)}
    perplexity = max(5.0, min(30.0, (len(features) - 1) / 3))
    maps["tsne"] = TSNE(n_components=2, random_state=seed, perplexity=perplexity, init="pca").fit_transform(
        features
    )
    paths = []
    for method, xy in maps.items():
        for name, values in colour_by.items():
            cats = sorted(set(values))
            colours = {c: plt.cm.tab20(i % 20) for i, c in enumerate(cats)}
            fig, ax = plt.subplots(figsize=(6, 5))
            for c in cats:
                mask = np.array([v == c for v in values])
                ax.scatter(
                    xy[mask, 0], xy[mask, 1], s=10, color=colours[c], label=c if len(cats) <= 12 else None
                )
            ax.set_title(f"{method.upper()} of image embeddings, coloured by {name}")
            if len(cats) <= 12:
                ax.legend(fontsize=7, markerscale=2)
            path = out_dir / f"{method}_{name}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


def variant_basis(
    features: np.ndarray, species: np.ndarray, variant: np.ndarray
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """A 3 x d basis: the top two directions of the species means, then the mean intra-species variant
    direction with its part in that plane removed; and, per species with both variants, the two variant means."""
    values = sorted(set(variant.tolist()))
    if len(values) != 2:
        raise ValueError(f"the 3-D view needs exactly two variant values, got {values}")
    species_ids = sorted(set(species.tolist()))
    means = np.stack([features[species == s].mean(axis=0) for s in species_ids])
    _, _, vt = np.linalg.svd(means - means.mean(axis=0), full_matrices=False)
    plane = vt[:2]
    pairs = []
    for s in species_ids:
        a, b = (features[(species == s) & (variant == v)] for v in values)
        if len(a) and len(b):
            pairs.append((b.mean(axis=0), a.mean(axis=0)))
    direction = np.mean([a - b for b, a in pairs], axis=0) if pairs else vt[2]
    off_plane = direction - plane.T @ (plane @ direction)
    if np.linalg.norm(off_plane) < 1e-9:  # the variant lies in the plane: show the next species direction
        off_plane = vt[2] if len(vt) > 2 else np.zeros_like(direction)
    third = off_plane / max(np.linalg.norm(off_plane), 1e-12)
    return np.vstack([plane, third]), pairs


def variant_directions_3d(features: np.ndarray, species: np.ndarray, variant: np.ndarray, path: Path) -> Path:
    """Species means as points in (species direction 1, 2, variant direction off the plane); an arrow per
    species from one variant's mean to the other's. Arrows along the third axis mean the variant is orthogonal
    to the species plane; arrows lying flat mean it is entangled with species identity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    basis, pairs = variant_basis(features, species, variant)
    centre = features.mean(axis=0)
    fig = plt.figure(figsize=(6.5, 5.5))
    ax = fig.add_subplot(projection="3d")
    for b, a in pairs:
        p, q = basis @ (b - centre), basis @ (a - centre)
        ax.scatter(*p, color="tab:blue", s=14)
        ax.scatter(*q, color="tab:orange", s=14)
        ax.quiver(*p, *(q - p), color="grey", linewidth=0.8, arrow_length_ratio=0.15)
    values = sorted(set(variant.tolist()))
    ax.scatter([], [], [], color="tab:blue", label=str(values[0]))
    ax.scatter([], [], [], color="tab:orange", label=str(values[1]))
    ax.set_xlabel("species direction 1")
    ax.set_ylabel("species direction 2")
    ax.set_zlabel("variant direction (off the plane)")
    ax.set_title("Intra-species variant against the species plane")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
