"""Input checks that the pipeline and the command lines share: image sizes, step counts, output folders, which
flags a command line was given.

Each raises a one-line ValueError naming the argument or flag, before any model work.
"""
import argparse
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


def flags_given(parser: argparse.ArgumentParser, argv) -> set:
    """The destinations of the options `argv` names, in any spelling argparse accepts (`--flag=value`, a prefix):
    a flag given with its default value counts as given. argparse fills in defaults only for what a namespace
    lacks, so parsing into one whose every field holds a marker leaves the marker where nothing was given."""
    unset = object()
    probe = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != argparse.SUPPRESS})
    parser.parse_args(argv, probe)
    return {dest for dest, value in vars(probe).items() if value is not unset}
