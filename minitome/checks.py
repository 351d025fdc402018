"""Checks the command lines share: a step count and an output folder, each a one-line ValueError naming the flag."""
import os
from pathlib import Path

from sampler.schedule import check_steps


def check_steps_flag(steps: int, flag: str):
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
