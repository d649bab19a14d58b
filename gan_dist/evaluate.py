"""Quality metrics computed from samples of G_ema.

2-D mixtures, the standard protocol (VEEGAN, PacGAN): draw samples, assign
each to its nearest mode; a sample is high quality if within 3 standard
deviations of that mode; a mode is covered if it has at least one
high-quality sample. `mode_kl` is KL(p || uniform) of the histogram of
high-quality samples over modes (0 when balanced); with no high-quality
sample at all it is log(num_modes), the value for total collapse onto one mode.

Stacked data (Stacked MNIST's protocol, Metz et al. 2017, Srivastava et al.
2017): each channel of a sample is classified by the classifier of the data
set the channels come from; the classes, read as digits, name the sample's
mode (1,000 for three channels of ten classes). `modes_covered` counts the
modes with at least one sample, `mode_kl` is KL(p || uniform) of the mode
histogram; the same numbers for as many real images say what the classifier's
own errors cost (`modes_covered_data`, `mode_kl_data`).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gan_dist import superres
from gan_dist.data.sources import cache_root, resolve_source
from gan_dist.data.stream import RankStream
from gan_dist.models import model_task
from gan_dist.models.srgan import downsample
from gan_dist.quality.distances import frechet_distance, kid

# A 2-D sample is of high quality within this many standard deviations of its nearest mode.
HIGH_QUALITY_STDS = 3


def high_quality_counts(samples: np.ndarray, means: np.ndarray, std: float) -> tuple[np.ndarray, np.ndarray]:
    """Each mode's number of high-quality samples (within 3 std of their nearest mode), and
    which samples are of high quality."""
    samples = np.asarray(samples, dtype=np.float64)
    means = np.asarray(means, dtype=np.float64)
    dist = np.linalg.norm(samples[:, None, :] - means[None, :, :], axis=2)
    nearest = dist.argmin(axis=1)
    high_quality = dist[np.arange(len(samples)), nearest] < HIGH_QUALITY_STDS * std
    return np.bincount(nearest[high_quality], minlength=len(means)), high_quality


def mode_metrics(samples: np.ndarray, means: np.ndarray, std: float) -> dict:
    counts, high_quality = high_quality_counts(samples, means, std)
    num_modes = len(means)
    if counts.sum() == 0:
        kl = math.log(num_modes)
    else:
        p = counts / counts.sum()
        nz = p > 0
        kl = float(np.sum(p[nz] * np.log(p[nz] * num_modes)))
    return {
        "modes_covered": int((counts > 0).sum()),
        "num_modes": num_modes,
        "high_quality_fraction": float(high_quality.mean()),
        "mode_kl": kl,
    }


@torch.no_grad()
def generate(G, n: int, z_dim: int, seed: int, device, batch: int = 1024) -> np.ndarray:
    """n samples from G on a fixed noise set (the same for every call with this seed)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for start in range(0, n, batch):
        z = torch.randn(min(batch, n - start), z_dim, generator=gen).to(device)
        out.append(G(z).float().cpu().numpy())
    return np.concatenate(out)


def evaluate_points(G, z_dim: int, meta: dict, num_samples: int, seed: int, device) -> dict:
    samples = generate(G, num_samples, z_dim, seed, device)
    mixture = meta["mixture"]
    return mode_metrics(samples, np.asarray(mixture["means"]), mixture["std"])


# Images --------------------------------------------------------------------------
#
# Labelled images are judged under a small classifier trained once on the real
# data and cached: class coverage and the KL of the generated class histogram
# against the data's, plus FID and KID on the classifier's penultimate features
# ("domain" FID/KID: comparable between runs on the same data, not with
# Inception-based numbers). Super-resolution is judged by PSNR and SSIM
# against the high-resolution originals.

class DomainClassifier(nn.Module):
    def __init__(self, channels: int, num_classes: int, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(width, width * 2, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(width * 2, width * 4, 3, 2, 1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width * 4, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def read_real(index, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n real samples (and labels) from the start of one seeded pass over the data."""
    batch = min(n, 256)
    stream = RankStream(index, 0, 1, batch, seed, window=64)
    xs, ys = [], []
    for _ in range(-(-n // batch)):
        b = stream.next_batch()
        xs.append(b["x"])
        ys.append(b.get("y", np.full(len(b["x"]), -1)))
    stream.close()
    return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


# Bump when the classifier or its training changes, so cached ones are not reused.
CLASSIFIER_VERSION = 2


def classifier_cache_path(index) -> Path:
    digest = hashlib.sha256("".join(s.sha256 for s in index.shards).encode()).hexdigest()[:16]
    return cache_root("") / "classifiers" / f"{digest}-v{CLASSIFIER_VERSION}.pt"


def train_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int, steps: int = 1500) -> DomainClassifier:
    """The eval's classifier trained on images x [N, C, H, W] with labels y: deterministic
    (seeded weights and batches), a fixed number of Adam steps whatever N."""
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = DomainClassifier(x.shape[1], num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=gen)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def classifier_accuracy(net: DomainClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.cat([net(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)]).eq(y).float().mean())


def domain_classifier(index, device, steps: int = 1500, max_images: int = 20000) -> tuple[DomainClassifier, float]:
    """The data's classifier, trained once (deterministically) and cached by the shards' checksums."""
    meta = index.meta
    channels, num_classes = meta["sample_shape"][0], meta["num_classes"]
    net = DomainClassifier(channels, num_classes)
    path = classifier_cache_path(index)
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(saved["state"])
        return net.to(device).eval(), float(saved["accuracy"])
    x, y = read_real(index, min(max_images, index.num_samples), seed=12345)
    x, y = torch.from_numpy(x), torch.from_numpy(y).long()
    split = max(len(x) // 10, 1)
    net = train_classifier(x[split:], y[split:], num_classes, steps)
    accuracy = classifier_accuracy(net, x[:split], y[:split])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    torch.save({"state": net.state_dict(), "accuracy": accuracy}, tmp)
    tmp.replace(path)
    return net.to(device).eval(), accuracy


@torch.no_grad()
def classify(net: DomainClassifier, images: np.ndarray, device) -> tuple[np.ndarray, np.ndarray]:
    """Predicted classes and penultimate features."""
    preds, feats = [], []
    for i in range(0, len(images), 256):
        x = torch.from_numpy(images[i:i + 256]).float().to(device)
        f = net.features(x)
        feats.append(f.cpu().numpy().astype(np.float64))
        preds.append(net.head(f).argmax(1).cpu().numpy())
    return np.concatenate(preds), np.concatenate(feats)


def domain_kid(real: np.ndarray, fake: np.ndarray) -> float:
    """KID on the classifier's features, scaled first so that the real features' mean square is
    1: the cubic kernel assumes features of order one (Inception's pool features are); the
    classifier's ReLU features are not, and unscaled they gave KIDs around 1e4."""
    scale = np.sqrt(np.mean(real ** 2)) or 1.0
    return kid(real / scale, fake / scale, num_subsets=10, subset_size=500)[0]


@torch.no_grad()
def generate_images(G, n: int, z_dim: int, seed: int, device, num_classes: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n images from G on fixed noise; a conditional G gets labels cycling through the classes."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out, labels = [], []
    for start in range(0, n, 256):
        m = min(256, n - start)
        z = torch.randn(m, z_dim, generator=gen).to(device)
        y = (torch.arange(start, start + m) % num_classes).to(device) if num_classes else None
        out.append((G(z, y) if num_classes else G(z)).float().cpu().numpy())
        labels.append(y.cpu().numpy() if y is not None else np.full(m, -1))
    return np.concatenate(out), np.concatenate(labels)


def classification_accuracy_score(G, z_dim: int, index, test_index, n: int, seed: int, device,
                                  steps: int = 1500) -> dict:
    """The classification accuracy score (Ravuri & Vinyals 2019) of a conditional G: the eval's
    classifier trained on n images of G (labels cycling through the classes) and tested on the
    real test split, beside the same classifier trained on n real training images. How much of
    the data's class information G's images carry (1 - cas / cas_real is what is lost)."""
    K = index.meta["num_classes"]
    fake, labels = generate_images(G, n, z_dim, seed, device, K)
    real, real_labels = read_real(index, n, seed=seed + 1)
    test, test_labels = read_real(test_index, test_index.num_samples, seed=0)
    test, test_labels = torch.from_numpy(test), torch.from_numpy(test_labels).long()
    on_fake = train_classifier(torch.from_numpy(fake), torch.from_numpy(labels).long(), K, steps)
    on_real = train_classifier(torch.from_numpy(real), torch.from_numpy(real_labels).long(), K, steps)
    return {"cas": classifier_accuracy(on_fake, test, test_labels),
            "cas_real": classifier_accuracy(on_real, test, test_labels), "cas_n": n}


# A class counts as generated when it gets at least this fraction of its fair share of samples.
COVERED_SHARE = 0.1


def covered_classes(counts, n: int):
    """Which classes a histogram of n samples covers (NumPy or torch counts, one per class)."""
    return counts >= max(1.0, COVERED_SHARE * n / len(counts))


def evaluate_classes(G, cfg, index, device, conditional: bool) -> dict:
    meta, n = index.meta, cfg.eval.num_samples
    K = meta["num_classes"]
    net, accuracy = domain_classifier(index, device)
    fake, asked = generate_images(G, n, cfg.model.z_dim, cfg.seed + 1, device, K if conditional else 0)
    real, _ = read_real(index, n, seed=cfg.seed + 2)
    pred_fake, feat_fake = classify(net, fake, device)
    _, feat_real = classify(net, real, device)
    counts = np.bincount(pred_fake, minlength=K).astype(np.float64)
    data_counts = np.asarray(np.sum([s.class_counts for s in index.shards], axis=0), dtype=np.float64)
    p, q = (counts + 1e-6) / (counts + 1e-6).sum(), (data_counts + 1e-6) / (data_counts + 1e-6).sum()
    result = {
        "class_coverage": float(covered_classes(counts, n).mean()),
        "class_kl": float(np.sum(p * np.log(p / q))),
        "fid_domain": frechet_distance(feat_real, feat_fake),
        "kid_domain": domain_kid(feat_real, feat_fake),
        "classifier_accuracy": accuracy,
    }
    if conditional:
        result["class_match"] = float((pred_fake == asked).mean())
    return result


@torch.no_grad()
def evaluate_super_resolution(G, cfg, index, device) -> dict:
    """Y-channel PSNR/SSIM (`scale` border pixels shaved) of G and of bicubic upscaling: on the
    whole photos of `eval.sr_photos` when set (with `eval.inception`, the crop Inception metrics
    too), else on HR images of the training data."""
    scale, ev = cfg.model.sr_scale, cfg.eval
    channels = index.meta["sample_shape"][0]
    if ev.sr_photos:
        return superres.evaluate_photos(G, superres.photo_paths(ev.sr_photos), scale, channels, ev.sr_tile,
                                        device, inception=ev.inception,
                                        metrics=[m.strip() for m in ev.metrics.split(",")])
    hr, _ = read_real(index, min(ev.num_samples, 1000), seed=cfg.seed + 2)
    hr = torch.from_numpy(hr)
    scores: dict[str, list] = {"psnr_y": [], "ssim_y": [], "psnr_y_bicubic": [], "ssim_y_bicubic": []}
    for i in range(0, len(hr), 128):
        hr_img = hr[i:i + 128]
        lr_img = downsample(hr_img, scale)
        for name, img in (("", superres.upscale(G, lr_img, scale, device=device)),
                          ("_bicubic", superres.bicubic(lr_img, scale))):
            p, s = superres.y_scores(img, hr_img, scale)
            scores[f"psnr_y{name}"].append(p)
            scores[f"ssim_y{name}"].append(s)
    return {k: float(torch.cat(v).mean()) for k, v in scores.items()}


def stacked_modes(channel_classes: np.ndarray, num_classes: int) -> dict:
    """Mode coverage of stacked samples from each sample's classes per channel [N, C] (values
    0..num_classes-1): the mode of a sample is its classes read as the digits of a number in base
    num_classes (num_classes ** C modes). KL(p || uniform) of the histogram is 0 when every mode
    has the same share, log(num_modes) when all samples share one."""
    channels = channel_classes.shape[1]
    num_modes = num_classes ** channels
    modes = channel_classes.astype(np.int64) @ (num_classes ** np.arange(channels - 1, -1, -1))
    counts = np.bincount(modes, minlength=num_modes)
    p = counts[counts > 0] / counts.sum()
    return {"modes_covered": int((counts > 0).sum()), "num_modes": num_modes,
            "mode_kl": float(np.sum(p * np.log(p * num_modes)))}


def channel_classes(net: DomainClassifier, images: np.ndarray, device) -> np.ndarray:
    """The classifier's class of each channel of each image (a one-channel classifier) [N, C]."""
    return np.stack([classify(net, np.ascontiguousarray(images[:, c:c + 1]), device)[0]
                     for c in range(images.shape[1])], axis=1)


def evaluate_stacked(G, cfg, index, device) -> dict:
    """Modes covered and the mode histogram's KL against uniform for `eval.num_samples` samples
    of G (26,000 in the stacked recipes, as VEEGAN and PacGAN count), under the eval's classifier
    of the data set each channel comes from; and the same for as many real images."""
    stacked, n = index.meta["stacked"], cfg.eval.num_samples
    base = resolve_source(f"builtin:{stacked['base']}", cfg.data.cache_dir)
    net, accuracy = domain_classifier(base, device)
    fake, _ = generate_images(G, n, cfg.model.z_dim, cfg.seed + 1, device)
    real, _ = read_real(index, n, seed=cfg.seed + 2)
    classes = base.meta["num_classes"]
    found = stacked_modes(channel_classes(net, np.clip(fake, -1, 1), device), classes)
    data = stacked_modes(channel_classes(net, real, device), classes)
    return {**found, "modes_covered_data": data["modes_covered"], "mode_kl_data": data["mode_kl"],
            "mode_samples": n, "classifier_accuracy": accuracy}


def evaluate_generator(G, cfg, index, device) -> dict:
    """The quality metrics that fit the data and the task (see DESIGN's summary.json `eval`)."""
    meta, task = index.meta, model_task(cfg.model.arch)
    was_training = G.training
    G.eval()
    try:
        if meta["kind"] == "points" and "mixture" in meta:
            return evaluate_points(G, cfg.model.z_dim, meta, cfg.eval.num_samples, cfg.seed + 1, device)
        if meta["kind"] == "image" and task == "super_resolution":
            return evaluate_super_resolution(G, cfg, index, device)
        if meta["kind"] == "image" and "stacked" in meta and task == "unconditional":
            return evaluate_stacked(G, cfg, index, device)
        if meta["kind"] == "image" and meta.get("num_classes", 0) >= 2:
            return evaluate_classes(G, cfg, index, device, conditional=task == "conditional")
        return {}
    finally:
        G.train(was_training)
