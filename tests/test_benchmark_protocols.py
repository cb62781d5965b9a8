"""The BioCLIP 2 benchmark protocols against naive references, and the suite on fixtures built from each
benchmark's real, published metadata files (tests/benchmark_fixtures.py)."""

import itertools
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation import layouts, protocols
from tests.benchmark_fixtures import INS_MINI_ABSENT, REAL, build


def test_mlp_head_equals_a_naive_training_loop():
    rng = np.random.default_rng(0)
    xtr, xte = rng.normal(size=(70, 12)), rng.normal(size=(30, 12))
    w = rng.normal(size=(12, 4))
    ytr, yte = (xtr @ w > 0).astype(int), (xte @ w > 0).astype(int)
    got = protocols.mlp_head(
        xtr, ytr, xte, yte, metrics=("all_correct",), lr=1e-3, epochs=25, runs=2, seed=5, batch_size=16
    )
    scores = []
    for run in range(2):
        torch.manual_seed(5 + run)
        lin1, drop, lin2 = torch.nn.Linear(12, 512), torch.nn.Dropout(0.5), torch.nn.Linear(512, 4)
        params = [*lin1.parameters(), *lin2.parameters()]
        opt = torch.optim.Adam(params, lr=1e-3)
        x, y = torch.tensor(xtr, dtype=torch.float32), torch.tensor(ytr, dtype=torch.float32)
        for epoch in range(25):
            lr = 1e-3 * 0.5 ** (epoch // 20)  # StepLR(20, 0.5)
            for g in opt.param_groups:
                g["lr"] = lr
            order = torch.randperm(70)
            for start in range(0, 70, 16):
                idx = order[start : start + 16]
                loss = torch.nn.functional.binary_cross_entropy_with_logits(lin2(drop(lin1(x[idx]))), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            logits = lin2(lin1(torch.tensor(xte, dtype=torch.float32))).numpy()
        pred = (logits > 0.5).astype(int)  # raw logits, as the paper's code
        scores.append(np.mean([all(p == t) for p, t in zip(pred, yte, strict=True)]))
    assert got["all_correct"] == pytest.approx(np.mean(scores), abs=1e-6)
    assert got["all_correct"] > 0.3  # the traits are learnable: not a constant predictor


def test_awa2_macro_f1_and_the_upstream_variant():
    truth = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]])
    pred = np.array([[1, 0, 0], [0, 1, 1], [0, 1, 0], [0, 1, 1]])

    def f1(t, p):
        tp, fp, fn = np.sum(t & p), np.sum(~t & p), np.sum(t & ~p)
        return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)

    per = [f1(truth[:, j].astype(bool), pred[:, j].astype(bool)) for j in range(3)]
    assert protocols.macro_f1_over_labels(pred, truth) == pytest.approx(np.mean(per))
    assert protocols.macro_f1_upstream(pred, truth) == pytest.approx(np.mean(per[:2]))  # columns 0 and 1


def test_newt_parallel_equals_sequential_and_sklearn():
    rng = np.random.default_rng(1)
    n_tasks, per = 3, 24
    feats = rng.normal(size=(n_tasks * per, 8))
    task = np.repeat([f"t{i}" for i in range(n_tasks)], per)
    label = np.tile(np.repeat([0, 1], per // 2), n_tasks)
    feats[label == 1, 0] += 2.0
    is_train = np.tile(np.array([True, False] * (per // 2)), n_tasks)
    got = protocols.newt_svc(feats, task, label, is_train, runs=2, seed=3, n_iter=10, cv=3, n_jobs=2)
    accs = []
    for run in range(2):
        right = total = 0
        for t in sorted(set(task)):
            m = task == t
            xtr, ytr, xte, yte = (
                feats[m & is_train],
                label[m & is_train],
                feats[m & ~is_train],
                label[m & ~is_train],
            )
            pred = protocols.newt_task(xtr, ytr, xte, seed=3 + run, n_iter=10, cv=3)
            right += int(np.sum(pred == yte))
            total += len(yte)
        accs.append(right / total)
    assert got["micro_acc"] == pytest.approx(np.mean(accs))
    assert got["n_tasks"] == 3 and got["micro_acc"] > 0.7


def test_cluster_accuracy_equals_the_best_permutation():
    rng = np.random.default_rng(2)
    truth, pred = rng.integers(0, 4, 40), rng.integers(0, 4, 40)
    best = max(np.mean(np.array(perm)[pred] == truth) for perm in itertools.permutations(range(4)))
    assert protocols.cluster_accuracy(truth, pred).mean() == pytest.approx(best)


def test_semi_supervised_kmeans_recovers_separated_classes():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(5, 6)) * 10
    labels = np.repeat(np.arange(5), 20)
    feats = centres[labels] + rng.normal(size=(100, 6)) * 0.1
    got = protocols.gcd_herbarium(feats, labels, np.array([0, 1, 2]), 5, runs=2, seed=0)
    assert got["acc_all"] == pytest.approx(1.0)
    assert got["n_labelled"] == int(0.8 * 60)


def test_simpleshot_split_equals_a_naive_reference():
    rng = np.random.default_rng(4)
    xtr, ytr = rng.normal(size=(30, 5)), np.repeat(np.arange(3), 10)
    xte, yte = rng.normal(size=(12, 5)), np.repeat(np.arange(3), 4)
    got = protocols.simpleshot_split(xtr, ytr, xte, yte, k=1, repeats=3, seed=7)
    accs = []
    for r in range(3):
        np.random.seed(7 + r)
        sup = []
        for c in range(3):
            idx = np.flatnonzero(ytr == c)
            np.random.shuffle(idx)
            sup.append(idx[0])
        mean = xtr[sup].mean(0)
        s = (xtr[sup] - mean) / np.linalg.norm(xtr[sup] - mean, axis=1, keepdims=True)
        q = (xte - mean) / np.linalg.norm(xte - mean, axis=1, keepdims=True)
        pred = [int(np.argmin([np.linalg.norm(qi - s[c]) for c in range(3)])) for qi in q]
        accs.append(np.mean(np.array(pred) == yte))
    assert got["k1_acc"] == pytest.approx(np.mean(accs))


def _jpg(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def test_awa2_reader_on_the_released_layout(tmp_path):
    classes, preds = ["antelope", "bat", "cow"], ["black", "white"]
    (tmp_path / "classes.txt").write_text("".join(f"\t{i + 1}\t{c}\n" for i, c in enumerate(classes)))
    (tmp_path / "predicates.txt").write_text("".join(f"{i + 1}\t{p}\n" for i, p in enumerate(preds)))
    (tmp_path / "predicate-matrix-binary.txt").write_text("1 0\n0 1\n1 1\n")
    (tmp_path / "trainclasses.txt").write_text("antelope\ncow\n")
    (tmp_path / "testclasses.txt").write_text("bat\n")
    for i, c in enumerate(classes):
        for j in range(2):
            _jpg(tmp_path / "JPEGImages" / c / f"{c}_{j}.jpg", i * 10 + j)
    got = layouts.read_awa2(tmp_path)
    assert got.label_names == preds and len(got.train_paths) == 4 and len(got.test_paths) == 2
    assert got.test_y.tolist() == [[0, 1], [0, 1]]
    assert got.train_y.tolist() == [[1, 0], [1, 0], [1, 1], [1, 1]]


def test_missing_files_name_what_is_expected_where(tmp_path):
    with pytest.raises(
        layouts.LayoutError, match=r"FishNet: missing train\.csv.*expected train\.csv, test\.csv"
    ):
        layouts.read_fishnet(tmp_path)
    with pytest.raises(layouts.LayoutError, match=r"herbarium_19_class_splits\.pkl"):
        layouts.read_herbarium19(tmp_path)


def test_herbarium_split_pickle_may_not_build_objects(tmp_path):
    for c in ("0", "1", "2"):
        _jpg(tmp_path / "small-train" / c / "x.jpg", int(c))
    (tmp_path / layouts.HERBARIUM_SPLITS).write_bytes(pickle.dumps({"Old": np.array([0, 1]), "New": [2]}))
    got = layouts.read_herbarium19(tmp_path)
    assert got.old_classes.tolist() == [0, 1] and got.n_classes == 3

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    (tmp_path / layouts.HERBARIUM_SPLITS).write_bytes(pickle.dumps({"Old": Evil(), "New": [2]}))
    with pytest.raises(layouts.LayoutError, match=r"may not build builtins\.print"):
        layouts.read_herbarium19(tmp_path)


def _fixture_root(root):
    """Every benchmark from its real metadata files (tests/data/benchmarks/SOURCES.md), images at their paths."""
    return build(root)


@pytest.mark.slow
def test_suite_runs_every_fixture_benchmark_and_prints_the_paper_layout(tmp_path):
    from evaluation.suite import PUBLISHED_BIOCLIP2, benchmark_table, headline_rows, paper_tables, run_suite
    from training.config import TINY_VIT_CFG, load_config
    from training.model import export_untrained
    from warehouse.catalog import open_catalog

    export = tmp_path / "export"
    export_untrained(load_config(overrides={"model_cfg": TINY_VIT_CFG, "replay_batch_size": 0}), export)
    _fixture_root(tmp_path / "data")
    cat = open_catalog(tmp_path / "home")
    summary = run_suite(cat, str(export), tmp_path / "data", progress=False)
    ran = set(summary["results"])
    assert ran == set(PUBLISHED_BIOCLIP2) and summary["skipped"] == [] and summary["failed"] == {}
    res = summary["results"]
    assert summary["images_per_second"] > 0
    # camera traps: five sets scored apart (2 + 2 + 3 + 2 + 2 classes), the headline their mean
    ct = res["camera-traps"]
    assert (
        ct["sets"] == list(layouts.CAMERA_TRAP_SETS) and ct["n_classes"] == 11 and ct["island_n_classes"] == 3
    )
    assert ct["zero_shot_top1"] == pytest.approx(
        np.mean([ct[f"{s}_zero_shot_top1"] for s in layouts.CAMERA_TRAP_SETS])
    )
    # the one INS_Mini image listed but absent is reported, and the set is still scored
    assert res["insects"]["n"] == 17 and res["insects"]["n_missing"] == 1 and res["insects"]["n_classes"] == 3
    assert res["insects"]["missing_examples"] == [INS_MINI_ABSENT]
    assert (
        res["nabirds"]["n"] == 12
        and res["nabirds"]["n_test"] == 8
        and "zero_shot_top1_test" in res["nabirds"]
    )
    assert res["fishnet"]["dropped train.csv: empty trait"] == 1 and res["fishnet"]["n"] == 19
    assert res["herbarium19"]["n"] == 1366 and res["herbarium19"]["n_classes"] == 683
    assert res["plantdoc"]["n_classes"] == 4 and res["plantdoc"]["n_classes_test"] == 3
    assert 0 <= res["plantdoc"]["k1_acc_upstream"] <= 1
    assert res["newt"]["n"] == 32 and res["rare-species"]["n_classes"] == 2
    table = benchmark_table(summary)
    assert "Insects | 17 | 1 (first: Apidae/322093d2" in table and "CamTrap | 61 | 0 | 11 |" in table
    for scores in summary["results"].values():
        assert all(
            0 <= v <= 1 for k, v in scores.items() if k.endswith(("acc", "top1", "correct", "f1", "acc_all"))
        )
    with cat.connect() as con:
        tasks = {r[0] for r in con.execute("SELECT DISTINCT task FROM eval_results").fetchall()}
    assert tasks == {f"bioclip2-{n}" for n in ran}
    table = paper_tables(headline_rows([summary]))
    assert f"BioCLIP 2 (published) | {PUBLISHED_BIOCLIP2['nabirds']}" in table and "| - |" not in table

    from evaluation.tasks import compare

    rows = {(r["task"], r["metric"]): r for r in compare(cat)}
    ref = rows[("bioclip2-newt", "micro_acc")]
    assert ref["BioCLIP 2 (published)"] == pytest.approx(0.891)
    assert (
        ref[str(export) if str(export) in ref else f"local-dir:{export}"]
        == summary["results"]["newt"]["micro_acc"]
    )
    assert rows[("bioclip2-newt", "micro_acc_std")]["BioCLIP 2 (published)"] is None


@pytest.mark.slow
def test_registered_analyses_over_a_data_root(tmp_path):
    from evaluation.tasks import load_registry, run_task
    from training.config import TINY_VIT_CFG, load_config
    from training.model import export_untrained
    from warehouse.catalog import open_catalog

    export = tmp_path / "export"
    export_untrained(load_config(overrides={"model_cfg": TINY_VIT_CFG, "replay_batch_size": 0}), export)
    data = tmp_path / "data"
    _fixture_root(data)
    finches = data / "darwin-finches"
    rows = ["uuid,scientific_name,filepath,common_name,group"]
    for i, sp in enumerate(
        ["Geospiza fuliginosa", "Geospiza fortis", "Geospiza magnirostris", "Certhidea olivacea"]
    ):
        for j in range(3):
            rows.append(f"u{i}{j},{sp},images/{i}_{j}.jpg,,ground")
            _jpg(finches / "images" / f"{i}_{j}.jpg", 100 * i + j)
    (finches / "metadata").mkdir()
    (finches / "metadata" / "Darwin-finches.csv").write_text("\n".join(rows) + "\n")
    cat = open_catalog(tmp_path / "home")
    tasks = load_registry()
    with pytest.raises(ValueError, match="give --data-root"):
        run_task(cat, str(export), tasks["darwin-finches-beak-order"], progress=False)
    beak = run_task(cat, str(export), tasks["darwin-finches-beak-order"], progress=False, data_root=data)
    assert beak["beak_order_n_species"] == 4 and 0 <= beak["beak_order_rho"] <= 1
    assert sorted(beak["embedding_order"]) == sorted(
        ["Geospiza fuliginosa", "Geospiza fortis", "Geospiza magnirostris", "Certhidea olivacea"]
    )
    habitat = run_task(cat, str(export), tasks["fishnet-habitat-separation"], progress=False, data_root=data)
    assert habitat["habitat_fdr"] > 0 and habitat["habitat_n_freshwater"] > 0
    assert all(__import__("pathlib").Path(p).exists() for p in habitat["plots"])


def test_semi_supervised_kmeans_equals_a_naive_loop():
    rng = np.random.default_rng(8)
    xl, yl = rng.normal(size=(12, 3)), np.repeat([2, 5, 7], 4)
    xu = rng.normal(size=(20, 3))
    got = protocols.semi_supervised_kmeans(xl, yl, xu, 5, seed=11, max_iter=10)

    r = np.random.RandomState(11)
    classes = sorted(set(yl.tolist()))
    centers = [xl[yl == c].mean(0) for c in classes]
    while len(centers) < 5:  # k-means++ over the unlabelled points, keeping the labelled means
        d2 = np.array([min(float(np.sum((x - c) ** 2)) for c in centers) for x in xu])
        cum, u = np.cumsum(d2 / d2.sum()), r.rand()
        centers.append(xu[next(i for i, v in enumerate(cum) if v >= u)])
    centers = np.array(centers)
    fixed = [classes.index(y) for y in yl.tolist()]
    assign = None
    for _ in range(10):
        old = centers.copy()
        u_assign = [int(np.argmin([np.sum((x - c) ** 2) for c in centers])) for x in xu]
        assign = fixed + u_assign
        pts = list(xl) + list(xu)
        for c in range(5):
            members = [p for p, a in zip(pts, assign, strict=True) if a == c]
            if members:
                centers[c] = np.mean(members, axis=0)
        if sum(np.sqrt(np.sum((centers - old) ** 2, axis=1))) ** 2 < 1e-4:
            break
    assert got.tolist() == assign[12:]


@pytest.mark.slow
def test_a_malformed_benchmark_fails_alone(tmp_path):
    from evaluation.suite import run_suite
    from training.config import TINY_VIT_CFG, load_config
    from training.model import export_untrained
    from warehouse.catalog import open_catalog

    export = tmp_path / "export"
    export_untrained(load_config(overrides={"model_cfg": TINY_VIT_CFG, "replay_batch_size": 0}), export)
    data = tmp_path / "data"
    for side, count in (("train", 2), ("test", 2)):
        for c in ("a", "b"):
            for j in range(count):
                _jpg(data / "plantdoc" / side / c / f"{j}.jpg", j)
    (data / "fishnet").mkdir()
    real_header = (REAL / "fishnet/test.csv").read_text().splitlines()[0]  # 25 columns
    (data / "fishnet" / "train.csv").write_text(real_header + "\nx,y\n")
    (data / "fishnet" / "test.csv").write_text("h\n")
    (data / "fishnet" / "Image_Library").mkdir()
    summary = run_suite(open_catalog(tmp_path / "home"), str(export), data, progress=False)
    assert set(summary["results"]) == {"plantdoc"}
    assert "line 2 does not have the header's 25 columns" in summary["failed"]["fishnet"]
