"""`spacings.png`: the timesteps each spacing visits for 4, 10 and 20 steps (tutorial chapter 6).

Where this sits: `python -m minitome.lab.visualize` draws it beside the token pictures; it only reads
`sampler/spacing.py`. One row per spacing and count: the t axis from 999 (left, pure noise) to 0, a dot at each
timestep the Euler sampler visits (DPM-Solver++'s leading differs: S + 1 intervals), its σ written at the first.
A leading count that starts far below the top is drawn grey, with the t it would start at.
"""
from PIL import Image, ImageDraw

from sampler import SPACINGS, spacing_of
from minitome.checks import check_steps
from .common import FONT

COUNTS = (4, 10, 20)


def spacing_picture(width: int = 720) -> Image.Image:
    font = FONT
    left, right, row, top = 150, 40, 30, 40
    rows = [(spacing, steps) for spacing in SPACINGS for steps in COUNTS]
    out = Image.new("RGB", (width, top + row * len(rows) + 44), "white")
    d = ImageDraw.Draw(out)
    span = width - left - right
    x_of = lambda t: left + span * (999 - t) / 999  # noqa: E731
    d.text((10, 10), "timesteps an Euler run visits, t = 999 (pure noise) on the left; its last step lands on t = 0",
           fill="black", font=font)
    for i, (spacing, steps) in enumerate(rows):
        y = top + i * row + row // 2
        try:
            check_steps(steps, "euler", spacing)
            colour, note = (20, 60, 170), ""
        except ValueError:
            colour, note = (170, 170, 170), "refused"
        schedule = spacing_of("euler", steps, spacing)
        d.text((10, y - 8), f"{spacing}, {steps} steps", fill="black", font=font)
        d.line([(left, y), (left + span, y)], fill=(200, 200, 200), width=1)
        for t in schedule.timesteps:
            d.ellipse([x_of(t) - 3, y - 3, x_of(t) + 3, y + 3], fill=colour)
        first = schedule.timesteps[0]
        label = f"starts at t = {first:.0f}: {note}" if note else f"sigma {schedule.sigmas[0]:.2f} at t = {first:.0f}"
        d.text((x_of(first) + 8, y - 17), label, fill=colour, font=font)
    for t in (999, 750, 500, 250, 0):
        x = x_of(t)
        d.line([(x, top + row * len(rows)), (x, top + row * len(rows) + 6)], fill="black")
        d.text((x - 10, top + row * len(rows) + 10), str(t), fill="black", font=font)
    return out
