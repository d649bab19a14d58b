"""Models and losses as a user meets them: bad input, and sample/eval from checkpoints."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from gan_dist import checkpoint as ckpt
from gan_dist.cli import main
from gan_dist.config import resolve
from gan_dist.data.builtin import ring8
from gan_dist.data.index import DatasetIndex, ShardInfo
from gan_dist.evaluate import generate
from gan_dist.inference import load_generator
from gan_dist.models import DataShape, build_models
from gan_dist.plan import PlanError, make_plan
from gan_dist.runtime import init_runtime
from gan_dist.trainer.state import build_state
from gan_dist.trainer.step import build_step_context, train_step

pytestmark = pytest.mark.unit


def image_index(size: int, channels: int = 3, classes: int = 10) -> DatasetIndex:
    """An index as a packed image dataset would have it (make_plan reads only the index)."""
    shards = [ShardInfo(f"shard-{i:06d}.tar", 100, 100, 1000, "0" * 64, [10] * classes) for i in range(4)]
    meta = {"kind": "image", "sample_shape": [channels, size, size], "num_classes": classes,
            "fields": {"x": "png", "y": "cls"}}
    return DatasetIndex(root="/nowhere", shards=shards, meta=meta)


@pytest.mark.parametrize("arch, size, ok", [("dcgan", 32, True), ("dcgan", 64, True), ("dcgan", 24, True),
                                            ("dcgan", 28, True), ("cgan", 28, True), ("dcgan", 44, False),
                                            ("dcgan", 8, False), ("cgan", 32, True), ("srgan", 32, True),
                                            ("srgan", 12, False)])
def test_image_sizes_an_architecture_can_make(arch, size, ok):
    cfg = resolve("ring8", [f"model.arch={arch}", "data.batch_size=64"])
    if ok:
        make_plan(cfg, image_index(size), 2)
    else:
        with pytest.raises(PlanError, match=f"model.arch {arch}"):
            make_plan(cfg, image_index(size), 2)


def test_the_plan_says_how_the_model_reaches_the_image_size():
    cfg = resolve("ring8", ["model.arch=cgan", "data.batch_size=64", "model.channels=8"])
    assert "7x7 base, doubled 2 times to 28x28" in make_plan(cfg, image_index(28, channels=1), 2).model
    assert "4x4 base, doubled 3 times to 32x32" in make_plan(cfg, image_index(32, channels=1), 2).model


def test_model_shapes_follow_the_data():
    for arch, size in (("dcgan", 32), ("dcgan", 64), ("cgan", 32), ("dcgan", 28), ("cgan", 28), ("dcgan", 48)):
        cfg = resolve("ring8", [f"model.arch={arch}", "model.channels=8", "model.z_dim=16"])
        G, D = build_models(cfg.model, DataShape("image", (3, size, size), 10))
        z, y = torch.randn(4, 16), torch.arange(4)
        x = G(z, y)
        assert x.shape == (4, 3, size, size) and x.abs().max() <= 1
        assert D(x, y).shape == (4,)
    cfg = resolve("ring8", ["model.arch=srgan", "model.channels=8", "model.sr_blocks=2"])
    G, D = build_models(cfg.model, DataShape("image", (1, 32, 32), 0))
    assert G(torch.randn(2, 1, 8, 8)).shape == (2, 1, 32, 32) and D(torch.randn(2, 1, 32, 32)).shape == (2,)


def test_conditional_models_follow_the_label():
    cfg = resolve("cgan-digits", ["model.channels=8", "model.z_dim=16"])
    G, D = build_models(cfg.model, DataShape("image", (1, 32, 32), 10))
    z, x = torch.randn(4, 16), torch.rand(4, 1, 32, 32) * 2 - 1
    # D: the projection term makes the logit depend on the label from the start, and the
    # class scores are that term for every class.
    logits = torch.stack([D(x, torch.full((4,), c)) for c in range(10)], 1)
    assert (logits.std(1) > 1e-4).all()
    logit, scores = D(x, torch.arange(4), classes=True)
    assert scores.shape == (4, 10)
    assert torch.allclose(scores - scores[:, :1], logits - logits[:, :1], atol=1e-5)
    # G: conditional BatchNorm starts the same for every class; once its rows differ, so do
    # the images of one z under different labels.
    for name, p in G.named_parameters():
        if "gain" in name or "bias" in name:
            torch.nn.init.normal_(p, float("gain" in name), 0.2)
    assert (G(z, torch.zeros(4)) - G(z, torch.ones(4))).abs().amax(dim=(1, 2, 3)).min() > 1e-3


@pytest.mark.parametrize("class_weight", [0, 1])
def test_a_conditional_step_trains_the_classes_of_the_batch(class_weight):
    """G's conditional BatchNorm rows and D's class embedding move for the labels of the real
    batch (which the step also gives G), and only for those; the classification loss's
    softmax moves every class's embedding."""
    cfg = resolve("cgan-digits", ["model.channels=8", "model.z_dim=16", "data.batch_size=8",
                                  f"loss.class_weight={class_weight}"])
    rt = init_runtime(0, cfg.train.mixed_precision)
    st = build_state(cfg, DataShape("image", (1, 16, 16), 10), rt)
    ctx = build_step_context(cfg, 8, rt.device)
    rows = lambda: {n: p.detach().clone() for n, p in [*st.G.named_parameters(), *st.D.named_parameters()]  # noqa: E731
                    if "gain" in n or "bias.weight" in n or "embed" in n}
    before = rows()
    assert "embed.weight" in before and any("gain" in name for name in before), sorted(before)
    batch = {"x": torch.rand(8, 1, 16, 16) * 2 - 1, "y": torch.tensor([3, 5] * 4)}
    stats = train_step(st, rt, ctx, lambda: batch)
    assert ("class_loss_d" in stats and "class_loss_g" in stats) == bool(class_weight)
    for name, old in before.items():
        moved = (rows()[name] != old).any(dim=1).nonzero().flatten().tolist()
        assert moved == (list(range(10)) if class_weight and name == "embed.weight" else [3, 5]), name


def test_conditional_recipe_on_unlabelled_data_is_refused():
    cfg = resolve("ring8", ["model.arch=cgan", "data.batch_size=64"])
    with pytest.raises(PlanError, match="labelled data"):
        make_plan(cfg, image_index(32, classes=0), 1)


def test_pinned_shapes_must_match_the_data():
    cfg = resolve("ring8", ["model.arch=dcgan", "model.image_size=64", "data.batch_size=64"])
    with pytest.raises(PlanError, match="model.image_size is 64, but the data holds 32x32"):
        make_plan(cfg, image_index(32), 1)
    cfg = resolve("ring8", ["model.num_classes=3"])
    with pytest.raises(PlanError, match="model.num_classes"):
        make_plan(cfg, image_index(32, classes=10), 1)


def test_image_architecture_on_points_is_refused(capsys, tmp_path, cache_dir):
    assert main(["train", "--set", "model.arch=dcgan", "--storage", str(tmp_path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs image data" in err[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, cache_dir):
    storage = tmp_path_factory.mktemp("runs")
    assert main(["train", "--no-ray", "--storage", str(storage), "--name", "mlp", "--max-steps", "40",
                 "--set", "model.hidden=16", "--set", "data.batch_size=64", "--set", "train.log_every=20"]) == 0
    return storage / "mlp"


def test_sample_writes_a_png_from_a_run_directory(run_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", str(run_dir), "--n", "300", "--out", str(out)]) == 0
    width, height = Image.open(out).size  # the 512-pixel plot, with its axes and caption around it
    assert width > 512 and height > 512
    assert "step 40" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expect", [
    (["--class", "1"], "--class needs a conditional model"),
    (["--input", "x.png"], "--input needs a super-resolution model"),
    (["--n", "0"], "--n: must be >= 1"),
])
def test_sample_bad_input(run_dir, tmp_path, capsys, argv, expect):
    out = tmp_path / "x.png"
    assert main(["sample", str(run_dir), "--out", str(out), *argv]) == 2
    assert expect in capsys.readouterr().err and not out.exists()


def test_sample_refuses_a_checkpoint_of_another_architecture(run_dir, tmp_path, capsys):
    folder = tmp_path / "step-000040"
    shutil.copytree(ckpt.find_latest(run_dir), folder)
    cfg = resolve("ring8", ["model.hidden=64"]).to_yaml().encode()  # weights are 16 wide
    state = ckpt.load_shared(folder)
    files = {"state.pt": ckpt.to_bytes(state), "config.yaml": cfg}
    ckpt.write_rank_files(folder, 0, 1, 40, files)
    assert main(["sample", str(folder), "--out", str(tmp_path / "y.png")]) == 2
    assert "do not fit model.arch mlp" in capsys.readouterr().err


def test_eval_prints_json_metrics(run_dir, capsys):
    assert main(["eval", str(run_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 40 and result["num_modes"] == 8
    # The checkpoint's G_ema gives what the run's own final eval gave, in memory.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {k: v for k, v in result.items() if k != "step"} == pytest.approx(summary["eval"])
    # And the protocol, counted here: the eval's samples, each nearest a ring8 centre and of
    # high quality within 3 std of it; a mode is covered by one such sample.
    gen = load_generator(str(run_dir))
    samples = generate(gen.G_ema, gen.cfg.eval.num_samples, gen.cfg.model.z_dim, gen.cfg.seed + 1, "cpu")
    mixture = ring8()
    dist = np.linalg.norm(samples[:, None, :] - np.asarray(mixture.means)[None], axis=2)
    good = dist.min(axis=1) < 3 * mixture.std
    assert result["modes_covered"] == len(set(dist.argmin(axis=1)[good]))
    assert result["high_quality_fraction"] == pytest.approx(good.mean())
