"""What `--image` (one_image.py) prints: the stages of every image, the ratios its targets name, and one markdown
block, dated and with the machine and the command, to paste into docs/benchmark.md.

Where this sits: one_image.py's `image_table` hands its rows here. Every ratio is of two images measured in the
same run (never of figures from two runs), and the targets are said met or not from them:

- minitome no slower than diffusers on any row: minitome's total ÷ diffusers' ≤ 1 on every row;
- default ÷ (LCM 4 + TAESD) ≥ 20×, and ≥ 25× with ToMe on the LCM image: the default's total (PLMS 50, guidance
  7.5, the VAE, nothing else) over that row's, in one dtype and one library;
- float32 ÷ bfloat16 ≥ 1.4× per image, where the CPU computes bfloat16 natively: per row, the float32 image's total
  over the bfloat16 one's;
- the fastest row's seconds: under 20 s in float32, under 13 s in bfloat16.
A figure built on UNet calls that were counted rather than timed (`--calls`) is marked "~", and so is every ratio
that uses one.
"""
import datetime
import json
import os
import platform
import shlex

import torch

from .common import markdown_table

DEFAULT, LCM_TAESD = "default: PLMS 50, guidance 7.5, VAE", "LCM 4, guidance 1, TAESD"
GOALS = {"float32": 20.0, "bfloat16": 13.0}  # the fastest row's seconds


def approx(value: float, estimated: bool, unit: str = "") -> str:
    return f"{'~' if estimated else ''}{value:,.2f}{unit}"


def ratios(rows: list) -> dict:
    """The targets' ratios from one run's rows: {"speedups": default ÷ LCM 4 + TAESD (alone, and with ToMe) per dtype
    and library, "bfloat16": float32 ÷ bfloat16 per row and library, "fastest": the fastest row per dtype and
    library, "versus": minitome ÷ diffusers per row}; each entry says whether it holds an estimate."""
    figure = {(r["run"], r["method"], r["dtype"], side): r[side] for r in rows for side in ("minitome", "diffusers")
              if side in r}
    out = {"speedups": [], "bfloat16": [], "fastest": [], "versus": []}
    for (run, method, dtype, side), f in figure.items():
        if run == LCM_TAESD and (method == "alone" or method.startswith("ToMe")) and (DEFAULT, "alone", dtype, side) in figure:
            default = figure[DEFAULT, "alone", dtype, side]
            out["speedups"].append({"dtype": dtype, "library": side, "method": method, "ratio": default["total"] / f["total"],
                                    "estimated": default["estimated"] or f["estimated"]})
        if dtype == "float32" and (run, method, "bfloat16", side) in figure:
            half = figure[run, method, "bfloat16", side]
            out["bfloat16"].append({"run": run, "method": method, "library": side, "ratio": f["total"] / half["total"],
                                    "estimated": f["estimated"] or half["estimated"]})
    for dtype, side in dict.fromkeys((k[2], k[3]) for k in figure):  # in the rows' order
        (run, method, _, _), f = min(((k, f) for k, f in figure.items() if k[2:] == (dtype, side)), key=lambda kf: kf[1]["total"])
        out["fastest"].append({"dtype": dtype, "library": side, "run": run, "method": method, "seconds": f["total"],
                               "estimated": f["estimated"]})
    for r in rows:
        if "ratio" in r:
            out["versus"].append({"run": r["run"], "method": r["method"], "dtype": r["dtype"], "ratio": r["ratio"],
                                  "estimated": r["minitome"]["estimated"] or r["diffusers"]["estimated"]})
    return out


def met(ok: bool) -> str:
    return "met" if ok else "not met"


def targets(result: dict, r: dict) -> list:
    """The target table's rows: [target, measured, met or not]."""
    lines = []
    if r["versus"]:
        worst = max(r["versus"], key=lambda v: v["ratio"])
        faster = sum(v["ratio"] <= 1 for v in r["versus"])
        lines.append(["minitome no slower than diffusers on any row (minitome ÷ diffusers ≤ 1)",
                      f"{faster} of {len(r['versus'])} rows; the slowest {approx(worst['ratio'], worst['estimated'], '×')} "
                      f"({worst['run']}, {worst['method']}, {worst['dtype']})", met(faster == len(r["versus"]))])
    for s in r["speedups"]:
        if s["library"] == "minitome":
            goal = 20 if s["method"] == "alone" else 25
            with_tome = "" if s["method"] == "alone" else f" + {s['method']}"
            lines.append([f"LCM 4 + TAESD{with_tome} ≥ {goal}× faster than the default, {s['dtype']}",
                          approx(s["ratio"], s["estimated"], "×"), met(s["ratio"] >= goal)])
    if result["bfloat16"] == "not native here":
        lines.append(["bfloat16 ≥ 1.4× faster than float32 per image", "bfloat16 is not native here: not measured", "–"])
    mine = [b for b in r["bfloat16"] if b["library"] == "minitome"]
    if mine:
        low, high = min(mine, key=lambda b: b["ratio"]), max(b["ratio"] for b in mine)
        default = next((b for b in mine if b["run"] == DEFAULT and b["method"] == "alone"), low)
        lines.append(["bfloat16 ≥ 1.4× faster than float32 per image",
                      f"default {approx(default['ratio'], default['estimated'], '×')}; rows from "
                      f"{approx(low['ratio'], low['estimated'], '×')} ({low['run']}, {low['method']}) to {high:.2f}×",
                      met(low["ratio"] >= 1.4)])
    for f in r["fastest"]:
        if f["library"] == "minitome" and f["dtype"] in GOALS:
            lines.append([f"the fastest row under {GOALS[f['dtype']]:g} s, {f['dtype']}",
                          f"{approx(f['seconds'], f['estimated'], ' s')} ({f['run']}, {f['method']})",
                          met(f["seconds"] < GOALS[f["dtype"]])])
    return lines


def stage_rows(result: dict) -> list:
    rows = []
    for row in result["rows"]:
        for side in ("minitome", "diffusers"):
            if side not in row:
                continue
            f = row[side]
            per_call = ", ".join(f"{k} {approx(s, False)}" if len(f["per_call"]) > 1 else approx(s, False)
                                 for k, s in f["per_call"].items())
            calls = f"{f['calls']} × {f['latents']}" + (f" ({f['timed']} timed)" if f["estimated"] else "")
            versus = approx(row["ratio"], row["minitome"]["estimated"] or row["diffusers"]["estimated"], "×") \
                if side == "diffusers" else ""
            rows.append([row["run"], row["method"], row["dtype"], side, calls, f"{f['text']:.2f}",
                         approx(f["unet"], f["estimated"]), per_call, f"{f['decoder']:.2f}", f"{f['png']:.2f}",
                         f"{f['rest']:.2f}", approx(f["total"], f["estimated"])] + ([versus] if result["compare"] else []))
    return rows


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def versions(compare: bool) -> str:
    from importlib.metadata import version
    text = f"torch {torch.__version__.split('+')[0]}"
    if compare:
        text += f", diffusers {version('diffusers')} + tomesd {version('tomesd')} + DeepCache {version('DeepCache')}"
    return text


def markdown(args, result: dict, r: dict) -> str:
    w, h = result["size"]
    threads = torch.get_num_threads()
    where = f"{cpu_name()}, {os.cpu_count()} cores ({threads} thread{'s' if threads > 1 else ''})"
    weights = args.weights or ("random weights of the tests' tiny shapes" if args.tiny else "random SD 1.5-size weights")
    lines = [f"## {datetime.date.today().isoformat()} — one {w}×{h} image, prompt to PNG, {where}, "
             f"{' and '.join(result['dtypes'])}, {versions(result['compare'])}", "",
             f"Command: `python -m minitome.lab.bench {' '.join(map(shlex.quote, args.argv))}` ({weights}; bfloat16 "
             f"{result['bfloat16'] or 'as --dtype says'}).", "",
             markdown_table(["run", "method", "dtype", "library", "UNet calls × latents", "text s", "UNet s", "s per UNet call",
                             "decoder s", "PNG s", "rest s", "total s"] + (["minitome ÷ diffusers"] if result["compare"]
                                                                           else []), stage_rows(result)), ""]
    if any(row[side]["estimated"] for row in result["rows"] for side in ("minitome", "diffusers") if side in row):
        n = result["calls"]
        lines += [f"~ estimated: the first {n} UNet call{'s' if n > 1 else ''} of each run timed (with DeepCache at least "
                  "two: a whole call and a shallow one), each later call counted at the mean of the timed calls of its "
                  "kind; the text encoder, the decoder and the PNG measured in every run.", ""]
    lines += ["The LCM runs use the plain UNet at guidance 1 (one latent per call): an LCM-LoRA fused into it changes no "
              "shape and no amount of work, so it changes no timing. \"rest\" is the tokenizer, the sampler's own "
              "arithmetic and the image's conversion to 8 bits.", "",
              markdown_table(["target", "measured", ""], targets(result, r))]
    return "\n".join(lines)


def report(args, result: dict, results: dict):
    """The ratios into the result; printed as JSON (--json) or as the markdown block."""
    result["ratios"] = ratios(result["rows"])
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(markdown(args, result, result["ratios"]), flush=True)
