"""Deployment files: kustomize renders every overlay, Kubernetes and the CRDs accept the
objects, the alert rules agree everywhere and pass promtool, versions agree."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

import crd_schema
from gan_dist.cli import build_parser
from gan_dist.train_args import train_overrides
from gan_dist.config import resolve
from gan_dist.monitor.metrics import CATALOG

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = ["cpu-smoke", "gpu"]
K8S_VERSION = "1.33.0"  # core kinds are checked against this release's schemas
ALERTS = REPO / "cluster" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "cluster" / "grafana" / "gan-dist-dashboard.json"
# The metric catalog, declared once in the monitor module (DESIGN.md, "Metrics").
METRICS = set(CATALOG)


def tool(name: str) -> str:
    """The venv's copy first (pinned), then PATH; `make test` installs missing ones."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    assert found, f"{name} is missing: run tests/tools/ensure-tools.sh .venv/bin (make test does)"
    return found


def run(*cmd: str, cwd: Path = REPO) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=120)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    kubectl = tool("kubectl")
    return {name: list(yaml.safe_load_all(run(kubectl, "kustomize", f"k8s/overlays/{name}")))
            for name in OVERLAYS}


@pytest.fixture(scope="module")
def schemas() -> Path:
    """The CRD schemas; their absence is a failure, never a skip (CI must validate)."""
    folder = crd_schema.schemas_dir()
    absent = crd_schema.missing(folder)
    assert not absent, (f"no CRD for {', '.join(absent)} in {folder}: tests/schemas/ holds the vendored "
                        f"KubeRay and Prometheus Operator CRDs ({crd_schema.SCHEMAS_ENV} overrides the folder)")
    return folder


@pytest.mark.unit
def test_schemas_are_vendored_and_a_missing_one_is_named(tmp_path):
    assert crd_schema.missing(crd_schema.VENDORED) == []
    (tmp_path / "ray.io_rayjobs.yaml").write_bytes((crd_schema.VENDORED / "ray.io_rayjobs.yaml").read_bytes())
    assert crd_schema.missing(tmp_path) == ["ray.io/v1 RayCluster", "monitoring.coreos.com/v1 PodMonitor",
                                             "monitoring.coreos.com/v1 PrometheusRule"]


def one(docs: list[dict], kind: str) -> dict:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def pod_templates(rayjob: dict) -> dict[str, dict]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    templates = {"head": cluster["headGroupSpec"]["template"], "submitter": rayjob["spec"]["submitterPodTemplate"]}
    templates.update({g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]})
    return templates


@pytest.mark.integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_object(rendered, overlay):
    kinds = sorted(d["kind"] for d in rendered[overlay])
    assert kinds == ["ConfigMap", "ConfigMap", "PersistentVolumeClaim", "PodMonitor", "PodMonitor",
                     "PrometheusRule", "RayJob"]


@pytest.mark.integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_and_pod_templates_validate(rendered, overlay):
    docs = rendered[overlay]
    core = [d for d in docs if "/" not in d["apiVersion"]]
    # The RayJob's pods are core PodTemplateSpecs: check them with Kubernetes' own schema too.
    core += [{"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}
             for name, template in pod_templates(one(docs, "RayJob")).items()]
    for obj in core:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {exc.message} at {list(exc.path)}")


@pytest.mark.integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_validate_strictly(rendered, schemas, overlay):
    docs = rendered[overlay]
    custom = [d for d in docs if crd_schema.is_custom(d, schemas)]
    assert sorted(d["kind"] for d in custom) == ["PodMonitor", "PodMonitor", "PrometheusRule", "RayJob"]
    # The RayJob's cluster is a RayCluster: check its spec against that CRD as well.
    rayjob = one(docs, "RayJob")
    custom.append({"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "from-rayjob"},
                   "spec": rayjob["spec"]["rayClusterSpec"]})
    for obj in custom:
        assert crd_schema.errors(obj, schemas) == [], f"{obj['kind']} {obj['metadata']['name']}"


@pytest.mark.integration
def test_misspelt_fields_fail_strict_validation(rendered, schemas):
    fixture = yaml.safe_load((REPO / "tests" / "fixtures" / "rayjob-misspelt.yaml").read_text())
    found = crd_schema.errors(fixture, schemas)
    assert len(found) == 2
    assert "'shutdownAfterJobFinish' was unexpected" in found[0]
    assert found[1].startswith("spec.rayClusterSpec.headGroupSpec:") and "'rayStartParms'" in found[1]
    # Deep in a pod template, and in a PodMonitor, as kubectl apply would silently accept them.
    docs = copy.deepcopy(rendered["gpu"])
    rayjob = one(docs, "RayJob")
    worker = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    worker["tolerations"][0]["efect"] = worker["tolerations"][0].pop("effect")
    assert any("'efect' was unexpected" in e for e in crd_schema.errors(rayjob, schemas))
    monitor = one([d for d in docs if d["metadata"]["name"] == "gan-dist-run"], "PodMonitor")
    monitor["spec"]["podMetricEndpoints"] = monitor["spec"].pop("podMetricsEndpoints")
    assert any("'podMetricEndpoints' was unexpected" in e for e in crd_schema.errors(monitor, schemas))


@pytest.mark.integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayjob_runs_a_resumable_secure_cluster(rendered, overlay):
    docs = rendered[overlay]
    rayjob = one(docs, "RayJob")
    spec, cluster = rayjob["spec"], rayjob["spec"]["rayClusterSpec"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["authOptions"]["mode"] == "token"

    # The entrypoint is a valid `gan-dist train` with a stable name and storage on the shared volume.
    words = shlex.split(spec["entrypoint"])
    assert words[:2] == ["python", "/opt/gan-dist/launch/ray_job.py"]
    args = build_parser().parse_args(["train", *words[2:]])
    assert args.name and args.storage
    cfg = resolve(str(REPO / "k8s" / "base" / "recipe.yaml"), train_overrides(args))
    assert cfg.metrics.host == "0.0.0.0"  # Prometheus scrapes the run's exporter from outside the pod

    pvc, recipe = one(docs, "PersistentVolumeClaim"), next(d for d in docs if "recipe.yaml" in d.get("data", {}))
    for name, template in pod_templates(rayjob).items():
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["resources"]["requests"] and container["resources"]["limits"], name
            if name == "submitter":
                continue
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
            assert "emptyDir" in mounts["/tmp/ray"], name
            assert mounts[args.storage]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"], name
    head_mounts = {m["mountPath"]: m["name"] for m in pod_templates(rayjob)["head"]["spec"]["containers"][0]["volumeMounts"]}
    head_volumes = {v["name"]: v for v in pod_templates(rayjob)["head"]["spec"]["volumes"]}
    assert args.recipe.startswith("/etc/gan-dist/")
    assert head_volumes[head_mounts["/etc/gan-dist"]]["configMap"]["name"] == recipe["metadata"]["name"]
    assert recipe["data"]["recipe.yaml"] == (REPO / "k8s" / "base" / "recipe.yaml").read_text()


@pytest.mark.integration
def test_gpu_overlay_asks_for_gpus_and_tolerates_their_taint(rendered):
    rayjob = one(rendered["gpu"], "RayJob")
    (group,) = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    worker = group["template"]["spec"]
    limits = worker["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in worker["tolerations"]
    args = build_parser().parse_args(["train", *shlex.split(rayjob["spec"]["entrypoint"])[2:]])
    assert args.workers == str(group["replicas"]) and args.gpus_per_worker == 1
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    assert one(rendered["gpu"], "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.integration
def test_monitors_scrape_ray_and_the_run(rendered):
    docs = rendered["gpu"]
    monitors = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "PodMonitor"}
    ports = {name: {p["name"]: p["containerPort"] for c in t["spec"]["containers"] for p in c.get("ports", [])}
             for name, t in pod_templates(one(docs, "RayJob")).items()}
    assert monitors["gan-dist-ray"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert "metrics" in ports["head"] and "metrics" in ports["gpu"]
    assert monitors["gan-dist-run"]["podMetricsEndpoints"][0]["port"] == "gan-metrics"
    recipe = yaml.safe_load((REPO / "k8s" / "base" / "recipe.yaml").read_text())
    assert ports["head"]["gan-metrics"] == recipe["metrics"]["port"]


# Alert rules and the dashboard ------------------------------------------------------

@pytest.mark.integration
def test_prometheusrule_is_generated_from_alerts_yml(rendered):
    sys.path.insert(0, str(REPO / "cluster" / "prometheus"))
    try:
        import to_prometheusrule
    finally:
        sys.path.pop(0)
    committed = (REPO / "k8s" / "base" / "prometheusrule.yaml").read_text()
    assert committed == to_prometheusrule.render(), "regenerate: python cluster/prometheus/to_prometheusrule.py"
    alerts = yaml.safe_load(ALERTS.read_text())
    for overlay in OVERLAYS:
        assert one(rendered[overlay], "PrometheusRule")["spec"] == alerts


@pytest.mark.integration
def test_rules_and_config_pass_promtool(rendered, tmp_path):
    promtool = tool("promtool")
    # The rules as Kubernetes will load them, and as a plain Prometheus loads them.
    rules = tmp_path / "k8s-rules.yml"
    rules.write_text(yaml.safe_dump(one(rendered["gpu"], "PrometheusRule")["spec"]))
    run(promtool, "check", "rules", str(rules), str(ALERTS))
    run(promtool, "check", "config", "prometheus.yml", cwd=ALERTS.parent)
    # Each alert fires on a sick series and stays quiet on a healthy one.
    out = run(promtool, "test", "rules", "alerts_test.yml", cwd=ALERTS.parent)
    assert "SUCCESS" in out


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(gan_[a-z_]+)\b", expr))


@pytest.mark.integration
def test_alerts_and_dashboard_use_declared_metrics(rendered):
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    alerted = set().union(*(metric_names(r["expr"]) for r in rules))
    assert alerted <= METRICS, alerted - METRICS
    # collapse, D overpowering, divergence, non-finite steps, stall, restarts:
    for name in ("gan_collapse_score", "gan_d_accuracy", "gan_loss", "gan_nonfinite_steps_total",
                 "gan_train_step", "gan_worker_restarts_total", "gan_alert_active"):
        assert name in alerted, name

    dashboard = json.loads(DASHBOARD.read_text())
    charted = set().union(*(metric_names(t["expr"]) for p in dashboard["panels"] for t in p["targets"]))
    assert charted <= METRICS, charted - METRICS
    for name in ("gan_loss", "gan_d_accuracy", "gan_grad_norm", "gan_collapse_score", "gan_samples_per_second",
                 "gan_data_wait_seconds", "gan_worker_restarts_total", "gan_checkpoint_seconds",
                 "gan_alert_active", "gan_fid", "gan_kid", "gan_world_size", "gan_resizes_total"):
        assert name in charted, name
    # Kubernetes gets the very same JSON through the ConfigMap that kustomize builds from it.
    configmap = next(d for d in rendered["gpu"] if "gan-dist-dashboard.json" in d.get("data", {}))
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"]["gan-dist-dashboard.json"] == DASHBOARD.read_text()


# Ray cluster launcher and image --------------------------------------------------------

@pytest.mark.unit
def test_cluster_launcher_config_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster" / "aws-gpu.yaml").read_text())
    validate_config(prepare_config(config))
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    assert any("--num-gpus=0" in cmd and "--num-cpus=0" in cmd for cmd in config["head_start_ray_commands"])
    assert config["available_node_types"]["gpu_worker"]["resources"]["GPU"] > 0
    head["node_confg"] = head.pop("node_config")
    with pytest.raises(jsonschema.ValidationError, match="'node_config' is a required property"):
        validate_config(prepare_config(config))


@pytest.mark.integration
def test_ray_version_agrees_everywhere(rendered):
    pinned = re.search(r"^ray==(\S+)$", (REPO / "constraints.txt").read_text(), re.M).group(1)
    dockerfile = (REPO / "cluster" / "Dockerfile").read_text()
    assert f"rayproject/ray:{pinned}-" in dockerfile and f"ray.__version__ == '{pinned}'" in dockerfile
    for overlay in OVERLAYS:
        assert one(rendered[overlay], "RayJob")["spec"]["rayClusterSpec"]["rayVersion"] == pinned


@pytest.mark.integration
def test_local_cluster_script_is_valid_bash():
    run("bash", "-n", "cluster/local-cluster.sh")
    run("bash", "-n", "launch/submit-example.sh")
    run("bash", "-n", "tests/tools/ensure-tools.sh")
