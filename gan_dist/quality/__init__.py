"""Standard image-quality metrics on Inception-v3 pool features: FID, KID, precision and recall.

- `inception`: the pinned network (loaded by path after a sha256 check) and its input convention;
- `distances`: the formulas (Frechet distance, KID, k-NN precision/recall), pure NumPy;
- `features`: embedding, the on-disk cache of real features, rank-sharded generation;
- `metrics`: the entry points that return a result dict (`inception_metrics`, `data_metrics`);
- `cli`: `gan-dist eval RUN --metrics ...` and `gan-dist eval --data A --against B`.

The names below are all this package's __init__ holds: the command line's help needs them
without importing torch.
"""

METRICS = ("fid", "kid", "pr")  # fid; kid (and its std); pr: precision and recall
DEFAULT_N = 10_000  # samples on each side, as the published FIDs use
