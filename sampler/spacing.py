"""Which timesteps a sampler visits: the spacings "leading", "linspace", "trailing" and Karras et al.'s σ's.

Where this sits: every sampler in `sampler/` asks `spacing_of(sampler, steps, spacing)` for its schedule, and the
command line asks `check_steps` before any model work. The values are diffusers' own, to the bit (its schedulers
with SD 1.5's config: 1000 training steps, steps_offset 1), so that a seed gives diffusers' image:

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
from dataclasses import dataclass

import numpy as np

from minitome.checks import whole_number
from .schedule import NUM_TRAIN_TIMESTEPS, alphas_cumprod

SPACINGS = ("leading", "linspace", "trailing", "karras")
SAMPLER_NAMES = ("plms", "ddim", "euler", "euler-a", "dpm++2m")
KARRAS = ("euler", "dpm++2m")  # the samplers whose diffusers scheduler takes use_karras_sigmas
KARRAS_RHO = 7.0
MIN_FIRST_TIMESTEP = 900  # sampling starts from pure noise, so its first step must be near the top (t ≈ 999)
MAX_STEPS = NUM_TRAIN_TIMESTEPS


@dataclass
class Spaced:
    """A sampler's schedule: the timesteps told to the UNet, one per step (ints, or float32 values for Euler), and
    for the σ-based samplers the σ of each step and one more, σ = 0 where the last step lands."""
    timesteps: list
    sigmas: list = None


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
    if spacing == "trailing":  # numpy's arange can overshoot by one point (1000 / 61 · 61 > 1000): S points only
        return np.arange(T, 0, -T / steps)[:steps].round() - 1
    raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")


def spacing_of(sampler: str, steps: int, spacing: str) -> Spaced:
    """The schedule `sampler` visits in `steps` steps with `spacing` (the pair checked; the count: see
    `check_steps`)."""
    check_spacing(sampler, spacing)
    dpm = sampler == "dpm++2m"
    if sampler in ("plms", "ddim"):  # integer timesteps; these samplers read ᾱ_t, not σ
        return Spaced([int(t) for t in discrete_timesteps(steps, spacing, steps).round()])
    table = sigma_table()
    log_sigmas = np.log(table)
    if spacing == "karras":
        sigmas = karras_sigmas(steps, table[0].item(), table[-1].item())
        timesteps = [sigma_to_t(s, log_sigmas) for s in sigmas]
        timesteps = [int(np.round(t)) for t in timesteps] if dpm else [float(np.float32(t)) for t in timesteps]
    else:
        points = discrete_timesteps(steps, spacing, steps + 1 if dpm else steps)
        points = points.round() if dpm or spacing != "linspace" else points.astype(np.float32)
        sigmas = np.interp(points, np.arange(len(table)), table)
        timesteps = [int(t) for t in points] if dpm else [float(np.float32(t)) for t in points]
    return Spaced(timesteps, [float(s) for s in np.float32(sigmas)] + [0.0])


def first_timestep(sampler: str, steps: int, spacing: str) -> float:
    """Where a schedule starts (cheaply: Karras' always starts at σ_max, t = 999)."""
    if spacing == "karras":
        return spacing_of(sampler, steps, spacing).timesteps[0]
    return float(discrete_timesteps(steps, spacing, steps + 1 if sampler == "dpm++2m" else steps)[0])


def check_spacing(sampler: str, spacing: str):
    """A sampler and spacing that run together, or a ValueError saying why not."""
    if sampler not in SAMPLER_NAMES:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLER_NAMES)}, got {sampler!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    if spacing == "karras" and sampler not in KARRAS:
        why = ("diffusers' EulerAncestralDiscreteScheduler has no Karras σ's to match" if sampler == "euler-a" else
               f"{sampler.upper()} steps in t, on ᾱ_t, not in σ")
        raise ValueError(f"karras spacing works with {' and '.join(KARRAS)}, not {sampler}: {why}")


def check_count(steps: int):
    """A whole number of steps that fits on the schedule's 1000 timesteps, or a ValueError."""
    whole_number(steps, 1, "steps")
    if steps > MAX_STEPS:
        raise ValueError(f"{steps} steps do not fit on the {NUM_TRAIN_TIMESTEPS} timesteps of the schedule: "
                         f"use at most {MAX_STEPS}")


def check_run(steps: int, sampler: str, spacing: str, start: int = 0, init=None):
    """`check_steps` for a sampler's own arguments: a run from pure noise (no `init`) begins at step 0; one from
    an image at `start`."""
    if init is None and start != 0:
        raise ValueError(f"start {start!r} without init: `start` is where a run from an image begins (its noised "
                         "latent is `init`); a run from pure noise begins at step 0")
    check_steps(steps, sampler, spacing, start if init is not None else None)


def check_steps(steps: int, sampler: str = "plms", spacing: str = "leading", start: int = None):
    """A step count whose schedule starts near the top, or a ValueError naming what would work.

    Sampling starts from pure noise, so the first step must be told a t near 999. A leading schedule starts at
    (1000 // S)(S − 1) + 1: 981 for 50 steps, but 751 for 4, 799 for 400, 1 for 1 step, and past the table's end
    from 1000 steps on; linspace starts at t = 0 for one step (except DPM's). Those runs would denoise pure noise
    as if it were a half-clean latent (diffusers' schedulers take them and give a poor image). Trailing spacing
    starts every count from 1 to 1000 at t = 999.

    A run from an image (`start`: the step it begins at, `start_step`'s) puts on the image the noise of its first
    timestep, whatever that is, so any count whose steps from `start` on lie in the table (t <= 999) is a good run.
    """
    check_spacing(sampler, spacing)
    check_count(steps)
    if start is not None:
        if whole_number(start, 0, "start") >= steps:
            raise ValueError(f"start {start} leaves none of the {steps} steps to run")
        first = spacing_of(sampler, steps, spacing).timesteps[start]
        if first < NUM_TRAIN_TIMESTEPS:
            return
        raise ValueError(f"{steps} steps with {spacing} spacing begin at t = {first:g}, past the schedule's last "
                         f"timestep {NUM_TRAIN_TIMESTEPS - 1}: use a strength below 1, or another count or spacing")
    first = first_timestep(sampler, steps, spacing)
    if MIN_FIRST_TIMESTEP <= first < NUM_TRAIN_TIMESTEPS:
        return
    works = [s for s in range(1, MAX_STEPS + 1) if MIN_FIRST_TIMESTEP <= first_timestep(sampler, s, spacing) < NUM_TRAIN_TIMESTEPS]
    below = max((s for s in works if s < steps), default=None)
    above = min((s for s in works if s > steps), default=None)
    nearest = " or ".join(str(s) for s in (below, above) if s is not None)
    where = (f"past the schedule's last timestep {NUM_TRAIN_TIMESTEPS - 1}" if first >= NUM_TRAIN_TIMESTEPS else
             f"far from t = 999 where sampling from pure noise must start (t >= {MIN_FIRST_TIMESTEP} here)")
    raise ValueError(f"{steps} step{'s' if steps != 1 else ''} with {spacing} spacing would start at t = {first:g}, "
                     f"{where}: use --spacing trailing, which starts every count at 999, or the nearest {spacing} "
                     f"counts that work: {nearest}")
