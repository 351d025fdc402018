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
