"""Zero-shot prediction among the taxa of the catalog (or a label file): top-k per image with scores.

The label set is what the catalog's own records resolve to, at the chosen rank, optionally within a clade
(`--within "order = 'Lepidoptera'"`, an expression over the 7 rank columns, run on a locked-down
connection), so the classes are the ones this corpus can speak for; each class's text is the paper's caption
form of its lineage (`taxon_com` by default: "a photo of Animalia Arthropoda ... with common name ...")."""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from evaluation.tasks import resolve_model
from taxonomy.captions import captions
from warehouse.catalog import Catalog, check_expression, lock_down
from warehouse.contracts import CAPTION_TYPES, MODEL_SPEC_HELP, RANKS


@dataclass(frozen=True)
class Label:
    text: str  # what the text encoder reads
    name: str  # what the output says
    lineage: dict[str, str | None]


@dataclass(frozen=True)
class PredictConfig:
    """`tol predict`: which model, which labels (the catalog's taxa at `rank`, inside `within`, or a label
    file) and how many per image."""

    images: tuple[str, ...] = field(metadata={"help": "image files", "positional": True})
    model: str = field(metadata={"help": MODEL_SPEC_HELP})
    rank: str = field(default="species", metadata={"help": "the rank of the labels", "choices": RANKS})
    within: str | None = field(
        default=None,
        metadata={"help": "a clade, as an expression over the rank columns, e.g. \"order = 'Lepidoptera'\""},
    )
    labels: str | None = field(
        default=None, metadata={"help": "a file of labels, one per line, instead of the catalog's taxa"}
    )
    text_type: str = field(
        default="taxon_com", metadata={"help": "the caption form of a label", "choices": CAPTION_TYPES}
    )
    k: int = field(default=5, metadata={"help": "labels per image"})
    out: str | None = field(default=None, metadata={"help": "write the CSV here (default: stdout)"})


def catalog_labels(
    catalog: Catalog,
    rank: str = PredictConfig.rank,
    within: str | None = None,
    text_type: str = PredictConfig.text_type,
) -> list[Label]:
    """One label per distinct lineage down to `rank` among the taxa the catalog's records resolve to."""
    if rank not in RANKS:
        raise ValueError(f"rank must be one of {', '.join(RANKS)}, not {rank!r}")
    if text_type not in CAPTION_TYPES:
        raise ValueError(f"text type must be one of {', '.join(CAPTION_TYPES)}, not {text_type!r}")
    upto = RANKS[: RANKS.index(rank) + 1]
    cols = ", ".join(f't."{r}"' for r in upto)
    where = f"AND ({check_expression(within, '--within')})" if within else ""
    common = "max(t.common_name) FILTER (WHERE t.taxon_rank = ?)"
    sql = f"""SELECT {cols}, {common} AS common_name
              FROM resolutions s JOIN taxa t ON t.taxon_id = s.taxon_id AND t.backbone_version = s.backbone_version
              WHERE t."{rank}" IS NOT NULL {where}
              GROUP BY ALL ORDER BY ALL"""
    with catalog.snapshot() as con:
        lock_down(con, catalog.home)  # `within` is a user's text
        rows = con.execute(sql, [rank]).fetchall()
    out = []
    for row in rows:
        lineage = {r: row[i] for i, r in enumerate(upto)} | dict.fromkeys(RANKS[len(upto) :])
        caps = captions(lineage, row[-1])
        out.append(Label(caps[text_type], caps["scientific_name"] or str(row[len(upto) - 1]), lineage))
    if not out:
        raise LookupError(
            f"no taxa at rank {rank}" + (f" within {within!r}" if within else "") + " in the catalog"
        )
    return out


def file_labels(path: str | Path) -> list[Label]:
    """A custom label list: one name per line (blank lines and `#` comments skipped), read as 'a photo of NAME.'."""
    names = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    names = list(dict.fromkeys(n for n in names if n and not n.startswith("#")))
    if not names:
        raise ValueError(f"{path}: no labels")
    return [Label(f"a photo of {n}.", n, {}) for n in names]


def predict(
    model_spec: str, images: list[str | Path], labels: list[Label], k: int = PredictConfig.k
) -> list[dict[str, Any]]:
    """Top-k labels per image: rows of image, rank (1..k), label, score (softmax over the label set)."""
    import torch  # only when predicting: the CLI reads PredictConfig without it

    from evaluation.zero_shot import image_features, load_model

    m = load_model(model_spec)
    with torch.no_grad():
        feats = torch.from_numpy(image_features(m, [Path(p) for p in images], progress=False))
        texts = m.model.encode_text(m.tokenizer([lab.text for lab in labels]))
        texts = torch.nn.functional.normalize(texts, dim=-1)
        scale = float(m.model.logit_scale.exp()) if hasattr(m.model, "logit_scale") else 100.0
        probs = torch.softmax(scale * feats @ texts.T, dim=-1).numpy()
    k = min(k, len(labels))
    rows = []
    for i, path in enumerate(images):
        for place, j in enumerate(np.argsort(-probs[i])[:k], start=1):
            lab = labels[int(j)]
            rows.append({"image": str(path), "rank": place, "label": lab.name, "score": round(float(probs[i, j]), 6),
                         **{r: lab.lineage.get(r) for r in RANKS if lab.lineage}})  # fmt: skip
    return rows


def write_csv(rows: list[dict[str, Any]], out: TextIO | None = None) -> None:
    fh = out or sys.stdout
    fields = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(fh, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


def run_predict(catalog: Catalog, cfg: PredictConfig) -> tuple[list[dict[str, Any]], int]:
    """The rows `predict` gives for `cfg.images`, and how many labels they were chosen among."""
    labels = (
        file_labels(cfg.labels)
        if cfg.labels
        else catalog_labels(catalog, cfg.rank, cfg.within, cfg.text_type)
    )
    spec, _ = resolve_model(catalog, cfg.model)
    return predict(spec, list(cfg.images), labels, k=cfg.k), len(labels)
