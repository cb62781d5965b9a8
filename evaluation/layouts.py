"""Readers for the BioCLIP 2 benchmarks, each in the layouts it is published in.

Every reader takes the benchmark's root folder and returns plain arrays of image paths and labels. A missing
or malformed file raises `LayoutError` naming what is expected where. Images that a file lists but the folder
lacks are matched one by one (Unicode NFC/NFD variants and mis-encoded names are tried) and those still not
found are left out and reported in `missing`; only when more than `MAX_MISSING_SHARE` of the listed images
are absent does the reader fail, since then the layout or the download is wrong rather than a few files.

Where each layout was read from is noted on its reader; the test fixtures are copies of those real files.
Class texts follow the paper: `asis` (the distributed class name, verbatim) for NABirds and Meta-Album, the
upstream `taxon_com` text for the camera traps and Rare Species.
"""

from __future__ import annotations

import csv
import json
import pickle
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import ftfy
import numpy as np

from evaluation.datasets import LabelledImages
from taxonomy.captions import captions
from warehouse.contracts import IMAGE_SUFFIXES, RANKS

# A reader scores a benchmark with up to this share of its listed images absent, and reports them.
MAX_MISSING_SHARE = 0.10
MISSING_EXAMPLES = 5  # how many absent paths a report names


class LayoutError(FileNotFoundError):
    """A benchmark folder lacks a file (or column) its published layout has."""

    def __init__(self, benchmark: str, root: Path, expected: str, problem: str) -> None:
        super().__init__(f"{benchmark}: {problem} under {root}; expected {expected}")
        self.benchmark = benchmark


@dataclass
class TrainTest:
    """Two image sets with targets: class ids of shape (n,) or 0/1 traits of shape (n, L)."""

    train_paths: list[Path]
    train_y: np.ndarray
    test_paths: list[Path]
    test_y: np.ndarray
    label_names: list[str]
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows left out, reported with results
    missing: list[str] = field(default_factory=list)  # listed images not found
    # PlantDoc: the class ids the paper's code gives each side (numbered per side), for its figure
    upstream_y: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class BinaryTasks:
    """NeWT: one image list; each image belongs to one binary task, with a 0/1 label and a split."""

    paths: list[Path]
    task: np.ndarray
    label: np.ndarray
    is_train: np.ndarray
    missing: list[str] = field(default_factory=list)


@dataclass
class DiscoverySplit:
    """Herbarium19 for generalised category discovery: train images with class ids and the 'Old' classes."""

    paths: list[Path]
    labels: np.ndarray
    old_classes: np.ndarray
    n_classes: int
    missing: list[str] = field(default_factory=list)


def _need(benchmark: str, root: Path, expected: str, *paths: Path) -> None:
    missing = [str(p.relative_to(root)) for p in paths if not p.exists()]
    if missing:
        raise LayoutError(benchmark, root, expected, f"missing {', '.join(missing)}")


def _read_csv(
    benchmark: str, root: Path, expected: str, path: Path
) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV as published (BOM, CRLF and quoting handled by the csv module)."""
    _need(benchmark, root, expected, path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    if not rows:
        raise LayoutError(benchmark, root, expected, f"{path.name} has no rows")
    return header, rows


def _rows(benchmark: str, root: Path, expected: str, path: Path, columns: list[str]) -> list[dict[str, str]]:
    header, rows = _read_csv(benchmark, root, expected, path)
    lacking = [c for c in columns if c not in header]
    if lacking:
        raise LayoutError(benchmark, root, expected, f"{path.name} lacks {lacking}")
    return rows


def _first_column(header: list[str], *choices: str) -> str | None:
    return next((c for c in choices if c in header), None)


def _name_variants(rel: str) -> list[str]:
    """The spellings under which a listed relative path may be on disk: as listed, NFC, NFD, and with
    mis-encoded text repaired (UTF-8 read as Latin-1/cp1252, as in some Meta-Album category names)."""
    out = []
    for form in (
        rel,
        unicodedata.normalize("NFC", rel),
        unicodedata.normalize("NFD", rel),
        ftfy.fix_text(rel),
        unicodedata.normalize("NFD", ftfy.fix_text(rel)),
    ):
        if form not in out:
            out.append(form)
    return out


def _locate(base: Path, rel: str) -> Path | None:
    """The file a listed relative path names under `base`, or None. A listed path that leads outside `base`
    (`../../secret.jpg`, `/etc/x`, a symlink out) is never read: it counts as not found, and is reported."""
    root = base.resolve()
    for form in _name_variants(rel):
        path = base / form
        if path.is_file() and path.resolve().is_relative_to(root):
            return path
    return None


def _present(
    benchmark: str, root: Path, expected: str, found: list[Path | None], listed: list[str]
) -> list[str]:
    """The listed names whose image was not found; fails when none, or too many, are there."""
    missing = [name for name, path in zip(listed, found, strict=True) if path is None]
    if listed and len(missing) == len(listed):
        raise LayoutError(
            benchmark,
            root,
            expected,
            f"none of the {len(listed)} listed images is there (first: {listed[0]})",
        )
    if len(missing) > MAX_MISSING_SHARE * len(listed):
        raise LayoutError(
            benchmark,
            root,
            expected,
            f"{len(missing)} of {len(listed)} listed images are missing (first: {missing[0]}); more than "
            f"{MAX_MISSING_SHARE:.0%} means the layout or the download is wrong",
        )
    return missing


def _image_folder(root: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """torchvision ImageFolder's order: classes sorted by folder name, files sorted within each."""
    classes = classes or sorted(d.name for d in root.iterdir() if d.is_dir())
    paths, labels = [], []
    for i, name in enumerate(classes):
        folder = root / name
        files = (
            sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if folder.is_dir()
            else []
        )
        paths += files
        labels += [i] * len(files)
    return paths, labels, classes


def _labelled(
    root: Path,
    items: Iterable[tuple[Path, str]],
    lineages: dict[str, dict[str, str | None]] | None = None,
    extra: list[dict[str, str]] | None = None,
    missing: list[str] | None = None,
) -> LabelledImages:
    """(path, class text) pairs; classes are numbered in order of first appearance, as the paper's
    `DatasetFromFile` does (`data['class'].unique()`)."""
    index: dict[str, int] = {}
    paths, labels = [], []
    for path, key in items:
        labels.append(index.setdefault(key, len(index)))
        paths.append(path)
    order = list(index)
    return LabelledImages(
        root,
        paths,
        labels,
        order,
        [lineages[k] for k in order] if lineages else [{} for _ in order],
        extra if extra is not None else [{} for _ in paths],
        missing or [],
    )


# --- species sets (zero-shot and few-shot) -------------------------------------------------------------------


def _annotation(
    benchmark: str, root: Path, expected: str, path: Path, base: Path, file_col: str, class_col: str
):
    """The paper's annotation CSV (`bioclip-2/data/annotation/*/metadata.csv`: an unnamed index column,
    `filepath` relative to `base`, `class`); each listed image located, the absent ones returned apart."""
    rows = _rows(benchmark, root, expected, path, [file_col, class_col])
    found = [_locate(base, r[file_col]) for r in rows]
    missing = _present(benchmark, root, expected, found, [r[file_col] for r in rows])
    kept = [(p, r) for p, r in zip(found, rows, strict=True) if p is not None]
    return kept, missing


def read_nabirds(root: Path) -> LabelledImages:
    """NABirds, all of its annotated images (train and test), as the paper evaluates it. Two layouts:
    - the paper's annotation `metadata.csv` (index, `filepath` relative to `images/`, `class`; 48,562 rows,
      555 classes; Imageomics/bioclip-2 `data/annotation/nabirds/metadata.csv`), or
    - Cornell's release (dl.allaboutbirds.org/nabirds): `images.txt` (image_id path), `image_class_labels.txt`,
      `classes.txt` (class_id name, the name may hold spaces) and `images/<path>`.
    Class text asis. Where the release's `train_test_split.txt` and `images.txt` are there too, each image's
    split goes in `extra` so the test-split figure is reported beside the paper's."""
    root = Path(root)
    expected = (
        "metadata.csv (filepath, class) or images.txt, image_class_labels.txt, classes.txt; and images/"
    )
    _need("NABirds", root, expected, root / "images")

    def pairs(path: Path) -> dict[str, str]:
        out = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                key, _, value = line.strip().partition(" ")
                out[key] = value.strip()
        return out

    split_of: dict[str, str] = {}
    if (root / "images.txt").exists() and (root / "train_test_split.txt").exists():
        images, split = pairs(root / "images.txt"), pairs(root / "train_test_split.txt")
        split_of = {
            rel: ("train" if split.get(i) == "1" else "test") for i, rel in images.items() if i in split
        }
    if (root / "metadata.csv").exists():
        kept, missing = _annotation(
            "NABirds", root, expected, root / "metadata.csv", root / "images", "filepath", "class"
        )
        listed = [(p, r["filepath"], r["class"]) for p, r in kept]
    else:
        files = [root / f for f in ("images.txt", "image_class_labels.txt", "classes.txt")]
        _need("NABirds", root, expected, *files)
        images, labels, classes = (pairs(f) for f in files)
        rels, names = [], []
        for image_id, rel in images.items():
            if labels.get(image_id) not in classes:
                raise LayoutError("NABirds", root, expected, f"image {image_id} has no class in classes.txt")
            rels.append(rel)
            names.append(classes[labels[image_id]])
        found = [_locate(root / "images", rel) for rel in rels]
        missing = _present("NABirds", root, expected, found, rels)
        listed = [(p, rel, n) for p, rel, n in zip(found, rels, names, strict=True) if p is not None]
    extra = [{"split": split_of[rel]} if rel in split_of else {} for _, rel, _ in listed]
    return _labelled(root, [(p, n) for p, _, n in listed], extra=extra, missing=missing)


META_ALBUM_MINI = {
    "plankton": "PLK_Mini",
    "insects": "INS_Mini",
    "insects2": "INS_2_Mini",
    "plantnet": "PLT_NET_Mini",
    "fungi": "FNG_Mini",
    "plantvillage": "PLT_VIL_Mini",
    "medleaf": "MED_LF_Mini",
}


def read_meta_album(root: Path) -> LabelledImages:
    """One Meta-Album Mini set, in either of two layouts:
    - the paper's annotation: `metadata.csv` (index, `filepath`, `class`) at the set's root or in `val/`, with
      `filepath` relative to `val/` (Imageomics/bioclip-2 `data/annotation/meta-album/<SET>/metadata.csv`);
    - the release (ihsaan-ullah/meta-album `DataFormat/`): `labels.csv` whose image and category columns
      `info.json` names (`image_column_name`, `category_column_name`; FILE_NAME and CATEGORY when absent),
      images in `images/`.
    Class texts are the category names verbatim (`Tomato___Late_blight`, NFD accents and all), as the paper's
    `asis` text type. Each listed image is matched under its NFC, NFD and repaired spellings (INS_Mini lists
    NFD names and mis-encoded ones such as `CharanÃ§ons`); images still not found are reported in `missing`."""
    root = Path(root)
    expected = "metadata.csv (filepath, class) with val/<filepath>, or labels.csv (+ info.json) with images/"
    annotation = next((p for p in (root / "metadata.csv", root / "val" / "metadata.csv") if p.exists()), None)
    if annotation is not None:
        kept, missing = _annotation(
            "Meta-Album", root, expected, annotation, root / "val", "filepath", "class"
        )
        return _labelled(root, [(p, r["class"]) for p, r in kept], missing=missing)
    image_col, category_col = "FILE_NAME", "CATEGORY"
    if (root / "info.json").exists():
        try:
            info = json.loads((root / "info.json").read_text(encoding="utf-8"))
            image_col = str(info.get("image_column_name") or image_col)
            category_col = str(info.get("category_column_name") or category_col)
        except (json.JSONDecodeError, AttributeError) as e:
            raise LayoutError("Meta-Album", root, expected, f"info.json is not a JSON object: {e}") from e
    rows = _rows("Meta-Album", root, expected, root / "labels.csv", [image_col, category_col])
    _need("Meta-Album", root, expected, root / "images")
    found = [_locate(root / "images", r[image_col]) for r in rows]
    missing = _present("Meta-Album", root, expected, found, [r[image_col] for r in rows])
    return _labelled(
        root,
        [(p, r[category_col]) for p, r in zip(found, rows, strict=True) if p is not None],
        missing=missing,
    )


# The rank columns of the paper's annotations: `cls` is the class rank; a `class` column beside it holds the
# binomial (Rare Species) and is never read as a rank.
UPSTREAM_RANK_COLUMNS = {r: ("cls" if r == "class" else r) for r in RANKS}


def upstream_lineage(row: dict[str, str], rank_columns: dict[str, str]) -> dict[str, str | None]:
    """A row's 7 ranks as the paper's `naming_eval.Taxon.to_dict` renders them: kingdom to genus capitalised,
    species lower case (the camera-trap files are all lower case)."""
    out: dict[str, str | None] = {}
    for rank, col in rank_columns.items():
        value = (row.get(col) or "").strip()
        out[rank] = (value.lower() if rank == "species" else value.capitalize()) or None
    return out


def taxon_com(lineage: dict[str, str | None], common: str | None) -> str:
    """The upstream `taxon_com` class text: `<ranks> with common name <common>`. Empty ranks are skipped
    (upstream joins them as empty strings, leaving double spaces; the class identity is the same)."""
    return captions(lineage, common)["taxon_com"].removeprefix("a photo of ").removesuffix(".")


def _rank_columns(benchmark: str, root: Path, expected: str, path: Path, header: list[str]) -> dict[str, str]:
    if "cls" in header:
        cols = UPSTREAM_RANK_COLUMNS
    else:
        cols = {r: r for r in RANKS}
    lacking = [c for c in cols.values() if c not in header]
    if lacking:
        raise LayoutError(benchmark, root, expected, f"{path.name} lacks rank columns {lacking}")
    return cols


def _ranked(
    benchmark: str,
    root: Path,
    expected: str,
    path: Path,
    base: Path,
    file_cols: tuple[str, ...],
    common_cols: tuple[str, ...],
    bases: Iterable[Path] = (),
) -> LabelledImages:
    """Rows with 7 rank columns, a common name and an image path; one class per distinct taxon_com text."""
    header, rows = _read_csv(benchmark, root, expected, path)
    file_col = _first_column(header, *file_cols)
    if file_col is None:
        raise LayoutError(benchmark, root, expected, f"{path.name} has none of the columns {list(file_cols)}")
    cols = _rank_columns(benchmark, root, expected, path, header)
    common_col = _first_column(header, *common_cols)
    search = [base, *bases]
    found = [next((p for b in search if (p := _locate(b, r[file_col])) is not None), None) for r in rows]
    missing = _present(benchmark, root, expected, found, [r[file_col] for r in rows])
    items, lineages = [], {}
    for p, r in zip(found, rows, strict=True):
        if p is None:
            continue
        lineage = upstream_lineage(r, cols)
        text = taxon_com(lineage, (r.get(common_col) or "").strip() if common_col else None)
        lineages.setdefault(text, lineage)
        items.append((p, text))
    return _labelled(root, items, lineages, missing=missing)


def read_rare_species(root: Path) -> LabelledImages:
    """Rare Species: `metadata.csv` in the paper's layout (index, kingdom, phylum, `cls`, order, family, genus,
    species (the epithet), `common_name`, `filepath` relative to the root, and `class` holding the binomial;
    Imageomics/bioclip-2 `data/annotation/rare_species/metadata.csv`), or the dataset card's (`file_name`,
    the rank named `class`, `common`; huggingface.co/datasets/imageomics/rare-species). Class text taxon_com."""
    root = Path(root)
    expected = (
        "metadata.csv (filepath or file_name, kingdom ... species with cls or class, common_name or common)"
    )
    return _ranked(
        "Rare Species",
        root,
        expected,
        root / "metadata.csv",
        root,
        ("filepath", "file_name"),
        ("common_name", "common"),
    )


CAMERA_TRAP_SETS = ("desert-lion", "ENA24", "island", "ohio-small-animals", "orinoquia")


def read_camera_traps(root: Path) -> dict[str, LabelledImages]:
    """IDLE-OO Camera Traps (huggingface.co/datasets/imageomics/IDLE-OO-Camera-Traps): five class-balanced
    LILA BC sets, each `<set>-balanced.csv` beside `data/test/`. Columns as in the real files
    (Imageomics/biocap `data/classification_annotation/camera_trap/`): the rank columns with `cls` for the
    class rank, all lower case, `common_name`, and `filepath` = `<set>/<image>` relative to `data/test/`.
    Each set is its own benchmark, as the paper evaluates them (32 + 20 + 33 + 39 + 28 = 152 classes); a
    class is the whole taxon_com text, so two common names on one lineage stay two classes."""
    root = Path(root)
    expected = "<set>-balanced.csv (filepath, kingdom ... species with cls, common_name) and data/test/<set>/"
    found = [s for s in CAMERA_TRAP_SETS if (root / f"{s}-balanced.csv").exists()]
    if not found:
        raise LayoutError(
            "Camera Traps", root, expected, f"none of {[f'{s}-balanced.csv' for s in CAMERA_TRAP_SETS]}"
        )
    _need("Camera Traps", root, expected, root / "data/test")
    return {
        s: _ranked(
            f"Camera Traps {s}",
            root,
            expected,
            root / f"{s}-balanced.csv",
            root / "data/test",
            ("filepath", "file_name"),
            ("common_name",),
            bases=[root / "data/test" / s],  # a copy whose filepath omits the set folder
        )
        for s in found
    }


# --- other tasks ---------------------------------------------------------------------------------------------

FISHNET_LABELS = (
    "FeedingPath",
    "Tropical",
    "Temperate",
    "Subtropical",
    "Boreal",
    "Polar",
    "freshwater",
    "saltwater",
    "brackish",
)
FISHNET_FEEDING = {"pelagic": 1, "benthic": 0}


def read_fishnet(root: Path) -> TrainTest:
    """FishNet (Khan et al., ICCV 2023; faixan-khan/FishNet `anns/train.csv`, `anns/test.csv`): 25 columns
    with a header (`,Unnamed: 0,species,image,SpecCode,...,Folder,...`), read by name: the image is the last
    part of `image` (a file name or a fishbase URL), its folder `Folder`, at `Image_Library/<Folder>/<image>`;
    the nine trait columns named in FISHNET_LABELS (FeedingPath pelagic=1 / benthic=0, the rest 0/1). Rows
    with an empty trait are left out and counted, as the paper's code filters them. (That code reads columns
    5 and 14 of a polars frame to which it added a row index, i.e. `image` and `Folder`.)"""
    root = Path(root)
    expected = "train.csv, test.csv (image, Folder and the 9 trait columns) and Image_Library/<Folder>/"
    out = []
    dropped: dict[str, int] = {}
    missing: list[str] = []
    for name in ("train.csv", "test.csv"):
        path = root / name
        _need("FishNet", root, expected, path, root / "Image_Library")
        header, rows = _read_csv("FishNet", root, expected, path)
        lacking = [c for c in ("image", "Folder", *FISHNET_LABELS) if c not in header]
        if lacking:
            raise LayoutError("FishNet", root, expected, f"{name} lacks {lacking}")
        listed, found, targets = [], [], []
        for line_no, row in enumerate(rows, start=2):
            if None in row or any(row[c] is None for c in header):
                raise LayoutError(
                    "FishNet",
                    root,
                    expected,
                    f"{name} line {line_no} does not have the header's {len(header)} columns",
                )
            values = [row[c].strip() for c in FISHNET_LABELS]
            if any(v == "" for v in values):
                dropped[f"{name}: empty trait"] = dropped.get(f"{name}: empty trait", 0) + 1
                continue
            feeding = FISHNET_FEEDING.get(values[0].lower())
            if feeding is None:
                raise LayoutError(
                    "FishNet",
                    root,
                    expected,
                    f"{name} line {line_no}: FeedingPath {values[0]!r} is not pelagic/benthic",
                )
            try:
                traits = [feeding, *(int(float(v)) for v in values[1:])]
            except ValueError as e:
                raise LayoutError("FishNet", root, expected, f"{name} line {line_no}: {e}") from e
            rel = f"{row['Folder']}/{row['image'].split('/')[-1]}"
            listed.append(rel)
            found.append(_locate(root / "Image_Library", rel))
            targets.append(traits)
        missing += _present("FishNet", root, expected, found, listed)
        keep = [i for i, p in enumerate(found) if p is not None]
        y = np.array(targets, dtype=np.int64).reshape(-1, len(FISHNET_LABELS))[keep]
        out.append(([found[i] for i in keep], y))
    (trp, tr), (tep, te) = out
    return TrainTest(trp, tr, tep, te, list(FISHNET_LABELS), dropped, missing)


def read_awa2(root: Path) -> TrainTest:
    """Animals with Attributes 2 (cvml.ista.ac.at/AwA2) as released: `classes.txt` and `predicates.txt`
    (`<index>\\t<name>` per line), `predicate-matrix-binary.txt` (one row of 85 0/1 per class, in classes.txt
    order), `trainclasses.txt` / `testclasses.txt` (the standard 40/10 split, one name per line) and
    `JPEGImages/<class>/<image>`. Every image carries its class's 85 attributes."""
    root = Path(root)
    expected = "classes.txt, predicates.txt, predicate-matrix-binary.txt, trainclasses.txt, testclasses.txt, JPEGImages/"
    names = (
        "classes.txt",
        "predicates.txt",
        "predicate-matrix-binary.txt",
        "trainclasses.txt",
        "testclasses.txt",
    )
    _need("AwA2", root, expected, *(root / n for n in names), root / "JPEGImages")

    def names_of(path: Path) -> list[str]:
        # the released files are "<index>\t<name>"; a file of bare names reads the same
        return [line.split()[-1] for line in path.read_text().splitlines() if line.strip()]

    classes, predicates = names_of(root / "classes.txt"), names_of(root / "predicates.txt")
    matrix = np.loadtxt(root / "predicate-matrix-binary.txt", dtype=np.int64, ndmin=2)
    if matrix.shape != (len(classes), len(predicates)):
        raise LayoutError(
            "AwA2",
            root,
            expected,
            f"predicate matrix is {matrix.shape}, not {len(classes)} x {len(predicates)}",
        )
    row_of = {c: i for i, c in enumerate(classes)}
    sides = []
    for split in ("trainclasses.txt", "testclasses.txt"):
        subset = names_of(root / split)
        unknown = [c for c in subset if c not in row_of]
        if unknown:
            raise LayoutError("AwA2", root, expected, f"{split} names classes not in classes.txt: {unknown}")
        paths, labels, _ = _image_folder(root / "JPEGImages", subset)
        if not paths:
            raise LayoutError("AwA2", root, expected, f"no images for the classes of {split}")
        sides.append((paths, matrix[[row_of[subset[i]] for i in labels]]))
    (trp, tr), (tep, te) = sides
    return TrainTest(trp, tr, tep, te, predicates)


def read_newt(root: Path) -> BinaryTasks:
    """NeWT (github.com/visipedia/newt): `newt2021_labels.csv`, columns in the release's order `id,
    task_cluster, task_subcluster, task, label, text_label, split, height, width` (read by name: id, task,
    label 0/1, split train/test) and `newt2021_images/<id>.jpg`."""
    root = Path(root)
    expected = "newt2021_labels.csv (id, task, label, split) and newt2021_images/<id>.jpg"
    rows = _rows("NeWT", root, expected, root / "newt2021_labels.csv", ["id", "task", "label", "split"])
    _need("NeWT", root, expected, root / "newt2021_images")
    bad = next((i for i, r in enumerate(rows, start=2) if r["label"].strip() not in ("0", "1")), None)
    if bad is not None:
        raise LayoutError("NeWT", root, expected, f"newt2021_labels.csv line {bad}: label is not 0 or 1")
    listed = [f"{r['id']}.jpg" for r in rows]
    found = [_locate(root / "newt2021_images", rel) for rel in listed]
    missing = _present("NeWT", root, expected, found, listed)
    keep = [(p, r) for p, r in zip(found, rows, strict=True) if p is not None]
    return BinaryTasks(
        [p for p, _ in keep],
        np.array([r["task"] for _, r in keep]),
        np.array([int(r["label"]) for _, r in keep]),
        np.array([r["split"].strip() == "train" for _, r in keep]),
        missing,
    )


class _SplitUnpickler(pickle.Unpickler):
    """The class-split pickle holds lists or numpy arrays of ints; nothing else may be built from it."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"class splits may not build {module}.{name}")


HERBARIUM_SPLITS = "herbarium_19_class_splits.pkl"


def read_herbarium19(root: Path) -> DiscoverySplit:
    """Herbarium 2019 (FGVC6) `small-train/<category>/<image>` as an ImageFolder (classes in sorted folder-name
    order), with the generalised-category-discovery class split of Vaze et al. (github.com/sgvaze/
    generalized-category-discovery, `herbarium_19_class_splits.pkl`: 'Old' and 'New' class indices), placed at
    the root (the paper's code ships it as `src/evaluation/herbarium_19_class_splits.pkl`: 341 Old and 342 New
    of the 683 classes). The pickle is read with an unpickler that only builds ints, lists, dicts and numpy
    arrays. Against the paper's `herbarium19.py`: it also opens `small-validation/` as an ImageFolder (so it
    fails without one) but never scores it; it scores the unlabelled `small-train` images, as we do, after
    labelling 80% of the Old-class images (numpy seed 0, drawn once). We do not need `small-validation/`."""
    root = Path(root)
    expected = f"small-train/<category>/<image> and {HERBARIUM_SPLITS} (keys Old, New)"
    _need("Herbarium19", root, expected, root / "small-train", root / HERBARIUM_SPLITS)
    try:
        with open(root / HERBARIUM_SPLITS, "rb") as fh:
            splits = _SplitUnpickler(fh).load()
        old, new = np.asarray(splits["Old"], dtype=np.int64), np.asarray(splits["New"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as e:
        raise LayoutError("Herbarium19", root, expected, f"{HERBARIUM_SPLITS} unreadable: {e}") from e
    paths, labels, classes = _image_folder(root / "small-train")
    n = len(old) + len(new)
    if not paths or len(classes) != n or set(old.tolist()) | set(new.tolist()) != set(range(n)):
        raise LayoutError(
            "Herbarium19", root, expected, f"{len(classes)} class folders, but Old + New name {n} classes"
        )
    return DiscoverySplit(paths, np.array(labels), old, n)


def read_plantdoc(root: Path) -> TrainTest:
    """PlantDoc (github.com/pratikkayal/PlantDoc-Dataset): `train/<class>/` and `test/<class>/` ImageFolders.
    The released train side has 28 class folders and test 27, so class ids come from the union of both
    sides' folder names, sorted. The paper's code numbers each side on its own (two torchvision ImageFolders),
    so its ids disagree between sides after the first class a side lacks; those ids are kept in `upstream_y`
    for its figure."""
    root = Path(root)
    expected = "train/<class>/<image> and test/<class>/<image>"
    _need("PlantDoc", root, expected, root / "train", root / "test")
    sides = {s: sorted(d.name for d in (root / s).iterdir() if d.is_dir()) for s in ("train", "test")}
    classes = sorted(set(sides["train"]) | set(sides["test"]))
    trp, trl, _ = _image_folder(root / "train", classes)
    tep, tel, _ = _image_folder(root / "test", classes)
    if not trp or not tep:
        raise LayoutError("PlantDoc", root, expected, "no images on one side")
    upstream = tuple(
        np.array([sides[s].index(classes[i]) for i in labels])
        for s, labels in (("train", trl), ("test", tel))
    )
    return TrainTest(trp, np.array(trl), tep, np.array(tel), classes, upstream_y=upstream)


# --- registered analyses over user folders --------------------------------------------------------------------


def read_darwin_finches(root: Path) -> LabelledImages:
    """The TreeOfLife-200M release's `metadata/Darwin-finches.csv` (uuid, scientific_name, filepath,
    common_name, group), at `root/` or `root/metadata/`; `filepath` is relative to root. Classes are species."""
    root = Path(root)
    expected = "Darwin-finches.csv or metadata/Darwin-finches.csv (scientific_name, filepath)"
    path = next(
        (p for p in (root / "Darwin-finches.csv", root / "metadata/Darwin-finches.csv") if p.exists()), None
    )
    rows = _rows(
        "Darwin's finches",
        root,
        expected,
        path or root / "Darwin-finches.csv",
        ["scientific_name", "filepath"],
    )
    found = [_locate(root, r["filepath"]) for r in rows]
    missing = _present("Darwin's finches", root, expected, found, [r["filepath"] for r in rows])
    items = [(p, r["scientific_name"].strip()) for p, r in zip(found, rows, strict=True) if p is not None]
    return _labelled(root, items, missing=missing)
