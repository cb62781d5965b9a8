import json

import open_clip
import pytest
import torch

from training.config import TINY_VIT_CFG, load_config
from training.loop import text_type_for_step, train
from training.model import ReplayCLIP, build_clip

# A smaller model than the preset: tests check wiring, not learning.
MICRO = {
    **TINY_VIT_CFG,
    "vision_cfg": {**TINY_VIT_CFG["vision_cfg"], "layers": 1, "width": 64, "head_width": 32},
    "text_cfg": {**TINY_VIT_CFG["text_cfg"], "layers": 1, "width": 64, "heads": 2},
}


def _cfg(world, **kw):
    values = {
        "dataset_version": "t1",
        "model_cfg": MICRO,
        "batch_size": 8,
        "steps": 2,
        "warmup_steps": 1,
        "log_every": 1,
        "checkpoint_every": 1,
        "replay_path": str(world.replay_train),
        "replay_batch_size": 4,
        **kw,
    }
    return load_config(preset="cpu-tiny", overrides=values)


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown config key"):
        load_config(overrides=["learning_rate=1"])
    with pytest.raises(ValueError, match="text_type"):
        load_config(overrides=["text_type=latin"])
    paper = load_config(preset="gpu-paper", overrides=["replay_path=/data/laion-replay"])
    assert (paper.batch_size, paper.replay_batch_size, paper.lr) == (2816, 320, 1e-4)


def test_text_type_is_drawn_per_step_reproducibly():
    cfg = load_config(overrides=["seed=7"])
    draws = [text_type_for_step(cfg, s) for s in range(50)]
    assert draws == [text_type_for_step(cfg, s) for s in range(50)] and len(set(draws)) == 5


def test_replay_projector_starts_as_a_copy_and_is_separate():
    clip, _ = build_clip(load_config(overrides={"model_cfg": MICRO}))
    proj = clip.visual.proj.detach().clone()
    model = ReplayCLIP(clip)
    assert torch.equal(model.bio_proj, proj) and torch.equal(model.replay_proj, proj)
    assert model.bio_proj.data_ptr() != model.replay_proj.data_ptr()


def test_two_steps_with_replay_change_weights_and_log_both_losses(curated, world):
    result = train(curated, _cfg(world, run_id="r-two"), progress=False)
    rows = [json.loads(line) for line in (curated.runs / "r-two" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["loss_bio"] > 0 and r["loss_replay"] > 0 for r in rows)
    state = torch.load(curated.runs / "r-two" / "checkpoints" / "latest.pt", weights_only=False)["model"]
    assert not torch.equal(state["bio_proj"], state["replay_proj"])  # each trained by its own loss
    assert result["steps"] == 2


def test_replay_off_is_plain_clip(curated, world):
    train(curated, _cfg(world, run_id="r-plain", replay_batch_size=0, replay_path=None), progress=False)
    rows = [
        json.loads(line) for line in (curated.runs / "r-plain" / "metrics.jsonl").read_text().splitlines()
    ]
    state = torch.load(curated.runs / "r-plain" / "checkpoints" / "latest.pt", weights_only=False)["model"]
    assert all(r["loss_replay"] == 0 for r in rows)
    cfg = _cfg(world)
    torch.manual_seed(cfg.seed)  # the same init as train() draws
    assert torch.equal(state["replay_proj"], ReplayCLIP(build_clip(cfg)[0]).replay_proj)  # untouched
    assert not torch.equal(state["bio_proj"], state["replay_proj"])


def test_resume_continues_from_the_checkpoint(curated, world):
    train(curated, _cfg(world, run_id="r-res", steps=2), progress=False)
    out = train(curated, _cfg(world, run_id="r-res", steps=3, resume="latest"), progress=False)
    rows = [json.loads(line) for line in (curated.runs / "r-res" / "metrics.jsonl").read_text().splitlines()]
    assert out["steps"] == 3 and [r["step"] for r in rows] == [1, 2, 3]


def test_export_loads_with_local_dir_and_matches_the_training_model(curated, world):
    result = train(curated, _cfg(world, run_id="r-exp"), progress=False)
    loaded, _, _ = open_clip.create_model_and_transforms(f"local-dir:{result['export_path']}")
    ckpt = torch.load(curated.runs / "r-exp" / "checkpoints" / "latest.pt", weights_only=False)
    clip, _ = build_clip(_cfg(world))
    ours = ReplayCLIP(clip)
    ours.load_state_dict(ckpt["model"])
    ours.eval()
    loaded.eval()
    images = torch.randn(3, 3, 64, 64)
    tokens = open_clip.get_tokenizer(f"local-dir:{result['export_path']}")(["a photo of x.", "b", "c"])
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(images), ours.encode_image(images), atol=1e-5)
        assert torch.allclose(loaded.encode_text(tokens), ours.encode_text(tokens), atol=1e-5)
    with curated.connect() as con:
        status, export = con.execute(
            "SELECT status, export_path FROM training_runs WHERE run_id = 'r-exp'"
        ).fetchall()[0]
    assert status == "succeeded" and export == result["export_path"]


def test_same_seed_same_weights(curated, world):
    a = train(curated, _cfg(world, run_id="r-det-a", steps=3), progress=False)
    b = train(curated, _cfg(world, run_id="r-det-b", steps=3), progress=False)
    sa = torch.load(curated.runs / "r-det-a" / "checkpoints" / "latest.pt", weights_only=False)["model"]
    sb = torch.load(curated.runs / "r-det-b" / "checkpoints" / "latest.pt", weights_only=False)["model"]
    assert a["final"]["loss_bio"] == pytest.approx(b["final"]["loss_bio"], rel=1e-5)
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)


def test_four_steps_equal_two_plus_resumed_two(curated, world, monkeypatch):
    from training import loop

    train(curated, _cfg(world, run_id="r-unbroken", steps=4), progress=False)
    real = loop.text_type_for_step

    def killed_at_step_two(cfg, step):
        if step == 2:
            raise KeyboardInterrupt("killed")
        return real(cfg, step)

    monkeypatch.setattr(loop, "text_type_for_step", killed_at_step_two)
    with pytest.raises(KeyboardInterrupt):
        train(curated, _cfg(world, run_id="r-broken", steps=4), progress=False)
    monkeypatch.setattr(loop, "text_type_for_step", real)
    train(curated, _cfg(world, run_id="r-broken", steps=4, resume="latest"), progress=False)
    a = torch.load(curated.runs / "r-unbroken" / "checkpoints" / "latest.pt", weights_only=False)
    b = torch.load(curated.runs / "r-broken" / "checkpoints" / "latest.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    assert all(torch.allclose(a["model"][k], b["model"][k], atol=1e-6) for k in a["model"])

    def losses(run: str) -> list[float]:
        lines = (curated.runs / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(x)["loss_bio"] for x in lines]

    assert losses("r-unbroken") == pytest.approx(losses("r-broken"), rel=1e-5)  # same data, step by step
    with curated.connect() as con:
        status = con.execute("SELECT status FROM training_runs WHERE run_id = 'r-broken'").fetchall()[0][0]
    assert status == "succeeded"


def test_two_ranks_with_torchrun_equal_one_process_on_the_global_batch(curated, world):
    """DDP through torchrun (gloo on CPU): 2 ranks x (4 + 2 replay) per step must take the same steps as one
    process with 8 + 4 per step: same samples, same augmentations, features gathered with gradients."""
    from training.distributed import launch

    common = {"steps": 2, "threads": 1, "checkpoint_every": 2}
    single = train(curated, _cfg(world, run_id="r-one", batch_size=8, replay_batch_size=4, **common), False)
    ddp_cfg = _cfg(world, run_id="r-ddp", batch_size=4, replay_batch_size=2, **common)
    ddp = launch(curated.home, ddp_cfg.to_dict(), devices=2, timeout=600)
    assert ddp["devices"] == 2 and ddp["samples_seen"] == single["samples_seen"] == 16
    one = torch.load(curated.runs / "r-one" / "checkpoints" / "latest.pt", weights_only=False)["model"]
    two = torch.load(curated.runs / "r-ddp" / "checkpoints" / "latest.pt", weights_only=False)["model"]
    start = ReplayCLIP(build_clip(ddp_cfg)[0]).state_dict()
    moved = [k for k in one if not torch.equal(one[k], start[k])]
    assert len(moved) > 10  # the steps did change the weights
    worst = max((one[k] - two[k]).abs().max().item() for k in one)
    print(f"largest weight difference between 2 ranks and 1 process: {worst:.2e}")
    assert worst < 1e-4, f"largest weight difference {worst}"
    for key in ("loss_bio", "loss_replay"):
        assert ddp["final"][key] == pytest.approx(single["final"][key], abs=1e-4)
    with curated.connect() as con:
        status, config = con.execute(
            "SELECT status, config FROM training_runs WHERE run_id = 'r-ddp'"
        ).fetchall()[0]
    assert status == "succeeded" and json.loads(config)["devices"] == 2
    assert open_clip.create_model_and_transforms(f"local-dir:{ddp['export_path']}")[0] is not None


def test_progress_is_logged_and_reported_every_log_every_steps(curated, world):
    from tests.conftest import log_lines

    seen = []
    with log_lines("tol.train") as lines:
        train(curated, _cfg(world, run_id="r-progress", steps=4, log_every=2), False, seen.append)
    assert [r["step"] for r in seen] == [2, 4] and all(r["steps"] == 4 for r in seen)
    assert seen[0]["eta_s"] > 0 and seen[-1]["eta_s"] == 0 and seen[0]["samples_per_s"] > 0
    progress = [m for m in lines if m.startswith("step ")]
    assert [m.split()[1] for m in progress] == ["2/4", "4/4"], lines
    assert all("loss" in m and "samples/s" in m and "ETA" in m for m in progress)
    assert any("replay 4 per step" in m for m in lines)  # what the run is, said once at its start


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("grad_checkpointing=ture", "grad_checkpointing takes true or false, not 'ture'"),
        ("grad_checkpointing=1", "grad_checkpointing takes true or false"),
        ("steps=ten", "steps takes an integer"),
        ("lr=fast", "lr takes a number"),
        ("steps=none", "steps is not optional"),
        ("model_cfg=[1]", "model_cfg takes a JSON object"),
    ],
)
def test_overrides_are_parsed_strictly(override, message):
    from training.config import OverrideError, load_config

    with pytest.raises(OverrideError, match=message):
        load_config(preset="cpu-tiny", overrides=["replay_batch_size=0", override])


def test_overrides_of_the_right_type_and_one_replay_rule(caplog):
    from training.config import OverrideError, load_config

    cfg = load_config(preset="cpu-tiny", overrides=["grad_checkpointing=TRUE", "steps=7", "pretrained=none"])
    assert cfg.grad_checkpointing is True and cfg.steps == 7 and cfg.pretrained is None
    # The preset's replay with no replay set: trained without replay, and said (CLI, flow, recipe alike).
    assert cfg.replay_batch_size == 0 and "replay off" in caplog.text
    with pytest.raises(ValueError, match="needs replay_path"):  # a replay size the user gave is not dropped
        load_config(preset="cpu-tiny", overrides={"replay_batch_size": 8})
    with pytest.raises(OverrideError, match="steps takes an integer, not True"):
        load_config(preset="cpu-tiny", overrides={"steps": True})
