"""Every file in cluster/ validates: Ray launcher YAMLs with Ray's own config validation,
KubeRay manifests against the KubeRay CRD schemas (vendored in tests/data/kuberay)."""

from __future__ import annotations

import copy
import gzip
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
CRDS = REPO / "tests" / "data" / "kuberay"
KIND_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml.gz",
    "RayJob": "ray.io_rayjobs.yaml.gz",
    "RayCronJob": "ray.io_raycronjobs.yaml.gz",
}


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _is_kubernetes(path: Path) -> bool:
    return any("apiVersion" in doc for doc in _documents(path))


def _crd_schema(kind: str) -> dict:
    with gzip.open(CRDS / KIND_FILES[kind]) as handle:
        crd = yaml.safe_load(handle)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return version["schema"]["openAPIV3Schema"]


def _validate_launcher(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


LAUNCHER = sorted(p for p in CLUSTER.glob("*.yaml") if not _is_kubernetes(p))
MANIFESTS = sorted(p for p in CLUSTER.glob("*.yaml") if _is_kubernetes(p))
RAY_MANIFESTS = [
    p for p in MANIFESTS if any(d.get("apiVersion") == "ray.io/v1" for d in _documents(p))
]


def test_cluster_folder_has_launcher_files_and_kuberay_manifests():
    assert {p.name for p in LAUNCHER} >= {"aws-gpu.yaml", "onprem.yaml"}
    kinds = {doc["kind"] for p in MANIFESTS for doc in _documents(p)}
    assert "RayCluster" in kinds


@pytest.mark.parametrize("path", LAUNCHER, ids=lambda p: p.name)
def test_launcher_file_validates_with_rays_schema(path: Path):
    config = yaml.safe_load(path.read_text())
    _validate_launcher(config)
    # what the issue asks of every launcher file: the project only, installed on every node,
    # an MLflow server on the head that searches use by default
    assert {".venv", "ajpq_runs", "mlflow.db"} <= set(config["rsync_exclude"])
    assert any("pip install" in c and "ajpq" in c for c in config["setup_commands"])
    assert any("mlflow server" in c for c in config["head_start_ray_commands"])
    assert any("MLFLOW_TRACKING_URI" in c for c in config["head_setup_commands"])
    # and the validation is real: a misspelt key is refused
    broken = {**config, "setup_comands": []}
    with pytest.raises(Exception, match="setup_comands"):
        _validate_launcher(broken)


@pytest.mark.parametrize("path", RAY_MANIFESTS, ids=lambda p: p.name)
def test_kuberay_manifest_validates_against_the_crd(path: Path):
    checked = 0
    for doc in _documents(path):
        if doc.get("apiVersion") != "ray.io/v1":
            continue
        schema = _crd_schema(doc["kind"])
        jsonschema.validate(doc, schema)
        checked += 1
        broken = copy.deepcopy(doc)
        broken["spec"]["unknownField"] = 1
        spec = broken["spec"]
        if doc["kind"] == "RayCluster":
            spec["headGroupSpec"]["rayStartParams"] = "not a mapping"
        elif doc["kind"] == "RayCronJob":
            spec["jobTemplate"]["entrypoint"] = 42
        else:
            spec["entrypoint"] = 42
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)
    assert checked


def test_scheduled_sweeps_run_ajpq_sweep_against_a_standing_tracking_server():
    """The RayJob runs one sweep on a short-lived cluster, the RayCronJob runs it nightly;
    both send records to the standing MLflow service that kuberay-mlflow.yaml defines."""
    docs = {doc["kind"]: doc for p in MANIFESTS for doc in _documents(p)}
    assert {"RayJob", "RayCronJob", "Service"} <= set(docs)
    service = docs["Service"]["metadata"]["name"]
    cron = docs["RayCronJob"]["spec"]
    assert len(cron["schedule"].split()) == 5
    for job in (docs["RayJob"]["spec"], cron["jobTemplate"]):
        assert job["entrypoint"].startswith("ajpq sweep --config ")
        assert job["shutdownAfterJobFinishes"] is True
        assert f"http://{service}:5000" in job["runtimeEnvYAML"]
        config = job["entrypoint"].split("--config ")[1].split()[0]
        assert (REPO / config.replace("/home/ray/ajpq/", "")).exists()


def test_scheduled_sweeps_keep_their_run_folders_on_a_persistent_volume():
    """output_dir of the RayJob and the RayCronJob is a mount of the PVC that
    kuberay-runs.yaml defines, on the head (where every trial's search driver writes)."""
    docs = [doc for p in MANIFESTS for doc in _documents(p)]
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert claims, "no PersistentVolumeClaim among the manifests"
    jobs = [d["spec"] for d in docs if d["kind"] == "RayJob"]
    jobs += [d["spec"]["jobTemplate"] for d in docs if d["kind"] == "RayCronJob"]
    assert len(jobs) == 2
    for job in jobs:
        output_dir = job["entrypoint"].split("output_dir=")[1].split()[0]
        head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        volumes = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in head["volumes"]
            if "persistentVolumeClaim" in v
        }
        mounts = {m["mountPath"]: m["name"] for c in head["containers"] for m in c["volumeMounts"]}
        assert volumes[mounts[output_dir]] in claims
