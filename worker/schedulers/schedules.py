"""Noise schedules, written once: betas, ᾱ, timestep grids, sigmas and their conversions.

Notation (Ho et al. 2020, DDPM; Karras et al. 2022, EDM):
    ᾱ_t = ∏_{s≤t} (1 − β_s)               cumulative signal fraction, t ∈ [0, T)
    x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε      variance-preserving (VP) form
    σ_t = √((1 − ᾱ_t) / ᾱ_t)               variance-exploding (VE / k-diffusion) form: x = x_0 + σ ε
    λ_t = log(α_t / σ_t)                     half log-SNR (DPM-Solver)

All functions are pure: they take numbers or arrays and return new arrays.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------
# β schedules
# ---------------------------------------------------------------------------------------------


def _linear(n: int, beta_start: float, beta_end: float) -> torch.Tensor:
    return torch.linspace(beta_start, beta_end, n, dtype=torch.float32)


def _scaled_linear(n: int, beta_start: float, beta_end: float) -> torch.Tensor:
    # Stable Diffusion's schedule: linear in √β.
    return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2


def _betas_from_alpha_bar(alpha_bar: Callable[[float], float], n: int) -> torch.Tensor:
    """β_i = 1 − ᾱ((i+1)/n) / ᾱ(i/n), capped at 0.999: a discrete schedule from a continuous ᾱ(t)."""
    return torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
                        dtype=torch.float32)


def _squaredcos_cap_v2(n: int, beta_start: float, beta_end: float) -> torch.Tensor:
    # Nichol & Dhariwal 2021, eq. 17: ᾱ(t) = cos²((t + s)/(1 + s) · π/2), s = 0.008.
    return _betas_from_alpha_bar(lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2, n)


def _exp(n: int, beta_start: float, beta_end: float) -> torch.Tensor:
    # ᾱ(t) = e^(−12 t): log-SNR falls linearly in t (Diffusers' "exp", Heun's option).
    return _betas_from_alpha_bar(lambda t: math.exp(-12.0 * t), n)


def _laplace(n: int, beta_start: float, beta_end: float) -> torch.Tensor:
    # Laplace-shaped log-SNR (Hang et al. 2024): λ(t) = −½·sgn(½ − t)·ln(1 − 2|½ − t| + 10⁻⁶),
    # SNR = e^λ, and Diffusers' DDPM takes ᾱ = √(SNR / (1 + SNR)).
    def alpha_bar(t: float) -> float:
        snr = math.exp(-0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * abs(0.5 - t) + 1e-6))
        return math.sqrt(snr / (1 + snr))

    return _betas_from_alpha_bar(alpha_bar, n)


def _sigmoid(n: int, beta_start: float, beta_end: float) -> torch.Tensor:
    return torch.sigmoid(torch.linspace(-6, 6, n)) * (beta_end - beta_start) + beta_start


BETA_SCHEDULES: dict[str, Callable[[int, float, float], torch.Tensor]] = {
    "linear": _linear,
    "scaled_linear": _scaled_linear,
    "squaredcos_cap_v2": _squaredcos_cap_v2,
    "sigmoid": _sigmoid,
    "exp": _exp,
    "laplace": _laplace,
}


def check_choice(kind: str, value: object, allowed: Sequence[str]) -> None:
    """Raise a ValueError naming `kind`, the bad `value` and what is allowed."""
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; allowed: {', '.join(map(repr, allowed))}")


def make_betas(
    num_train_timesteps: int,
    beta_start: float,
    beta_end: float,
    beta_schedule: str,
    trained_betas: Sequence[float] | None = None,
    rescale_betas_zero_snr: bool = False,
) -> torch.Tensor:
    """β_t for t = 0..T−1 (float32), from a named schedule or explicit `trained_betas`."""
    if trained_betas is not None:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
    else:
        check_choice("beta_schedule", beta_schedule, list(BETA_SCHEDULES))
        betas = BETA_SCHEDULES[beta_schedule](num_train_timesteps, beta_start, beta_end)
    return rescale_zero_terminal_snr(betas) if rescale_betas_zero_snr else betas


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale √ᾱ so that ᾱ_{T−1} = 0 while ᾱ_0 is kept (Lin et al. 2023, Algorithm 1)."""
    sqrt_ab = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = ∏ (1 − β_s); shape (T,)."""
    return torch.cumprod(1.0 - betas, dim=0)


# ---------------------------------------------------------------------------------------------
# Timestep grids (Lin et al. 2023, Table 2): descending arrays of training timesteps.
# ---------------------------------------------------------------------------------------------

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


def timestep_grid(
    spacing: str,
    num_train_timesteps: int,
    num_steps: int,
    steps_offset: int = 0,
    *,
    rounded: bool = True,
    drop_last: bool = False,
    last_timestep: int | None = None,
) -> np.ndarray:
    """Descending float64 timesteps for `num_steps` inference steps.

    Args:
        spacing: `linspace` (evenly from T−1 to 0), `leading` (multiples of T // n, plus
            `steps_offset`) or `trailing` (evenly from T−1 down, ending near T/n − 1).
        rounded: round `linspace` to integers (discrete-time schedulers do; sigma schedulers don't).
        drop_last: build n + 1 points and drop the smallest (multistep DPM-Solver / UniPC grids).
        last_timestep: upper end of the grid (defaults to T); DPM-Solver clips it by λ_min.
    """
    check_choice("timestep_spacing", spacing, TIMESTEP_SPACINGS)
    top = num_train_timesteps if last_timestep is None else last_timestep
    points = num_steps + 1 if drop_last else num_steps
    if spacing == "trailing":
        ratio = num_train_timesteps / num_steps
        return np.round(np.arange(top, 0, -ratio)) - 1
    if spacing == "linspace":
        grid = np.linspace(0, top - 1, points)
        grid = grid.round() if rounded else grid
    else:  # leading
        grid = np.arange(0, points) * (top // points) + 0.0
    grid = grid[::-1][:num_steps] if drop_last else grid[::-1]
    return grid + steps_offset if spacing == "leading" else grid.copy()


def check_num_steps(num_steps: int | None, num_train_timesteps: int) -> int:
    """Validate a number of inference steps against the training horizon."""
    if num_steps is None or int(num_steps) < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got {num_steps!r}")
    if num_steps > num_train_timesteps:
        raise ValueError(
            f"num_inference_steps={num_steps} is larger than num_train_timesteps={num_train_timesteps}"
        )
    return int(num_steps)


# ---------------------------------------------------------------------------------------------
# σ (VE) tables and σ ↔ t interpolation
# ---------------------------------------------------------------------------------------------


def train_sigmas(alpha_bar: torch.Tensor) -> np.ndarray:
    """σ_t = √((1 − ᾱ_t)/ᾱ_t) for every training timestep; float32 array of shape (T,)."""
    return (((1 - alpha_bar) / alpha_bar) ** 0.5).numpy()


def sigmas_at(timesteps: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """σ at (possibly fractional) timesteps, linear in t between table entries."""
    return np.interp(timesteps, np.arange(len(sigmas)), sigmas)


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional timestep whose σ matches, interpolating linearly in log σ.

    `log_sigmas` is the increasing table log σ_t, t = 0..T−1; values outside it clip to its ends.
    """
    log_sigma = np.log(np.maximum(np.asarray(sigma, dtype=np.float64), 1e-10))
    count = np.searchsorted(log_sigmas, log_sigma, side="right")  # entries ≤ log σ
    low = np.clip(count - 1, 0, len(log_sigmas) - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = np.clip((lo - log_sigma) / (lo - hi), 0, 1)
    return (1 - w) * low + w * (low + 1)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022, eq. 5: σ_i = (σ_max^{1/ρ} + i/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ."""
    ramp = np.linspace(0, 1, n)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """σ evenly spaced in log σ from σ_max down to σ_min."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def _incomplete_beta_fraction(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """Continued fraction of I_x(a, b) (modified Lentz), converging for x < (a + 1)/(a + b + 2)."""
    tiny = 1e-300
    c = np.ones_like(x)
    d = 1.0 / np.where(np.abs(1 - (a + b) * x / (a + 1)) < tiny, tiny, 1 - (a + b) * x / (a + 1))
    h = d.copy()
    for m in range(1, 300):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        delta = np.ones_like(x)
        for coef in (even, odd):
            d = 1 + coef * d
            d = 1 / np.where(np.abs(d) < tiny, tiny, d)
            c = 1 + coef / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            delta = d * c
            h = h * delta
        if np.all(np.abs(delta - 1) < 1e-15):
            break
    return h


def regularized_incomplete_beta(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """I_x(a, b), the CDF of the Beta(a, b) distribution at x ∈ [0, 1] (float64)."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    inner = np.clip(x, 1e-300, 1 - 1e-16)
    log_front = a * np.log(inner) + b * np.log1p(-inner) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    direct = x < (a + 1) / (a + b + 2)  # else use I_x(a, b) = 1 − I_{1−x}(b, a)
    low = np.exp(log_front) * _incomplete_beta_fraction(np.where(direct, inner, 0.0), a, b) / a
    high = 1 - np.exp(log_front) * _incomplete_beta_fraction(np.where(direct, 0.0, 1 - inner), b, a) / b
    out = np.where(direct, low, high)
    return np.where(x <= 0, 0.0, np.where(x >= 1, 1.0, out))


def beta_quantile(q: np.ndarray, a: float, b: float) -> np.ndarray:
    """Inverse of `regularized_incomplete_beta` in x, by bisection to float64 precision."""
    q = np.asarray(q, dtype=np.float64)
    lo, hi = np.zeros_like(q), np.ones_like(q)
    for _ in range(64):
        mid = (lo + hi) / 2
        below = regularized_incomplete_beta(mid, a, b) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.where(q <= 0, 0.0, np.where(q >= 1, 1.0, (lo + hi) / 2))


def beta_sigmas(sigma_min: float, sigma_max: float, n: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """Lee et al. 2024 ("Beta sampling is all you need"): σ at Beta(α, β) quantiles of a descending ramp.

    σ_i = σ_min + F⁻¹(1 − i/(n−1)) (σ_max − σ_min), F the Beta(α, β) CDF: steps crowd at both ends.
    """
    return sigma_min + beta_quantile(1 - np.linspace(0, 1, n), alpha, beta) * (sigma_max - sigma_min)


SIGMA_SCHEDULES: dict[str, Callable[[float, float, int], np.ndarray]] = {
    "karras": karras_sigmas,
    "exponential": exponential_sigmas,
    "beta": beta_sigmas,
}


def sigma_schedule_name(use_karras: bool, use_exponential: bool, use_beta: bool) -> str | None:
    """Which re-spacing of σ the config asks for (at most one); None keeps the timestep grid."""
    if sum(map(bool, (use_karras, use_exponential, use_beta))) > 1:
        raise ValueError("only one of use_karras_sigmas, use_exponential_sigmas and use_beta_sigmas may be set")
    return "karras" if use_karras else "exponential" if use_exponential else "beta" if use_beta else None


def respace_sigmas(
    name: str, sigmas: np.ndarray, n: int, sigma_min: float | None = None, sigma_max: float | None = None
) -> np.ndarray:
    """Replace descending `sigmas` by the named schedule between the same (or given) ends."""
    lo = sigma_min if sigma_min is not None else float(sigmas[-1])
    hi = sigma_max if sigma_max is not None else float(sigmas[0])
    return SIGMA_SCHEDULES[name](lo, hi, n)


# ---------------------------------------------------------------------------------------------
# Flow-matching σ ∈ [0, 1] (x_σ = (1 − σ) x_0 + σ ε; Lipman et al. 2023, Esser et al. 2024)
# ---------------------------------------------------------------------------------------------


def shift_sigmas(sigmas: np.ndarray | torch.Tensor, shift: float) -> np.ndarray | torch.Tensor:
    """SD3's resolution shift (Esser et al. 2024, eq. 23): σ' = s σ / (1 + (s − 1) σ)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def _time_shift_exponential(mu: float, sigmas: np.ndarray) -> np.ndarray:
    # e^μ / (e^μ + 1/σ − 1): the static shift with s = e^μ (FLUX's dynamic shifting).
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))


def _time_shift_linear(mu: float, sigmas: np.ndarray) -> np.ndarray:
    return mu / (mu + (1 / sigmas - 1))


TIME_SHIFTS: dict[str, Callable[[float, np.ndarray], np.ndarray]] = {
    "exponential": _time_shift_exponential,
    "linear": _time_shift_linear,
}


def stretch_to_terminal(sigmas: np.ndarray, terminal: float) -> np.ndarray:
    """Scale 1 − σ so that the last σ equals `terminal` (LTX-Video's shift_terminal).

    A grid whose last σ is 1 (one step, or a custom grid ending at 1) has nothing to scale: it is
    returned as it is instead of dividing by zero into NaN σ (Diffusers 0.42 did; later fixed).
    """
    one_minus = 1 - sigmas
    if one_minus[-1] == 0:
        return sigmas
    return 1 - one_minus / (one_minus[-1] / (1 - terminal))


def vp_alpha_sigma(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VE σ → VP (α_t, σ_t): α_t = 1/√(σ²+1), σ_t = σ α_t."""
    alpha_t = 1 / (sigma**2 + 1) ** 0.5
    return alpha_t, sigma * alpha_t
