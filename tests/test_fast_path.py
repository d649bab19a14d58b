"""The fast path: device-side skip of non-finite updates, fused Adam, channels_last, the
GPU prefetcher's checkpoint semantics, and rank-symmetric buffer broadcasts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from gan_dist.config import ConfigError, resolve
from gan_dist.data.sources import resolve_source
from gan_dist.data.stream import RankStream
from gan_dist.models import DataShape
from gan_dist.runtime import Runtime, init_runtime, quiet_size_one_stride_warnings
from gan_dist.trainer.prefetch import DevicePrefetcher
from gan_dist.trainer.state import build_state, fingerprint
from gan_dist.trainer.step import build_step_context, train_step

pytestmark = pytest.mark.unit

POINTS = DataShape("points", (2,))


def ring8_state(*overrides: str):
    cfg = resolve("ring8", ["model.hidden=16", "data.batch_size=32", *overrides])
    rt = init_runtime(0, cfg.train.mixed_precision)
    return build_state(cfg, POINTS, rt), rt, build_step_context(cfg, 32, rt.device)


@pytest.fixture
def no_host_sync(monkeypatch):
    """Inside the `with`, any read of a tensor's value on the host raises."""
    class Guard:
        def __enter__(self):
            def sync(*args, **kwargs):
                raise AssertionError("host-device sync inside the step")
            for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
                monkeypatch.setattr(torch.Tensor, name, sync)

        def __exit__(self, *exc):
            monkeypatch.undo()
    return Guard()


@pytest.mark.parametrize("fused,on_host", [(True, False), (False, False), (True, True), (False, True)])
def test_nonfinite_update_is_skipped_and_counted(fused, on_host, no_host_sync):
    """Decided on the device as on a GPU (on_host False), or by one read on a CPU."""
    st, rt, ctx = ring8_state(f"perf.fused_adam={str(fused).lower()}")
    assert rt.host_reads_are_free
    rt.host_reads_are_free = on_host
    real = {"x": torch.rand(32, 2), "y": None}
    train_step(st, rt, ctx, lambda: real)
    d_before, opt_before = fingerprint(st.D), [v.clone() for v in st.opt_D.state[st.D.net[0].weight].values()]
    assert len(opt_before) == 3  # step, exp_avg, exp_avg_sq: compared below
    poisoned = {"x": real["x"] * float("nan"), "y": None}
    if fused and not on_host:  # decided on the device: no host sync anywhere in the step
        with no_host_sync:
            train_step(st, rt, ctx, lambda: poisoned)
    else:
        train_step(st, rt, ctx, lambda: poisoned)
    assert st.nonfinite_steps == 1
    assert fingerprint(st.D) == d_before  # weights, and Adam's moments and step count, untouched
    assert all(torch.equal(a, b) for a, b in zip(opt_before, st.opt_D.state[st.D.net[0].weight].values()))
    train_step(st, rt, ctx, lambda: real)
    assert fingerprint(st.D) != d_before and st.nonfinite_steps == 1


def test_fast_defaults_on_cpu():
    cfg = resolve("dcgan-digits", ["model.channels=8"])
    rt = init_runtime(0, "auto")
    assert rt.accelerator.mixed_precision == "no"  # auto: bf16 only on GPUs that have it
    st = build_state(cfg, DataShape("image", (1, 32, 32)), rt)
    conv = next(m for m in st.D.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert st.opt_G.defaults["fused"] and st.opt_D.defaults["fused"]
    with pytest.raises(ConfigError, match="perf.compile"):
        resolve("dcgan-digits-wgangp", ["perf.compile=true"])


def test_prefetcher_checkpoints_the_cursor_of_the_batches_trained_on(cache_dir):
    index = resolve_source("builtin:ring8")
    plain = RankStream(index, 0, 1, 512, seed=0, window=8)
    ahead = DevicePrefetcher(RankStream(index, 0, 1, 512, seed=0, window=8), torch.device("cpu"))
    for _ in range(5):
        assert np.array_equal(ahead.next_batch()["x"].numpy(), plain.next_batch()["x"])
    assert ahead.state_dict() == plain.state_dict()  # the batch in flight is not counted
    resumed = RankStream(index, 0, 1, 512, seed=0, window=8)
    resumed.load_state_dict(ahead.state_dict())
    assert np.array_equal(resumed.next_batch()["x"], ahead.next_batch()["x"].numpy())


class _Accelerator:
    num_processes, process_index, is_main_process = 2, 0, True


@pytest.mark.parametrize("first", [torch.float32, torch.int64])
def test_buffers_are_broadcast_in_the_modules_order(first, monkeypatch):
    """Every rank must broadcast the same buffers at the same turn: the dtype order is the
    modules' order, not a set's (which follows object addresses, different per process)."""
    module = nn.Module()
    for i, dtype in enumerate((first, torch.float32 if first == torch.int64 else torch.int64)):
        module.register_buffer(f"b{i}", torch.zeros(3, dtype=dtype))
    sent = []
    monkeypatch.setattr("gan_dist.runtime.dist.broadcast", lambda t, src: sent.append(t.dtype))
    Runtime(_Accelerator()).sync_buffers(module)
    assert sent[0] == first and len(sent) == 2


def test_a_run_started_before_new_keys_existed_resumes(tmp_path):
    """A config.yaml written before the perf keys existed, and before the checkpoint and perf
    sections were split out of train (the keys it had sat under train), still resumes."""
    from gan_dist.rundir import check_resume

    cfg = resolve("ring8", ["run.name=old"])
    old = cfg.to_dict()
    old["train"].update(checkpoint_every=old["checkpoint"]["every"], keep_checkpoints=old["checkpoint"]["keep"],
                        torch_threads=old["perf"]["torch_threads"])
    del old["checkpoint"], old["perf"]
    import yaml

    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert check_resume(cfg, tmp_path) == 0  # no checkpoint yet: resumes at step 0, no error
    cfg.perf.fused_adam = False
    with pytest.raises(ConfigError, match="perf.fused_adam"):
        check_resume(cfg, tmp_path)


def test_the_step_sets_the_decayed_learning_rates():
    st, rt, ctx = ring8_state("optim.lr_decay=linear", "optim.lr_decay_start=0.5", "train.max_steps=8",
                              "optim.lr_g=0.004", "optim.lr_d=0.002")
    real = {"x": torch.rand(32, 2), "y": None}
    seen = []
    for _ in range(8):
        train_step(st, rt, ctx, lambda: real)
        seen += [st.opt_G.param_groups[0]["lr"], st.opt_D.param_groups[0]["lr"]]
    # Steps 0-4 at the full rates, then down by a quarter a step towards 0 at step 8.
    assert seen == pytest.approx([0.004, 0.002] * 5 + [0.003, 0.0015, 0.002, 0.001, 0.001, 0.0005])


def test_the_configured_thread_count_holds_on_a_launched_rank(tmp_path):
    """A rank started with RANK/WORLD_SIZE set and OMP_NUM_THREADS unset (a launcher other
    than Ray, which sets it): Accelerate sets its own thread count (physical cores over local
    ranks) when it is created; perf.torch_threads must win. In a process of its own."""
    import os
    import subprocess
    import sys

    code = ("import torch; from gan_dist.runtime import init_runtime; "
            "init_runtime(1); print(torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1"]


def test_the_meter_averages_each_statistic_over_the_steps_that_had_it():
    from gan_dist.losses import d_interval_stats
    from gan_dist.trainer.meter import FOLD_EVERY, Meter

    meter = Meter()
    steps = 2 * FOLD_EVERY + 22  # two folds and a remainder
    for step in range(steps):
        stats = {"loss_d": torch.tensor(float(step)), "d_real": torch.tensor(2.0), "d_fake": torch.tensor(0.5)}
        if step % 4 == 0:  # lazy R1
            stats["r1_penalty"] = torch.tensor(8.0)
        meter.add(stats)
    means, _ = meter.flush()
    assert means["loss_d"].item() == pytest.approx((steps - 1) / 2)
    assert means["r1_penalty"].item() == 8.0  # not diluted by the steps without R1
    assert d_interval_stats(means)["d_output_gap"].item() == 1.5
    assert meter.count == 0 and not meter.pending and meter.flush()[0] == {}


def test_only_stride_warnings_on_size_one_dimensions_are_quieted():
    """DDP's reducer warns when a gradient's strides differ from its bucket view's, also where
    they differ only along a size-1 dimension (the layout in memory is the same): a WGAN-GP D
    on 1-channel images warned once per worker. Other mismatches must still warn."""
    head = ("Grad strides do not match bucket view strides. This may indicate grad was not created according "
            "to the gradient layout contract, or that the param's strides changed since DDP was constructed.  "
            "This is not an error, but may impair performance.\n")
    size_one = (head + "grad.sizes() = [32, 1, 4, 4], strides() = [16, 16, 4, 1]\n"
                "bucket_view.sizes() = [32, 1, 4, 4], strides() = [16, 1, 4, 1] (Triggered internally at reducer.cpp)")
    real = (head + "grad.sizes() = [64, 32, 4, 4], strides() = [512, 16, 4, 1]\n"
            "bucket_view.sizes() = [64, 32, 4, 4], strides() = [512, 1, 128, 32] (Triggered internally at reducer.cpp)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_size_one_stride_warnings()
        warnings.warn(size_one, UserWarning)
        warnings.warn(real, UserWarning)
    assert [str(w.message) for w in caught] == [real]
