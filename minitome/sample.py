"""`python -m minitome.sample`: one prompt to PNG files, on CPU, CUDA or MPS, with ToMe and its successors.

Where this sits: the command line around `minitome/pipeline.py`. In order, each step failing fast:

1. every flag is checked (`check`), with no file touched: arithmetic on the flags only;
2. the weights' headers are read (`weights.load` checks every header before reading a tensor) and the flags
   that depend on the model's shape are checked, the run's memory estimated against what is free
   (`minitome/device.py`);
3. the output files are reserved (`minitome/output.py`): an unwritable path fails now, not after sampling;
4. the tensors are read, the PNG metadata (model hash included) is made, then the images are sampled and
   written whole.
Bad input is one line on stderr and exit status 2, never a traceback and never a file left behind;
Ctrl-C and SIGTERM remove the reserved files too (exit 130 and 143), however often they come; a reader of stdout
that goes away (`| head -1`) loses no image (minitome/console.py: what is said on the terminal, and the signals).
"""
import argparse
import math
import random
import sys
import warnings
from pathlib import Path

import torch

from sampler import SAMPLERS, SPACINGS, start_step
from weights.download import sha256_of
from .add_ons import (check_from_png, check_lora_names, check_no_tags, embedding_hash, embedding_spec, lora_hash,
                      lora_spec, split_spec)
from .checks import check_size
from .console import Progress, Terminated, fail, one_line_warnings, print_name, signals_stop_the_run
from .device import check_fits, pick_device, pick_dtype
from .flags import check_steps_flag, flags_given
from .images import image_tensor, read_image, run_size
from .method_flags import SEEDS, accelerations, add_method_flags, flag_named, hires_config
from .output import Outputs, model_hash
from .png_text import flags_from, parameters_text


def parse_args(argv=None) -> argparse.Namespace:
    """The flags; with --from PNG, that image's settings first and the flags given after them (they override)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--from", dest="from_png")
    from_png = first.parse_known_args(argv)[0].from_png
    png_flags, png_fields = flags_from(Path(from_png)) if from_png else ([], {})
    p = argparse.ArgumentParser(prog="python -m minitome.sample", description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="from_png", metavar="PNG",
                   help="take a PNG's parameters text (one minitome or A1111 wrote) as the settings; later flags override")
    p.add_argument("--weights", required=True, help="SD 1.x .safetensors file or diffusers folder")
    p.add_argument("--tokenizer", help="tokenizer folder or bpe_simple_vocab_16e6.txt.gz (default: beside the weights)")
    p.add_argument("--vae", help="a VAE file or folder that replaces the weights' own decoder (or supplies a missing one)")
    p.add_argument("--ema", action="store_true", help="from a file holding two UNets (v1-5-pruned), load the EMA one")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:WEIGHT]",
                   help="a LoRA (kohya/A1111 or diffusers/PEFT .safetensors) added into the weights, WEIGHT 1 by "
                        "default; repeat for several")
    p.add_argument("--embedding", action="append", default=[], metavar="PATH[:TOKEN]",
                   help="a textual-inversion embedding (.safetensors or A1111 .pt); the prompt calls it by TOKEN, "
                        "else the token its file names, else the file's stem; repeat for several")
    p.add_argument("--prompt", required=not from_png)
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=50, help="sampler steps: 1 to 1000 with trailing spacing (from pure "
                   "noise, leading refuses counts that start far below t = 999, see README)")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (≤ 1: off)")
    p.add_argument("--seed", type=int, help="0 ≤ seed < 2⁶⁴; default: random, and printed")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--batch", type=int, default=1, help="images for the prompt")
    p.add_argument("--init-image", help="start from this image (img2img); its size, rounded down to a multiple of 8, "
                   "unless --width or --height are given")
    p.add_argument("--strength", type=float, default=0.8, help="with --init-image: the share of the schedule's noise "
                   "put back on it (0 < S <= 1; the last int(steps · S) steps run)")
    p.add_argument("--sampler", choices=tuple(SAMPLERS), default="plms")
    p.add_argument("--spacing", choices=SPACINGS, default="leading",
                   help="which timesteps the sampler visits; karras with euler and dpm++2m only")
    add_method_flags(p)
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                   help="auto: float16 on cuda, float32 elsewhere")
    p.add_argument("--attention", default="sdpa", choices=("sdpa", "plain"))
    p.add_argument("--out", default="outputs/minitome.png", help="PNG path; an existing file gets a numbered sibling")
    args = p.parse_args(png_flags + argv)
    args.given, args.png_fields = flags_given(p, png_flags + argv), png_fields
    return args


def check(args):
    """Every flag, before anything is read or written; a ValueError names the flag."""
    check_steps_flag(args.steps, "--steps", args.sampler, args.spacing,
                     args.strength if args.init_image is not None else None)
    args.init = None
    fields = args.png_fields
    if args.init_image is None:
        if "Init image hash" in fields or ("Denoising strength" in fields and "Hires upscale" not in fields):
            made_from = f"hash {fields['Init image hash']}" if "Init image hash" in fields else (
                f"denoising strength {fields['Denoising strength']}")  # A1111's img2img writes no hash
            raise ValueError(f"--from {args.from_png}: its image was made from an init image ({made_from}): give it "
                             "with --init-image PATH")
        if "strength" in args.given:
            raise ValueError("--strength needs --init-image (it says how much of the image's noise is redrawn)")
    else:
        args.init = read_image(args.init_image)
        width, height = (getattr(args, side) if side in args.given else None for side in ("width", "height"))
        args.width, args.height = run_size(args.init, width, height)
        if width is None or height is None:  # a size the image set: its own name in what refuses it
            args.size = f"--init-image {args.init_image} ({args.width}x{args.height})"
            if args.width <= 0 or args.height <= 0:
                raise ValueError(f"{args.size}: smaller than 8 pixels on a side, give --width and --height")
    if "Token merging ratio" in fields and "ToMe" not in fields:
        print(f"minitome.sample: warning: --from {args.from_png}: its 'Token merging ratio: "
              f"{fields['Token merging ratio']}' is A1111's ToMe, whose other settings the text does not hold: not "
              "applied; add --tome-ratio to merge", file=sys.stderr, flush=True)
    loras = [(*lora_spec(text), split_spec(text)[1] is not None) for text in args.lora]
    check_lora_names(loras)
    embeddings = [embedding_spec(text) for text in args.embedding]
    args.loras, args.embeddings = check_from_png(args.png_fields, args.png_fields.get("lora tags", []), loras,
                                                 embeddings, args.from_png)
    if not math.isfinite(args.guidance):
        raise ValueError(f"--guidance must be a finite number, got {args.guidance}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    check_size(args.width, args.height, 8, ("--width", "--height"))
    if args.seed is not None and not 0 <= args.seed < SEEDS:
        raise ValueError(f"--seed must be in [0, 2^64), got {args.seed}")
    if "VAE" in args.png_fields and not args.vae:  # the files an image was made with: its text can only name them
        fields = args.png_fields
        raise ValueError(f"--from {args.from_png}: its image was made with the VAE {fields['VAE']!r}"
                         f"{' (hash ' + fields['VAE hash'] + ')' if 'VAE hash' in fields else ''}: give it with --vae PATH")
    for name in ("prompt", "negative_prompt"):
        try:
            getattr(args, name).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"--{name.replace('_', '-')} is not valid UTF-8 text") from None
        check_no_tags(getattr(args, name), f"--{name.replace('_', '-')}")


def check_from(args, short_hash: str, init_hash: str = ""):
    """With --from, weights or an init image whose hash differs from the image's are said in one line each (the
    image will differ)."""
    fields = args.png_fields
    for field, flag, given in (("Model hash", "--weights", short_hash), ("Init image hash", "--init-image", init_hash)):
        if field in fields and given and fields[field] != given:
            print(f"minitome.sample: warning: --from {args.from_png} was made with {field.lower()} {fields[field]}, "
                  f"{flag} has {given}: the image will differ", file=sys.stderr, flush=True)


def out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def main(argv=None) -> int:
    with signals_stop_the_run(), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = one_line_warnings
        try:
            args = parse_args(argv)
        except ValueError as error:  # --from: a file that is no image, or has no parameters text
            return fail(f"error: {error}", 2)
        except KeyboardInterrupt:  # while a --from PNG is read: nothing is reserved yet
            return fail("interrupted", 130)
        except Terminated:
            return fail("terminated", 143)
        return run(args)


def run(args) -> int:
    from weights import WeightsError, load
    from weights.embedding import token_of
    from .pipeline import generate
    outputs, finished = None, False
    try:
        check(args)
        tome, todo, deep_cache = accelerations(args)
        hires = flag_named(hires_config, args, tome, todo, deep_cache)
        device = pick_device(args.device)
        dtype = pick_dtype(args.dtype, device)
        seed = args.seed if args.seed is not None else random.randrange(2**32)

        def check_model(unet, vae):  # the flags that depend on the model's shape, from the headers alone
            nonlocal outputs
            check_size(args.width, args.height, vae.scale_factor, ("--width", "--height"))
            latent = (args.height // vae.scale_factor, args.width // vae.scale_factor)
            if todo is not None:
                flag_named(todo.check_latent, latent)
            if tome is not None:  # settings under which nothing would merge, while the PNG says ToMe
                flag_named(tome.check_latent, latent)
            width, height, size = args.width, args.height, getattr(args, "size", None)
            if hires is not None:  # the second pass's size is the run's largest
                width, height = flag_named(hires.size, args.width, args.height, vae.scale_factor)
                size = f"--hires-scale {args.hires_scale!r} ({width}x{height})"
                if hires.tome is not None and hires.tome is not tome:
                    try:
                        hires.tome.check_latent((height // vae.scale_factor, width // vae.scale_factor))
                    except ValueError as error:
                        raise ValueError(f"--hires-tome-ratio {args.hires_tome_ratio!r}: {error}") from None
                if (width, height) == (args.width, args.height):
                    raise ValueError(f"{size}: the second pass would run at the first's size (each side is rounded "
                                     f"down to a multiple of {vae.scale_factor}): use at least "
                                     f"{hires.least_scale(args.width, args.height, vae.scale_factor)!r}")
            check_fits(width, height, args.batch, args.guidance > 1, args.attention, unet.num_heads,
                       dtype, device, vae.ch * (vae.ch_mult[0] + vae.ch_mult[1]), size)
            if deep_cache is not None:
                flag_named(deep_cache.check_layout, unet)
            # every check passed: the output names are reserved now, before the first tensor is read, so that
            # an unwritable --out fails in milliseconds and a run refused for its size touches no file
            outputs = Outputs(Path(args.out), args.batch)
            print(f"seed: {seed}", file=sys.stderr)

        sd = load(args.weights, tokenizer=args.tokenizer, device=device, dtype=dtype, vae=args.vae, ema=args.ema,
                  attention=args.attention, check=check_model,
                  encoder=args.init is not None or (hires is not None and hires.upscale == "lanczos"),
                  loras=args.loras, embeddings=args.embeddings)
        sd.unet.pack_convolutions()  # float32 on the CPU: convolution weights laid out once (unet/packed_conv.py)
        short_hash = model_hash(Path(args.weights))
        vae_hash = model_hash(Path(args.vae)) if args.vae else ""
        init_hash = sha256_of(Path(args.init_image))[:10] if args.init is not None else ""  # no sidecar: the file's
        check_from(args, short_hash, init_hash)
        add_on_hashes = {"lora": [(path.stem, lora_hash(path)) for path, _ in args.loras],
                         "ti": [(token_of(path, token), embedding_hash(path)) for path, token in args.embeddings]}
        texts = [parameters_text(args, seed, short_hash, tome, todo, deep_cache, str(dtype).replace("torch.", ""),
                                 vae_hash, i, init_hash, hires, add_on_hashes) for i in range(args.batch)]
        init = image_tensor(args.init, args.width, args.height) if args.init is not None else None
        steps_run = args.steps - start_step(args.steps, args.strength) if init is not None else args.steps
        if hires is not None:
            steps_run += hires.steps - start_step(hires.steps, hires.strength)
        images = generate(sd, args.prompt, args.negative_prompt, args.steps, args.guidance, seed, args.width,
                          args.height, args.batch, args.sampler, tome, Progress(steps_run), todo, deep_cache,
                          args.spacing, init, args.strength, hires)
        for i, image in enumerate(images):
            print_name(outputs.write(i, image, texts[i]))
        finished = True
        return 0
    except (ValueError, WeightsError, OSError) as error:
        return fail(f"error: {error}", 2)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Terminated:
        return fail("terminated", 143)
    except (RuntimeError, MemoryError) as error:
        if not out_of_memory(error):
            raise
        first_line = str(error).strip().split("\n")[0]
        return fail(f"error: out of memory at --width {args.width} --height {args.height} --batch {args.batch} "
                    f"({first_line})", 1)
    finally:
        if outputs is not None and not finished:
            outputs.abandon()  # reservations not written and temporary files: nothing half-done is left


if __name__ == "__main__":
    sys.exit(main())
