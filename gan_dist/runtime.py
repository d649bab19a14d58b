"""The one module that knows Accelerate and torch.distributed.

Rank vocabulary for the rest of the code: `print0`, `is_main_process`,
`reduce_mean`, `all_gather_object`, `barrier`, `broadcast_flag`. Under Ray
Train the torch backend has already set RANK/WORLD_SIZE/LOCAL_RANK and
initialised the process group (gloo on CPU, NCCL on GPU); Accelerate adopts
it. Without Ray the same calls make a single process its own world.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import nn
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import DistributedDataParallelKwargs


@dataclass
class Runtime:
    accelerator: Accelerator
    # A gloo group for small control decisions, so they never sync a GPU stream.
    control_group: object = None

    # Fixed for the process's life; cached because Accelerate's lookups cost microseconds per call.
    @cached_property
    def rank(self) -> int:
        return self.accelerator.process_index

    @cached_property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @cached_property
    def device(self) -> torch.device:
        return self.accelerator.device

    @cached_property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process

    @cached_property
    def host_reads_are_free(self) -> bool:
        """On a CPU a tensor's value is already on the host: reading it waits for no device queue
        (and costs less than the kernels that would avoid it). Tests set it False to run the
        GPU's decisions on a CPU."""
        return self.device.type == "cpu"

    def print0(self, *args, **kwargs) -> None:
        if self.is_main_process:
            print(*args, flush=True, **kwargs)

    def prepare(self, *objects):
        """Models wrapped in DDP (world size > 1). Optimizers stay torch's own unless fp16's
        gradient scaler needs Accelerate's wrapper, which otherwise only costs time on every
        call (package look-ups, signature inspection)."""
        prepared = self.accelerator.prepare(*objects)
        prepared = list(prepared) if len(objects) > 1 else [prepared]
        if self.accelerator.scaler is None:
            prepared = [p.optimizer if isinstance(p, AcceleratedOptimizer) else p for p in prepared]
        return prepared if len(objects) > 1 else prepared[0]

    def backward(self, loss: torch.Tensor) -> None:
        # Collective under DDP: gradients of the wrapped model are all-reduced in buckets.
        if self.accelerator.scaler is None:
            loss.backward()  # Accelerate's would divide by its accumulation steps (1): a kernel for nothing
        else:
            self.accelerator.backward(loss)

    def micro_batches(self, count: int, *modules: nn.Module) -> Iterator[int]:
        """The indices of an update's `count` micro-batches; each but the last runs inside DDP's
        no_sync for `modules` (those whose gradients the update all-reduces), so gradients add up
        locally and the last micro-batch's backward all-reduces their sum: one all-reduce per
        update, not one per micro-batch. The forward is inside too: DDP decides at the forward
        whether the backward after it all-reduces. Without DDP (one worker) a no-op."""
        for k in range(count):
            with contextlib.ExitStack() as stack:
                if k < count - 1:
                    for module in modules:
                        stack.enter_context(self.accelerator.no_sync(module))
                yield k

    def loss_scale(self) -> torch.Tensor | float:
        """fp16's current loss scale as a device tensor (no host sync), or 1.0 without a scaler.
        Through `scaler.scale`, which creates the scale on first use: before the first
        scaled backward the scaler holds none yet (its `_get_scale_async()` is None)."""
        scaler = self.accelerator.scaler
        if scaler is None:
            return 1.0
        return scaler.scale(torch.ones((), device=self.device))

    def unscale_gradients(self, opt) -> torch.Tensor | None:
        """fp16: divide `opt`'s gradients by the loss scale in place and return the scaler's
        verdict, a bool device tensor set if any gradient is not finite (no host sync); the
        scaler's step then skips that update. None without a scaler."""
        scaler = self.accelerator.scaler
        if scaler is None:
            return None
        inner = getattr(opt, "optimizer", opt)  # the scaler keys its state by the torch optimizer
        scaler.unscale_(inner)  # its step sees the UNSCALED stage and does not unscale again
        return torch.stack(list(scaler._found_inf_per_device(inner).values())).sum() > 0

    def scaler_state(self) -> dict:
        """fp16's loss scale and growth tracker, for checkpoints ({} without a scaler): a resumed
        run goes on at the scale it had instead of skipping updates to find it again."""
        scaler = self.accelerator.scaler
        return scaler.state_dict() if scaler is not None else {}

    def load_scaler_state(self, state: dict) -> None:
        if self.accelerator.scaler is not None and state:
            self.accelerator.scaler.load_state_dict(state)

    def reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        # Collective: every rank must call it with the same shape.
        if self.world_size == 1:
            return tensor
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor / self.world_size

    def all_gather_object(self, obj) -> list:
        # Collective.
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_flag(self, flag: bool) -> bool:
        """True on every rank if any rank says True (collective), so all take the same branch."""
        return bool(self.reduce_max_int(int(flag)))

    def reduce_max_int(self, value: int) -> int:
        """The largest of the ranks' values, on every rank (collective)."""
        if self.world_size == 1:
            return value
        # On the control group's CPU tensors: agreeing never waits for a GPU stream.
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control_group)
        return int(t.item())

    def any_async(self, *flags: bool) -> Callable[[], list[bool]]:
        """Start an all-reduce of `flags` (collective) that overlaps the step; the returned
        function waits for it and says, per flag, whether any rank set it."""
        if self.world_size == 1:
            return lambda: list(flags)
        t = torch.tensor([int(f) for f in flags], dtype=torch.int32)
        work = dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control_group, async_op=True)

        def wait() -> list[bool]:
            work.wait()
            return [bool(v) for v in t.tolist()]

        return wait

    def step_unless(self, opt, nonfinite: torch.Tensor) -> None:
        """`opt.step()` unless `nonfinite` (a bool tensor on the device) is set."""
        inner = getattr(opt, "optimizer", opt)  # Accelerate's wrapper holds the torch optimizer
        if inner.defaults.get("fused"):
            # Decided on the device: the fused kernel skips the whole update (weights, moments
            # and step count) when found_inf is 1. No host sync.
            inner.found_inf = nonfinite.float()
            opt.step()
        elif not nonfinite.item():  # host sync: an unfused optimizer cannot skip on the device
            opt.step()

    def autocast(self):
        """bf16/fp16 autocast as configured (a no-op context in fp32)."""
        if self.accelerator.mixed_precision == "no":
            return contextlib.nullcontext()
        return self.accelerator.autocast()

    def sync_buffers(self, *modules) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics), as DDP does
        before each forward; used before saving and comparing replicas. Collective."""
        if self.world_size == 1:
            return
        buffers = [b for module in modules for b in module.buffers()]
        if not buffers:
            return
        # One broadcast of all buffers flattened (by dtype), not one per buffer. The dtypes in
        # order of first appearance, the same on every rank (a set's order follows the dtype
        # objects' addresses, which differ by process: ranks broadcast different buffers).
        for dtype in dict.fromkeys(b.dtype for b in buffers):
            same = [b for b in buffers if b.dtype == dtype]
            flat = torch.cat([b.reshape(-1) for b in same])
            dist.broadcast(flat, src=0)
            offset = 0
            for b in same:
                b.copy_(flat[offset:offset + b.numel()].view_as(b))
                offset += b.numel()

    def barrier(self) -> None:
        # Collective.
        self.accelerator.wait_for_everyone()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the global batch on any device: per-channel sums are all-reduced with
    autograd (torch's SyncBatchNorm runs on GPUs only). Collective in training mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        count = torch.full_like(x[0, :, 0, 0], x.numel() / x.shape[1])
        stats = torch.stack([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), count])
        with warnings.catch_warnings():
            # Deprecated in favour of a private API that is not differentiable; still the right tool.
            warnings.simplefilter("ignore", FutureWarning)
            stats = dist_nn.all_reduce(stats)  # collective, differentiable
        mean, n = stats[0] / stats[2], stats[2]
        var = stats[1] / n - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * n / (n - 1), self.momentum)
        out = (x - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm statistics over the global batch: torch's SyncBatchNorm on GPU, ours elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return module


# DDP's reducer compares a gradient's strides with its bucket view's exactly, also along
# dimensions of size 1, where strides do not change the layout in memory. A gradient penalty's
# double backward gives a 1-channel D's first conv weight ([C, 1, k, k], channels_last) a
# contiguous gradient; the plain backward gives a channels_last one. Both are laid out alike,
# so neither parameter layout quiets the warning, and the copy it warns of is a few bytes.
# Matched only where the gradient has a size-1 dimension: any other mismatch still warns.
SIZE_ONE_STRIDES = r"(?s)Grad strides do not match bucket view strides\..*grad\.sizes\(\) = \[(\d+, )*1[,\]]"


def quiet_size_one_stride_warnings() -> None:
    warnings.filterwarnings("ignore", message=SIZE_ONE_STRIDES, category=UserWarning)


def init_runtime(torch_threads: int = 0, mixed_precision: str = "no", bucket_cap_mb: float = 25.0,
                 gradient_as_bucket_view: bool = True) -> Runtime:
    """Create the Accelerator for this process (inside the Ray worker, never before)."""
    quiet_size_one_stride_warnings()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotune each convolution once
    if mixed_precision == "auto":
        mixed_precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "no"
    ddp = DistributedDataParallelKwargs(bucket_cap_mb=bucket_cap_mb, gradient_as_bucket_view=gradient_as_bucket_view)
    # cpu=True is what makes Accelerate adopt a gloo process group on CPU workers.
    accelerator = Accelerator(cpu=not cuda, mixed_precision=mixed_precision, kwargs_handlers=[ddp])
    if torch_threads > 0 and not cuda:
        # After the Accelerator: on CPU ranks with OMP_NUM_THREADS unset it sets its own count
        # (physical cores over local ranks), which would override the configured one.
        torch.set_num_threads(torch_threads)
    control_group = None
    if dist.is_initialized() and dist.get_backend() != "gloo":
        control_group = dist.new_group(backend="gloo")  # collective: every rank creates it
    return Runtime(accelerator, control_group)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """This process's global RNG states, in a form that loads with weights_only=True."""
    state = {
        "python": _python_state_to_list(random.getstate()),
        "numpy": _numpy_state_to_dict(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    np.random.set_state(("MT19937", state["numpy"]["keys"].numpy().astype(np.uint32),
                         state["numpy"]["pos"], state["numpy"]["has_gauss"], state["numpy"]["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state_to_list(state: tuple) -> list:
    return [state[0], list(state[1]), state[2]]


def _numpy_state_to_dict(state: tuple) -> dict:
    return {"keys": torch.from_numpy(state[1].astype(np.int64)), "pos": int(state[2]),
            "has_gauss": int(state[3]), "cached_gaussian": float(state[4])}
