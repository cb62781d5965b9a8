"""Each benchmark reader on fixtures copied from the real, published metadata files (tests/data/benchmarks/,
cited with repository @ commit : path and line numbers in its SOURCES.md). No model: what is read, how the
classes are named, which images are matched, reported missing or refused."""

import unicodedata

import numpy as np
import pytest

from evaluation import layouts
from evaluation.datasets import load_metadata_folder
from tests.benchmark_fixtures import INS_MINI_ABSENT, PLANTDOC, build, jpg, rows


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return build(tmp_path_factory.mktemp("benchmarks"))


def test_fishnet_columns_are_read_by_header_name(root):
    # anns/test.csv has 25 columns and a header whose first cell is empty; `image` is column 4 (1-based)
    header = (root / "fishnet/test.csv").read_text().splitlines()[0].split(",")
    assert len(header) == 25 and header[:4] == ["", "Unnamed: 0", "species", "image"]
    d = layouts.read_fishnet(root / "fishnet")
    first = rows(root / "fishnet/test.csv")[0]
    assert d.test_paths[0] == root / "fishnet/Image_Library/Sparidae" / first["image"]
    assert d.test_paths[-1].name == "Zefla_u2.jpg"  # a fishbase URL: its last part, in its Folder
    assert d.dropped == {"train.csv: empty trait": 1, "test.csv: empty trait": 1}
    # Diplodus, benthic, Tropical=1 Temperate=1 Subtropical=1 Boreal=0 Polar=0 fresh=1 salt=1 brackish=1
    assert d.test_y[0].tolist() == [0, 1, 1, 1, 0, 0, 1, 1, 1]


def test_camera_traps_are_five_sets_with_upstream_class_texts(root):
    sets = layouts.read_camera_traps(root / "camera-traps")
    assert list(sets) == list(layouts.CAMERA_TRAP_SETS)
    ena = sets["ENA24"]
    # lower-case ranks in `cls`-named columns, capitalised as the paper's Taxon.to_dict; filepath under data/test/
    assert ena.classnames[0] == (
        "Animalia Chordata Mammalia Rodentia Sciuridae Tamias striatus with common name eastern chipmunk"
    )
    assert ena.class_lineages[0]["class"] == "Mammalia" and ena.class_lineages[0]["species"] == "striatus"
    assert all(p.is_relative_to(root / "camera-traps/data/test/ENA24") for p in ena.paths)
    # one lineage (Gallus gallus), two common names: two classes, as the paper's whole-text classes
    island = sets["island"]
    assert len(island.classnames) == 3
    assert sum("Gallus gallus" in c for c in island.classnames) == 2


def test_camera_traps_accept_a_copy_whose_filepath_omits_the_set(tmp_path, root):
    ct = tmp_path / "camera-traps"
    lines = (root / "camera-traps/orinoquia-balanced.csv").read_text(encoding="utf-8")
    (ct / "data/test/orinoquia").mkdir(parents=True)
    (ct / "orinoquia-balanced.csv").write_text(lines.replace(",orinoquia/", ","), encoding="utf-8")
    for r in rows(ct / "orinoquia-balanced.csv"):
        jpg(ct / "data/test/orinoquia" / r["filepath"], 1)
    assert len(layouts.read_camera_traps(ct)["orinoquia"].paths) == 12


def test_rare_species_takes_cls_as_the_rank_never_the_binomial_class(root):
    d = layouts.read_rare_species(root / "rare-species")
    assert d.classnames[0] == (
        "Animalia Mollusca Bivalvia Unionida Unionidae Cyclonaias tuberculata with common name purple wartyback"
    )
    assert d.class_lineages[0]["class"] == "Bivalvia"
    # the generic metadata-folder adapter follows the same rule
    generic = load_metadata_folder(root / "rare-species", text_type="taxon_com")
    assert generic.class_lineages[0]["class"] == "Bivalvia"
    assert "Cyclonaias tuberculata" not in generic.class_lineages[0].values()


def test_meta_album_class_texts_are_verbatim(root):
    vil = layouts.read_meta_album(root / "meta-album/PLT_VIL_Mini")  # metadata.csv in val/
    assert vil.classnames == ["Tomato___Late_blight", "Tomato___Tomato_Yellow_Leaf_Curl_Virus"]
    fungi = layouts.read_meta_album(root / "meta-album/FNG_Mini")
    assert fungi.classnames[1] == unicodedata.normalize("NFD", "Agaricus impudicus (Rea) Pilát")
    assert fungi.classnames[1] != "Agaricus impudicus (Rea) Pilát"  # listed NFD, kept NFD


def test_meta_album_matches_nfd_and_mis_encoded_names_and_reports_the_absent(root):
    d = layouts.read_meta_album(root / "meta-album/INS_Mini")
    assert d.missing == [INS_MINI_ABSENT] and len(d.paths) == 17
    listed = rows(root / "meta-album/INS_Mini/metadata.csv")[-1]["class"]
    assert listed in d.classnames and "Ã§" in unicodedata.normalize("NFC", listed)  # listed text, verbatim
    assert any("Charançons" in str(p) for p in d.paths)  # found under the repaired folder name


def test_meta_album_fails_when_most_listed_images_are_absent(tmp_path, root):
    s = tmp_path / "PLK_Mini"
    (s / "val").mkdir(parents=True)
    (s / "metadata.csv").write_bytes((root / "meta-album/PLK_Mini/val/metadata.csv").read_bytes())
    listed = rows(s / "metadata.csv")
    for r in listed[:9]:  # 3 of 12 absent: more than MAX_MISSING_SHARE
        jpg(s / "val" / r["filepath"], 2)
    with pytest.raises(layouts.LayoutError, match=r"3 of 12 listed images are missing"):
        layouts.read_meta_album(s)


def test_meta_album_release_layout_with_info_json(tmp_path, root):
    d = layouts.read_meta_album(root / "meta-album-release/mini_insect_1")  # CRLF, no final newline
    assert d.classnames == ["bee", "butterfly", "insect", "wasp"] and len(d.paths) == 12
    # info.json names the columns; a set whose columns are named otherwise is read by those names
    s = tmp_path / "renamed"
    (s / "images").mkdir(parents=True)
    src = root / "meta-album-release/mini_insect_1"
    (s / "labels.csv").write_bytes(
        (src / "labels.csv").read_bytes().replace(b"FILE_NAME,CATEGORY", b"img,cat")
    )
    (s / "info.json").write_text(
        (src / "info.json").read_text().replace('"FILE_NAME"', '"img"').replace('"CATEGORY"', '"cat"')
    )
    for f in (src / "images").iterdir():
        (s / "images" / f.name).write_bytes(f.read_bytes())
    assert layouts.read_meta_album(s).classnames == d.classnames


def test_nabirds_reads_every_annotated_image_with_the_split_beside(root):
    d = layouts.read_nabirds(root / "nabirds")
    assert len(d.paths) == 12 and d.classnames == ["Oak Titmouse", "Ovenbird"]
    assert [e["split"] for e in d.extra].count("test") == 8


def test_nabirds_release_layout_reads_train_and_test(tmp_path):
    # The release's text files (only in its archive; written here in the documented CUB-style form)
    nab = tmp_path / "nabirds"
    nab.mkdir()
    (nab / "images.txt").write_text("i1 0295/a.jpg\ni2 0295/b.jpg\ni3 0296/c.jpg\n")
    (nab / "image_class_labels.txt").write_text("i1 295\ni2 295\ni3 296\n")
    (nab / "classes.txt").write_text("295 Forster's Tern\n296 Royal Tern\n")
    (nab / "train_test_split.txt").write_text("i1 1\ni2 0\ni3 0\n")
    for i, rel in enumerate(["0295/a.jpg", "0295/b.jpg", "0296/c.jpg"]):
        jpg(nab / "images" / rel, i)
    got = layouts.read_nabirds(nab)
    assert [p.name for p in got.paths] == ["a.jpg", "b.jpg", "c.jpg"]
    assert [e["split"] for e in got.extra] == ["train", "test", "test"]
    assert got.classnames == ["Forster's Tern", "Royal Tern"]


def test_newt_reads_the_release_column_order(root):
    header = (root / "newt/newt2021_labels.csv").read_text().splitlines()[0]
    assert header == "id,task_cluster,task_subcluster,task,label,text_label,split,height,width"
    d = layouts.read_newt(root / "newt")
    assert d.paths[0].name == "d80eb625-4982-4d34-ad9c-d957f565111e.jpg"
    assert d.task[2] == "ml_bio_raptor_utility_pole" and d.label[:4].tolist() == [0, 0, 0, 0]


def test_herbarium_reads_the_real_class_split(root):
    d = layouts.read_herbarium19(root / "herbarium19")
    assert len(d.old_classes) == 341 and d.n_classes == 683 and len(d.paths) == 1366


def test_plantdoc_unequal_sides_keep_one_class_numbering(root):
    d = layouts.read_plantdoc(root / "plantdoc")
    assert d.label_names == sorted(PLANTDOC["train"])
    grape = d.label_names.index("grape leaf black rot")
    assert set(d.test_y.tolist()) == {0, 1, grape}
    # upstream numbers each side itself: grape is 3 on train and 2 on test
    up_train, up_test = d.upstream_y
    assert up_train[d.train_y == grape].tolist() == [3, 3] and up_test[d.test_y == grape].tolist() == [2]
    assert np.array_equal(up_train, d.train_y)
