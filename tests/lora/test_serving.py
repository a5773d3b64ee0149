"""LoRA in the serving path: catalog entries, job validation, `GET /v1/loras`, the worker's adapter
LRU, and concurrent jobs with different adapters sharing batched calls yet each getting its own image."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from shared.catalog import Catalog, LoraSpec, ModelSpec, load_catalog
from shared.errors import ValidationFailed
from shared.jobs.params import JobParams
from shared.jobs.schema import parse_request, resolve_request
from shared.settings import load_settings
from tests.lora.lora_files import TEXT_TARGETS, UNET_TARGETS, peft_layers, random_lora

MODEL = dict(name="tiny-sd", family="sd", default_width=32, default_height=32, default_steps=2,
             default_scheduler="ddim")


def write_lora(folder, pipe, seed):
    state = {f"unet.{k}": v for k, v in peft_layers(random_lora(pipe.unet, UNET_TARGETS, 2, seed)).items()}
    state |= {f"text_encoder.{k}": v for k, v in peft_layers(random_lora(pipe.text_encoder, TEXT_TARGETS, 2, seed + 9)).items()}
    from worker.lora.files import write_lora as write

    return write(state, folder)  # the Diffusers layout


@pytest.fixture(scope="module")
def served(sd_folder, tmp_path_factory):
    """(catalog with three LoRAs for the tiny SD model, a Kiln pipeline to build files from)."""
    from worker.pipelines import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(sd_folder)
    root = tmp_path_factory.mktemp("served-loras")
    loras = [LoraSpec(name=name, source=str(write_lora(root / name, pipe, seed).parent), base=base)
             for seed, (name, base) in enumerate((("ink", "tiny-sd"), ("neon", "sd"), ("clay", "sd")), start=1)]
    xl = LoraSpec(name="xl-only", source=str(root), base="sdxl")
    specs = [ModelSpec(source=str(sd_folder), **MODEL), ModelSpec(name="tiny-xl", source=str(sd_folder), family="sdxl")]
    return Catalog(specs, [*loras, xl])


def request(catalog, **body):
    settings = load_settings(auth="disabled")
    return resolve_request(parse_request({"model": "tiny-sd", "prompt": "a red cat", **body}), catalog,
                           settings).to_stored()


def test_jobs_name_catalog_loras_for_their_model(served):
    params = request(served, loras=[{"name": "ink", "scale": 0.5}, {"name": "neon"}])
    assert params["loras"] == [{"name": "ink", "scale": 0.5}, {"name": "neon", "scale": 1.0}]
    assert "loras" not in request(served)


@pytest.mark.parametrize("loras, field, message", [
    ([{"name": "nope"}], "loras.0.name", "unknown LoRA 'nope'"),
    ([{"name": "ink"}, {"name": "xl-only"}], "loras.1.name", "is for 'sdxl'"),
    ([{"name": "ink"}, {"name": "ink"}], "loras.1.name", "named twice"),
    ([{"name": "ink", "scale": "high"}], "loras.0.scale", "valid number"),
    ([{"name": "ink", "weight": 1}], "loras.0.weight", "unknown field"),
    ([{"name": f"l{i}"} for i in range(9)], "loras", "at most 8"),
])
def test_bad_lora_requests_name_the_field(served, loras, field, message):
    with pytest.raises(ValidationFailed, match=message) as info:
        request(served, loras=loras)
    assert info.value.field == field


def test_catalog_file_loras(tmp_path, sd_folder):
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"models": [{"source": str(sd_folder), **MODEL}],
                                "loras": [{"name": "ink", "source": "x/y", "base": "tiny-sd"}]}))
    catalog = load_catalog(load_settings(models_file=path))
    assert [lora.public() for lora in catalog.loras] == [{"name": "ink", "base": "tiny-sd", "description": ""}]
    path.write_text(json.dumps({"models": [{"source": str(sd_folder), **MODEL}],
                                "loras": [{"name": "ink", "source": "x/y", "base": "flux"}]}))
    with pytest.raises(ValueError, match="base 'flux' is neither a model"):
        load_catalog(load_settings(models_file=path))


def test_get_loras(redis_url, tmp_path, sd_folder):
    from api.app import create_app

    path = tmp_path / "models.json"
    path.write_text(json.dumps({"models": [{"source": str(sd_folder), **MODEL}],
                                "loras": [{"name": "ink", "source": "/secret/path", "base": "sd"}]}))
    settings = load_settings(redis_url=redis_url, storage="local", storage_root=tmp_path / "out",
                             models_dir=tmp_path / "models", auth="disabled", models_file=path)
    body = create_app(settings).test_client().get("/v1/loras").get_json()
    assert body == {"loras": [{"name": "ink", "base": "sd", "description": ""}]}


def test_adapter_lru_within_budget(served, sd_folder):
    from worker.lora_serving import AdapterCache
    from worker.pipelines import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(sd_folder)
    ink, neon, clay = (served.get_lora(n) for n in ("ink", "neon", "clay"))
    cache = AdapterCache(pipe, budget_bytes=1)
    with cache.use([ink]):
        size = cache.loaded["ink"]
        cache.budget_bytes = 2 * size
        with cache.use([neon]):
            pass
        with cache.use([clay]):  # over budget: neon (unpinned, least recent) goes, ink is in use
            assert list(cache.loaded) == ["ink", "clay"] and pipe.get_list_adapters()["unet"] == ["ink", "clay"]
    assert pipe.get_active_adapters() == []  # loaded for routing only: plain calls stay the base model


def test_concurrent_jobs_with_different_adapters(served, sd_folder):
    from worker.job_pipeline import run_params
    from worker.loaded_model import load_model
    from worker.pipelines import DiffusionPipeline

    loaded = load_model("tiny-sd", DiffusionPipeline.from_pretrained(sd_folder), max_rows=32)
    mixes = [[{"name": "ink"}], [], [{"name": "neon", "scale": 0.7}, {"name": "clay", "scale": 0.5}], [{"name": "clay"}]]
    schedulers = ["ddim", "euler", "dpmpp_2m", "euler_a"]  # each job its own sampler, in one batch
    jobs = [request(served, seed=s, loras=loras, scheduler=schedulers[s]) for s, loras in enumerate(mixes)]
    results, barrier = {}, threading.Barrier(len(jobs))

    def run(i):
        barrier.wait()
        results[i] = run_params(loaded, "sd", JobParams.from_stored(jobs[i]), lambda step, total: None,
                                catalog=served)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert loaded.batcher.stats.rows > loaded.batcher.stats.calls * 2  # jobs shared calls (2 rows each)
    alone = DiffusionPipeline.from_pretrained(sd_folder)
    for i, params in enumerate(jobs):
        expected = run_alone(alone, served, params)
        assert np.abs(np.asarray(results[i], int) - np.asarray(expected, int)).max() <= 1
    without = run_alone(alone, served, {**jobs[0], "loras": []})
    assert np.abs(np.asarray(results[0], int) - np.asarray(without, int)).max() > 10  # the adapter did something
    loaded.close()


def run_alone(pipe, catalog, params):
    """The job on a plain pipeline with Diffusers' API: its adapters loaded and set, nothing else."""
    for name in pipe.get_list_adapters().get("unet", []):
        pipe.delete_adapters(name)
    names = [lora["name"] for lora in params.get("loras", [])]
    for name in names:
        pipe.load_lora_weights(catalog.get_lora(name).source, adapter_name=name)
    pipe.set_adapters(names, [lora["scale"] for lora in params.get("loras", [])])
    from worker.job_scheduler import build_scheduler

    pipe.scheduler = build_scheduler(params["scheduler"], pipe.scheduler)
    return pipe(params["prompt"], height=params["height"], width=params["width"], num_inference_steps=params["steps"],
                guidance_scale=params["guidance_scale"], generator=torch.Generator().manual_seed(params["seed"])).images[0]


def test_a_bad_adapter_file_fails_the_job_and_pins_nothing(served, sd_folder, tmp_path):
    from shared.errors import ModelLoadError
    from worker.lora_serving import AdapterCache
    from worker.pipelines import DiffusionPipeline

    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    broken = LoraSpec(name="broken", source=str(tmp_path / "broken.safetensors"), base="sd")
    cache = AdapterCache(DiffusionPipeline.from_pretrained(sd_folder), budget_bytes=2**30)
    with pytest.raises(ModelLoadError, match="LoRA 'broken' could not be loaded") as info:
        with cache.use([served.get_lora("ink"), broken]):
            pass
    assert info.value.code == "model_load_failed"
    assert list(cache.loaded) == ["ink"] and cache._pins["ink"] == 0  # loaded, but free to evict


class MemoryStorage:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(self, key, data, content_type):
        self.objects[key] = data


class OneModel:
    """The runner's pipeline cache, holding one loaded model."""

    def __init__(self, loaded) -> None:
        self.loaded = loaded

    def acquire(self, name):
        return self.loaded

    def release(self, value):
        pass


def test_the_runner_serves_a_lora_job_and_fails_a_broken_one(redis_url, served, sd_folder, tmp_path):
    from shared.jobs.record import Status
    from shared.jobs.store import JobStore
    from worker.loaded_model import load_model
    from worker.pipelines import DiffusionPipeline
    from worker.runner import JobRunner

    (tmp_path / "bad.safetensors").write_bytes(b"\0" * 16)
    catalog = Catalog(list(served), [*served.loras, LoraSpec(name="bad", source=str(tmp_path / "bad.safetensors"),
                                                              base="sd")])
    store = JobStore.from_url(redis_url)
    settings = load_settings(redis_url=redis_url, progress_interval_s=0)
    loaded = load_model("tiny-sd", DiffusionPipeline.from_pretrained(sd_folder), max_rows=8)
    runner = JobRunner(settings, store, MemoryStorage(), catalog, OneModel(loaded), "w1")
    good, bad = (request(catalog, seed=3, loras=[{"name": name, "scale": 0.9}]) for name in ("ink", "bad"))
    store.create("good", "owner", good, "kiln.default")
    store.create("bad", "owner", bad, "kiln.default")
    assert runner.run("good") == "succeeded" and store.get("good").params["loras"] == [{"name": "ink", "scale": 0.9}]
    assert runner.run("bad") == "failed"
    error = store.get("bad").error
    assert error["code"] == "model_load_failed" and "LoRA 'bad'" in error["message"]
    assert store.get("bad").status is Status.FAILED
    loaded.close()
