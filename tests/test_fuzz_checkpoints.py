"""Checkpoint loading, fuzzed against the safetensors library (differential).

Any byte string loads exactly when the `safetensors` library reads it and its keys, shapes and dtypes are
what the part needs (and its values finite once converted); otherwise it raises WeightsError. Never
another exception, never a hang (each example runs under an alarm). The files start from a small valid
UNet file, then one mutation: of its JSON header (a tensor dropped, renamed, added, retyped, reshaped,
moved; the header replaced by other JSON), or of its bytes (truncated, flipped, length field changed).
"""
import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings, strategies as st
from safetensors.torch import load_file, save_file

import weights
from conftest import finishes_within
from unet import UNetConfig, UNetModel

CONFIG = UNetConfig(model_channels=32, channel_mult=(1, 1), num_res_blocks=1, attention_levels=(0,), context_dim=32)
FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}  # the weight dtypes the loader takes (the spec)
DTYPES = sorted(FLOATS | {"I64", "I32", "I16", "I8", "U8", "BOOL", "U16", "U32", "U64", "F8_E8M0", "C64", "XX"})


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """(the bytes of a valid single file holding a small UNet, its header, {name: shape})."""
    torch.manual_seed(0)
    unet = UNetModel(CONFIG)
    path = tmp_path_factory.mktemp("fuzz") / "valid.safetensors"
    save_file({"model.diffusion_model." + n: t.contiguous() for n, t in unet.state_dict().items()}, str(path))
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    shapes = {name: tuple(info["shape"]) for name, info in header.items() if name != "__metadata__"}
    return data, header, shapes


def reference_accepts(path, shapes: dict) -> bool:
    """The oracle: the safetensors library reads the file, and it is the UNet the loader needs."""
    try:
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            dtypes = {k: v["dtype"] for k, v in json.loads(f.read(n)).items() if k != "__metadata__"}
        tensors = load_file(str(path))
    except Exception:
        return False
    return (tensors.keys() == shapes.keys() and all(tuple(t.shape) == shapes[k] for k, t in tensors.items())
            and all(dtypes[k] in FLOATS for k in tensors) and all(torch.isfinite(t.float()).all() for t in tensors.values()))


def with_header(data: bytes, header) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    text = json.dumps(header).encode() if not isinstance(header, bytes) else header
    return struct.pack("<Q", len(text)) + text + data[8 + n:]


json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=8)


@st.composite
def mutated(draw, valid):
    data, header, shapes = valid
    names = sorted(shapes)
    header = json.loads(json.dumps(header))
    kind = draw(st.sampled_from(["same", "metadata", "data", "drop", "rename", "add", "dtype", "shape", "offsets",
                                 "json", "deep", "truncate", "flip", "length"]))
    name = draw(st.sampled_from(names))
    if kind == "same":
        return data
    if kind == "metadata":
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=5), st.integers()),
                                                      max_size=2))
    elif kind == "drop":
        del header[name]
    elif kind == "rename":
        header[name + draw(st.sampled_from(["x", ".weight", "_"]))] = header.pop(name)
    elif kind == "add":
        header[draw(st.text(min_size=1, max_size=12))] = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
    elif kind == "dtype":
        header[name]["dtype"] = draw(st.sampled_from(DTYPES))
    elif kind == "shape":
        header[name]["shape"] = draw(st.lists(st.one_of(st.integers(-2, 40), st.none(), st.floats(0, 4)), max_size=5))
    elif kind == "offsets":
        header[name]["data_offsets"] = draw(st.lists(st.one_of(st.integers(-8, 2 * len(data)), st.floats(0, 9)),
                                                     min_size=0, max_size=3))
    elif kind == "json":
        header = draw(json_values)
    elif kind == "deep":
        depth = draw(st.integers(100, 100_000))
        return with_header(data, b"[" * depth + b"]" * depth)
    if kind in ("data", "truncate", "flip", "length"):
        raw = bytearray(data)
        if kind == "data":  # a byte of some tensor's values: still a valid file, unless it makes a NaN or infinity
            start = 8 + struct.unpack("<Q", data[:8])[0]
            raw[draw(st.integers(start, len(raw) - 1))] = draw(st.integers(0, 255))
            return bytes(raw)
        if kind == "truncate":
            return bytes(raw[:draw(st.integers(0, len(raw) - 1))])
        if kind == "flip":
            for _ in range(draw(st.integers(1, 4))):
                raw[draw(st.integers(0, len(raw) - 1))] ^= 1 << draw(st.integers(0, 7))
            return bytes(raw)
        raw[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
        return bytes(raw)
    return with_header(data, header)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_any_bytes_load_exactly_when_the_library_and_the_part_agree(valid, tmp_path, data):
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(data.draw(mutated(valid)))
    expected = reference_accepts(path, valid[2])
    with finishes_within(60, "loading a fuzzed checkpoint"):  # milliseconds when it works
        try:
            unet = weights.load_unet(path)
            loaded = True
        except weights.WeightsError as error:
            assert "\n" not in str(error) and str(path) in str(error)
            loaded = False
    event(f"loaded: {loaded}")
    assert loaded == expected
    if loaded:
        assert unet.config == CONFIG
