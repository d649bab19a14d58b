"""data.source patterns: brace expansion counted before it is expanded, checked against the index."""

from __future__ import annotations

import time

import pytest
from braceexpand import braceexpand

from data_helpers import image_dataset
from gan_dist.data import braces
from gan_dist.data.errors import DataError
from gan_dist.data.index import DatasetIndex, ShardInfo
from gan_dist.data.sources import NamePattern, _select, resolve_source

pytestmark = pytest.mark.unit

PATTERNS = ["a{1..3}b", "{a..c}", "index.html{,.backup}", "python{2.{5..7},3.{2,3}}", "item{01..10}",
            "{10..1..3}x", "s-{000000..000012}.tar", "{a,b}{0..2}{x,y}", "plain", "{x}", "{}",
            "a\\{b,c\\}", "{-3..3}", "{a..e..2}", "ds/{a/x,b/y}.tar"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_expansion_matches_the_braceexpand_package(pattern):
    tree = braces.parse(pattern)
    ours = list(braces.expand(tree))
    assert ours == list(braceexpand(pattern)) and braces.count(tree) == len(ours)


def test_a_billion_names_are_counted_not_listed():
    started = time.monotonic()
    tree = braces.parse("ds/shard-{000000000..999999999}-{a,b}.tar")
    assert braces.count(tree) == 2 * 10**9
    assert next(braces.expand(tree)) == "ds/shard-000000000-a.tar"  # lazily, from the front
    assert time.monotonic() - started < 5  # braceexpand would build the range as a list (gigabytes)


def test_unbalanced_braces_are_an_error():
    for bad in ("a{b", "a}b", "{a,{b}"):
        with pytest.raises(braces.BraceError, match="unbalanced braces"):
            braces.parse(bad)


def test_source_patterns_select_shards_from_the_index(tmp_path):
    image_dataset(tmp_path / "ds", 20, per_shard=4)  # 5 shards
    ds = tmp_path / "ds"
    # a comma inside braces is the pattern's, not a list of sources
    picked = resolve_source(f"{ds}/shard-{{000001,000003}}.tar")
    assert [s.shard for s in picked.shards] == ["shard-000001.tar", "shard-000003.tar"]
    assert picked.num_samples == 8
    # two sources, one a glob
    both = resolve_source(f"{ds}/shard-00000[02].tar,{ds}/shard-000004.tar")
    assert [s.shard.rsplit("/", 1)[-1] for s in both.shards] == ["shard-000000.tar", "shard-000002.tar",
                                                                 "shard-000004.tar"]
    # a pattern too big to list before the index is read is checked against it: with as
    # many names as shards it selects them, with more it is refused at once
    big = f"{ds}/shard-{{000000..000004}}.tar"
    assert len(resolve_source(big).shards) == 5
    many = f"{tmp_path}/{{ds,ds}}/shard-{{000000..000999}}.tar"  # 2,000 names: over the 1024 listed up front
    with pytest.raises(DataError, match="names 1,000 shards, but .* lists 5"):
        resolve_source(many)


def test_a_big_pattern_selects_from_a_big_index():
    """Past 1024 names a pattern is matched against the index, not listed up front."""
    shards = [ShardInfo(f"shard-{i:06d}.tar", 1, 1, 1024, "0" * 64, []) for i in range(3000)]
    index = DatasetIndex("/nowhere", shards, {"kind": "points", "sample_shape": [2], "fields": {"x": "pts.npy"}})
    pattern = "shard-{000000..001999}.tar"
    tree = braces.parse(pattern)
    picked = _select(index, [NamePattern(pattern, tree, braces.count(tree))])
    assert len(picked.shards) == 2000 and picked.shards[-1].shard == "shard-001999.tar"
    assert picked.meta["num_records"] == 2000
