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
