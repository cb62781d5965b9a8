"""Dataset adapters. A folder with `metadata.csv`: `filepath` plus either `class` or the 7 rank columns
(and optionally `common_name`), the layout of the paper's annotation files."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from taxonomy.captions import RANKS7, captions


@dataclass
class LabelledImages:
    root: Path
    paths: list[Path]
    labels: list[int]
    classnames: list[str]  # one text per class for the chosen text type
    class_lineages: list[dict[str, str | None]] = field(default_factory=list)
    extra: list[dict[str, str]] = field(default_factory=list)  # other metadata columns, per image


def class_text(lineage: dict[str, str | None], common: str | None, text_type: str) -> str:
    """The class name as the paper's text types render it (without the `a photo of` template)."""
    if text_type == "asis":
        raise ValueError("asis needs a `class` column")
    caps = captions(lineage, common)
    text = caps[text_type]
    return text.removeprefix("a photo of ").removesuffix(".")


def load_metadata_folder(root: str | Path, text_type: str = "taxon") -> LabelledImages:
    root = Path(root)
    meta = root / "metadata.csv"
    if not meta.exists():
        raise FileNotFoundError(f"{meta} not found: expected a folder with metadata.csv (filepath + labels)")
    with open(meta, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "filepath" not in rows[0]:
        raise ValueError(f"{meta}: needs a `filepath` column")
    has_ranks = all(r in rows[0] for r in RANKS7)
    keys, lineages, commons = [], [], []
    index: dict[str, int] = {}
    labels = []
    for row in rows:
        if text_type == "asis" or not has_ranks:
            if "class" not in row:
                raise ValueError(f"{meta}: needs a `class` column or the 7 rank columns")
            key = row["class"]
            lineage: dict[str, str | None] = {}
        else:
            lineage = {r: (row[r] or None) for r in RANKS7}
            key = "|".join(lineage[r] or "" for r in RANKS7)
        if key not in index:
            index[key] = len(keys)
            keys.append(key)
            lineages.append(lineage)
            commons.append(row.get("common_name") or None)
        labels.append(index[key])
    if text_type == "asis" or not has_ranks:
        names = keys
    else:
        names = [class_text(lin, com, text_type) for lin, com in zip(lineages, commons, strict=True)]
    extra = [{k: v for k, v in r.items() if k not in ("filepath", *RANKS7)} for r in rows]
    return LabelledImages(root, [root / r["filepath"] for r in rows], labels, names, lineages, extra)
