"""Reading the image a run starts from (`--init-image`): any file Pillow opens, taken as its owner sees it.

Where this sits: the command line (minitome/cli/settings.py) reads `--init-image` here among its first checks
(`read_image`), before any model work; the library's `image_tensor` (minitome/pipeline.py) makes the tensor
`generate(init_image=...)` takes. What a user expects:

- EXIF orientation applied (a phone's portrait photo is stored on its side, with a tag saying so);
- grayscale, palette, CMYK and 16- or 32-bit integer images converted to 8-bit RGB. Pillow's `convert("RGB")`
  clips a 16-bit image's values at 255 (nearly all white), so those are scaled to 8 bits first; a floating-point
  image is refused, since nothing says whether its white is 1 or 255;
- transparency composited on white, the way an image viewer shows it over a page;
- a decompression bomb refused: Pillow raises only above twice its `MAX_IMAGE_PIXELS` (89.5 million pixels)
  and merely warns between once and twice; both are an error here, for `--from`'s PNG too (`opened`).

The tensor is made as diffusers' `VaeImageProcessor` makes it: the size rounded down to a multiple of 8 (or the
size asked for) with a Lanczos resize, then 8-bit values / 255 in float32, then 2x − 1.
`regular_file` is the check every file flag shares (--init-image, --from, --lora, --embedding): it must be a
file one can read to its end (a FIFO would wait for a writer forever).
"""
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..checks import Refusal


def regular_file(path, name: str) -> Path:
    """path as a Path, when it is a file one can read to its end: not missing, not a link to nothing, not a
    folder, FIFO or device (a FIFO would wait for a writer forever)."""
    p = Path(path)
    if not p.exists():
        raise Refusal(f"{name} {path}: {'a link to nothing (broken, or a loop)' if p.is_symlink() else 'no such file'}")
    if not p.is_file():
        raise Refusal(f"{name} {path}: not a regular file (a folder, a FIFO or a device)")
    return p


def to_8bit_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit or 32-bit int grayscale
        a = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or a.max() > 255 else 255.0
        gray = Image.fromarray(np.clip(a / top * 255, 0, 255).round().astype(np.uint8), "L")
        if "transparency" in image.info:  # the one gray value that is see-through, kept as an alpha channel
            alpha = Image.fromarray(np.where(a == image.info["transparency"], 0, 255).astype(np.uint8), "L")
            gray = Image.merge("LA", (gray, alpha))
        image = gray
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


@contextmanager
def opened(path, flag: str):
    """The image file at `path`, open; what goes wrong while it is read, in one line naming the flag and the file."""
    path = regular_file(path, flag)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                yield image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise Refusal(f"{flag} {path}: over {Image.MAX_IMAGE_PIXELS:,} pixels, Pillow's limit against "
                         "decompression bombs") from None
    except UnidentifiedImageError:
        raise Refusal(f"{flag} {path}: not an image Pillow reads") from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise Refusal(f"{flag} {path}: a damaged image ({error})") from None


def read_image(path, flag: str = "--init-image") -> Image.Image:
    """The image at `path` as 8-bit RGB, upright; a refusal naming the flag and the file otherwise."""
    with opened(path, flag) as image:
        image.load()  # a truncated file fails here, not later
        mode, upright = image.mode, ImageOps.exif_transpose(image)
    if mode == "F":
        raise Refusal(f"{flag} {path}: a floating-point image, whose values have no agreed range (0 to 1? 0 to "
                         "255?): save it with 8 or 16 bits")
    return to_8bit_rgb(upright)


def run_size(image: Image.Image, width: int = None, height: int = None, multiple: int = 8) -> tuple:
    """(width, height) of the run: those given, else the image's own rounded down to a multiple of 8."""
    w = width if width is not None else image.width - image.width % multiple
    h = height if height is not None else image.height - image.height % multiple
    return w, h

