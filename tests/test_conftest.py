"""The suite's own rules, from tests/conftest.py, run on small inner test sessions: a test
without a tier is refused at collection, and what one test changes in the environment, in
Accelerate's process-wide state or in torch's thread count does not reach the next."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
pytest_plugins = ("pytester",)

CONFTEST = Path(__file__).with_name("conftest.py")

LEAKY = """
import os

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState

pytestmark = pytest.mark.unit
BEFORE = {}


def test_a_changes_everything(cache_dir):
    BEFORE["threads"] = torch.get_num_threads()
    Accelerator(cpu=True, mixed_precision="bf16")
    os.environ.update(RANK="3", WORLD_SIZE="4", MASTER_ADDR="10.0.0.1", RAY_ADDRESS="127.0.0.1:1")
    os.environ["GAN_DIST_CACHE"] = "/elsewhere"
    torch.set_num_threads(BEFORE["threads"] + 1)
    assert AcceleratorState._shared_state and PartialState._shared_state


def test_b_sees_none_of_it(cache_dir):
    leaked = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "RAY_ADDRESS") if name in os.environ]
    assert leaked == []
    assert os.environ["GAN_DIST_CACHE"] == str(cache_dir)  # the session's value, kept on purpose
    assert torch.get_num_threads() == BEFORE["threads"]
    assert not AcceleratorState._shared_state and not PartialState._shared_state
    # With bf16's state still there, Accelerate would refuse another precision.
    assert Accelerator(cpu=True, mixed_precision="no").mixed_precision == "no"
"""


@pytest.fixture
def inner(pytester):
    pytester.makeconftest(CONFTEST.read_text())
    return pytester


def test_environment_accelerate_and_threads_are_restored_after_each_test(inner):
    inner.makepyfile(test_leaky=LEAKY)
    result = inner.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2)


def test_a_test_without_a_tier_fails_collection_even_in_a_subset(inner):
    inner.makepyfile(test_mixed="""
import pytest

@pytest.mark.unit
def test_tiered():
    pass

@pytest.mark.slow
def test_slow_is_not_a_tier():
    pass
""")
    result = inner.runpytest_subprocess("-p", "no:cacheprovider", "-m", "unit")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*1 test(s) carry none of the tier markers unit, gloo, ray, integration*",
                                 "*test_mixed.py::test_slow_is_not_a_tier"])
