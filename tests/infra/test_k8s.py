"""Kubernetes manifests: valid against the bundled Kubernetes schemas (offline), KEDA's
ScaledObject against a vendored schema, and consistent with each other and with Kiln."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
from referencing import Registry, Resource

from shared.celery_app import DEFAULT_QUEUE
from shared.settings import Settings, SettingsError, load_settings
from tests.infra.conftest import kustomize_dirs
from tests.infra.kustomize import containers, find, render

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate (bundled Kubernetes schemas) is in the test extra")

K8S_VERSIONS = ("1.29.0", "1.37.0")  # oldest we support, newest bundled
SCHEMAS = Path(__file__).parent / "schemas"
CRD_KINDS = {"ScaledObject"}
HPA_BEHAVIOR = "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerBehavior"
# Read by configure_logging / the worker's metrics server before Settings has them.
ENV_BESIDE_SETTINGS = {"KILN_LOG_LEVEL", "KILN_LOG_FORMAT", "KILN_METRICS_PORT"}


def scaledobject_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / "keda-scaledobject.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def hpa_behavior_validator(version: str = K8S_VERSIONS[-1]) -> jsonschema.Draft202012Validator:
    """The Kubernetes HPA behavior schema, from kubernetes-validate's bundled definitions."""
    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{version}-local-strict"
    definitions = Resource.from_contents(json.loads((root / "_definitions.json").read_text()))
    registry = Registry().with_resource(definitions.id(), definitions)
    return jsonschema.Draft202012Validator({"$ref": f"{definitions.id()}#/$defs/{HPA_BEHAVIOR}"},
                                           registry=registry)


def validate_object(obj: dict) -> None:
    if obj["kind"] == "ScaledObject":
        scaledobject_validator().validate(obj)
        behavior = obj["spec"].get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
        if behavior is not None:
            hpa_behavior_validator().validate(behavior)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def test_every_rendered_object_is_valid(overlay):
    _, objects = overlay
    kinds = {obj["kind"] for obj in objects}
    assert {"Deployment", "Service", "Ingress", "ConfigMap", "Secret", "PodDisruptionBudget",
            "ScaledObject", "StatefulSet", "Namespace"} <= kinds
    for obj in objects:
        validate_object(obj)


@pytest.mark.parametrize("folder", kustomize_dirs(), ids=lambda p: p.name)
def test_every_file_parses_and_every_kustomization_renders(folder):
    assert render(folder)


def test_validators_reject_broken_objects(overlay):
    _, objects = overlay
    deployment = copy.deepcopy(find(objects, "Deployment", "kiln-api"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["prot"] = 80
    with pytest.raises(jsonschema.ValidationError):
        validate_object(deployment)
    scaled = copy.deepcopy(find(objects, "ScaledObject", "kiln-worker"))
    del scaled["spec"]["triggers"][0]["metadata"]["listName"]
    with pytest.raises(jsonschema.ValidationError, match="listName"):
        validate_object(scaled)
    scaled = copy.deepcopy(find(objects, "ScaledObject", "kiln-worker"))
    scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["policies"][0]["type"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_object(scaled)


def _pod(objects, name: str) -> dict:
    return find(objects, "Deployment", name)["spec"]["template"]["spec"]


def _config(objects) -> dict[str, str]:
    return find(objects, "ConfigMap", "kiln-config")["data"]


def test_gpu_overlay_gives_each_worker_one_gpu_and_cpu_none(overlay):
    name, objects = overlay
    worker = _pod(objects, "kiln-worker")["containers"][0]
    env = {e["name"]: e["value"] for e in worker["env"]}
    gpus = worker["resources"].get("limits", {}).get("nvidia.com/gpu")
    if name == "gpu":
        assert gpus == "1" and env["KILN_DEVICE"] == "cuda" and worker["image"].endswith("-cuda")
    else:
        assert gpus is None and env["KILN_DEVICE"] == "cpu" and worker["image"].endswith("-cpu")


def test_probes_use_the_real_health_endpoints(overlay):
    _, objects = overlay
    api = _pod(objects, "kiln-api")["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/livez"
    worker = _pod(objects, "kiln-worker")["containers"][0]
    assert worker["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/livez"
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert ports["metrics"] == int(_config(objects)["KILN_METRICS_PORT"])
    assert {"/healthz", "/livez"} <= _api_routes()


def _api_routes() -> set[str]:
    from api.app import create_app

    app = create_app(load_settings(redis_url="redis://127.0.0.1:1/0", auth="disabled"))
    return {rule.rule for rule in app.url_map.iter_rules()}


def test_worker_grace_period_outlasts_a_job(overlay):
    _, objects = overlay
    grace = _pod(objects, "kiln-worker")["terminationGracePeriodSeconds"]
    assert grace >= float(_config(objects)["KILN_JOB_TIMEOUT_S"]) + 30


def test_keda_scales_on_the_celery_queue_and_can_reach_its_maximum(overlay):
    _, objects = overlay
    spec = find(objects, "ScaledObject", "kiln-worker")["spec"]
    config = _config(objects)
    assert spec["scaleTargetRef"]["name"] == "kiln-worker" and spec["minReplicaCount"] == 0
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "redis" and meta["listName"] == DEFAULT_QUEUE == config["KILN_WORKER_QUEUES"]
    # The dispatcher caps the broker list at KILN_DISPATCH_QUEUE_DEPTH; KEDA wants list/listLength pods.
    assert int(config["KILN_DISPATCH_QUEUE_DEPTH"]) >= spec["maxReplicaCount"] * int(meta["listLength"])
    # KEDA runs in its own namespace: the address must name the Redis Service with its namespace.
    redis_service = find(objects, "Service", "kiln-redis")
    host, port = meta["address"].rsplit(":", 1)
    assert host == f"kiln-redis.{redis_service['metadata']['namespace']}.svc.cluster.local"
    assert int(port) == redis_service["spec"]["ports"][0]["port"]
    assert config["KILN_REDIS_URL"].startswith(f"redis://kiln-redis:{port}/{meta['databaseIndex']}")


def test_selectors_match_their_pods(overlay):
    _, objects = overlay
    for obj in objects:
        if obj["kind"] in ("Service", "PodDisruptionBudget"):
            selector = obj["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            targets = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")
                       and selector.items() <= o["spec"]["template"]["metadata"]["labels"].items()]
            assert targets, f"{obj['kind']} {obj['metadata']['name']} selects no pods"


def test_ingress_routes_to_the_api_but_not_metrics(overlay):
    _, objects = overlay
    ingress = find(objects, "Ingress", "kiln-api")
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert {p["backend"]["service"]["name"] for p in paths} == {"kiln-api"}
    assert "/v1" in {p["path"] for p in paths}
    assert not any("/metrics".startswith(p["path"]) for p in paths)


def test_config_keys_are_real_settings(overlay):
    _, objects = overlay
    known = {f"KILN_{name.upper()}" for name in Settings.model_fields} | ENV_BESIDE_SETTINGS
    keys = set(_config(objects)) | set(find(objects, "Secret", "kiln-secrets")["stringData"])
    keys |= {e["name"] for c in containers(objects) for e in c.get("env", []) if e["name"].startswith("KILN_")}
    assert keys - known == set()


def test_unedited_secret_placeholders_stop_the_start(overlay):
    _, objects = overlay
    secret = find(objects, "Secret", "kiln-secrets")["stringData"]
    with pytest.raises(SettingsError, match="KILN_BOOTSTRAP_ADMIN_KEY"):
        load_settings(bootstrap_admin_key=secret["KILN_BOOTSTRAP_ADMIN_KEY"])


def test_pods_run_as_non_root_without_privileges(overlay):
    _, objects = overlay
    for obj in objects:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
            assert re.match(r"^[\w./-]+:[\w.-]+$", container["image"]) and not container["image"].endswith(":latest")
