"""DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095): a second-order multistep solver, one model call per step.

Where this sits: `minitome/pipeline.py` calls `dpmpp_2m_sample(eps_model, x, schedule)`, x from `start_in_dpm`. Mirrors
diffusers' `DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)` made from SD 1.5's config
(its first and last steps first order, `final_sigmas_type="zero"`).

Write α = √ᾱ_t = 1/√(σ² + 1), s = √(1 − ᾱ_t) = σ α and λ = log(α / s) = −log σ (the log signal-to-noise
ratio), and x̂₀ = (x − s · ε) / α for the clean latent the noise estimate implies. The sampling ODE is linear in
x apart from x̂₀, and its linear part can be solved exactly ("variation of constants", the paper's eq. 9): from
λ to λ_next = λ + h,

    x_next = (s_next / s) · x + α_next · ∫ e^(λ' − λ_next) · x̂₀(λ') dλ'   over [λ, λ_next]

so only x̂₀ over the step is approximated, and not the fast-changing factor in front of it:

- first order, x̂₀ held constant over the step: x_next = (s_next / s) · x − α_next · (e^(−h) − 1) · x̂₀
  (this is DDIM, written in λ);
- second order, x̂₀ extrapolated linearly in λ from the previous step's (h_prev = λ − λ_prev, r = h_prev / h):
  the same step with x̂₀ replaced by D = x̂₀ + (x̂₀ − x̂₀_prev) / (2r): the second-order term corrects the
  first-order error, which is proportional to x̂₀'s slope in λ (the "midpoint" form diffusers uses).

The first step has no previous x̂₀, and the last (to σ = 0, where s = 0 and λ = ∞) lands on x̂₀ itself.
"""
import math

import torch


def alpha_s(sigma: float) -> tuple:
    """(α, s) = (1/√(σ² + 1), σ/√(σ² + 1)): the signal's and the noise's scale at noise level σ."""
    alpha = 1 / (sigma ** 2 + 1) ** 0.5
    return alpha, sigma * alpha


def start_in_dpm(noise: torch.Tensor, schedule, init: torch.Tensor = None) -> torch.Tensor:
    """Where DPM++ starts: the noise itself, or from an image x = α · init + s · noise at the first step's σ."""
    if init is None:
        return noise
    alpha, s = alpha_s(schedule.sigmas[0])
    return alpha * init + s * noise


def dpmpp_2m_sample(eps_model, x: torch.Tensor, schedule, generator=None, callback=None) -> torch.Tensor:
    """Denoise x along `schedule` (sampler/spacing.py: its σ's and timesteps); the clean latent. callback(i, t, x̂₀)
    after each step, x̂₀ this step's estimate of the clean latent. A run from an image starts first order too,
    having no previous x̂₀."""
    sigmas, timesteps = schedule.sigmas, schedule.timesteps
    x0_prev, h_prev = None, None
    for i, t in enumerate(timesteps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        alpha, s = alpha_s(sigma)
        x0 = (x - s * eps_model(x, t)) / alpha
        if sigma_next == 0:  # the last step: λ_next = ∞, x_next = x̂₀
            x = x0
        else:
            alpha_next, s_next = alpha_s(sigma_next)
            h = math.log(sigma) - math.log(sigma_next)  # λ_next − λ
            if x0_prev is None or h_prev == 0:  # no slope to extrapolate (linspace's 1000 steps repeat one σ)
                d = x0
            else:
                d = x0 + (x0 - x0_prev) * (h / h_prev / 2)  # 1 / (2r) = h / (2 h_prev)
            x = (s_next / s) * x - (alpha_next * math.expm1(-h)) * d
            h_prev = h
        x0_prev = x0
        if callback is not None:
            callback(i, t, x0)
    return x
