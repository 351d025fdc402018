"""PLMS, the SD 1.5 default sampler (pseudo linear multistep, Liu et al. 2022, "PNDM").

Where this sits: `minitome/pipeline.py` calls `plms_sample(eps_model, x, schedule)`. Mirrors
CompVis `ldm/models/diffusion/plms.py`, and diffusers' `PNDMScheduler(skip_prk_steps=True)`.

Each step is a DDIM step (`schedule.ddim_step`) taken with a better ε′: a weighted sum of the
current and the last few noise estimates, the Adams–Bashforth formulas of orders 2, 3 and 4:

    first step:  ε′ = (ε_t + ε_next) / 2, where ε_next is a second model call at the next timestep,
                 on the point a plain DDIM step with ε_t reaches (Heun's method)
    second:      ε′ = (3ε − ε₋₁) / 2
    third:       ε′ = (23ε − 16ε₋₁ + 5ε₋₂) / 12
    later:       ε′ = (55ε − 59ε₋₁ + 37ε₋₂ − 9ε₋₃) / 24

where ε₋k is the raw estimate of k steps ago (only raw estimates are kept, at most three).
The coefficients are the integrals of the Lagrange polynomials through the past estimates,
e.g. order 2: extrapolating linearly from ε₋₁ to ε over the next interval gives ε + (ε − ε₋₁)/2.
S steps take S + 1 model calls; one step is a plain DDIM step, one call (there is no next timestep to warm up at).
Like DDIM (sampler/ddim.py), each step lands on the ᾱ of the next timestep the sampler visits.
"""
import torch

from .schedule import clean_estimate, ddim_step


def plms_eps(eps: torch.Tensor, history: list) -> torch.Tensor:
    """ε′ from the current estimate and the raw estimates of the last steps (newest last), for steps ≥ 2."""
    if len(history) == 1:
        return (3 * eps - history[-1]) / 2
    if len(history) == 2:
        return (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
    return (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24


def plms_sample(eps_model, x: torch.Tensor, schedule, generator=None, callback=None) -> torch.Tensor:
    """Denoise x along `schedule` (sampler/spacing.py: its timesteps and ᾱ's). callback(i, t, x̂₀) runs after each
    step, x̂₀ the clean latent of its DDIM step with ε′. A run from an image starts partway, with its own warm-up
    there (as if the run had begun at that timestep)."""
    ts, alphas = schedule.timesteps, schedule.alphas
    history = []  # raw ε of the previous steps
    for i, t in enumerate(ts):
        a_t, a_prev = alphas[i], alphas[i + 1]
        eps = eps_model(x, t)
        if history:
            eps_prime = plms_eps(eps, history)
        elif len(ts) == 1:  # a single step: nowhere to warm up, a DDIM step
            eps_prime = eps
        else:  # first step: Heun, with a second call at the next timestep
            eps_next = eps_model(ddim_step(x, eps, a_t, a_prev), ts[1])
            eps_prime = (eps + eps_next) / 2
        x_prev = ddim_step(x, eps_prime, a_t, a_prev)
        history = (history + [eps])[-3:]
        if callback is not None:
            callback(i, t, clean_estimate(x, eps_prime, a_t))
        x = x_prev
    return x
