"""Fork a run at one checkpoint under changed settings: an experiment tool, not part of gan-dist.

    python docs/experiments/fork_checkpoint.py RUN/step-012000 NEW_RUN_DIR --set loss.adversarial_weight=0.01

A resume refuses a changed config (`gan_dist.rundir`), which is right for a run. To compare
settings that only act after some step (the SRGAN phase's adversarial weight, after
`schedule.srresnet_steps` of the content loss alone) without training that common part
again, this copies the checkpoint into NEW_RUN_DIR with the overrides applied to its stored
config, so that `gan-dist train --storage PARENT --name NEW` resumes it there. Nothing else
changes: the same G, D, G_ema, optimizers, random streams and data cursor, so the fork goes
on as the run with those settings from step 0 would, when the settings did not act before
the checkpoint's step (that is for the user of this script to know).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from gan_dist import checkpoint as ckpt
from gan_dist.config import Config, apply_override, load_yaml_config
from gan_dist.rundir import CONFIG_FILE, HISTORY_FILE, write_atomic


def fork(source: Path, run_dir: Path, overrides: list[str]) -> Path:
    head = ckpt.verify(source)
    raw = load_yaml_config((source / CONFIG_FILE).read_text()).to_dict()
    for assignment in overrides:
        apply_override(raw, assignment)
    cfg = Config.from_dict(raw)  # validated like any config
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists; fork into a new folder")
    target = run_dir / source.name
    target.mkdir(parents=True)
    ckpt.copy_replacing(source, head, target, {CONFIG_FILE: cfg.to_yaml().encode()})
    write_atomic(run_dir / CONFIG_FILE, cfg.to_yaml().encode())
    if (source.parent / HISTORY_FILE).exists():
        shutil.copy2(source.parent / HISTORY_FILE, run_dir / HISTORY_FILE)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a step-NNNNNN folder of a run")
    parser.add_argument("run_dir", type=Path, help="the new run directory (STORAGE/NAME)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    print(fork(args.checkpoint, args.run_dir, args.overrides))


if __name__ == "__main__":
    main()
