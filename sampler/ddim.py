"""DDIM with η = 0 (Song et al. 2021): the deterministic sampler, one model call per step.

Where this sits: `minitome/pipeline.py` calls `ddim_sample(eps_model, x, schedule)`; `eps_model(x, t)`
returns the (guided) noise estimate. Mirrors diffusers' `DDIMScheduler` with SD 1.5's config. Each step lands
on the ᾱ of the next timestep it visits; diffusers' lands on ᾱ[t − 1000 // S] whatever the spacing, the same
point with leading spacing (and with trailing when S divides 1000), a timestep or so away otherwise.
"""
import torch

from .schedule import clean_estimate, ddim_step


def ddim_sample(eps_model, x: torch.Tensor, schedule, generator=None, callback=None) -> torch.Tensor:
    """Denoise x along `schedule` (sampler/spacing.py: its timesteps and ᾱ's). callback(i, t, x̂₀) runs after each
    step, x̂₀ the clean latent the step's ε implies."""
    for i, t in enumerate(schedule.timesteps):
        a_t, eps = schedule.alphas[i], eps_model(x, t)
        x_prev = ddim_step(x, eps, a_t, schedule.alphas[i + 1])
        if callback is not None:
            callback(i, t, clean_estimate(x, eps, a_t))
        x = x_prev
    return x
