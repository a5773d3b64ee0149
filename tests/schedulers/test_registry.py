"""Short names → configured schedulers, matching the Diffusers setups users know."""

from __future__ import annotations

import diffusers
import pytest
import torch

from scheduler_harness import relative_error, sample_loop
from shared.schedulers import SCHEDULERS, flow_config_for, scheduler_kind, scheduler_names
from worker import schedulers as kiln
from worker.job_scheduler import build_scheduler
from worker.schedulers import SCHEDULER_CLASSES, scheduler_class

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


@pytest.mark.parametrize("short_name", scheduler_names("diffusion"))
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


# FLUX.1 [dev]'s scheduler_config.json as published (dynamic shifting), and SD3's (static shift 3).
FLUX_SCHEDULER = {
    "_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5,
    "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
    "use_dynamic_shifting": True,
}
SD3_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}


def test_names_are_split_by_model_kind() -> None:
    flow, diffusion = scheduler_names("flow"), scheduler_names("diffusion")
    assert {"flow_euler", "flow_heun", "flow_dpmpp_2m", "flow_unipc"} <= set(flow)
    assert not set(flow) & set(diffusion) and set(flow) | set(diffusion) == set(SCHEDULERS) == set(scheduler_names())
    assert all(SCHEDULERS[name].kind == "flow" for name in flow)
    assert scheduler_kind(FLUX_SCHEDULER) == scheduler_kind(SD3_SCHEDULER) == "flow"
    assert scheduler_kind(SD15_SCHEDULER) == scheduler_kind({**SD15_SCHEDULER, "_class_name": "PNDMScheduler"})
    assert scheduler_kind(SD15_SCHEDULER) == "diffusion"
    with pytest.raises(ValueError, match="allowed: diffusion, flow"):
        scheduler_names("video")


def test_a_name_of_the_other_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="'dpmpp_2m' is for diffusion models.*allowed: flow_euler"):
        build_scheduler("dpmpp_2m", FLUX_SCHEDULER)
    with pytest.raises(ValueError, match="'flow_unipc' is for flow models.*allowed: ddpm"):
        build_scheduler("flow_unipc", kiln.PNDMScheduler.from_config(SD15_SCHEDULER))


def _diffusers_flow_swap(short_name: str, model_config: dict):
    """What a Diffusers user writes to run a flow model with this solver."""
    choice = SCHEDULERS[short_name]
    base = diffusers.FlowMatchEulerDiscreteScheduler.from_config(model_config)
    extra = {} if short_name in ("flow_euler", "flow_heun") else {"flow_shift": base.config.shift}
    return getattr(diffusers, choice.class_name).from_config(base.config, **dict(choice.overrides), **extra)


@pytest.mark.parametrize("model_config", [FLUX_SCHEDULER, SD3_SCHEDULER], ids=["flux", "sd3"])
@pytest.mark.parametrize("short_name", scheduler_names("flow"))
def test_flow_name_samples_the_models_sigma_family(short_name: str, model_config: dict) -> None:
    """Built from a FLUX / SD3 config, every flow name steps on the same shifted σ family as Diffusers."""
    ours = build_scheduler(short_name, kiln.FlowMatchEulerDiscreteScheduler.from_config(model_config))
    theirs = _diffusers_flow_swap(short_name, model_config)
    if type(ours).__name__ not in ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"):
        assert ours.config.use_flow_sigmas and ours.config.flow_shift == model_config["shift"]
        assert ours.config.prediction_type == "flow_prediction"
    dynamic = model_config.get("use_dynamic_shifting") and short_name != "flow_heun"  # Diffusers' Heun takes no μ
    set_kwargs = {"mu": 0.9} if dynamic else {}
    x_ours = sample_loop(ours, 8, set_kwargs=set_kwargs)
    x_theirs = sample_loop(theirs, 8, set_kwargs=set_kwargs)
    torch.testing.assert_close(ours.timesteps.double(), theirs.timesteps.double(), rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(ours.sigmas.double(), theirs.sigmas.double(), rtol=1e-6, atol=1e-6)
    assert relative_error(x_ours, x_theirs) < 1e-4


def test_flow_heun_takes_fluxs_mu_as_the_equivalent_shift() -> None:
    """Kiln extension: e^μ/(e^μ + 1/σ − 1) is the static shift with s = e^μ."""
    heun = build_scheduler("flow_heun", FLUX_SCHEDULER)
    heun.set_timesteps(6, mu=0.9)
    euler = build_scheduler("flow_euler", FLUX_SCHEDULER)
    euler.set_timesteps(6, mu=0.9)
    torch.testing.assert_close(heun.sigmas[::2], euler.sigmas[:-1], rtol=1e-6, atol=1e-7)


def test_flow_configs_rename_shift_both_ways() -> None:
    dpm = flow_config_for("DPMSolverMultistepScheduler", SD3_SCHEDULER)
    assert dpm["flow_shift"] == 3.0 and "shift" not in dpm
    back = flow_config_for("FlowMatchEulerDiscreteScheduler", {**dpm, "use_flow_sigmas": True})
    assert back["shift"] == 3.0 and "flow_shift" not in back
    unipc = build_scheduler("flow_unipc", FLUX_SCHEDULER)
    assert build_scheduler("flow_euler", unipc).config.shift == 3.0
