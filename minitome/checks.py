"""Value checks the library's doors share (its configs, the pipeline's public functions, a run's start,
`UNetModel.forward`'s entry), and `Refusal`, the kind of error they raise.

A refusal is bad input said in one line naming the argument, raised only where the input enters; nothing past
a door checks again. The command line turns refusals (and I/O errors) into its one-line messages; any other
exception is a bug.
"""
import math
import numbers

from sampler import SAMPLERS, SPACINGS, spacing_of, start_step
from sampler.spacing import discrete_timesteps, dpm_schedule, sigma_schedule, t_schedule


class Refusal(ValueError):
    """Bad input, refused at the door where it entered: a one-line message naming the argument (a ValueError,
    so `except ValueError` still catches it)."""


def whole_number(value, low: int, name: str) -> int:
    """value as an int, when it is a whole number (an int or numpy's, not a bool) >= low."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise Refusal(f"{name} must be a whole number >= {low}, got {value!r}")
    return int(value)


def real_number(value, name: str) -> float:
    """value as a float, when it is a real number (a float, an int or numpy's; not a bool, a string or a tensor)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise Refusal(f"{name} must be a number, got {value!r}")
    return float(value)


def check_seed(seed, name: str = "seed") -> int:
    """A seed torch.Generator takes: a whole number in [0, 2⁶⁴)."""
    if whole_number(seed, 0, name) >= 2 ** 64:
        raise Refusal(f"{name} must be below 2^64, got {seed!r}")
    return int(seed)


def check_size(width: int, height: int, factor: int = 8, names=("width", "height")):
    """Both positive multiples of `factor` (the VAE's 8 pixels per latent cell, or what a tool needs)."""
    for name, value in zip(names, (width, height)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % factor:
            raise Refusal(f"{name} must be a positive multiple of {factor}, got {value!r}")


MIN_FIRST_TIMESTEP = 900  # sampling starts from pure noise, so its first step must be near the top (t ≈ 999)


def check_spacing(sampler: str, spacing: str):
    """A sampler of the table (sampler/__init__.py) and a spacing it takes."""
    if sampler not in SAMPLERS:
        raise Refusal(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if spacing not in SPACINGS:
        raise Refusal(f"spacing must be one of {', '.join(SPACINGS)}, got {spacing!r}")
    row = SAMPLERS[sampler]
    if spacing not in row.spacings:
        if len(row.spacings) == 1:  # a sampler with timesteps of its own (LCM's): the default spacing only
            raise Refusal(f"{sampler} takes its own timesteps: leave the spacing out (the default, {row.spacings[0]}), "
                          f"not {spacing}")
        takers = [name for name, r in SAMPLERS.items() if spacing in r.spacings]
        why = (f"{sampler.upper()} steps in t, on ᾱ_t, not in σ" if row.schedule is t_schedule else
               f"diffusers' {row.diffusers} has no Karras σ's to match")
        raise Refusal(f"{spacing} spacing works with {' and '.join(takers)}, not {sampler}: {why}")


def check_count(steps: int, sampler: str = None):
    """A whole number of steps that fits on the schedule's 1000 timesteps, and on the sampler's (LCM's: 50)."""
    whole_number(steps, 1, "steps")
    most = SAMPLERS[sampler].max_steps if sampler in SAMPLERS else 1000
    if steps > most and most < 1000:
        raise Refusal(f"{sampler} takes 1 to {most} steps (its {most}-step original schedule), got {steps}")
    if steps > 1000:
        raise Refusal(f"{steps} steps do not fit on the 1000 timesteps of the schedule: use at most 1000")


def check_strength(steps: int, strength: float) -> int:
    """A strength in (0, 1] that leaves a step to run from an image; the step the run starts at (`start_step`)."""
    check_count(steps)
    if not 0 < real_number(strength, "strength") <= 1:
        raise Refusal(f"strength must be in (0, 1], got {strength}")
    start = start_step(steps, strength)
    if start == steps:
        least = 1 / steps
        least = least if int(steps * least) >= 1 else math.nextafter(least, 2)  # 49 · (1/49) rounds below 1
        raise Refusal(f"strength {strength!r} of {steps} steps leaves no step to run (int({steps} · {strength!r}) "
                      f"= 0): raise the strength to at least {least!r}, or the steps")
    return start


def first_timestep(sampler: str, steps: int, spacing: str, start: int = 0) -> float:
    """Where a schedule starts, or its step `start` (cheaply, and past the table too, for the schedules made from a
    spacing's timesteps; Karras' and a sampler's own, as LCM's, stay in it and are read off the schedule)."""
    schedule = SAMPLERS[sampler].schedule
    if spacing == "karras" or schedule not in (t_schedule, sigma_schedule, dpm_schedule):
        return spacing_of(sampler, steps, spacing).timesteps[start]
    dpm = schedule is dpm_schedule  # S + 1 intervals
    return float(discrete_timesteps(steps, spacing, steps + 1 if dpm else steps)[start])


def starts_at_the_top(sampler: str, steps: int, spacing: str) -> bool:
    """Whether a run from pure noise of `steps` starts near t = 999 (MIN_FIRST_TIMESTEP to 999), as it must."""
    return MIN_FIRST_TIMESTEP <= first_timestep(sampler, steps, spacing) < 1000


def check_steps(steps: int, sampler: str = "plms", spacing: str = "leading", start: int = None):
    """A step count whose schedule starts near the top.

    Sampling starts from pure noise, so the first step must be told a t near 999. A leading schedule starts at
    (1000 // S)(S − 1) + 1: 981 for 50 steps, but 751 for 4, 799 for 400, 1 for 1 step, and past the table's end
    from 1000 steps on; linspace starts at t = 0 for one step (except DPM's). Those runs would denoise pure noise
    as if it were a half-clean latent (diffusers' schedulers take them and give a poor image). Trailing spacing
    starts every count from 1 to 1000 at t = 999, and LCM's own schedule every count it takes (1 to 50).

    A run from an image (`start`: the step it begins at, `start_step`'s) puts on the image the noise of its first
    timestep, whatever that is, so any count whose steps from `start` on lie in the table (t <= 999) is a good run.
    """
    check_spacing(sampler, spacing)
    check_count(steps, sampler)
    if start is not None:
        if whole_number(start, 0, "start") >= steps:
            raise Refusal(f"start {start} leaves none of the {steps} steps to run")
        first = first_timestep(sampler, steps, spacing, start)
        if first >= 1000:
            raise Refusal(f"{steps} steps with {spacing} spacing begin at t = {first:g}, past the schedule's last "
                          f"timestep 999: use a strength below 1, or another count or spacing")
        return
    if not starts_at_the_top(sampler, steps, spacing):
        first = first_timestep(sampler, steps, spacing)
        raise Refusal(f"{steps} step{'s' if steps != 1 else ''} with {spacing} spacing would start at t = {first:g}, "
                      f"not near t = 999 where sampling from pure noise starts ({MIN_FIRST_TIMESTEP} to 999): use "
                      "trailing spacing, which starts every count at 999, or another count")
