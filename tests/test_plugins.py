"""Plug-ins (issue 26): a model and a loss of the user's own, named by entry point or by
module:attr path, checked at start-up; `model.options`; the public API; and what `submit`
ships for them. The example plug-in (examples/custom-model) is installed by `make setup`;
the contract's violations are rows of tests/test_bad_input.py; training the example on Ray
is tests/test_custom_model.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from gan_dist.cli import main
from gan_dist.config import Config, ConfigError, load_yaml_config, resolve
from gan_dist.data.pack import PackOptions, pack
from gan_dist.losses import adversarial_loss
from gan_dist.models import DataShape, arch_label, build_models, model_task
from gan_dist.plan import PlanError, check_models
from gan_dist.runtime import init_runtime
from gan_dist.trainer.state import build_state
from gan_dist.trainer.step import build_step_context, train_step
import plugin_fixtures

pytestmark = pytest.mark.unit

EXAMPLE = REPO / "examples" / "custom-model"
RECIPE = EXAMPLE / "recipes" / "resnet-digits.yaml"
DIGITS = DataShape("image", (1, 32, 32), 10)
POINTS = DataShape("points", (2,), 8)
SMALL = ["model.channels=8", "model.options.d_channels=8", "model.z_dim=16"]


@pytest.fixture(scope="module")
def unlabelled_images(tmp_path_factory) -> Path:
    """64 random 16x16 grey images without labels, packed: an image run whose eval needs no
    classifier."""
    folder = tmp_path_factory.mktemp("images")
    images = np.random.default_rng(0).integers(0, 256, size=(64, 16, 16), dtype=np.uint8)
    np.savez(folder / "grey.npz", images=images)
    pack(str(folder / "grey.npz"), folder / "data", PackOptions(shard_samples=32, encode="png"))
    return folder / "data"


def test_an_entry_point_and_its_module_path_are_the_same_plugin(example_installed):
    by_name = resolve(str(RECIPE), SMALL)
    by_path = resolve(str(RECIPE), [*SMALL, "model.arch=custom_gan.models:build_resnet_gan",
                                    "loss.kind=custom_gan.losses:relativistic"])
    weights = []
    for cfg in (by_name, by_path):
        torch.manual_seed(0)
        G, D = build_models(cfg.model, DIGITS)
        weights.append({k: v for net in (G, D) for k, v in net.state_dict().items()})
        assert model_task(cfg.model.arch) == "unconditional"
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert adversarial_loss("custom-rsgan") is adversarial_loss("custom_gan.losses:relativistic")
    assert adversarial_loss("custom-rsgan").g_uses_real
    assert arch_label("custom-resnet") == "custom-resnet (entry point custom_gan.models:build_resnet_gan)"
    assert arch_label("dcgan") == "dcgan"


def test_the_example_loss_is_the_relativistic_standard_gan_loss(example_installed):
    loss = adversarial_loss("custom-rsgan")
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.0, 1.0, 0.5])
    # -log sigmoid(C(x_r) - C(x_f)) for D, -log sigmoid(C(x_f) - C(x_r)) for G, over the pairs.
    expected_d = -torch.log(torch.sigmoid(real - fake)).mean()
    expected_g = -torch.log(torch.sigmoid(fake - real)).mean()
    torch.testing.assert_close(loss.d_loss(real, fake), expected_d)
    torch.testing.assert_close(loss.g_term(fake, real), expected_g)


def test_names_are_checked_without_importing_anything():
    resolve("ring8", ["model.arch=never_imported_here.models:build"])  # valid config: imported when used
    assert "never_imported_here" not in sys.modules
    with pytest.raises(ConfigError, match="is not a built-in .* or a module:attr path"):
        resolve("ring8", ["loss.kind=no-such-loss"])


def test_options_reach_the_builder_unchanged_and_are_stored():
    cfg = resolve("ring8", ["model.arch=plugin_fixtures:options_seen", "model.options.nested={a: [1, 2], b: x}",
                            "model.options.depth=3"])
    G, _ = build_models(cfg.model, POINTS)
    assert G.options_seen == {"nested": {"a": [1, 2], "b": "x"}, "depth": 3}
    assert load_yaml_config(cfg.to_yaml()).model.options == cfg.model.options
    with pytest.raises(ConfigError, match="model.options has the key 1 .int.: option names are strings"):
        Config.from_dict({"model": {"options": {1: 2}}})


def test_keys_that_do_nothing_for_a_builtin_may_act_for_a_model_of_ones_own():
    warned: list[str] = []
    resolve("ring8", ["model.options.depth=3", "model.channels=8"], warn=warned.append)
    assert warned == ["model.channels=8 has no effect: it needs a convolutional model.arch",
                      "model.options={'depth': 3} has no effect: it needs a model.arch of your own"]
    warned.clear()
    resolve("ring8", ["model.arch=plugin_fixtures:mlp", "model.options.depth=3", "model.channels=8"],
            warn=warned.append)
    assert warned == []  # its builder gets the whole model config


def test_a_model_the_meta_device_cannot_run_is_checked_on_the_cpu():
    cfg = resolve("ring8", ["model.arch=plugin_fixtures:reads_a_value"])
    assert check_models(cfg, POINTS, batch=4).startswith("plugin_fixtures:reads_a_value, G ")
    wrong = resolve("ring8", ["model.arch=plugin_fixtures:reads_a_value_of_three"])
    with pytest.raises(PlanError, match=r"G\(z\) returned shape \[4, 3\] for a batch of 4; the data's samples "
                                        r"need \[4, 2\]"):
        check_models(wrong, POINTS, batch=4)


def test_builtin_models_keep_the_contract():
    for arch, shape in (("mlp", POINTS), ("dcgan", DIGITS), ("cgan", DIGITS),
                        ("srgan", DataShape("image", (3, 32, 32), 0))):
        cfg = resolve("ring8", [f"model.arch={arch}", "model.channels=8", "model.z_dim=16"], warn=lambda m: None)
        check_models(cfg, shape, batch=3)


def test_the_g_step_gives_a_relativistic_loss_d_s_logits_on_the_step_s_reals():
    cfg = resolve("ring8", ["loss.kind=plugin_fixtures:recording", "data.batch_size=16", "model.hidden=16"])
    rt = init_runtime(0, cfg.train.mixed_precision)
    st = build_state(cfg, POINTS, rt)
    ctx = build_step_context(cfg, 16, rt.device)
    real = torch.randn(16, 2)
    plugin_fixtures.recorder.g_calls.clear()
    train_step(st, rt, ctx, lambda: {"x": real, "y": None})
    (fake_seen, real_seen), = plugin_fixtures.recorder.g_calls
    # D was updated before G's step and not since: its logits on the batch now are the ones G's loss saw.
    with torch.no_grad():
        torch.testing.assert_close(real_seen, st.D(real, None))
    assert fake_seen.shape == real_seen.shape == (16,)


def test_gradient_penalty_and_r1_act_on_a_plugin_d(example_installed):
    cfg = resolve(str(RECIPE), [*SMALL, "data.batch_size=8", "loss.gp_weight=10", "loss.r1_gamma=1",
                                "loss.r1_interval=1"])
    rt = init_runtime(0, cfg.train.mixed_precision)
    st = build_state(cfg, DataShape("image", (1, 16, 16), 10), rt)
    ctx = build_step_context(cfg, 8, rt.device)
    batch = {"x": torch.rand(8, 1, 16, 16) * 2 - 1, "y": torch.arange(8)}
    stats = train_step(st, rt, ctx, lambda: batch)
    assert float(stats["gradient_penalty"]) > 0 and float(stats["r1_penalty"]) > 0
    assert all(torch.isfinite(v).all() for v in stats.values())


def test_the_package_imports_no_torch_until_the_api_is_used():
    code = ("import sys, gan_dist; assert 'torch' not in sys.modules; "
            "assert set(gan_dist.__all__) == {'RunResult', 'load_config', 'load_generator', 'train'}; "
            "cfg = gan_dist.load_config('ring8', ['model.hidden=8']); assert 'torch' in sys.modules; "
            "print(cfg.model.hidden, gan_dist.RunResult.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["8", "RunResult"]


def test_the_public_api_trains_the_example_and_loads_its_generator(example_installed, unlabelled_images,
                                                                    tmp_path):
    import gan_dist

    cfg = gan_dist.load_config(str(RECIPE), [*SMALL, f"data.source={unlabelled_images}", "data.batch_size=8",
                                             "run.use_ray=false", "train.max_steps=4", "train.log_every=2",
                                             f"run.storage={tmp_path}", "run.name=api", "metrics.port=0"])
    result = gan_dist.train(cfg)
    assert isinstance(result, gan_dist.RunResult) and result.status == "completed", result.summary
    assert result.run_dir == tmp_path / "api" and result.summary.steps == 4
    gen = gan_dist.load_generator(result.run_dir)
    assert gen.step == 4 and gen.task == "unconditional" and gen.cfg.model.arch == "custom-resnet"
    with torch.no_grad():
        images = gen.G_ema(torch.randn(3, 16))
    assert images.shape == (3, 1, 16, 16) and images.abs().max() <= 1



def test_the_cli_trains_samples_and_evaluates_through_the_public_api(example_installed, unlabelled_images,
                                                                      tmp_path, monkeypatch, capsys):
    """`gan-dist train` is the API's load_config then train; `sample` and `eval` start from its
    load_generator: each call goes through gan_dist.api, where a spy records it."""
    from gan_dist import api

    called = []

    def spy(name: str) -> None:
        real = getattr(api, name)

        def recorded(*args, **kwargs):
            called.append(name)
            return real(*args, **kwargs)
        monkeypatch.setattr(api, name, recorded)

    for name in ("load_config", "train", "load_generator"):
        spy(name)
    sets = [arg for o in [*SMALL, f"data.source={unlabelled_images}", "data.batch_size=8", "train.log_every=2",
                          "metrics.port=0"] for arg in ("--set", o)]
    assert main(["train", str(RECIPE), "--no-ray", "--max-steps", "2", "--storage", str(tmp_path), "--name", "cli",
                 *sets]) == 0
    assert called == ["load_config", "train"]
    assert main(["sample", str(tmp_path / "cli"), "--n", "4", "--out", str(tmp_path / "grid.png")]) == 0
    assert main(["eval", str(tmp_path / "cli")]) == 0
    assert called == ["load_config", "train", "load_generator", "load_generator"]
    assert '"step": 2' in capsys.readouterr().out

# Submitting ------------------------------------------------------------------------------

def runtime_env(capsys, *argv: str) -> dict:
    code = main(["submit", "--address", "http://127.0.0.1:8265", "--dry-run", *argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.strip().startswith("runtime_env"))
    return ast.literal_eval(line.split(None, 1)[1])


def test_submit_ships_a_plugin_package_and_the_metadata_of_its_entry_points(capsys, example_installed):
    env = runtime_env(capsys, str(RECIPE))
    package, info = map(Path, env["py_modules"])
    assert package == EXAMPLE / "custom_gan" and env["working_dir"] == str(REPO)
    assert info.name.startswith("gan_dist_custom_model-") and info.name.endswith(".dist-info")
    assert "custom-resnet = custom_gan.models:build_resnet_gan" in (info / "entry_points.txt").read_text()
    # By module path the package alone is enough; the built-ins need nothing shipped.
    env = runtime_env(capsys, str(RECIPE), "--set", "model.arch=custom_gan.models:build_resnet_gan",
                      "--set", "loss.kind=custom_gan.losses:relativistic")
    assert env["py_modules"] == [str(EXAMPLE / "custom_gan")]
    assert "py_modules" not in runtime_env(capsys, "dcgan-digits")


def test_submit_refuses_a_plugin_it_cannot_find_here(capsys):
    code = main(["submit", "--address", "http://127.0.0.1:8265", "--dry-run", "--set",
                 "model.arch=no_such_plugin_module:build"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "model.arch no_such_plugin_module:build: the module no_such_plugin_module is not importable here" in err


def test_a_module_path_finds_a_module_in_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "my_gan_in_cwd.py").write_text(
        "from gan_dist.models.mlp import build_mlp_gan\n\ndef build(cfg, shape):\n    return build_mlp_gan(cfg, shape)\n")
    monkeypatch.setattr(sys, "path", list(sys.path))  # the search adds the current folder to it
    monkeypatch.chdir(tmp_path)
    cfg = resolve("ring8", ["model.arch=my_gan_in_cwd:build", "model.hidden=8"])
    G, D = build_models(cfg.model, POINTS)
    assert sys.path[-1] == str(tmp_path) and G(torch.randn(2, 256)).shape == (2, 2)
