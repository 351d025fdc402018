"""Every sampler against diffusers' scheduler of the same name, made from SD 1.5's scheduler config as a
pipeline makes it (`Scheduler.from_config(pipe.scheduler.config, …)`), at every spacing and many step counts.

A deterministic fake ε-model records every call, so both sides must make the same calls, at the same
timesteps, on the same points of the trajectory. Both sides run in float64: the schedulers' tables (ᾱ, σ:
float32 values, as ours) are held in float64 and their steps' float32 upcast is redirected to float64
(`Float64Torch`), bound F64_BOUND; one float32 run each, bound from the spread across CPU kernels.
"""
import math

import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, PNDMScheduler

from conftest import F64_BOUND, KARRAS_LESS, SD15_SCHEDULER, reference_scheduler, relative_error, scheduler_in_float64
from minitome.checks import check_spacing, check_steps, first_timestep
from sampler import SAMPLERS, SPACINGS, call_timesteps, sample, spacing_of, unet_calls
from sampler.plms import plms_eps
from sampler.schedule import alphas_cumprod

# float32: the largest error measured across CPU kernels (tests/float32_spread.py, 2026-12-06: 1.03e-6 – 1.20e-6
# for PLMS and DDIM; AVX-512 gave the same 1.20e-6) times a margin of 4
F32_BOUND = 5e-6
SPACED = [name for name in SAMPLERS if name != "lcm"]  # the samplers that take a spacing (LCM: test_lcm_sampler.py)
RUNS = [(sampler, spacing) for sampler in SPACED for spacing in SPACINGS
        if not (spacing == "karras" and sampler in KARRAS_LESS)]

class FakeModel:
    """ε(x, t) = 0.8 · tanh(x) · cos(t / 97) + 0.1 · sin(3x): smooth, t-dependent, and it keeps a log."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t):
        self.calls.append((float(t), x.clone()))
        return 0.8 * torch.tanh(x) * math.cos(float(t) / 97) + 0.1 * torch.sin(3 * x)


def run_diffusers(scheduler, x, steps, seed=0, float64=True):
    """The denoising loop of diffusers' StableDiffusionPipeline, with the fake model."""
    model = FakeModel()
    if float64:
        scheduler = scheduler_in_float64(scheduler)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    x = x * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        extra = {"generator": generator} if isinstance(scheduler, (EulerAncestralDiscreteScheduler,)) else {}
        x = scheduler.step(model(x_in, t), t, x, **extra).prev_sample
    return x, model.calls


def compare(sampler, spacing, steps, dtype=torch.float64, seed=0):
    """(our model calls, the largest relative error along the trajectory and at its end)."""
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(steps), dtype=dtype)
    ref, ref_calls = run_diffusers(reference_scheduler(sampler, spacing), x, steps, seed, dtype == torch.float64)
    model = FakeModel()
    out = sample(sampler, model, x, steps, spacing, generator=torch.Generator().manual_seed(seed))
    assert out.dtype == ref.dtype == dtype
    assert [t for t, _ in model.calls] == [t for t, _ in ref_calls]  # same timesteps, same number of calls
    errors = [relative_error(a, b) for (_, a), (_, b) in zip(model.calls, ref_calls)]  # the trajectory, point by point
    errors.append(relative_error(out, ref))
    return model.calls, max(errors)


COUNTS = [1, 2, 3, 4, 7, 10, 20, 25, 50, 114, 250, 999, 1000]


def same_in_diffusers(sampler: str, spacing: str, steps: int) -> bool:
    """Where diffusers' schedule is the one minitome defines; the other cases are tested below, one by one:
    - its trailing spacing gives S + 1 timesteps (the last t = −1) for 62 counts (61, 103, …): numpy's arange
      overshoots, minitome keeps S;
    - its DDIM and PNDM step to ᾱ[t − 1000 // S] whatever the spacing: with linspace, or trailing at a count that
      does not divide 1000, that is not where the next call is (PNDM's warm-up even restarts from a wrong t);
      minitome steps to the next timestep it visits;
    - its Euler with Karras σ's at one step spans [σ_min, σ_min] (it takes σ_max from the linspace schedule, which
      for one step is t = 0 alone); minitome's one step starts at σ_max;
    - its DPM-Solver++ with linspace at 1000 steps repeats one σ (h = 0) and divides by it on the next step
      (a latent of NaN); minitome takes a first-order step there.
    """
    if (sampler, spacing, steps) == ("dpm++2m", "linspace", 1000):
        return False
    if spacing == "trailing" and len(np.arange(1000, 0, -1000 / steps)) != steps:
        return False
    if sampler in ("plms", "ddim") and (spacing == "linspace" or (spacing == "trailing" and 1000 % steps)):
        return False
    return not (sampler == "euler" and spacing == "karras" and steps == 1)


def starts_well(sampler, spacing, steps):
    try:
        check_steps(steps, sampler, spacing)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("sampler, spacing", RUNS)
def test_matches_diffusers_scheduler_in_float64(sampler, spacing):
    """Every count of COUNTS that starts near t = 999 with this spacing, on the same calls, within 1e-10."""
    counts = [s for s in COUNTS if starts_well(sampler, spacing, s) and same_in_diffusers(sampler, spacing, s)]
    if spacing in ("trailing", "karras"):
        assert counts == COUNTS or sampler in ("plms", "ddim") or (sampler, spacing) == ("euler", "karras")
    worst = 0.0
    for steps in counts:
        calls, error = compare(sampler, spacing, steps)
        assert len(calls) == unet_calls(sampler, steps) and [t for t, _ in calls] == call_timesteps(sampler, steps, spacing)
        worst = max(worst, error)
        assert error <= F64_BOUND, (steps, error)
    print(f"{sampler} {spacing}: counts {counts}, largest float64 error {worst:.1e}")


@pytest.mark.parametrize("sampler, spacing", [("plms", "leading"), ("ddim", "leading"), ("euler", "leading"),
                                              ("euler-a", "trailing"), ("dpm++2m", "karras")])
def test_float32_smoke(sampler, spacing, float32_bound):
    """The same comparison in float32: the schedulers compute their coefficients in float32, ours in
    double precision rounded to float32 once, so the two drift apart by float32 rounding."""
    float32_bound(compare(sampler, spacing, 50, torch.float32)[1], F32_BOUND)


def diffusers_estimates(sampler, spacing, x, steps):
    """Each step's estimate of the clean latent in diffusers' loop: `pred_original_sample` (DDIM, Euler, Euler a),
    the x̂₀ DPM-Solver++ keeps for its next step (`model_outputs[-1]`). PNDM exposes none: its step is a DDIM step
    with ε′ from x_t to x_n, so x_t = √ᾱ_t x̂₀ + √(1 − ᾱ_t) ε′ and x_n = √ᾱ_n x̂₀ + √(1 − ᾱ_n) ε′ give x̂₀ from the
    two points of the trajectory (its warm-up's extra point left out)."""
    scheduler = scheduler_in_float64(reference_scheduler(sampler, spacing))
    scheduler.set_timesteps(steps)
    generator, model = torch.Generator().manual_seed(0), FakeModel()
    points, estimates = [x * scheduler.init_noise_sigma], []
    for t in scheduler.timesteps:
        extra = {"generator": generator} if sampler == "euler-a" else {}
        out = scheduler.step(model(scheduler.scale_model_input(points[-1], t), t), t, points[-1], **extra)
        points.append(out.prev_sample)
        estimates.append(scheduler.model_outputs[-1].clone() if sampler == "dpm++2m" else
                         getattr(out, "pred_original_sample", None))  # PNDM's: None
    if sampler != "plms":
        return estimates
    ts, points, acp = scheduler.timesteps.tolist(), points[:1] + points[2:], scheduler.alphas_cumprod
    ts = ts[:1] + ts[2:]
    alphas = [acp[t] for t in ts] + [scheduler.final_alpha_cumprod]
    estimates = []
    for i in range(len(ts)):
        a, n = alphas[i], alphas[i + 1]
        estimates.append(((1 - n).sqrt() * points[i] - (1 - a).sqrt() * points[i + 1]) /
                         ((1 - n).sqrt() * a.sqrt() - (1 - a).sqrt() * n.sqrt()))
    return estimates


@pytest.mark.parametrize("sampler, spacing", [("plms", "leading"), ("ddim", "leading"), ("euler", "leading"),
                                              ("euler-a", "trailing"), ("dpm++2m", "karras")])
def test_the_step_callback_gets_the_clean_latent_estimate(sampler, spacing):
    """callback(i, t, x0) after each step, x0 the sampler's x̂₀, against diffusers' own at each step (LCM's
    `denoised`: test_lcm_sampler.py)."""
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    seen = []
    sample(sampler, FakeModel(), x, 10, spacing, torch.Generator().manual_seed(0), lambda *a: seen.append(a))
    assert [(i, t) for i, t, _ in seen] == list(enumerate(spacing_of(sampler, 10, spacing).timesteps))
    errors = [relative_error(x0, ref) for (_, _, x0), ref in zip(seen, diffusers_estimates(sampler, spacing, x, 10))]
    assert len(errors) == 10 and max(errors) <= F64_BOUND, errors
    print(f"{sampler} {spacing}: the callback's x̂₀, largest float64 error {max(errors):.1e}")


def reference_ddim(model, x, timesteps):
    """DDIM (η = 0) from its paper, stepping from each timestep to the next and past the last to ᾱ[0]."""
    acp = PNDMScheduler.from_config(SD15_SCHEDULER).alphas_cumprod.double()
    for i, t in enumerate(timesteps):
        a, a_next = acp[t], acp[timesteps[i + 1]] if i + 1 < len(timesteps) else acp[0]
        eps = model(x, t)
        x = a_next.sqrt() * (x - (1 - a).sqrt() * eps) / a.sqrt() + (1 - a_next).sqrt() * eps
    return x


def reference_plms(model, x, timesteps):
    """PLMS from Liu et al. 2022 (PNDM's pseudo linear multistep with its Heun warm-up): DDIM steps from each
    timestep to the next with the Adams–Bashforth combination of the raw estimates."""
    acp = PNDMScheduler.from_config(SD15_SCHEDULER).alphas_cumprod.double()
    ddim = lambda x, e, t, n: acp[n].sqrt() * (x - (1 - acp[t]).sqrt() * e) / acp[t].sqrt() + (1 - acp[n]).sqrt() * e  # noqa: E731
    weights = {1: [1], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    raw = []
    nexts = list(timesteps[1:]) + [0]
    for i, (t, n) in enumerate(zip(timesteps, nexts)):
        eps = model(x, t)
        raw.insert(0, eps)
        if i == 0 and len(timesteps) > 1:
            eps = (eps + model(ddim(x, eps, t, n), n)) / 2
        else:
            eps = sum(w * e for w, e in zip(weights[min(len(raw), 4)], raw))
        x = ddim(x, eps, t, n)
    return x


@pytest.mark.parametrize("sampler, reference", [("ddim", reference_ddim), ("plms", reference_plms)])
@pytest.mark.parametrize("spacing, steps", [("linspace", 20), ("linspace", 3), ("linspace", 999),
                                            ("trailing", 3), ("trailing", 7), ("trailing", 61), ("trailing", 300)])
def test_ddim_and_plms_step_between_the_timesteps_they_visit(sampler, reference, spacing, steps):
    """Where diffusers' DDIM and PNDM step to ᾱ[t − 1000 // S] instead (see same_in_diffusers), against the
    samplers written from their papers on diffusers' own list of timesteps (its first S)."""
    scheduler = reference_scheduler("ddim", spacing)
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps[:steps]]
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(steps), dtype=torch.float64)
    ours = sample(sampler, FakeModel(), x, steps, spacing)
    assert relative_error(ours, reference(FakeModel(), x, timesteps)) <= F64_BOUND


@pytest.mark.parametrize("steps", [61, 103, 244])
def test_trailing_keeps_its_count_where_diffusers_adds_a_step_at_t_minus_1(steps):
    scheduler = reference_scheduler("euler", "trailing")
    scheduler.set_timesteps(steps)
    assert len(scheduler.timesteps) == steps + 1 and scheduler.timesteps[-1] == -1
    assert spacing_of("euler", steps, "trailing").timesteps == scheduler.timesteps[:steps].tolist()


def test_euler_karras_at_one_step_starts_at_the_top():
    schedule = spacing_of("euler", 1, "karras")
    sigma_max = reference_scheduler("euler", "karras").sigmas[0].item()  # σ(999), before set_timesteps
    assert schedule.timesteps == [999.0] and schedule.sigmas == [sigma_max, 0.0] and round(sigma_max, 4) == 14.6146


@pytest.mark.parametrize("sampler", SPACED)
def test_trailing_takes_every_count_from_1_to_1000_from_the_top(sampler):
    for steps in range(1, 1001):
        check_steps(steps, sampler, "trailing")
        assert first_timestep(sampler, steps, "trailing") == 999
    with pytest.raises(ValueError, match="at most 1000"):
        check_steps(1001, sampler, "trailing")


@pytest.mark.parametrize("sampler", SPACED)
def test_leading_refuses_counts_that_start_low_and_names_trailing(sampler):
    """With "leading" spacing these start from pure noise far below t = 999 (or past 999): the schedulers take them
    and give a poor image. The refusal names the way out."""
    refused = [s for s in range(1, 1001) if not starts_well(sampler, "leading", s)]
    scheduler = reference_scheduler(sampler, "leading")
    for steps in refused[::25] + [4]:
        with pytest.raises(ValueError, match=f"^{steps} steps? with leading spacing would start .*use trailing spacing"):
            check_steps(steps, sampler)
        if steps < 1000:
            scheduler.set_timesteps(steps)
            assert not 900 <= float(scheduler.timesteps[0]) <= 999
    print(f"{sampler}: leading refuses {len(refused)} of the counts 1 to 1000, from {refused[:12]} …")


@pytest.mark.parametrize("sampler, spacing", RUNS)
def test_a_run_from_an_image_takes_every_count_whose_steps_lie_in_the_table(sampler, spacing):
    """From an image the first step's noise is put on the image at whatever timestep it is, so the pure-noise
    rule does not apply: a count is refused only where diffusers' own schedule, from the start step on, leaves
    the table (t > 999: leading at 1000 steps, DPM's at 999)."""
    scheduler = reference_scheduler(sampler, spacing)
    for steps in [*range(1, 1001, 37), 998, 999, 1000]:
        scheduler.set_timesteps(steps)
        ts = [float(t) for t in scheduler.timesteps]
        ts = ts[:1] + ts[2:] if sampler == "plms" and len(ts) > 1 else ts  # PNDM's warm-up repeats its second
        for start in sorted({0, 1, steps // 2, steps - 1} - {steps}):
            past = ts[start] > 999
            try:
                check_steps(steps, sampler, spacing, start)
                assert not past, (steps, start, ts[start])
            except ValueError as error:
                assert past and "past the schedule's last timestep 999" in str(error), (steps, start, error)
    with pytest.raises(ValueError, match="start 5 leaves none of the 5 steps to run"):
        check_steps(5, sampler, spacing, 5)


def test_sampler_and_spacing_that_do_not_run_together_are_refused():
    for sampler in ("plms", "ddim", "euler-a"):
        with pytest.raises(ValueError, match=rf"^karras spacing works with euler and dpm\+\+2m, not {sampler}: "):
            check_spacing(sampler, "karras")
        with pytest.raises(ValueError, match=rf"^karras spacing works with euler and dpm\+\+2m, not {sampler}: "):
            check_steps(20, sampler, "karras")
    with pytest.raises(ValueError, match=r"^sampler must be one of plms, ddim, euler, euler-a, dpm\+\+2m, lcm, "
                                         r"got 'heun'"):
        check_spacing("heun", "leading")
    with pytest.raises(ValueError, match="^spacing must be one of leading, linspace, trailing, karras, got 'even'"):
        check_spacing("euler", "even")


def test_accepted_leading_counts_start_where_diffusers_starts():
    for sampler in SPACED:
        scheduler = reference_scheduler(sampler, "leading")
        for steps in range(1, 1000, 7):
            if starts_well(sampler, "leading", steps):
                scheduler.set_timesteps(steps)
                assert first_timestep(sampler, steps, "leading") == float(scheduler.timesteps[0])
    assert first_timestep("dpm++2m", 20, "leading") == 941 and first_timestep("euler", 20, "leading") == 951


def test_schedule_facts():
    acp = alphas_cumprod()
    reference = PNDMScheduler.from_config(SD15_SCHEDULER).alphas_cumprod
    assert torch.equal(acp, reference)
    assert abs(acp[0].item() - 0.99915) < 1e-7
    assert spacing_of("plms", 50, "leading").timesteps[:3] == [981, 961, 941]
    karras = spacing_of("dpm++2m", 20, "karras").sigmas
    assert round(karras[0], 4) == 14.6146 and round(karras[-2], 4) == 0.0292 and karras[-1] == 0


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
