"""A small kustomize for the tests (no kubectl here): renders `infra/k8s` overlays to objects.

Supports exactly what Kiln's kustomizations use — `resources` (files and folders), `patches`
by path (strategic merge, matched by kind and name), `images` (name → newName/newTag) and
`namespace` — and refuses any other field, so a kustomization that starts using one fails here
rather than being rendered wrongly.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "patches", "images", "namespace"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def load_documents(path: Path) -> list[dict[str, Any]]:
    with path.open() as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize folder` would print (for the supported fields)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise ValueError(f"{folder}/kustomization.yaml uses {sorted(unknown)}; this renderer knows {sorted(SUPPORTED)}")
    objects: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        target = (folder / entry).resolve()
        objects += render(target) if target.is_dir() else load_documents(target)
    for patch in kustomization.get("patches", []):
        for doc in load_documents(folder / patch["path"]):
            _apply_patch(objects, doc, folder / patch["path"])
    for image in kustomization.get("images", []):
        _set_image(objects, image)
    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
    return objects


def _apply_patch(objects: list[dict[str, Any]], patch: dict[str, Any], source: Path) -> None:
    for index, obj in enumerate(objects):
        if obj["kind"] == patch["kind"] and obj["metadata"]["name"] == patch["metadata"]["name"]:
            objects[index] = merge(obj, patch)
            return
    raise ValueError(f"{source}: no {patch['kind']} named {patch['metadata']['name']!r} to patch")


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge as kustomize does it for our kinds: maps merge key by key; lists of maps
    that all carry `name` merge item by item on it; any other value is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if _named_list(base) and _named_list(patch):
        out = [copy.deepcopy(item) for item in base]
        for item in patch:
            match = next((i for i, old in enumerate(out) if old["name"] == item["name"]), None)
            if match is None:
                out.append(copy.deepcopy(item))
            else:
                out[match] = merge(out[match], item)
        return out
    return copy.deepcopy(patch)


def _named_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(i, dict) and "name" in i for i in value)


def _set_image(objects: list[dict[str, Any]], image: dict[str, str]) -> None:
    for container in containers(objects):
        name, _, _tag = container["image"].partition(":")
        if name == image["name"]:
            new_name = image.get("newName", name)
            container["image"] = f"{new_name}:{image['newTag']}" if "newTag" in image else new_name


def containers(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every container of every workload in `objects`."""
    found = []
    for obj in objects:
        spec = obj.get("spec", {}).get("template", {}).get("spec", {})
        found += spec.get("containers", []) + spec.get("initContainers", [])
    return found


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objects:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise KeyError(f"no {kind} {name!r}")
