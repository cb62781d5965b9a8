"""2-D embedding maps (PCA and t-SNE) coloured by a rank or a trait, written as PNG files."""

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
