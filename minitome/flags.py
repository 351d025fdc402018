"""What the command lines (`python -m minitome.sample`, the lab's tools) share about their flags: a check's
message naming its flag, output folders, which flags were given. The library never imports this file; its
own value checks are in minitome/checks.py.

Each raises a one-line ValueError naming the flag, before any model work.
"""
import argparse
import os
from pathlib import Path

from sampler import check_spacing, check_steps


def check_steps_flag(steps: int, flag: str, sampler: str = "plms", spacing: str = "leading"):
    """The sampler, spacing and step count (`sampler/spacing.py`), each message naming the flag at fault."""
    try:
        check_spacing(sampler, spacing)
    except ValueError as error:
        flag_of = "--spacing" if str(error).startswith(("karras", "spacing")) else "--sampler"
        raise ValueError(f"{flag_of}: {error}") from None
    try:
        check_steps(steps, sampler, spacing)
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
