"""Shared helpers: random-weight reference models in the official layouts.

Every parameter is drawn from an explicit generator, 1-D ones too (norm weights around 1, biases
around 0, each with its own noise), so a swapped weight and bias, or a norm left at its default,
cannot pass a parity test.
"""
import warnings

import pytest
import torch

warnings.filterwarnings("ignore", category=FutureWarning)

TINY_DIFFUSERS_UNET = dict(block_out_channels=(32, 64, 64, 64), cross_attention_dim=32,
                           attention_head_dim=8, norm_num_groups=32)


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            else:
                centre = 1.0 if name.endswith("weight") else 0.0  # 1-D weights are norm scales
                p.copy_(centre + 0.2 * torch.randn(p.shape, generator=g))
    return module


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out − ref| / max |ref|, the parity measure used across the tests."""
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def diffusers_unet(seed: int = 0, **config):
    from diffusers import UNet2DConditionModel
    return randomize_(UNet2DConditionModel(**config), seed).eval().requires_grad_(False)


@pytest.fixture(scope="session")
def tiny_unet_folder(tmp_path_factory):
    """(diffusers tiny UNet, folder with it saved as `unet/` of a diffusers pipeline)."""
    model = diffusers_unet(seed=1, **TINY_DIFFUSERS_UNET)
    folder = tmp_path_factory.mktemp("tiny_diffusers")
    model.save_pretrained(folder / "unet")
    return model, folder


@pytest.fixture(scope="session")
def clip_vocab_gz():
    """The real CLIP vocabulary (`make test` extracts it from the open-clip-torch wheel)."""
    import os
    from pathlib import Path
    path = Path(os.environ.get("MINITOME_VOCAB", Path(__file__).parent.parent / ".cache/bpe_simple_vocab_16e6.txt.gz"))
    if not path.exists():
        pytest.fail(f"{path} is missing: run the tests with `make test`, which fetches it")
    return path


@pytest.fixture(scope="session")
def clip_tokenizer_folder(clip_vocab_gz, tmp_path_factory):
    """The same vocabulary in diffusers' `tokenizer/` layout (vocab.json + merges.txt), as transformers reads it."""
    import gzip
    import json
    from minitome.tokenizer import NUM_MERGES, Tokenizer
    lines = gzip.open(clip_vocab_gz, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:NUM_MERGES + 1]
    folder = tmp_path_factory.mktemp("tokenizer")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    vocab = Tokenizer([tuple(m.split()) for m in merges]).vocab
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return folder
