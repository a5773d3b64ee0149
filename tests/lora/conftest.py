"""Tiny diffusers pipelines (the oracle) saved once per module, Kiln loads of them, and peft's
transformers gate opened for text-encoder LoRAs (see PROBES.md)."""

from __future__ import annotations

import pytest
import torch

from tests.pipelines import tiny


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def peft_gate_for_text_encoders():
    """transformers 5.x asks for peft >= 0.22 for adapters on its models; 0.21.2 has the API it uses."""
    peft_integration = pytest.importorskip("transformers.integrations.peft")
    before = peft_integration.MIN_PEFT_VERSION
    peft_integration.MIN_PEFT_VERSION = "0.21.0"
    yield
    peft_integration.MIN_PEFT_VERSION = before


def _saved(factory, tmp_path_factory, name):
    ref = factory()
    folder = tmp_path_factory.mktemp(name)
    ref.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return _saved(tiny.tiny_sd_pipeline, tmp_path_factory, "sd")


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    return _saved(tiny.tiny_sdxl_pipeline, tmp_path_factory, "sdxl")
