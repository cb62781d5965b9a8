"""Dataset adapters, each giving `LabelledImages`:
- `metadata_folder`: a folder with `metadata.csv`: `filepath` plus either `class` or the 7 rank columns (and
  optionally `common_name`), the layout of the paper's annotation files;
- `image_folder`: an ImageFolder tree, `ROOT/<class name>/<image>`;
- `webdataset`: WebDataset shards (one `.tar`, a folder of them, or a catalog dataset version's split folder
  such as `shards/NAME/val`), labelled by each sample's `json` lineage (our shards) or its `cls`/`txt` member.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from taxonomy.captions import captions
from warehouse.contracts import IMAGE_SUFFIXES, RANKS, image_member


@dataclass
class LabelledImages:
    root: Path
    paths: list[Path]
    labels: list[int]
    classnames: list[str]  # one text per class for the chosen text type
    class_lineages: list[dict[str, str | None]] = field(default_factory=list)
    extra: list[dict[str, str]] = field(default_factory=list)  # other metadata columns, per image
    missing: list[str] = field(default_factory=list)  # images a benchmark's file lists but its folder lacks


def class_text(lineage: dict[str, str | None], common: str | None, text_type: str) -> str:
    """The class name as the paper's text types render it (without the `a photo of` template)."""
    if text_type == "asis":
        raise ValueError("asis needs a `class` column")
    caps = captions(lineage, common)
    text = caps[text_type]
    return text.removeprefix("a photo of ").removesuffix(".")


def load_metadata_folder(
    root: str | Path, text_type: str = "taxon", cache_dir: Path | None = None
) -> LabelledImages:
    root = Path(root)
    meta = root / "metadata.csv"
    if not meta.exists():
        raise FileNotFoundError(f"{meta} not found: expected a folder with metadata.csv (filepath + labels)")
    with open(meta, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "filepath" not in rows[0]:
        raise ValueError(f"{meta}: needs a `filepath` column")
    # The paper's annotations name the class rank `cls`; a `class` column beside it is then the binomial
    # (Rare Species), never a rank.
    rank_cols = {r: ("cls" if r == "class" and "cls" in rows[0] else r) for r in RANKS}
    has_ranks = all(c in rows[0] for c in rank_cols.values())
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
            lineage = {r: (row[c] or None) for r, c in rank_cols.items()}
            key = "|".join(lineage[r] or "" for r in RANKS)
            if "com" in text_type:  # the class is the whole text: one lineage, two common names, two classes
                key += "|" + (row.get("common_name") or "")
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
    extra = [{k: v for k, v in r.items() if k not in ("filepath", *rank_cols.values())} for r in rows]
    return LabelledImages(root, [root / r["filepath"] for r in rows], labels, names, lineages, extra)


def load_image_folder(
    root: str | Path, text_type: str = "asis", cache_dir: Path | None = None
) -> LabelledImages:
    """`ROOT/<class>/<image>`: classes are the sub-folder names (underscores read as spaces), sorted."""
    root = Path(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    paths, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            paths.append(file)
            labels.append(label)
    if not paths:
        raise FileNotFoundError(f"{root}: no ROOT/<class>/<image> files found")
    names = [c.replace("_", " ") for c in classes]
    return LabelledImages(root, paths, labels, names, [{} for _ in classes], [{} for _ in paths])


def load_webdataset(
    root: str | Path, text_type: str = "taxon", cache_dir: Path | None = None
) -> LabelledImages:
    """WebDataset shards; images are written once to `cache_dir` (feature extraction reads files)."""
    import webdataset as wds

    root = Path(root)
    shards = [root] if root.is_file() else sorted(root.glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"{root}: no .tar shards")
    key = hashlib.sha1("|".join(f"{s.resolve()}:{s.stat().st_mtime_ns}" for s in shards).encode()).hexdigest()
    images_dir = (cache_dir or root.parent / ".wds-cache") / f"wds-{key[:16]}"
    rows: list[dict] = []
    for sample in wds.WebDataset([str(s) for s in shards], shardshuffle=False):
        member = image_member(sample)
        if member is None:
            continue
        # Named by a hash of the key, never by the member's name: a tar can name members `/abs/x`, `../../x`.
        where = f"{sample.get('__url__')}\0{sample['__key__']}"
        digest = hashlib.sha1(where.encode("utf-8", "surrogateescape")).hexdigest()[:20]
        suffix = member.rsplit(".", 1)[-1].lower()
        path = images_dir / f"{digest}.{suffix}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(sample[member])
        meta = json.loads(sample["json"]) if "json" in sample else {}
        label = sample.get("cls", sample.get("txt", b"")).decode() if not meta else None
        rows.append({"path": path, "meta": meta, "label": label})
    if not rows:
        raise ValueError(f"{root}: shards hold no images")
    has_ranks = text_type != "asis" and all(
        rows[0]["meta"].get(r) is not None or r in rows[0]["meta"] for r in RANKS
    )
    index: dict[str, int] = {}
    lineages, commons, labels, keys = [], [], [], []
    for row in rows:
        if has_ranks:
            lineage = {r: row["meta"].get(r) for r in RANKS}
            k = "|".join(lineage[r] or "" for r in RANKS)
        else:
            lineage, k = {}, row["label"] or row["meta"].get("scientific_name") or ""
        if k not in index:
            index[k] = len(keys)
            keys.append(k)
            lineages.append(lineage)
            commons.append(row["meta"].get("common_name"))
        labels.append(index[k])
    names = (
        [class_text(lin, com, text_type) for lin, com in zip(lineages, commons, strict=True)]
        if has_ranks
        else keys
    )
    extra = [{k: str(v) for k, v in r["meta"].items() if k not in RANKS} for r in rows]
    return LabelledImages(root, [r["path"] for r in rows], labels, names, lineages, extra)


def detect_adapter(path: str | Path) -> str:
    """The adapter a path looks like: `metadata.csv` inside, `.tar` shards, or class sub-folders."""
    path = Path(path)
    if (path / "metadata.csv").exists():
        return "metadata_folder"
    if path.suffix == ".tar" or any(path.glob("*.tar")):
        return "webdataset"
    if path.is_dir() and any(p.is_dir() for p in path.iterdir()):
        return "image_folder"
    raise ValueError(f"{path}: neither metadata.csv, .tar shards nor ROOT/<class>/<image> folders")
