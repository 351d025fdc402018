"""What the lab's tools share: a markdown table, a stopwatch, a random-weight UNet, the real input of a
transformer block, and images compared with a reference.

Where this sits: `bench.py`, `measure.py`, `ablate.py`, `ablate_tokens.py` and `visualize.py` import
these, so that each of them is the one way that thing is done in the lab.
"""
import statistics
import sys
import time

import numpy as np
import torch
from PIL import ImageFont

from minitome.pipeline import generate
from unet import UNetConfig, UNetModel
from unet.attention import BasicTransformerBlock
from .quality import psnr, ssim

# the pictures' font: Pillow's bundled TrueType font (Aileron, drawn by FreeType), at a size pinned here. ImageDraw's
# own default is the same font at 10 pixels, where a space is drawn as wide as the gap between two letters and a
# caption reads "twostrings"; at 13 the space is more than twice that gap (tests/test_visualize.py measures it in
# the drawn pixels). ASCII only: it has no Greek letters or arrows.
FONT = ImageFont.load_default(size=13)

PROMPTS = ["a photograph of an astronaut riding a horse", "a watercolor painting of a fox in the snow"]  # image quality's



def markdown_table(head: list, rows: list) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def sync(device):
    """Wait for the device to finish (CUDA runs asynchronously), so that a clock around it measures the work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def stopwatch(fn, repeats: int = 3, device="cpu", warmup: bool = True):
    """(fn's last result, the median seconds of `repeats` calls), after one untimed warm-up call."""
    if warmup:
        fn()
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def random_unet(config: UNetConfig = UNetConfig(), device="cpu", dtype=torch.float32, seed: int = 0) -> UNetModel:
    """A UNet of `config`'s shape with torch's default random initialisation from `seed`: the same weights in
    every process that asks (the benchmark hands them to diffusers too). Plain, channels-last, not packed."""
    torch.manual_seed(seed)
    return UNetModel(config).to(device=device, dtype=dtype).eval().requires_grad_(False).channels_last()


def block_input(sd, prompt: str, size: int, steps: int, block: int = 0, call: int = -1, seed: int = 0):
    """Generate an image and catch the input of transformer block `block` (in the order a call runs them)
    at UNet call `call` (-1: the last), with a forward pre-hook: returns (tokens (1, N, C) of the prompt's
    half of the guidance batch, (h, w), the image)."""
    blocks = [m for m in sd.unet.modules() if isinstance(m, BasicTransformerBlock)]
    if not 0 <= block < len(blocks):
        raise ValueError(f"block must be in 0 … {len(blocks) - 1}, got {block}")
    caught, calls = {}, [0]

    def catch(module, args):  # args of BasicTransformerBlock.forward: (x, context, hw, call)
        if call in (-1, calls[0]):
            caught["tokens"], caught["hw"] = args[0][-1:].float().cpu(), args[2]  # [uncond, cond]: the cond half
        calls[0] += 1

    hook = blocks[block].register_forward_pre_hook(catch)
    try:
        image = generate(sd, prompt, steps=steps, seed=seed, width=size, height=size)[0]
    finally:
        hook.remove()
    if "tokens" not in caught:
        raise ValueError(f"call must be -1 or in 0 … {calls[0] - 1} (the UNet calls of {steps} steps), got {call}")
    return caught["tokens"], caught["hw"], image


def image_quality(weights_path, device, dtype, size: tuple, steps: int, runs: dict) -> dict:
    """label → (PSNR, SSIM) of the images each run's settings make (runs: label → `generate` keyword arguments,
    the first the reference) against the first's, from the weights at weights_path, same prompts and seeds."""
    import weights
    from unet.packed_conv import packed
    sd = weights.load(weights_path, device=device, dtype=dtype)
    packed(sd.unet.channels_last())
    images, scores = ImageComparison(sd, PROMPTS, size, steps), {}
    for label, settings in runs.items():
        scores[label] = images.scores(**settings)
        print(f"  quality: {label} done", file=sys.stderr, flush=True)
    return scores


class ImageComparison:
    """PSNR / SSIM of images against the first ones asked for: `scores(tome, todo=…, deep_cache=…)` generates
    the prompts' images with those settings and returns (PSNR, SSIM) averaged over the prompts; `cells` as text."""

    def __init__(self, sd, prompts: list, size: tuple, steps: int):
        self.sd, self.prompts, self.size, self.steps, self.reference = sd, prompts, size, steps, None

    def images(self, tome=None, **accelerations) -> list:
        """The prompts' images, with ToMe (a config or schedule) and any other accelerations `generate` takes."""
        width, height = self.size
        return [np.asarray(generate(self.sd, p, steps=self.steps, seed=i, width=width, height=height, tome=tome,
                                    **accelerations)[0]) for i, p in enumerate(self.prompts)]

    def scores(self, tome=None, **accelerations) -> tuple:
        images = self.images(tome, **accelerations)
        self.reference = images if self.reference is None else self.reference
        return (float(np.mean([psnr(a, b) for a, b in zip(images, self.reference)])),
                float(np.mean([ssim(a, b) for a, b in zip(images, self.reference)])))

    def cells(self, tome) -> list:
        quality = self.scores(tome)
        return [f"{quality[0]:.1f}", f"{quality[1]:.3f}"]
