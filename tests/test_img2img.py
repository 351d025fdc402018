"""A run from an image (`--init-image`, `--strength`) against diffusers' StableDiffusionImg2ImgPipeline, and the
images users bring.

DDIM, Euler, Euler a and DPM++ 2M: the same seed gives the reference's PNG within 2/255, and its latents in
float64. PLMS: diffusers slices PNDM's list of timesteps so that from the third call on the UNet is told a timestep
one stride below the latent's noise level; minitome starts PLMS at its start step with its own warm-up, tested
against PLMS written from its paper (test_sampler.reference_plms) on diffusers' UNet and VAE.
"""
import numpy as np
import pytest
import torch
from PIL import Image

import weights
from conftest import F64_BOUND, float64_pipeline, reference_scheduler, relative_error, sample_main as main
from minitome.cli.images import read_image
from minitome.pipeline import image_tensor
from test_bad_input import assert_one_line_error, no_files, run

PROMPT, NEGATIVE, SEED, GUIDANCE = "a red fox in the snow, watercolor", "blurry", 1234, 7.5


def picture(width=75, height=61) -> Image.Image:
    """A smooth picture with an edge, not a multiple of 8: the run is 72 × 56 after rounding down."""
    y, x = np.mgrid[0:height, 0:width]
    a = np.stack([x * 255 / width, y * 255 / height, 128 + 100 * (x > width // 2)], axis=-1)
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


def img2img_reference(pipe, sampler, spacing, steps, strength, output_type="pil"):
    from diffusers import StableDiffusionImg2ImgPipeline
    sample_size = pipe.unet.config.sample_size
    pipe.unet.register_to_config(sample_size=64)  # the img2img pipeline's constructor compares it with 64
    try:
        ref = StableDiffusionImg2ImgPipeline(**{k: v for k, v in pipe.components.items() if k != "image_encoder"})
    finally:
        pipe.unet.register_to_config(sample_size=sample_size)
    ref.scheduler = reference_scheduler(sampler, spacing) if output_type == "pil" else pipe.scheduler
    return ref(PROMPT, image=picture(), strength=strength, num_inference_steps=steps, guidance_scale=GUIDANCE,
               negative_prompt=NEGATIVE, output_type=output_type, generator=torch.Generator("cpu").manual_seed(SEED)).images


@pytest.mark.parametrize("sampler, spacing, steps, strength", [("ddim", "leading", 10, 0.6), ("euler", "leading", 10, 0.8),
                                                              ("euler-a", "trailing", 6, 0.5), ("dpm++2m", "karras", 10, 0.7),
                                                              ("dpm++2m", "leading", 7, 0.5)])  # from noise it would start at t = 876
def test_img2img_png_matches_diffusers(tiny_pipeline, tmp_path, sampler, spacing, steps, strength):
    pipe, folder = tiny_pipeline
    expected = img2img_reference(pipe, sampler, spacing, steps, strength)[0]
    picture().save(tmp_path / "init.png")
    out = tmp_path / "out.png"
    assert main(["--weights", str(folder), "--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--seed", str(SEED),
                 "--steps", str(steps), "--sampler", sampler, "--spacing", spacing, "--init-image",
                 str(tmp_path / "init.png"), "--strength", str(strength), "--out", str(out)]) == 0
    image = Image.open(out)
    assert image.size == expected.size == (72, 56)
    difference = int(np.abs(np.asarray(image, np.int16) - np.asarray(expected, np.int16)).max())
    print(f"img2img {sampler} {spacing} {steps} steps, strength {strength}: largest pixel difference {difference}/255")
    assert difference <= 2
    text = image.text["parameters"]
    assert f"Denoising strength: {strength}," in text and "Init image hash: " in text and "Size: 72x56" in text


@pytest.mark.parametrize("sampler, spacing, tome", [("euler-a", "trailing", False), ("dpm++2m", "karras", True),
                                                    ("ddim", "leading", False)])
def test_img2img_latents_match_diffusers_in_float64(tiny_pipeline, sampler, spacing, tome):
    import tomesd
    from minitome import ToMeConfig
    from minitome.pipeline import sample_latents
    pipe, folder = tiny_pipeline
    reference = float64_pipeline(pipe, sampler, spacing)
    if tome:
        tomesd.apply_patch(reference, ratio=0.5, use_rand=False)
    expected = img2img_reference(reference, sampler, spacing, 10, 0.6, output_type="latent")
    sd = weights.load(folder, dtype=torch.float64, encoder=True)
    init = image_tensor(picture(), 72, 56).double()
    latents = sample_latents(sd, PROMPT, NEGATIVE, 10, GUIDANCE, SEED, sampler=sampler, spacing=spacing,
                             tome=ToMeConfig(ratio=0.5, use_rand=False) if tome else None, init_image=init, strength=0.6)
    error = relative_error(latents, expected)
    print(f"img2img float64 ({sampler} {spacing}, ToMe {tome}): latents {error:.1e}")
    assert error <= F64_BOUND


def test_plms_img2img_warms_up_from_its_start_step(tiny_pipeline):
    """PLMS from the start step, with its Heun warm-up there, against PLMS written from its paper on diffusers'
    own parts: its VAE's encoder draws the latent, the forward process adds the noise, its UNet denoises."""
    from minitome.pipeline import sample_latents
    from sampler import spacing_of, start_step
    from test_sampler import reference_plms
    pipe, folder = tiny_pipeline
    ref = float64_pipeline(pipe)
    steps, strength = 10, 0.6
    start = start_step(steps, strength)
    timesteps = spacing_of("plms", steps, "leading").timesteps[start:]
    assert start == 4 and timesteps[0] == 501
    with torch.no_grad():
        generator = torch.Generator("cpu").manual_seed(SEED)
        image = image_tensor(picture(), 72, 56).double()
        x0 = ref.vae.encode(image).latent_dist.sample(generator) * ref.vae.config.scaling_factor
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        acp = ref.scheduler.alphas_cumprod.double()
        x = acp[timesteps[0]].sqrt() * x0 + (1 - acp[timesteps[0]]).sqrt() * noise
        cond, uncond = ref.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
        context = torch.cat([uncond, cond])

        def model(x, t):
            u, c = ref.unet(torch.cat([x, x]), t, context).sample.chunk(2)
            return u + GUIDANCE * (c - u)
        expected = reference_plms(model, x, timesteps)
    sd = weights.load(folder, dtype=torch.float64, encoder=True)
    latents = sample_latents(sd, PROMPT, NEGATIVE, steps, GUIDANCE, SEED, init_image=image, strength=strength)
    assert relative_error(latents, expected) <= F64_BOUND


# ---- the images users bring ----

def test_images_are_taken_as_their_owner_sees_them(tmp_path):
    base = picture(32, 24)
    rotated = base.rotate(90, expand=True)  # stored on its side, with an EXIF tag saying "rotate back"
    exif = Image.Exif()
    exif[0x0112] = 8  # orientation: rotate 90° clockwise to view
    rotated.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    assert read_image(tmp_path / "phone.jpg").size == (32, 24)
    base.convert("L").save(tmp_path / "gray.png")
    assert read_image(tmp_path / "gray.png").mode == "RGB"
    base.convert("P").save(tmp_path / "palette.png")
    assert read_image(tmp_path / "palette.png").mode == "RGB"
    base.convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert read_image(tmp_path / "cmyk.jpg").mode == "RGB"
    sixteen = (np.asarray(base.convert("L"), np.uint16) * 257)  # 16-bit: the same picture, 0 … 65535
    Image.fromarray(sixteen).save(tmp_path / "16bit.png")
    got = np.asarray(read_image(tmp_path / "16bit.png"))[..., 0].astype(int)
    assert np.abs(got - np.asarray(base.convert("L"), int)).max() <= 1  # scaled, not clipped at 255
    clear = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red: white on a page
    clear.save(tmp_path / "alpha.png")
    assert np.asarray(read_image(tmp_path / "alpha.png")).min() == 255
    gray16 = np.zeros((8, 8), np.uint16)
    gray16[:4] = 40000  # the top half gray, the bottom half the 16-bit value the tRNS chunk makes see-through
    Image.fromarray(gray16).save(tmp_path / "16bit-clear.png", transparency=0)
    got = np.asarray(read_image(tmp_path / "16bit-clear.png"))
    assert (got[4:] == 255).all() and (got[:4] == round(40000 / 65535 * 255)).all()


@pytest.mark.parametrize("what, pattern", [
    ("missing", "--init-image .*missing.png: no such file"),
    ("folder", "--init-image .*folder: not a regular file"),
    ("fifo", "--init-image .*fifo: not a regular file"),
    ("text", "--init-image .*text.png: not an image Pillow reads"),
    ("truncated", "--init-image .*truncated.png: a damaged image"),
    ("float", "--init-image .*float.png: a floating-point image, whose values have no agreed range"),
    ("tiny", r"--init-image .*tiny.png \(0x16\): smaller than 8 pixels on a side, give --width and --height"),
    ("bomb", "--init-image .*bomb.png: over 1,000 pixels, Pillow's limit against decompression bombs"),
    ("warned bomb", "--init-image .*warned bomb.png: over 1,000 pixels"),
    ("strength 0", r"--strength: strength must be in \(0, 1\], got 0.0"),
    ("strength 1.5", r"--strength: strength must be in \(0, 1\], got 1.5"),
    ("no step", r"--strength: strength 0.05 of 10 steps leaves no step to run .* at least 0.1"),
    ("strength alone", "--strength needs --init-image"),
    ("todo on for no call", r"--todo-until 0.1 turns ToDo on for none of the 3 UNet calls of the last 2 of 10 PLMS "
                            r"steps: use at least 0.167"),  # 11 calls from noise would have it on for one
])
def test_bad_init_images_and_strengths_are_one_line(single_file, tmp_path, monkeypatch, what, pattern):
    import os
    init = tmp_path / f"{what}.png"
    extra = ["--init-image", str(init)]
    if what == "folder":
        init = tmp_path / "folder"
        init.mkdir()
        extra = ["--init-image", str(init)]
    elif what == "fifo":
        init = tmp_path / "fifo"
        os.mkfifo(init)
        extra = ["--init-image", str(init)]
    elif what == "text":
        init.write_text("not a picture")
    elif what == "float":  # a 32-bit float TIFF, whatever its name: is its white 1.0 or 255?
        Image.fromarray(np.full((16, 16), 0.5, np.float32)).save(init, format="TIFF")
    elif what == "tiny":
        picture(7, 16).save(init)
    elif what == "truncated":
        picture().save(init)
        data = init.read_bytes()
        init.write_bytes(data[:len(data) // 2])  # the pixel data cut in the middle
    elif what in ("bomb", "warned bomb"):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
        picture(50 if what == "bomb" else 30, 50).save(init)  # 2,500 pixels (an error in Pillow), 1,500 (a warning)
    elif what == "todo on for no call":
        picture().save(init)
        extra += ["--strength", "0.2", "--todo-factor", "2", "--todo-until", "0.1"]
    elif what.startswith("strength") or what == "no step":
        picture().save(init)
        extra += ["--strength", {"strength 0": "0", "strength 1.5": "1.5", "no step": "0.05", "strength alone": "0.5"}[what]]
        if what == "strength alone":
            extra = ["--strength", "0.5"]
    status, lines = run(["--weights", str(single_file), "--prompt", "a cat", "--steps", "10", "--seed", "1",
                         "--out", str(tmp_path / "o" / "x.png"), *extra])
    assert_one_line_error(status, lines, pattern)
    assert no_files(tmp_path / "o")


def test_a_png_from_an_image_remakes_itself_with_from(single_file, tmp_path):
    import hashlib
    picture().save(tmp_path / "init.png")
    (tmp_path / "init.png.sha256").write_text("0" * 64)  # a sidecar says nothing of an image: its own bytes do
    base = ["--weights", str(single_file), "--init-image", str(tmp_path / "init.png")]
    assert main(base + ["--prompt", "a cat", "--steps", "10", "--seed", "3", "--strength", "0.7000001",
                        "--sampler", "euler-a", "--out", str(tmp_path / "a.png")]) == 0
    text = Image.open(tmp_path / "a.png").text["parameters"]
    assert "Denoising strength: 0.7000001" in text and "Size: 72x56" in text
    digest = hashlib.sha256((tmp_path / "init.png").read_bytes()).hexdigest()[:10]
    assert f"Init image hash: {digest}" in text
    assert main(base + ["--from", str(tmp_path / "a.png"), "--out", str(tmp_path / "b.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))
    picture().transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "other.png")  # another image: said
    status, lines = run(["--weights", str(single_file), "--from", str(tmp_path / "a.png"), "--init-image",
                         str(tmp_path / "other.png"), "--out", str(tmp_path / "d.png")])
    other = hashlib.sha256((tmp_path / "other.png").read_bytes()).hexdigest()[:10]
    assert status == 0 and f"minitome.sample: warning: --from {tmp_path / 'a.png'} was made with init image hash " \
        f"{digest}, --init-image has {other}: the image will differ" in lines
    status, lines = run(["--weights", str(single_file), "--from", str(tmp_path / "a.png"), "--out", str(tmp_path / "c.png")])
    assert_one_line_error(status, lines, r"--from .*a.png: its image was made from an init image \(hash \w+\): "
                                         "give it with --init-image PATH")
