"""Short names → configured schedulers, matching the Diffusers setups users know."""

from __future__ import annotations

import diffusers
import pytest
import torch

from scheduler_harness import relative_error, sample_loop
from shared.schedulers import SCHEDULERS
from worker import schedulers as kiln
from worker.schedulers import SCHEDULER_CLASSES, build_scheduler, scheduler_class

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

# A Stable Diffusion 1.x scheduler_config.json as published (PNDM, leading spacing, offset 1).
SD15_SCHEDULER = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


@pytest.fixture(scope="module")
def sd15_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd15") / "scheduler"
    diffusers.PNDMScheduler.from_config(SD15_SCHEDULER).save_config(folder)
    return folder


def test_every_class_name_is_registered_and_exported() -> None:
    for choice in SCHEDULERS.values():
        cls = scheduler_class(choice.class_name)
        assert cls.__name__ == choice.class_name
        assert getattr(kiln, choice.class_name) is cls
    assert set(SCHEDULER_CLASSES) <= set(kiln.__all__)


def test_unknown_names_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown scheduler 'nope'.*dpmpp_2m_karras"):
        build_scheduler("nope", SD15_SCHEDULER)
    with pytest.raises(ValueError, match="unknown scheduler class 'FooScheduler'.*EulerDiscreteScheduler"):
        scheduler_class("FooScheduler")


@pytest.mark.parametrize("short_name", list(SCHEDULERS))
def test_short_name_matches_diffusers_swap(short_name: str, sd15_folder) -> None:
    choice = SCHEDULERS[short_name]
    base = kiln.PNDMScheduler.from_pretrained(sd15_folder)
    ours = build_scheduler(short_name, base)
    assert type(ours).__name__ == choice.class_name
    for key, value in choice.overrides.items():
        assert ours.config[key] == value
    oracle_base = diffusers.PNDMScheduler.from_pretrained(sd15_folder)
    theirs = getattr(diffusers, choice.class_name).from_config(oracle_base.config, **dict(choice.overrides))
    assert {k: v for k, v in ours.config.items() if k in theirs.config} == {
        k: v for k, v in theirs.config.items() if k in ours.config and not k.startswith("_")
    }
    steps = 4 if short_name == "lcm" else 8
    x_ours, x_theirs = sample_loop(ours, steps), sample_loop(theirs, steps)
    torch.testing.assert_close(ours.timesteps.double(), theirs.timesteps.double(), rtol=1e-6, atol=1e-4)
    assert relative_error(x_ours, x_theirs) < 1e-4


def test_dpmpp_2m_karras_is_the_known_setup(sd15_folder) -> None:
    s = build_scheduler("dpmpp_2m_karras", kiln.PNDMScheduler.from_pretrained(sd15_folder))
    assert (s.config.algorithm_type, s.config.solver_order, s.config.use_karras_sigmas) == ("dpmsolver++", 2, True)
    s.set_timesteps(20)
    sigmas = s.sigmas.double()
    # Karras ramp (ρ = 7) from σ_max to σ_min of the SD schedule, then 0.
    assert sigmas[-1] == 0 and torch.all(sigmas[1:] < sigmas[:-1])
    assert abs(float(sigmas[0]) - 14.6146) < 1e-3 and abs(float(sigmas[-2]) - 0.0292) < 1e-3


def test_build_gives_fresh_independent_schedulers(sd15_folder) -> None:
    base = kiln.PNDMScheduler.from_pretrained(sd15_folder)
    a, b = build_scheduler("euler", base), build_scheduler("euler", base)
    assert a is not b
    a.set_timesteps(5)
    b.set_timesteps(9)
    assert len(a.timesteps) == 5 and len(b.timesteps) == 9
    same = build_scheduler("pndm", base)  # same class, overrides already in the config: a clone
    assert same is not base and same.config == base.config
    assert build_scheduler("ddim", dict(SD15_SCHEDULER)).config.steps_offset == 1


def test_swaps_carry_keys_the_middle_class_does_not_take() -> None:
    pndm = kiln.PNDMScheduler.from_config(SD15_SCHEDULER)  # PNDM takes no clip_sample...
    assert pndm.config.clip_sample is False
    ddim = kiln.DDIMScheduler.from_config(pndm)  # ...but DDIM gets the model's value, not its default
    assert ddim.config.clip_sample is False and ddim.config.steps_offset == 1
    oracle = diffusers.DDIMScheduler.from_config(diffusers.PNDMScheduler.from_config(SD15_SCHEDULER).config)
    assert oracle.config.clip_sample is False


def test_carried_keys_do_not_change_a_class_that_does_not_take_them() -> None:
    ddpm = kiln.DDPMScheduler.from_config({"thresholding": True, "final_sigmas_type": "sigma_min", "beta_end": 0.012})
    heun = kiln.HeunDiscreteScheduler.from_config(ddpm)
    assert heun.config.thresholding is True  # carried along for later swaps...
    plain = kiln.HeunDiscreteScheduler.from_config({"beta_end": 0.012})
    torch.testing.assert_close(sample_loop(heun, 6), sample_loop(plain, 6), rtol=0, atol=0)  # ...but unused


def test_from_config_of_a_config_applies_the_swap_rule() -> None:
    euler = kiln.EulerDiscreteScheduler.from_config({"beta_schedule": "scaled_linear", "steps_offset": 1})
    ddim = kiln.DDIMScheduler.from_config(euler.config)  # Euler took timestep_spacing as a default...
    assert ddim.config.timestep_spacing == "leading"  # ...so DDIM keeps its own default
    assert ddim.config.beta_schedule == "scaled_linear" and ddim.config.steps_offset == 1
    oracle = diffusers.DDIMScheduler.from_config(
        diffusers.EulerDiscreteScheduler.from_config({"beta_schedule": "scaled_linear", "steps_offset": 1}).config
    )
    assert oracle.config.timestep_spacing == "leading"
    again = kiln.EulerDiscreteScheduler.from_config(euler.config)
    assert again.config == euler.config
