#!/usr/bin/env bash
# Submit a run with the plain Ray Jobs CLI instead of `gan-dist submit`:
#
#   launch/submit-example.sh http://HEAD:8265 RUN_NAME [train arguments...]
#   STORAGE=/mnt/shared/runs launch/submit-example.sh http://HEAD:8265 ring8-a ring8 --workers 4
#
# The token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token;
# the Ray CLI sends it only when RAY_AUTH_MODE=token. Submitting the same
# RUN_NAME again (after a failure, or with a larger --max-steps) resumes the run.
set -euo pipefail
address=${1:?usage: launch/submit-example.sh http://HEAD:8265 RUN_NAME [train arguments...]}
name=${2:?usage: launch/submit-example.sh http://HEAD:8265 RUN_NAME [train arguments...]}
shift 2
storage=${STORAGE:-/mnt/shared/runs}  # must be shared by every node of the cluster
cd "$(dirname "$0")/.."

export RAY_AUTH_MODE=token
exec ray job submit --address "$address" --working-dir . \
  --submission-id "gan-dist-$name-$(date +%s)" \
  --metadata-json "{\"gan_dist_run\": \"$name\", \"gan_dist_storage\": \"$storage\"}" \
  --runtime-env-json '{"env_vars": {"PYTHONUNBUFFERED": "1"}}' \
  -- python launch/ray_job.py "$@" --name "$name" --storage "$storage"
