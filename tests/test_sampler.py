"""PLMS and DDIM against diffusers' PNDMScheduler and DDIMScheduler (SD 1.5 scheduler config).

A deterministic fake ε-model records every call, so both sides must make the same calls, at the
same timesteps, on the same points of the trajectory. Both sides run in float64 (the schedulers' ᾱ
table, computed in float32 as ours is, is upcast so that their arithmetic is float64 too), bound
F64_BOUND; one float32 run, bound at its measured level.
"""
import math

import pytest
import torch
from diffusers import DDIMScheduler, PNDMScheduler

from conftest import F64_BOUND, relative_error
from sampler import ddim_sample, plms_sample
from sampler.plms import plms_eps
from sampler.schedule import alphas_cumprod, timesteps, usable

# float32: the largest error measured across CPU kernels (tests/float32_spread.py, 2026-12-06: 1.03e-6 – 1.20e-6
# for both samplers; AVX-512 gave the same 1.20e-6) times a margin of 4
F32_BOUND = 5e-6

# SD 1.5's scheduler_config.json; from_config drops the keys a scheduler does not take, as pipelines do
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                      set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, clip_sample=False)


class FakeModel:
    """ε(x, t) = 0.8 · tanh(x) · cos(t / 97) + 0.1 · sin(3x): smooth, t-dependent, and it keeps a log."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t):
        self.calls.append((int(t), x.clone()))
        return 0.8 * torch.tanh(x) * math.cos(int(t) / 97) + 0.1 * torch.sin(3 * x)


def in_float64(scheduler):
    """The reference scheduler with its ᾱ table (float32 values) held in float64, so it computes in float64."""
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.double()
    return scheduler


def run_diffusers(scheduler, x, steps):
    model = FakeModel()
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x).prev_sample
    return x, model.calls


def compare(ours_fn, scheduler, steps, dtype=torch.float64):
    """(our model calls, the largest relative error along the trajectory and at its end)."""
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(steps), dtype=dtype)
    if dtype == torch.float64:
        scheduler = in_float64(scheduler)
    ref, ref_calls = run_diffusers(scheduler, x, steps)
    model = FakeModel()
    out = ours_fn(model, x, steps)
    assert out.dtype == ref.dtype == dtype
    assert [t for t, _ in model.calls] == [t for t, _ in ref_calls]  # same timesteps, same number of calls
    errors = [relative_error(a, b) for (_, a), (_, b) in zip(model.calls, ref_calls)]  # the trajectory, point by point
    errors.append(relative_error(out, ref))
    return model.calls, max(errors)


COUNTS = [10, 11, 25, 30, 50, 114, 999]


@pytest.mark.parametrize("steps", COUNTS)
def test_plms_matches_pndm_scheduler(steps):
    calls, error = compare(plms_sample, PNDMScheduler.from_config(SD15_SCHEDULER), steps)
    assert len(calls) == steps + 1 and error <= F64_BOUND, error


@pytest.mark.parametrize("steps", COUNTS)
def test_ddim_matches_ddim_scheduler(steps):
    calls, error = compare(ddim_sample, DDIMScheduler.from_config(SD15_SCHEDULER), steps)
    assert len(calls) == steps and error <= F64_BOUND, error


@pytest.mark.parametrize("sampler, scheduler", [(plms_sample, PNDMScheduler), (ddim_sample, DDIMScheduler)])
def test_float32_smoke(sampler, scheduler, float32_bound):
    """The same comparison in float32: the schedulers compute their coefficients in float32, ours in
    double precision rounded to float32 once, so the two drift apart by float32 rounding."""
    float32_bound(compare(sampler, scheduler.from_config(SD15_SCHEDULER), 50, torch.float32)[1], F32_BOUND)


@pytest.mark.parametrize("steps", [1, 2, 5, 9, 112, 400, 600, 1000, 5000])
def test_step_counts_that_start_far_below_the_top_are_refused(steps):
    """With "leading" spacing these start from pure noise at t = 1, 501, 801, 889, 889, 799, 600, or past the
    table's end: the schedulers take them (diffusers' PNDM makes a poor image, or fails at 1000)."""
    with pytest.raises(ValueError, match=f"^{steps} steps .* the nearest count"):
        timesteps(steps)
    for sampler in (plms_sample, ddim_sample):
        with pytest.raises(ValueError, match=f"^{steps} steps"):
            sampler(FakeModel(), torch.zeros(1, 4, 2, 2), steps)


def test_accepted_counts_start_near_the_top():
    accepted = [s for s in range(1, 2000) if usable(s)]
    assert accepted[0] == 10 and accepted[-1] == 999 and 50 in accepted and 100 in accepted
    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER)
    for steps in accepted:  # the first timestep diffusers would visit
        scheduler.set_timesteps(steps)
        assert timesteps(steps)[0] == int(scheduler.timesteps[0]) >= 900


def test_schedule_facts():
    acp = alphas_cumprod()
    reference = PNDMScheduler.from_config(SD15_SCHEDULER).alphas_cumprod
    assert torch.equal(acp, reference)
    assert abs(acp[0].item() - 0.99915) < 1e-7
    assert timesteps(50)[:3] == [981, 961, 941] and timesteps(50)[-1] == 1
    assert timesteps(11) == [i * 90 + 1 for i in reversed(range(11))]


def test_multistep_coefficients_integrate_the_extrapolating_polynomial():
    """Each formula is exact when ε changes along the steps as a polynomial of its order − 1:
    it equals the mean of that polynomial over the next step, ∫₀¹ p(s) ds, with p(0) = ε and
    p(−k) = ε₋k. Checked with ε a polynomial in the step index of degree 1, 2, 3."""
    def history_of(poly, n):  # raw estimates at steps −n … −1, and the current at 0
        return [torch.tensor(float(poly(-k))) for k in range(n, 0, -1)], torch.tensor(float(poly(0)))

    for degree, n in [(1, 1), (2, 2), (3, 3)]:
        coefficients = [0.3, -1.1, 0.7, 0.25][: degree + 1]
        poly = lambda s: sum(c * s ** i for i, c in enumerate(coefficients))  # noqa: E731
        mean_over_next_step = sum(c / (i + 1) for i, c in enumerate(coefficients))  # ∫₀¹ p(s) ds
        history, eps = history_of(poly, n)
        assert abs(plms_eps(eps, history).item() - mean_over_next_step) < 1e-5
