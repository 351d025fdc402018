"""`python -m minitome.lab.bench --hires`: what a hires image costs, and what merging on its second pass buys.

Where this sits: bench.py's `--hires` mode (it needs diffusers, tomesd and DeepCache: `make bench-compare`).
The chain A1111's "hires fix" runs: DPM++ 2M Karras, 20 steps at the first size (`--sizes`, 512² by default);
the latents upscaled 2× ("latent", bilinear); an img2img pass of 20 steps at strength 0.5 (its last 10 steps)
at the large size; then the VAE decoder at the large size. The methods: none; ToMe (`--tome-ratio`) on the hires
pass only, as A1111's "Token merging ratio hr"; ToDo (`--todo-factor`) on both passes; DeepCache
(`--deepcache-interval`, branch 0) on both passes, alone and with the hires pass's ToMe. diffusers' side is the
same chain: its text-to-image pipeline with `output_type="latent"`, `interpolate`, its img2img pipeline; tomesd
patched for the second pass, `DeepCacheSDHelper` enabled afresh for each pass (ToDo has no package: no figure).

An image's time is composed, as `--samplers` composes it (samplers.py): each kind of UNet call timed, one child
process per size, interleaved round by round; times the calls of each kind the chain makes; plus each
pass's sampler arithmetic; plus the VAE decoder at the large size (and, for the pixel path, the decoder at the
first size and the encoder at the large one), each timed alone on SD 1.5's VAE. The text encoder (two prompts,
the same for every row) is left out. `--check-image` runs one whole chain (DeepCache on both passes, ToMe on the
hires pass) and compares it with its composed figure.
"""
import dataclasses
import sys

import torch

from sampler import call_timesteps, sample, start_step, unet_calls
from .common import markdown_table, stopwatch
from .jobs import CallKind, Job
from .methods import Method
from .runner import each_table, paired, run_child
from .samplers import diffusers_scheduler

SAMPLER, SPACING, STEPS = "dpm++2m", "karras", 20                  # the first pass
SCALE, HIRES_STEPS, HIRES_STRENGTH = 2, 20, 0.5                    # the hires pass: its last int(20 · 0.5) = 10 steps
START = start_step(HIRES_STEPS, HIRES_STRENGTH)


def call_kinds(args, hires: bool) -> list:
    """The kinds of UNet call the chain makes at one size: ToMe's only on the hires pass."""
    tome, todo = {"ratio": args.tome_ratio}, {"factor": args.todo_factor}
    ours = [CallKind("none"), CallKind("ToDo", todo=todo), CallKind("DeepCache shallow branch", cached=True)]
    theirs = [CallKind("none", impl="diffusers"), CallKind("DeepCache shallow branch", impl="diffusers", cached=True)]
    if hires:
        ours += [CallKind("ToMe", tome=tome), CallKind("DeepCache shallow + ToMe", tome=tome, cached=True)]
        theirs += [CallKind("ToMe", impl="diffusers", tome=tome),
                   CallKind("DeepCache shallow + ToMe", impl="diffusers", tome=tome, cached=True)]
    return ours + theirs


def methods(args) -> list:
    """(label, the first pass's method, the hires pass's method)."""
    tome, todo = {"ratio": args.tome_ratio}, {"factor": args.todo_factor}
    cache = {"interval": args.deepcache_interval, "branch": 0}
    return [("none", Method("none"), Method("none")),
            (f"ToMe {args.tome_ratio:g} on the hires pass", Method("none"), Method("ToMe", tome=tome)),
            (f"ToDo {args.todo_factor}", Method("ToDo", todo=todo), Method("ToDo", todo=todo)),
            (f"DeepCache {args.deepcache_interval}", Method("DeepCache", deep_cache=cache), Method("DeepCache", deep_cache=cache)),
            (f"DeepCache {args.deepcache_interval} + ToMe {args.tome_ratio:g} on the hires pass",
             Method("DeepCache", deep_cache=cache), Method("DeepCache + ToMe", tome=tome, deep_cache=cache))]


def counts(method: Method, start: int, impl: str) -> dict:
    """The calls of each kind one pass makes (a pass from step `start` of STEPS). minitome's DeepCache makes a whole
    call at its calls 0, interval, 2·interval, … of the pass; DeepCacheSDHelper, enabled for the pass, where the first
    place of the call's timestep in the scheduler's whole list, less the pass's first, is a multiple of the interval."""
    calls = unet_calls(SAMPLER, STEPS, start)
    kinds = method.counts(calls)
    if method.deep_cache is None or impl == "minitome":
        return kinds
    everything = call_timesteps(SAMPLER, STEPS, SPACING)  # the scheduler's list; the pass runs its calls from `start`
    places = [everything.index(t) for t in call_timesteps(SAMPLER, STEPS, SPACING, start)]
    whole = sum((p - places[0]) % method.deep_cache["interval"] == 0 for p in places)
    shallow = next(k for k in kinds if k.startswith("DeepCache"))
    return {next(k for k in kinds if k != shallow): whole, shallow: calls - whole}


def loop_seconds(latent: list, start: int, repeats: int) -> tuple:
    """(minitome's, diffusers') seconds for one pass's own arithmetic from step `start`: the sampler's loop on a model
    that costs nothing (with diffusers' img2img, `add_noise` and the loop over the timesteps it slices)."""
    g = torch.Generator().manual_seed(0)
    noise, init = torch.randn(1, 4, *latent, generator=g), torch.randn(1, 4, *latent, generator=g)
    eps = torch.randn_like(noise)
    free = lambda x, t: eps  # noqa: E731
    ours = stopwatch(lambda: sample(SAMPLER, free, noise, STEPS, SPACING, generator=torch.Generator(), start=start,
                                               init=init if start else None), repeats)[1]
    scheduler = diffusers_scheduler(SAMPLER, SPACING)

    def diffusers_loop():
        scheduler.set_timesteps(STEPS)
        timesteps = scheduler.timesteps[start:]
        if start:
            scheduler.set_begin_index(start)
            x = scheduler.add_noise(init, noise, timesteps[:1])
        else:
            x = noise * scheduler.init_noise_sigma
        for t in timesteps:
            scheduler.scale_model_input(x, t)
            x = scheduler.step(eps, t, x).prev_sample
        return x
    return ours, stopwatch(diffusers_loop, repeats)[1]


def vae_seconds(job: Job, parts: dict, label: str) -> dict:
    """part → impl → seconds of SD 1.5's VAE half on one image, for parts {name: (half, latent)}: one process, once
    each (a VAE call takes seconds to minutes, and drift within one is small beside it)."""
    calls = [{"impl": impl, "half": half, "latent": latent, "part": part}
             for part, (half, latent) in parts.items() for impl in ("minitome", "diffusers")]
    timed = run_child(dataclasses.replace(job, part="vae", batch=1, repeats=1, calls=calls), f"{label} VAE")["vae"]
    return {part: {c["impl"]: c["seconds"] for c in timed if c["part"] == part} for part in parts}


def measure_hires(job: Job, args, label: str) -> dict:
    small, large = job.latent, [SCALE * n for n in job.latent]
    timed = {}
    for latent, pass_ in ((small, "first"), (large, "hires")):
        # one process per size: minitome's packed convolutions lay their weights out again for each new input size
        # (unet/packed_conv.py), which a chain does once per pass and interleaved sizes would do at every call
        kinds = [dataclasses.asdict(k) for k in call_kinds(args, pass_ == "hires")]
        calls = run_child(dataclasses.replace(job, latent=latent, calls=kinds), f"{label} {8 * latent[1]}x{8 * latent[0]}")
        for c in calls["calls"]:
            c["pass"] = pass_
            timed[(pass_, c["impl"], c["label"])] = c
    for (pass_, impl, _), c in timed.items():
        c["speedup"] = paired(timed[(pass_, impl, "none")]["times"], c["times"])
    loops = {"first": loop_seconds(small, 0, job.repeats), "hires": loop_seconds(large, START, job.repeats)}
    loops_by_impl = {impl: {p: loops[p][i] for p in loops} for i, impl in enumerate(("minitome", "diffusers"))}
    vae = vae_seconds(job, {"decoder": ("decoder", large), "decoder at the first size": ("decoder", small),
                            "encoder": ("encoder", large)}, label)
    rows = []
    for name, first, hires in methods(args):
        row = {"method": name, "counts": {}, "unet_seconds": {}, "seconds": {}, "hires_unet_seconds": {}}
        for i, impl in enumerate(("minitome", "diffusers")):
            passes = {"first": counts(first, 0, impl), "hires": counts(hires, START, impl)}
            row["counts"][impl] = passes
            if not all((p, impl, kind) in timed for p, kinds in passes.items() for kind in kinds):
                continue  # ToDo: no package
            unet = {p: loops[p][i] + sum(n * timed[(p, impl, kind)]["seconds"] for kind, n in kinds.items())
                    for p, kinds in passes.items()}
            row["hires_unet_seconds"][impl] = unet["hires"]
            row["unet_seconds"][impl] = unet["first"] + unet["hires"]
            row["seconds"][impl] = row["unet_seconds"][impl] + vae["decoder"][impl]
        rows.append(row)
    for row in rows:
        none = rows[0]
        row["speedup"] = {impl: none["seconds"][impl] / s for impl, s in row["seconds"].items()}
        row["hires_speedup"] = {impl: none["hires_unet_seconds"][impl] / s for impl, s in row["hires_unet_seconds"].items()}
    result = {"calls": list(timed.values()), "vae": vae, "loops": loops_by_impl, "images": rows,
              "chain": {"sampler": SAMPLER, "spacing": SPACING, "steps": STEPS, "scale": SCALE, "hires_steps": HIRES_STEPS,
                        "hires_strength": HIRES_STRENGTH, "hires_calls": unet_calls(SAMPLER, STEPS, START)}}
    if args.check_image:  # the row whose composition has the most parts: DeepCache on both passes, ToMe on the second
        name, first, hires = methods(args)[-1]
        print(f"{label} a whole hires image: {name}", file=sys.stderr, flush=True)
        whole = run_child(dataclasses.replace(job, part="hires-image", batch=1, steps=STEPS, sampler=SAMPLER, spacing=SPACING,
                                              method={"first": first.settings(), "hires": hires.settings()}), label)
        composed = rows[-1]["seconds"]["minitome"]
        result["check"] = {"run": name, "composed": composed, "measured": whole["seconds"],
                           "difference": composed / whole["seconds"] - 1}
    return result


@torch.no_grad()
def hires_image(unet, vae, job: Job, eps_model_of) -> float:
    """Seconds for one whole chain, as the pipeline runs it (measure.py's "hires-image" job): the first pass from
    noise with job.method["first"], the latents upscaled, the hires pass with job.method["hires"] from step START,
    the decoder at the large size. eps_model_of(context, method, calls) makes a pass's guided noise estimate."""
    import time
    from minitome.vae import SCALE as LATENT_SCALE
    device, dtype = job.torch_device_dtype()
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(1, 4, *job.latent, generator=g).to(device, dtype)
    context = torch.randn(2, 77, unet.config.context_dim, generator=g).to(device, dtype)
    large = [SCALE * n for n in job.latent]
    start = time.perf_counter()
    first = eps_model_of(context, job.method["first"], unet_calls(SAMPLER, STEPS))
    latents = sample(SAMPLER, first, noise, STEPS, SPACING, generator=torch.Generator().manual_seed(1))
    init = torch.nn.functional.interpolate(latents, size=large, mode="bilinear")
    second = eps_model_of(context, job.method["hires"], unet_calls(SAMPLER, STEPS, START))
    hires_noise = torch.randn(1, 4, *large, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    latents = sample(SAMPLER, second, hires_noise, HIRES_STEPS, SPACING, generator=torch.Generator(), start=START,
                                init=init)
    vae(latents / LATENT_SCALE)
    return time.perf_counter() - start


def compare_hires(args, device, dtype, name: str, results: dict) -> int:
    """--hires: per first size and attention kind, the per-call and per-image tables."""
    return each_table(args, device, dtype, results, lambda job, label, size: measure_hires(job, args, label),
                      lambda size, attention: f"{size[0]}×{size[1]} → {SCALE * size[0]}×{SCALE * size[1]}, {attention} "
                                              f"attention, one guided image (batch 2 per call), {results['dtype']}, {name}",
                      tables)


def tables(result: dict) -> str:
    calls = [[c["pass"], c["impl"], c["label"], f"{c['seconds']:.2f}", f"{c['speedup']:.2f}×"] for c in result["calls"]]
    vae = [[part, f"{s['minitome']:.1f}", f"{s['diffusers']:.1f}"] for part, s in result["vae"].items()]
    images = []
    for r in result["images"]:
        ours, theirs = r["seconds"]["minitome"], r["seconds"].get("diffusers")
        hires = r["hires_unet_seconds"]
        images.append([r["method"], f"{hires['minitome']:,.1f}", f"{r['hires_speedup']['minitome']:.2f}×",
                       f"{hires['diffusers']:,.1f}" if "diffusers" in hires else "–", f"{ours:,.1f}",
                       f"{r['speedup']['minitome']:.2f}×", f"{theirs:,.1f}" if theirs else "–",
                       f"{theirs / ours:.2f}×" if theirs else "–"])
    c = result["chain"]
    text = [markdown_table(["pass", "implementation", "UNet call", "s/call", "speed-up"], calls), "",
            markdown_table(["VAE part", "minitome s", "diffusers s"], vae), "",
            f"Per image: {c['steps']} DPM++ 2M Karras steps, ×{c['scale']} latent upscale, then {c['hires_calls']} hires "
            f"calls (steps {c['hires_steps']}, strength {c['hires_strength']}), then the decoder, composed "
            "(the text encoder left out)", "",
            markdown_table(["method", "hires pass UNet s (minitome)", "hires pass speed-up", "hires pass UNet s (diffusers)",
                            "minitome s/image", "image speed-up", "diffusers s/image", "minitome faster by"], images)]
    pixel = {impl: result["vae"]["decoder at the first size"][impl] + result["vae"]["encoder"][impl] for impl in ("minitome", "diffusers")}
    text += ["", f"The pixel path (`--hires-upscale lanczos`) adds the decoder at the first size and the encoder at the "
                 f"large one to every row: {pixel['minitome']:.1f} s (minitome), {pixel['diffusers']:.1f} s (diffusers)"]
    if "check" in result:
        k = result["check"]
        text += ["", f"Check, {k['run']}: composed {k['composed']:.0f} s, a whole chain measured {k['measured']:.0f} s "
                     f"({100 * k['difference']:+.1f}%)"]
    return "\n".join(text)
