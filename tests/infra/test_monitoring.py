"""Prometheus alert rules, scrape config and the Grafana dashboard refer to metrics that exist."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import yaml
from prometheus_client import CollectorRegistry

from shared.metrics import WORKER_REGISTRY, ClusterCollector, PipelineCacheCollector
from shared.settings import REPO_ROOT
from worker.metrics import DEVICE_MEMORY_READINGS

PROMETHEUS = REPO_ROOT / "infra" / "prometheus"
DASHBOARD = REPO_ROOT / "infra" / "grafana" / "dashboards" / "kiln.json"
SEVERITIES = {"critical", "warning", "info"}
DURATION = re.compile(r"^\d+[smhd]$")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",), "info": ("_info",)}


def _families(registry: CollectorRegistry):
    return list(registry.collect())


def exposed_names() -> set[str]:
    """Every sample name Kiln's API and workers can expose."""
    fake_store = SimpleNamespace(count=lambda status: 0, prefix="kiln", index_key=lambda status: f"kiln:{status}",
                                 redis=SimpleNamespace(zrange=lambda *a, **k: []))
    fake_broker = SimpleNamespace(llen=lambda queue: 0)
    fake_fair = SimpleNamespace(queues=lambda: [], waiting=lambda queue: 0)
    fake_workers = SimpleNamespace(list=lambda: [])
    cache = SimpleNamespace(stats={"hits": 0, "loads": 0, "evictions": 0}, used_bytes=lambda: 0, names=lambda: [])
    registry = CollectorRegistry()
    registry.register(ClusterCollector(fake_store, fake_broker, lambda: ["kiln.default"], fake_fair, fake_workers))
    registry.register(PipelineCacheCollector(cache, budget_bytes=1))
    names = {f"kiln_device_memory_{reading}_bytes" for reading in DEVICE_MEMORY_READINGS}
    for family in _families(registry) + _families(WORKER_REGISTRY):
        names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names | {"up"}


def metric_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    return {name for name in re.findall(r"\b(kiln_[a-z0-9_]+|up)\b", without_strings)}


def alert_rules() -> list[dict]:
    data = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    assert set(data) == {"groups"}
    rules = []
    for group in data["groups"]:
        assert set(group) <= {"name", "rules", "interval"} and group["name"] and group["rules"]
        rules += group["rules"]
    return rules


def test_alert_rules_are_well_formed():
    rules = alert_rules()
    assert len(rules) >= 5
    assert len({rule["alert"] for rule in rules}) == len(rules), "alert names must be unique"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule["alert"]
        assert re.match(r"^[A-Z][A-Za-z0-9]+$", rule["alert"])
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert DURATION.match(rule.get("for", "0s")), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


def test_alerts_and_dashboard_use_only_exposed_metrics():
    exposed = exposed_names()
    used = {rule["alert"]: metric_names(rule["expr"]) for rule in alert_rules()}
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used[f"panel {panel['title']}"] = metric_names(target["expr"])
    for where, names in used.items():
        assert names, f"{where} uses no metric"
        assert names <= exposed, f"{where} uses unknown metrics {sorted(names - exposed)}"


def test_alert_jobs_match_the_scrape_config():
    jobs = {job["job_name"] for job in yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]}
    referenced = {job for rule in alert_rules() for job in re.findall(r'job="([^"]+)"', rule["expr"])}
    assert referenced and referenced <= jobs


def test_dashboard_is_a_grafana_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and len(ids) >= 10
    occupied = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & occupied, f"panel {panel['title']} overlaps another"
        occupied |= cells
        assert all(target["refId"] and target["expr"] for target in panel["targets"])


@pytest.mark.parametrize("expr, names", [('sum(rate(kiln_denoise_steps_total[1m]))', {"kiln_denoise_steps_total"}),
                                         ('up{job="kiln-api"} == 0', {"up"})])
def test_metric_name_extraction(expr, names):
    assert metric_names(expr) == names
