"""The next batch on its way to the GPU while the current step runs."""

from __future__ import annotations

import torch

from gan_dist.data.stream import RankStream


def to_device(batch: dict, device, pinned: bool = False) -> dict[str, torch.Tensor]:
    """A stream batch's arrays ("x", and "y" when labelled) as tensors on `device`."""
    out = {}
    for key in ("x", "y"):
        if key in batch:
            tensor = torch.from_numpy(batch[key])
            out[key] = (tensor.pin_memory() if pinned else tensor).to(device, non_blocking=True)
    return out


class DevicePrefetcher:
    """Hands out batch k and at once reads batch k+1 and queues its copy to the GPU from
    pinned memory, without waiting: the copy overlaps the step's kernels, and neither the
    read nor the copy waits for the GPU.

    The stream is then one batch ahead of training, so `state_dict()` is the stream's state
    from before the batch in flight: a checkpoint resumes at the batch the next step uses,
    as without prefetching."""

    def __init__(self, stream: RankStream, device: torch.device):
        self.stream, self.device = stream, device
        self.ahead: tuple[dict, dict[str, torch.Tensor]] | None = None  # (stream state before it, batch)

    def _read(self) -> tuple[dict, dict[str, torch.Tensor]]:
        state = self.stream.state_dict()
        return state, to_device(self.stream.next_batch(), self.device, pinned=self.device.type == "cuda")

    def next_batch(self) -> dict[str, torch.Tensor]:
        _, batch = self.ahead or self._read()
        self.ahead = self._read()
        return batch

    def state_dict(self) -> dict:
        return self.ahead[0] if self.ahead is not None else self.stream.state_dict()

    def reset(self) -> None:
        """Drop the batch in flight: the stream was moved (a restore, a rollback)."""
        self.ahead = None
