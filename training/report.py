"""What a person reads after a training run: the loss curve of `metrics.jsonl` as a PNG."""

from __future__ import annotations

import io
import json
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loss_curve_png(metrics: list[dict], title: str) -> bytes:
    """Biology and replay loss against the step (replay only when it was on), as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(steps, [m["loss_bio"] for m in metrics], marker=".", label="biology (InfoNCE)")
    if any(m.get("loss_replay") for m in metrics):
        ax.plot(steps, [m["loss_replay"] for m in metrics], marker=".", label="replay (InfoNCE)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
