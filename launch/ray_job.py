"""Ray job entrypoint: `gan-dist train` for a job submitted without `gan-dist submit`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python launch/ray_job.py ring8 --name ring8-a --storage /mnt/shared/runs

It refuses to start a run that a retry could not resume (no --name, or storage
that is not shared), then runs `gan-dist train` with the same arguments; Ray
Jobs sets RAY_ADDRESS, so the run joins the cluster. k8s/ runs it as the RayJob
entrypoint; see launch/submit-example.sh for the plain `ray job submit` route.
"""

import sys

from gan_dist.dependencies import missing_dependency

if __name__ == "__main__":
    try:
        from gan_dist.cli import job_entrypoint
    except ModuleNotFoundError as exc:  # this Python lacks gan-dist's dependencies: say which, and what to do
        print(missing_dependency(exc), file=sys.stderr)
        sys.exit(2)
    sys.exit(job_entrypoint(sys.argv[1:]))
