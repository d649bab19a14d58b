"""Config: recipes, overrides, and every kind of bad input rejected before anything starts."""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from gan_dist.cli import main
from gan_dist.config import Config, ConfigError, flatten as flat, recipe_names, resolve

pytestmark = pytest.mark.unit


def test_shipped_recipes_resolve_to_what_their_files_say():
    assert {"ring8", "grid25"} <= set(recipe_names())
    for name in recipe_names():
        cfg = resolve(name)
        assert cfg.recipe == name
        written = flat(yaml.safe_load((resources.files("gan_dist") / "recipes" / f"{name}.yaml").read_text()))
        resolved = flat(cfg.to_dict())
        assert len(written) >= 10 and {key: resolved.get(key) for key in written} == written, name


def test_veegan_protocol_in_ring8_and_grid25():
    for name, source in (("ring8", "builtin:ring8"), ("grid25", "builtin:grid25")):
        cfg = resolve(name)
        assert cfg.data.source == source
        assert (cfg.model.arch, cfg.model.depth, cfg.model.hidden, cfg.model.activation) == ("mlp", 2, 128, "tanh")
        assert (cfg.model.z_dim, cfg.data.batch_size, cfg.train.max_steps) == (256, 512, 25000)


def test_overrides_are_typed():
    cfg = resolve("ring8", ["optim.lr_g=2e-4", "train.max_steps=10", "run.use_ray=false", "run.name=abc"])
    assert cfg.optim.lr_g == pytest.approx(2e-4) and isinstance(cfg.optim.lr_g, float)
    assert cfg.train.max_steps == 10 and cfg.run.use_ray is False and cfg.run.name == "abc"


def test_round_trip_through_yaml():
    cfg = resolve("grid25", ["seed=7"])
    from gan_dist.config import load_yaml_config

    assert load_yaml_config(cfg.to_yaml()) == cfg


@pytest.mark.parametrize("overrides, key", [
    (["optim.lr_g=-1"], "optim.lr_g"),
    (["optim.lr_d=0"], "optim.lr_d"),
    (["optim.betas=1"], "optim.betas"),
    (["data.batch_size=abc"], "data.batch_size"),
    (["model.arch=transformer"], "model.arch"),
    (["loss.kind=magic"], "loss.kind"),
    (["train.max_steps=1.5"], "train.max_steps"),
    (["schedule.n_critic=0"], "schedule.n_critic"),
    (["optim.lr_decay=step"], "optim.lr_decay"),
    (["optim.lr_decay_start=1"], "optim.lr_decay_start"),
    (["run.name=has space"], "run.name"),
    (["nonsense=1"], "nonsense"),
    (["optim=3"], "optim"),
])
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        resolve("ring8", overrides)
    assert key in str(err.value)


def test_unknown_recipe():
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        resolve("nope")


def test_dry_run_prints_plan_and_writes_nothing(capsys, tmp_path, cache_dir):
    assert main(["train", "--dry-run", "--storage", str(tmp_path), "--name", "plan"]) == 0
    out = capsys.readouterr().out
    assert "recipe: ring8" in out  # the resolved config is printed
    assert "world size        2" in out and "256 per rank" in out
    assert "shards per rank   8, 8" in out and "step 0: Dmain, Gmain" in out
    assert not any(tmp_path.iterdir())


def test_resume_with_changed_config_is_refused(capsys, tmp_path, cache_dir):
    run = tmp_path / "same"
    run.mkdir()
    (run / "config.yaml").write_text(resolve("ring8", ["run.name=same"]).to_yaml())
    assert main(["train", "--storage", str(tmp_path), "--name", "same", "--set", "optim.lr_g=0.5", "--dry-run"]) == 2
    assert "optim.lr_g" in capsys.readouterr().err
    # Where and how long it runs may change on resume.
    assert main(["train", "--storage", str(tmp_path), "--name", "same", "--max-steps", "7", "--dry-run"]) == 0
    assert "resuming" in capsys.readouterr().out


def test_config_defaults_validate():
    Config().validate()


def test_a_key_without_effect_is_a_warning_that_names_it():
    said = []
    resolve("dcgan-digits", ["model.hidden=64", "loss.r1_interval=4", "model.channels=8"], warn=said.append)
    assert said == ["model.hidden=64 has no effect: it needs model.arch mlp",
                    "loss.r1_interval=4 has no effect: it needs loss.r1_gamma > 0 or loss.r2_gamma > 0"]
    said.clear()
    resolve("ring8", ["model.channels=8"], warn=said.append)
    assert said == ["model.channels=8 has no effect: it needs a convolutional model.arch"]


def test_moved_keys_still_work_with_a_warning_and_stored_configs_load_silently():
    said = []
    cfg = resolve("ring8", ["train.checkpoint_every=70", "train.torch_threads=2"], warn=said.append)
    assert (cfg.checkpoint.every, cfg.perf.torch_threads) == (70, 2)
    assert said == ["train.checkpoint_every is now checkpoint.every", "train.torch_threads is now perf.torch_threads"]
    from gan_dist.config import load_yaml_config

    assert load_yaml_config("train:\n  keep_checkpoints: 5\n").checkpoint.keep == 5
