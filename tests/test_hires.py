"""The hires pass (`--hires-scale`) against the diffusers chain that does the same: its text-to-image pipeline with
`output_type="latent"`, `torch.nn.functional.interpolate` (bilinear or nearest) or the decoded image resized with
Pillow's Lanczos, then `StableDiffusionImg2ImgPipeline` with a generator seeded afresh (tomesd on its second
pass when `--hires-tome-ratio` is set). Every pixel within 2/255."""
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import reference_scheduler, sample_main as main
from test_bad_input import assert_one_line_error, no_files, run

PROMPT, NEGATIVE, SEED, GUIDANCE = "a red fox in the snow, watercolor", "blurry", 1234, 7.5
WIDTH, HEIGHT, STEPS = 40, 32, 10  # ×1.5: 60 × 48, rounded down to 56 × 48


def hires_reference(pipe, sampler, spacing, upscale, hires_steps, strength, tome_ratio=None):
    import tomesd
    from diffusers import StableDiffusionImg2ImgPipeline
    original, sample_size = pipe.scheduler, pipe.unet.config.sample_size
    pipe.scheduler = reference_scheduler(sampler, spacing)
    pipe.unet.register_to_config(sample_size=64)  # the img2img pipeline's constructor compares it with 64
    try:
        img2img = StableDiffusionImg2ImgPipeline(**{k: v for k, v in pipe.components.items() if k != "image_encoder"})
        first = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=GUIDANCE, width=WIDTH,
                     height=HEIGHT, output_type="pil" if upscale == "lanczos" else "latent",
                     generator=torch.Generator("cpu").manual_seed(SEED)).images
        if upscale == "lanczos":
            image = first[0].resize((56, 48), resample=Image.Resampling.LANCZOS)
        else:
            mode = "bilinear" if upscale == "latent" else "nearest"
            image = torch.nn.functional.interpolate(first, size=(6, 7), mode=mode)
        if tome_ratio:
            tomesd.apply_patch(img2img, ratio=tome_ratio, use_rand=False)
        try:
            return img2img(PROMPT, image=image, strength=strength, num_inference_steps=hires_steps, guidance_scale=GUIDANCE,
                           negative_prompt=NEGATIVE, generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
        finally:
            tomesd.remove_patch(img2img)
    finally:
        pipe.scheduler = original
        pipe.unet.register_to_config(sample_size=sample_size)


@pytest.mark.parametrize("sampler, spacing, upscale, tome_ratio", [
    ("euler-a", "leading", "latent", None), ("ddim", "leading", "lanczos", None),
    ("dpm++2m", "karras", "latent-nearest", None), ("euler", "trailing", "latent", 0.5)])
def test_hires_matches_the_diffusers_chain(tiny_pipeline, tmp_path, sampler, spacing, upscale, tome_ratio):
    pipe, folder = tiny_pipeline
    expected = hires_reference(pipe, sampler, spacing, upscale, 10, 0.6, tome_ratio)
    out = tmp_path / "hires.png"
    extra = ["--hires-tome-ratio", str(tome_ratio), "--tome-no-rand"] if tome_ratio else []
    assert main(["--weights", str(folder), "--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--seed", str(SEED),
                 "--steps", str(STEPS), "--width", str(WIDTH), "--height", str(HEIGHT), "--sampler", sampler,
                 "--spacing", spacing, "--hires-scale", "1.5", "--hires-steps", "10", "--hires-strength", "0.6",
                 "--hires-upscale", upscale, *extra, "--out", str(out)]) == 0
    image = Image.open(out)
    assert image.size == expected.size == (56, 48)
    difference = int(np.abs(np.asarray(image, np.int16) - np.asarray(expected, np.int16)).max())
    print(f"hires {sampler} {spacing} {upscale}, ToMe {tome_ratio}: largest pixel difference {difference}/255")
    assert difference <= 2
    if tome_ratio:  # merging visibly changed the second pass
        plain = hires_reference(pipe, sampler, spacing, upscale, 10, 0.6)
        assert int(np.abs(np.asarray(plain, np.int16) - np.asarray(expected, np.int16)).max()) > 2


def test_a_hires_png_remakes_itself_with_from(single_file, tmp_path):
    base = ["--weights", str(single_file), "--prompt", "a cat", "--steps", "10", "--seed", "3", "--width", "40",
            "--height", "32", "--hires-scale", "1.5", "--hires-steps", "11", "--hires-strength", "0.55",
            "--hires-upscale", "latent-nearest", "--hires-tome-ratio", "0.3", "--tome-seed", "5", "--tome-sx", "4",
            "--tome-merge", "attn,mlp"]  # ToMe on the second pass only, with settings of its own
    assert main(base + ["--out", str(tmp_path / "a.png")]) == 0
    text = Image.open(tmp_path / "a.png").text["parameters"]
    for field in ("Denoising strength: 0.55", "Hires upscale: 1.5", "Hires steps: 11", "Hires upscaler: Latent (nearest)",
                  "Token merging ratio hr: 0.3", "Size: 40x32", "ToMe hr: \"max_downsample 1, sx 4, sy 2, use_rand True, "
                  "merge attn+mlp, seed 5, reuse 1\""):
        assert field in text, field
    assert "ToMe:" not in text  # the first pass merged nothing
    assert main(["--weights", str(single_file), "--from", str(tmp_path / "a.png"), "--out", str(tmp_path / "b.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))
    assert Image.open(tmp_path / "b.png").text["parameters"] == text


@pytest.mark.parametrize("extra, pattern", [
    (["--hires-steps", "10"], "--hires-steps needs --hires-scale"),
    (["--hires-strength", "0.5", "--hires-upscale", "lanczos"], "--hires-strength, --hires-upscale need --hires-scale"),
    (["--hires-scale", "1"], r"--hires-scale must be a number > 1 .*got 1.0"),
    (["--hires-scale", "nan"], r"--hires-scale must be a number > 1"),
    (["--hires-scale", "2", "--hires-strength", "0.05"], r"--hires-strength: strength 0.05 of 10 steps leaves no step"),
    (["--hires-scale", "2", "--hires-strength", "0"], r"--hires-strength: strength must be in \(0, 1\]"),
    (["--hires-scale", "2", "--hires-steps", "1000", "--hires-strength", "1"],
     "--hires-steps: 1000 steps with leading spacing begin at t = 1000, past the schedule's last timestep 999"),
    (["--hires-scale", "2", "--hires-tome-ratio", "0.9"], r"--hires-tome-ratio 0.9: .*ratio must be in \[0, 0.75\]"),
    (["--hires-scale", "4000"], r"--hires-scale 4000.0 \(64000x64000\) --batch 1: needs about [\d,]+ GiB"),
    (["--hires-scale", "1e308"], r"--hires-scale 1e\+308 makes 16x16 larger than a number can say"),
    (["--hires-scale", "1.2"], r"--hires-scale 1.2 \(16x16\): the second pass would run at the first's size .* "
                               r"use at least 1.5$"),
    (["--hires-scale", "2", "--hires-upscale", "bicubic"], "argument --hires-upscale: invalid choice"),
    (["--hires-scale", "2", "--hires-strength", "0.2", "--todo-factor", "2", "--todo-until", "0.1"],
     r"--todo-until 0.1 turns ToDo on for none of the 3 UNet calls of the hires pass, the last 2 of 10 PLMS steps: "
     r"use at least 0.167"),  # the first pass's 11 calls have it on for one
])
def test_bad_hires_flags_are_one_line(single_file, tmp_path, extra, pattern):
    status, lines = run(["--weights", str(single_file), "--prompt", "a cat", "--steps", "10", "--width", "16",
                         "--height", "16", "--seed", "1", "--out", str(tmp_path / "o" / "x.png"), *extra])
    assert_one_line_error(status, lines, pattern)
    assert no_files(tmp_path / "o")
