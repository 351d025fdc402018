"""`python -m minitome.lab.ablate` on small inputs, and its k-means merge."""
import pytest
import torch

from minitome.lab.ablate import main
from minitome.lab.ablate_tokens import kmeans_slot, merge_error
from minitome.tome import merge, partition, match


def test_kmeans_groups_obvious_clusters():
    centres = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    x = (centres.repeat(5, 1) + 0.01 * torch.randn(15, 3, generator=torch.Generator().manual_seed(0)))[None]
    slot = kmeans_slot(x, 3, seed=1)
    groups = [set(slot[0, i::3].tolist()) for i in range(3)]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 3  # one cluster per direction
    assert merge_error(x, slot, 3) < 0.02


def test_merge_error_is_zero_for_duplicates_and_positive_otherwise():
    x = torch.randn(1, 16, 4, generator=torch.Generator().manual_seed(0))
    src, dst = partition(4, 4, 2, 2)
    slot = match(x, src, dst, 8)
    assert merge_error(x, slot, 8) > 0
    twins = x[:, [0, 0, 2, 2, 0, 0, 2, 2, 8, 8, 10, 10, 8, 8, 10, 10]]  # every cell is four copies of its dst
    slot = match(twins, src, dst, 12)
    assert merge_error(twins, slot, 4) < 1e-6 and merge(twins, slot, 4).shape == (1, 4, 4)


def test_ablate_tables(tiny_pipeline, capsys):
    _, folder = tiny_pipeline
    assert main(["--size", "64", "--weights", str(folder), "--steps", "10", "--repeats", "1", "--when-size", "64",
                 "--when-steps", "10", "--tau", "400"]) == 0
    out = capsys.readouterr().out
    for title in ("## 1. Partition", "## 2. Bipartite matching vs k-means", "## 3. What to merge", "## 4. Where",
                  "## 5. When", "## 6. Randomness", "## 7. Partition, in the UNet"):
        assert title in out
    assert "input tokens of the first transformer block" in out  # with --weights: real hidden states
    assert "| setting | s/UNet call | speed-up | ε change | PSNR dB | SSIM |" in out
    assert "| setting | s/run | speed-up | latent change | PSNR dB | SSIM |" in out
    assert "| alternating |" in out and "| k-means, 5 iterations |" in out
    assert "| max_downsample 8 (16/16 blocks) |" in out and "| no merging | " in out and "| inf | 1.000 |" in out
    assert "| 0.6 → 0.4 over the run |" in out and "| 0.5 only while t > 400 (noisy) |" in out
    assert "| shared by uncond and cond (tomesd) |" in out and "| one per image |" in out
    unmerged = [line for line in out.splitlines() if line.startswith("| no merging |")]
    assert "| random 2×2 (ToMe-SD) |" in out and "| 2-stride grid |" in out and "| alternating | " in out
    assert len(unmerged) == 5 and all("| 0.0000 | inf | 1.000 |" in line for line in unmerged)


def test_ablate_bad_input(capsys):
    assert main(["--ratio", "0.8"]) == 2
    assert main(["--size", "100"]) == 2
    assert main(["--tau", "1000"]) == 2
    assert main(["--weights", "/nonexistent/model.safetensors", "--sections", "1", "2"]) == 2
    err = capsys.readouterr().err
    assert "must be a positive multiple of 64" in err and err.count("minitome.lab.ablate: error:") == 4


def test_ablate_sections_choose_the_experiments(capsys):
    assert main(["--size", "64", "--sections", "2"]) == 0
    out = capsys.readouterr().out
    assert "## 2. Bipartite" in out and "## 1." not in out and "## 3." not in out
    with pytest.raises(SystemExit) as exit_:  # argparse: not one of 1–7
        main(["--sections", "9"])
    assert exit_.value.code == 2
