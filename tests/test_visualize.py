"""`python -m minitome.lab.visualize`: the pictures, and the real block inputs it draws."""
import numpy as np
import pytest
from PIL import Image

from minitome.lab.visualize import main

PICTURES = ["attention_share.png", "block.png", "hires.png", "merges.png", "noise.png", "partitions.png", "pipeline.png",
            "schedule.png", "similarity.png", "spacings.png", "unet.png", "worked.png"]


def test_pictures_are_written(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--size", "128"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(PICTURES)
    assert Image.open(tmp_path / "similarity.png").width > 2 * 128  # the picture and its similarity map
    assert Image.open(tmp_path / "merges.png").width > 4 * 128    # the picture and three ratios side by side
    assert main(["--out", str(tmp_path), "--size", "100"]) == 2
    assert main(["--out", "", "--size", "128"]) == 2 and "--out is empty" in capsys.readouterr().err  # not the cwd


def test_block_input_catches_the_real_tokens_of_a_chosen_block_and_call(tiny_pipeline):
    import weights
    from minitome.pipeline import generate
    from minitome.lab.common import block_input
    sd = weights.load(str(tiny_pipeline[1]))
    first, hw, image = block_input(sd, "a red house", 64, 10, block=0, call=0)
    last, hw_last, _ = block_input(sd, "a red house", 64, 10, block=0, call=-1)
    ch = sd.unet.config.model_channels
    assert hw == hw_last == (8, 8) and first.shape == last.shape == (1, 64, ch)
    assert (first - last).abs().max() > 1e-3  # the tokens change over the run
    deep, hw_deep, _ = block_input(sd, "a red house", 64, 10, block=6, call=-1)
    assert hw_deep == (1, 1)  # the 7th block (6 down, then the middle one) sits at the bottom level, 8 → 1
    same = generate(sd, "a red house", steps=10, seed=0, width=64, height=64)[0]
    assert np.array_equal(np.asarray(image), np.asarray(same))  # catching does not change the run
    with pytest.raises(ValueError, match=r"call must be -1 or in 0 … 10"):
        block_input(sd, "a red house", 64, 10, call=11)  # 10 PLMS steps make 11 UNet calls
    with pytest.raises(ValueError, match="block must be in 0 … 15"):
        block_input(sd, "a red house", 64, 10, block=16)


def test_pictures_with_weights(tiny_pipeline, tmp_path, capsys):
    folder = str(tiny_pipeline[1])
    assert main(["--out", str(tmp_path), "--size", "64", "--weights", folder, "--steps", "10"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(PICTURES + ["image.png"])
    assert Image.open(tmp_path / "image.png").size == (64, 64) and Image.open(tmp_path / "similarity.png").width > 128
    assert main(["--out", str(tmp_path), "--size", "64", "--weights", folder, "--steps", "10", "--call", "11"]) == 2
    assert main(["--out", str(tmp_path), "--weights", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "call must be -1 or in" in err and err.count("minitome.lab.visualize: error:") == 2


def word_gaps(font, words: tuple) -> tuple:
    """In the drawn pixels of `words` joined by spaces: (the blank columns at each space, the widest blank run
    inside any word)."""
    from PIL import ImageDraw

    def blank_runs(text):
        image = Image.new("L", (600, 40), 255)
        ImageDraw.Draw(image).text((5, 5), text, fill=0, font=font)
        ink = np.flatnonzero((np.asarray(image) < 128).any(axis=0))
        return [(int(a), int(b - a - 1)) for a, b in zip(ink[:-1], ink[1:]) if b - a > 1], int(ink[-1])
    inside = max(max([w for _, w in blank_runs(word)[0]], default=0) for word in words)
    runs, _ = blank_runs(" ".join(words))
    spaces = []
    for k in range(1, len(words)):  # the run right after the ink of the first k words
        end = blank_runs(" ".join(words[:k]))[1]
        spaces.append(next(w for a, w in runs if abs(a - end) <= 1))
    return spaces, inside


@pytest.mark.parametrize("words", [("two", "strings"), ("UNet's", "cross-attention"), ("a", "dst", "cell")])
def test_captions_draw_their_spaces(words):
    """The pictures' font, measured in the drawn pixels: every space is at least twice the widest gap inside a word.
    ImageDraw's default (the same font at 10 pixels) fails it: its spaces are as wide as the gaps between letters."""
    from PIL import ImageFont
    from minitome.lab.common import FONT
    spaces, inside = word_gaps(FONT, words)
    assert min(spaces) >= 2 * inside, (spaces, inside)
    spaces, inside = word_gaps(ImageFont.load_default(size=10), words)
    assert min(spaces) < 2 * inside


def test_course_pictures_say_what_the_code_says():
    """The numbers the course's pictures draw are the ones chapter 5 counts: the self-attention share of a call,
    15.5% at 512² and 38% at 1024², growing with the image; the hires chain's 20 guided calls of 803 GFLOP per
    image and 10 of 4,674."""
    from minitome.lab.course_pictures import attention_share
    from minitome.lab.hires_picture import chain
    shares = dict(attention_share())  # counted once per process: the pictures above drew it
    assert round(shares[512], 3) == 0.155 and round(shares[1024], 3) == 0.382 and shares[256] < shares[512]
    stages = {label.split(",")[0]: (gflop, attention) for label, gflop, attention in chain()}
    assert round(stages["first pass"][0] / 40) == 803 and round(stages["hires pass"][0] / 20) == 4674  # guided: ×2
    assert round(stages["hires pass"][1] / stages["hires pass"][0], 3) == 0.382
