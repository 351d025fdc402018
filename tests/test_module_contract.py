"""`weights.load` returns plain modules that keep every nn.Module promise: parameters, the state_dict round trip,
copy.deepcopy, .to (device and dtype), .half / .double, and autograd. (Packing the convolutions for the CPU is
a separate, opt-in step that sample and the benchmark take: unet/packed_conv.py.)"""
import copy

import pytest
import torch

import weights
from unet.packed_conv import PackedConv2d


@pytest.fixture(scope="module")
def model(tiny_pipeline, tmp_path_factory):
    """(each part's reference module, ours), ours also holding the tiny autoencoder's halves as `weights.load` returns
    them for `vae=` a TAESD (an AutoencoderTiny folder, whose module is both halves' reference)."""
    from test_taesd import TINY_TAESD, diffusers_taesd
    taesd = diffusers_taesd(seed=5, **TINY_TAESD)
    folder = tmp_path_factory.mktemp("taesd")
    taesd.save_pretrained(folder)
    tiny = weights.load(tiny_pipeline[1], vae=folder, encoder=True)
    sd = weights.load(tiny_pipeline[1])
    sd.taesd_decoder, sd.taesd_encoder = tiny.vae, tiny.vae_encoder
    pipe = tiny_pipeline[0]
    references = {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "vae": pipe.vae, "taesd_decoder": taesd,
                  "taesd_encoder": taesd}
    return references, sd


UNET_LATENT = 16  # the tiny UNet halves it 3 times: 2 × 2 = 4 tokens in the deepest attention (see the autograd test)


def run(part: str, module, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    if part == "unet":
        x = torch.randn(1, 4, UNET_LATENT, UNET_LATENT, generator=g).to(dtype)
        return module(x, 10, torch.randn(1, 77, 64, generator=g).to(dtype))
    if part == "text_encoder":
        return module(torch.tensor([[49406, 320, 2368] + [49407] * 74]))
    if part == "taesd_encoder":
        return module(torch.rand(1, 3, 32, 40, generator=g).to(dtype) * 2 - 1)
    return module(torch.randn(1, 4, 4, 4, generator=g).to(dtype))


PARTS = ["unet", "text_encoder", "vae", "taesd_decoder", "taesd_encoder"]


@pytest.mark.parametrize("part", PARTS)
def test_parameters_are_the_references(model, part):
    """As many parameters as the reference module holds (the VAE: its decoder half), all plain nn.Parameters."""
    references, sd = model
    module = getattr(sd, part)
    ours = sum(p.numel() for p in module.parameters())
    reference = references[part]
    halves = {"vae": ("decoder.", "post_quant_conv."), "taesd_decoder": ("decoder.",), "taesd_encoder": ("encoder.",)}
    names = [n for n, _ in reference.named_parameters() if n.startswith(halves.get(part, ""))]
    assert ours == sum(p.numel() for n, p in reference.named_parameters() if n in names) > 0
    assert not any(isinstance(m, PackedConv2d) for m in module.modules())
    assert all(type(p) is torch.nn.Parameter for p in module.parameters())


@pytest.mark.parametrize("part", PARTS)
def test_state_dict_round_trip_and_deepcopy(model, part):
    module = getattr(model[1], part)
    fresh = type(module)(module.config)
    if part == "unet":
        fresh.channels_last()  # the layout weights.load leaves the UNet in (the same numbers, another kernel)
    fresh.load_state_dict(module.state_dict(), strict=True)
    clone = copy.deepcopy(module)
    with torch.no_grad():
        expected = run(part, module)
        assert torch.equal(run(part, fresh.eval()), expected) and torch.equal(run(part, clone), expected)


@pytest.mark.parametrize("part", PARTS)
def test_dtype_and_device_moves(model, part):
    module = copy.deepcopy(getattr(model[1], part))
    with torch.no_grad():
        expected = run(part, module).double()
        for dtype, convert, bound in ((torch.float64, lambda m: m.double(), 1e-5), (torch.bfloat16, lambda m: m.bfloat16(), 0.1),
                                      (torch.float16, lambda m: m.half(), 0.1)):
            moved = convert(copy.deepcopy(module))
            assert all(p.dtype == dtype for p in moved.parameters())
            out = run(part, moved, dtype)
            assert out.dtype == dtype and ((out.double() - expected).abs().max() / expected.abs().max()) < bound
    on_meta = copy.deepcopy(module).to("meta")  # every tensor follows .to, as it would to "cuda"
    assert all(t.device.type == "meta" for t in list(on_meta.parameters()) + list(on_meta.buffers()))


@pytest.mark.parametrize("part", PARTS)
def test_autograd_reaches_every_parameter(model, part):
    """Every parameter gets a non-zero gradient, where the input makes every parameter matter: softmax over a
    single key is 1 whatever q and k are, so self-attention's to_q and to_k have a zero gradient by the math
    (not by rounding) at a level with one token. The input is sized so that the deepest level has several.
    The text encoder's token table gets gradient only in the rows of the ids it was given."""
    module = copy.deepcopy(getattr(model[1], part)).requires_grad_(True)
    if part == "unet":
        deepest = UNET_LATENT // 2 ** (len(module.config.channel_mult) - 1)
        assert deepest ** 2 >= 2, "the deepest attention needs at least two tokens for to_q and to_k to matter"
    run(part, module).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())
    unused = [n for n, p in module.named_parameters() if p.grad.abs().max() == 0]
    assert unused == [] or (part == "text_encoder" and all("token_embedding" in n for n in unused))
