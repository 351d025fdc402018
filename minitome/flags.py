"""What the command lines (`python -m minitome.sample`, the lab's tools) share about their flags: a check's
message naming its flag, output folders, which flags were given. The library never imports this file; its
own value checks are in minitome/checks.py.

Each raises a one-line ValueError naming the flag, before any model work.
"""
import argparse
import os
from pathlib import Path

from sampler import check_count, check_spacing, check_steps, start_step


def check_steps_flag(steps: int, flag: str, sampler: str = "plms", spacing: str = "leading", strength: float = None,
                     strength_flag: str = "--strength") -> int:
    """The sampler, spacing, step count and, for a run from an image, its strength (`sampler/`), each message
    naming the flag at fault. Returns the step a run from an image starts at (None from pure noise)."""
    try:
        check_spacing(sampler, spacing)
    except ValueError as error:
        flag_of = "--spacing" if str(error).startswith(("karras", "spacing")) else "--sampler"
        raise ValueError(f"{flag_of}: {error}") from None
    named(flag, check_count, steps)
    start = named(strength_flag, start_step, steps, strength) if strength is not None else None
    named(flag, check_steps, steps, sampler, spacing, start)
    return start


def named(flag: str, check, *values):
    """check(*values), its ValueError's message after the flag's name."""
    try:
        return check(*values)
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
    class Unset(list):  # a marker an append action can copy and extend (its copy is another object)
        pass
    unset = {a.dest: Unset() for a in parser._actions if a.dest != argparse.SUPPRESS}
    probe = argparse.Namespace(**unset)
    parser.parse_args(argv, probe)
    return {dest for dest, value in vars(probe).items() if value is not unset[dest]}
