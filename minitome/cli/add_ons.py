"""The files people put on top of a checkpoint, as the command line takes them and a PNG names them.

Where this sits: minitome/cli/settings.py reads `--lora PATH[:WEIGHT]` and `--embedding PATH[:TOKEN]` here, and
`weights.load` takes the pairs (weights/lora.py, weights/embedding.py). The PNG's text names them as A1111 writes
them: each LoRA as `<lora:name:weight>` at the end of the prompt and in "Lora hashes", each embedding in "TI
hashes" (minitome/cli/png_text.py; the hashes are minitome/cli/hashes.py's). With `--from PNG`, `check_from_png`
asks for the files the image was made with and takes its weights.
"""
import math
import re
import sys
from pathlib import Path

from ..checks import Refusal
from .images import regular_file
from .hashes import embedding_hash, lora_hash
from .png_text import lora_tag_in

WEIGHT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")  # a decimal number, as A1111's tags write it


def split_spec(text: str) -> tuple:
    """'PATH:VALUE' → (PATH, VALUE), split at the last ':' only when what comes before it exists (a path may
    hold ':'); else (text, None). When both PATH and the whole text are files, which is meant cannot be told."""
    path, sep, value = text.rpartition(":")
    if not (sep and path and (Path(path).exists() or Path(path).is_symlink())):
        return text, None
    if Path(text).exists():
        raise Refusal(f"{text}: names two files, {path} (with {value!r} after the ':') and {text}: rename one")
    return path, value


def weight_of(text: str) -> float:
    """A LoRA's weight: a decimal number (not '1_0' or a full-width digit, which float() also reads), finite."""
    return float(text) if WEIGHT.fullmatch(text) and math.isfinite(float(text)) else math.nan


def lora_spec(text: str) -> tuple:
    """--lora PATH[:WEIGHT] → (Path, weight), WEIGHT 1.0 by default and a finite number."""
    path, value = split_spec(text)
    weight = 1.0
    if value is not None:
        weight = weight_of(value)
        if not math.isfinite(weight):
            raise Refusal(f"--lora {text}: weight {value!r} is not a finite number")
    return regular_file(path, "--lora"), weight


TAG_BREAKERS = set(":<>,")  # what a <lora:name:weight> tag, or the "Lora hashes" list (name: hash, …), cannot hold


def check_lora_names(loras: list):
    """The PNG's text names each LoRA by its file's stem: the names must differ, and fit in a tag."""
    seen = {}
    for path, *_ in loras:
        bad = "".join(sorted(set(path.stem) & TAG_BREAKERS))
        if bad:
            raise Refusal(f"--lora {path}: its name {path.stem!r} holds {bad!r}, which the PNG's <lora:name:weight> "
                             "tag cannot hold; rename the file")
        if path.stem in seen:
            raise Refusal(f"--lora {path}: --lora {seen[path.stem]} has the same name {path.stem!r}, and the PNG's "
                             "text names LoRAs by file name: give a file once, with the sum of its weights, or rename one")
        seen[path.stem] = path


def check_no_tags(text: str, flag: str):
    """A1111's <lora:…> tags are written by minitome, never read from a prompt given to it."""
    tag = lora_tag_in(text)
    if tag is not None:
        raise Refusal(f"{flag} holds {tag!r}: minitome takes LoRAs from --lora PATH[:WEIGHT], not from tags in the "
                         "prompt")


def embedding_spec(text: str) -> tuple:
    """--embedding PATH[:TOKEN] → (Path, token or None)."""
    path, token = split_spec(text)
    if token is not None and (not token or any(c.isspace() for c in token)):
        raise Refusal(f"--embedding {text}: token {token!r} is empty or holds a space")
    return regular_file(path, "--embedding"), token


def check_from_png(png_values: dict, tags: list, loras: list, embeddings: list, png) -> tuple:
    """--from: the LoRAs and embeddings its image was made with must be given (their files are this machine's);
    a LoRA given without a weight takes the PNG's, an embedding given without a token the PNG's. png_values: the
    PNG's settings (its "lora_hashes" and "embedding_hashes"); tags: its [(name, weight text)]; loras: the flags'
    [(path, weight, whether a weight was given)]. Returns (the LoRAs with their weights, the embeddings with their
    tokens); a refusal otherwise."""
    given = {path.stem: (path, weight, explicit) for path, weight, explicit in loras}
    hashes = dict(png_values.get("lora_hashes", ()))
    for name, weight in tags:
        if not math.isfinite(weight_of(weight)):
            raise Refusal(f"--from {png}: its tag <lora:{name}:{weight}> gives the weight {weight!r}, not a finite number")
        if name not in given:
            raise Refusal(f"--from {png}: its image was made with the LoRA {name!r} at weight {weight}"
                             f"{' (hash ' + hashes[name] + ')' if name in hashes else ''}: give it with --lora PATH")
    for name in hashes.keys() & given.keys():
        if lora_hash(given[name][0]) != hashes[name]:
            print(f"minitome.sample: warning: --from {png} was made with the LoRA {name!r} of hash {hashes[name]}, "
                  f"--lora {given[name][0]} has {lora_hash(given[name][0])}: the image will differ", file=sys.stderr)
    weights = dict(tags)
    loras = [(path, weight if explicit or path.stem not in weights else float(weights[path.stem]))
             for path, weight, explicit in loras]
    wanted = dict(png_values.get("embedding_hashes", ()))
    have = {embedding_hash(path): path for path, _ in embeddings} if wanted else {}  # read the files only when asked
    for token, digest in wanted.items():
        if digest not in have:
            raise Refusal(f"--from {png}: its image was made with the embedding {token!r} (hash {digest}): give it "
                             "with --embedding PATH[:TOKEN]")
    token_of_file = {have[digest]: token for token, digest in wanted.items()}
    return loras, [(path, token if token is not None else token_of_file.get(path)) for path, token in embeddings]
