"""`gan-dist bench`: the quick mode as a smoke test (every figure a finite number; no
thresholds, these are benchmarks), the GPU comparison's code path on a CPU without Ray,
and bad input."""

from __future__ import annotations

import importlib
import json
import math
import os

import pytest

from conftest import REPO
from gan_dist.bench import description, families
from gan_dist.bench.cli import GOALS, GPU_GOALS


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


@pytest.mark.ray
@pytest.mark.slow
def test_quick_bench_reports_every_figure(cli, tmp_path):
    out = tmp_path / "bench.json"
    res = cli("bench", "--quick", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in GOALS:
        assert finite(result[key]), (key, result.get(key))
        assert isinstance(result["pass"][key], bool) and key in res.stdout  # and in the table
    assert result["mode"] == "quick" and result["machine"]["cores"] == os.cpu_count() and result["machine"]["torch"]
    assert result["details"]["ray"]["samples_per_second"]["2w"]
    # Start-up: the default command, in a process of its own, to its first step on its local Ray.
    startup = result["details"]["startup"]
    assert startup["command"].startswith("gan-dist train ") and startup["world_size"] >= 1
    assert 0 < result["startup_seconds"] < startup["seconds"]
    assert startup["runs"] == [result["startup_seconds"]]  # --quick: one run; the full bench takes 3


@pytest.mark.unit
@pytest.mark.slow
def test_gpu_comparison_runs_on_cpu_without_ray(cli, tmp_path):
    """The --gpu path (trainer and classic baseline side by side) must not import Ray: a
    `ray` package that fails to import shadows the installed one."""
    hidden = tmp_path / "no-ray" / "ray"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('ray is not installed on this machine')\n")
    path = os.pathsep.join([str(hidden.parent), os.environ.get("PYTHONPATH", ""), str(REPO)])
    out = tmp_path / "gpu.json"
    res = cli("bench", "--gpu", "--device", "cpu", "--quick", "--set", "model.channels=8",
              "--set", "data.batch_size=16", "--set", "data.num_workers=0",
              "--set", "monitor.class_coverage=false",  # no classifier of shapes-64 to train on this CPU
              "--out", str(out),
              env={"PYTHONPATH": path})
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in (*GPU_GOALS, "images_per_second", "images_per_second_per_gpu", "baseline_images_per_second"):
        assert finite(result[key]) and result[key] > 0, key
    assert result["details"]["device"] == "cpu" and result["details"]["batch"] == 16


@pytest.mark.unit
@pytest.mark.parametrize("args, message", [
    (["--gpu"], "--gpu needs a CUDA GPU"),
    (["--set", "model.channels=8"], "--set and --device apply to --gpu only"),
    (["--out", "/nonexistent-folder/bench.json"], "does not exist"),
])
def test_bad_input_is_one_line_exit_2(cli, args, message):
    res = cli("bench", *args)
    assert res.returncode == 2 and message in res.stderr and res.stderr.count("\n") == 1, res.stderr


@pytest.mark.unit
@pytest.mark.parametrize("module", ["families", "floors", "inception", "pbt"])
def test_benchmark_help_describes_it_in_a_whole_sentence(module):
    """A docstring whose first paragraph spans lines, or leads into a command, still gives a
    whole sentence as its `--help` description, not its first line."""
    doc = importlib.import_module(f"gan_dist.bench.{module}").__doc__
    text = description(doc)
    assert "\n" not in text and "  " not in text and text.endswith(".") and not text.endswith(("..", ":.", ",."))
    assert len(text) > len(doc.splitlines()[0])


@pytest.mark.unit
def test_families_ratio_is_of_the_mean_fids_over_seeds():
    def row(recipe, fid):
        return {"recipe": recipe, "eval": {"fid10k": fid, "kid10k": 0.0, "precision10k": 0.5, "recall10k": 0.5,
                                           "inception_n": 10_000}}
    assert families.classic_ratio([row(families.BASELINE, 12.0)]) is None
    rows = [row(families.BASELINE, 12.0), row(families.BASELINE, 13.0), row(families.CLASSIC, 15.0),
            row(families.CLASSIC, 16.25), row("hinge-fashion", 1.0)]
    ratio = families.classic_ratio(rows)
    assert ratio["ratio"] == pytest.approx(12.5 / 15.625) and ratio["met"]
    assert not families.classic_ratio([row(families.BASELINE, 12.22), row(families.CLASSIC, 15.12)])["met"]
