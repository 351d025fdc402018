"""`python -m minitome.sample` end to end against diffusers' StableDiffusionPipeline (+ tomesd), and bad input.

A random tiny SD-shaped pipeline saved by diffusers, and the same weights as an official single file;
same prompt, negative prompt, seed, steps, guidance and a non-square size: every pixel within 2/255.
"""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import weights
from conftest import FLOAT32, F64_BOUND, float64_pipeline, reference_scheduler, relative_error, sample_main as main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = dict(prompt="a red fox in the snow, watercolor", negative_prompt="blurry", steps=10, guidance=7.5,
                seed=1234, width=72, height=56)  # a 9×7 latent: non-square and odd


def cli(weights_path, out, *extra, **settings):
    s = {**SETTINGS, **settings}
    args = ["--weights", str(weights_path), "--prompt", s["prompt"], "--negative-prompt", s["negative_prompt"],
            "--steps", str(s["steps"]), "--guidance", str(s["guidance"]), "--seed", str(s["seed"]),
            "--width", str(s["width"]), "--height", str(s["height"]), "--out", str(out), *FLOAT32, *extra]
    return subprocess.run([sys.executable, "-m", "minitome.sample", *args], cwd=ROOT, capture_output=True, text=True)


def reference_image(pipe, **settings):
    s = {**SETTINGS, **settings}
    return pipe(s["prompt"], negative_prompt=s["negative_prompt"], num_inference_steps=s["steps"],
                guidance_scale=s["guidance"], width=s["width"], height=s["height"],
                generator=torch.Generator("cpu").manual_seed(s["seed"])).images[0]


def max_pixel_difference(a, b) -> int:
    a, b = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
    assert a.shape == b.shape
    return int(np.abs(a - b).max())


@pytest.fixture(scope="module")
def references(tiny_pipeline):
    import tomesd
    pipe, _ = tiny_pipeline
    plain = reference_image(pipe)
    tomesd.apply_patch(pipe, ratio=0.5, use_rand=False)
    try:
        merged = reference_image(pipe)
    finally:
        tomesd.remove_patch(pipe)
    return plain, merged


@pytest.mark.parametrize("layout", ["folder", "single file"])
def test_sample_matches_diffusers(tiny_pipeline, single_file, references, tmp_path, layout):
    path = tiny_pipeline[1] if layout == "folder" else single_file
    done = cli(path, tmp_path / "img.png")
    assert done.returncode == 0, done.stderr
    image = Image.open(tmp_path / "img.png")
    assert image.size == (72, 56)
    assert max_pixel_difference(image, references[0]) <= 2
    assert "seed: 1234" in done.stderr and "step 10/10" in done.stderr


@pytest.mark.parametrize("layout", ["folder", "single file"])
def test_sample_with_tome_matches_diffusers_with_tomesd(tiny_pipeline, single_file, references, tmp_path, layout):
    path = tiny_pipeline[1] if layout == "folder" else single_file
    done = cli(path, tmp_path / "img.png", "--tome-no-rand", "--tome-ratio", "0.5")
    assert done.returncode == 0, done.stderr
    image = Image.open(tmp_path / "img.png")
    assert max_pixel_difference(image, references[1]) <= 2
    assert max_pixel_difference(references[0], references[1]) > 2  # merging visibly changed the image


@pytest.mark.parametrize("sampler, spacing, steps", [
    ("ddim", "leading", 10), ("euler", "leading", 10), ("euler", "karras", 10), ("euler-a", "leading", 10),
    ("euler-a", "trailing", 4), ("euler-a", "linspace", 7), ("dpm++2m", "karras", 10), ("dpm++2m", "leading", 10),
    ("dpm++2m", "trailing", 1), ("plms", "trailing", 4), ("ddim", "trailing", 2)])
def test_each_sampler_matches_diffusers_with_its_scheduler(tiny_pipeline, tmp_path, sampler, spacing, steps):
    """The PNG within 2/255 of StableDiffusionPipeline with the scheduler of that name (Euler a: its noise from the
    same generator), made as `Scheduler.from_config(pipe.scheduler.config)` with SD 1.5's scheduler config."""
    pipe, folder = tiny_pipeline
    original = pipe.scheduler
    pipe.scheduler = reference_scheduler(sampler, spacing)
    try:
        expected = reference_image(pipe, steps=steps)
    finally:
        pipe.scheduler = original
    out = tmp_path / "img.png"
    assert main(["--weights", str(folder), "--prompt", SETTINGS["prompt"], "--negative-prompt", SETTINGS["negative_prompt"],
                 "--steps", str(steps), "--seed", str(SETTINGS["seed"]), "--width", str(SETTINGS["width"]), "--height",
                 str(SETTINGS["height"]), "--sampler", sampler, "--spacing", spacing, "--out", str(out)]) == 0
    difference = max_pixel_difference(Image.open(out), expected)
    print(f"{sampler} {spacing} {steps}: largest pixel difference {difference}/255")
    assert difference <= 2


@pytest.mark.parametrize("sampler, spacing, merged", [("plms", "leading", False), ("plms", "leading", True),
                                                      ("ddim", "leading", False), ("euler", "karras", False),
                                                      ("euler-a", "trailing", False), ("euler-a", "leading", True),
                                                      ("dpm++2m", "karras", False), ("dpm++2m", "karras", True)])
def test_float64_latents_and_image_match_diffusers(tiny_pipeline, sampler, spacing, merged):
    """End to end in float64: the final latents and the decoded image before rounding to 8 bits, against
    StableDiffusionPipeline (+ tomesd with use_rand off) on the same tiny weights."""
    import tomesd
    from minitome import ToMeConfig
    from minitome.pipeline import decode, sample_latents
    pipe, folder = tiny_pipeline
    reference = float64_pipeline(pipe, sampler, spacing)
    if merged:
        tomesd.apply_patch(reference, ratio=0.5, use_rand=False)
    s = {**SETTINGS, "steps": 10}
    expected = reference(s["prompt"], negative_prompt=s["negative_prompt"], num_inference_steps=s["steps"],
                         guidance_scale=s["guidance"], width=s["width"], height=s["height"], output_type="latent",
                         generator=torch.Generator("cpu").manual_seed(s["seed"])).images
    with torch.no_grad():
        expected_image = (reference.vae.decode(expected / reference.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    sd = weights.load(folder, dtype=torch.float64)
    latents = sample_latents(sd, s["prompt"], s["negative_prompt"], s["steps"], s["guidance"], s["seed"], s["width"],
                             s["height"], sampler=sampler, tome=ToMeConfig(ratio=0.5, use_rand=False) if merged else None,
                             spacing=spacing)
    assert latents.dtype == expected.dtype == torch.float64
    errors = relative_error(latents, expected), relative_error(decode(sd, latents), expected_image)
    print(f"float64 end to end ({sampler} {spacing}, merged {merged}): latents {errors[0]:.1e}, image {errors[1]:.1e}")
    assert max(errors) <= F64_BOUND


def test_png_parameters_and_no_overwrite(single_file, tmp_path, capsys):
    out = tmp_path / "same.png"
    argv = ["--weights", str(single_file), "--prompt", "a cat", "--negative-prompt", "dog", "--steps", "10",
            "--seed", "7", "--width", "16", "--height", "24", "--batch", "2", "--tome-ratio", "0.3", "--out", str(out)]
    assert main(argv) == 0
    assert main(argv) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["same-1.png", "same-2.png", "same-3.png", "same.png"]  # nothing overwritten, no leftovers
    text = Image.open(out).text["parameters"]
    lines = text.split("\n")
    assert lines[0] == "a cat" and lines[1] == "Negative prompt: dog"
    assert lines[2].startswith("Steps: 10, Sampler: PLMS, CFG scale: 7.5, Seed: 7, Size: 16x24, Model hash: ")
    import hashlib
    assert f"Model hash: {hashlib.sha256(single_file.read_bytes()).hexdigest()[:10]}," in lines[2]
    assert 'ToMe: "ratio 0.3, max_downsample 1, sx 2, sy 2, use_rand True, merge attn, seed 0' in lines[2]
    assert "Batch size: 2, Batch pos: 0" in lines[2] and "Batch pos: 1" in Image.open(tmp_path / "same-1.png").text["parameters"]


@pytest.mark.parametrize("extra, written", [
    (["--tome-ratio", "0.4999999", "--guidance", "7.123456789", "--tome-seed", "3"], "CFG scale: 7.123456789"),
    (["--batch", "3", "--tome-threshold", "0.30000001", "--tome-reuse", "2", "--deepcache-interval", "3",
      "--deepcache-branch", "1", "--tome-no-rand"], "threshold 0.30000001"),
    (["--todo-factor", "2", "--todo-until", "0.6000001", "--tome-ratio", "0.3", "--tome-merge", "crossattn,mlp",
      "--sampler", "ddim", "--attention", "plain", "--guidance", "1"], "until 0.6000001"),
    (["--sampler", "dpm++2m", "--spacing", "karras", "--tome-ratio", "0.5"], "Sampler: DPM++ 2M, Schedule type: Karras"),
    (["--sampler", "euler-a", "--spacing", "trailing", "--steps", "4", "--batch", "2"], "Sampler: Euler a, Schedule type: SGM Uniform"),
    (["--sampler", "euler", "--spacing", "linspace", "--deepcache-interval", "2"], "Sampler: Euler, Schedule type: Uniform"),
    (["--prompt=-cat", "--negative-prompt=--dog"], "-cat\nNegative prompt: --dog\n"),  # prompts that look like flags
    (["--sampler", "lcm", "--steps", "4", "--guidance", "1.5"], "Steps: 4, Sampler: LCM, CFG scale: 1.5, Seed: 5, Size"),
    (["--sampler", "lcm", "--steps", "3", "--guidance", "1", "--batch", "3", "--tome-threshold", "0.3", "--tome-reuse",
      "2", "--deepcache-interval", "2"], "Steps: 3, Sampler: LCM, CFG scale: 1,"),  # LCM beside the methods
    (["--sampler", "lcm", "--steps", "4", "--todo-factor", "2", "--hires-scale", "2", "--hires-steps", "4",
      "--hires-strength", "0.5", "--hires-upscale", "latent-nearest"], "Hires upscaler: Latent (nearest)"),
])
def test_a_png_remakes_its_image_with_from(single_file, tmp_path, extra, written):
    """A PNG's text holds every value that changes its pixels, each reading back to the same number: --from takes
    it as the settings and gives the same pixels and the same text, for every image of a batch."""
    base = ["--weights", str(single_file), "--prompt", "a cat, wearing: a hat", "--negative-prompt", "dog, \"blurry\"",
            "--steps", "10", "--seed", "5", "--width", "24", "--height", "16"]
    assert main(base + extra + ["--out", str(tmp_path / "a.png")]) == 0
    made = sorted(tmp_path.glob("a*.png"))  # a-1, a-2, a: the same name order as the remade b-1, b-2, b
    assert written in Image.open(made[0]).text["parameters"]
    for position, png in enumerate(made):
        out = tmp_path / f"from-{position}" / "b.png"
        assert main(["--weights", str(single_file), "--from", str(png), "--out", str(out)]) == 0
        again = sorted(out.parent.glob("b*.png"))[position]
        assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(png)))
        assert Image.open(again).text["parameters"] == Image.open(png).text["parameters"]  # Batch pos included


@pytest.mark.parametrize("written, sampler, spacing", [("Sampler: DPM++ 2M Karras", "dpm++2m", "karras"),
                                                       ("Sampler: DPM++ 2M, Schedule type: Karras", "dpm++2m", "karras"),
                                                       ("Sampler: Euler a, Schedule type: Automatic", "euler-a", "leading"),
                                                       ("Sampler: DDIM", "ddim", "leading")])
def test_from_reads_a1111s_sampler_names(tmp_path, written, sampler, spacing):
    """A1111 wrote "DPM++ 2M Karras" as one name before it had a "Schedule type" field; both read back."""
    from minitome.cli.output import png_info
    from minitome.cli.png_text import read_png
    png = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(png, pnginfo=png_info(f"a cat\nSteps: 20, {written}, CFG scale: 7, Seed: 1, Size: 512x512"))
    values = read_png(png).values
    assert values["sampler"] == sampler and values.get("spacing", "leading") == spacing


def test_numbers_are_written_to_read_back_to_themselves():
    from minitome.cli.png_values import number
    for value in (0.4999999, 7.123456789, 1e-7, 1 / 3, 2.0, 0.1 + 0.2, 1e300):
        assert float(number(value)) == value and not number(value).endswith(".0")
    assert number(-0.0) == "0" and number(2.0) == "2"  # the identity ratio is 0 however it was typed


def test_from_reads_a1111s_texts_as_a1111_writes_them(tmp_path):
    """A1111 leaves "Hires steps" out at 0 (the first pass's count), and an editor may add CRLF line endings and a
    last newline: the text still reads, to the same flags."""
    from minitome.cli.output import png_info
    from minitome.cli.png_text import read_png
    png = tmp_path / "a1111.png"
    text = ("a cat\r\nNegative prompt: dog\r\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 1, Size: 512x512, "
            "Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: Latent\r\n")
    Image.new("RGB", (8, 8)).save(png, pnginfo=png_info(text))
    values = read_png(png).values
    assert (values["prompt"], values["negative_prompt"]) == ("a cat", "dog") and "hires_steps" not in values
    assert values["hires_scale"] == 2 and values["seed"] == 1 and values["hires_strength"] == 0.5


@pytest.mark.parametrize("tag", ["<lora:good>", "<lora:good:0.5:1>", "<lora:good:>", "<LORA:good:0.5:1>"])
def test_from_refuses_a_lora_tag_it_cannot_read(tmp_path, tag):
    """A tag that is not <lora:name:weight> would stay in the prompt as words and the LoRA be lost: refused."""
    from minitome.cli.output import png_info
    from minitome.cli.png_text import read_png
    png = tmp_path / "tagged.png"
    Image.new("RGB", (8, 8)).save(png, pnginfo=png_info(f"a cat {tag}\nSteps: 20, Sampler: DDIM, CFG scale: 7, Seed: 1, "
                                                        "Size: 512x512"))
    with pytest.raises(ValueError, match=rf"--from .*tagged.png: its prompt holds '{re.escape(tag)}', not a <lora:"):
        read_png(png)


def test_later_flags_override_from(single_file, tmp_path):
    assert main(["--weights", str(single_file), "--prompt", "a cat", "--steps", "10", "--seed", "5", "--width", "16",
                 "--height", "16", "--out", str(tmp_path / "a.png")]) == 0
    assert main(["--weights", str(single_file), "--from", str(tmp_path / "a.png"), "--seed", "6", "--steps", "11",
                 "--out", str(tmp_path / "b.png")]) == 0
    assert "Steps: 11, Sampler: PLMS, CFG scale: 7.5, Seed: 6," in Image.open(tmp_path / "b.png").text["parameters"]


def test_random_seed_is_printed_and_reproduces(single_file, tmp_path, capsys):
    base = ["--weights", str(single_file), "--prompt", "a cat", "--steps", "10", "--width", "16", "--height", "16"]
    assert main(base + ["--out", str(tmp_path / "a.png")]) == 0
    seed = int(capsys.readouterr().err.split("seed: ")[1].split()[0])
    assert main(base + ["--seed", str(seed), "--out", str(tmp_path / "b.png")]) == 0
    assert max_pixel_difference(Image.open(tmp_path / "a.png"), Image.open(tmp_path / "b.png")) == 0


# ---- bad input: a one-line error, a non-zero exit, no traceback, no output file ----

def bad_weights(tiny_pipeline, single_file, tmp_path, kind):
    from safetensors.torch import load_file, save_file
    if kind == "missing":
        return tmp_path / "nope.safetensors"
    if kind == "truncated":
        path = tmp_path / "truncated.safetensors"
        path.write_bytes(single_file.read_bytes()[: single_file.stat().st_size // 3])
        return path
    if kind == "corrupt":
        path = tmp_path / "corrupt.safetensors"
        path.write_bytes(b"\xff" * 4096)
        return path
    if kind == "random safetensors":
        path = tmp_path / "random.safetensors"
        save_file({"foo": torch.randn(3)}, str(path))
        return path
    if kind == "sdxl layout":
        path = tmp_path / "sdxl.safetensors"
        tensors = load_file(str(single_file))
        tensors["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight"] = torch.ones(64)
        save_file(tensors, str(path))
        return path
    if kind == "sd2 text encoder":
        folder = tmp_path / "sd2"
        shutil.copytree(tiny_pipeline[1], folder)
        config = (folder / "text_encoder" / "config.json").read_text().replace('"hidden_size": 64', '"hidden_size": 1024')
        (folder / "text_encoder" / "config.json").write_text(config)
        return folder
    if kind == "pickle":
        path = tmp_path / "model.ckpt"
        path.write_bytes(b"\x80\x04K\x01.")
        return path
    if kind == "no tokenizer":
        lonely = tmp_path / "lonely"
        lonely.mkdir()
        return shutil.copy(single_file, lonely / "model.safetensors")
    raise AssertionError(kind)


BAD_WEIGHTS = {"missing": "no such file", "truncated": "truncated", "corrupt": "not a readable safetensors file",
               "random safetensors": "tensor\\(s\\) of no SD 1.x part, first 'foo'", "sdxl layout": "an SDXL checkpoint",
               "sd2 text encoder": "text encoder width 1024 is SD 2.x's", "pickle": "pickle checkpoints are refused",
               "no tokenizer": "no tokenizer found"}


def assert_clean_failure(capsys, argv, pattern, out_dir):
    import re
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().split("\n")
    assert err[-1].startswith("minitome.sample: error: ") and re.search(pattern, err[-1]), err
    assert not any("Traceback" in line for line in err)
    assert not any(p.suffix == ".png" or ".part" in p.name for p in out_dir.rglob("*"))


@pytest.mark.parametrize("kind", list(BAD_WEIGHTS))
def test_bad_weights(tiny_pipeline, single_file, tmp_path, capsys, kind):
    path = bad_weights(tiny_pipeline, single_file, tmp_path, kind)
    out_dir = tmp_path / "out"
    argv = ["--weights", str(path), "--prompt", "x", "--steps", "10", "--width", "16", "--height", "16",
            "--out", str(out_dir / "x.png")]
    assert_clean_failure(capsys, argv, BAD_WEIGHTS[kind], out_dir)


@pytest.mark.parametrize("extra, pattern", [
    (["--width", "70"], "--width must be a positive multiple of 8, got 70"),
    (["--height", "0"], "--height must be a positive multiple of 8, got 0"),
    (["--width", "-8"], "--width must be a positive multiple of 8, got -8"),
    (["--steps", "0"], "--steps: steps must be a whole number >= 1, got 0"),
    (["--steps", "400"], "--steps: 400 steps with leading spacing would start at t = 799.*--spacing trailing.*the nearest leading counts that work: 333 or 451"),
    (["--steps", "1000"], "--steps: 1000 steps with leading spacing would start at t = 1000"),
    (["--tome-ratio", "0.9"], r"ratio must be in \[0, 0.75\]"),
    (["--tome-ratio", "0.5", "--tome-merge", "attn,ffn"], "--tome-merge takes a comma list"),
    (["--tome-no-rand"], "--tome-no-rand needs --tome-ratio or --tome-threshold"),
    (["--tokenizer", "/nonexistent/tok"], "no tokenizer here"),
])
def test_bad_settings(single_file, tmp_path, capsys, extra, pattern):
    out_dir = tmp_path / "out"
    argv = ["--weights", str(single_file), "--prompt", "x", "--steps", "10", "--width", "16", "--height", "16",
            "--out", str(out_dir / "x.png"), *extra]
    assert_clean_failure(capsys, argv, pattern, out_dir)


def test_unwritable_output_folder(single_file, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    argv = ["--weights", str(single_file), "--prompt", "x", "--steps", "10", "--width", "16", "--height", "16",
            "--out", str(blocker / "x.png")]
    assert_clean_failure(capsys, argv, "cannot create folder", tmp_path)


def test_bad_input_exit_status_from_the_shell(tmp_path):
    done = cli(tmp_path / "missing.safetensors", tmp_path / "x.png")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().endswith("no such file or folder")
    assert not (tmp_path / "x.png").exists()


def test_a_4_step_lcm_image_with_the_tiny_autoencoder_and_a_preview(tiny_pipeline, tmp_path, monkeypatch):
    """The fast path a CPU user takes, made by the command line on the tiny model: `--sampler lcm --steps 4
    --guidance 1`, a TAESD as --vae and as --preview-vae, and --preview. The PNG within 2/255 of diffusers'
    StableDiffusionPipeline with LCMScheduler (from SD 1.5's config) and the AutoencoderTiny; one preview per step,
    the last equal to the image (LCM's last x̂₀ is the result, decoded by the same TAESD); the text says "Sampler:
    LCM" and no Schedule type, and --from remakes the image from it."""
    from diffusers import LCMScheduler
    from minitome.cli.preview import Preview
    from test_taesd import TINY_TAESD, diffusers_taesd, with_taesd
    pipe, folder = tiny_pipeline
    taesd = diffusers_taesd(seed=31, tame=True, **TINY_TAESD)
    taesd.save_pretrained(tmp_path / "taesd")
    reference = with_taesd(pipe, taesd)
    reference.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    expected = reference_image(reference, steps=4, guidance=1.0, negative_prompt="")

    drawn = []
    real_call = Preview.__call__
    monkeypatch.setattr(Preview, "__call__", lambda self, i, t, x0: drawn.append((i, t)) or real_call(self, i, t, x0))
    out, shown = tmp_path / "lcm.png", tmp_path / "preview.png"
    argv = ["--weights", str(folder), "--prompt", SETTINGS["prompt"], "--sampler", "lcm", "--steps", "4", "--guidance",
            "1", "--seed", str(SETTINGS["seed"]), "--width", str(SETTINGS["width"]), "--height", str(SETTINGS["height"]),
            "--vae", str(tmp_path / "taesd"), "--preview", str(shown), "--preview-vae", str(tmp_path / "taesd")]
    assert main(argv + ["--out", str(out)]) == 0
    image = Image.open(out)
    difference = max_pixel_difference(image, expected)
    print(f"LCM 4 steps + TAESD: largest pixel difference {difference}/255")
    assert difference <= 2
    assert drawn == [(0, 999), (1, 759), (2, 499), (3, 259)]
    assert max_pixel_difference(Image.open(shown), image) == 0
    text = image.text["parameters"]
    assert "Sampler: LCM," in text and "Schedule type" not in text and "review" not in text
    assert main(["--weights", str(folder), "--from", str(out), "--vae", str(tmp_path / "taesd"),
                 "--out", str(tmp_path / "again.png")]) == 0
    assert max_pixel_difference(Image.open(tmp_path / "again.png"), image) == 0
    assert Image.open(tmp_path / "again.png").text["parameters"] == text
