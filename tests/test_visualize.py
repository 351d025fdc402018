"""`python -m minitome.visualize` and the partition variants it draws."""
import pytest
import torch
from PIL import Image

from minitome.tome import PARTITION_METHODS, partition, partition_variant
from minitome.visualize import main


@pytest.mark.parametrize("method", PARTITION_METHODS)
@pytest.mark.parametrize("h, w", [(16, 16), (7, 9)])
def test_partition_variants_cover_every_token_once(method, h, w):
    src, dst = partition_variant(h, w, method, torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat([src, dst]).sort().values, torch.arange(h * w))
    if method in ("random2x2", "grid", "random"):
        assert dst.numel() == (h // 2) * (w // 2)
    if method == "alternating":
        assert dst.tolist() == list(range(0, h * w, 2))
    if method == "grid":
        assert torch.equal(dst, partition(h, w, 2, 2)[1])


def test_unknown_partition_method_is_an_error():
    with pytest.raises(ValueError, match="partition method must be one of"):
        partition_variant(4, 4, "checkerboard")


def test_pictures_are_written(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--size", "128"]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["merges.png", "partitions.png", "schedule.png", "similarity.png"]
    assert Image.open(tmp_path / "similarity.png").size == (128, 128)
    merges = Image.open(tmp_path / "merges.png")
    assert merges.width > 4 * 128  # the picture and three ratios side by side
    assert main(["--out", str(tmp_path), "--size", "100"]) == 2
