"""`--dtype auto` (minitome/cli/device.py): bfloat16 on a CPU that computes it natively, float32 on other CPUs,
float16 on CUDA; and the PNG's Dtype field, which --from remakes an image in.

`native_bf16` reads torch's own, private, CPU feature checks (AVX512_BF16, AMX tiles), the CPU capability ATen's
kernels run at, and whether oneDNN is allowed a bfloat16 ISA: each is forced either way here, in this process by
replacing the torch functions it reads, and in a child process by the environment variables torch reads them from.
These are the tests that leave the dtype to auto; every other test of the command line pins float32
(tests/conftest.py's `pinned`).
"""
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, child_env
from minitome.cli import device
from minitome.cli.device import native_bf16, pick_dtype
from minitome.sample import main

CPU = torch.device("cpu")


def force(monkeypatch, avx512_bf16=True, amx=True, capability="AVX512", onednn=True):
    """The checks native_bf16 reads, answering as a CPU with (or without) each feature would."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)


@pytest.mark.parametrize("features, expected", [
    (dict(), torch.bfloat16),                                       # Sapphire Rapids and later: both
    (dict(amx=False), torch.bfloat16),                              # Zen 4, Cooper Lake: AVX512_BF16 alone
    (dict(avx512_bf16=False), torch.bfloat16),                      # AMX alone
    (dict(avx512_bf16=False, amx=False), torch.float32),            # AVX-512 without bfloat16 (Skylake-X, Zen 3 …)
    (dict(avx512_bf16=False, amx=False, capability="AVX2"), torch.float32),  # an AVX2 CPU
    (dict(capability="AVX2"), torch.float32),                       # ATEN_CPU_CAPABILITY=avx2 on a bf16 CPU
    (dict(capability="DEFAULT"), torch.float32),                    # ATEN_CPU_CAPABILITY=default: scalar kernels
    (dict(onednn=False), torch.float32),                            # ONEDNN_MAX_CPU_ISA=AVX2 on a bf16 CPU
])
def test_auto_is_bfloat16_where_the_cpu_has_it_natively(monkeypatch, features, expected):
    force(monkeypatch, **features)
    assert pick_dtype("auto", CPU) == expected
    assert pick_dtype("auto", torch.device("cuda")) == torch.float16  # CUDA as before, whatever the CPU
    assert pick_dtype("auto", torch.device("mps")) == torch.float32
    assert pick_dtype("float32", CPU) == torch.float32  # how to keep float32 anywhere


@pytest.mark.parametrize("where, name", [(torch.cpu, "_is_avx512_bf16_supported"), (torch.cpu, "_is_amx_tile_supported"),
                                         (torch.backends.cpu, "get_cpu_capability"),
                                         (torch.ops.mkldnn, "_is_mkldnn_bf16_supported")])
def test_a_torch_without_one_of_the_checks_picks_float32(monkeypatch, where, name):
    """The feature checks are private to torch: a build without one of them is a CPU without native bfloat16."""
    force(monkeypatch)
    if where is torch.ops.mkldnn:  # an op namespace finds its ops again when one is deleted: replace it whole
        monkeypatch.setattr(torch.ops, "mkldnn", SimpleNamespace())
    else:
        monkeypatch.delattr(where, name)
    assert not native_bf16() and pick_dtype("auto", CPU) == torch.float32


def native_in_a_child(**environment) -> bool:
    """native_bf16() in a fresh process with these environment variables set (torch reads them when it starts)."""
    env = {k: v for k, v in child_env().items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    done = subprocess.run([sys.executable, "-c", "from minitome.cli.device import native_bf16; print(native_bf16())"],
                          cwd=ROOT, env={**env, **environment}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "True"


def test_a_capability_held_to_avx2_picks_float32():
    """ATEN_CPU_CAPABILITY=avx2: float32, on any CPU (on one with bfloat16, torch 2.13's bfloat16 UNet call fails
    there with "pack_vnni2 is only supported when avx512 is supported"); ATEN_CPU_CAPABILITY=default likewise."""
    assert not native_in_a_child(ATEN_CPU_CAPABILITY="avx2")
    assert not native_in_a_child(ATEN_CPU_CAPABILITY="default")
    assert not native_in_a_child(ONEDNN_MAX_CPU_ISA="AVX2")


def test_this_cpus_native_bfloat16_is_seen_at_its_own_capability():
    """On a CPU with AVX512_BF16 or AMX: native at the capability torch picks by itself and at avx512."""
    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        pytest.skip("this CPU has no AVX512_BF16 or AMX: the half that needs one cannot run here")
    assert native_in_a_child()
    assert native_in_a_child(ATEN_CPU_CAPABILITY="avx512")


def test_the_convolution_packing_leaves_bfloat16_alone():
    """unet/packed_conv.py packs float32 only: a bfloat16 UNet keeps its nn.Conv2d (oneDNN's bfloat16 kernels)."""
    from unet.config import UNetConfig
    from unet.model import UNetModel
    from unet.packed_conv import pack_convolutions
    unet = UNetModel(UNetConfig.tiny()).to(torch.bfloat16)
    convs = sum(type(m) is torch.nn.Conv2d for m in unet.modules())
    assert convs > 0 and pack_convolutions(unet) == 0
    assert sum(type(m) is torch.nn.Conv2d for m in unet.modules()) == convs


RUN = ["--prompt", "a cat", "--steps", "10", "--width", "16", "--height", "16", "--seed", "3"]


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_from_remakes_an_image_in_its_own_dtype(single_file, tmp_path, monkeypatch):
    """auto on a CPU with native bfloat16 writes "Dtype: bfloat16", and --from remakes it in bfloat16 on a CPU
    without (the same pixels and text); a PNG with no Dtype field (float32, or A1111's) runs float32 even where
    auto would pick bfloat16."""
    base = ["--weights", str(single_file), *RUN]
    force(monkeypatch)  # a CPU with native bfloat16
    assert main(base + ["--out", str(tmp_path / "auto.png")]) == 0
    assert main(base + ["--dtype", "float32", "--out", str(tmp_path / "float32.png")]) == 0
    made = Image.open(tmp_path / "auto.png").text["parameters"]
    assert made.endswith(", Dtype: bfloat16") and "Dtype" not in Image.open(tmp_path / "float32.png").text["parameters"]
    assert not np.array_equal(pixels(tmp_path / "auto.png"), pixels(tmp_path / "float32.png"))  # the dtype shows

    assert main(["--weights", str(single_file), "--from", str(tmp_path / "float32.png"), "--out",
                 str(tmp_path / "again32.png")]) == 0  # auto would be bfloat16 here: the PNG says float32
    assert np.array_equal(pixels(tmp_path / "again32.png"), pixels(tmp_path / "float32.png"))
    assert "Dtype" not in Image.open(tmp_path / "again32.png").text["parameters"]

    force(monkeypatch, avx512_bf16=False, amx=False)  # a CPU without: auto would be float32
    assert pick_dtype("auto", CPU) == torch.float32
    assert main(["--weights", str(single_file), "--from", str(tmp_path / "auto.png"), "--out",
                 str(tmp_path / "again16.png")]) == 0
    assert np.array_equal(pixels(tmp_path / "again16.png"), pixels(tmp_path / "auto.png"))
    assert Image.open(tmp_path / "again16.png").text["parameters"] == made


def test_the_dtype_flag_says_the_rule_and_how_to_keep_float32(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "bfloat16 on a CPU that computes it natively" in help_text and "--dtype float32 keeps float32" in help_text
    assert device.native_bf16.__doc__ and "ATEN_CPU_CAPABILITY" in device.__doc__
