"""Strict, offline validation of custom resources against their CRDs.

The API server keeps only the fields a CRD's schema declares and drops the rest
without a word, so a misspelt field in a RayJob or a PodMonitor "applies" and
then does nothing. The CRDs never say `additionalProperties: false`; validating
strictly means adding it to every object schema that declares its properties,
except where Kubernetes keeps unknown fields on purpose
(x-kubernetes-preserve-unknown-fields) or the object is a map (additionalProperties).
x-kubernetes-int-or-string accepts an integer or a string. CEL rules
(x-kubernetes-validations) need a real API server and are not checked.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

VENDORED = Path(__file__).resolve().parent / "schemas"  # upstream CRDs, see its README.md
SCHEMAS_ENV = "GAN_DIST_CRD_SCHEMAS"
# The custom resources the manifests hold (a RayJob's rayClusterSpec is checked as a RayCluster).
REQUIRED = (("ray.io/v1", "RayJob"), ("ray.io/v1", "RayCluster"), ("monitoring.coreos.com/v1", "PodMonitor"),
            ("monitoring.coreos.com/v1", "PrometheusRule"))


def schemas_dir() -> Path:
    """$GAN_DIST_CRD_SCHEMAS, else the copies vendored in tests/schemas."""
    return Path(os.environ.get(SCHEMAS_ENV) or VENDORED)


def missing(folder: Path) -> list[str]:
    """The REQUIRED kinds that `folder` holds no CRD for, as 'apiVersion kind'."""
    found = crd_schemas(folder) if folder.is_dir() else {}
    return [f"{api_version} {kind}" for api_version, kind in REQUIRED if (api_version, kind) not in found]


@lru_cache(maxsize=None)
def crd_schemas(folder: Path) -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the CRD's openAPIV3Schema, for every CRD file in `folder`."""
    found = {}
    for path in sorted(folder.glob("*.y*ml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            found[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return found


def strict(node: dict) -> dict:
    """A copy of an OpenAPI v3 (structural) schema in JSON Schema terms, closed to undeclared fields."""
    node = dict(node)
    if node.get("x-kubernetes-int-or-string"):
        node.pop("type", None)
        node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.pop("nullable", False) and "type" in node:
        node["type"] = [node["type"], "null"]
    if "properties" in node:
        node["properties"] = {name: strict(sub) for name, sub in node["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            node[key] = strict(node[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            node[key] = [strict(sub) for sub in node[key]]
    keeps_unknown = node.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in node
    if node.get("type") == "object" and not keeps_unknown:
        if node.get("x-kubernetes-embedded-resource"):  # apiVersion/kind/metadata are implied
            node["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                  "metadata": {"type": "object"}, **node.get("properties", {})}
        node["additionalProperties"] = False
    return node


@lru_cache(maxsize=None)
def _validator(folder: Path, api_version: str, kind: str) -> jsonschema.Draft7Validator:
    schema = strict(crd_schemas(folder)[(api_version, kind)])
    # The root's metadata is an ObjectMeta, which the API server checks itself.
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def is_custom(obj: dict, folder: Path) -> bool:
    return (obj.get("apiVersion"), obj.get("kind")) in crd_schemas(folder)


def errors(obj: dict, folder: Path) -> list[str]:
    """Every schema violation in `obj`, as 'path: message'."""
    validator = _validator(folder, obj["apiVersion"], obj["kind"])
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))]
