"""Input checks that the pipeline and the command lines share: image sizes, step counts, output folders.

Each raises a one-line ValueError naming the argument or flag, before any model work.
"""
import os
from pathlib import Path

from sampler.schedule import check_steps


def check_size(width: int, height: int, factor: int = 8, names=("width", "height")):
    """Both positive multiples of `factor` (the VAE's 8 pixels per latent cell, or what a tool needs)."""
    for name, value in zip(names, (width, height)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % factor:
            raise ValueError(f"{name} must be a positive multiple of {factor}, got {value!r}")


def check_steps_flag(steps: int, flag: str):
    """`sampler.schedule.check_steps`, its message naming the flag."""
    try:
        check_steps(steps)
    except ValueError as error:
        raise ValueError(f"{flag}: {error}") from None


def writable_folder(folder: Path, flag: str) -> Path:
    """folder, created if missing, and writable."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"{flag} {folder}: cannot create it ({error.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {folder}: not writable")
    return folder
