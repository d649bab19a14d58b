"""Shared fixtures (an isolated data cache, a CLI runner, gloo groups), the test tiers, and
the isolation every test gets: environment variables and Accelerate's process-wide state are
restored after it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState, PartialState

from gan_dist import plugins

REPO = Path(__file__).resolve().parents[1]

# Every test belongs to one of these tiers (docs/testing.md); `slow` combines with them.
TIERS = ("unit", "gloo", "ray", "integration")

# Steps of the session's digits classifier (cache_dir): the few that tests/test_custom_model.py
# and others trained it for before, enough for the eval's class metrics to mean something.
DIGITS_CLASSIFIER_STEPS = 100

# Variables a session fixture sets for the whole session on purpose; the isolation below
# restores them to these values instead of removing them.
SESSION_ENV: dict[str, str] = {}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything: a fast subset checks every test too
def pytest_collection_modifyitems(config, items):
    untiered = [item.nodeid for item in items if not any(item.get_closest_marker(t) for t in TIERS)]
    if untiered:
        listed = "\n  ".join(untiered[:20]) + (f"\n  ... and {len(untiered) - 20} more" if len(untiered) > 20 else "")
        raise pytest.UsageError(f"{len(untiered)} test(s) carry none of the tier markers {', '.join(TIERS)} "
                                f"(docs/testing.md; a module-level `pytestmark` tiers a whole file):\n  {listed}")
    if hasattr(config, "workerinput"):  # an xdist worker
        ray_modules_first(items)


def ray_modules_first(items) -> None:
    """Under `make test`'s two xdist workers (`--dist loadfile --no-loadscope-reorder`, each
    module to one worker in this order): the modules that start Ray take most of the suite's
    time, so they go first, and the many short modules fill the end, where each worker
    finishes its last one at about the same time. Within a module the order stays."""
    ray_modules = {item.module.__name__ for item in items if item.get_closest_marker("ray")}
    items.sort(key=lambda item: item.module.__name__ not in ray_modules)


def _restore_environment(saved: dict[str, str]) -> None:
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)
    os.environ.update(SESSION_ENV)


def _reset_accelerate() -> None:
    """Forget the Accelerator a test made in this process: its state is process-wide
    (mixed precision, device, distributed type) and the next Accelerator would adopt it.
    The calls accelerate's own AccelerateTestCase.tearDown makes."""
    if AcceleratorState._shared_state or PartialState._shared_state or GradientState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.fixture(autouse=True, scope="module")
def _isolate_module():
    """What a module-scoped fixture changed ends with its module."""
    saved, threads = dict(os.environ), torch.get_num_threads()
    yield
    _restore_environment(saved)
    _reset_accelerate()
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolate_test():
    """Environment variables (GAN_DIST_CACHE, RANK, WORLD_SIZE, MASTER_ADDR, RAY_*, OMP_NUM_THREADS,
    anything a test or the code under test set), Accelerate's singletons and torch's thread
    count are restored after each test."""
    saved, threads = dict(os.environ), torch.get_num_threads()
    yield
    _restore_environment(saved)
    _reset_accelerate()
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """Builtin datasets are packed once per test session into a private cache; GAN_DIST_CACHE
    names it for the whole session, in this process and the ones it starts.

    builtin:digits and its eval classifier go in first, the classifier trained for
    DIGITS_CLASSIFIER_STEPS in one thread (about 5 s here; accuracy 0.86): a run on the digits
    trains it for its eval when the cache lacks it, 1,500 steps (about a minute here), and it
    is cached by the data alone, whatever the steps. So every test of the session meets the
    same classifier, whichever test needs it first."""
    from gan_dist.data.sources import resolve_source
    from gan_dist.evaluate import domain_classifier

    path = tmp_path_factory.mktemp("gan-dist-cache")
    SESSION_ENV["GAN_DIST_CACHE"] = str(path)
    os.environ["GAN_DIST_CACHE"] = str(path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        domain_classifier(resolve_source("builtin:digits"), torch.device("cpu"), steps=DIGITS_CLASSIFIER_STEPS)
    finally:
        torch.set_num_threads(threads)
    return path


@pytest.fixture(scope="session")
def example_installed() -> None:
    """The example plug-in package (examples/custom-model), installed into the test environment
    with `pip install -e` as `make setup` does: its entry points must be there."""
    missing = {"custom-resnet"} - set(plugins.entry_points(plugins.MODEL_GROUP))
    missing |= {"custom-rsgan"} - set(plugins.entry_points(plugins.LOSS_GROUP))
    if missing:
        pytest.fail(f"the example plug-in (examples/custom-model) is not installed in this environment (no entry "
                    f"point {', '.join(sorted(missing))}): run `make setup`, or `.venv/bin/python -m pip install "
                    f"-c constraints.txt --no-deps -e examples/custom-model`")
    # Editable: the tests exercise this checkout's example, not a copy installed from elsewhere.
    spec = importlib.util.find_spec("custom_gan")
    folder = REPO / "examples" / "custom-model" / "custom_gan"
    if spec is None or Path(spec.origin).parent != folder:
        pytest.fail(f"custom_gan is imported from {spec and spec.origin}, not from {folder}: reinstall it with "
                    f"`.venv/bin/python -m pip install -c constraints.txt --no-deps -e examples/custom-model`")


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, cache: Path, timeout: float = 600, env: dict | None = None, cwd: Path | None = None) -> CliResult:
    """Run `gan-dist ARGS` in a subprocess, as a user would."""
    full_env = dict(os.environ, GAN_DIST_CACHE=str(cache), PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "gan_dist", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd or REPO)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(cache_dir):
    def _run(*args: str, **kwargs) -> CliResult:
        return run_cli(*args, cache=cache_dir, **kwargs)
    return _run


def join_gloo_group(rank: int, world_size: int, store: str) -> None:
    """Join a gloo process group through a file store private to the test (a TCP port picked
    as "free" can be taken by another job on the machine); Accelerate adopts the group."""
    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)


def leave_gloo_group() -> None:
    """End a spawned rank: leave the group and exit at once, skipping the interpreter's
    finalization. gloo's worker threads free their finished work objects on their own time,
    and freeing one takes the GIL (torch's saved thread-local state holds a Python object);
    during finalization that aborts the process ("terminate called without an active
    exception", SIGABRT: seen in a core dump, 2026-11-23). Everything a rank reports is
    written to files before this."""
    import torch.distributed as dist

    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_cli_listening(*args: str, cache: Path, timeout: float = 600) -> tuple[CliResult, set[tuple[str, int, str]]]:
    """Run `gan-dist ARGS` in a subprocess and record, with `ss`, every (address, port, process
    name) that it or a process it started listened on while it ran."""
    import re
    import time

    import psutil

    env = dict(os.environ, GAN_DIST_CACHE=str(cache), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "gan_dist", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    listening: set[tuple[str, int, str]] = set()
    deadline = time.monotonic() + timeout

    def watch() -> None:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                pids = {proc.pid} | {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
            except psutil.Error:
                return
            out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
            for line in out.splitlines():
                owner = re.search(r'\(\("([^"]+)",pid=(\d+)', line)
                if owner and int(owner.group(2)) in pids:
                    addr, _, port = line.split()[3].rpartition(":")
                    listening.add((addr, int(port), owner.group(1)))
            time.sleep(0.2)

    import threading

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    stdout, stderr = proc.communicate(timeout=timeout)
    watcher.join()
    return CliResult(proc.returncode, stdout, stderr), listening
