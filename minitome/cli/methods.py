"""The methods' settings (--tome-*, --todo-*, --deepcache-*, --hires-*) made their configs, and what the command
line says about settings that would do nothing.

Where this sits: minitome/cli/settings.py calls `accelerations` and `hires_config` among its first checks, with
the flags given over the --from PNG's settings. Each config checks its own ranges at its door (minitome/tome.py,
todo.py, deepcache.py, pipeline.py's HiresConfig), and which methods run together is `check_methods`'; here are
only what the command line adds: a method's flag given without the flag that turns it on, the configs' refusals
named by their flags, and settings under which a method would do nothing, said with a value that works
(`tome_merges_at`, `least_until`, `least_scale`).
"""
import argparse
import math

from sampler import SAMPLERS, start_step, unet_calls
from unet.call import check_methods
from ..checks import Refusal
from ..deepcache import DeepCacheConfig
from ..pipeline import HiresConfig
from ..todo import ToDoConfig
from ..tome import MERGE_TARGETS, ToMeConfig
from .flags import check_steps_flag

SEEDS = 2 ** 64  # torch.Generator takes seeds in [0, 2⁶⁴)
TOME_SETTINGS = ("tome_max_downsample", "tome_sx", "tome_sy", "tome_no_rand", "tome_merge", "tome_seed", "tome_reuse")
TODO_SETTINGS = ("todo_max_downsample", "todo_until")
DEEPCACHE_SETTINGS = ("deepcache_branch",)
HIRES_SETTINGS = ("hires_steps", "hires_strength", "hires_upscale", "hires_tome_ratio")


def a1111_name(sampler: str) -> str:
    """The sampler as A1111 names it ("Euler a")."""
    return SAMPLERS[sampler].a1111


def needs(args, flags: tuple, switch: str, method: str):
    """The options in `flags` were given without `switch`, which turns their method on: a refusal naming them."""
    given = [f for f in flags if f in args.given]
    if given:
        names = ", ".join("--" + f.replace("_", "-") for f in given)
        raise Refusal(f"{names} need{'s' if len(given) == 1 else ''} {switch} ({method} is off without it)")


def tome_config(args, ratio: float = None) -> ToMeConfig:
    """The first pass's ToMe; with `ratio`, the hires pass's, from the same --tome-* settings."""
    if ratio is None and args.tome_ratio is None and args.tome_threshold is None:
        if args.hires_tome_ratio is None:  # --hires-tome-ratio alone: ToMe on the second pass only
            needs(args, TOME_SETTINGS, "--tome-ratio or --tome-threshold", "ToMe")
        return None
    if ratio is not None:
        args = argparse.Namespace(**{**vars(args), "tome_ratio": ratio, "tome_threshold": None})
    if args.tome_ratio is not None and args.tome_threshold is not None:
        raise Refusal("--tome-ratio and --tome-threshold both say how much to merge: give one of them")
    targets = [t.strip() for t in args.tome_merge.split(",") if t.strip()]
    unknown = [t for t in targets if t not in MERGE_TARGETS]
    if unknown or not targets:
        raise Refusal(f"--tome-merge takes a comma list of {', '.join(MERGE_TARGETS)}, got {args.tome_merge!r}")
    if not 0 <= args.tome_seed < SEEDS:
        raise Refusal(f"--tome-seed must be in [0, 2^64), got {args.tome_seed}")
    if args.tome_threshold is not None and args.tome_sx == 1 and args.tome_sy == 1:
        raise Refusal("--tome-sx 1 --tome-sy 1: cells of one token are all dst, with no src to merge; "
                      "--tome-threshold needs cells of at least 2 tokens")
    ratio = args.tome_ratio if args.tome_ratio is not None else 0.5  # unused with a threshold
    return ToMeConfig(ratio=ratio, max_downsample=args.tome_max_downsample, sx=args.tome_sx,
                      sy=args.tome_sy, use_rand=not args.tome_no_rand, merge_attn="attn" in targets,
                      merge_crossattn="crossattn" in targets, merge_mlp="mlp" in targets, seed=args.tome_seed,
                      threshold=args.tome_threshold, reuse=args.tome_reuse)


def tome_merges_at(tome: ToMeConfig, latent_hw: tuple):
    """ToMe merges somewhere at a latent of (H, W): a whole sy × sx cell fits its full-resolution grid and, by
    ratio, r = int(H·W · ratio) >= 1 there (ratio 0 is the chosen identity). The library takes other settings
    as the identity, as tomesd does; the command line refuses them, with the least ratio that merges."""
    h, w = latent_hw
    if tome.sx > w or tome.sy > h:
        raise Refusal(f"ToMe sx {tome.sx} and sy {tome.sy}: no whole cell fits the {h}x{w} latent grid, so "
                      "nothing would merge")
    if tome.threshold is None and tome.ratio > 0 and int(h * w * tome.ratio) == 0:
        least = 1 / (h * w)
        while int(h * w * least) == 0:
            least = math.nextafter(least, 1)
        raise Refusal(f"ToMe ratio {tome.ratio!r} merges none of the {h * w} tokens of the {h}x{w} latent "
                      f"(int({h * w} · {tome.ratio!r}) = 0): use at least {least!r}, or 0 for none")


def todo_config(args) -> ToDoConfig:
    if args.todo_factor is None:
        needs(args, TODO_SETTINGS, "--todo-factor", "ToDo")
        return None
    todo = ToDoConfig(factor=args.todo_factor, max_downsample=args.todo_max_downsample, until=args.todo_until)
    from_image = args.init_image is not None
    check_todo_calls(todo, args.sampler, args.steps, start_step(args.steps, args.strength) if from_image else 0)
    return todo


def least_until(calls: int) -> float:
    """The smallest `until` of three significant digits that keeps ToDo on for at least one of `calls` calls
    (round() halves to even: until · calls must pass 0.5, not reach it). A number to type back in."""
    digits = -math.floor(math.log10(0.5 / calls)) + 2  # decimals for three significant digits
    until = math.ceil(0.5 / calls * 10 ** digits) / 10 ** digits
    while round(until * calls) == 0:
        until = round(until + 10 ** -digits, digits)
    return until


def check_todo_calls(todo: ToDoConfig, sampler: str, steps: int, start: int = 0, which: str = ""):
    """ToDo on for at least one UNet call of a pass (`which`: which one, when there are two), counting the calls
    the pass makes: from an image, only the last steps − start run."""
    calls = unet_calls(sampler, steps, start)
    if todo.calls_on(calls) == 0:
        run = f"{steps} {a1111_name(sampler)} steps" if start == 0 else (
            f"the last {steps - start} of {steps} {a1111_name(sampler)} steps")
        raise Refusal(f"--todo-until {todo.until:g} turns ToDo on for none of the {calls} UNet calls of {which}{run}: "
                      f"use at least {least_until(calls)!r}, or leave ToDo off")


def deep_cache_config(args) -> DeepCacheConfig:
    if args.deepcache_interval is None:
        needs(args, DEEPCACHE_SETTINGS, "--deepcache-interval", "DeepCache")
        return None
    return DeepCacheConfig(interval=args.deepcache_interval, branch=args.deepcache_branch)


def flag_named(check, *args):
    """check(*args), a refusal from a method's config ("ToDo factor must …", a ValueError at the config's door)
    naming the flag ("--todo-factor")."""
    try:
        return check(*args)
    except ValueError as error:
        message = str(error)
        for name, flag in (("ToMe ", "--tome-"), ("ToDo ", "--todo-"), ("DeepCache ", "--deepcache-"),
                           ("hires ", "--hires-")):
            message = message.replace(name, flag) if message.startswith(name) else message
        raise Refusal(message) from None


def least_scale(width: int, height: int, multiple: int = 8) -> float:
    """The smallest hires scale that grows the longer side by one `multiple`: below it, the second pass runs at the
    first's size. A number to type back in (the division's rounding is walked up past)."""
    side = max(width, height)
    scale = (side + multiple) / side
    while int(side * scale) < side + multiple:
        scale = math.nextafter(scale, 2 * scale)
    return scale


def hires_config(args, tome, todo, deep_cache):
    """The hires pass (pipeline.HiresConfig) from the --hires-* flags, or None without --hires-scale."""
    if args.hires_scale is None:
        needs(args, HIRES_SETTINGS, "--hires-scale", "the hires pass")
        return None
    if not math.isfinite(args.hires_scale) or args.hires_scale <= 1:
        raise Refusal(f"--hires-scale must be a number > 1 (the second pass's size over the first's), got {args.hires_scale}")
    steps = args.hires_steps if args.hires_steps is not None else args.steps
    start = check_steps_flag(steps, "--hires-steps", args.sampler, args.spacing, args.hires_strength, "--hires-strength")
    if args.hires_tome_ratio is None:
        second = tome
    elif args.hires_tome_ratio == 0:
        second = None
    else:
        try:
            second = tome_config(args, args.hires_tome_ratio)
        except ValueError as error:
            raise Refusal(f"--hires-tome-ratio {args.hires_tome_ratio!r}: {error}") from None
    flag_named(check_methods, second, todo, deep_cache)
    if todo is not None:
        check_todo_calls(todo, args.sampler, steps, start, "the hires pass, ")
    return flag_named(HiresConfig, args.hires_scale, steps, args.hires_strength, args.hires_upscale, second)


def accelerations(args) -> tuple:
    """(ToMeConfig, ToDoConfig, DeepCacheConfig) from the flags, each None when off; refusals name the flag."""
    tome, todo, deep_cache = (flag_named(config, args) for config in (tome_config, todo_config, deep_cache_config))
    flag_named(check_methods, tome, todo, deep_cache)  # which methods run together: one rule, one message
    return tome, todo, deep_cache
