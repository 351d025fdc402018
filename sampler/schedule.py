"""The noise schedule of SD 1.5, and which timesteps a sampler visits.

Where this sits: `sampler/spacing.py` reads ᾱ_t from here for the schedules it makes; PLMS and DDIM take their
steps with `ddim_step`, and start from an image with `start_in_x`. Mirrors diffusers' schedulers
with SD 1.5's scheduler config (scaled_linear betas, 1000 training steps, set_alpha_to_one false), computed
in float32 as they are.

    β_i = (linspace(√0.00085, √0.012, 1000)_i)²,   ᾱ_t = ∏_{i ≤ t} (1 − β_i)
"""
import torch

NUM_TRAIN_TIMESTEPS = 1000


def alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """ᾱ_t for t = 0 … 999, float32 (1000,). The samplers read it as Python floats (`.tolist()`): each
    step's coefficients are then computed in double precision from these float32 values and applied to
    the latent in its own dtype, on any device (MPS has no float64 tensors)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def start_in_x(noise: torch.Tensor, schedule, init: torch.Tensor = None) -> torch.Tensor:
    """Where PLMS and DDIM start: the noise itself, or from an image the forward process at the first step's ᾱ_t,
    x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε (x₀ = init, ε = noise)."""
    if init is None:
        return noise
    a_t = schedule.alphas[0]
    return a_t ** 0.5 * init + (1 - a_t) ** 0.5 * noise


def clean_estimate(x: torch.Tensor, eps: torch.Tensor, a_t) -> torch.Tensor:
    """x̂₀ = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t: the clean latent the noise estimate implies (what the step callback
    is handed, and where a DDIM or LCM step goes through)."""
    return (x - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5


def ddim_step(x: torch.Tensor, eps: torch.Tensor, a_t, a_prev) -> torch.Tensor:
    """One deterministic DDIM step (η = 0) from ᾱ_t to ᾱ_prev.

    x̂₀ = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t        (the clean latent the noise estimate implies)
    x_prev = √ᾱ_prev · x̂₀ + √(1 − ᾱ_prev) · ε   (re-noised to the next, lower noise level)
    """
    x0 = clean_estimate(x, eps, a_t)
    return a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
