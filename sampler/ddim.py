"""DDIM with η = 0 (Song et al. 2021): the deterministic sampler, one model call per step.

Where this sits: `minitome/pipeline.py` calls `ddim_sample(eps_model, latents, steps)`; `eps_model(x, t)`
returns the (guided) noise estimate. Mirrors diffusers' `DDIMScheduler` with SD 1.5's config.
"""
import torch

from .schedule import alpha_prev, alphas_cumprod, ddim_step, timesteps


def ddim_sample(eps_model, x: torch.Tensor, steps: int, callback=None) -> torch.Tensor:
    """Denoise x from t ≈ 1000 to 0 in `steps` steps. callback(i, t) runs after each step."""
    acp = alphas_cumprod().tolist()
    for i, t in enumerate(timesteps(steps)):
        eps = eps_model(x, t)
        x = ddim_step(x, eps, acp[t], alpha_prev(acp, t, steps))
        if callback is not None:
            callback(i, t)
    return x
