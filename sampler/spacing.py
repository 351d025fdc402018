"""Which timesteps a sampler visits: the spacings "leading", "linspace", "trailing" and Karras et al.'s σ's.

Where this sits: the pipeline computes a run's schedule once, with the schedule function of its sampler's row
(sampler/__init__.py): `t_schedule` for PLMS and DDIM, `sigma_schedule` for Euler, `dpm_schedule` for DPM++, and
hands it to the sampler. The values are diffusers' own, to the bit (its schedulers with SD 1.5's config: 1000
training steps, steps_offset 1), so that a seed gives diffusers' image:

- leading:  t = i · (1000 // n) + 1 for i = S − 1 … 0, with n = S; DPM-Solver splits the schedule into S + 1
            intervals instead (n = S + 1, i = S … 1), so 20 steps start at 951 for PLMS, DDIM and Euler, at 941 for DPM.
            A leading schedule starts below t = 999, far below for small or large counts (S = 4 starts at 751).
- linspace: S points evenly from 999 down to 0 (DPM: S + 1 points, the last dropped); fractional for Euler.
- trailing: t = round(1000 − k · 1000 / S) − 1 for k = 0 … S − 1: every count starts at t = 999 (Lin et al. 2024).
- karras:   σ_i = (σ_max^(1/ρ) + i/(S−1) · (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, ρ = 7 (Karras et al. 2022), between the
            schedule's own σ_max = σ(999) = 14.6146 and σ_min = σ(0) = 0.0292; each σ_i is then told to the UNet as
            the fractional t whose log σ it interpolates (Euler), or that t rounded (DPM: high counts repeat some).

σ_t = √((1 − ᾱ_t) / ᾱ_t) is the noise-to-signal ratio of chapter 6; at a fractional t it is interpolated
linearly in the table. The table is float32 as diffusers computes it (`sigma_table`), and the σ's handed to
the samplers are rounded to float32 as diffusers stores them; the samplers compute in double from there.
"""
from dataclasses import dataclass, replace

import numpy as np

from .schedule import NUM_TRAIN_TIMESTEPS, alphas_cumprod

SPACINGS = ("leading", "linspace", "trailing", "karras")
KARRAS_RHO = 7.0


@dataclass(frozen=True)
class Schedule:
    """The steps a sampler takes: the timestep told to the UNet at each (ints, or float32 values for Euler);
    for the samplers that step in ᾱ, the ᾱ of each step and one more, where the last lands; for those that step
    in σ, the σ of each step and one more, σ = 0 where the last lands."""
    timesteps: list
    spacing: str
    alphas: list = None
    sigmas: list = None

    def from_step(self, start: int) -> "Schedule":
        """The steps from `start` on: a run from an image takes only those."""
        return replace(self, timesteps=self.timesteps[start:], alphas=self.alphas and self.alphas[start:],
                       sigmas=self.sigmas and self.sigmas[start:])


def sigma_table() -> np.ndarray:
    """σ_t for t = 0 … 999, float32 as diffusers computes it: √((1 − ᾱ) / ᾱ) in float32 torch arithmetic."""
    acp = alphas_cumprod()
    return (((1 - acp) / acp) ** 0.5).numpy()


def sigma_to_t(sigma: float, log_sigmas: np.ndarray) -> float:
    """The fractional t whose σ this is: linear interpolation of log σ between the table's neighbours
    (clamped to [0, 999]). log σ_t rises with t, so the neighbour below is the last entry ≤ log σ."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    low = int(np.clip(np.searchsorted(log_sigmas, log_sigma, side="right") - 1, 0, len(log_sigmas) - 2))
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return (1 - w) * low + w * high


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """S σ's from σ_max to σ_min, evenly spaced in σ^(1/ρ): dense near σ_min, where the image's detail forms."""
    ramp = np.linspace(0, 1, steps)
    lo, hi = sigma_min ** (1 / KARRAS_RHO), sigma_max ** (1 / KARRAS_RHO)
    return (hi + ramp * (lo - hi)) ** KARRAS_RHO


def discrete_timesteps(steps: int, spacing: str, intervals: int) -> np.ndarray:
    """The S timesteps of a spacing, descending, as float64; `intervals` is S for PLMS, DDIM and Euler, S + 1 for
    DPM (which then drops the last of S + 1 points)."""
    T = NUM_TRAIN_TIMESTEPS
    if spacing == "leading":  # i · stride + 1 for i = intervals − 1 down, S of them
        return np.arange(intervals - 1, intervals - 1 - steps, -1) * (T // intervals) + 1.0
    if spacing == "linspace":
        return np.linspace(0, T - 1, intervals)[::-1][:steps]
    # trailing; numpy's arange can overshoot by one point (1000 / 61 · 61 > 1000): S points only
    return np.arange(T, 0, -T / steps)[:steps].round() - 1


def t_schedule(steps: int, spacing: str) -> Schedule:
    """PLMS and DDIM: integer timesteps, and the ᾱ of each, then ᾱ[0] = 0.99915 where the last step lands (not 1:
    SD 1.5's set_alpha_to_one false)."""
    timesteps = [int(t) for t in discrete_timesteps(steps, spacing, steps).round()]
    acp = alphas_cumprod().tolist()
    return Schedule(timesteps, spacing, alphas=[acp[t] for t in timesteps] + [acp[0]])


def sigma_schedule(steps: int, spacing: str, dpm: bool = False) -> Schedule:
    """Euler (and, with dpm, DPM-Solver++): the σ of each step and 0 after the last, and the timesteps told to the
    UNet: fractional float32 values for Euler, rounded for DPM."""
    table = sigma_table()
    if spacing == "karras":
        sigmas, log_sigmas = karras_sigmas(steps, table[0].item(), table[-1].item()), np.log(table)
        timesteps = [sigma_to_t(s, log_sigmas) for s in sigmas]
        timesteps = [int(np.round(t)) for t in timesteps] if dpm else [float(np.float32(t)) for t in timesteps]
    else:
        points = discrete_timesteps(steps, spacing, steps + 1 if dpm else steps)
        points = points.round() if dpm or spacing != "linspace" else points.astype(np.float32)
        sigmas = np.interp(points, np.arange(len(table)), table)
        timesteps = [int(t) for t in points] if dpm else [float(np.float32(t)) for t in points]
    return Schedule(timesteps, spacing, sigmas=[float(s) for s in np.float32(sigmas)] + [0.0])


def dpm_schedule(steps: int, spacing: str) -> Schedule:
    """DPM-Solver++: S + 1 intervals, the last point dropped, timesteps rounded (Karras: high counts repeat some)."""
    return sigma_schedule(steps, spacing, dpm=True)
