"""A clock around a model's own calls: where one image's seconds go, stage by stage (one_image.py's `--image`).

Where this sits: one_image.py puts a `Clock`'s wrappers on the models of a pipeline for one run (`watched`), on
the objects themselves, and takes them off after, so that the pipeline runs as a user runs it: minitome's
`generate` or diffusers' `StableDiffusionPipeline`, unchanged. Each UNet call is timed and given a kind ("whole",
or "shallow": DeepCache's branch on kept deep features). With a budget, the calls after the first `budget` are
stood in for: the call returns the last timed call's output at once, so the run goes on (the sampler, the decoder
run for real) and `composed` counts each such call at the mean seconds of the timed calls of its kind:

    UNet seconds = Σ timed calls + Σ_kind (calls of the kind stood in for) · mean(timed calls of the kind)
                 = Σ_kind (calls of the kind) · mean(timed calls of the kind)
"""
import contextlib
import statistics
import time
from collections import Counter
from pathlib import Path

from minitome.cli.output import png_info
from .common import sync


def composed(calls: list) -> dict:
    """A run's UNet seconds from its calls, [(kind, seconds, or None for a call stood in for)]: each timed call as
    timed, each call stood in for at the mean of the timed calls of its kind."""
    timed = {}
    for kind, seconds in calls:
        if seconds is not None:
            timed.setdefault(kind, []).append(seconds)
    means = {kind: statistics.fmean(s) for kind, s in timed.items()}
    estimated = sum(means[kind] for kind, seconds in calls if seconds is None)
    return {"seconds": sum(sum(s) for s in timed.values()) + estimated, "per_call": means,
            "counts": dict(Counter(kind for kind, _ in calls)), "timed": sum(map(len, timed.values())),
            "estimated_seconds": estimated}


class Clock:
    """One image's seconds, caught around its models' calls: `timed(stage)` and `unet` wrap a model's method. The
    first `budget` UNet calls run and are timed (all of them when budget is None); each later one returns the last
    call's output instead. kind(i, args) names the i-th call's kind ("whole", or "shallow": DeepCache's branch)."""

    def __init__(self, device, budget=None, kind=lambda i, args: "whole"):
        self.device, self.budget, self.kind = device, budget, kind
        self.seconds = {"text": 0.0, "decoder": 0.0, "png": 0.0}
        self.calls, self.last, self.latents = [], None, 0  # latents: the batch a UNet call is handed

    def timed(self, stage: str):
        def wrap(method):
            def run(*args, **kwargs):
                sync(self.device)
                start = time.perf_counter()
                out = method(*args, **kwargs)
                sync(self.device)
                self.seconds[stage] += time.perf_counter() - start
                return out
            return run
        return wrap

    def unet(self, method):
        def call(*args, **kwargs):
            kind, self.latents = self.kind(len(self.calls), args), max(self.latents, args[0].shape[0])
            if self.budget is not None and len(self.calls) >= self.budget:
                self.calls.append((kind, None))
                return self.last
            sync(self.device)
            start = time.perf_counter()
            self.last = method(*args, **kwargs)
            sync(self.device)
            self.calls.append((kind, time.perf_counter() - start))
            return self.last
        return call

    def write(self, image, path: Path, text: str):
        self.timed("png")(lambda: image.save(path, format="PNG", pnginfo=png_info(text)))()

    def figures(self, wall: float) -> dict:
        """The stages' seconds; unet and total with the calls stood in for counted at their kind's mean."""
        unet = composed(self.calls)
        total = wall + unet["estimated_seconds"]
        rest = total - unet["seconds"] - sum(self.seconds.values())
        return {**self.seconds, "unet": unet["seconds"], "per_call": unet["per_call"], "counts": unet["counts"],
                "timed": unet["timed"], "calls": len(self.calls), "latents": self.latents, "estimated": unet["timed"] < len(self.calls),
                "rest": rest, "total": total}


_MISSING = object()


@contextlib.contextmanager
def watched(*pairs):
    """(object, method name, wrap) each: object.name replaced by wrap(object.name) on the object itself for the
    block, then put back as it was (a wrapper DeepCache's helper put there stays)."""
    saved = []
    try:
        for obj, name, wrap in pairs:
            saved.append((obj, name, obj.__dict__.get(name, _MISSING)))
            setattr(obj, name, wrap(getattr(obj, name)))
        yield
    finally:
        for obj, name, before in reversed(saved):
            delattr(obj, name) if before is _MISSING else setattr(obj, name, before)
