"""Loading the UNet: the official single-file layout, the diffusers folder, and strict errors."""
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

import minitome
import weights
from weights.unet import PREFIX


def write_single_file(path, unet, extra=None):
    tensors = {PREFIX + name: t.contiguous() for name, t in unet.state_dict().items()}
    save_file({**tensors, **(extra or {})}, str(path))


def test_our_names_are_the_official_names(tiny_unet_folder):
    """diffusers' own converter for official (LDM) checkpoints, fed our names, gives the reference's state dict."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
    reference, folder = tiny_unet_folder
    ours = weights.load_unet(folder)
    checkpoint = {PREFIX + name: t for name, t in ours.state_dict().items()}
    converted = convert_ldm_unet_checkpoint(checkpoint, dict(reference.config))
    expected = reference.state_dict()
    assert sorted(converted) == sorted(expected)
    assert all(torch.equal(converted[name], expected[name]) for name in expected)


def test_both_layouts_load_identical_modules(tiny_unet_folder, tmp_path):
    _, folder = tiny_unet_folder
    from_folder = weights.load_unet(folder)
    path = tmp_path / "tiny.safetensors"
    # the official file carries the other parts and schedule buffers too: the UNet loader takes its own prefix
    write_single_file(path, from_folder, {"alphas_cumprod": torch.rand(1000), "first_stage_model.x": torch.zeros(1)})
    from_file = weights.load_unet(path)
    assert from_file.config == from_folder.config
    a, b = from_folder.state_dict(), from_file.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x, context = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad():
        assert torch.equal(from_file(x, 10, context), from_folder(x, 10, context))


def test_full_size_single_file_infers_the_sd15_config_and_returns_eps(tmp_path):
    from unet import UNetConfig, UNetModel
    unet = UNetModel().half()  # fp16, as many distributed checkpoints are; loaded back as float32
    path = tmp_path / "full.safetensors"
    write_single_file(path, unet)
    del unet
    loaded = weights.load_unet(path)
    assert loaded.config == UNetConfig()
    assert next(loaded.parameters()).dtype == torch.float32
    with torch.no_grad():
        eps = loaded(torch.randn(1, 4, 16, 16), 999, torch.randn(1, 77, 768), tome=minitome.ToMeConfig())
    assert eps.shape == (1, 4, 16, 16) and torch.isfinite(eps).all()


def test_load_in_float16(tiny_unet_folder):
    _, folder = tiny_unet_folder
    unet = weights.load_unet(folder, dtype=torch.float16)
    assert all(p.dtype == torch.float16 for p in unet.parameters())


def edited_copy(folder, tmp_path, edit):
    """A copy of the tiny diffusers folder whose UNet tensors went through `edit(dict)`."""
    from safetensors.torch import load_file
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    file = copy / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file))
    return copy


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("down_blocks.0.resnets.0.norm1.weight"), r"1 tensor\(s\) missing .*'down_blocks.0.resnets.0.norm1.weight'"),
    (lambda t: t.update(extra=torch.zeros(1)), r"1 unexpected tensor\(s\) .*'extra'"),
    (lambda t: t.update({"conv_in.weight": torch.zeros(32, 4, 1, 1)}), r"tensor 'conv_in.weight' has shape \[32, 4, 1, 1\], expected \[32, 4, 3, 3\]"),
])
def test_strict_loading_names_the_problem(tiny_unet_folder, tmp_path, edit, message):
    _, folder = tiny_unet_folder
    with pytest.raises(weights.WeightsError, match=message):
        weights.load_unet(edited_copy(folder, tmp_path, edit))


def test_single_file_strictness(tiny_unet_folder, tmp_path):
    _, folder = tiny_unet_folder
    unet = weights.load_unet(folder)
    path = tmp_path / "bad.safetensors"
    write_single_file(path, unet, {PREFIX + "input_blocks.1.1.bogus": torch.zeros(3)})
    with pytest.raises(weights.WeightsError, match=r"unexpected tensor\(s\).*'model.diffusion_model.input_blocks.1.1.bogus'"):
        weights.load_unet(path)
    save_file({"alphas_cumprod": torch.rand(10)}, str(path))
    with pytest.raises(weights.WeightsError, match="no SD UNet tensors"):
        weights.load_unet(path)


def test_sd2_and_sdxl_configs_are_refused(tiny_unet_folder, tmp_path):
    _, folder = tiny_unet_folder
    for change, message in [({"use_linear_projection": True}, "SD 2.x"),
                            ({"addition_embed_type": "text_time"}, "SDXL")]:
        copy = tmp_path / message
        shutil.copytree(folder, copy)
        config = json.loads((copy / "unet" / "config.json").read_text())
        (copy / "unet" / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(weights.WeightsError, match=message):
            weights.load_unet(copy)


def test_unreadable_files_are_clear_errors(tmp_path):
    with pytest.raises(weights.WeightsError, match="no such file"):
        weights.load_unet(tmp_path / "missing.safetensors")
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(weights.WeightsError, match="pickle checkpoints are refused .*arbitrary code"):
        weights.load_unet(pickle)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}....")
    with pytest.raises(weights.WeightsError, match="not a readable safetensors file"):
        weights.load_unet(garbage)
    with pytest.raises(weights.WeightsError, match="no unet/config.json"):
        weights.load_unet(tmp_path)


def test_truncated_file_is_a_clear_error(tiny_unet_folder, tmp_path):
    _, folder = tiny_unet_folder
    data = (folder / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(weights.WeightsError, match="not a readable safetensors file"):
        weights.load_unet(path)


def test_checkpoint_reads_every_float_dtype_into_fresh_memory(tmp_path):
    """Each tensor comes back converted to the load dtype (float8 included), equal to what the safetensors
    library reads converted by torch, in memory of its own (not a view of the file's memory map)."""
    from safetensors.torch import load_file
    from weights.checkpoint import Checkpoint
    g = torch.Generator().manual_seed(0)
    tensors = {"f": torch.randn(3, 4, generator=g), "h": torch.randn(5, generator=g).half(),
               "b": torch.randn(2, 2, generator=g).bfloat16(), "d": torch.randn(4, generator=g).double(),
               "e4m3": torch.randn(6, generator=g).to(torch.float8_e4m3fn),
               "e5m2": torch.randn(6, generator=g).to(torch.float8_e5m2), "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 3)}
    save_file(tensors, str(tmp_path / "all.safetensors"))
    ours, reference = Checkpoint(tmp_path / "all.safetensors"), load_file(str(tmp_path / "all.safetensors"))
    assert ours.dtypes["e4m3"] == "F8_E4M3" and ours.shapes["f"] == (3, 4)
    for dtype in (torch.float32, torch.float64, torch.float16):
        for name in tensors:
            got = ours.tensor(name, dtype=dtype)
            assert got.dtype == dtype and torch.equal(got, reference[name].to(dtype))
            assert got.data_ptr() % 64 == 0 or got.numel() == 0  # fresh aligned memory
