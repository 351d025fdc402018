"""The settings of one run of `python -m minitome.sample`: one frozen record, made once from the flags given over
the --from PNG's settings, every flag checked on the way.

Where this sits: minitome/sample.py parses the flags (minitome/cli/flags.py), reads a --from PNG
(minitome/cli/png_text.py) and calls `settings_from`; the run reads nothing else. The record's attributes are
the flags' names, so a flag given overrides the PNG's value of the same name, and the PNG's text is written
from the record and read back into it through one table (png_text.py's FIELDS). Checked in order, each
failing fast with a one-line refusal naming the flag:
1. arithmetic on the flags (`settings_from`), no file touched but the init image and the add-ons named;
2. what depends on the model's shape, from the weights' headers (`check_model`): the size against the VAE,
   the methods against the latent and the UNet, the run's memory against what is free (device.py).
A setting of something that is off (a method, the hires pass, an init image's strength) is None.
"""
import math
import os
import random
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace

import torch

from ..checks import Refusal, check_size
from ..deepcache import DeepCacheConfig
from ..pipeline import HiresConfig
from ..todo import ToDoConfig
from ..tome import MERGE_TARGETS, ToMeConfig
from .add_ons import check_from_png, check_lora_names, check_no_tags, embedding_spec, lora_spec, split_spec
from .device import check_fits, pick_device, pick_dtype
from .flags import check_steps_flag
from .images import read_image, run_size
from .methods import (DEEPCACHE_SETTINGS, HIRES_SETTINGS, SEEDS, TODO_SETTINGS, TOME_SETTINGS, accelerations,
                      flag_named, hires_config, least_scale, tome_merges_at)


@dataclass(frozen=True)
class Settings:
    # the image, as the PNG's text holds it
    prompt: str = None
    negative_prompt: str = ""
    steps: int = 50
    guidance: float = 7.5              # classifier-free guidance scale (≤ 1: off)
    seed: int = None                   # None: drawn at random, and printed
    width: int = 512
    height: int = 512
    batch: int = 1
    batch_position: int = None         # an image's place in its batch, as its PNG says it
    sampler: str = "plms"
    spacing: str = "leading"
    init_image: Path = None            # img2img: the image the run starts from
    strength: float = 0.8              # with init_image: the share of the schedule's noise put back on it
    hires_scale: float = None          # the hires pass (off without it): the second pass's size over the first's
    hires_steps: int = None            # default: steps
    hires_strength: float = 0.7
    hires_upscale: str = "latent"
    hires_tome_ratio: float = None     # ToMe's ratio on the hires pass (0: off there); default: the first pass's
    tome_ratio: float = None           # ToMe, off without a ratio or a threshold
    tome_threshold: float = None
    tome_max_downsample: int = 1
    tome_sx: int = 2
    tome_sy: int = 2
    tome_no_rand: bool = False
    tome_merge: str = "attn"
    tome_seed: int = 0
    tome_reuse: int = 1
    todo_factor: int = None            # ToDo, off without it
    todo_max_downsample: int = 1
    todo_until: float = 1.0
    deepcache_interval: int = None     # DeepCache, off without it
    deepcache_branch: int = 0
    weights: Path = None
    vae: Path = None
    ema: bool = False
    loras: tuple = ()                  # (file, weight)
    embeddings: tuple = ()             # (file, token or None)
    dtype: str = "auto"                # auto: float16 on cuda, bfloat16 on a CPU with it native, else float32; then
                                       # the one picked (a --from PNG without a Dtype field: float32)
    attention: str = "sdpa"
    # the files' hashes, as the PNG names them (minitome/cli/hashes.py), once computed
    model_hash: str = ""
    vae_hash: str = ""
    init_image_hash: str = ""
    lora_hashes: tuple = ()            # (name, hash)
    embedding_hashes: tuple = ()       # (token, hash)
    # where the run happens and what it writes: not in the PNG
    tokenizer: str = None
    device: object = "auto"            # auto: cuda, then mps, then cpu; then the torch.device picked
    out: Path = Path("outputs/minitome.png")
    preview: Path = None               # a PNG rewritten after each step (minitome/cli/preview.py)
    preview_vae: Path = None           # the TAESD decoder that draws it (None: the linear map)
    # what the checks make of the above
    tome: ToMeConfig = None
    todo: ToDoConfig = None
    deep_cache: DeepCacheConfig = None
    hires: HiresConfig = None
    init: object = field(default=None, repr=False, compare=False)  # the init image read: 8-bit RGB, upright
    size_from: str = None              # what set the size, when not --width and --height (for messages)


DEFAULTS = {f.name: f.default for f in fields(Settings)}


def settings_from(flags: dict, png=None) -> Settings:
    """The run's settings: the flags given (only those: argparse's namespace holds no defaults) over the --from
    PNG's (png_text.FromPNG), over the record's defaults; every flag checked, before any model work."""
    png_values = png.values if png is not None else {}
    a = SimpleNamespace(**{**DEFAULTS, **png_values, **flags})
    a.given = set(png_values) | set(flags)  # a setting the PNG holds counts as given
    for name in ("weights", "vae", "init_image", "out", "preview", "preview_vae"):
        if isinstance(getattr(a, name), str):
            setattr(a, name, Path(getattr(a, name)))
    check_steps_flag(a.steps, "--steps", a.sampler, a.spacing, a.strength if a.init_image is not None else None)
    if a.init_image is None:
        if png is not None and ("init_image_hash" in png_values or "strength" in png_values):
            made_from = (f"hash {png.fields['Init image hash']}" if "init_image_hash" in png_values else
                         f"denoising strength {png.fields['Denoising strength']}")  # A1111's img2img writes no hash
            raise Refusal(f"--from {png.path}: its image was made from an init image ({made_from}): give it with "
                          "--init-image PATH")
        if "strength" in a.given:
            raise Refusal("--strength needs --init-image (it says how much of the image's noise is redrawn)")
        a.strength = None
    else:
        a.init = read_image(a.init_image)
        width, height = (getattr(a, side) if side in a.given else None for side in ("width", "height"))
        a.width, a.height = run_size(a.init, width, height)
        if width is None or height is None:  # a size the image set: its own name in what refuses it
            a.size_from = f"--init-image {a.init_image} ({a.width}x{a.height})"
            if a.width <= 0 or a.height <= 0:
                raise Refusal(f"{a.size_from}: smaller than 8 pixels on a side, give --width and --height")
    if png is not None and "Token merging ratio" in png.fields and "ToMe" not in png.fields:
        print(f"minitome.sample: warning: --from {png.path}: its 'Token merging ratio: "
              f"{png.fields['Token merging ratio']}' is A1111's ToMe, whose other settings the text does not hold: not "
              "applied; add --tome-ratio to merge", file=sys.stderr, flush=True)
    loras = [(*lora_spec(text), split_spec(text)[1] is not None) for text in a.loras]
    check_lora_names(loras)
    embeddings = [embedding_spec(text) for text in a.embeddings]
    a.loras, a.embeddings = (tuple(x) for x in check_from_png(png_values, png.lora_tags if png else [], loras,
                                                               embeddings, png.path if png else None))
    if not math.isfinite(a.guidance):
        raise Refusal(f"--guidance must be a finite number, got {a.guidance}")
    if a.batch < 1:
        raise Refusal(f"--batch must be >= 1, got {a.batch}")
    check_size(a.width, a.height, 8, ("--width", "--height"))
    if a.seed is not None and not 0 <= a.seed < SEEDS:
        raise Refusal(f"--seed must be in [0, 2^64), got {a.seed}")
    if "vae" in png_values and "vae" not in flags:  # the files an image was made with: its text can only name them
        vae_hash = f" (hash {png.fields['VAE hash']})" if "VAE hash" in png.fields else ""
        raise Refusal(f"--from {png.path}: its image was made with the VAE {png.fields['VAE']!r}{vae_hash}: give it "
                      "with --vae PATH")
    for name in ("prompt", "negative_prompt"):
        try:
            getattr(a, name).encode("utf-8")
        except UnicodeEncodeError:
            raise Refusal(f"--{name.replace('_', '-')} is not valid UTF-8 text") from None
        check_no_tags(getattr(a, name), f"--{name.replace('_', '-')}")
    check_preview(a.preview, a.preview_vae, a.out)
    a.tome, a.todo, a.deep_cache = accelerations(a)
    a.hires = hires_config(a, a.tome, a.todo, a.deep_cache)
    a.device = pick_device(a.device)
    a.dtype = str(pick_dtype(a.dtype, a.device)).replace("torch.", "")
    a.seed = a.seed if a.seed is not None else random.randrange(2**32)
    one_spelling(a)
    return Settings(**{name: getattr(a, name) for name in DEFAULTS})


def check_preview(preview: Path, preview_vae: Path, out: Path):
    """--preview names a PNG in a folder that exists and can be written, not the --out file; --preview-vae needs
    it (whether --preview-vae holds a TAESD is the weights' to say, from its header)."""
    if preview is None:
        if preview_vae is not None:
            raise Refusal("--preview-vae needs --preview (it draws the preview, which is off without it)")
        return
    if preview.suffix.lower() != ".png":
        raise Refusal(f"--preview {preview}: the preview is a PNG, name it .png")
    if not preview.parent.is_dir():
        raise Refusal(f"--preview {preview}: the folder {preview.parent} does not exist")
    if not os.access(preview.parent, os.W_OK | os.X_OK):
        raise Refusal(f"--preview {preview}: the folder {preview.parent} is not writable")
    if preview.is_dir():
        raise Refusal(f"--preview {preview}: a folder, not a file")
    if preview.resolve() == out.resolve():
        raise Refusal(f"--preview {preview}: the same file as --out; give the preview a name of its own")


def one_spelling(a):
    """Each setting in one spelling, so that equal runs have equal records: what is off is None (the record and
    the PNG's text hold only what runs), --tome-merge's targets in their order, the hires steps counted."""
    if a.tome_merge is not None:
        a.tome_merge = ",".join(t for t in MERGE_TARGETS if t in {t.strip() for t in a.tome_merge.split(",")})
    if a.tome is None and (a.hires is None or a.hires.tome is None):
        for name in TOME_SETTINGS:
            setattr(a, name, None)
    for config, names in ((a.todo, TODO_SETTINGS), (a.deep_cache, DEEPCACHE_SETTINGS), (a.hires, HIRES_SETTINGS)):
        for name in names if config is None else ():
            setattr(a, name, None)
    if a.hires is not None:
        a.hires_steps = a.hires.steps
    a.batch_position = None


def check_model(s: Settings, unet, vae):
    """The settings that depend on the model's shape, from the weights' headers alone (unet, vae: their configs)."""
    if s.negative_prompt and unet.time_cond_proj_dim is not None:  # diffusers' pipelines drop it silently
        raise Refusal(f"--negative-prompt: this UNet is LCM-distilled (time_cond_proj_dim {unet.time_cond_proj_dim}): it "
                      "runs without classifier-free guidance, so a negative prompt would do nothing; leave it out")
    for flag, value in (("--width", s.width), ("--height", s.height)):  # 8 was checked; a VAE may take other sizes
        if value % vae.scale_factor:
            raise Refusal(f"{flag} must be a positive multiple of {vae.scale_factor}, got {value!r}")
    latent = (s.height // vae.scale_factor, s.width // vae.scale_factor)
    per_call = s.batch * (2 if unet.guided(s.guidance) else 1)  # latents in one UNet call: the guided pair doubles them
    if unet.fewest_normalized(latent, per_call) < 2:
        raise Refusal(f"--width {s.width} --height {s.height}: too small for this UNet at {per_call} latent per call "
                      "(a GroupNorm of its deepest levels would normalise a single value): give a larger size, or "
                      "--guidance above 1 or --batch 2")
    if s.todo is not None:
        flag_named(s.todo.check_latent, latent)
    if s.tome is not None:  # settings under which nothing would merge, while the PNG says ToMe
        flag_named(tome_merges_at, s.tome, latent)
    width, height, size = s.width, s.height, s.size_from
    if s.hires is not None:  # the second pass's size is the run's largest
        width, height = flag_named(s.hires.size, s.width, s.height, vae.scale_factor)
        size = f"--hires-scale {s.hires_scale!r} ({width}x{height})"
        if s.hires.tome is not None and s.hires.tome is not s.tome:
            try:
                tome_merges_at(s.hires.tome, (height // vae.scale_factor, width // vae.scale_factor))
            except Refusal as error:
                raise Refusal(f"--hires-tome-ratio {s.hires_tome_ratio!r}: {error}") from None
        if (width, height) == (s.width, s.height):
            raise Refusal(f"{size}: the second pass would run at the first's size (each side is rounded down to a "
                          f"multiple of {vae.scale_factor}): use at least "
                          f"{least_scale(s.width, s.height, vae.scale_factor)!r}")
    check_fits(width, height, s.batch, unet.guided(s.guidance), s.attention, unet.num_heads, getattr(torch, s.dtype),
               s.device, vae.peak_channels, size)
    if s.deep_cache is not None:
        flag_named(s.deep_cache.check_layout, unet)


def check_from(s: Settings, png):
    """With --from, weights or an init image whose hash differs from the image's are said in one line each (the
    image will differ)."""
    for attribute, name, flag in (("model_hash", "model hash", "--weights"),
                                  ("init_image_hash", "init image hash", "--init-image")):
        theirs, ours = png.values.get(attribute), getattr(s, attribute)
        if theirs and ours and theirs != ours:
            print(f"minitome.sample: warning: --from {png.path} was made with {name} {theirs}, {flag} has {ours}: "
                  "the image will differ", file=sys.stderr, flush=True)
