"""`python -m minitome.lab.visualize`: the pictures, and the real block inputs it draws."""
import numpy as np
import pytest
from PIL import Image

from minitome.lab.visualize import main


def test_pictures_are_written(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--size", "128"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["hires.png", "merges.png", "partitions.png", "pipeline.png", "schedule.png", "similarity.png",
                     "spacings.png"]
    assert Image.open(tmp_path / "similarity.png").width > 2 * 128  # the picture and its similarity map
    assert Image.open(tmp_path / "merges.png").width > 4 * 128    # the picture and three ratios side by side
    assert main(["--out", str(tmp_path), "--size", "100"]) == 2


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hires.png", "image.png", "merges.png", "partitions.png",
                                                           "pipeline.png", "schedule.png", "similarity.png", "spacings.png"]
    assert Image.open(tmp_path / "image.png").size == (64, 64) and Image.open(tmp_path / "similarity.png").width > 128
    assert main(["--out", str(tmp_path), "--size", "64", "--weights", folder, "--steps", "10", "--call", "11"]) == 2
    assert main(["--out", str(tmp_path), "--weights", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "call must be -1 or in" in err and err.count("minitome.lab.visualize: error:") == 2
