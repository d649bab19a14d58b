"""The quality benchmark: the bar it checks, and one tiny run of its seed loop."""

from __future__ import annotations

import json

import pytest

from gan_dist.bench import quality

pytestmark = pytest.mark.unit


def ev(modes, hq, kl, num_modes=25):
    return {"modes_covered": modes, "num_modes": num_modes, "high_quality_fraction": hq, "mode_kl": kl}


@pytest.mark.parametrize("result, ok", [
    (ev(25, 0.90, 0.05), True),
    (ev(24, 0.99, 0.00), False),  # a mode missing
    (ev(25, 0.89, 0.00), False),  # too few high-quality samples
    (ev(25, 0.95, 0.051), False),  # unbalanced modes
])
def test_grid25_bar(result, ok):
    assert quality.passes("grid25", result) is ok


def test_ring8_bar_has_no_kl_limit_and_other_recipes_no_bar():
    assert quality.passes("ring8", ev(8, 0.9, 0.5, num_modes=8)) is True
    assert quality.passes("ring8", ev(7, 0.99, 0.0, num_modes=8)) is False
    assert quality.passes("my-mixture", ev(3, 0.1, 1.0)) is None


def test_seeds_run_one_after_another_into_a_table(tmp_path, cache_dir, capsys):
    out = tmp_path / "q.json"
    assert quality.main(["--recipe", "ring8", "--seeds", "2", "--first-seed", "3", "--max-steps", "20",
                         "--set", "model.hidden=16", "--set", "data.batch_size=64", "--set", "train.log_every=10",
                         "--storage", str(tmp_path / "runs"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    runs = result["runs"]
    assert result["pass_mean"] is False and result["pass_seeds"] == [False, False]
    assert result["mean"]["high_quality_fraction"] == pytest.approx(
        sum(r["eval"]["high_quality_fraction"] for r in runs) / 2)
    assert [r["seed"] for r in runs] == [3, 4] and all(r["steps"] == 20 for r in runs)
    for r in runs:  # each seed is its own run, trained with that seed
        run_dir = tmp_path / "runs" / f"ring8-seed{r['seed']}"
        assert f"\nseed: {r['seed']}\n" in (run_dir / "config.yaml").read_text()
        assert json.loads((run_dir / "summary.json").read_text())["eval"] == r["eval"]
    table = capsys.readouterr().out
    assert "| 3 |" in table and "| 4 |" in table and "| mean |" in table
    assert table.count("FAIL") == 3 and "| FAIL (0/2 seeds pass) |" in table  # 20 steps are far from the bar
