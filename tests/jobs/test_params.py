"""The job's params contract: one typed, versioned object; records of the previous version load;
clients see the same flat layout as before; each family's own fields stay in their own object."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.catalog import Catalog, ModelSpec
from shared.jobs.params import FluxFields, JobParams, LoraChoice, SD3Fields, Task, public_view, request_body
from shared.jobs.schema import parse_request, resolve_request
from shared.settings import load_settings

# Literal records as version 1 (no version tag, family fields flat) stored them.
V1_FLUX = {"model": "flux-dev", "task": "image-to-image", "prompt": "a cat", "negative_prompt": "ugly",
           "width": 512, "height": 512, "steps": 28, "guidance_scale": 3.5, "scheduler": "flow_euler", "seed": 7,
           "num_images": 1, "strength": 0.6, "output_format": "png", "max_sequence_length": 512,
           "true_cfg_scale": 2.0, "webhook_url": "https://example.com/hook", "image_key": "inputs/j1/image.png"}
V1_SD3 = {"model": "sd3", "task": "text-to-image", "prompt": "a dog", "negative_prompt": None, "width": 1024,
          "height": 1024, "steps": 28, "guidance_scale": 7.0, "scheduler": "flow_euler", "seed": 1, "num_images": 2,
          "strength": None, "output_format": "webp", "max_sequence_length": 256}
V1_SD = {"model": "shapes", "task": "inpaint", "prompt": "a red circle", "negative_prompt": None, "width": 64,
         "height": 64, "steps": 20, "guidance_scale": 4.0, "scheduler": "dpmpp_2m", "seed": 3, "num_images": 1,
         "strength": 0.8, "output_format": "jpeg", "preview_every": 5,
         "loras": [{"name": "ink", "scale": 0.5}], "image_key": "inputs/j/image.png", "mask_key": "inputs/j/mask.png"}


def test_version_1_records_load_with_their_family_fields_in_their_own_object():
    flux = JobParams.from_stored(V1_FLUX)
    assert flux.task is Task.IMAGE_TO_IMAGE and flux.task.takes_image and flux.strength == 0.6
    assert flux.family_fields == FluxFields(true_cfg_scale=2.0, max_sequence_length=512)
    assert flux.family_kwargs() == {"true_cfg_scale": 2.0, "max_sequence_length": 512}
    assert (flux.image_key, flux.webhook_url) == ("inputs/j1/image.png", "https://example.com/hook")
    sd3 = JobParams.from_stored(V1_SD3)
    assert sd3.family_fields == SD3Fields(max_sequence_length=256) and sd3.num_images == 2
    sd = JobParams.from_stored(V1_SD)
    assert sd.family_fields is None and sd.family_kwargs() == {}
    assert sd.loras == (LoraChoice(name="ink", scale=0.5),) and sd.adapters() == {"ink": 0.5}
    assert (sd.mask_key, sd.preview_every, sd.output_format) == ("inputs/j/mask.png", 5, "jpeg")


@pytest.mark.parametrize("old", [V1_FLUX, V1_SD3, V1_SD], ids=["flux", "sd3", "sd"])
def test_stored_again_they_are_tagged_and_clients_see_the_same_params(old):
    params = JobParams.from_stored(old)
    stored = params.to_stored()
    assert stored["version"] == 2 and JobParams.from_stored(stored) == params
    assert public_view(stored) == public_view(old) == old
    assert request_body(stored) == {k: v for k, v in old.items() if v is not None and not k.endswith("_key")}


def test_unreadable_records_name_the_field():
    with pytest.raises(ValidationError, match="task"):
        JobParams.from_stored({**V1_SD, "task": "paint-by-numbers"})
    with pytest.raises(ValidationError, match="family_fields.flux.true_cfg_scale"):
        JobParams.from_stored({**V1_SD, "version": 2, "family_fields": {"family": "flux", "max_sequence_length": 77}})
    assert public_view({"model": "m"}) == {"model": "m"}  # the dashboard still shows a malformed record


def test_resolve_request_writes_the_typed_params_with_the_familys_defaults():
    catalog = Catalog([ModelSpec(name="flux-dev", source="/x", family="flux", guidance_distilled=True,
                                 default_width=64, default_height=64, default_max_sequence_length=128),
                       ModelSpec(name="sd", source="/y", family="sd", default_width=64, default_height=64)])
    settings = load_settings(auth="disabled")
    flux = resolve_request(parse_request({"model": "flux-dev", "prompt": "a cat", "true_cfg_scale": 2.0,
                                          "negative_prompt": "ugly", "seed": 5}), catalog, settings)
    assert isinstance(flux, JobParams) and flux.task is Task.TEXT_TO_IMAGE and flux.seed == 5
    assert flux.family_fields == FluxFields(true_cfg_scale=2.0, max_sequence_length=128)
    sd = resolve_request(parse_request({"model": "sd", "prompt": "a cat"}), catalog, settings)
    assert sd.family_fields is None and "family_fields" not in sd.to_stored() and "loras" not in sd.to_stored()
    assert (sd.width, sd.height, sd.scheduler) == (64, 64, "dpmpp_2m")
