"""Device memory gauges on a real GPU: they exist, are consistent, and follow an allocation."""

from __future__ import annotations

import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker.metrics import DEVICE_MEMORY_READINGS, DeviceMemoryCollector

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def read(device: str) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(DeviceMemoryCollector(device))
    text = generate_latest(registry).decode()
    return {sample.name.removeprefix("kiln_device_memory_").removesuffix("_bytes"): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.labels == {"device": "cuda:0"}}


def test_gauges_follow_an_allocation():
    before = read("cuda")
    assert set(before) == set(DEVICE_MEMORY_READINGS)
    assert 0 < before["free"] <= before["total"]
    block = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device="cuda:0")
    after = read("cuda:0")
    assert after["allocated"] - before["allocated"] >= block.numel()
    assert after["reserved"] >= after["allocated"] and after["max_allocated"] >= after["allocated"]
    del block
