"""Value checks the library's configs and entry points share: one spelling of each rule.

Each raises a one-line ValueError naming the argument; the command lines map those names to their flags
(minitome/flags.py), so a check lives once, where the knowledge of the value lives.
"""
import numbers
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
    """value as an int, when it is a whole number (an int or numpy's, not a bool) >= low."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    return int(value)


def real_number(value, name: str) -> float:
    """value as a float, when it is a real number (a float, an int or numpy's; not a bool, a string or a tensor)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def check_seed(seed, name: str = "seed") -> int:
    """A seed torch.Generator takes: a whole number in [0, 2⁶⁴)."""
    if whole_number(seed, 0, name) >= 2 ** 64:
        raise ValueError(f"{name} must be below 2^64, got {seed!r}")
    return int(seed)


def check_size(width: int, height: int, factor: int = 8, names=("width", "height")):
    """Both positive multiples of `factor` (the VAE's 8 pixels per latent cell, or what a tool needs)."""
    for name, value in zip(names, (width, height)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % factor:
            raise ValueError(f"{name} must be a positive multiple of {factor}, got {value!r}")
