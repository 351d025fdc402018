"""The noise schedule of SD 1.5, and which timesteps a sampler visits.

Where this sits: `sampler/plms.py` and `sampler/ddim.py` read ᾱ_t from here; the pipeline never
touches it directly. Mirrors diffusers' `PNDMScheduler` / `DDIMScheduler` with SD 1.5's
scheduler config (scaled_linear betas, 1000 training steps, "leading" spacing, steps_offset 1,
set_alpha_to_one false), computed in float32 as they are.

    β_i = (linspace(√0.00085, √0.012, 1000)_i)²,   ᾱ_t = ∏_{i ≤ t} (1 − β_i)
"""
import torch

from minitome.checks import whole_number

NUM_TRAIN_TIMESTEPS = 1000


def alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """ᾱ_t for t = 0 … 999, float32 (1000,). The samplers read it as Python floats (`.tolist()`): each
    step's coefficients are then computed in double precision from these float32 values and applied to
    the latent in its own dtype, on any device (MPS has no float64 tensors)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


MIN_FIRST_TIMESTEP = 900  # sampling starts from pure noise, so its first step must be near the top (t ≈ 999)


def first_timestep(steps: int) -> int:
    """Where S steps start with "leading" spacing: (1000 // S) · (S − 1) + 1 (981 for 50, 501 for 2)."""
    return (NUM_TRAIN_TIMESTEPS // steps) * (steps - 1) + 1


def usable(steps: int) -> bool:
    return 1 <= steps < NUM_TRAIN_TIMESTEPS and first_timestep(steps) >= MIN_FIRST_TIMESTEP


def check_steps(steps: int):
    """A step count that spaces out well on the schedule, or a ValueError naming the nearest that do.

    With "leading" spacing the first timestep is (1000 // S)(S − 1) + 1: 981 for 50 steps, but 799 for
    400, 600 for 600, 1 for 1 step, and from 1000 steps on the stride is 0 (every step at t = 1, or past
    the end of the table). Those runs would start denoising pure noise as if it were a half-clean
    latent (diffusers' schedulers take them and give a poor image). Counts from 10 up mostly work.
    """
    whole_number(steps, 1, "steps")
    if usable(steps):
        return
    below = next((s for s in range(min(steps, NUM_TRAIN_TIMESTEPS) - 1, 0, -1) if usable(s)), None)
    above = next((s for s in range(steps + 1, NUM_TRAIN_TIMESTEPS) if usable(s)), None)
    nearest = " or ".join(str(s) for s in (below, above) if s is not None)
    if steps >= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"{steps} steps do not fit on the {NUM_TRAIN_TIMESTEPS} timesteps of the schedule; "
                         f"the nearest count that works: {nearest}")
    raise ValueError(f"{steps} steps would start at t = {first_timestep(steps)}, far below t = 999 where sampling "
                     f"from pure noise must start (t >= {MIN_FIRST_TIMESTEP} here); the nearest counts that work: {nearest}")


def timesteps(steps: int, offset: int = 1) -> list:
    """The S timesteps a sampler visits, descending: arange(S) · (1000 // S) + 1 ("leading" spacing)."""
    check_steps(steps)
    stride = NUM_TRAIN_TIMESTEPS // steps
    return [i * stride + offset for i in reversed(range(steps))]


def alpha_prev(acp, t: int, steps: int):
    """ᾱ of the step after t: ᾱ[t − 1000 // S], or ᾱ[0] = 0.99915 past the first (not 1: set_alpha_to_one false)."""
    prev = t - NUM_TRAIN_TIMESTEPS // steps
    return acp[prev] if prev >= 0 else acp[0]


def ddim_step(x: torch.Tensor, eps: torch.Tensor, a_t, a_prev) -> torch.Tensor:
    """One deterministic DDIM step (η = 0) from ᾱ_t to ᾱ_prev.

    x̂₀ = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t        (the clean latent the noise estimate implies)
    x_prev = √ᾱ_prev · x̂₀ + √(1 − ᾱ_prev) · ε   (re-noised to the next, lower noise level)
    """
    x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
    return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
