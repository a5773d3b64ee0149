"""Code written against Diffusers' scheduler API runs unchanged on Kiln's classes (oracle: Diffusers)."""

from __future__ import annotations

import json
import pickle
import warnings

import diffusers
import numpy as np
import pytest
import torch

from scheduler_harness import SD_CONFIG, relative_error, sample_loop, stand_in_model
from worker import schedulers as kiln
from worker.schedulers import SCHEDULER_CLASSES, SchedulerOutput

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
NAMES = sorted(SCHEDULER_CLASSES)


def _pair(name: str, **config):
    base = {} if name.startswith("FlowMatch") else SD_CONFIG
    return getattr(kiln, name).from_config({**base, **config}), getattr(diffusers, name).from_config({**base, **config})


def test_step_output_is_dict_like() -> None:
    prev, x0 = torch.ones(2), torch.zeros(2)
    out = SchedulerOutput(prev, x0)
    assert list(out.keys()) == ["prev_sample", "pred_original_sample"] and list(out) == list(out.keys())
    assert out["prev_sample"] is prev and out[0] is prev and out[1] is x0 and out.pred_original_sample is x0
    assert out.to_tuple() == (prev, x0) and list(out.values()) == [prev, x0]
    only = SchedulerOutput(prev)
    assert list(only.keys()) == ["prev_sample"] and only.to_tuple() == (prev,)
    with pytest.raises(KeyError):
        only["pred_original_sample"]
    again = pickle.loads(pickle.dumps(out))
    assert list(again.keys()) == list(out.keys()) and torch.equal(again.prev_sample, prev)


@pytest.mark.parametrize("name", NAMES)
def test_saved_config_has_diffusers_keys(name: str, tmp_path) -> None:
    ours, theirs = _pair(name)
    ours.save_config(tmp_path / "ours")
    theirs.save_config(tmp_path / "theirs")
    saved = json.loads((tmp_path / "ours" / "scheduler_config.json").read_text())
    expected = json.loads((tmp_path / "theirs" / "scheduler_config.json").read_text())
    assert set(saved) - {"_kiln_version"} == set(expected)
    assert {k: v for k, v in saved.items() if k in expected} == expected
    reread = type(theirs).from_pretrained(tmp_path / "ours").config  # Diffusers reads ours back
    assert {k: v for k, v in reread.items() if not k.startswith("_")} == {
        k: v for k, v in theirs.config.items() if not k.startswith("_")}


@pytest.mark.parametrize("name", NAMES)
def test_compatibles_are_classes(name: str) -> None:
    ours, theirs = _pair(name)
    assert all(isinstance(c, type) for c in ours.compatibles) and type(ours) in ours.compatibles
    # Kiln also pairs the two flow-match classes, which Diffusers lists as compatible with nothing.
    assert {c.__name__ for c in theirs.compatibles} & set(SCHEDULER_CLASSES) <= {c.__name__ for c in ours.compatibles}
    for cls in ours.compatibles:
        assert isinstance(cls.from_config(ours.config), cls)


def test_register_to_config_and_config_attributes() -> None:
    s = kiln.DDIMScheduler()
    s.register_to_config(test_attribute=5)
    assert s.config.test_attribute == 5 and s.config.num_train_timesteps == 1000
    with pytest.warns(FutureWarning, match="scheduler.config.num_train_timesteps"):
        assert s.num_train_timesteps == 1000
    with pytest.raises(AttributeError, match="^'DDIMScheduler' object has no attribute 'does_not_exist'$"):
        s.does_not_exist
    assert kiln.DDIMScheduler._deprecated_kwargs == []


def test_get_variance_and_previous_timestep_match_diffusers() -> None:
    for variance_type in ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"):
        ours, theirs = _pair("DDPMScheduler", variance_type=variance_type)
        for t in (0, 1, 487, 999):
            torch.testing.assert_close(ours._get_variance(t), theirs._get_variance(t))
    ours, theirs = _pair("DDPMScheduler", variance_type="learned_range")
    predicted = torch.linspace(-1, 1, 5)
    torch.testing.assert_close(ours._get_variance(500, predicted), theirs._get_variance(500, predicted))
    ddim, ddim_oracle = _pair("DDIMScheduler")
    for t, prev in ((420, 400), (999, 998), (0, 0), (10, -10)):
        torch.testing.assert_close(ddim._get_variance(t, prev), ddim_oracle._get_variance(t, prev))
    for name in ("DDPMScheduler", "LCMScheduler"):
        ours, theirs = _pair(name)
        assert ours.previous_timestep(7) == theirs.previous_timestep(7) == 6
        for s in (ours, theirs):
            s.set_timesteps(timesteps=[100, 87, 50, 1, 0])
        for t in ours.timesteps:
            assert torch.equal(ours.previous_timestep(t), theirs.previous_timestep(t))


def test_unknown_variance_type_samples_like_diffusers(caplog) -> None:
    ours, theirs = _pair("DDPMScheduler", variance_type="other")
    assert "variance_type 'other'" in caplog.text
    assert relative_error(sample_loop(ours, 10), sample_loop(theirs, 10)) < 1e-4


@pytest.mark.parametrize("config", [{}, {"prediction_type": "v_prediction", "set_alpha_to_one": True}])
def test_pndm_prk_and_plms_steps_match_diffusers(config: dict) -> None:
    ours, theirs = _pair("PNDMScheduler", **config)
    results = []
    for s in (ours, theirs):
        s.set_timesteps(10)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        for t in s.prk_timesteps:
            x = s.step_prk(stand_in_model(x, int(t)), int(t), x).prev_sample
        for t in s.plms_timesteps:
            x = s.step_plms(stand_in_model(x, int(t)), int(t), x, return_dict=False)[0]
        results.append(x)
    np.testing.assert_array_equal(ours.plms_timesteps, theirs.plms_timesteps)
    assert relative_error(*results) < 1e-5
    with pytest.raises(ValueError, match="must be >= 4"):
        kiln.PNDMScheduler().set_timesteps(3)
    with pytest.raises(ValueError, match="set_timesteps"):
        kiln.PNDMScheduler().step_plms(torch.zeros(1), 1, torch.zeros(1))


def test_euler_log_linear_keeps_custom_timesteps_on_the_log_sigma_grid() -> None:
    """Regression: custom timesteps ignored interpolation_type='log_linear' (σ₁ was read off the table)."""
    ours, theirs = _pair("EulerDiscreteScheduler", interpolation_type="log_linear")
    timesteps = [999, 850, 700, 500, 300, 100]
    for s in (ours, theirs):
        s.set_timesteps(timesteps=timesteps)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)
    table = kiln.EulerDiscreteScheduler.from_config(SD_CONFIG)
    table.set_timesteps(timesteps=timesteps)
    assert abs(float(ours.sigmas[1]) - float(table.sigmas[1])) > 0.1  # log-spaced, not the table's σ(850)


def test_flow_match_euler_extras_match_diffusers() -> None:
    ours, theirs = _pair("FlowMatchEulerDiscreteScheduler", shift=3.0)
    for s in (ours, theirs):
        s.set_shift(2.0)
        s.set_timesteps(6)
    assert ours.shift == theirs.shift == 2.0
    torch.testing.assert_close(ours.sigmas, theirs.sigmas)
    with pytest.raises(ValueError, match="not an integer index"):
        ours.step(torch.zeros(1), 3, torch.zeros(1))
    with pytest.raises(ValueError, match="same length"):
        ours.set_timesteps(sigmas=[1.0, 0.5], timesteps=[1000.0])
    x = torch.randn(2, 16, 4, generator=torch.Generator().manual_seed(0))  # (B, tokens, C)
    per_token = torch.full((2, 16), float(ours.timesteps[1])) - torch.arange(16.0)
    outs = [s.step(torch.tanh(x), s.timesteps[1], x, per_token_timesteps=per_token).prev_sample for s in (ours, theirs)]
    torch.testing.assert_close(*outs)


@pytest.mark.parametrize("name", ["FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"])
def test_flow_scale_noise_from_a_begin_index(name: str) -> None:
    """Image-to-image: the pipeline starts mid-schedule and noises the image at that σ."""
    ours, theirs = _pair(name, shift=3.0)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    noisy = []
    for s in (ours, theirs):
        s.set_timesteps(8)
        s.set_begin_index(3 * s.order)
        noisy.append(s.scale_noise(x0, s.timesteps[3 * s.order: 3 * s.order + 1], noise))
    torch.testing.assert_close(*noisy)
