"""Samplers: the noise schedule (schedule.py), the timesteps each visits (spacing.py), PLMS (plms.py, the SD 1.5
default), DDIM (ddim.py), Euler and Euler ancestral (euler.py), DPM-Solver++(2M) (dpm.py).

Every sampler is called the same way: sample(eps_model, x, steps, spacing, generator, callback), with x the
initial noise (unit variance) and eps_model(x, t) the guided noise estimate; it returns the clean latent.
"""
from .ddim import ddim_sample
from .dpm import dpmpp_2m_sample
from .euler import euler_ancestral_sample, euler_sample
from .plms import plms_sample
from .spacing import SPACINGS, check_spacing, check_steps, spacing_of

SAMPLERS = {"plms": plms_sample, "ddim": ddim_sample, "euler": euler_sample, "euler-a": euler_ancestral_sample,
            "dpm++2m": dpmpp_2m_sample}
A1111_NAMES = {"plms": "PLMS", "ddim": "DDIM", "euler": "Euler", "euler-a": "Euler a", "dpm++2m": "DPM++ 2M"}


def check_sampler(sampler: str, spacing: str = "leading", steps: int = None):
    """A sampler and spacing that run together (and, given, a step count they space well): a ValueError otherwise."""
    check_spacing(sampler, spacing)
    if steps is not None:
        check_steps(steps, sampler, spacing)


def unet_calls(sampler: str, steps: int) -> int:
    """How many times a run calls the UNet: PLMS's first step calls it twice (steps + 1 in all, unless one step)."""
    return steps + 1 if sampler == "plms" and steps > 1 else steps


def call_timesteps(sampler: str, steps: int, spacing: str = "leading") -> list:
    """The timestep of every UNet call of a run, in order (PLMS's warm-up calls at the second timestep twice)."""
    ts = spacing_of(sampler, steps, spacing).timesteps
    return [ts[0], *ts[1:2], *ts[1:]] if sampler == "plms" and steps > 1 else ts


__all__ = ["A1111_NAMES", "SAMPLERS", "SPACINGS", "call_timesteps", "check_sampler", "check_spacing", "check_steps",
           "ddim_sample",
           "dpmpp_2m_sample", "euler_ancestral_sample", "euler_sample", "plms_sample", "spacing_of", "unet_calls"]
