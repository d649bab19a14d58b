"""Write k8s/base/prometheusrule.yaml from cluster/prometheus/alerts.yml.

    python cluster/prometheus/to_prometheusrule.py

alerts.yml is the one source of the rules. A PrometheusRule must carry its
groups inline, which kustomize cannot read from a file, so the Kubernetes copy
is generated here and tests/test_manifests.py fails whenever the two differ.
"""

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
TARGET = HERE.parents[1] / "k8s" / "base" / "prometheusrule.yaml"
HEADER = "# Generated from cluster/prometheus/alerts.yml by cluster/prometheus/to_prometheusrule.py: edit those.\n"


def render() -> str:
    groups = yaml.safe_load((HERE / "alerts.yml").read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "gan-dist", "labels": {"app.kubernetes.io/name": "gan-dist"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.safe_dump(rule, sort_keys=False, width=120)


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
