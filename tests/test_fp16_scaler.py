"""fp16's gradient-scaler path, run on CPU.

Accelerate makes a GradScaler only for fp16 on a GPU (on CPU, fp16 gives neither a scaler
nor autocast), so these tests give the Runtime's Accelerator what Accelerator.__init__
gives it on a GPU: a GradScaler (torch's CPU one) set before the optimizers are prepared,
so they go through Accelerate's wrapper, and `native_amp` for fp16 autocast. The trainer's
step then runs exactly as under fp16 on a GPU: Accelerate's scaled backward, the penalties'
scaled input gradients, the scaler's skip and scale update. What stays unverified is the
GPU itself (fp16 kernels, the CUDA scaler).
"""

from __future__ import annotations

import math

import pytest
import torch

from gan_dist.config import resolve
from gan_dist.models import DataShape
from gan_dist.runtime import init_runtime
from gan_dist.trainer.state import build_state, fingerprint
from gan_dist.trainer.step import build_step_context, train_step

pytestmark = pytest.mark.unit

POINTS = DataShape("points", (2,))
BATCH = 16

CASES = {
    "plain": [],
    "wgan_gp": ["loss.kind=wasserstein", "loss.gp_weight=10", "schedule.n_critic=2"],
    "r1_lazy": ["loss.r1_gamma=1", "loss.r1_interval=2"],
    "plain_unfused_adam": ["perf.fused_adam=false"],  # the scaler decides with a host sync
}


def build(case: str, scale: float | None = None, autocast: bool = False):
    """State, runtime and step context for ring8's MLP; with `scale`, fp16's scaler emulated."""
    cfg = resolve("ring8", ["model.hidden=16", f"data.batch_size={BATCH}", "optim.lr_g=1e-3",
                            "optim.lr_d=1e-3", *CASES[case]])
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    rt = init_runtime(0, "fp16" if autocast else "no")
    if scale is not None:
        # As Accelerator.__init__ does for fp16 on a GPU (accelerate/accelerator.py), before
        # build_state prepares the optimizers: Accelerate's wrapper takes the scaler then.
        rt.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=scale)
        rt.accelerator.native_amp = autocast
    st = build_state(cfg, POINTS, rt)
    return st, rt, build_step_context(cfg, BATCH, rt.device)


def batch(i: int) -> dict:
    g = torch.Generator().manual_seed(1000 + i)
    return {"x": torch.rand(BATCH, 2, generator=g) * 2 - 1, "y": None}


def run(st, rt, ctx, steps: int, poison=None) -> list[dict]:
    """`steps` steps on fixed batches; `poison(x)` alters each real batch."""
    history, count = [], 0

    def next_real():
        nonlocal count
        count += 1
        real = batch(count)
        return {"x": poison(real["x"]), "y": None} if poison else real

    for _ in range(steps):
        history.append(train_step(st, rt, ctx, next_real))
    return history


def d_updates_at(ctx, step: int) -> int:
    return sum(phase.net == "D" for phase in ctx.schedule.phases_at(step))


def params(st) -> dict:
    return {f"{net}.{k}": v.detach().clone() for net, module in (("G", st.G), ("D", st.D), ("G_ema", st.G_ema))
            for k, v in module.state_dict().items()}


@pytest.mark.parametrize("case", list(CASES))
def test_scaled_fp32_steps_match_unscaled(case):
    """A large loss scale with fp32 compute changes nothing: the losses' gradients and the
    penalties' input gradients are unscaled exactly (the scale is a power of two)."""
    st, rt, ctx = build(case)
    plain = run(st, rt, ctx, 4)
    scaled_st, scaled_rt, ctx = build(case, scale=2.0 ** 12)
    assert type(scaled_st.opt_D).__name__ == "AcceleratedOptimizer"  # the scaler's step path
    scaled = run(scaled_st, scaled_rt, ctx, 4)

    assert scaled_rt.accelerator.scaler.get_scale() == 2.0 ** 12  # nothing skipped
    assert scaled_st.nonfinite_steps == 0
    for key, value in params(st).items():
        torch.testing.assert_close(params(scaled_st)[key], value, rtol=1e-5, atol=1e-6, msg=key)
    for a, b in zip(plain, scaled):
        assert a.keys() == b.keys()
        for key in a:  # the losses, penalties and gradient norms the monitor reads
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    penalty = {"wgan_gp": "gradient_penalty", "r1_lazy": "r1_penalty"}.get(case)
    assert penalty is None or any(penalty in stats for stats in scaled)


@pytest.mark.parametrize("poison", ["loss", "gradient"])
@pytest.mark.parametrize("case", list(CASES))
def test_nonfinite_update_is_skipped_halves_the_scale_and_is_counted(case, poison):
    scale = 2.0 ** 12
    st, rt, ctx = build(case, scale=scale)
    run(st, rt, ctx, 2)
    scaler = rt.accelerator.scaler
    assert scaler.get_scale() == scale and st.nonfinite_steps == 0
    weight = st.D.net[0].weight
    d_before, g_before = fingerprint(st.D), fingerprint(st.G)
    adam_before = {k: v.clone() for k, v in st.opt_D.state[weight].items()}
    assert set(adam_before) == {"step", "exp_avg", "exp_avg_sq"}  # compared below

    skipped = d_updates_at(ctx, st.step)  # every D update of this step sees the poison
    if poison == "loss":  # NaN real data: D's loss is NaN
        run(st, rt, ctx, 1, poison=lambda x: x * float("nan"))
    else:  # a finite loss whose gradient overflows
        hook = weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
        run(st, rt, ctx, 1)
        hook.remove()

    assert st.nonfinite_steps == skipped
    assert scaler.get_scale() == scale / 2 ** skipped  # halved once per skipped update
    assert fingerprint(st.D) == d_before  # D's weights untouched
    adam_after = st.opt_D.state[weight]
    assert all(torch.equal(adam_before[k], adam_after[k]) for k in adam_before)  # moments, step count
    assert fingerprint(st.G) != g_before  # G's update was finite and went through

    run(st, rt, ctx, 1)
    assert fingerprint(st.D) != d_before and st.nonfinite_steps == skipped


@pytest.mark.parametrize("case", list(CASES))
def test_fp16_autocast_with_scaler_runs(case):
    st, rt, ctx = build(case, scale=2.0 ** 16, autocast=True)
    dtypes = []
    hook = st.D.net[0].register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    g_before = fingerprint(st.G)
    run(st, rt, ctx, 3)
    hook.remove()

    assert torch.float16 in dtypes  # D really ran under fp16 autocast
    assert all(torch.isfinite(v).all() for v in params(st).values())
    assert fingerprint(st.G) != g_before
    # Every skip halves the scale once and nothing grows in 3 steps: the count agrees.
    scale = rt.accelerator.scaler.get_scale()
    assert st.nonfinite_steps == round(math.log2(2.0 ** 16 / scale))


@pytest.mark.parametrize("case", ["plain", "wgan_gp", "r1_lazy"])
def test_scaled_step_with_fused_adam_has_no_host_sync(case, monkeypatch):
    """Penalty scale, unscaling, the skip decision, its count and the scale update all stay on
    the device: the fused kernel reads the scaler's found_inf."""
    st, rt, ctx = build(case, scale=2.0 ** 12)
    run(st, rt, ctx, 1)  # the first step creates the scaler's and Adam's state

    def sync(*args, **kwargs):
        raise AssertionError("host-device sync inside the step")
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, sync)
    run(st, rt, ctx, 2)
    monkeypatch.undo()
    assert st.nonfinite_steps == 0


def test_the_loss_scale_is_checkpointed_and_restored():
    st, rt, ctx = build("plain", scale=2.0 ** 12)
    run(st, rt, ctx, 1, poison=lambda x: x * float("nan"))  # one overflow halves the scale
    saved = rt.scaler_state()
    assert saved["scale"] == 2.0 ** 11
    _, fresh, _ = build("plain", scale=2.0 ** 16)
    fresh.load_scaler_state(saved)
    assert float(fresh.loss_scale()) == 2.0 ** 11
    _, plain, _ = build("plain")
    assert plain.scaler_state() == {}


def test_fp16_without_a_gpu_is_refused(tmp_path, capsys, cache_dir):
    from gan_dist.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: fp16 is allowed")
    assert main(["train", "--no-ray", "--storage", str(tmp_path), "--set", "train.mixed_precision=fp16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.mixed_precision=fp16 needs GPU workers" in err[0]
    assert not any(tmp_path.iterdir())  # nothing written
