"""`python -m minitome.sample`: one prompt to PNG files, on CPU, CUDA or MPS, with ToMe and its successors.

Where this sits: the command line around `minitome/pipeline.py`; its rooms are in minitome/cli/. In order, each
step failing fast:

1. the flags are parsed (cli/flags.py), a --from PNG's settings read (cli/png_text.py), and one frozen settings
   record made from them, every flag checked with no file touched but the images and add-ons named
   (cli/settings.py);
2. the weights' headers are read (`weights.load` checks every header before reading a tensor) and the settings
   that depend on the model's shape are checked, the run's memory estimated against what is free (and a
   --preview-vae read: a small file, refused in one line if it is not a TAESD's decoder);
3. the output files are reserved (cli/output.py): an unwritable path fails now, not after sampling;
4. the tensors are read, the files' hashes computed (cli/hashes.py) and the PNG's text written from the record,
   then the images are sampled (one callback says each step and, with --preview, draws it: cli/preview.py) and
   written whole.
Bad input is one line on stderr and exit status 2, never a traceback and never a file left behind; anything
else is a bug, said in one line too (exit 1). Ctrl-C and SIGTERM remove the reserved files (exit 130 and 143),
however often they come; a reader of stdout that goes away (`| head -1`) loses no image (cli/console.py).
"""
import sys
import warnings
from dataclasses import replace

import torch

from sampler import start_step
from unet.packed_conv import packed
from .cli.console import Progress, ending, one_line_warnings, print_name, signals_stop_the_run
from .cli.flags import parser
from .cli.hashes import hashes_of
from .cli.output import Outputs
from .cli.png_text import parameters_text, read_png
from .cli.preview import Preview, each_step
from .cli.settings import Settings, check_from, check_model, settings_from


def main(argv=None) -> int:
    with signals_stop_the_run(), warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = one_line_warnings
        try:
            settings, png = parse(argv)
        except (Exception, KeyboardInterrupt) as error:  # nothing is reserved yet
            return ending(error)
        return run(settings, png)


def parse(argv=None) -> tuple:
    """(the settings record, the --from PNG's settings or None)."""
    p = parser(__doc__.splitlines()[0])
    flags = vars(p.parse_args(sys.argv[1:] if argv is None else argv))
    png = read_png(flags.pop("from_png")) if "from_png" in flags else None
    if png is None and "prompt" not in flags:
        p.error("the following arguments are required: --prompt")
    return settings_from(flags, png), png


def run(settings: Settings, png=None) -> int:
    from weights import load, load_preview_decoder
    from .pipeline import generate, image_tensor
    outputs, finished, preview_decoder = None, False, None
    try:
        def check(unet, vae):  # once every header is read, before any tensor is
            nonlocal outputs, preview_decoder
            check_model(settings, unet, vae)
            if settings.preview_vae is not None:  # a small file, read now: a full VAE there is refused here
                preview_decoder = load_preview_decoder(settings.preview_vae, settings.device,
                                                       getattr(torch, settings.dtype), unet.in_channels)
            # every check passed: the output names are reserved now, before the first tensor is read, so that
            # an unwritable --out fails in milliseconds and a run refused for its size touches no file
            outputs = Outputs(settings.out, settings.batch)
            print(f"seed: {settings.seed}", file=sys.stderr)

        hires = settings.hires
        sd = load(settings.weights, tokenizer=settings.tokenizer, device=settings.device,
                  dtype=getattr(torch, settings.dtype), vae=settings.vae, ema=settings.ema,
                  attention=settings.attention, check=check, loras=settings.loras, embeddings=settings.embeddings,
                  encoder=settings.init is not None or (hires is not None and hires.upscale == "lanczos"))
        packed(sd.unet)  # float32 on the CPU: convolution weights laid out once (unet/packed_conv.py)
        # (a no-op in bfloat16: its nn.Conv2d runs oneDNN's bfloat16 kernels, which lay the weight out at each call)
        s = replace(settings, **hashes_of(settings))  # the record, complete: the PNG's text is written from it
        if png is not None:
            check_from(s, png)
        texts = [parameters_text(s, i) for i in range(s.batch)]
        init = image_tensor(s.init, s.width, s.height) if s.init is not None else None
        from_image = {"init_image": init, "strength": s.strength} if init is not None else {}
        steps_run = s.steps - start_step(s.steps, s.strength) if init is not None else s.steps
        if hires is not None:
            steps_run += hires.steps - start_step(hires.steps, hires.strength)
        preview = Preview(s.preview, preview_decoder, sd.vae.config.scale_factor) if s.preview is not None else None
        images = generate(sd, s.prompt, s.negative_prompt, steps=s.steps, guidance=s.guidance, seed=s.seed,
                          width=s.width, height=s.height, batch=s.batch, sampler=s.sampler, spacing=s.spacing,
                          tome=s.tome, todo=s.todo, deep_cache=s.deep_cache, hires=hires,
                          callback=each_step(Progress(steps_run), preview), **from_image)
        for i, image in enumerate(images):
            print_name(outputs.write(i, image, texts[i]))
        finished = True
        return 0
    except (Exception, KeyboardInterrupt) as error:
        return ending(error, f"--width {settings.width} --height {settings.height} --batch {settings.batch}")
    finally:
        if outputs is not None and not finished:
            outputs.abandon()  # reservations not written and temporary files: nothing half-done is left


if __name__ == "__main__":
    sys.exit(main())
