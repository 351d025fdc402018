"""Text to image: prompt → tokens → context → sampler with classifier-free guidance → decode → images.

Where this sits: the top of the library; `python -m minitome.sample` and the benchmark call
`generate`. It reads top to bottom, one stage per line of the pipeline, and it makes the same
choices as diffusers' StableDiffusionPipeline, so a seed gives the same image:

- initial noise: torch.randn((B, 4, H/8, W/8), generator=torch.Generator("cpu").manual_seed(seed)),
  drawn on the CPU in the run's dtype and then moved to the device (so the image does not depend on
  the device's random number generator);
- classifier-free guidance: the UNet sees the batch [uncond, cond] in one call, and
  ε = ε_uncond + g · (ε_cond − ε_uncond); with g ≤ 1 only the conditional half runs;
- decoding: image = clamp((vae(latents / vae.scaling) + 1) / 2, 0, 1), then round(image · 255) as uint8: the
  scale is the autoencoder's, 0.18215 for SD's VAE, 1.0 for the tiny one (TAESD, minitome/taesd.py), whose
  encoder draws no noise when a run starts from an image;
ToMe's partitions come from their own generator (seeded with tome.seed), so turning ToMe on never
changes the noise. What a run keeps from one UNet call to the next (that generator, CA-ToMe's kept plans,
DeepCache's deep features) lives in one `Run` (minitome/run.py) that `noise_estimate` makes for each run.
The public functions are doors: they check their arguments once, before any model work; nothing below checks.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from sampler import call_timesteps, sample, start_step, unet_calls
from unet.blocks import guidance_embedding
from unet.call import check_methods
from .checks import Refusal, check_seed, check_size, check_steps, check_strength, real_number, whole_number
from .deepcache import DeepCacheConfig
from .run import Run
from .todo import ToDoConfig


def checked(sd, steps, guidance, seed, width, height, batch, sampler, tome, todo, deep_cache, spacing, init_image,
            strength, init_latents, negative_prompt="") -> tuple:
    """The door of `sample_latents`: every argument checked once, before any model work (a Refusal names the
    first one wrong). Returns the run's (width, height), an init's own, and the step a run from an image starts
    at (0 from pure noise)."""
    if init_image is not None and sd.vae_encoder is None:
        raise Refusal("a run from an image needs the VAE encoder: load the weights with encoder=True")
    factor = sd.vae.config.scale_factor
    for given, size in ((init_image, 1), (init_latents, factor)):
        if given is not None:
            height, width = (n * size for n in given.shape[-2:])
    check_size(width, height, factor)
    from_image = init_image is not None or init_latents is not None
    start = check_strength(steps, strength) if from_image else 0
    check_steps(steps, sampler, spacing, start if from_image else None)  # from an image, only the steps it runs
    if not math.isfinite(real_number(guidance, "guidance")):
        raise Refusal(f"guidance must be a finite number, got {guidance}")
    check_seed(seed), whole_number(batch, 1, "batch")
    if negative_prompt and sd.unet.config.time_cond_proj_dim is not None:  # diffusers drops it silently
        raise Refusal(f"negative_prompt given: an LCM-distilled UNet (time_cond_proj_dim {sd.unet.config.time_cond_proj_dim})"
                      " runs without classifier-free guidance: it has no negative prompt")
    check_methods(None if callable(tome) else tome, todo, deep_cache)
    if callable(tome) and todo is not None:  # a ToMe schedule beside ToDo: each call's config, before any work
        for t in call_timesteps(sampler, steps, spacing, start):
            check_methods(tome(t), todo, deep_cache)
    per_call = batch * (2 if sd.unet.config.guided(guidance) else 1)  # latents per UNet call: the guided pair doubles them
    if sd.unet.config.fewest_normalized((height // factor, width // factor), per_call) < 2:
        raise Refusal(f"{width}x{height} is too small for this UNet at {per_call} latent per call: "
                      "a GroupNorm of its deepest levels would normalise a single value")
    if todo is not None:
        todo.check_latent((height // factor, width // factor))
    if deep_cache is not None:
        deep_cache.check_layout(sd.unet.config)
    for name, given, channels in (("init_image", init_image, 3), ("init_latents", init_latents, 4)):
        if given is not None and (given.dim() != 4 or given.shape[1] != channels or given.shape[0] not in (1, batch)):
            raise Refusal(f"{name} must be (1 or batch = {batch}, {channels}, height, width), got {tuple(given.shape)}")
        if given is not None and not torch.isfinite(given).all():
            raise Refusal(f"{name} holds values that are not finite (NaN or infinity)")
    return width, height, start


@torch.no_grad()
def sample_latents(sd, prompt: str, negative_prompt: str = "", steps: int = 50, guidance: float = 7.5, seed: int = 0,
                   width: int = 512, height: int = 512, batch: int = 1, sampler: str = "plms", tome=None,
                   callback=None, todo: ToDoConfig = None, deep_cache: DeepCacheConfig = None,
                   spacing: str = "leading", init_image: torch.Tensor = None, strength: float = 0.8,
                   init_latents: torch.Tensor = None) -> torch.Tensor:
    """Stages 1–4: the final latents (B, 4, H/8, W/8) for `batch` images of one prompt.
    callback(i, t, x0) runs after each sampler step i (at timestep t), x0 the sampler's estimate of the clean
    latents x̂₀ (B, 4, H/8, W/8), in the units `decode` takes (a live preview decodes it).

    init_image: a run from an image (img2img), (1, 3, height, width) in [-1, 1] (`image_tensor` makes one):
    its latent is drawn from the VAE encoder's Gaussian (sd.vae_encoder; TAESD's is its output, nothing drawn), noise
    is put back on it by the forward process to where the last int(steps · strength) steps begin, and those steps
    run, as diffusers' img2img.
    init_latents: the same from latents (B, 4, height/8, width/8) instead of an image (the hires pass's).

    sampler: plms, ddim, euler, euler-a, dpm++2m or lcm; spacing: leading, linspace, trailing or karras (sampler/).
    tome: a ToMeConfig, None, or a schedule: a function of the timestep t (999 … 0, noisy to clean; fractional
    for Euler) returning a ToMeConfig or None for that call, e.g. `lambda t: cfg if t > 500 else None`.
    todo: a ToDoConfig (Token Downsampling), deep_cache: a DeepCacheConfig; see `noise_estimate`.
    """
    width, height, start = checked(sd, steps, guidance, seed, width, height, batch, sampler, tome, todo, deep_cache,
                                   spacing, init_image, strength, init_latents, negative_prompt)
    unet = sd.unet
    device, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
    guided = unet.config.guided(guidance)  # an LCM-distilled UNet: never the guided pair

    # 1. text → context: [uncond × B, cond × B] with guidance, else [cond × B]
    prompts = [negative_prompt] * batch + [prompt] * batch if guided else [prompt] * batch
    context = sd.text_encoder(sd.tokenizer(prompts).to(device))  # (2B or B, 77, 768)

    # 2. the initial noise, drawn on the CPU as diffusers does (Euler ancestral draws its later noise from the same
    # stream); from an image, its latent is drawn first, from the same generator
    factor = sd.vae.config.scale_factor
    shape = (batch, unet.config.in_channels, height // factor, width // factor)
    generator = torch.Generator("cpu").manual_seed(seed)
    init = None if init_latents is None else init_latents.to(device, dtype).expand(shape).contiguous()
    if init_image is not None:
        init = sd.vae_encoder.sample(init_image.to(device, dtype), generator).expand(shape).contiguous()
    noise = torch.randn(shape, generator=generator, dtype=dtype).to(device)

    # 3. the guided noise estimate the sampler calls; ToMe's partitions draw from their own generator
    eps_model = noise_estimate(unet, context, guidance, tome, todo, deep_cache, unet_calls(sampler, steps, start))

    # 4. denoise: the sampler's schedule from `start` on, its starting variable from the noise (and the image's)
    latents = sample(sampler, eps_model, noise, steps, spacing, generator, callback, start, init)
    if not torch.isfinite(latents).all():  # would decode to a black or noise image
        raise Refusal(f"the sampled latents are not finite (NaN or infinity): guidance {guidance:g} may be too "
                         f"large, or the weights overflow in {str(dtype).replace('torch.', '')}")
    return latents


def noise_estimate(unet, context: torch.Tensor, guidance: float, tome=None, todo: ToDoConfig = None,
                   deep_cache: DeepCacheConfig = None, calls: int = None):
    """ε(x, t) as the sampler calls it: the UNet on [uncond, cond] in one batch with classifier-free guidance,
    ε = ε_uncond + g · (ε_cond − ε_uncond), or on [cond] alone when g ≤ 1 (context holds the prompts
    in that order). An LCM-distilled UNet (time_cond_proj_dim) runs [cond] alone at any g, handed the guidance
    embedding of w = g − 1 (unet/blocks.py), made once per run in float32 and cast to the context's dtype, as
    diffusers' pipelines do.

    It makes the run (minitome/run.py) that every UNet call of this sampling run shares: tome a ToMeConfig,
    None, or a schedule t → ToMeConfig or None; todo on for the first round(todo.until · calls) of the run's
    `calls` UNet calls (all of them without `calls`); deep_cache a DeepCacheConfig."""
    guided, dim = unet.config.guided(guidance), unet.config.time_cond_proj_dim
    run = Run(tome=tome, todo=todo, deep_cache=deep_cache, calls=calls)
    w_embedding = None  # an LCM-distilled UNet's embedding of w = g − 1 (B, dim): made in float32, cast to the run's
    if dim is not None:
        w = torch.full((context.shape[0],), float(guidance - 1))
        w_embedding = guidance_embedding(w, dim).to(context.device, context.dtype)

    def eps_model(x, t):
        x_in = torch.cat([x, x]) if guided else x
        t_in = torch.full((x_in.shape[0],), t, device=x.device)
        eps = run.call(unet, x_in, t_in, context, w_embedding)  # the run hands the UNet this call's record
        if not guided:
            return eps
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_uncond + guidance * (eps_cond - eps_uncond)

    return eps_model


@dataclass(frozen=True)
class HiresConfig:
    """The hires pass (A1111's "hires fix"): the first pass's result upscaled `scale` times (its size rounded down to
    a multiple of 8), then denoised again by an img2img pass of `steps` (diffusers' num_inference_steps: it runs
    int(steps · strength)) with `strength`; `upscale` "latent" (bilinear on the latents, A1111's "Latent"),
    "latent-nearest", or "lanczos" (the decoded image resized, then encoded); `tome` the second pass's ToMe."""
    scale: float = 2.0
    steps: int = 20
    strength: float = 0.7
    upscale: str = "latent"
    tome: object = None

    def size(self, width: int, height: int, multiple: int = 8) -> tuple:
        try:
            w, h = int(width * self.scale), int(height * self.scale)
        except OverflowError:  # past a float's range: no machine's memory holds it anyway
            raise ValueError(f"hires scale {self.scale!r} makes {width}x{height} larger than a number can say") from None
        return w - w % multiple, h - h % multiple


UPSCALES = ("latent", "latent-nearest", "lanczos")


def upscaled(sd, latents: torch.Tensor, hires: HiresConfig, width: int, height: int) -> dict:
    """The first pass's latents made the second pass's start: {"init_latents": …} or {"init_image": …}."""
    factor = sd.vae.config.scale_factor
    if hires.upscale in ("latent", "latent-nearest"):
        mode = "bilinear" if hires.upscale == "latent" else "nearest"  # bilinear: no antialias, as A1111 and torch
        return {"init_latents": torch.nn.functional.interpolate(latents, size=(height // factor, width // factor), mode=mode)}
    images = [image_tensor(image, width, height) for image in to_pil(decode(sd, latents))]
    return {"init_image": torch.cat(images)}


def image_tensor(image: Image.Image, width: int, height: int) -> torch.Tensor:
    """(1, 3, height, width) in [-1, 1]: Lanczos-resized (Pillow's) to the size when it differs, as diffusers
    preprocesses an init image."""
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(image).astype(np.float32) / 255.0).permute(2, 0, 1)[None] * 2.0 - 1.0


@torch.no_grad()
def decode(sd, latents: torch.Tensor) -> torch.Tensor:
    """Stage 5: latents → images (B, 3, 8h, 8w) as floats in [0, 1], in the latents' dtype. One image at a
    time: the decoder's full-resolution activations are its memory peak, so a batch would multiply it."""
    images = torch.cat([sd.vae(z[None] / sd.vae.scaling) for z in latents])
    return (images * 0.5 + 0.5).clamp(0, 1)  # (x + 1) / 2, written as diffusers does, to the bit


def to_pil(images: torch.Tensor) -> list:
    """Images in [0, 1] → 8-bit PIL images: round(x · 255), computed in float32 as diffusers does."""
    pixels = (images.float().permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)  # (B, H, W, 3)
    return [Image.fromarray(p) for p in pixels]


def generate(sd, prompt: str, negative_prompt: str = "", steps: int = 50, guidance: float = 7.5, seed: int = 0,
             width: int = 512, height: int = 512, batch: int = 1, sampler: str = "plms", tome=None,
             callback=None, todo: ToDoConfig = None, deep_cache: DeepCacheConfig = None,
             spacing: str = "leading", init_image: torch.Tensor = None, strength: float = 0.8,
             hires: HiresConfig = None) -> list:
    """`batch` PIL images for one prompt: the five stages, see `sample_latents` for the arguments; with `hires`,
    a second pass at the larger size (`HiresConfig`), its generator seeded afresh with the same seed, its methods'
    windows and intervals counting its own UNet calls. callback(i, t, x0) counts the steps of both passes."""
    latents = sample_latents(sd, prompt, negative_prompt, steps, guidance, seed, width, height, batch, sampler, tome,
                             callback, todo, deep_cache, spacing, init_image, strength)
    if hires is not None:
        if init_image is not None:
            height, width = init_image.shape[-2:]
        done = steps - (start_step(steps, strength) if init_image is not None else 0)
        on = (lambda i, t, x0: callback(done + i, t, x0)) if callback is not None else None
        w, h = hires.size(width, height, sd.vae.config.scale_factor)
        latents = sample_latents(sd, prompt, negative_prompt, hires.steps, guidance, seed, w, h, batch, sampler,
                                 hires.tome, on, todo, deep_cache, spacing, strength=hires.strength,
                                 **upscaled(sd, latents, hires, w, h))
    return to_pil(decode(sd, latents))
