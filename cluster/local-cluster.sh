#!/usr/bin/env bash
# A multi-node Ray cluster on one machine, for rehearsing cluster runs: a head and
# N worker raylets, each a real `ray start` node, with token authentication on.
#
#   cluster/local-cluster.sh up [--workers N] [--head-cpus C] [--worker-cpus C] \
#                               [--port P] [--dashboard-port D] [--dir DIR]
#   source DIR/env     # RAY_ADDRESS, RAY_API_SERVER_ADDRESS, RAY_AUTH_TOKEN_PATH, RAY_AUTH_MODE
#   gan-dist submit --address "$RAY_API_SERVER_ADDRESS" --workers 2 --max-steps 2000
#   cluster/local-cluster.sh down [--dir DIR]
#
# Unlike `ray stop`, which kills every Ray process on the machine, `down` stops
# only this cluster's nodes (their sessions are recorded in DIR/sessions).
# Every node keeps its state under DIR (not /tmp/ray; the head in DIR/ray, worker w in DIR/ray-wW), so a local `ray.init()`
# elsewhere on the machine never joins this cluster by accident.
set -euo pipefail

cmd=${1:-}; shift || true
dir=${GAN_DIST_CLUSTER_DIR:-/tmp/gan-dist-cluster}
workers=1 head_cpus=1 worker_cpus=1 port=6379 dashboard_port=8265 client_port=10001
object_store_bytes=${GAN_DIST_OBJECT_STORE_BYTES:-300000000}  # keeps N raylets' /dev/shm small
while [[ $# -gt 0 ]]; do
  case $1 in
    --workers) workers=$2 ;;
    --head-cpus) head_cpus=$2 ;;
    --worker-cpus) worker_cpus=$2 ;;
    --port) port=$2 ;;
    --dashboard-port) dashboard_port=$2 ;;
    --client-port) client_port=$2 ;;
    --dir) dir=$2 ;;
    *) echo "local-cluster.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done

wait_for() {  # wait_for SECONDS DESCRIPTION TEST...
  local seconds=$1 what=$2; shift 2
  wait_for_stop=0
  for ((i = 0; i < seconds * 2; i++)); do "$@" && return 0; ((wait_for_stop)) && break; sleep 0.5; done
  if ((wait_for_stop)); then echo "local-cluster.sh: $what: the head exited; logs in $dir" >&2
  else echo "local-cluster.sh: $what did not come up in ${seconds}s; logs in $dir" >&2; fi
  return 1
}
# The Jobs API answers (authenticated) once the dashboard's job module is up, a while after its port opens.
jobs_api_up() {
  (exec 3<>"/dev/tcp/127.0.0.1/$dashboard_port" &&
    printf 'GET /api/jobs/ HTTP/1.0\r\nAuthorization: Bearer %s\r\n\r\n' "$(cat "$dir/auth_token")" >&3 &&
    head -n 1 <&3 | grep -q ' 200 ') 2>/dev/null
}
head_ready() {  # true once the Jobs API answers; false (and wait_for gives up fast) if the head died
  jobs_api_up && return 0
  kill -0 "$(head -n 1 "$dir/sessions")" 2>/dev/null || { wait_for_stop=1; return 1; }
  return 1
}
node_started() { grep -q "Ray runtime started" "$1"; }

start_node() {  # start_node NAME ray-start-args...: one node in its own session
  local name=$1; shift
  setsid "$ray_bin" start --block --disable-usage-stats \
    --dashboard-agent-listen-port 0 --object-store-memory "$object_store_bytes" --num-gpus 0 \
    "$@" >"$dir/$name.log" 2>&1 &
  echo $! >>"$dir/sessions"  # setsid execs in place: the pid is the session id
}

up() {
  if [[ -s $dir/sessions ]]; then echo "local-cluster.sh: $dir already has a cluster; run down first" >&2; exit 2; fi
  ray_bin=${RAY:-$(command -v ray || true)}
  [[ -n $ray_bin ]] || { echo "local-cluster.sh: no 'ray' on PATH (activate the venv, or set RAY=...)" >&2; exit 2; }
  # Jobs run `python` from the raylets' PATH: make it the python that has Ray (and gan-dist).
  export PATH="$(dirname "$ray_bin"):$PATH"
  # Without this a stopping node waits to drain; a rehearsal cluster has nothing to drain.
  export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0
  mkdir -p "$dir/ray"
  if [[ -n ${RAY_AUTH_TOKEN:-} ]]; then printf %s "$RAY_AUTH_TOKEN" >"$dir/auth_token"
  else python3 -c 'import secrets; print(secrets.token_hex(32), end="")' >"$dir/auth_token"; fi
  chmod 600 "$dir/auth_token"
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$dir/auth_token
  unset RAY_AUTH_TOKEN RAY_ADDRESS
  : >"$dir/sessions"

  start_node head --head --port "$port" --dashboard-host 127.0.0.1 --dashboard-port "$dashboard_port" \
    --ray-client-server-port "$client_port" --num-cpus "$head_cpus" --temp-dir "$dir/ray"
  wait_for 180 "the head's Jobs API (port $dashboard_port)" head_ready || { tail -n 5 "$dir/head.log" >&2; down; exit 1; }
  for ((w = 1; w <= workers; w++)); do
    # A temp dir of its own: nodes that share one also share runtime_resources/, and one node's
    # runtime-env agent then deletes a job's working_dir that the other node's processes run in.
    mkdir -p "$dir/ray-w$w"
    start_node "worker-$w" --address "127.0.0.1:$port" --num-cpus "$worker_cpus" --temp-dir "$dir/ray-w$w"
  done
  for ((w = 1; w <= workers; w++)); do
    wait_for 180 "worker $w" node_started "$dir/worker-$w.log" || { down; exit 1; }
  done

  cat >"$dir/env" <<EOF
export RAY_ADDRESS=127.0.0.1:$port
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$dashboard_port
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$dir/auth_token
EOF
  echo "Ray cluster up: head + $workers worker node(s); dashboard http://127.0.0.1:$dashboard_port"
  echo "  source $dir/env; gan-dist submit --address http://127.0.0.1:$dashboard_port ..."
  echo "  cluster/local-cluster.sh down --dir $dir"
}

down() {
  [[ -f $dir/sessions ]] || { echo "local-cluster.sh: no cluster recorded in $dir"; return 0; }
  local sessions; sessions=$(tac "$dir/sessions")  # workers first, the head last
  for sid in $sessions; do kill -TERM "$sid" 2>/dev/null || true; done
  for sid in $sessions; do
    for ((i = 0; i < 40 && $(pgrep -c -s "$sid" || true) > 0; i++)); do sleep 0.5; done
    pkill -KILL -s "$sid" 2>/dev/null || true  # whatever outlived its node (only this session's)
  done
  rm -f "$dir/sessions" "$dir/env"
  echo "Ray cluster in $dir stopped"
}

case $cmd in
  up) up ;;
  down) down ;;
  *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
