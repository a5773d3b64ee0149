"""DPM-Solver updates (Lu et al. 2022, DPM-Solver and DPM-Solver++), written once for all solvers.

Work in half log-SNR λ = log(α/σ) with step h = λ_t − λ_s. Given the model's data (x̂_0, "++"
algorithms) or noise (ε̂) predictions m_0 (newest), m_1, m_2 at earlier points, the update is

    x_t = A x_s + c_0 D_0 + c_1 D_1 + c_2 D_2 (+ n_t z for SDE variants)

with D_k the k-th finite-difference estimates in λ (DPM-Solver++ §4, multistep eqs. 8–9) and
coefficients from the exponential integrator, one table row per algorithm type.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch

Tensor = torch.Tensor


class Point(NamedTuple):
    """A noise level in VP terms: α_t, σ_t and λ_t = log α_t − log σ_t."""

    alpha: Tensor
    sigma: Tensor
    lam: Tensor


def vp_point(sigma_ve: Tensor) -> Point:
    """The VP point of a VE σ (x_VP = x_VE / √(σ²+1))."""
    alpha = 1 / (sigma_ve**2 + 1) ** 0.5
    sigma = sigma_ve * alpha
    return Point(alpha, sigma, torch.log(alpha) - torch.log(sigma))


def flow_point(sigma_flow: Tensor) -> Point:
    """The point of a flow-matching σ ∈ [0, 1] (x = (1 − σ) x_0 + σ ε): α = 1 − σ."""
    alpha = 1 - sigma_flow
    return Point(alpha, sigma_flow, torch.log(alpha) - torch.log(sigma_flow))


class Coefficients(NamedTuple):
    """Functions of (s, t, h) giving A, c_0, c_1 (midpoint form), c_1 (Heun form), c_2, n_t."""

    a: Callable[[Point, Point, Tensor], Tensor]
    c0: Callable[[Point, Point, Tensor], Tensor]
    c1_midpoint: Callable[[Point, Point, Tensor], Tensor]
    c1_heun: Callable[[Point, Point, Tensor], Tensor]
    c2: Callable[[Point, Point, Tensor], Tensor] | None
    noise: Callable[[Point, Point, Tensor], Tensor] | None


def _em1(x: Tensor) -> Tensor:
    return torch.exp(x) - 1.0


ALGORITHMS: dict[str, Coefficients] = {
    # Data prediction, ODE (DPM-Solver++ eqs. 9, 14).
    "dpmsolver++": Coefficients(
        a=lambda s, t, h: t.sigma / s.sigma,
        c0=lambda s, t, h: -t.alpha * _em1(-h),
        c1_midpoint=lambda s, t, h: -0.5 * t.alpha * _em1(-h),
        c1_heun=lambda s, t, h: t.alpha * (_em1(-h) / h + 1.0),
        c2=lambda s, t, h: -t.alpha * ((_em1(-h) + h) / h**2 - 0.5),
        noise=None,
    ),
    # Noise prediction, ODE (DPM-Solver eqs. 3.7–3.8).
    "dpmsolver": Coefficients(
        a=lambda s, t, h: t.alpha / s.alpha,
        c0=lambda s, t, h: -t.sigma * _em1(h),
        c1_midpoint=lambda s, t, h: -0.5 * t.sigma * _em1(h),
        c1_heun=lambda s, t, h: -t.sigma * (_em1(h) / h - 1.0),
        c2=lambda s, t, h: -t.sigma * ((_em1(h) - h) / h**2 - 0.5),
        noise=None,
    ),
    # Data prediction, SDE (DPM-Solver++ appendix; Cheng Lu's SDE-DPM-Solver++(2M)).
    "sde-dpmsolver++": Coefficients(
        a=lambda s, t, h: t.sigma / s.sigma * torch.exp(-h),
        c0=lambda s, t, h: -t.alpha * _em1(-2.0 * h),
        c1_midpoint=lambda s, t, h: -0.5 * t.alpha * _em1(-2.0 * h),
        c1_heun=lambda s, t, h: t.alpha * (_em1(-2.0 * h) / (2.0 * h) + 1.0),
        c2=lambda s, t, h: t.alpha * (-(_em1(-2.0 * h) + 2.0 * h) / (2.0 * h) ** 2 - 0.5),
        noise=lambda s, t, h: t.sigma * torch.sqrt(-_em1(-2.0 * h)),
    ),
    # Noise prediction, SDE.
    "sde-dpmsolver": Coefficients(
        a=lambda s, t, h: t.alpha / s.alpha,
        c0=lambda s, t, h: -2.0 * t.sigma * _em1(h),
        c1_midpoint=lambda s, t, h: -t.sigma * _em1(h),
        c1_heun=lambda s, t, h: -2.0 * t.sigma * (_em1(h) / h - 1.0),
        c2=None,
        noise=lambda s, t, h: t.sigma * torch.sqrt(_em1(2.0 * h)),
    ),
}
DATA_PREDICTION = ("dpmsolver++", "sde-dpmsolver++")
SOLVER_TYPES = ("midpoint", "heun")


def multistep_differences(outputs: Sequence[Tensor], points: Sequence[Point], t: Point) -> list[Tensor]:
    """[D_0, D_1, D_2][:order] from newest-first outputs m_k at newest-first points s_k.

    The step starts at s_0; order 2: D_1 = (m_0 − m_1)/r_0; order 3 adds the second
    difference (DPM-Solver++ eq. 8, multistep).
    """
    m = list(outputs)
    if len(m) == 1:
        return [m[0]]
    h = t.lam - points[0].lam
    r0 = (points[0].lam - points[1].lam) / h
    d1_0 = (m[0] - m[1]) / r0
    if len(m) == 2:
        return [m[0], d1_0]
    r1 = (points[1].lam - points[2].lam) / h
    d1_1 = (m[1] - m[2]) / r1
    return [m[0], d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1), (d1_0 - d1_1) / (r0 + r1)]


def singlestep_differences(
    outputs: Sequence[Tensor], points: Sequence[Point], t: Point, solver_type: str
) -> list[Tensor]:
    """Differences for a single-step update that starts at the OLDEST point (DPM-Solver-2/3).

    The newer points are the intermediate evaluations of the same step (Lu et al. 2022, Alg. 1–2).
    The third-order midpoint form keeps only the first difference to the newest point.
    """
    m, anchor = list(outputs), points[-1]
    h = t.lam - anchor.lam
    r = [(p.lam - anchor.lam) / h for p in points[:-1]]  # r_0 (newest), r_1
    if len(m) == 1:
        return [m[0]]
    if len(m) == 2:
        return [m[1], (m[0] - m[1]) / r[0]]
    d1_0, d1_1 = (m[1] - m[2]) / r[1], (m[0] - m[2]) / r[0]
    if solver_type == "midpoint":
        return [m[2], d1_1]
    d1 = (r[0] * d1_0 - r[1] * d1_1) / (r[0] - r[1])
    return [m[2], d1, 2.0 * (d1_1 - d1_0) / (r[0] - r[1])]


def dpm_update(
    algorithm: str,
    x: Tensor,
    d: Sequence[Tensor],
    s: Point,
    t: Point,
    c1_form: str = "midpoint",
    noise: Tensor | None = None,
) -> Tensor:
    """x_t = A x_s + c_0 D_0 (+ c_1 D_1 (+ c_2 D_2)) (+ n_t z), from point s to point t.

    `c1_form` picks the first-difference coefficient: `midpoint` or `heun` (the exact φ_2 form).
    """
    coef = ALGORITHMS[algorithm]
    h = t.lam - s.lam
    x_t = coef.a(s, t, h) * x + coef.c0(s, t, h) * d[0]
    if len(d) >= 2:
        c1 = coef.c1_midpoint if c1_form == "midpoint" else coef.c1_heun
        x_t = x_t + c1(s, t, h) * d[1]
    if len(d) == 3:
        if coef.c2 is None:
            raise ValueError(f"third-order updates are not defined for algorithm_type {algorithm!r}")
        x_t = x_t + coef.c2(s, t, h) * d[2]
    if coef.noise is not None:
        x_t = x_t + coef.noise(s, t, h) * noise
    return x_t
