"""Euler and Euler ancestral (Karras et al. 2022): steps along the noise level σ, one model call per step.

Where this sits: `minitome/pipeline.py` calls `euler_sample(eps_model, x̄, schedule)` or
`euler_ancestral_sample(…, generator=…)`, x̄ from `start_in_x_bar`. Mirrors diffusers' `EulerDiscreteScheduler` and
`EulerAncestralDiscreteScheduler` made from SD 1.5's scheduler config.

The language is chapter 6's: write the latent as x̄ = x / √ᾱ = x₀ + σ · ε. Along that line the noise estimate
is the slope, dx̄/dσ = ε, and the UNet, trained on x, is handed x = x̄ / √(σ² + 1) (because √ᾱ = 1 / √(σ² + 1)).

    Euler:           x̄ ← x̄ + ε · (σ_next − σ)                    (DDIM is this step, taken at integer t)
    Euler ancestral: go down further, to σ_down, then add fresh noise of size σ_up, so that the latent is at
                     σ_next again (σ_down² + σ_up² = σ_next²), with σ_up² = σ_next² (σ² − σ_next²) / σ²:
                     x̄ ← x̄ + ε · (σ_down − σ) + σ_up · z,   z ~ N(0, I) from the image's generator

The last step lands on σ = 0, where x̄ is the clean latent. Where the run starts: the noise x_T ~ N(0, I) is
x̄ = x_T · √(σ_max² + 1) with leading spacing, and x_T · σ_max with the others (diffusers' `init_noise_sigma`,
after k-diffusion, which takes x̄ ≈ σ · ε at the top and neglects x₀; at σ_max = 14.6 the two differ by 0.2%).
"""
import torch


def initial_scale(sigma_max: float, spacing: str) -> float:
    """x̄ = x_T · this: diffusers' `init_noise_sigma` (see the module's docstring)."""
    return (sigma_max ** 2 + 1) ** 0.5 if spacing == "leading" else sigma_max


def model_input(x_bar: torch.Tensor, sigma: float) -> torch.Tensor:
    """x̄ back to the latent x the UNet was trained on: x = x̄ · √ᾱ = x̄ / √(σ² + 1)."""
    return x_bar / (sigma ** 2 + 1) ** 0.5


def start_in_x_bar(noise: torch.Tensor, schedule, init: torch.Tensor = None) -> torch.Tensor:
    """Where Euler starts, x̄: the noise scaled by diffusers' `init_noise_sigma`, or from an image
    x̄ = init + σ · noise (the forward process in σ's variables)."""
    sigma = schedule.sigmas[0]
    return noise * initial_scale(sigma, schedule.spacing) if init is None else init + noise * sigma


def euler_sample(eps_model, x: torch.Tensor, schedule, generator=None, callback=None,
                 ancestral: bool = False) -> torch.Tensor:
    """Denoise x̄ along `schedule` (sampler/spacing.py: its σ's and timesteps); the clean latent.
    callback(i, t, x̂₀) after each step, x̂₀ = x̄ − σ · ε the clean latent the step's ε implies."""
    sigmas = schedule.sigmas
    for i, t in enumerate(schedule.timesteps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        eps = eps_model(model_input(x, sigma), t)
        x0 = x - sigma * eps if callback is not None else None  # computed only for the callback
        if not ancestral:
            x = x + eps * (sigma_next - sigma)
        else:
            sigma_up = (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5
            sigma_down = (sigma_next ** 2 - sigma_up ** 2) ** 0.5
            z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)  # drawn on the CPU, as diffusers
            x = x + eps * (sigma_down - sigma) + z * sigma_up
        if callback is not None:
            callback(i, t, x0)
    return x


def euler_ancestral_sample(eps_model, x: torch.Tensor, schedule, generator=None, callback=None) -> torch.Tensor:
    """Euler ancestral: `euler_sample` with fresh noise at each step, drawn from `generator` (the one that drew
    x, so that a seed means one image)."""
    return euler_sample(eps_model, x, schedule, generator, callback, ancestral=True)
