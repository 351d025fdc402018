"""Samplers: the noise schedule (schedule.py), PLMS (plms.py, the SD 1.5 default) and DDIM (ddim.py)."""
from .ddim import ddim_sample
from .plms import plms_sample

SAMPLERS = {"plms": plms_sample, "ddim": ddim_sample}

__all__ = ["SAMPLERS", "ddim_sample", "plms_sample"]
