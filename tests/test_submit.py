"""`gan-dist submit` without a cluster: the job it builds, and bad input (exit 2, one line)."""

from __future__ import annotations

import shlex
import socket
from pathlib import Path

import pytest

from gan_dist import submit
from gan_dist.cli import job_entrypoint, main

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def dry_run(capsys, *argv: str) -> tuple[str, dict]:
    """The dry run's entrypoint args as {--set key: value} plus the whole output."""
    rc, out, err = run(capsys, "submit", "--address", "http://127.0.0.1:8265", "--dry-run", *argv)
    assert rc == 0, err
    entrypoint = next(line for line in out.splitlines() if line.strip().startswith("entrypoint"))
    words = shlex.split(entrypoint.split(None, 1)[1])
    assert words[:4] == ["python", "-m", "gan_dist", "train"]
    sets = dict(w.split("=", 1) for w in words[words.index("--set") + 1::2] if "=" in w)
    return out, sets


def test_dry_run_builds_a_resumable_job(capsys):
    out, sets = dry_run(capsys, "--max-steps", "7", "--workers", "2", "--set", "train.log_every=1")
    assert sets["train.max_steps"] == "7" and sets["run.workers"] == "2" and sets["train.log_every"] == "1"
    # No --name: one is made here, so resubmitting this exact job resumes the same run.
    assert sets["run.name"].startswith("ring8-")
    assert Path(sets["run.storage"]).is_absolute()
    assert f"'working_dir': '{REPO}'" in out
    assert f"would submit job gan-dist-{sets['run.name']}-" in out
    # `ray job stop` leaves the driver a minute for the save its SIGTERM asks for (Ray's default: 3 s).
    assert "'RAY_JOB_STOP_WAIT_TIME_S': '60'" in out
    out, _ = dry_run(capsys, "--env", "RAY_JOB_STOP_WAIT_TIME_S=300")
    assert "'RAY_JOB_STOP_WAIT_TIME_S': '300'" in out


def test_given_name_and_storage_reach_the_job(capsys, tmp_path):
    out, sets = dry_run(capsys, "--name", "exp-1", "--storage", str(tmp_path), "--env", "GAN_DIST_CACHE=/c",
                        "--entrypoint-cpus", "1", "--entrypoint-resource", "head=0.5")
    assert sets["run.name"] == "exp-1" and sets["run.storage"] == str(tmp_path)
    assert "'GAN_DIST_CACHE': '/c'" in out and "1 CPU, 0 GPU, 0.5 head" in out
    assert "'gan_dist_run': 'exp-1'" in out


def test_dry_run_masks_secret_looking_environment_values(capsys):
    out, _ = dry_run(capsys, "--env", "AWS_SECRET_ACCESS_KEY=abc123", "--env", "HF_TOKEN=tok-9",
                     "--env", "DB_PASSWORD=pw-7", "--env", "GAN_DIST_CACHE=/c")
    assert "abc123" not in out and "tok-9" not in out and "pw-7" not in out
    assert "'AWS_SECRET_ACCESS_KEY': '***'" in out and "'GAN_DIST_CACHE': '/c'" in out


def test_recipe_file_is_passed_relative_to_the_uploaded_folder(capsys, tmp_path):
    rc, out, _ = run(capsys, "submit", "--address", "http://127.0.0.1:8265", "--dry-run",
                     str(REPO / "gan_dist" / "recipes" / "grid25.yaml"))
    assert rc == 0 and "train gan_dist/recipes/grid25.yaml --set" in out
    # A recipe outside the uploaded folder would not exist in the job.
    outside = tmp_path / "mine.yaml"
    outside.write_text((REPO / "gan_dist" / "recipes" / "grid25.yaml").read_text())
    rc, _, err = run(capsys, "submit", "--address", "http://127.0.0.1:8265", "--dry-run", str(outside))
    assert rc == 2 and "is outside the uploaded folder" in err


def test_submit_leaves_train_arguments_alone(capsys):
    # submit adds train's arguments and replaces --address: train must keep its own.
    assert main(["train", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Ray cluster address; default: start a local Ray" in help_text and "--no-ray" in help_text


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("argv, problem", [
    ([], "submit needs --address"),
    (["--address", "ftp://head:8265"], "expected http://HEAD:8265"),
    (["--address", "http://10.1.2.3:8265"], "run.storage 'runs' is relative"),
    (["--address", "http://127.0.0.1:8265", "--no-ray"], "--no-ray"),
    (["--address", "http://127.0.0.1:8265", "--set", "trian.max_steps=5"], "unknown config key trian"),
    (["--address", "http://127.0.0.1:8265", "--env", "NOVALUE"], "--env expects NAME=VALUE"),
    (["--address", "http://127.0.0.1:8265", "--entrypoint-resource", "head=lots"], "is not a float"),
    (["--address", "http://127.0.0.1:8265", "--installed", str(REPO / "gan_dist/recipes/ring8.yaml")],
     "would not exist on the cluster"),
    (["--address", "http://127.0.0.1:8265", "--working-dir", "/nonexistent"], "no such folder"),
    (["--address", "http://127.0.0.1:8265", "--token-file", "/nonexistent/token"], "no such file"),
    (["--address", f"http://127.0.0.1:{closed_port()}"], "cannot reach the Ray dashboard"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, monkeypatch, argv, problem):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    rc, out, err = run(capsys, "submit", *argv)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("gan-dist: error:") and problem in err, err


def test_token_comes_from_flag_env_path_then_home(monkeypatch, tmp_path):
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert submit.find_token(None) == (None, None)
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token\n")
    assert submit.find_token(None)[0] == "home-token"
    (tmp_path / "path-token").write_text("path-token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "path-token"))
    assert submit.find_token(None)[0] == "path-token"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert submit.find_token(None) == ("env-token", "RAY_AUTH_TOKEN")
    (tmp_path / "flag-token").write_text("flag-token")
    assert submit.find_token(str(tmp_path / "flag-token"))[0] == "flag-token"
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(submit.SubmitError, match="is empty"):
        submit.find_token(str(tmp_path / "empty"))


@pytest.mark.parametrize("argv, problem", [
    (["--max-steps", "5"], "needs a stable run name"),
    (["--name", "r1"], "run.storage 'runs' is relative"),
])
def test_job_entrypoint_refuses_runs_a_retry_cannot_resume(capsys, argv, problem):
    assert job_entrypoint(argv) == 2
    assert problem in capsys.readouterr().err
