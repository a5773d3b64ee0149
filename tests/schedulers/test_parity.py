"""Parity with Diffusers (the test oracle): same config, noise, seed and stand-in model.

Each case runs the full loop with our scheduler and with Diffusers' class of the same name and
compares timesteps and the final sample (relative error < 1e-4).
"""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch

from scheduler_harness import SD_CONFIG, relative_error, sample_loop
from worker import schedulers as kiln

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

ZSNR = {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}

# (class name, config overrides on SD_CONFIG, steps, step kwargs)
CASES = [
    ("DDPMScheduler", {}, 10, {}),
    ("DDPMScheduler", {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, 12, {}),
    ("DDPMScheduler", {"prediction_type": "sample", "variance_type": "fixed_large", "clip_sample": True}, 10, {}),
    ("DDPMScheduler", {"beta_schedule": "squaredcos_cap_v2", "variance_type": "learned_range"}, 10, {}),
    ("DDPMScheduler", {"thresholding": True, "sample_max_value": 1.5, "timestep_spacing": "linspace"}, 10, {}),
    ("DDIMScheduler", {"steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False}, 10, {}),
    ("DDIMScheduler", {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}, 15, {}),
    ("DDIMScheduler", {"timestep_spacing": "linspace", "prediction_type": "sample"}, 10, {"eta": 1.0}),
    ("DDIMScheduler", ZSNR, 10, {"eta": 0.5}),
    ("DDIMScheduler", {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}, 25, {}),
    ("PNDMScheduler", {"skip_prk_steps": True, "steps_offset": 1}, 10, {}),
    ("PNDMScheduler", {}, 10, {}),
    ("PNDMScheduler", {"prediction_type": "v_prediction", "timestep_spacing": "trailing", "set_alpha_to_one": True},
     15, {}),
    ("PNDMScheduler", {"skip_prk_steps": True, "timestep_spacing": "linspace"}, 20, {}),
    ("DPMSolverMultistepScheduler", {}, 10, {}),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, 20, {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, 10, {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True,
                                     "solver_order": 3, "solver_type": "heun"}, 12, {}),
    ("DPMSolverMultistepScheduler", {"solver_order": 3, "lower_order_final": False, "euler_at_final": True,
                                     "timestep_spacing": "leading", "steps_offset": 1}, 16, {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min",
                                     "prediction_type": "v_prediction", "solver_order": 3}, 10, {}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min",
                                     "solver_type": "heun"}, 10, {}),
    ("DPMSolverMultistepScheduler", {**ZSNR, "final_sigmas_type": "zero"}, 10, {}),
    ("DPMSolverMultistepScheduler", {"use_exponential_sigmas": True, "prediction_type": "sample",
                                     "thresholding": True, "sample_max_value": 2.0}, 10, {}),
    ("DPMSolverMultistepScheduler", {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing",
                                     "lambda_min_clipped": -5.1, "solver_order": 3}, 25, {}),
    ("EulerDiscreteScheduler", {}, 10, {}),
    ("DPMSolverSinglestepScheduler", {}, 10, {}),
    ("DPMSolverSinglestepScheduler", {"solver_order": 3, "use_karras_sigmas": True}, 13, {}),
    ("DPMSolverSinglestepScheduler", {"solver_order": 3, "solver_type": "heun", "lower_order_final": True,
                                      "prediction_type": "v_prediction"}, 12, {}),
    ("DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3,
                                      "solver_type": "heun", "final_sigmas_type": "sigma_min"}, 12, {}),
    ("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min",
                                      "solver_order": 3, "lower_order_final": False}, 12, {}),
    ("DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun",
                                      "thresholding": True, "prediction_type": "sample"}, 9, {}),
    ("UniPCMultistepScheduler", {}, 10, {}),
    ("UniPCMultistepScheduler", {"solver_order": 3, "use_karras_sigmas": True, "solver_type": "bh1",
                                 "final_sigmas_type": "sigma_min"}, 15, {}),
    ("UniPCMultistepScheduler", {"predict_x0": False, "prediction_type": "v_prediction",
                                 "timestep_spacing": "trailing", "lower_order_final": False,
                                 "final_sigmas_type": "sigma_min"}, 10, {}),
    ("UniPCMultistepScheduler", {**ZSNR, "final_sigmas_type": "sigma_min", "disable_corrector": [0, 3]}, 10, {}),
    ("UniPCMultistepScheduler", {"use_exponential_sigmas": True, "thresholding": True,
                                 "timestep_spacing": "leading", "steps_offset": 1, "solver_order": 3}, 12, {}),
    ("LCMScheduler", {}, 4, {}),
    ("LCMScheduler", {"prediction_type": "v_prediction", "original_inference_steps": 25, "clip_sample": True}, 6, {}),
    ("LCMScheduler", {"set_alpha_to_one": False, "timestep_scaling": 5.0, "thresholding": True}, 8, {}),
    ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, 10, {}),
    ("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True, "use_karras_sigmas": True}, 10, {}),
    ("FlowMatchEulerDiscreteScheduler", {"shift_terminal": 0.1, "use_exponential_sigmas": True}, 8, {}),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True, "prediction_type": "v_prediction"}, 12, {}),
    ("EulerDiscreteScheduler", {"timestep_spacing": "leading", "steps_offset": 1}, 10, {"s_churn": 1.0}),
    ("EulerDiscreteScheduler", {**ZSNR, "final_sigmas_type": "sigma_min"}, 10, {}),
    ("EulerDiscreteScheduler", {"use_exponential_sigmas": True, "prediction_type": "sample"}, 10, {}),
    ("EulerDiscreteScheduler", {"timestep_type": "continuous", "prediction_type": "v_prediction"}, 10, {}),
    ("EulerAncestralDiscreteScheduler", {}, 10, {}),
    ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing", "prediction_type": "v_prediction"}, 10, {}),
    ("EulerAncestralDiscreteScheduler", ZSNR, 10, {}),
    ("HeunDiscreteScheduler", {}, 10, {}),
    ("HeunDiscreteScheduler", {"use_karras_sigmas": True, "prediction_type": "v_prediction"}, 10, {}),
    ("HeunDiscreteScheduler", {"timestep_spacing": "leading", "steps_offset": 1, "clip_sample": True,
                               "prediction_type": "sample"}, 10, {}),
    ("KDPM2DiscreteScheduler", {}, 10, {}),
    ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True, "prediction_type": "v_prediction"}, 10, {}),
    ("KDPM2DiscreteScheduler", {"timestep_spacing": "trailing"}, 15, {}),
    ("LMSDiscreteScheduler", {}, 10, {}),
    ("LMSDiscreteScheduler", {"use_karras_sigmas": True}, 15, {}),
    ("LMSDiscreteScheduler", {"timestep_spacing": "leading", "prediction_type": "v_prediction"}, 10, {}),
    ("LMSDiscreteScheduler", {"prediction_type": "sample", "use_exponential_sigmas": True}, 12, {}),
]


def _case_id(case: tuple) -> str:
    name, overrides, steps, kwargs = case
    parts = [name.removesuffix("Scheduler"), *(f"{k}={v}" for k, v in {**overrides, **kwargs}.items())]
    return "-".join(parts)


class _LearnedVarianceModel:
    """Doubles the channels, as a model with a learned variance does."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        from scheduler_harness import stand_in_model

        out = stand_in_model(x, t)
        return torch.cat([out, torch.tanh(out)], dim=1)


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_diffusers(case: tuple) -> None:
    name, overrides, steps, kwargs = case
    config = {**({} if name.startswith("FlowMatch") else SD_CONFIG), **overrides}
    ours = getattr(kiln, name).from_config(config)
    theirs = getattr(diffusers, name).from_config(config)
    model = _LearnedVarianceModel() if overrides.get("variance_type", "").startswith("learned") else None
    extra = {"model": model} if model else {}
    x_ours = sample_loop(ours, steps, step_kwargs=kwargs, **extra)
    x_theirs = sample_loop(theirs, steps, step_kwargs=kwargs, **extra)
    np.testing.assert_allclose(ours.timesteps.double().numpy(), theirs.timesteps.double().numpy(), rtol=1e-6)
    assert torch.isfinite(x_ours).all()
    assert relative_error(x_ours, x_theirs) < 1e-4
