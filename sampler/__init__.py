"""Samplers: the noise schedule (schedule.py), PLMS (plms.py, the SD 1.5 default) and DDIM (ddim.py)."""
from .ddim import ddim_sample
from .plms import plms_sample

SAMPLERS = {"plms": plms_sample, "ddim": ddim_sample}


def unet_calls(sampler: str, steps: int) -> int:
    """How many times a run calls the UNet: PLMS's first step calls it twice (steps + 1 in all)."""
    return steps + 1 if sampler == "plms" else steps


__all__ = ["SAMPLERS", "ddim_sample", "plms_sample", "unet_calls"]
