"""UniPC (Zhao et al. 2023): a unified predictor (UniP) and corrector (UniC) for diffusion ODEs.

Both are exponential-integrator updates in λ, like DPM-Solver, whose higher-order weights ρ
solve a small Vandermonde system in the ratios r_k = (λ_{s_k} − λ_{s_0}) / h (Algorithms 1–2,
B(h) variants bh1: B(h) = h, bh2: B(h) = e^h − 1). The corrector reuses the model call of the
next step, so it costs nothing extra.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from worker.runtime.configuration import register_to_config

from .base import KARRAS_FAMILY, Generator
from .dpm_solver import Point
from .schedules import TIME_SHIFTS, check_choice, shift_sigmas, stretch_to_terminal
from .vp_sigma import VPSigmaScheduleMixin

Tensor = torch.Tensor
SOLVER_TYPES = ("bh1", "bh2")
B_FUNCTIONS = {"bh1": lambda hh: hh, "bh2": torch.expm1}
SOLVER_TYPE_ALIASES = {"midpoint": "bh2", "heun": "bh2", "logrho": "bh2"}


def phi_system(rks: Tensor, hh: Tensor, order: int, b_h: Tensor) -> tuple[Tensor, Tensor]:
    """R (order × order) with rows r^(i−1), and b_i = i! φ_{i+1}(hh) / B(h) (UniPC eq. 8)."""
    h_phi_k = torch.expm1(hh) / hh - 1
    factorial, rows, rhs = 1, [], []
    for i in range(1, order + 1):
        rows.append(torch.pow(rks, i - 1))
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.stack(rows), torch.stack(rhs)


def unipc_update(
    x: Tensor,
    history: Sequence[tuple[Tensor, Point]],
    t: Point,
    order: int,
    predict_x0: bool,
    solver_type: str,
    model_t: Tensor | None = None,
) -> Tensor:
    """UniP (model_t None) or UniC (model_t = the model's output at t) step from history[0]'s point.

    `history` is newest first: (m_k, point s_k); only the first `order` (UniP) or `order` − 1
    older entries plus the newest (UniC) are used.
    """
    m0, s0 = history[0]
    h = t.lam - s0.lam
    hh = -h if predict_x0 else h
    b_h = B_FUNCTIONS[solver_type](hh)
    older = history[1:order]
    rks = [(s.lam - s0.lam) / h for _, s in older]
    d1s = [(m - m0) / r for (m, _), r in zip(older, rks)]
    R, b = phi_system(torch.stack([*rks, torch.ones_like(h)]), hh, order, b_h)
    if model_t is None:  # predictor: order-1 differences
        rhos = [] if order == 1 else [0.5] if order == 2 else list(torch.linalg.solve(R[:-1, :-1], b[:-1]))
        res = sum((rho * d for rho, d in zip(rhos, d1s)), torch.zeros_like(x))
    else:  # corrector: also the difference to the new output at t
        rhos = [0.5] if order == 1 else list(torch.linalg.solve(R, b))
        res = sum((rho * d for rho, d in zip(rhos[:-1], d1s)), torch.zeros_like(x)) + rhos[-1] * (model_t - m0)
    # Data prediction keeps σ_t/σ_s of x and scales outputs by α_t; noise prediction the reverse.
    keep_s, keep_t = (s0.sigma, t.sigma) if predict_x0 else (s0.alpha, t.alpha)
    scale = t.alpha if predict_x0 else t.sigma
    x_t = keep_t / keep_s * x - scale * torch.expm1(hh) * m0
    if model_t is None and order == 1:
        return x_t  # no correction term (and B(h) may be infinite at σ = 0 for bh1)
    return x_t - scale * b_h * res


class UniPCMultistepScheduler(VPSigmaScheduleMixin):
    """UniPC-p with UniC correction (order `solver_order`, default 2: UniPC-2 bh2)."""

    _compatibles = KARRAS_FAMILY
    _round_respaced_always = True
    _final_sigma_min_is_grid_end = True

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        predict_x0: bool = True,
        solver_type: str = "bh2",
        lower_order_final: bool = True,
        disable_corrector: Sequence[int] = (),
        solver_p: Any = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        final_sigmas_type: str = "zero",
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        shift_terminal: float | None = None,
    ) -> None:
        if solver_p is not None:
            raise ValueError("solver_p (a separate predictor scheduler) is not supported; leave it None")
        if shift_terminal is not None and not use_flow_sigmas:
            raise ValueError("shift_terminal needs use_flow_sigmas=True")
        check_choice("solver_type", solver_type, list(SOLVER_TYPES) + list(SOLVER_TYPE_ALIASES))
        if int(solver_order) < 1:
            raise ValueError(f"solver_order must be a positive integer, got {solver_order!r}")
        self.solver_type = SOLVER_TYPE_ALIASES.get(solver_type, solver_type)
        self.predict_x0 = predict_x0
        self.disable_corrector = tuple(disable_corrector)
        self._build_sigma_tables()

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
        timesteps: Sequence[int] | None = None,
    ) -> None:
        """Grid for n steps, custom `sigmas` (flow σ with `use_flow_sigmas`, else VE σ) or custom
        integer `timesteps`; `mu` is the dynamic shift that `use_dynamic_shifting` requires."""
        if self.config.use_dynamic_shifting and mu is None:
            raise ValueError("use_dynamic_shifting needs set_timesteps(..., mu=...)")
        self._set_grid(num_inference_steps, device, timesteps, sigmas, mu)

    # UniPC's flow grid: linspace(1, 1/T) top n points, time-shifted, stretched to shift_terminal.
    def _flow_base_sigmas(self, n: int) -> np.ndarray:
        return np.linspace(1, 1 / self.config.num_train_timesteps, n + 1)[:-1]

    def _flow_shifted(self, sigmas: np.ndarray, mu: float | None) -> np.ndarray:
        c = self.config
        if c.use_dynamic_shifting and mu is not None:  # (no μ only for the grid built in __init__)
            sigmas = TIME_SHIFTS[c.time_shift_type](mu, sigmas)
        else:
            sigmas = shift_sigmas(sigmas, c.flow_shift)
        if c.shift_terminal:
            sigmas = stretch_to_terminal(sigmas, c.shift_terminal)
        if abs(sigmas[0] - 1) < 1e-6:  # σ = 1 has λ = −∞
            sigmas = np.concatenate([[sigmas[0] - 1e-6], sigmas[1:]])
        return sigmas

    def _respaced_grid(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        ts, sig = super()._respaced_grid(n)
        if self._flow and self._respacing == "karras":  # VE σ → flow σ = σ/(σ + 1)
            sig = sig / (sig + 1)
            ts = np.trunc(sig * self.config.num_train_timesteps)
        return ts, sig

    def _fresh_state(self) -> dict[str, Any]:
        # history: newest-last (converted output, grid index); last_sample: x before the last UniP step.
        return {**super()._fresh_state(), "history": [], "lower_order_nums": 0, "this_order": 1,
                "last_sample": None}

    def _newest_first(self) -> list[tuple[Tensor, Point]]:
        return [(m, self._point(j)) for m, j in reversed(self.history)]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> Any:
        self._require_timesteps()
        self._init_step_index(timestep)
        i = self._step_index
        den = self._denoise(model_output, sample)
        m = den.x0 if self.predict_x0 else den.eps
        if i > 0 and (i - 1) not in self.disable_corrector and self.last_sample is not None:
            sample = unipc_update(self.last_sample, self._newest_first(), self._point(i), self.this_order,
                                  self.predict_x0, self.solver_type, model_t=m)
        self.history = [*self.history, (m, i)][-self.config.solver_order:]
        order = self.config.solver_order
        if self.config.lower_order_final:
            order = min(order, len(self.timesteps) - i)
        self.this_order = min(order, self.lower_order_nums + 1)
        self.last_sample = sample
        target = self._point(i + 1)
        if not self.predict_x0 and float(target.sigma) == 0:
            # The ε-form update divides by σ_t; Diffusers accepts this config and returns NaN here.
            raise ValueError("predict_x0=False cannot step to σ = 0: set final_sigmas_type='sigma_min' "
                             "(or predict_x0=True)")
        prev = unipc_update(sample, self._newest_first(), target, self.this_order,
                            self.predict_x0, self.solver_type)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.config.solver_order)
        self._step_index += 1
        return self._output(return_dict, prev.to(sample.dtype))
