"""LCM sampling against diffusers' `LCMScheduler`, made from SD 1.5's scheduler config as a pipeline makes it
(`LCMScheduler.from_config(pipe.scheduler.config)`) and driven as `StableDiffusionPipeline` drives it, or, from an
image, as `StableDiffusionImg2ImgPipeline` does (get_timesteps' truncation, set_begin_index, add_noise).

Both sides are fed one fake ε-model, a fixed random linear function of x and t that logs its calls, and run in
float64 (the scheduler's ᾱ table held in float64, as tests/test_sampler.py holds every scheduler's); its c_skip
and c_out stay float32, as diffusers computes them. The trajectory is compared point by point (every call's
input, every step's `denoised`, the end), and the generator's stream by its state after the run.
"""
import pytest
import torch
from diffusers import LCMScheduler, PNDMScheduler

from conftest import F64_BOUND, SD15_SCHEDULER, relative_error, scheduler_in_float64
from minitome.checks import Refusal, check_spacing, check_steps, first_timestep, starts_at_the_top
from minitome.cli.flags import check_steps_flag
from sampler import SPACINGS, call_timesteps, lcm, sample, spacing_of, start_step, unet_calls

COUNTS = [1, 2, 3, 4, 5, 6, 7, 8, 20, 50]
STRENGTHS = [0.25, 0.5, 0.75, 1.0]
SHAPE = (2, 4, 8, 8)


def lcm_scheduler(float64: bool = True) -> LCMScheduler:
    scheduler = LCMScheduler.from_config(PNDMScheduler.from_config(SD15_SCHEDULER).config)
    return scheduler_in_float64(scheduler) if float64 else scheduler


class LinearModel:
    """ε(x, t) = A · x (the 4 channels mixed) + (t / 1000) · B, A and B fixed random; it keeps a log of its calls."""

    def __init__(self):
        g = torch.Generator().manual_seed(7)
        self.a = 0.4 * torch.randn(4, 4, generator=g, dtype=torch.float64)
        self.b = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        self.calls = []

    def __call__(self, x, t):
        self.calls.append((int(t), x.clone()))
        return torch.einsum("oc,bchw->bohw", self.a.to(x.dtype), x) + int(t) / 1000 * self.b.to(x.dtype)


def run_diffusers(steps, noise, generator, init=None, strength=1.0, float64=True):
    """The pipelines' loop: (the end, the model's calls, each step's `denoised`)."""
    scheduler = lcm_scheduler(float64)
    scheduler.set_timesteps(steps)
    timesteps, x = scheduler.timesteps, noise
    if init is not None:  # StableDiffusionImg2ImgPipeline.get_timesteps and prepare_latents
        t_start = max(steps - min(int(steps * strength), steps), 0)
        timesteps = scheduler.timesteps[t_start * scheduler.order:]
        scheduler.set_begin_index(t_start * scheduler.order)
        x = scheduler.add_noise(init, noise, timesteps[:1])
    model, denoised = LinearModel(), []
    for t in timesteps:
        x, d = scheduler.step(model(x, t), t, x, generator=generator, return_dict=False)
        denoised.append(d)
    return x, model.calls, denoised


def compare(steps, strength=None, dtype=torch.float64):
    """Our run beside diffusers' from the same noise (and image), each with its generator seeded alike: the
    largest relative error along the trajectory; the calls' timesteps and the generators' states must agree."""
    inputs = torch.Generator().manual_seed(steps)
    init = None if strength is None else torch.randn(SHAPE, generator=inputs, dtype=dtype)
    theirs, ours = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    noise = torch.randn(SHAPE, generator=theirs, dtype=dtype)
    assert torch.equal(noise, torch.randn(SHAPE, generator=ours, dtype=dtype))
    ref, ref_calls, ref_denoised = run_diffusers(steps, noise, theirs, init, strength or 1.0, dtype == torch.float64)
    start = 0 if strength is None else start_step(steps, strength)
    model, estimates = LinearModel(), []
    out = sample("lcm", model, noise, steps, "leading", ours, lambda i, t, x0: estimates.append((i, t, x0)),
                 start, init)
    assert out.dtype == ref.dtype == dtype
    timesteps = [t for t, _ in model.calls]
    assert timesteps == [t for t, _ in ref_calls] == call_timesteps("lcm", steps, "leading", start)
    assert len(timesteps) == unet_calls("lcm", steps, start) == steps - start
    assert [(i, t) for i, t, _ in estimates] == list(enumerate(timesteps))
    assert torch.equal(theirs.get_state(), ours.get_state())  # the same draws, in the same order
    errors = [relative_error(a, b) for (_, a), (_, b) in zip(model.calls, ref_calls)]
    errors += [relative_error(x0, d) for (_, _, x0), d in zip(estimates, ref_denoised)]
    return max(errors + [relative_error(out, ref)])


def test_the_timesteps_are_lcm_schedulers_at_every_count():
    scheduler = lcm_scheduler(float64=False)
    acp = scheduler.alphas_cumprod.tolist()
    for steps in range(1, 51):
        scheduler.set_timesteps(steps)
        schedule = spacing_of("lcm", steps, "leading")
        assert schedule.timesteps == scheduler.timesteps.tolist(), steps
        assert schedule.alphas == [acp[t] for t in schedule.timesteps] + [scheduler.final_alpha_cumprod.item()]
        assert first_timestep("lcm", steps, "leading") == 999 and starts_at_the_top("lcm", steps, "leading")
        check_steps(steps, "lcm")
    assert spacing_of("lcm", 4, "leading").timesteps == [999, 759, 499, 259]
    assert spacing_of("lcm", 50, "leading").timesteps == list(range(999, 0, -20))


@pytest.mark.parametrize("steps", COUNTS)
def test_matches_lcm_scheduler_in_float64(steps):
    error = compare(steps)
    assert error <= F64_BOUND, error
    print(f"lcm {steps} steps: largest float64 error {error:.1e}")


@pytest.mark.parametrize("strength", STRENGTHS)
def test_from_an_image_matches_the_img2img_pipelines_truncation(strength):
    """The last int(N · strength) steps, noise put on the image at the first of them, the last step the N-step
    schedule's (no noise after it); every count of COUNTS that leaves a step to run."""
    worst = 0.0
    for steps in [s for s in COUNTS if int(s * strength) >= 1]:
        worst = max(worst, compare(steps, strength))
        assert worst <= F64_BOUND, (steps, worst)
    print(f"lcm from an image, strength {strength}: largest float64 error {worst:.1e}")


def test_float32_smoke():
    """In float32 diffusers takes √ᾱ in float32, we in double rounded once: float32 rounding apart (measured at most
    4.5e-7 here, at 50 steps; the bound 4 times that)."""
    assert compare(50, dtype=torch.float32) <= 2e-6
    assert compare(50, 0.5, dtype=torch.float32) <= 2e-6


def boundary_conditions(t: int) -> tuple:
    """c_skip, c_out from the paper (σ_d = 0.5, timesteps scaled by 10), in float32 as diffusers computes them."""
    scaled = torch.tensor(t) * 10.0
    return (0.25 / (scaled ** 2 + 0.25)).item(), (scaled / (scaled ** 2 + 0.25) ** 0.5).item()


def test_one_step_is_the_boundary_condition_and_draws_nothing():
    """One step: denoised = c_out · x̂₀ + c_skip · x at t = 999, returned as it is, with no noise drawn after it."""
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    generator = torch.Generator().manual_seed(5)
    state = generator.get_state()
    model = LinearModel()
    out = sample("lcm", model, x, 1, generator=generator)
    a = PNDMScheduler.from_config(SD15_SCHEDULER).alphas_cumprod[999].item()
    x0 = (x - (1 - a) ** 0.5 * model(x, 999)) / a ** 0.5
    c_skip, c_out = boundary_conditions(999)
    assert relative_error(out, c_out * x0 + c_skip * x) <= F64_BOUND
    assert torch.equal(generator.get_state(), state)
    assert lcm.boundary(0) == (1.0, 0.0)  # the consistency model's boundary: at t = 0 it returns x itself


def test_between_steps_the_noise_is_one_draw_of_the_latents_shape():
    """Two steps (999, then 499): x = √ᾱ_499 · denoised + √(1 − ᾱ_499) · z after the first, z the generator's next
    draw."""
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    seen = []
    sample("lcm", LinearModel(), x, 2, generator=torch.Generator().manual_seed(5),
           callback=lambda i, t, x0: seen.append(x0))
    model = LinearModel()
    out = sample("lcm", model, x, 2, generator=torch.Generator().manual_seed(5))
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a = PNDMScheduler.from_config(SD15_SCHEDULER).alphas_cumprod[499].item()
    assert [t for t, _ in model.calls] == [999, 499]
    assert relative_error(model.calls[1][1], a ** 0.5 * seen[0] + (1 - a) ** 0.5 * z) <= F64_BOUND
    assert torch.equal(out, seen[1])


@pytest.mark.parametrize("change", ["sigma_data", "timestep_scaling", "double_precision_scalings"])
def test_the_comparison_has_teeth(change, monkeypatch):
    """A wrong σ_d or timestep scaling, or c_skip and c_out computed in double instead of diffusers' float32: each
    is far outside the bound."""
    if change == "sigma_data":
        monkeypatch.setattr(lcm, "SIGMA_DATA", 0.6)
    elif change == "timestep_scaling":
        monkeypatch.setattr(lcm, "TIMESTEP_SCALING", 1.0)
    else:
        monkeypatch.setattr(lcm, "boundary", lambda t: (0.25 / ((10 * t) ** 2 + 0.25),
                                                        10 * t / ((10 * t) ** 2 + 0.25) ** 0.5))
    error = compare(50)  # down to t = 19, where c_skip and c_out are furthest from 0 and 1
    print(f"{change}: error {error:.1e}")
    assert error > 100 * F64_BOUND


def test_more_than_50_steps_or_another_spacing_are_refused_at_the_door():
    with pytest.raises(ValueError, match="is smaller than `num_inference_steps`: 51"):
        lcm_scheduler().set_timesteps(51)  # diffusers refuses them too
    for steps in (51, 1000, 1001):
        with pytest.raises(Refusal, match=rf"^lcm takes 1 to 50 steps \(its 50-step original schedule\), got {steps}$"):
            check_steps(steps, "lcm")
    with pytest.raises(Refusal, match="^lcm takes 1 to 50 steps"):
        check_steps(60, "lcm", "leading", start=30)
    for spacing in set(SPACINGS) - {"leading"}:
        with pytest.raises(Refusal, match=rf"^lcm takes its own timesteps: leave the spacing out \(the default, "
                                          rf"leading\), not {spacing}$"):
            check_spacing("lcm", spacing)
        with pytest.raises(Refusal, match="^--spacing: lcm takes its own timesteps"):
            check_steps_flag(4, "--steps", "lcm", spacing)
    with pytest.raises(Refusal, match=r"^--steps: lcm takes 1 to 50 steps .*got 51$"):
        check_steps_flag(51, "--steps", "lcm")
    with pytest.raises(Refusal, match=r"^--hires-steps: lcm takes 1 to 50 steps .*got 51$"):
        check_steps_flag(51, "--hires-steps", "lcm", "leading", 0.5, "--hires-strength")
    assert check_steps_flag(50, "--steps", "lcm") is None and check_steps_flag(8, "--steps", "lcm", "leading", 0.5) == 4


def test_the_pipeline_runs_lcm_and_refuses_at_its_door(tiny_pipeline):
    import weights
    from minitome.pipeline import sample_latents
    sd = weights.load(tiny_pipeline[1])
    common = dict(guidance=1.0, width=32, height=32, sampler="lcm")
    for bad, message in [(dict(steps=51), "^lcm takes 1 to 50 steps"),
                         (dict(steps=4, spacing="trailing"), "^lcm takes its own timesteps")]:
        with pytest.raises(Refusal, match=message):
            sample_latents(sd, "a cat", **common, **bad)
    seen = []
    latents = sample_latents(sd, "a cat", steps=4, callback=lambda i, t, x0: seen.append((i, t, x0)), **common)
    assert [(i, t) for i, t, _ in seen] == [(0, 999), (1, 759), (2, 499), (3, 259)]
    assert torch.equal(seen[-1][2], latents) and seen[0][2].shape == latents.shape == (1, 4, 4, 4)
