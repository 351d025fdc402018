"""A sampler is one file and one row: a toy sampler, written to a file of its own and added to the table by one
row, runs end to end through the command line, is named in the PNG's text and remade from it by `--from`.

The toy is DDIM written afresh from its formula (x̂₀ = (x − √(1 − ᾱ) ε) / √ᾱ, x' = √ᾱ' x̂₀ + √(1 − ᾱ') ε), so its
image must be `--sampler ddim`'s, pixel for pixel.
"""
import importlib.util

import numpy as np
from PIL import Image

import sampler
from conftest import sample_main as main

TOY = '''
def toy_sample(eps_model, x, schedule, generator=None, callback=None):
    """DDIM (eta = 0), step by step from its formula."""
    for i, t in enumerate(schedule.timesteps):
        a, a_next = schedule.alphas[i], schedule.alphas[i + 1]
        eps = eps_model(x, t)
        x0 = (x - (1 - a) ** 0.5 * eps) / a ** 0.5
        x = a_next ** 0.5 * x0 + (1 - a_next) ** 0.5 * eps
        if callback is not None:
            callback(i, t, x0)
    return x
'''


def test_a_toy_sampler_added_by_one_file_and_one_row_runs_end_to_end(tiny_pipeline, tmp_path, monkeypatch, capsys):
    (tmp_path / "toy_sampler.py").write_text(TOY)
    spec = importlib.util.spec_from_file_location("toy_sampler", tmp_path / "toy_sampler.py")
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)
    row = sampler.Sampler(toy.toy_sample, "Toy", "DDIMScheduler", sampler.spacing.t_schedule, sampler.schedule.start_in_x)
    monkeypatch.setitem(sampler.SAMPLERS, "toy", row)  # the one row

    common = ["--weights", str(tiny_pipeline[1]), "--prompt", "a fox", "--steps", "4", "--spacing", "trailing",
              "--seed", "3", "--width", "32", "--height", "24"]
    assert main(common + ["--sampler", "toy", "--out", str(tmp_path / "toy.png")]) == 0
    assert main(common + ["--sampler", "ddim", "--out", str(tmp_path / "ddim.png")]) == 0
    assert main(["--from", str(tmp_path / "toy.png"), "--weights", str(tiny_pipeline[1]),
                 "--out", str(tmp_path / "again.png")]) == 0
    capsys.readouterr()
    toy_image = Image.open(tmp_path / "toy.png")
    text = toy_image.text["parameters"]
    assert "Sampler: Toy" in text and "Schedule type: SGM Uniform" in text, text
    pixels = [np.asarray(Image.open(tmp_path / name)) for name in ("toy.png", "ddim.png", "again.png")]
    assert np.array_equal(pixels[0], pixels[1]) and np.array_equal(pixels[0], pixels[2])
    assert Image.open(tmp_path / "again.png").text["parameters"] == text
