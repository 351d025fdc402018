"""The text a PNG carries, A1111's `parameters` chunk: written from the run's settings so that it makes its image again.

Where this sits: `python -m minitome.sample` writes it into every image (minitome/cli/output.py saves it) from
its settings record (minitome/cli/settings.py), and `--from PNG` reads it back into a partial record that the
flags given override (A1111's "PNG Info → send to txt2img"). The layout is A1111's, so its PNG Info tab and
other tools read it:

    a red fox in the snow                                   the prompt (any number of lines)
    Negative prompt: blurry                                 when there is one
    Steps: 20, Sampler: PLMS, CFG scale: 7.5, Seed: 1, Size: 512x512, Model hash: 6ce0161689, …

One table, `FIELDS`, says both directions: each row is a field's name, the record's attribute(s) it holds, how
their values are written (None: the field is left out) and how the text is read back. A new setting is one row.

Every value that changes the pixels is written, each so that it reads back to the same number: floats in
Python's shortest round-trip form (`repr`: 0.4999999 stays 0.4999999, where six significant digits would
write 0.5 for a run whose pixels differ from 0.5's). A setting of something that is off (a method, the hires
pass, an init image's strength) is None in the record and not written. A batch shares one noise tensor, so
each image says its place in it (A1111's "Batch size", "Batch pos"). A value holding commas is quoted as a
JSON string, as A1111 quotes its own. The dtype is written unless it is float32, and a text without one reads as
float32: --from remakes an image in the dtype it was made in, whatever `--dtype auto` would pick on this machine.

The sampler is named as A1111 names it ("DPM++ 2M", "Euler a", "Euler", "DDIM", "PLMS"), and a spacing other
than the default leading is its "Schedule type": karras is "Karras", trailing "SGM Uniform" (A1111's schedule
that, like trailing, starts every count at the top), linspace "Uniform". The names do not give A1111's images:
k-diffusion, under A1111's samplers, interpolates log σ between timesteps where diffusers (and minitome)
interpolate σ itself.
"""
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from sampler import SAMPLERS
from ..checks import Refusal
from .images import opened
from .methods import a1111_name
from .png_values import (DECIMAL, TOME, NotAsWritten, by_name, decimal, listed, named_pairs, number, one_of, pairs, size,
                         tome_hr_text, tome_text, tome_values, unless, when, whole)

SCHEDULE_TYPES = {"linspace": "Uniform", "trailing": "SGM Uniform", "karras": "Karras"}
UPSCALERS = {"latent": "Latent", "latent-nearest": "Latent (nearest)", "lanczos": "Lanczos"}  # A1111's "Hires upscaler"
LORA_TAG = re.compile(r"\s*<lora:([^:<>]+):([^:<>]+)>")  # A1111 writes each LoRA's weight into the prompt
FIELD = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')  # A1111's: key: value or key: "quoted"


@dataclass(frozen=True)
class Field:
    name: str                  # the field's name, as A1111 writes it
    attribute: object          # the settings record's attribute it holds, or a tuple of them
    format: Callable           # its value (their values) → the text, or None to leave the field out
    parse: Callable = None     # the text → the value (a tuple of values); None: written, not read back

    @property
    def attributes(self) -> tuple:
        return self.attribute if isinstance(self.attribute, tuple) else (self.attribute,)


FIELDS = [
    Field("Steps", "steps", str, whole),
    Field("Sampler", "sampler", a1111_name, by_name(lambda: {name: a1111_name(name) for name in SAMPLERS}, "Sampler")),
    Field("Schedule type", "spacing", lambda spacing: SCHEDULE_TYPES.get(spacing),
          lambda text: "leading" if text == "Automatic" else by_name(SCHEDULE_TYPES, "Schedule type")(text)),
    Field("CFG scale", "guidance", number, decimal),
    Field("Seed", "seed", str, whole),
    Field("Size", ("width", "height"), "{}x{}".format, size),
    Field("Model hash", "model_hash", lambda h: h or None, str),
    Field("Model", "weights", lambda path: Path(path).stem),   # this machine's file: given again with --weights
    Field("VAE", "vae", when(lambda path: Path(path).stem), str),  # read back as its name, to ask for the file
    Field("VAE hash", "vae_hash", lambda h: h or None, str),
    Field("EMA", "ema", lambda ema: "True" if ema else None, lambda text: text == "True"),
    Field("Denoising strength", "strength", when(number), decimal),
    Field("Init image hash", "init_image_hash", lambda h: h or None, str),
    Field("Hires denoising strength", "hires_strength", when(number), decimal),
    Field("Hires upscale", "hires_scale", when(number), decimal),
    Field("Hires steps", "hires_steps", when(str), whole),
    Field("Hires upscaler", "hires_upscale", when(UPSCALERS.get), by_name(UPSCALERS, "Hires upscaler")),
    Field("Token merging ratio hr", "hires_tome_ratio", when(number), decimal),
    Field("Batch size", "batch", unless(1), whole),
    Field("Batch pos", "batch_position", when(str), whole),
    Field("Lora hashes", "lora_hashes", listed, named_pairs),
    Field("TI hashes", "embedding_hashes", listed, named_pairs),
    Field("ToMe", TOME, tome_text, tome_values),
    Field("ToMe hr", TOME, tome_hr_text, tome_values),
    Field("ToDo", ("todo_factor", "todo_max_downsample", "todo_until"),
          lambda factor, most, until: None if factor is None else
          f"factor {factor}, max_downsample {most}, until {number(until)}",
          lambda text: (lambda t: (whole(t["factor"]), whole(t["max_downsample"]), decimal(t["until"])))(pairs(text))),
    Field("DeepCache", ("deepcache_interval", "deepcache_branch"),
          lambda interval, branch: None if interval is None else f"interval {interval}, branch {branch}",
          lambda text: (lambda t: (whole(t["interval"]), whole(t["branch"])))(pairs(text))),
    Field("Dtype", "dtype", unless("float32"), one_of(("float32", "float16", "bfloat16"), "Dtype")),
    Field("Attention", "attention", unless("sdpa"), one_of(("sdpa", "plain"), "Attention")),
]
REQUIRED = ("Steps", "Sampler", "CFG scale", "Seed", "Size")  # what every A1111 text holds
A1111_NUMBERS = ("Token merging ratio",)  # A1111's own ToMe: read only to be said (minitome/cli/settings.py)


def quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:"\n') else text


def prompt_with_loras(prompt: str, loras) -> str:
    """The prompt as A1111 writes it: each LoRA's `<lora:name:weight>` after the text."""
    return " ".join([prompt] + [f"<lora:{Path(path).stem}:{number(weight)}>" for path, weight in loras])


def split_loras(prompt: str) -> tuple:
    """(the prompt without its `<lora:name:weight>` tags, [(name, weight text)])."""
    return LORA_TAG.sub("", prompt), LORA_TAG.findall(prompt)


def lora_tag_in(text: str):
    """The first `<lora:…` tag in a text (up to its '>', if any), in any case, or None."""
    start = text.lower().find("<lora:")
    return None if start < 0 else text[start:text.find(">", start) + 1 or None]


def parameters_text(settings, position: int = 0) -> str:
    """The `parameters` chunk of the image at `position` of the batch, from the settings record."""
    if settings.batch > 1:
        settings = replace(settings, batch_position=position)
    fields = {}
    for row in FIELDS:
        text = row.format(*(getattr(settings, name) for name in row.attributes))
        if text is not None:
            fields[row.name] = quoted(text)
    if "Denoising strength" not in fields:  # A1111's name for the hires pass's strength when there is no init image
        fields = {"Denoising strength" if k == "Hires denoising strength" else k: v for k, v in fields.items()}
    lines = [prompt_with_loras(settings.prompt, settings.loras)]
    lines += [f"Negative prompt: {settings.negative_prompt}"] if settings.negative_prompt else []
    return "\n".join(lines + [", ".join(f"{k}: {v}" for k, v in fields.items())])


def read_fields(text: str) -> tuple:
    """(prompt, negative prompt, {field: value}) from a `parameters` chunk; the settings are its last line (a
    ValueError for a quoted value that is not JSON)."""
    *lines, settings = text.replace("\r\n", "\n").rstrip("\n").split("\n")  # an editor's line endings too
    negative = [i for i, line in enumerate(lines) if line.startswith("Negative prompt: ")]
    prompt = "\n".join(lines[:negative[0]] if negative else lines)
    negative_prompt = "\n".join(lines[negative[0]:])[len("Negative prompt: "):] if negative else ""
    fields = {}
    for key, value in FIELD.findall(settings):
        fields[key.strip()] = json.loads(value) if value.startswith('"') else value.strip()
    return prompt, negative_prompt, fields


def a1111_spellings(fields: dict) -> dict:
    """The fields as `FIELDS` names them, from A1111's other spellings: its older "Sampler: DPM++ 2M Karras"
    (before "Schedule type"), and "Denoising strength" for the hires pass's strength without an init image."""
    fields = dict(fields)
    if fields.get("Sampler", "").endswith(" Karras") and "Schedule type" not in fields:
        fields["Sampler"], fields["Schedule type"] = fields["Sampler"][:-len(" Karras")], "Karras"
    if "Hires upscale" in fields and "Init image hash" not in fields and "Hires denoising strength" not in fields \
            and "Denoising strength" in fields:
        fields["Hires denoising strength"] = fields.pop("Denoising strength")
    return fields


@dataclass(frozen=True)
class FromPNG:
    """What `--from PNG` gives: the settings its text holds, and what the command line asks about it."""
    path: Path
    values: dict     # {settings attribute: value}: a partial record, which the flags given override
    fields: dict     # the text's fields as written ({name: text}), A1111's own included
    lora_tags: list  # [(name, weight text)]: the prompt's <lora:name:weight> tags, whose files are given again


def read_png(path) -> FromPNG:
    """The settings of the PNG at `path`, from its `parameters` text (not the weights, the VAE, the LoRAs or the
    output: they are files of this machine). A refusal naming the file otherwise."""
    with opened(path, "--from") as image:  # a FIFO, a bomb or a damaged file: one line
        text = image.text.get("parameters") if hasattr(image, "text") else None
    if not text:
        raise Refusal(f"--from {path}: no 'parameters' text in it")
    try:
        prompt, negative_prompt, fields = read_fields(text)
    except ValueError as error:
        raise Refusal(f"--from {path}: its parameters text quotes a value that is not a JSON string ({error})") from None
    fields = a1111_spellings(fields)
    prompt, tags = split_loras(prompt)  # the LoRAs' <lora:name:weight>: not words of the prompt
    values, bad, garbled = {"prompt": prompt, "negative_prompt": negative_prompt}, [], None
    for row in FIELDS:
        if row.parse is None or row.name not in fields:
            continue
        try:
            value = row.parse(fields[row.name])
        except NotAsWritten:
            bad.append(f"{row.name} {fields[row.name]!r}")
        except (KeyError, ValueError) as error:
            garbled = garbled or error
        else:
            values.update(zip(row.attributes, value if isinstance(row.attribute, tuple) else (value,)))
    bad += [f"{name} {fields[name]!r}" for name in A1111_NUMBERS if name in fields and not DECIMAL.fullmatch(fields[name])]
    if bad:
        raise Refusal(f"--from {path}: its parameters text has {', '.join(bad)}, not numbers as they are written")
    unread = lora_tag_in(prompt)
    if unread is not None:
        raise Refusal(f"--from {path}: its prompt holds {unread!r}, not a <lora:name:weight> tag minitome reads")
    values.setdefault("dtype", "float32")  # minitome writes every other dtype; A1111's texts have none
    missing = [name for name in REQUIRED if name not in fields]
    if missing or garbled:
        raise Refusal(f"--from {path}: its parameters text lacks or garbles a field ({garbled or repr(missing[0])})")
    return FromPNG(Path(path), values, fields, tags)
