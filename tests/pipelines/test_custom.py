"""custom_pipeline: local files and folders, Hub repos behind the remote-code switch, and the
community example shipped in examples/community/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.pipelines.hubcache import populate_cache
from tests.pipelines.tiny import max_diff, seeded
from worker.pipelines import DiffusionPipeline, StableDiffusionPipeline
from worker.pipelines.custom import CustomPipelineError, RemoteCodeRefusedError

COMMUNITY = Path(__file__).resolve().parents[2] / "examples" / "community" / "composable_stable_diffusion.py"

ONE_PIPELINE = '''
from worker.pipelines import DDPMPipeline, DiffusionPipeline


class TwoStepDDPM(DDPMPipeline):
    def __call__(self, **kwargs):
        return super().__call__(num_inference_steps=2, **kwargs)
'''
TWO_PIPELINES = ONE_PIPELINE + '''

class Another(DiffusionPipeline):
    pass
'''
NO_PIPELINE = "from worker.pipelines import DDPMPipeline  # imported, not defined here\n"


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_local_file_and_folder(ddpm_saved, tmp_path):
    folder = ddpm_saved[1]
    by_file = DiffusionPipeline.from_pretrained(folder, custom_pipeline=write(tmp_path / "a", "mine.py", ONE_PIPELINE))
    assert type(by_file).__name__ == "TwoStepDDPM"
    assert by_file(output_type="np").images.shape == (1, 8, 8, 3)
    write(tmp_path / "b", "pipeline.py", ONE_PIPELINE)
    by_folder = DiffusionPipeline.from_pretrained(folder, custom_pipeline=str(tmp_path / "b"))
    assert type(by_folder).__name__ == "TwoStepDDPM" and type(by_folder) is not type(by_file)


@pytest.mark.parametrize("text, count", [(TWO_PIPELINES, 2), (NO_PIPELINE, 0)])
def test_module_must_define_exactly_one_pipeline(ddpm_saved, tmp_path, text, count):
    path = write(tmp_path, f"p{count}.py", text)
    with pytest.raises(CustomPipelineError, match=f"exactly one DiffusionPipeline subclass; it defines {count}"):
        DiffusionPipeline.from_pretrained(ddpm_saved[1], custom_pipeline=path)


def test_unresolvable_name_is_a_clear_error(ddpm_saved):
    with pytest.raises(CustomPipelineError, match="not a .py file"):
        DiffusionPipeline.from_pretrained(ddpm_saved[1], custom_pipeline="lpw_stable_diffusion")


def test_hub_pipeline_refused_unless_allowed(hub_cache, ddpm_saved, tmp_path, monkeypatch):
    code_repo = write(tmp_path / "code", "pipeline.py", ONE_PIPELINE).parent
    populate_cache(hub_cache, "someone/fancy-pipeline", code_repo)
    monkeypatch.delenv("KILN_ALLOW_REMOTE_CODE", raising=False)
    with pytest.raises(RemoteCodeRefusedError, match="KILN_ALLOW_REMOTE_CODE=1.*KILN_REMOTE_CODE_ALLOWLIST"):
        DiffusionPipeline.from_pretrained(ddpm_saved[1], custom_pipeline="someone/fancy-pipeline")
    monkeypatch.setenv("KILN_ALLOW_REMOTE_CODE", "1")
    monkeypatch.setenv("KILN_REMOTE_CODE_ALLOWLIST", "other/repo")
    with pytest.raises(RemoteCodeRefusedError, match="someone/fancy-pipeline"):
        DiffusionPipeline.from_pretrained(ddpm_saved[1], custom_pipeline="someone/fancy-pipeline")
    monkeypatch.setenv("KILN_REMOTE_CODE_ALLOWLIST", "other/repo, someone/fancy-pipeline")
    pipe = DiffusionPipeline.from_pretrained(ddpm_saved[1], custom_pipeline="someone/fancy-pipeline")
    assert type(pipe).__name__ == "TwoStepDDPM"


def test_pipeline_class_inside_a_hub_model_is_gated(hub_cache, ddpm_saved, tmp_path, monkeypatch):
    model = shutil.copytree(ddpm_saved[1], tmp_path / "model")
    write(model, "my_pipeline.py", ONE_PIPELINE)
    index = json.loads((model / "model_index.json").read_text())
    index["_class_name"] = ["my_pipeline", "TwoStepDDPM"]
    (model / "model_index.json").write_text(json.dumps(index))
    populate_cache(hub_cache, "someone/model-with-code", model)
    monkeypatch.delenv("KILN_ALLOW_REMOTE_CODE", raising=False)
    with pytest.raises(RemoteCodeRefusedError, match="someone/model-with-code"):
        DiffusionPipeline.from_pretrained("someone/model-with-code")
    monkeypatch.setenv("KILN_ALLOW_REMOTE_CODE", "1")
    monkeypatch.setenv("KILN_REMOTE_CODE_ALLOWLIST", "someone/model-with-code")
    assert type(DiffusionPipeline.from_pretrained("someone/model-with-code")).__name__ == "TwoStepDDPM"
    # a local folder is the operator's own code: no switch needed
    monkeypatch.delenv("KILN_ALLOW_REMOTE_CODE")
    assert type(DiffusionPipeline.from_pretrained(model)).__name__ == "TwoStepDDPM"


def test_community_composable_pipeline(sd_saved, sd_pipe):
    pipe = DiffusionPipeline.from_pretrained(sd_saved[1], custom_pipeline=str(COMMUNITY))
    assert type(pipe).__name__ == "ComposableStableDiffusionPipeline" and isinstance(pipe, StableDiffusionPipeline)
    args = dict(num_inference_steps=2, height=32, width=32, output_type="np")
    # one prompt of weight 1 is plain classifier-free guidance
    single = pipe("a red cat", negative_prompt="ugly", generator=seeded(), **args).images
    plain = sd_pipe("a red cat", negative_prompt="ugly", generator=seeded(), **args).images
    assert max_diff(single, plain) < 1e-5
    both = pipe("a red cat | a blue dog", weights="1 | 0.5", generator=seeded(), **args).images
    again = pipe("a red cat | a blue dog", weights=[1.0, 0.5], generator=seeded(), **args).images
    assert max_diff(both, again) == 0 and max_diff(both, single) > 1e-3
    with pytest.raises(ValueError, match="2 weights for 3 prompts"):
        pipe("a | b | c", weights="1 | 2")
    with pytest.raises(ValueError, match="empty sub-prompt"):
        pipe("a cat | ")


def test_bare_name_finds_a_community_pipeline(sd_saved, tmp_path, monkeypatch):
    by_name = DiffusionPipeline.from_pretrained(sd_saved[1], custom_pipeline="composable_stable_diffusion")
    assert type(by_name).__name__ == "ComposableStableDiffusionPipeline"
    monkeypatch.setenv("KILN_COMMUNITY_PIPELINES", str(tmp_path))
    with pytest.raises(CustomPipelineError, match="not a .py file"):
        DiffusionPipeline.from_pretrained(sd_saved[1], custom_pipeline="composable_stable_diffusion")
