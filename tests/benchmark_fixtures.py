"""A data root holding every BioCLIP 2 benchmark, built from the real metadata files in tests/data/benchmarks/
(their sources, commits and line numbers are in its SOURCES.md) with a small image at each path they list.

The image paths are worked out here from each published layout, independently of evaluation.layouts, so a
reader that joins a path wrongly finds no image. A few on-disk names differ from the listed ones on purpose,
as they do in real downloads: Meta-Album INS_Mini lists NFD-decomposed and mis-encoded category names whose
folders are written here in NFC and repaired, and one listed INS_Mini image is absent.
"""

from __future__ import annotations

import csv
import shutil
import unicodedata
from pathlib import Path

import ftfy
import numpy as np
from PIL import Image

REAL = Path(__file__).parent / "data" / "benchmarks"

# PlantDoc's real folder and file names (pratikkayal/PlantDoc-Dataset @ 3f08481677ad637c7f3e3cb41127feab0635b6c6):
# the train side has a class the test side lacks, so the sides number their classes differently.
PLANTDOC = {
    "train": {
        "Apple Scab Leaf": ["816.jpg", "28-500x375.jpg"],
        "Apple leaf": ["apple-leaf-14319997.jpg", "apple-leaf-9834637.jpg"],
        "Tomato two spotted spider mites leaf": [
            "SpotSpeckBlightMite-1l4v879.jpg",
            "comparing-diseases-4-canker-tomato-1y51ejs.jpg",
        ],
        "grape leaf black rot": ["03gb.jpg", "grape_F15a.jpg"],
    },
    "test": {
        "Apple Scab Leaf": ["apple-scab-5366820.jpg"],
        "Apple leaf": ["Apple-Leaf-Wallpaper-17.jpg"],
        "grape leaf black rot": ["brleaf2_zoom.jpg"],
    },
}
INS_MINI_ABSENT = "Apidae/322093d2-a5ae-4d44-9e67-eebb18d0d2d5.jpeg"  # listed, deliberately not written
NEWT_GENERATED_MARK = "generated"  # text_label of the rows this module adds to NeWT's four real ones


def jpg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format="PNG" if path.suffix.lower() == ".png" else "JPEG")


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh))


def build(root: Path) -> Path:
    """Copy the real files under `root` and write an image at every path they list."""
    shutil.copytree(REAL, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns("SOURCES.md"))
    seed = iter(range(100_000))
    # NABirds (the paper's annotation): filepath relative to images/. The release's images.txt and
    # train_test_split.txt are written beside it in their documented form, to give the test-split figure.
    nab = root / "nabirds"
    listed = [r["filepath"] for r in rows(nab / "metadata.csv")]
    for rel in listed:
        jpg(nab / "images" / rel, next(seed))
    (nab / "images.txt").write_text("".join(f"id{i} {rel}\n" for i, rel in enumerate(listed)))
    (nab / "train_test_split.txt").write_text("".join(f"id{i} {int(i < 4)}\n" for i in range(len(listed))))
    # Meta-Album: filepath relative to the set's val/, metadata.csv at the set root or in val/
    for folder in (root / "meta-album").iterdir():
        meta = (
            folder / "metadata.csv" if (folder / "metadata.csv").exists() else folder / "val" / "metadata.csv"
        )
        for r in rows(meta):
            rel = r["filepath"]
            if folder.name == "INS_Mini":
                if rel == INS_MINI_ABSENT:
                    continue
                rel = unicodedata.normalize("NFC", ftfy.fix_text(rel))  # the spelling a fresh download has
            jpg(folder / "val" / rel, next(seed))
    # The Meta-Album release's own sample set: labels.csv + info.json, images/
    for r in rows(root / "meta-album-release/mini_insect_1/labels.csv"):
        jpg(root / "meta-album-release/mini_insect_1/images" / r["FILE_NAME"], next(seed))
    # IDLE-OO Camera Traps: filepath = <set>/<image>, relative to data/test/
    for csv_path in (root / "camera-traps").glob("*-balanced.csv"):
        for r in rows(csv_path):
            jpg(root / "camera-traps/data/test" / r["filepath"], next(seed))
    # Rare Species (the paper's annotation): filepath relative to the root
    for r in rows(root / "rare-species/metadata.csv"):
        jpg(root / "rare-species" / r["filepath"], next(seed))
    # FishNet: Image_Library/<Folder>/<last part of image>
    for side in ("train", "test"):
        for r in rows(root / "fishnet" / f"{side}.csv"):
            jpg(root / "fishnet/Image_Library" / r["Folder"] / r["image"].split("/")[-1], next(seed))
    # NeWT: the README's four real rows, then generated rows (marked) so each task can be cross-validated
    labels = root / "newt/newt2021_labels.csv"
    extra = []
    for task, cluster in (("ml_age_coopers_hawk", "appearance"), ("ml_bio_raptor_utility_pole", "context")):
        for j in range(14):
            split = "train" if j < 10 else "test"
            extra.append(
                f"{task}-{j:02d},{cluster},,{task},{j % 2 if j < 10 else (j + 1) % 2},"
                f"{NEWT_GENERATED_MARK},{split},8,8\n"
            )
    with open(labels, "a", encoding="utf-8", newline="") as fh:
        fh.writelines(extra)
    for r in rows(labels):
        jpg(root / "newt/newt2021_images" / f"{r['id']}.jpg", next(seed))
    # Herbarium19: the real class split (683 classes); small-train/<category id>/ with two images each
    for c in range(683):
        for j in range(2):
            jpg(root / "herbarium19/small-train" / str(c) / f"{c}_{j}.jpg", next(seed))
    # AwA2: no public copy of the release's text files exists outside its archive; written in its format
    aw = root / "awa2"
    aw.mkdir()
    (aw / "classes.txt").write_text("\t1\tantelope\n\t2\tgrizzly+bear\n\t3\tkiller+whale\n")
    (aw / "predicates.txt").write_text("\t1\tblack\n\t2\twhite\n")
    (aw / "predicate-matrix-binary.txt").write_text("1 0\n0 1\n1 1\n")
    (aw / "trainclasses.txt").write_text("antelope\nkiller+whale\n")
    (aw / "testclasses.txt").write_text("grizzly+bear\n")
    for c in ("antelope", "grizzly+bear", "killer+whale"):
        for j in range(3):
            jpg(aw / "JPEGImages" / c / f"{c}_{10001 + j}.jpg", next(seed))
    # PlantDoc: real folder and file names, unequal sides
    for side, classes in PLANTDOC.items():
        for c, files in classes.items():
            for f in files:
                jpg(root / "plantdoc" / side / c / f, next(seed))
    return root
