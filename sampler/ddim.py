"""DDIM with η = 0 (Song et al. 2021): the deterministic sampler, one model call per step.

Where this sits: `minitome/pipeline.py` calls `ddim_sample(eps_model, latents, steps, spacing)`; `eps_model(x, t)`
returns the (guided) noise estimate. Mirrors diffusers' `DDIMScheduler` with SD 1.5's config. Each step lands
on the ᾱ of the next timestep it visits; diffusers' lands on ᾱ[t − 1000 // S] whatever the spacing, the same
point with leading spacing (and with trailing when S divides 1000), a timestep or so away otherwise.
"""
import torch

from .schedule import alpha_next, alphas_cumprod, ddim_step, start_from
from .spacing import check_run, spacing_of


def ddim_sample(eps_model, x: torch.Tensor, steps: int, spacing: str = "leading", generator=None,
                callback=None, start: int = 0, init: torch.Tensor = None) -> torch.Tensor:
    """Denoise x from t ≈ 1000 to 0 in `steps` steps. callback(i, t) runs after each step.
    From an image (img2img): the run starts at step `start`, on x = the forward process of the clean latent
    `init` with x as its noise (see `start_from`)."""
    check_run(steps, "ddim", spacing, start, init)
    acp = alphas_cumprod().tolist()
    ts = spacing_of("ddim", steps, spacing).timesteps[start:]
    if init is not None:
        x = start_from(init, x, acp[ts[0]])
    for i, t in enumerate(ts):
        x = ddim_step(x, eps_model(x, t), acp[t], alpha_next(acp, ts, i))
        if callback is not None:
            callback(i, t)
    return x
