"""How each value of a PNG's text is written and read back: numbers in their shortest round-trip form, names
through their A1111 spelling, ToMe's settings as pairs. The rows of `FIELDS` (minitome/cli/png_text.py) are made
of these.
"""
import re

DECIMAL = re.compile(r"[+-]?(\d{1,30}(\.\d*)?|\.\d+)([eE][+-]?\d{1,4})?")


class NotAsWritten(ValueError):
    """A number that is not written as minitome and A1111 write numbers."""


def number(value: float) -> str:
    """A float written to read back to itself: the shortest round-trip form, without a trailing '.0'."""
    text = repr(float(value) + 0.0)  # + 0.0: -0.0 is written 0
    return text[:-2] if text.endswith(".0") else text


def decimal(text: str) -> float:
    if not DECIMAL.fullmatch(text):
        raise NotAsWritten(text)
    return float(text)


def whole(text: str) -> int:
    if not re.fullmatch(r"\d{1,30}", text):
        raise NotAsWritten(text)
    return int(text)


def when(write):
    """A format for a value that is None when its setting is off (the field is then left out)."""
    return lambda value: None if value is None else write(value)


def unless(default):
    """A format that leaves the field out at its default value."""
    return lambda value: None if value == default else str(value)


def by_name(table, what: str):
    """A parse that looks a name up in {our name: A1111's name} (or a function giving that table when read)."""
    def parse(text):
        ours = {v: k for k, v in (table() if callable(table) else table).items()}
        if text not in ours:
            raise ValueError(f"{what} {text!r} is not one of {', '.join(ours)}")
        return ours[text]
    return parse


def one_of(names: tuple, what: str):
    return by_name({name: name for name in names}, what)


def pairs(value: str) -> dict:
    """'ratio 0.5, max_downsample 1, …' → {'ratio': '0.5', 'max_downsample': '1', …}"""
    return dict(item.strip().split(" ", 1) for item in value.split(",") if item.strip())


def named_pairs(text: str) -> tuple:
    """'name: hash, name2: hash' → (('name', 'hash'), ('name2', 'hash'))."""
    return tuple(tuple(item.strip().rsplit(": ", 1)) for item in text.split(",") if ": " in item)


def listed(name_hashes: tuple):
    return ", ".join(f"{name}: {h}" for name, h in name_hashes) or None


TOME = ("tome_ratio", "tome_threshold", "tome_max_downsample", "tome_sx", "tome_sy", "tome_no_rand", "tome_merge",
        "tome_seed", "tome_reuse")


def tome_settings(max_downsample, sx, sy, no_rand, merge, seed, reuse) -> str:
    """ToMe's settings other than how much it merges, as the "ToMe" and "ToMe hr" fields write them."""
    return (f"max_downsample {max_downsample}, sx {sx}, sy {sy}, use_rand {not no_rand}, "
            f"merge {merge.replace(',', '+')}, seed {seed}, reuse {reuse}")


def tome_text(ratio, threshold, *settings):
    """The first pass's ToMe: how much it merges, then its settings."""
    if ratio is None and threshold is None:
        return None
    amount = f"threshold {number(threshold)}" if threshold is not None else f"ratio {number(ratio)}"
    return f"{amount}, {tome_settings(*settings)}"


def tome_hr_text(ratio, threshold, *settings):
    """ToMe on the hires pass only (its ratio is "Token merging ratio hr"): its settings."""
    on_first_pass, on_anywhere = ratio is not None or threshold is not None, settings[0] is not None
    return tome_settings(*settings) if on_anywhere and not on_first_pass else None


def tome_values(text: str) -> tuple:
    t = pairs(text)
    return (decimal(t["ratio"]) if "ratio" in t else None, decimal(t["threshold"]) if "threshold" in t else None,
            whole(t["max_downsample"]), whole(t["sx"]), whole(t["sy"]), t["use_rand"] == "False",
            t["merge"].replace("+", ","), whole(t["seed"]), whole(t["reuse"]))


def size(text: str) -> tuple:
    width, height = text.split("x")
    return whole(width), whole(height)
