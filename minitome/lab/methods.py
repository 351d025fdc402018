"""`python -m minitome.lab.bench --methods`: ToMe and the methods that followed it, measured side by side.

Where this sits: bench.py's `--methods` mode; the calls are timed by measure.py in one process per table,
interleaved. Two tables per image size and attention kind:

1. per UNet call, every kind of call the methods make: unaccelerated; ToMe (planning in the call); ToMe
   applying a plan kept from an earlier call; ToDo; CA-ToMe planning, and applying a kept plan; DeepCache's
   shallow branch alone, and with ToDo or ToMe in it. Seconds, speed-up against the unaccelerated call of
   the same round, FLOPs, the time ToMe's own functions take, and the tokens of each merged block.
2. per image, a `--steps`-step PLMS run with classifier-free guidance (steps + 1 UNet calls), composed:
   how many calls of each kind each method makes, times their measured seconds, plus the text encoder
   and the VAE decoder (`--check-image` runs one method's whole run, to check the composition).
   With --weights and --quality-steps, the PSNR / SSIM of each method's images against the unaccelerated.

The methods: ToMe (`--tome-ratio`); ToMe with its plan reused (`--reuse` calls per plan); ToDo
(`--todo-factor`); CA-ToMe (`--ca-threshold`, planning at the calls of ca-tome's best schedule, its
CONFIG_3); DeepCache (`--deepcache-interval`, branch 0), alone and with ToDo and with ToMe in it.
"""
import dataclasses
import math
import sys

import torch

from minitome.todo import ToDoConfig
from sampler import unet_calls
from minitome.deepcache import DeepCacheConfig
from .common import image_quality, markdown_table
from .jobs import CallKind, Job, tome_from
from .runner import each_table, paired, run_child

# ca-tome's CONFIG_3 (its best schedule, for 50 steps): the `inference_step`s (a UNet call's index + 1) at
# which a block plans anew; the first call always plans
CA_TOME_CONFIG_3 = (0, 8, 11, 13, 20, 25, 30, 35, 45, 46, 47, 48, 49)


def replan_calls(schedule=CA_TOME_CONFIG_3) -> tuple:
    """ca-tome's schedule as the UNet calls (from 0) at which a minitome run makes new plans."""
    return tuple(sorted({0} | {step - 1 for step in schedule if step >= 1}))


def call_kinds(args) -> list:
    """Every kind of UNet call the methods make (a CallKind each), by label."""
    tome = {"ratio": args.tome_ratio}
    ca = {"threshold": args.ca_threshold, "replan_calls": replan_calls()}
    todo = {"factor": args.todo_factor}
    return [CallKind("none"), CallKind("ToMe", tome=tome), CallKind("ToMe, kept plan", tome=tome, reuse=True),
            CallKind("ToDo", todo=todo), CallKind("CA-ToMe", tome=ca), CallKind("CA-ToMe, kept plan", tome=ca, reuse=True),
            CallKind("DeepCache shallow branch", cached=True), CallKind("DeepCache shallow + ToDo", todo=todo, cached=True),
            CallKind("DeepCache shallow + ToMe", tome=tome, cached=True)]


@dataclasses.dataclass
class Method:
    """A way to make an image: its settings (for a whole run) and which kinds of call it makes."""
    label: str
    tome: dict = None
    todo: dict = None
    deep_cache: dict = None

    def counts(self, calls: int) -> dict:
        """Call label → how many such calls a run of `calls` UNet calls makes."""
        whole = "none" if self.todo is None and self.tome is None else ("ToDo" if self.todo else "ToMe")
        if self.deep_cache is not None:
            full = math.ceil(calls / self.deep_cache["interval"])
            shallow = {"none": "DeepCache shallow branch", "ToDo": "DeepCache shallow + ToDo",
                       "ToMe": "DeepCache shallow + ToMe"}[whole]
            return {whole: full, shallow: calls - full}
        if self.tome is not None and self.tome.get("threshold") is not None:
            planning = sum(c < calls for c in self.tome["replan_calls"])
            return {"CA-ToMe": planning, "CA-ToMe, kept plan": calls - planning}
        if self.tome is not None and self.tome.get("reuse", 1) > 1:
            planning = math.ceil(calls / self.tome["reuse"])
            return {"ToMe": planning, "ToMe, kept plan": calls - planning}
        return {whole: calls}

    def settings(self) -> dict:
        return {"tome": self.tome, "todo": self.todo, "deep_cache": self.deep_cache}


def methods(args) -> list:
    tome, todo = {"ratio": args.tome_ratio}, {"factor": args.todo_factor}
    cache = {"interval": args.deepcache_interval, "branch": 0}
    return [Method("none"), Method(f"ToMe {args.tome_ratio:g}", tome=tome),
            Method(f"ToMe {args.tome_ratio:g}, a plan every {args.reuse} calls", tome={**tome, "reuse": args.reuse}),
            Method(f"ToDo {args.todo_factor}", todo=todo),
            Method(f"CA-ToMe threshold {args.ca_threshold:g}, ca-tome's schedule",
                   tome={"threshold": args.ca_threshold, "replan_calls": replan_calls()}),
            Method(f"DeepCache {args.deepcache_interval}", deep_cache=cache),
            Method(f"DeepCache {args.deepcache_interval} + ToDo {args.todo_factor}", todo=todo, deep_cache=cache),
            Method(f"DeepCache {args.deepcache_interval} + ToMe {args.tome_ratio:g}", tome=tome, deep_cache=cache)]


def measure_methods(job: Job, args, label: str, size) -> dict:
    """The two tables' numbers for one size and attention kind (and the whole-run check if asked)."""
    kinds = [dataclasses.asdict(k) for k in call_kinds(args)]
    timed = {c["label"]: c for c in run_child(dataclasses.replace(job, part="time", calls=kinds), label)["calls"]}
    for c in timed.values():
        c["speedup"] = paired(timed["none"]["times"], c["times"])
    parts = run_child(dataclasses.replace(job, part="parts", batch=1), label)
    calls = unet_calls("plms", args.steps)
    images = []
    for method in methods(args):
        counts = method.counts(calls)
        seconds = parts["text_seconds"] + parts["decode_seconds"] + sum(n * timed[k]["seconds"] for k, n in counts.items())
        images.append({"method": method.label, "counts": counts, "seconds": seconds, "settings": method.settings()})
    for row in images:
        row["speedup"] = images[0]["seconds"] / row["seconds"]
    result = {"calls": list(timed.values()), "parts": parts, "images": images}
    if args.check_image:
        method = next(m for m in images if m["method"].startswith("DeepCache") and "+" not in m["method"])
        print(f"{label} a whole {args.steps}-step run: {method['method']}", file=sys.stderr, flush=True)
        whole = run_child(dataclasses.replace(job, part="image", batch=1, method=method["settings"], steps=args.steps), label)
        measured = whole["seconds"] + parts["text_seconds"] + parts["decode_seconds"]
        result["check"] = {"method": method["method"], "composed": method["seconds"], "measured": measured,
                           "difference": method["seconds"] / measured - 1}
    if args.quality_steps:
        runs = {}
        for method in methods(args):
            s = method.settings()
            runs[method.label] = {"tome": tome_from(s["tome"]), "todo": ToDoConfig(**s["todo"]) if s["todo"] else None,
                                  "deep_cache": DeepCacheConfig(**s["deep_cache"]) if s["deep_cache"] else None}
        result["quality"] = image_quality(args.weights, torch.device(job.device), getattr(torch, job.dtype), size,
                                          args.quality_steps, runs)
    return result


def compare_methods(args, device, dtype, name: str, results: dict) -> int:
    """--methods: per size and attention kind, the per-call and per-image tables of methods.py."""
    return each_table(args, device, dtype, results, lambda job, label, size: measure_methods(job, args, label, size),
                      lambda size, attention: f"{size[0]}×{size[1]}, {attention} attention, batch {args.batch}, "
                                              f"{results['dtype']}, {name} (speed-ups against the unaccelerated call "
                                              "of the same round; medians over rounds)",
                      lambda result: tables(result, args), batch=args.batch)


def tables(result: dict, args) -> str:
    calls = [[c["label"], f"{c['seconds']:.2f}", f"{c['speedup']:.2f}×", f"{c['gflop']:,.1f}",
              f"{1000 * c['merge_seconds']:.0f}", ", ".join(sorted(set(c["tokens"]), key=c["tokens"].index)) or "–"]
             for c in result["calls"]]
    quality = result.get("quality", {})
    images = [[r["method"], ", ".join(f"{n} {k}" for k, n in r["counts"].items()), f"{r['seconds']:,.1f}",
               f"{r['speedup']:.2f}×"] + ([f"{quality[r['method']][0]:.1f}", f"{quality[r['method']][1]:.3f}"] if quality else [])
              for r in result["images"]]
    text = [markdown_table(["UNet call", "s/call", "speed-up", "GFLOP", "ToMe's own ms", "tokens"], calls), "",
            f"A {args.steps}-step PLMS image ({unet_calls('plms', args.steps)} UNet calls, batch 2 with guidance), "
            f"composed: the text encoder ({result['parts']['text_seconds']:.2f} s) and the VAE decoder "
            f"({result['parts']['decode_seconds']:.2f} s), plus each call's median seconds above", "",
            markdown_table(["method", "UNet calls", "s/image", "speed-up"] + (["PSNR dB", "SSIM"] if quality else []), images)]
    if "check" in result:
        c = result["check"]
        text += ["", f"Check, {c['method']}: composed {c['composed']:.0f} s, a whole run measured {c['measured']:.0f} s "
                     f"({100 * c['difference']:+.1f}%)"]
    return "\n".join(text)
