"""Reading the `config.json` files of a diffusers folder, one checked field at a time.

Where this sits: `weights/unet.py`, `weights/clip.py` and `weights/vae.py` read their part's
`config.json` through these two functions, so that a missing file, broken JSON, a field of the
wrong type or a width of zero is a `WeightsError` naming the file and the field, never a traceback
from deep inside a module's constructor.
"""
import json
from pathlib import Path

from .checkpoint import WeightsError


def read_json(path: Path) -> dict:
    """The JSON object in `path` (a diffusers folder's `<part>/config.json`)."""
    if not path.is_file():
        raise WeightsError(f"{path.parent.parent}: no {path.parent.name}/{path.name} (not a diffusers pipeline folder)")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise WeightsError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise WeightsError(f"{path}: not valid JSON ({error})") from None
    except (OSError, RecursionError) as error:
        raise WeightsError(f"{path}: cannot be read ({error})") from None
    if not isinstance(value, dict):
        raise WeightsError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def field(config: dict, name: str, default, source, kind: str = "positive int"):
    """config[name] (or default when absent), checked to be of `kind`: "positive int", "positive ints" (a
    non-empty list), "number", "text", "texts" or "flag"; otherwise a WeightsError naming source and field."""
    value = config.get(name, default)
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    ok = {"positive int": lambda v: is_int(v) and v > 0,
          "positive ints": lambda v: isinstance(v, list) and v and all(is_int(x) and x > 0 for x in v),
          "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v == v,
          "text": lambda v: isinstance(v, str),
          "texts": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
          "flag": lambda v: isinstance(v, bool) or v is None}[kind](value)
    if not ok:
        raise WeightsError(f"{source}: field {name!r} must be a {kind.replace('positive ints', 'list of positive ints')}, "
                           f"got {json.dumps(value)[:60]}")
    return value
