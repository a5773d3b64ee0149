"""The contract every scheduler keeps (one base suite, parametrized over all classes)."""

from __future__ import annotations

import logging

import pytest
import torch

from scheduler_harness import SD_CONFIG, SHAPE, sample_loop
from worker.schedulers import SCHEDULER_CLASSES, SchedulerOutput

NAMES = sorted(SCHEDULER_CLASSES)
STEPS = 10


def _make(name: str, **overrides):
    cls = SCHEDULER_CLASSES[name]
    config = {} if name.startswith("FlowMatch") else dict(SD_CONFIG)
    return cls.from_config({**config, **overrides})


@pytest.mark.parametrize("name", NAMES)
class TestSchedulerContract:
    def test_timesteps_descend_with_expected_length(self, name: str) -> None:
        s = _make(name)
        s.set_timesteps(STEPS)
        ts = s.timesteps.double()
        assert ts.ndim == 1
        assert len(ts) >= STEPS
        assert torch.all(ts[1:] <= ts[:-1]), ts
        steps_run = 0
        for t in s.timesteps:
            s.step(torch.zeros(SHAPE), t, torch.ones(SHAPE), generator=torch.Generator().manual_seed(0))
            steps_run += 1
        assert steps_run == len(s.timesteps)

    def test_add_noise_is_the_forward_process(self, name: str) -> None:
        s = _make(name)
        s.set_timesteps(STEPS)
        x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
        t = s.timesteps[:1].repeat(SHAPE[0])
        assert torch.equal(s.add_noise(x0, torch.zeros_like(x0), t), s.add_noise(x0, torch.zeros_like(x0), t))
        noisy = s.add_noise(x0, noise, t)
        assert noisy.shape == x0.shape and torch.isfinite(noisy).all()
        # Linear in (x0, noise): noising the sum is the sum of noisings (up to rounding).
        zero = torch.zeros_like(x0)
        parts = s.add_noise(x0, zero, t) + s.add_noise(zero, noise, t)
        torch.testing.assert_close(noisy, parts, rtol=1e-5, atol=1e-5)
        # The first timestep is noisier than the last one.
        last = s.timesteps[-1:].repeat(SHAPE[0])
        assert s.add_noise(zero, noise, t).norm() > s.add_noise(zero, noise, last).norm()

    def test_config_round_trip(self, name: str, tmp_path) -> None:
        s = _make(name, prediction_type="v_prediction") if "prediction_type" in _make(name).config else _make(name)
        s.save_config(tmp_path)
        assert (tmp_path / "scheduler_config.json").is_file()
        loaded = SCHEDULER_CLASSES[name].from_pretrained(tmp_path)
        assert loaded.config == s.config
        sub = tmp_path / "repo" / "scheduler"
        s.save_config(sub)
        assert SCHEDULER_CLASSES[name].from_pretrained(tmp_path / "repo", subfolder="scheduler").config == s.config
        torch.testing.assert_close(sample_loop(loaded, STEPS), sample_loop(s, STEPS))

    def test_swap_between_compatibles(self, name: str, caplog) -> None:
        s = _make(name, steps_offset=1) if "steps_offset" in _make(name).config else _make(name)
        assert SCHEDULER_CLASSES[name] in s.compatibles
        for other in s.compatibles:
            with caplog.at_level(logging.ERROR):
                swapped = other.from_config(s)
            for key in ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "steps_offset"):
                if key in swapped.config and key in s.config:
                    assert swapped.config[key] == s.config[key], (other, key)
            assert torch.isfinite(sample_loop(swapped, STEPS)).all()

    def test_interleaved_jobs_are_independent(self, name: str) -> None:
        alone = sample_loop(_make(name), STEPS, seed=0)
        other = _make(name)
        other.set_timesteps(STEPS)
        x_other = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9)) * other.init_noise_sigma
        ticks = iter(other.timesteps)
        gen = torch.Generator().manual_seed(11)

        def step_other() -> None:
            nonlocal x_other
            t = next(ticks, None)
            if t is not None:
                x_other = other.step(torch.tanh(x_other), t, x_other, generator=gen).prev_sample

        together = sample_loop(_make(name), STEPS, seed=0, interleave=step_other)
        torch.testing.assert_close(together, alone, rtol=0, atol=0)

    def test_clone_is_independent(self, name: str) -> None:
        s = _make(name)
        s.set_timesteps(STEPS)
        first = s.timesteps[0]
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        s.step(torch.tanh(x), first, x * s.init_noise_sigma, generator=torch.Generator().manual_seed(1))
        twin = s.clone()
        assert type(twin) is type(s) and twin.config == s.config
        assert twin.step_index is None
        assert torch.equal(twin.timesteps, s.timesteps)
        torch.testing.assert_close(sample_loop(twin, STEPS), sample_loop(_make(name), STEPS), rtol=0, atol=0)
        assert s.step_index in (None, 1)  # the original kept its own progress until it was reset

    def test_step_output_and_scale_model_input(self, name: str) -> None:
        s = _make(name)
        s.set_timesteps(STEPS)
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * s.init_noise_sigma
        t = s.timesteps[0]
        scaled = s.scale_model_input(x, t)
        assert scaled.shape == x.shape
        out = s.step(torch.tanh(scaled), t, x, generator=torch.Generator().manual_seed(0))
        assert isinstance(out, SchedulerOutput) and out.prev_sample.shape == x.shape
        assert isinstance(s.order, int) and s.order >= 1
        assert len(s) == s.config.num_train_timesteps

    def test_invalid_config_values_are_rejected(self, name: str) -> None:
        config = _make(name).config
        for key in ("beta_schedule", "prediction_type", "timestep_spacing", "algorithm_type", "solver_type"):
            if key in config:
                with pytest.raises(ValueError, match="allowed"):
                    _make(name, **{key: "bogus"}).set_timesteps(STEPS)

    def test_begin_index_starts_mid_schedule(self, name: str) -> None:
        s = _make(name)
        s.set_timesteps(STEPS)
        begin = len(s.timesteps) // 2
        s.set_begin_index(begin)
        assert s.begin_index == begin
        x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
        t = s.timesteps[begin:begin + 1].repeat(SHAPE[0])
        noisy = s.add_noise(x, torch.randn_like(x), t)
        for t in s.timesteps[begin:]:
            noisy = s.step(torch.tanh(s.scale_model_input(noisy, t)), t, noisy).prev_sample
        assert torch.isfinite(noisy).all()


@pytest.mark.parametrize("name", [n for n in NAMES if hasattr(SCHEDULER_CLASSES[n], "get_velocity")])
def test_get_velocity_is_the_v_target(name: str) -> None:
    """v = √ᾱ·ε − √(1−ᾱ)·x₀ (Salimans & Ho 2022) from every scheduler that offers it
    (regression: DPM-Solver and UniPC shadowed the ᾱ method with a table and crashed)."""
    from worker.schedulers import DDPMScheduler

    x0, noise = torch.randn(SHAPE), torch.randn(SHAPE)
    t = torch.full((SHAPE[0],), 500)
    scheduler = _make(name)
    expected = DDPMScheduler.from_config(scheduler.config).get_velocity(x0, noise, t)  # same betas
    assert torch.allclose(scheduler.get_velocity(x0, noise, t), expected)
