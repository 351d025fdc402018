"""`python -m minitome.lab.bench --samplers`: what an image costs with each sampler, minitome beside diffusers.

Where this sits: bench.py's `--samplers` mode (it needs diffusers, tomesd and DeepCache: `make bench-compare`).
The samplers people use, at their usual counts: DPM++ 2M Karras 20, Euler a 20, DDIM 50 and PLMS 50 (51 UNet
calls), each alone and with ToMe, ToDo and DeepCache. An image's time is composed:

- the seconds of each kind of UNet call the run makes, timed in one child process, interleaved round by round
  (measure.py): minitome's plain call, with ToMe, with ToDo, DeepCache's shallow branch; diffusers' plain call,
  with tomesd, and the shallow branch under DeepCache's `DeepCacheSDHelper` (ToDo has no package: no figure);
- times how many calls of each kind the run makes (a sampler's count of calls, and DeepCache's whole calls
  every `interval`; the helper counts a call by its timestep's first place in the schedule, so PLMS's repeated
  timestep gives it another count than minitome's, which counts calls);
- plus the sampler's own arithmetic: its loop timed on a model that costs nothing (minitome's sampler, or the
  diffusers scheduler's `scale_model_input` and `step`).

The text encoder and the VAE decoder are the same for every sampler and method, and left out. `--check-image`
runs one whole DPM++ 2M Karras image and compares it with its composed figure.
"""
import dataclasses
import sys

import torch

from sampler import call_timesteps, sample, unet_calls
from .common import markdown_table, stopwatch
from .jobs import CallKind, Job
from .methods import Method
from .runner import each_table, paired, run_child

RUNS = (("DPM++ 2M Karras", "dpm++2m", "karras", 20), ("Euler a", "euler-a", "leading", 20),
        ("DDIM", "ddim", "leading", 50), ("PLMS", "plms", "leading", 50))


def call_kinds(args) -> list:
    tome, todo = {"ratio": args.tome_ratio}, {"factor": args.todo_factor}
    return [CallKind("none"), CallKind("ToMe", tome=tome), CallKind("ToDo", todo=todo),
            CallKind("DeepCache shallow branch", cached=True), CallKind("none", impl="diffusers"),
            CallKind("ToMe", impl="diffusers", tome=tome), CallKind("DeepCache shallow branch", impl="diffusers", cached=True)]


def methods(args) -> list:
    return [Method("alone"), Method(f"ToMe {args.tome_ratio:g}", tome={"ratio": args.tome_ratio}),
            Method(f"ToDo {args.todo_factor}", todo={"factor": args.todo_factor}),
            Method(f"DeepCache {args.deepcache_interval}", deep_cache={"interval": args.deepcache_interval, "branch": 0})]


def helper_counts(method: Method, sampler: str, steps: int, spacing: str) -> dict:
    """The calls of each kind diffusers makes: as minitome's, except DeepCacheSDHelper's whole calls, which come
    where the first place of the call's timestep in the schedule is a multiple of the interval."""
    calls = unet_calls(sampler, steps)
    if method.deep_cache is None:
        return method.counts(calls)
    ts = call_timesteps(sampler, steps, spacing)  # also the diffusers scheduler's `timesteps`, repeats included
    whole = sum(ts.index(t) % method.deep_cache["interval"] == 0 for t in ts)
    return {"none": whole, "DeepCache shallow branch": calls - whole}


def diffusers_scheduler(sampler: str, spacing: str):
    """The diffusers scheduler of that name, from SD 1.5's scheduler config as its pipeline loads it."""
    import diffusers
    config = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                     skip_prk_steps=True, steps_offset=1).config
    name, extra = {"plms": ("PNDMScheduler", {}), "ddim": ("DDIMScheduler", {"clip_sample": False}),
                   "euler": ("EulerDiscreteScheduler", {}), "euler-a": ("EulerAncestralDiscreteScheduler", {}),
                   "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"})}[sampler]
    spacing_config = {"timestep_spacing": "linspace", "use_karras_sigmas": True} if spacing == "karras" else {
        "timestep_spacing": spacing}
    return getattr(diffusers, name).from_config(config, **extra, **spacing_config)


def loop_seconds(sampler: str, spacing: str, steps: int, latent: list, repeats: int) -> tuple:
    """(minitome's, diffusers') seconds for a sampler's own arithmetic: its loop on a model that costs nothing."""
    noise = torch.randn(1, 4, *latent, generator=torch.Generator().manual_seed(0))
    eps = torch.randn_like(noise)
    free = lambda x, t: eps  # noqa: E731
    ours = stopwatch(lambda: sample(sampler, free, noise, steps, spacing, generator=torch.Generator()), repeats)[1]
    scheduler = diffusers_scheduler(sampler, spacing)

    def diffusers_loop():
        generator = torch.Generator()
        scheduler.set_timesteps(steps)
        x = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            scheduler.scale_model_input(x, t)
            extra = {"generator": generator} if sampler == "euler-a" else {}
            x = scheduler.step(eps, t, x, **extra).prev_sample
        return x
    return ours, stopwatch(diffusers_loop, repeats)[1]


def measure_samplers(job: Job, args, label: str) -> dict:
    kinds = [dataclasses.asdict(k) for k in call_kinds(args)]
    timed = {(c["impl"], c["label"]): c for c in run_child(dataclasses.replace(job, calls=kinds), label)["calls"]}
    for (impl, _), c in timed.items():
        c["speedup"] = paired(timed[(impl, "none")]["times"], c["times"])
    rows = []
    for name, sampler, spacing, steps in RUNS:
        loops = loop_seconds(sampler, spacing, steps, job.latent, job.repeats)
        for method in methods(args):
            counts = {"minitome": method.counts(unet_calls(sampler, steps)),
                      "diffusers": helper_counts(method, sampler, steps, spacing)}
            seconds = {}
            for impl, loop in zip(("minitome", "diffusers"), loops):
                if all((impl, kind) in timed for kind in counts[impl]):
                    seconds[impl] = loop + sum(n * timed[(impl, kind)]["seconds"] for kind, n in counts[impl].items())
            rows.append({"sampler": name, "steps": steps, "method": method.label, "calls": unet_calls(sampler, steps),
                         "counts": counts, "seconds": seconds, "loop_seconds": dict(zip(("minitome", "diffusers"), loops))})
    result = {"calls": list(timed.values()), "images": rows}
    if args.check_image:
        name, sampler, spacing, steps = RUNS[0]
        print(f"{label} a whole {name} {steps} image, alone", file=sys.stderr, flush=True)
        whole = run_child(dataclasses.replace(job, part="image", batch=1, method={}, steps=steps, sampler=sampler,
                                              spacing=spacing), label)
        composed = rows[0]["seconds"]["minitome"]
        result["check"] = {"run": f"{name} {steps}", "composed": composed, "measured": whole["seconds"],
                           "difference": composed / whole["seconds"] - 1}
    return result


def compare_samplers(args, device, dtype, name: str, results: dict) -> int:
    """--samplers: per size and attention kind, the per-call and per-image tables."""
    return each_table(args, device, dtype, results, lambda job, label, size: measure_samplers(job, args, label),
                      lambda size, attention: f"{size[0]}×{size[1]}, {attention} attention, one guided image (batch 2 "
                                              f"per call), {results['dtype']}, {name}", tables)


def tables(result: dict) -> str:
    calls = [[c["impl"], c["label"], f"{c['seconds']:.2f}", f"{c['speedup']:.2f}×"] for c in result["calls"]]
    images = []
    for r in result["images"]:
        ours, theirs = r["seconds"]["minitome"], r["seconds"].get("diffusers")
        images.append([r["sampler"], r["steps"], r["method"], r["calls"], f"{ours:,.1f}",
                       f"{theirs:,.1f}" if theirs else "–", f"{theirs / ours:.2f}×" if theirs else "–",
                       f"{1000 * r['loop_seconds']['minitome']:.0f} / {1000 * r['loop_seconds']['diffusers']:.0f}"])
    text = [markdown_table(["implementation", "UNet call", "s/call", "speed-up"], calls), "",
            "Per image: the UNet calls and the sampler's arithmetic, composed (text encoder and decoder left out)", "",
            markdown_table(["sampler", "steps", "method", "UNet calls", "minitome s", "diffusers s",
                            "minitome faster by", "sampler ms (minitome / diffusers)"], images)]
    if "check" in result:
        c = result["check"]
        text += ["", f"Check, {c['run']}: composed {c['composed']:.0f} s, a whole run measured {c['measured']:.0f} s "
                     f"({100 * c['difference']:+.1f}%)"]
    return "\n".join(text)
