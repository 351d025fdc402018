"""LCM, the latent consistency model's sampler (Luo et al. 2023, arXiv 2310.04378): a few steps, each one a jump
to the clean latent, then fresh noise back to the next, lower noise level.

Where this sits: the row "lcm" of the table (sampler/__init__.py); `minitome/pipeline.py` calls
`lcm_sample(eps_model, x, schedule, generator)`, x from `start_in_x` (sampler/schedule.py). Mirrors diffusers'
`LCMScheduler` made from SD 1.5's scheduler config (original_inference_steps 50, timestep_scaling 10,
set_alpha_to_one false), driven as `StableDiffusionPipeline` and `StableDiffusionImg2ImgPipeline` drive it.
It gives a good image only with LCM weights (an LCM-LoRA, or an LCM-distilled UNet): a consistency model was
trained to map any point of the trajectory to its end in one call; an ordinary UNet was not.

The timesteps: distillation ran on a 50-step schedule, t = 20k − 1 for k = 50 … 1 (999, 979, …, 19), and a run of
N steps takes the entries floor(linspace(0, 50, N, endpoint=False)) of it: 999, 759, 499, 259 for 4 steps. Every
count starts at 999; more than 50 steps do not fit (the row's `max_steps`); spacings other than leading are refused.

One step at timestep t, with ε the model's estimate and ᾱ_t the schedule's (sampler/schedule.py):

    x̂₀ = (x − √(1 − ᾱ_t) · ε) / √ᾱ_t                            (the clean latent ε implies, as DDIM's)
    denoised = c_out · x̂₀ + c_skip · x                            (the consistency boundary condition)
    c_skip = σ_d² / ((10t)² + σ_d²),  c_out = 10t / √((10t)² + σ_d²),  σ_d = 0.5

so the model's output is x itself as t → 0 (c_skip → 1, c_out → 0) and x̂₀ at large t (c_out = 1 − 1.3·10⁻⁹ at 999).
Then, for every step but the last of the N-step schedule, x = √ᾱ_prev · denoised + √(1 − ᾱ_prev) · z, with
ᾱ_prev the next timestep's and z ~ N(0, I) drawn on the CPU from the run's generator, in the latent's dtype, as
diffusers draws it; the last step returns `denoised`. c_skip and c_out are computed in float32, as diffusers
computes them (its timestep is an integer tensor, times 10.0 a float32 one): at t = 259, c_out is 1 − 1.9·10⁻⁸
in double but 1.0 in float32, a difference a float64 run would show.

From an image the schedule is truncated as diffusers' img2img pipeline truncates it (`Schedule.from_step`), and
its last step is still the N-step schedule's. Diffusers' separate LCM img2img pipeline passes the strength into
the 50-step schedule instead (set_timesteps(strength=…)): other timesteps, not what this sampler takes.
"""
import numpy as np
import torch

from .schedule import NUM_TRAIN_TIMESTEPS, alphas_cumprod, clean_estimate
from .spacing import Schedule

ORIGINAL_STEPS = 50     # the schedule the model was distilled on
SIGMA_DATA = 0.5        # σ_d, the data's standard deviation the boundary conditions assume
TIMESTEP_SCALING = 10.0


def lcm_schedule(steps: int, spacing: str) -> Schedule:
    """The N timesteps taken from the 50-step original schedule, the ᾱ of each, then ᾱ[0] after the last."""
    stride = NUM_TRAIN_TIMESTEPS // ORIGINAL_STEPS
    original = np.arange(ORIGINAL_STEPS, 0, -1) * stride - 1  # 999, 979, …, 19
    picked = np.floor(np.linspace(0, ORIGINAL_STEPS, steps, endpoint=False)).astype(np.int64)
    timesteps = [int(t) for t in original[picked]]
    acp = alphas_cumprod().tolist()
    return Schedule(timesteps, spacing, alphas=[acp[t] for t in timesteps] + [acp[0]])


def boundary(t: int) -> tuple:
    """(c_skip, c_out) at timestep t, computed in float32 step by step as diffusers computes them."""
    scaled = np.float32(t * TIMESTEP_SCALING)
    denominator = scaled * scaled + np.float32(SIGMA_DATA ** 2)
    return float(np.float32(SIGMA_DATA ** 2) / denominator), float(scaled / np.sqrt(denominator))


def lcm_sample(eps_model, x: torch.Tensor, schedule, generator=None, callback=None) -> torch.Tensor:
    """Denoise x along `schedule` (its timesteps and ᾱ's); the last step's `denoised`. callback(i, t, denoised)
    after each step. The noise between steps comes from `generator` (the one that drew x)."""
    ts, alphas = schedule.timesteps, schedule.alphas
    for i, t in enumerate(ts):
        x0 = clean_estimate(x, eps_model(x, t), alphas[i])
        c_skip, c_out = boundary(t)
        denoised = c_out * x0 + c_skip * x
        if i < len(ts) - 1:  # the last step of the N-step schedule (a truncated one ends there too) adds none
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)  # on the CPU, as diffusers
            a_prev = alphas[i + 1]
            x = a_prev ** 0.5 * denoised + (1 - a_prev) ** 0.5 * z
        else:
            x = denoised
        if callback is not None:
            callback(i, t, denoised)
    return x
