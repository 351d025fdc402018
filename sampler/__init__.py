"""Samplers: the noise schedule (schedule.py), the timesteps each visits (spacing.py), PLMS (plms.py, the SD 1.5
default), DDIM (ddim.py), Euler and Euler ancestral (euler.py), DPM-Solver++(2M) (dpm.py).

Every sampler is called the same way: sample(eps_model, x, steps, spacing, generator, callback), with x the
initial noise (unit variance) and eps_model(x, t) the guided noise estimate; it returns the clean latent.
"""
import math

from .ddim import ddim_sample
from .dpm import dpmpp_2m_sample
from .euler import euler_ancestral_sample, euler_sample
from .plms import plms_sample
from .spacing import SPACINGS, check_count, check_spacing, check_steps, spacing_of

SAMPLERS = {"plms": plms_sample, "ddim": ddim_sample, "euler": euler_sample, "euler-a": euler_ancestral_sample,
            "dpm++2m": dpmpp_2m_sample}
A1111_NAMES = {"plms": "PLMS", "ddim": "DDIM", "euler": "Euler", "euler-a": "Euler a", "dpm++2m": "DPM++ 2M"}


def check_sampler(sampler: str, spacing: str = "leading", steps: int = None, start: int = None):
    """A sampler and spacing that run together (and, given, a step count they space well, for a run from pure
    noise, or from an image from step `start` on): a ValueError otherwise."""
    if steps is None:
        check_spacing(sampler, spacing)
    else:
        check_steps(steps, sampler, spacing, start)  # which checks the pair first


def unet_calls(sampler: str, steps: int, start: int = 0) -> int:
    """How many times a run calls the UNet: PLMS's first step calls it twice (one more, unless one step is left).
    A run from an image takes only the steps from `start` on."""
    left = steps - start
    return left + 1 if sampler == "plms" and left > 1 else left


def call_timesteps(sampler: str, steps: int, spacing: str = "leading", start: int = 0) -> list:
    """The timestep of every UNet call of a run, in order (PLMS's warm-up calls at the second timestep twice)."""
    ts = spacing_of(sampler, steps, spacing).timesteps[start:]
    return [ts[0], *ts[1:2], *ts[1:]] if sampler == "plms" and len(ts) > 1 else ts


def start_step(steps: int, strength: float) -> int:
    """Where a run from an image starts, as diffusers' img2img picks it: the last int(steps · strength) of the
    steps run (the strength is the share of the schedule's noise put back on the image). A ValueError when
    that leaves no step, or the strength is not in (0, 1]."""
    check_count(steps)
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    run = min(int(steps * strength), steps)
    if run == 0:
        least = 1 / steps
        least = least if int(steps * least) >= 1 else math.nextafter(least, 2)  # 49 · (1/49) rounds below 1
        raise ValueError(f"strength {strength!r} of {steps} steps leaves no step to run (int({steps} · {strength!r}) "
                         f"= 0): raise the strength to at least {least!r}, or the steps")
    return steps - run


__all__ = ["A1111_NAMES", "SAMPLERS", "SPACINGS", "call_timesteps", "check_count", "check_sampler", "check_spacing",
           "check_steps",
           "start_step", "ddim_sample",
           "dpmpp_2m_sample", "euler_ancestral_sample", "euler_sample", "plms_sample", "spacing_of", "unet_calls"]
