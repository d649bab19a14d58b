"""`gan-dist submit` against real Ray clusters with token authentication on.

One module-scoped cluster per topology: a plain `ray start --head` (one node),
and a head plus a worker node started by cluster/local-cluster.sh. Each keeps
its state in its own temp dir and its own ports, and is stopped by stopping its
own processes, never `ray stop` (which would end every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, run_cli
from gan_dist.cli import main

pytestmark = [pytest.mark.ray, pytest.mark.slow]

BIN = Path(sys.executable).parent
SHORT_RUN = ["--max-steps", "200", "--set", "train.log_every=100", "--set", "checkpoint.every=100",
             "--workers", "2"]
SUMMARY_KEYS = {"status", "steps", "world_size", "restarts", "images_per_second", "wall_seconds", "final",
                "eval", "alerts", "data", "fingerprint"}


def free_ports(n: int) -> list[int]:
    """`n` ports free now, between Ray's worker ports (10002-19999) and the kernel's ephemeral
    range: a port that bind(0) hands out comes from that range, and any outgoing connection
    (the other xdist worker's Ray among them) can take it before our `ray start` binds it."""
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    draw = random.Random()  # seeded from the OS: two test processes draw different ports
    ports: list[int] = []
    while len(ports) < n:
        port = draw.randrange(20_000, max(ephemeral, 20_001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def wait_for(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {seconds:.0f} s")


def jobs_api_up(address: str, token: str) -> bool:
    """The dashboard's job module answers (it starts a while after the dashboard's port opens)."""
    request = urllib.request.Request(f"{address}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def cluster_env(**extra: str) -> dict:
    """For Ray's processes: this venv's python first (jobs run `python`), this checkout importable."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep),
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0", RAY_USAGE_STATS_ENABLED="0", **extra)
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(name, None)
    return env


def kill_session(sid: int) -> None:
    """SIGKILL what is left of a session this test started (its node's Ray processes)."""
    for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
        try:
            if os.getsid(pid) == sid:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def submitter_env(token: str | None, home: Path) -> dict:
    """The submitting user's environment: a token (or none) and a HOME without ~/.ray."""
    return {"HOME": str(home), "RAY_AUTH_TOKEN": token or "", "RAY_AUTH_TOKEN_PATH": ""}


def job_status(address: str, token: str, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
    return str(client.get_job_status(job_id))


def job_logs(address: str, token: str, job_id: str) -> str:
    """The job's own output, for an assertion's message (the cluster's temp dir goes at teardown)."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
    return client.get_job_logs(job_id)[-4000:]


def assert_complete_summary(run_dir: Path, steps: int) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary), SUMMARY_KEYS - set(summary)
    assert summary["status"] == "completed" and summary["steps"] == steps and summary["world_size"] == 2
    assert summary["eval"]["num_modes"] == 8 and summary["fingerprint"]
    return summary


# One node: plain `ray start --head` -------------------------------------------------

@pytest.fixture(scope="module")
def head():
    """A one-node cluster from `ray start --head` (2 CPUs), token auth on; yields (dashboard URL,
    token, GCS address)."""
    token = secrets.token_hex(16)
    temp = tempfile.mkdtemp(prefix="gd-ray-")  # short: Ray's socket paths live under it
    gcs, dashboard, client = free_ports(3)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--disable-usage-stats", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--ray-client-server-port",
           str(client), "--dashboard-agent-listen-port", "0", "--num-cpus", "2", "--num-gpus", "0",
           "--object-store-memory", "300000000", "--temp-dir", temp]
    log = open(Path(temp) / "head.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=cluster_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
    try:
        address = f"http://127.0.0.1:{dashboard}"
        wait_for(lambda: jobs_api_up(address, token) or proc.poll() is not None, 180, "ray start --head")
        assert proc.poll() is None, (Path(temp) / "head.log").read_text()[-3000:]
        yield address, token, f"127.0.0.1:{gcs}"
    finally:
        proc.terminate()  # `ray start --block` stops its node's processes on SIGTERM
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            pass
        kill_session(proc.pid)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def submit_here(monkeypatch, capsys, token: str | None, home: Path, *argv: str) -> tuple[int, str, str]:
    """`gan-dist submit ARGV` in this process (no interpreter start-up), as a user with `token`."""
    for name, value in submitter_env(token, home).items():
        monkeypatch.setenv(name, value)
    rc = main(["submit", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("token, problem", [
    (None, "requires a token and none was found"),
    ("not-the-token", "rejected the token from RAY_AUTH_TOKEN"),
])
def test_missing_or_wrong_token_is_exit_2(head, monkeypatch, capsys, tmp_path, token, problem):
    address, _, _ = head
    rc, _, err = submit_here(monkeypatch, capsys, token, tmp_path, "--address", address, "--storage", str(tmp_path))
    assert rc == 2
    assert err.count("\n") == 1 and problem in err, err


def test_failed_job_is_exit_1_naming_the_job(head, monkeypatch, capsys, tmp_path):
    address, token, _ = head
    rc, out, err = submit_here(monkeypatch, capsys, token, tmp_path, "--address", address, "--set",
                               "data.source=/nonexistent/shards", "--storage", str(tmp_path), "--name", "no-data")
    assert rc == 1
    job_id = re.search(r"submitted job (\S+):", out).group(1)
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"gan-dist: error: job {job_id} failed:") and "exit code 2" in last, err
    assert "data.source /nonexistent/shards: no such file or folder" in out  # the job's own reason


def test_a_synchronous_tune_the_cluster_cannot_train_at_once_is_exit_2_and_leaves_nothing(head, cache_dir,
                                                                                          tmp_path):
    _, token, gcs = head
    storage = tmp_path / "tunes"
    result = run_cli("tune", "ring8", "--population", "2", "--synchronous", "--address", gcs, "--storage",
                     str(storage), "--name", "sync", "--max-steps", "4", "--perturb-every", "2", "--set",
                     "train.log_every=2", cache=cache_dir, env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"gan-dist: error: --synchronous: every member waits for the others, so all 2 must train at "
                    f"once, which needs 2.02 CPUs; the cluster at {gcs} has 2; nothing was started"), result.stderr
    # No record of a tune that never started: the user may change the command (here, without
    # --synchronous or with a smaller population) and run it under the same name.
    assert not (storage / "sync").exists()


# Two nodes: cluster/local-cluster.sh ----------------------------------------------------

@pytest.fixture(scope="module")
def two_nodes():
    """Head (1 CPU) + one worker node (1 CPU) from the cluster script; yields (URL, token)."""
    folder = Path(tempfile.mkdtemp(prefix="gd-cl-"))
    gcs, dashboard, client = free_ports(3)
    script = str(REPO / "cluster" / "local-cluster.sh")
    env = cluster_env(RAY=str(BIN / "ray"))
    env.pop("RAY_AUTH_TOKEN", None)  # the script makes its own token
    try:
        up = subprocess.run([script, "up", "--workers", "1", "--head-cpus", "1", "--worker-cpus", "1",
                             "--port", str(gcs), "--dashboard-port", str(dashboard), "--client-port", str(client),
                             "--dir", str(folder)], capture_output=True, text=True, env=env, timeout=420)
        assert up.returncode == 0, up.stdout + up.stderr
        yield f"http://127.0.0.1:{dashboard}", (folder / "auth_token").read_text()
    finally:
        subprocess.run([script, "down", "--dir", str(folder)], capture_output=True, env=env, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_node_run_resumes_when_resubmitted(two_nodes, cache_dir, tmp_path):
    address, token = two_nodes
    env = submitter_env(token, tmp_path)
    storage = str(tmp_path / "runs")
    common = ["--address", address, "--storage", storage, "--name", "two-nodes",
              "--env", f"GAN_DIST_CACHE={cache_dir}"]
    # --no-wait prints the job id alone.
    first = run_cli("submit", *common, *SHORT_RUN, "--no-wait", cache=cache_dir, timeout=120, env=env)
    assert first.returncode == 0, first.stderr
    job_id = first.stdout.strip()
    assert re.fullmatch(r"gan-dist-two-nodes-[0-9a-f]{6}", job_id)
    # While it runs, a second job for the same run is refused: they would share one run directory.
    twin = run_cli("submit", *common, *SHORT_RUN, cache=cache_dir, timeout=120, env=env)
    assert twin.returncode == 2 and f"already running as job {job_id}" in twin.stderr
    wait_for(lambda: job_status(address, token, job_id) in ("SUCCEEDED", "FAILED", "STOPPED"), 240, job_id)
    assert job_status(address, token, job_id) == "SUCCEEDED", job_logs(address, token, job_id)
    assert_complete_summary(Path(storage) / "two-nodes", steps=200)

    # The same name again, for longer, followed to its end: the job finds the checkpoints and
    # continues, and its own logs reach the submitter's terminal.
    again = run_cli("submit", *common, *SHORT_RUN[2:], "--max-steps", "300", cache=cache_dir, timeout=300, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    second_id = re.search(r"submitted job (\S+):", again.stdout).group(1)
    assert second_id != job_id and f"job {second_id} succeeded" in again.stdout
    assert "resuming" in again.stdout and "at step 200" in again.stdout and "step 300/300" in again.stdout
    assert job_status(address, token, second_id) == "SUCCEEDED"
    assert_complete_summary(Path(storage) / "two-nodes", steps=300)
