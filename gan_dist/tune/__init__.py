"""`gan-dist tune`: population-based training (Jaderberg et al. 2017) of a recipe on Ray Tune.

A population of members, each a gan-dist run in its own run directory under one tune
directory, trains one perturbation interval at a time. At each interval the worst quantile
copies a better member's checkpoint and perturbs the mutated hyper-parameters; a member
whose detectors raise mode_collapse, divergence or nonfinite is replaced at once.

- `spec`: what a tune runs (population, mutations, the metric), checked before anything starts;
- `bridge`: a member's checkpoint handed to Tune, and another member's adopted exactly;
- `hub`: the population's one metrics target, with a `member` label;
- `records`: exploits and results on disk, the winning schedule, tune-summary.json and its PNG;
- `cli`: the command. The Ray Tune side is gan_dist/integrations/ray_tune.py.
"""
