"""Readers for the BioCLIP 2 benchmarks, each in the layout it is distributed in.

Every reader takes the benchmark's root folder and returns plain arrays of image paths and labels; a missing or
malformed file raises `LayoutError` naming what is expected where. Where each layout was found is noted on its
reader. Class texts follow the paper: `asis` (the distributed class name) for NABirds and Meta-Album,
`taxon_com` for the camera traps and Rare Species.
"""

from __future__ import annotations

import csv
import pickle
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from evaluation.datasets import LabelledImages, class_text
from warehouse.contracts import IMAGE_SUFFIXES, RANKS


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


@dataclass
class BinaryTasks:
    """NeWT: one image list; each image belongs to one binary task, with a 0/1 label and a split."""

    paths: list[Path]
    task: np.ndarray
    label: np.ndarray
    is_train: np.ndarray


@dataclass
class DiscoverySplit:
    """Herbarium19 for generalised category discovery: train images with class ids and the 'Old' classes."""

    paths: list[Path]
    labels: np.ndarray
    old_classes: np.ndarray
    n_classes: int


def _need(benchmark: str, root: Path, expected: str, *paths: Path) -> None:
    missing = [str(p.relative_to(root)) for p in paths if not p.exists()]
    if missing:
        raise LayoutError(benchmark, root, expected, f"missing {', '.join(missing)}")


def _rows(benchmark: str, root: Path, expected: str, path: Path, columns: list[str]) -> list[dict[str, str]]:
    _need(benchmark, root, expected, path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    have = list(rows[0]) if rows else []
    lacking = [c for c in columns if c not in have]
    if not rows or lacking:
        raise LayoutError(
            benchmark,
            root,
            expected,
            f"{path.name} has no rows" if not rows else f"{path.name} lacks {lacking}",
        )
    return rows


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
    root: Path, paths: list[Path], keys: list[str], names: dict[str, str], lineages=None
) -> LabelledImages:
    index: dict[str, int] = {}
    for k in keys:
        index.setdefault(k, len(index))
    order = list(index)
    return LabelledImages(
        root,
        paths,
        [index[k] for k in keys],
        [names[k] for k in order],
        [lineages[k] for k in order] if lineages else [{} for _ in order],
        [{} for _ in paths],
    )


def _check_files(benchmark: str, root: Path, expected: str, paths: list[Path]) -> None:
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise LayoutError(
            benchmark, root, expected, f"{len(missing)} listed images are missing (first: {missing[0]})"
        )


# --- species sets (zero-shot and few-shot) -------------------------------------------------------------------


def read_nabirds(root: Path) -> LabelledImages:
    """NABirds as Cornell distributes it (CUB-style): `images.txt` (image_id path), `image_class_labels.txt`
    (image_id class_id), `classes.txt` (class_id name, the name may hold spaces), `train_test_split.txt`
    (image_id is_training) and `images/<path>`. The test split (is_training 0) is evaluated, class text asis.
    Layout: the NABirds README (dl.allaboutbirds.org/nabirds) and the pairing files it lists."""
    root = Path(root)
    expected = "images.txt, image_class_labels.txt, classes.txt, train_test_split.txt and images/"
    files = [
        root / f for f in ("images.txt", "image_class_labels.txt", "classes.txt", "train_test_split.txt")
    ]
    _need("NABirds", root, expected, *files, root / "images")

    def pairs(path: Path) -> dict[str, str]:
        out = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                key, _, value = line.strip().partition(" ")
                out[key] = value.strip()
        return out

    images, labels, classes, split = (pairs(f) for f in files)
    paths, keys = [], []
    for image_id, rel in images.items():
        if split.get(image_id) != "0":
            continue
        class_id = labels.get(image_id)
        if class_id not in classes:
            raise LayoutError("NABirds", root, expected, f"image {image_id} has no class in classes.txt")
        paths.append(root / "images" / rel)
        keys.append(class_id)
    if not paths:
        raise LayoutError("NABirds", root, expected, "train_test_split.txt marks no test image (0)")
    _check_files("NABirds", root, expected, paths)
    return _labelled(root, paths, keys, classes)


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
    """One Meta-Album Mini set as released (meta-album.github.io): `labels.csv` with FILE_NAME, CATEGORY,
    SUPER_CATEGORY, images in `images/FILE_NAME` (the release) or `val/CATEGORY/FILE_NAME` (the ImageFolder
    copy the BioCLIP 2 evaluation reads). Class text asis: CATEGORY with underscores as spaces. Category names
    are matched to folders after Unicode NFC normalisation (some sets mix composed and decomposed accents)."""
    root = Path(root)
    expected = "labels.csv (FILE_NAME, CATEGORY) and images/FILE_NAME or val/CATEGORY/FILE_NAME"
    rows = _rows("Meta-Album", root, expected, root / "labels.csv", ["FILE_NAME", "CATEGORY"])
    val = root / "val"
    folders = {unicodedata.normalize("NFC", d.name): d.name for d in val.iterdir()} if val.is_dir() else {}
    paths, keys = [], []
    for row in rows:
        cat, name = row["CATEGORY"], row["FILE_NAME"]
        flat = root / "images" / name
        nested = val / folders.get(unicodedata.normalize("NFC", cat), cat) / name
        paths.append(flat if flat.exists() or not nested.exists() else nested)
        keys.append(cat)
    _check_files("Meta-Album", root, expected, paths)
    return _labelled(root, paths, keys, {k: k.replace("_", " ") for k in keys})


def _ranked(
    benchmark: str, root: Path, expected: str, located: list[tuple[dict[str, str], Path]], common_col: str
):
    """Classes from the 7 rank columns of each (row, image path), named by their taxon_com text."""
    paths, keys, lineages, names = [], [], {}, {}
    for row, path in located:
        lineage = {r: (row.get(r) or "").strip() or None for r in RANKS}
        key = "|".join(lineage[r] or "" for r in RANKS)
        if key not in names:
            lineages[key] = lineage
            names[key] = class_text(lineage, row.get(common_col), "taxon_com")
        paths.append(path)
        keys.append(key)
    _check_files(benchmark, root, expected, paths)
    return _labelled(root, paths, keys, names, lineages)


def read_rare_species(root: Path) -> LabelledImages:
    """Rare Species (huggingface.co/datasets/imageomics/rare-species): `metadata.csv` with `file_name`
    (`dataset/<lineage>/<content id>_<page id>_eol_full-size-copy.jpg`), the 7 rank columns (species is the
    epithet) and `common`. Class text taxon_com."""
    root = Path(root)
    expected = "metadata.csv (file_name, kingdom ... species, common) and the dataset/ folder"
    rows = _rows("Rare Species", root, expected, root / "metadata.csv", ["file_name", *RANKS, "common"])
    return _ranked("Rare Species", root, expected, [(r, root / r["file_name"]) for r in rows], "common")


CAMERA_TRAP_SETS = ("desert-lion", "ENA24", "island", "ohio-small-animals", "orinoquia")


def read_camera_traps(root: Path) -> LabelledImages:
    """IDLE-OO Camera Traps (huggingface.co/datasets/imageomics/IDLE-OO-Camera-Traps): five class-balanced
    LILA BC sets, `<set>-balanced.csv` beside `data/test/<set>/`. The card lists those files; the columns read
    here (a file name column `filepath` or `file_name` relative to `data/test/<set>/`, the 7 rank columns and
    `common_name`) are what the taxon_com text needs, and were not checked against a downloaded copy. The five
    sets are scored as one pool of classes, as the paper reports one Camera Trap figure."""
    root = Path(root)
    expected = "<set>-balanced.csv (filepath, kingdom ... species, common_name) and data/test/<set>/"
    found = [s for s in CAMERA_TRAP_SETS if (root / f"{s}-balanced.csv").exists()]
    if not found:
        raise LayoutError(
            "Camera Traps", root, expected, f"none of {[f'{s}-balanced.csv' for s in CAMERA_TRAP_SETS]}"
        )
    located = []
    for s in found:
        csv_path = root / f"{s}-balanced.csv"
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            head = next(csv.reader(fh), [])
        file_col = next((c for c in ("filepath", "file_name", "filename") if c in head), "filepath")
        rows = _rows("Camera Traps", root, expected, csv_path, [file_col, *RANKS, "common_name"])
        located += [(r, root / "data/test" / s / r[file_col]) for r in rows]
    return _ranked("Camera Traps", root, expected, located, "common_name")


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
    """FishNet (Khan et al., ICCV 2023) as the BioCLIP 2 evaluator reads it (bioclip-2
    src/evaluation/fishnet.py): `train.csv` and `test.csv`, the image name in the 5th column and its folder in
    the 14th, images at `Image_Library/<folder>/<image basename>`, the nine trait columns named in
    FISHNET_LABELS (FeedingPath pelagic=1 / benthic=0, the rest 0/1). Rows with an empty trait are left out
    and counted, as upstream filters them."""
    root = Path(root)
    expected = "train.csv, test.csv (image in column 5, folder in column 14, the 9 traits) and Image_Library/"
    out = []
    dropped: dict[str, int] = {}
    for name in ("train.csv", "test.csv"):
        path = root / name
        _need("FishNet", root, expected, path, root / "Image_Library")
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, [])
            lacking = [c for c in FISHNET_LABELS if c not in header]
            if lacking or len(header) < 14:
                raise LayoutError("FishNet", root, expected, f"{name} lacks {lacking or 'columns 5 and 14'}")
            cols = [header.index(c) for c in FISHNET_LABELS]
            paths, targets = [], []
            for line_no, row in enumerate(reader, start=2):
                if len(row) < len(header):
                    raise LayoutError(
                        "FishNet",
                        root,
                        expected,
                        f"{name} line {line_no} has {len(row)} of {len(header)} columns",
                    )
                values = [row[c].strip() for c in cols]
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
                paths.append(root / "Image_Library" / row[13] / row[4].split("/")[-1])
                targets.append(traits)
        _check_files("FishNet", root, expected, paths)
        out.append((paths, np.array(targets, dtype=np.int64).reshape(-1, len(FISHNET_LABELS))))
    (trp, tr), (tep, te) = out
    return TrainTest(trp, tr, tep, te, list(FISHNET_LABELS), dropped)


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
    """NeWT (github.com/visipedia/newt): `newt2021_labels.csv` with id, task, label, split (train/test) and
    `newt2021_images/<id>.jpg`."""
    root = Path(root)
    expected = "newt2021_labels.csv (id, task, label, split) and newt2021_images/<id>.jpg"
    rows = _rows("NeWT", root, expected, root / "newt2021_labels.csv", ["id", "task", "label", "split"])
    _need("NeWT", root, expected, root / "newt2021_images")
    paths = [root / "newt2021_images" / f"{r['id']}.jpg" for r in rows]
    _check_files("NeWT", root, expected, paths)
    return BinaryTasks(
        paths,
        np.array([r["task"] for r in rows]),
        np.array([int(r["label"]) for r in rows]),
        np.array([r["split"] == "train" for r in rows]),
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
    the root. The pickle is read with an unpickler that only builds ints, lists, dicts and numpy arrays."""
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
    """PlantDoc (github.com/pratikkayal/PlantDoc-Dataset): `train/<class>/` and `test/<class>/` ImageFolders;
    class ids from the union of both sides' folder names, sorted."""
    root = Path(root)
    expected = "train/<class>/<image> and test/<class>/<image>"
    _need("PlantDoc", root, expected, root / "train", root / "test")
    classes = sorted({d.name for side in ("train", "test") for d in (root / side).iterdir() if d.is_dir()})
    trp, trl, _ = _image_folder(root / "train", classes)
    tep, tel, _ = _image_folder(root / "test", classes)
    if not trp or not tep:
        raise LayoutError("PlantDoc", root, expected, "no images on one side")
    return TrainTest(trp, np.array(trl), tep, np.array(tel), classes)


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
    paths = [root / r["filepath"] for r in rows]
    _check_files("Darwin's finches", root, expected, paths)
    keys = [r["scientific_name"].strip() for r in rows]
    return _labelled(root, paths, keys, {k: k for k in keys})
