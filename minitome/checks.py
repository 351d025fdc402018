"""Value checks the library's configs and entry points share: one spelling of each rule.

Each raises a one-line ValueError naming the argument; the command lines map those names to their flags
(minitome/flags.py), so a check lives once, where the knowledge of the value lives.
"""
from pathlib import Path


def regular_file(path, name: str) -> Path:
    """path as a Path, when it is a file one can read to its end: not missing, not a link to nothing, not a
    folder, FIFO or device (a FIFO would wait for a writer forever)."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{name} {path}: {'a link to nothing (broken, or a loop)' if p.is_symlink() else 'no such file'}")
    if not p.is_file():
        raise ValueError(f"{name} {path}: not a regular file (a folder, a FIFO or a device)")
    return p


def whole_number(value, low: int, name: str) -> int:
    """value, when it is an int (not a bool) >= low."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    return value


def check_size(width: int, height: int, factor: int = 8, names=("width", "height")):
    """Both positive multiples of `factor` (the VAE's 8 pixels per latent cell, or what a tool needs)."""
    for name, value in zip(names, (width, height)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % factor:
            raise ValueError(f"{name} must be a positive multiple of {factor}, got {value!r}")
