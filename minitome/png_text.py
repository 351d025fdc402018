"""The text a PNG carries, A1111's `parameters` chunk: written so that it makes its image again.

Where this sits: `python -m minitome.sample` writes it into every image (minitome/output.py saves it), and
`--from PNG` reads it back as the run's flags, later flags overriding it (A1111's "PNG Info → send to
txt2img"). The layout is A1111's, so its PNG Info tab and other tools read it:

    a red fox in the snow                                   the prompt (any number of lines)
    Negative prompt: blurry                                 when there is one
    Steps: 20, Sampler: PLMS, CFG scale: 7.5, Seed: 1, Size: 512x512, Model hash: 6ce0161689, …

Every value that changes the pixels is written, each so that it reads back to the same number: floats in
Python's shortest round-trip form (`repr`: 0.4999999 stays 0.4999999, where six significant digits would
write 0.5 for a run whose pixels differ from 0.5's). A batch shares one noise tensor, so each image says its
place in it (A1111's "Batch size", "Batch pos"). A value holding commas is quoted as a JSON string, as A1111
quotes its own.

The sampler is named as A1111 names it ("DPM++ 2M", "Euler a", "Euler", "DDIM", "PLMS"), and a spacing other
than the default leading is its "Schedule type": karras is "Karras", trailing "SGM Uniform" (A1111's schedule
that, like trailing, starts every count at the top), linspace "Uniform". The names do not give A1111's images:
k-diffusion, under A1111's samplers, interpolates log σ between timesteps where diffusers (and minitome)
interpolate σ itself.
"""
import json
import re
from pathlib import Path

from sampler import A1111_NAMES
from .tome import MERGE_TARGETS

SCHEDULE_TYPES = {"linspace": "Uniform", "trailing": "SGM Uniform", "karras": "Karras"}
UPSCALERS = {"latent": "Latent", "latent-nearest": "Latent (nearest)", "lanczos": "Lanczos"}  # A1111's "Hires upscaler"
LORA_TAG = re.compile(r"\s*<lora:([^:<>]+):([^:<>]+)>")  # A1111 writes each LoRA's weight into the prompt


def number(value: float) -> str:
    """A float written to read back to itself: the shortest round-trip form, without a trailing '.0'."""
    text = repr(float(value) + 0.0)  # + 0.0: -0.0 is written 0
    return text[:-2] if text.endswith(".0") else text


def quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:"\n') else text


def prompt_with_loras(prompt: str, loras: list) -> str:
    """The prompt as A1111 writes it: each LoRA's `<lora:name:weight>` after the text."""
    return " ".join([prompt] + [f"<lora:{path.stem}:{number(weight)}>" for path, weight in loras])


def split_loras(prompt: str) -> tuple:
    """(the prompt without its `<lora:name:weight>` tags, [(name, weight text)])."""
    return LORA_TAG.sub("", prompt), LORA_TAG.findall(prompt)


def lora_tag_in(text: str):
    """The first `<lora:…` tag in a text (up to its '>', if any), in any case, or None."""
    start = text.lower().find("<lora:")
    return None if start < 0 else text[start:text.find(">", start) + 1 or None]


def parameters_text(args, seed: int, short_hash: str, tome=None, todo=None, deep_cache=None, dtype: str = "float32",
                    vae_hash: str = "", position: int = 0, init_hash: str = "", hires=None, add_on_hashes=None) -> str:
    """The `parameters` chunk of the image at `position` of the batch (args: the command line's; tome, todo,
    deep_cache: the methods' configs, None when off; dtype: the run's; vae_hash: of --vae when given;
    add_on_hashes: {"lora": [(name, hash)], "ti": [(token, hash)]}, minitome/add_ons.py)."""
    add_on_hashes = add_on_hashes or {}
    fields = {"Steps": args.steps, "Sampler": A1111_NAMES[args.sampler]}
    if args.spacing != "leading":
        fields["Schedule type"] = SCHEDULE_TYPES[args.spacing]
    fields.update({"CFG scale": number(args.guidance), "Seed": seed, "Size": f"{args.width}x{args.height}"})
    if short_hash:
        fields["Model hash"] = short_hash
    fields["Model"] = quoted(Path(args.weights).stem)
    if args.vae:
        fields["VAE"] = quoted(Path(args.vae).stem)
        if vae_hash:
            fields["VAE hash"] = vae_hash
    if args.ema:
        fields["EMA"] = "True"
    if args.init_image:
        fields["Denoising strength"] = number(args.strength)
        fields["Init image hash"] = init_hash
    if hires is not None:  # A1111's names; its "Denoising strength" is the hires pass's when there is no init image
        fields["Hires denoising strength" if args.init_image else "Denoising strength"] = number(hires.strength)
        fields.update({"Hires upscale": number(hires.scale), "Hires steps": hires.steps,
                       "Hires upscaler": UPSCALERS[hires.upscale]})
        if args.hires_tome_ratio is not None:
            fields["Token merging ratio hr"] = number(args.hires_tome_ratio)
    if args.batch > 1:
        fields["Batch size"], fields["Batch pos"] = args.batch, position
    if add_on_hashes.get("lora"):
        fields["Lora hashes"] = quoted(", ".join(f"{name}: {h}" for name, h in add_on_hashes["lora"]))
    if add_on_hashes.get("ti"):
        fields["TI hashes"] = quoted(", ".join(f"{name}: {h}" for name, h in add_on_hashes["ti"]))
    if tome is not None:
        amount = f"threshold {number(tome.threshold)}" if tome.threshold is not None else f"ratio {number(tome.ratio)}"
        fields["ToMe"] = quoted(f"{amount}, {tome_settings(tome)}")
    elif hires is not None and hires.tome is not None:  # ToMe on the hires pass only: its ratio is said above
        fields["ToMe hr"] = quoted(tome_settings(hires.tome))
    if todo is not None:
        fields["ToDo"] = quoted(f"factor {todo.factor}, max_downsample {todo.max_downsample}, until {number(todo.until)}")
    if deep_cache is not None:
        fields["DeepCache"] = quoted(f"interval {deep_cache.interval}, branch {deep_cache.branch}")
    if dtype != "float32":
        fields["Dtype"] = dtype
    if args.attention != "sdpa":
        fields["Attention"] = args.attention
    lines = [prompt_with_loras(args.prompt, getattr(args, "loras", []))] + ([f"Negative prompt: {args.negative_prompt}"] if args.negative_prompt else [])
    return "\n".join(lines + [", ".join(f"{k}: {v}" for k, v in fields.items())])


def tome_settings(tome) -> str:
    """ToMe's settings other than how much it merges, as the "ToMe" field writes them."""
    merged = "+".join(t for t, on in zip(MERGE_TARGETS, (tome.merge_attn, tome.merge_crossattn, tome.merge_mlp)) if on)
    return (f"max_downsample {tome.max_downsample}, sx {tome.sx}, sy {tome.sy}, use_rand {tome.use_rand}, "
            f"merge {merged}, seed {tome.seed}, reuse {tome.reuse}")


FIELD = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')  # A1111's: key: value or key: "quoted"


WHOLE_NUMBERS = ("Steps", "Seed", "Hires steps", "Batch size", "Batch pos")
NUMBERS = ("CFG scale", "Denoising strength", "Hires denoising strength", "Hires upscale", "Token merging ratio",
           "Token merging ratio hr")
DECIMAL = r"[+-]?(\d{1,30}(\.\d*)?|\.\d+)([eE][+-]?\d{1,4})?"


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


def sampler_flags(name: str, schedule_type: str = None) -> list:
    """--sampler and --spacing from A1111's "Sampler" and "Schedule type" (older A1111 wrote "DPM++ 2M Karras")."""
    if name.endswith(" Karras") and schedule_type is None:
        name, schedule_type = name[:-len(" Karras")], "Karras"
    samplers = {v: k for k, v in A1111_NAMES.items()}
    spacings = {v: k for k, v in SCHEDULE_TYPES.items()}
    if name not in samplers:
        raise ValueError(f"Sampler {name!r} is not one of {', '.join(samplers)}")
    if schedule_type not in (None, "Automatic") and schedule_type not in spacings:
        raise ValueError(f"Schedule type {schedule_type!r} is not one of {', '.join(spacings)}")
    spacing = spacings.get(schedule_type, "leading")
    return ["--sampler", samplers[name], "--spacing", spacing]


def pairs(value: str) -> dict:
    """'ratio 0.5, max_downsample 1, …' → {'ratio': '0.5', 'max_downsample': '1', …}"""
    return dict(item.strip().split(" ", 1) for item in value.split(",") if item.strip())


def flags_from(path: Path) -> list:
    """The command-line flags that remake the image of the PNG at `path`, from its `parameters` text (not the
    weights, the VAE or the output: they are files of this machine). ValueError naming the file otherwise."""
    from .images import opened
    with opened(path, "--from") as image:  # a FIFO, a bomb or a damaged file: one line
        text = image.text.get("parameters") if hasattr(image, "text") else None
    if not text:
        raise ValueError(f"--from {path}: no 'parameters' text in it")
    try:
        prompt, negative_prompt, f = read_fields(text)
    except ValueError as error:
        raise ValueError(f"--from {path}: its parameters text quotes a value that is not a JSON string ({error})") from None
    bad = [f"{key} {f[key]!r}" for key in WHOLE_NUMBERS if key in f and not re.fullmatch(r"\d{1,30}", f[key])]
    bad += [f"{key} {f[key]!r}" for key in NUMBERS if key in f and not re.fullmatch(DECIMAL, f[key])]
    if bad:
        raise ValueError(f"--from {path}: its parameters text has {', '.join(bad)}, not numbers as they are written")
    prompt, f["lora tags"] = split_loras(prompt)  # the LoRAs' <lora:name:weight>: not words of the prompt
    unread = lora_tag_in(prompt)
    if unread is not None:
        raise ValueError(f"--from {path}: its prompt holds {unread!r}, not a <lora:name:weight> tag minitome reads")
    try:
        width, height = f["Size"].split("x")
        argv = [f"--prompt={prompt}", f"--negative-prompt={negative_prompt}", "--steps", f["Steps"],  # "-fox" too
                *sampler_flags(f["Sampler"], f.get("Schedule type")), "--guidance", f["CFG scale"], "--seed", f["Seed"],
                "--width", width, "--height", height]
        if "Batch size" in f:
            argv += ["--batch", f["Batch size"]]
        if "Hires upscale" in f:
            upscalers = {v: k for k, v in UPSCALERS.items()}
            strength = f["Hires denoising strength"] if "Init image hash" in f else f["Denoising strength"]
            argv += ["--hires-scale", f["Hires upscale"], "--hires-strength", strength,
                     "--hires-upscale", upscalers[f["Hires upscaler"]]]
            if "Hires steps" in f:  # A1111 leaves it out at 0: the first pass's count
                argv += ["--hires-steps", f["Hires steps"]]
            if "Token merging ratio hr" in f:
                argv += ["--hires-tome-ratio", f["Token merging ratio hr"]]
        if "Denoising strength" in f and ("Hires upscale" not in f or "Init image hash" in f):
            argv += ["--strength", f["Denoising strength"]]
        if f.get("EMA") == "True":
            argv += ["--ema"]
        if "Dtype" in f:
            argv += ["--dtype", f["Dtype"]]
        if "Attention" in f:
            argv += ["--attention", f["Attention"]]
        if "ToMe" in f or "ToMe hr" in f:
            t = pairs(f["ToMe"] if "ToMe" in f else f["ToMe hr"])
            if "ToMe" in f:
                argv += ["--tome-threshold", t["threshold"]] if "threshold" in t else ["--tome-ratio", t["ratio"]]
            argv += ["--tome-max-downsample", t["max_downsample"], "--tome-sx", t["sx"], "--tome-sy", t["sy"],
                     "--tome-merge", t["merge"].replace("+", ","), "--tome-seed", t["seed"],
                     "--tome-reuse", t["reuse"]] + (["--tome-no-rand"] if t["use_rand"] == "False" else [])
        if "ToDo" in f:
            t = pairs(f["ToDo"])
            argv += ["--todo-factor", t["factor"], "--todo-max-downsample", t["max_downsample"], "--todo-until", t["until"]]
        if "DeepCache" in f:
            t = pairs(f["DeepCache"])
            argv += ["--deepcache-interval", t["interval"], "--deepcache-branch", t["branch"]]
    except (KeyError, ValueError) as error:
        raise ValueError(f"--from {path}: its parameters text lacks or garbles a field ({error})") from None
    return argv, f
