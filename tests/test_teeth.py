"""The parity bounds have teeth: one small real mistake, a norm's eps divided by 10 in one part, fails
the float64 parity run of that part (bound F64_BOUND), while the same run without it passes.

Measured (float64, these inputs): UNet LayerNorms 5.8e-6, UNet GroupNorms 9.4e-6, text encoder
LayerNorms 2.6e-4, VAE decoder GroupNorms 1.7e-6, against parity errors of 0 – 4e-15.
"""
import copy

import pytest
import torch
import torch.nn as nn

import weights
from weights.clip import text_encoder_part_diffusers
from weights.vae import vae_part_diffusers
from conftest import F64_BOUND, TINY_TEXT, TINY_VAE, diffusers_text_encoder, diffusers_vae, relative_error
from test_text_vae_parity import save_pipeline_parts, text_error, vae_error
from test_unet_parity import inputs


def divide_eps(module: nn.Module, kind: type):
    norms = [m for m in module.modules() if isinstance(m, kind)]
    assert norms
    for m in norms:
        m.eps /= 10


def unet_error(reference, ours) -> float:
    x, t, context = inputs((16, 16), seed=3)
    with torch.no_grad():
        return relative_error(ours(x, t, context), reference(x, t, context).sample)


@pytest.mark.parametrize("norm", [nn.LayerNorm, nn.GroupNorm])
def test_unet(tiny_unet_folder, norm):
    reference, folder = tiny_unet_folder
    reference, ours = copy.deepcopy(reference).double(), weights.load_unet(folder, dtype=torch.float64)
    assert unet_error(reference, ours) <= F64_BOUND
    divide_eps(ours, norm)
    assert unet_error(reference, ours) > 1e3 * F64_BOUND


def test_text_encoder(tmp_path):
    reference = diffusers_text_encoder(seed=3, **TINY_TEXT)
    ours = text_encoder_part_diffusers(save_pipeline_parts(tmp_path, text_encoder=reference)).load("cpu", torch.float64)
    reference = reference.double()
    assert text_error(reference, ours) <= F64_BOUND
    divide_eps(ours, nn.LayerNorm)
    assert text_error(reference, ours) > 1e3 * F64_BOUND


def test_vae_decoder(tmp_path):
    reference = diffusers_vae(seed=4, **TINY_VAE)
    ours = vae_part_diffusers(save_pipeline_parts(tmp_path, vae=reference)).load("cpu", torch.float64)
    reference = reference.double()
    assert vae_error(reference, ours) <= F64_BOUND
    divide_eps(ours, nn.GroupNorm)
    assert vae_error(reference, ours) > 1e3 * F64_BOUND
