import numpy as np
import pytest
import torch

from evaluation.datasets import load_metadata_folder
from evaluation.zero_shot import load_model, metrics_from_logits, zero_shot_scores
from training.config import TINY_VIT_CFG, load_config
from training.model import export_untrained


def test_metrics_match_a_naive_reference():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(50, 7)), rng.integers(0, 7, 50)
    lineages = [{"genus": "A" if c < 4 else "B", "species": str(c)} for c in range(7)]
    got = metrics_from_logits(logits, labels, lineages)
    top1 = sum(int(np.argmax(row) == y) for row, y in zip(logits, labels, strict=True)) / 50
    top5 = (
        sum(
            int(y in sorted(range(7), key=lambda c: -row[c])[:5])
            for row, y in zip(logits, labels, strict=True)
        )
        / 50
    )
    genus = (
        sum(
            int(lineages[int(np.argmax(row))]["genus"] == lineages[y]["genus"])
            for row, y in zip(logits, labels, strict=True)
        )
        / 50
    )
    assert (got["top1"], got["top5"], got["rank_acc_genus"]) == pytest.approx((top1, top5, genus))


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("m") / "export"
    export_untrained(load_config(overrides={"model_cfg": TINY_VIT_CFG, "replay_batch_size": 0}), out)
    return load_model(str(out))


def test_zero_shot_equals_an_independent_computation(random_model, world):
    data = load_metadata_folder(world.eval_dir, "taxon")
    ours = zero_shot_scores(random_model, data, templates="single", progress=False)
    m = random_model
    with torch.no_grad():
        text = torch.nn.functional.normalize(
            m.model.encode_text(m.tokenizer([f"a photo of {c}." for c in data.classnames])), dim=-1
        )
        feats = []
        for p in data.paths:
            from PIL import Image

            feats.append(m.model.encode_image(m.preprocess(Image.open(p).convert("RGB"))[None]))
        img = torch.nn.functional.normalize(torch.cat(feats), dim=-1)
    pred = (img @ text.T).argmax(dim=1).numpy()
    assert ours["top1"] == pytest.approx(float(np.mean(pred == np.array(data.labels))))
    assert ours["n_classes"] == len(set(data.labels)) == world.planted["n_species"]


def test_metadata_folder_needs_labels(tmp_path):
    (tmp_path / "metadata.csv").write_text("filepath,foo\na.jpg,1\n")
    with pytest.raises(ValueError, match="class"):
        load_metadata_folder(tmp_path)


def test_recall_at_k_matches_a_naive_reference():
    from evaluation.retrieval import recall_at_k

    rng = np.random.default_rng(1)
    sim = rng.normal(size=(30, 30))
    sim[np.arange(10), np.arange(10)] += 5  # the first 10 are easy
    got = recall_at_k(sim)
    naive_i2t_r1 = np.mean([np.argmax(sim[i]) == i for i in range(30)])
    naive_t2i_r5 = np.mean([i in np.argsort(-sim[:, i])[:5] for i in range(30)])
    assert got["image_to_text_r1"] == pytest.approx(naive_i2t_r1)
    assert got["text_to_image_r5"] == pytest.approx(naive_t2i_r5)


def _clusters(rng, variant_shift, n_species=8, per=10, dim=32, species_dims=8, spread=0.02):
    """Species centroids in the first `species_dims` coordinates only; a two-valued variant adds
    +/- `variant_shift(species)` to each image; small isotropic noise."""
    centroids = np.zeros((n_species, dim))
    centroids[:, :species_dims] = rng.normal(size=(n_species, species_dims))
    feats, species, variant = [], [], []
    for s in range(n_species):
        for i in range(per):
            sign = 1 if i % 2 else -1
            feats.append(centroids[s] + sign * variant_shift(s) + rng.normal(scale=spread, size=dim))
            species.append(s)
            variant.append("juvenile" if sign > 0 else "adult")
    return np.array(feats), np.array(species), np.array(variant)


def test_orthogonality_share_on_constructed_cases():
    from evaluation.emergent import orthogonality, separation

    dim = 32
    off_span = np.zeros(dim)
    off_span[20] = 0.4  # a direction in which species do not differ

    orth = orthogonality(*_clusters(np.random.default_rng(0), lambda s: off_span), k=7)
    assert orth["orthogonality_rho"] < 0.1, orth

    # The variant moves each image along its own species' centroid direction: inside the species span.
    rng = np.random.default_rng(1)
    feats, species, variant = _clusters(rng, lambda s: np.zeros(dim))
    means = np.stack([feats[species == s].mean(0) for s in range(8)])
    centred = means - means.mean(0)
    feats = feats + np.where(variant == "juvenile", 1, -1)[:, None] * 0.3 * centred[species]
    aligned = orthogonality(feats, species, variant, k=7)
    assert aligned["orthogonality_rho"] > 0.9, aligned

    weak = separation(*_clusters(np.random.default_rng(2), lambda s: 0.005 * np.ones(dim)))
    strong = separation(*_clusters(np.random.default_rng(2), lambda s: 0.2 * np.ones(dim)))
    assert strong["separation_fdr"] > 10 * weak["separation_fdr"]


def test_simpleshot_matches_a_naive_reference():
    import random

    from evaluation.fewshot import simpleshot_fold

    rng = np.random.default_rng(3)
    feats, labels = rng.normal(size=(60, 16)), np.repeat(np.arange(6), 10)
    got = simpleshot_fold(feats, labels, k=2, fold=4)
    r = random.Random(4)
    sup, qry = [], []
    for c in range(6):
        idx = list(np.flatnonzero(labels == c))
        r.shuffle(idx)
        sup += idx[:2]
        qry += idx[2:]
    mean = feats[sup].mean(0)

    def norm(x):
        return (x - mean) / np.linalg.norm(x - mean, axis=1, keepdims=True)

    cents = {c: norm(feats[sup])[labels[sup] == c].mean(0) for c in range(6)}
    # nearest centroid by Euclidean distance, as the paper's few_shot.py (centroids not renormalised)
    pred = [min(cents, key=lambda c: float(np.linalg.norm(norm(feats[[q]])[0] - cents[c]))) for q in qry]
    assert got == pytest.approx(np.mean(np.array(pred) == labels[qry]))


def test_registry_and_protocols(random_model, world, tmp_path):
    from evaluation.tasks import Task, load_registry, run_task
    from warehouse.catalog import open_catalog

    registry = load_registry()
    assert {"sample-heldout-zero-shot", "sample-heldout-life-stage"} <= set(registry)
    with pytest.raises(ValueError, match="unknown protocol"):
        Task(name="x", path=".", protocol="vibes")
    cat = open_catalog(tmp_path / "home")
    export = random_model.name.removeprefix("local-dir:")
    task = Task(
        name="t-emergent",
        path=str(world.eval_dir),
        protocol="emergent",
        options={"variant": "life_stage", "k": 5, "plots": True},
    )
    out = run_task(cat, export, task, progress=False)
    assert 0 <= out["orthogonality_rho"] <= 1 and out["orthogonality_k"] == 5
    assert all(__import__("pathlib").Path(p).exists() for p in out["plots"])
    few = run_task(
        cat,
        export,
        Task(name="t-few", path=str(world.eval_dir), protocol="few_shot", options={"ks": [1], "folds": 2}),
        progress=False,
    )
    assert 0 <= few["few_shot_k1_acc"] <= 1
    with cat.connect() as con:
        metrics = {r[0] for r in con.execute("SELECT metric FROM eval_results").fetchall()}
    assert {"orthogonality_rho", "separation_fdr", "few_shot_k1_acc"} <= metrics


def test_rho_null_reference_separates_orthogonal_variation_from_noise():
    from evaluation.emergent import orthogonality

    off_span = np.zeros(32)
    off_span[20] = 0.4
    out = orthogonality(*_clusters(np.random.default_rng(5), lambda s: off_span, spread=0.05), k=7)
    # isotropic noise spreads over all 32 dims: about 7/32 of it lies in a 7-dim span; the variant far less
    assert out["orthogonality_rho"] < 0.5 * out["orthogonality_rho_null"]
    assert 0.1 < out["orthogonality_rho_null"] < 0.4
    # 8 species in 32 dims: the means span at most 7 directions; the noise fills the rest
    assert out["species_span_effective_rank"] <= 7.0 + 1e-9
    assert out["embedding_effective_rank"] > out["species_span_effective_rank"]


def test_effective_rank_on_known_cases():
    from evaluation.emergent import effective_rank

    rng = np.random.default_rng(3)
    assert abs(effective_rank(rng.normal(size=(20000, 10))) - 10) < 0.3  # isotropic in 10 dims
    line = np.outer(rng.normal(size=500), rng.normal(size=16))
    assert abs(effective_rank(line) - 1) < 1e-6
    scaled = rng.normal(size=(20000, 2)) * np.array([1.0, 0.5])  # variances 1 and 1/4: (1.25)^2 / (1 + 1/16)
    assert abs(effective_rank(scaled) - 1.25**2 / (1 + 1 / 16)) < 0.05
    assert effective_rank(np.ones((5, 3))) == 0.0


def test_macro_f1_matches_a_naive_reference():
    from evaluation.metrics import macro_f1

    rng = np.random.default_rng(1)
    labels, pred = rng.integers(0, 5, 80), rng.integers(0, 5, 80)
    scores = []
    for c in sorted(set(labels.tolist()) | set(pred.tolist())):
        tp = int(np.sum((pred == c) & (labels == c)))
        fp, fn = int(np.sum((pred == c) & (labels != c))), int(np.sum((pred != c) & (labels == c)))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    assert macro_f1(labels, pred) == pytest.approx(np.mean(scores))


def test_multi_label_probe_all_labels_correct():
    """Traits that are linear in the features are learnt (all-correct near 1); random traits are not, and the
    all-labels-correct rate equals a naive count on the predictions."""
    from evaluation.fewshot import multi_label_probe

    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 16))
    learnable = (x[:, :3] > 0).astype(int)
    good = multi_label_probe(x, learnable, 0.5, seed=0)
    assert good["multi_label_all_correct"] > 0.8 and good["multi_label_label_acc"] > 0.93
    assert good["multi_label_n_labels"] == 3
    noise = multi_label_probe(x, rng.integers(0, 2, (400, 3)), 0.5, seed=0)
    assert noise["multi_label_all_correct"] < 0.35  # chance for 3 binary labels is 1/8
    assert noise["multi_label_label_acc"] >= noise["multi_label_all_correct"]


def test_image_folder_and_webdataset_adapters_match_the_metadata_folder(world, tmp_path):
    import shutil

    import webdataset as wds

    from evaluation.datasets import detect_adapter, load_image_folder, load_webdataset

    meta = load_metadata_folder(world.eval_dir, "taxon")
    tree = tmp_path / "tree"
    with wds.TarWriter(str(tmp_path / "eval-0.tar")) as sink:
        for i, (path, label) in enumerate(zip(meta.paths, meta.labels, strict=True)):
            lineage = meta.class_lineages[label]
            folder = tree / (lineage["genus"] + "_" + lineage["species"])
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / path.name)
            sink.write(
                {"__key__": f"{i:05d}", "jpg": path.read_bytes(), "json": __import__("json").dumps(lineage)}
            )
    assert detect_adapter(world.eval_dir) == "metadata_folder"
    assert detect_adapter(tree) == "image_folder" and detect_adapter(tmp_path / "eval-0.tar") == "webdataset"

    def groups(data) -> set[frozenset[str]]:
        by_label: dict[int, set[str]] = {}
        for p, y in zip(data.paths, data.labels, strict=True):
            by_label.setdefault(y, set()).add(__import__("hashlib").md5(p.read_bytes()).hexdigest())
        return {frozenset(v) for v in by_label.values()}

    folder = load_image_folder(tree)
    shards = load_webdataset(tmp_path / "eval-0.tar", "taxon", cache_dir=tmp_path / "cache")
    assert groups(folder) == groups(meta) == groups(shards)  # the same images grouped into the same classes
    assert sorted(shards.classnames) == sorted(meta.classnames)  # same class texts from the json lineage
    assert all(" " in name for name in folder.classnames)  # underscores read as spaces


def test_variant_direction_plot_on_constructed_embeddings(tmp_path):
    from evaluation.plots import variant_basis, variant_directions_3d

    rng = np.random.default_rng(4)
    d = 12
    species = np.repeat(np.arange(6), 10)
    variant = np.tile(np.array(["adult"] * 5 + ["juvenile"] * 5), 6)
    centres = rng.normal(size=(6, d)) * np.r_[np.ones(3), np.zeros(d - 3)]  # species in the first 3 dims
    shift = np.zeros(d)
    shift[7] = 1.0  # the variant moves along dim 7, orthogonal to every species direction
    x = (
        centres[species]
        + np.where(variant == "juvenile", 1, 0)[:, None] * shift
        + rng.normal(size=(60, d)) * 0.01
    )
    basis, pairs = variant_basis(x, species, variant)
    assert len(pairs) == 6 and abs(basis[2] @ shift) > 0.99  # the third axis is the variant direction
    assert variant_directions_3d(x, species, variant, tmp_path / "v.png").stat().st_size > 5_000


def test_multi_label_task_through_the_registry_runner(random_model, world, tmp_path):
    import csv

    from evaluation.tasks import Task, run_task
    from warehouse.catalog import open_catalog

    with open(world.eval_dir / "metadata.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    folder = tmp_path / "traits"
    folder.mkdir()
    with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["filepath", "class", "juvenile", "animal"])
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {
                    "filepath": str(world.eval_dir / r["filepath"]),
                    "class": r["species"],
                    "juvenile": "yes" if r["life_stage"] == "juvenile" else "no",
                    "animal": int(r["kingdom"] == "Animalia"),
                }
            )
    cat = open_catalog(tmp_path / "home")
    export = random_model.name.removeprefix("local-dir:")
    task = Task(
        name="traits", path=str(folder), protocol="multi_label", options={"labels": ["juvenile", "animal"]}
    )
    out = run_task(cat, export, task, progress=False)
    assert (
        out["multi_label_n_labels"] == 2
        and 0 <= out["multi_label_all_correct"] <= out["multi_label_label_acc"]
    )
    with pytest.raises(ValueError, match="missing"):
        run_task(
            cat,
            export,
            Task(name="bad", path=str(folder), protocol="multi_label", options={"labels": ["fins"]}),
            progress=False,
        )


@pytest.mark.parametrize("templates", ["single", "openai"])
def test_zero_shot_equals_clip_benchmark(random_model, world, templates):
    """CLIP_benchmark's own zero-shot classifier and classification loop, on the same model, images, class texts
    and templates. (Its `evaluate` cannot finish on numpy >= 2.4: its `accuracy()` calls float() on a
    one-element array. Top-k is read here from the logits its code produced.)"""
    from clip_benchmark.metrics.zeroshot_classification import run_classification, zero_shot_classifier
    from PIL import Image

    from evaluation.zero_shot import TEMPLATES

    data = load_metadata_folder(world.eval_dir, "taxon")
    ours = zero_shot_scores(random_model, data, templates=templates, progress=False)

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(data.paths)

        def __getitem__(self, i):
            return random_model.preprocess(Image.open(data.paths[i]).convert("RGB")), data.labels[i]

    loader = torch.utils.data.DataLoader(Images(), batch_size=64)
    as_strings = [t("{c}") for t in TEMPLATES[templates]]  # CLIP_benchmark formats `{c}` strings itself
    classifier = zero_shot_classifier(
        random_model.model, random_model.tokenizer, data.classnames, as_strings, "cpu", amp=False
    )
    logits, target = run_classification(random_model.model, classifier, loader, "cpu", amp=False)
    top5 = logits.topk(5, dim=1).indices
    assert ours["top1"] == pytest.approx((top5[:, 0] == target).float().mean().item(), abs=1e-9)
    assert ours["top5"] == pytest.approx((top5 == target[:, None]).any(dim=1).float().mean().item(), abs=1e-9)
