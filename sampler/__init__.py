"""Samplers: the noise schedule (schedule.py), the steps each visits (spacing.py), PLMS (plms.py, the SD 1.5
default), DDIM (ddim.py), Euler and Euler ancestral (euler.py), DPM-Solver++(2M) (dpm.py), LCM (lcm.py), and
their table.

Every sampler is called the same way, as k-diffusion's: sample(eps_model, x, schedule, generator, callback), with
eps_model(x, t) the guided noise estimate, `schedule` the steps it takes (spacing.py) and x its starting variable
(what its row's `start` makes of the initial noise, or of the noise and an image); it returns the clean latent.
callback(i, t, x0) runs after step i (at timestep t), x0 the sampler's current estimate of the clean latent x̂₀,
(B, 4, h, w) in the latent's units (what `decode` takes: the decoder gets it divided by its scaling): PLMS and
DDIM the x̂₀ of their DDIM step, Euler x̄ − σ · ε, DPM++ its x̂₀, LCM its `denoised` (diffusers'
`pred_original_sample`, `denoised`). A sampler is one file and one row of `SAMPLERS`.
"""
from dataclasses import dataclass
from typing import Callable

from .ddim import ddim_sample
from .dpm import dpmpp_2m_sample, start_in_dpm
from .euler import euler_ancestral_sample, euler_sample, start_in_x_bar
from .lcm import lcm_sample, lcm_schedule
from .plms import plms_sample
from .schedule import start_in_x
from .spacing import SPACINGS, Schedule, dpm_schedule, sigma_schedule, t_schedule


@dataclass(frozen=True)
class Sampler:
    """One row of the table: the sampler, and what the pipeline and the PNG's text need to know of it."""
    sample: Callable              # sample(eps_model, x, schedule, generator, callback) → the clean latent
    a1111: str                    # its name in A1111's text ("Euler a")
    diffusers: str                # the diffusers scheduler it matches
    schedule: Callable            # (steps, spacing) → Schedule: the steps it takes (spacing.py)
    start: Callable               # (noise, schedule, init=None) → its starting variable
    spacings: tuple = ("leading", "linspace", "trailing")  # the spacings it takes (karras: σ-based only)
    twice_first: bool = False     # its first step calls the UNet twice (PLMS's warm-up)
    max_steps: int = 1000         # the most steps it takes (LCM: its 50-step original schedule)


SAMPLERS = {
    "plms": Sampler(plms_sample, "PLMS", "PNDMScheduler", t_schedule, start_in_x, twice_first=True),
    "ddim": Sampler(ddim_sample, "DDIM", "DDIMScheduler", t_schedule, start_in_x),
    "euler": Sampler(euler_sample, "Euler", "EulerDiscreteScheduler", sigma_schedule, start_in_x_bar, SPACINGS),
    "euler-a": Sampler(euler_ancestral_sample, "Euler a", "EulerAncestralDiscreteScheduler", sigma_schedule,
                       start_in_x_bar),
    "dpm++2m": Sampler(dpmpp_2m_sample, "DPM++ 2M", "DPMSolverMultistepScheduler", dpm_schedule, start_in_dpm, SPACINGS),
    "lcm": Sampler(lcm_sample, "LCM", "LCMScheduler", lcm_schedule, start_in_x, spacings=("leading",), max_steps=50),
}


def spacing_of(sampler: str, steps: int, spacing: str) -> Schedule:
    """The steps `sampler` takes in a run of `steps` with `spacing`, from pure noise."""
    return SAMPLERS[sampler].schedule(steps, spacing)


def sample(name: str, eps_model, noise, steps: int, spacing: str = "leading", generator=None, callback=None,
           start: int = 0, init=None):
    """A run of the sampler `name`: its schedule computed once (the steps from `start` on, for a run from the
    image latent `init`), its starting variable made from the noise (and init), then its steps."""
    row = SAMPLERS[name]
    schedule = row.schedule(steps, spacing).from_step(start)
    return row.sample(eps_model, row.start(noise, schedule, init), schedule, generator, callback)


def start_step(steps: int, strength: float) -> int:
    """Where a run from an image starts, as diffusers' img2img picks it: the last int(steps · strength) of the
    steps run (the strength is the share of the schedule's noise put back on the image)."""
    return steps - min(int(steps * strength), steps)


def unet_calls(sampler: str, steps: int, start: int = 0) -> int:
    """How many times a run calls the UNet: PLMS's first step calls it twice (one more, unless one step is left).
    A run from an image takes only the steps from `start` on."""
    left = steps - start
    return left + 1 if SAMPLERS[sampler].twice_first and left > 1 else left


def call_timesteps(sampler: str, steps: int, spacing: str = "leading", start: int = 0) -> list:
    """The timestep of every UNet call of a run, in order (PLMS's warm-up calls at the second timestep twice)."""
    ts = spacing_of(sampler, steps, spacing).timesteps[start:]
    return [ts[0], *ts[1:2], *ts[1:]] if SAMPLERS[sampler].twice_first and len(ts) > 1 else ts


__all__ = ["SAMPLERS", "SPACINGS", "Sampler", "Schedule", "call_timesteps", "ddim_sample", "dpmpp_2m_sample",
           "euler_ancestral_sample", "euler_sample", "lcm_sample", "plms_sample", "sample", "spacing_of", "start_step",
           "unet_calls"]
