"""The SD 1.x single files that circulate, each written in the official names from the tiny reference
pipeline's state dicts (names checked with diffusers' converters, tests/official.py), and what
`weights.load` makes of it: the same modules as the diffusers folder, or a one-line error saying why.
"""
import warnings

import pytest
import torch
from safetensors.torch import save_file

import weights
from official import TEXT, UNET, VAE, check_unet, official_tensors, vae_tensors
from weights.unet import diffusers_names, to_diffusers_name


@pytest.fixture(scope="module")
def base(tiny_pipeline):
    """(pipe, folder, the model loaded from the diffusers folder, UNet names diffusers → official)."""
    pipe, folder = tiny_pipeline
    reference = weights.load(folder)
    table = diffusers_names(reference.unet.config)
    unet_names = {to_diffusers_name(ours, table): ours for ours in reference.unet.state_dict()}
    return pipe, folder, reference, unet_names


def write(tmp_path, tensors, name="model.safetensors"):
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


def load_quietly(path, folder, **kwargs):
    """weights.load, returning (model, the WeightsNotice messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sd = weights.load(path, tokenizer=folder / "tokenizer", **kwargs)
    return sd, [str(w.message) for w in caught if issubclass(w.category, weights.WeightsNotice)]


def same_module(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def same_model(a, b) -> bool:
    return all(same_module(getattr(a, p), getattr(b, p)) for p in ("unet", "text_encoder", "vae"))


def test_the_official_layout_with_every_tensor_kind(base, tmp_path):
    pipe, folder, reference, unet_names = base
    tensors = official_tensors(pipe, unet_names)
    assert sum(n.startswith(VAE + "encoder.") for n in tensors) > 0 and "model_ema.decay" in tensors
    sd, notices = load_quietly(write(tmp_path, tensors), folder)
    assert same_model(sd, reference) and notices == []


def test_text_encoder_without_text_model_is_an_alias(base, tmp_path):
    pipe, folder, reference, unet_names = base
    sd, _ = load_quietly(write(tmp_path, official_tensors(pipe, unet_names, text="")), folder)
    assert same_model(sd, reference)


def test_text_encoder_in_both_forms_is_an_error(base, tmp_path):
    pipe, folder, _, unet_names = base
    tensors = official_tensors(pipe, unet_names)
    tensors[TEXT + "final_layer_norm.weight"] = tensors[TEXT + "text_model.final_layer_norm.weight"].clone()
    with pytest.raises(weights.WeightsError, match=r"text encoder is stored twice"):
        weights.load(write(tmp_path, tensors), tokenizer=folder / "tokenizer")


EXTRAS = {"cond_stage_model.logit_scale": torch.tensor(4.6), "cond_stage_model.text_projection": torch.zeros(64, 64),
          "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(1.0),
          "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
          "embedding_manager.embedder.transformer.text_model.final_layer_norm.bias": torch.zeros(64)}


def test_known_extras_are_ignored_with_one_notice(base, tmp_path):
    pipe, folder, reference, unet_names = base
    sd, notices = load_quietly(write(tmp_path, {**official_tensors(pipe, unet_names), **EXTRAS}), folder)
    assert same_model(sd, reference)
    assert len(notices) == 1 and "ignored 5 tensor(s) that no SD 1.x part uses" in notices[0]
    assert all(prefix in notices[0] for prefix in ("cond_stage_model.logit_scale", "lora_te_", "lora_unet_",
                                                   "embedding_manager.", "cond_stage_model.text_projection"))


@pytest.mark.parametrize("extra, message", [
    ({"control_model.input_blocks.0.0.weight": torch.zeros(1)}, "a ControlNet bundle"),
    ({"some_other_model.weight": torch.zeros(1)}, r"1 tensor\(s\) of no SD 1.x part, first 'some_other_model.weight'"),
    ({TEXT + "text_model.extra.weight": torch.zeros(1)}, r"unexpected tensor\(s\).*'cond_stage_model.transformer.text_model.extra.weight'"),
])
def test_other_tensors_are_refused_with_the_reason(base, tmp_path, extra, message):
    pipe, folder, _, unet_names = base
    with pytest.raises(weights.WeightsError, match=message):
        weights.load(write(tmp_path, {**official_tensors(pipe, unet_names), **extra}), tokenizer=folder / "tokenizer")


@pytest.mark.parametrize("naming", ["ldm", "diffusers"])
@pytest.mark.parametrize("attention_2d", [False, True])
def test_baked_vae_in_either_naming_and_attention_shape(base, tmp_path, naming, attention_2d):
    pipe, folder, reference, unet_names = base
    tensors = official_tensors(pipe, unet_names, vae=naming, attention_2d=attention_2d)
    attention = [n for n in tensors if n.startswith(VAE + "decoder.mid") and n.endswith("weight") and
                 any(k in n for k in (".q.", ".to_q."))]
    assert len(attention) == 1 and tensors[attention[0]].ndim == (2 if attention_2d else 4)
    sd, _ = load_quietly(write(tmp_path, tensors), folder)
    assert same_model(sd, reference)


@pytest.mark.parametrize("channels, kind", [(9, "an inpainting UNet"), (8, "an instruct-pix2pix UNet")])
def test_other_unet_inputs_are_refused_before_any_tensor_is_read(base, tmp_path, monkeypatch, channels, kind):
    from diffusers import UNet2DConditionModel
    from conftest import TINY_DIFFUSERS_UNET, randomize_
    pipe, folder, _, unet_names = base
    other = randomize_(UNet2DConditionModel(**{**TINY_DIFFUSERS_UNET, "cross_attention_dim": 64, "in_channels": channels}), 5)
    tensors = official_tensors(pipe, unet_names)
    tensors.update({UNET + unet_names[n]: t.contiguous() for n, t in other.state_dict().items()})
    check_unet(tensors, other)  # the file's UNet names, checked by diffusers' converter
    path = write(tmp_path, tensors)
    monkeypatch.setattr(weights.checkpoint.Checkpoint, "tensor", lambda *a, **k: pytest.fail("a tensor was read"))
    with pytest.raises(weights.WeightsError, match=f"{kind} \\({channels} input channels"):
        weights.load(path, tokenizer=folder / "tokenizer")
    other.save_pretrained(tmp_path / "folder" / "unet")
    with pytest.raises(weights.WeightsError, match=f"{kind} \\({channels} input channels"):
        weights.load_unet(tmp_path / "folder")


def test_both_unets_load_the_non_ema_one_by_default_and_the_ema_one_when_asked(base, tmp_path):
    import copy
    from conftest import randomize_
    pipe, folder, reference, unet_names = base
    ema = randomize_(copy.deepcopy(pipe.unet), 99)
    path = write(tmp_path, official_tensors(pipe, unet_names, ema_unet=ema))
    sd, notices = load_quietly(path, folder)
    assert same_model(sd, reference)
    assert len(notices) == 1 and "loaded the non-EMA weights (ema=True / --ema loads the EMA copy" in notices[0]
    sd_ema, notices = load_quietly(path, folder, ema=True)
    assert notices == [] and not same_module(sd_ema.unet, reference.unet)
    ema.save_pretrained(tmp_path / "ema" / "unet")  # the EMA UNet through diffusers' own folder layout
    assert same_module(sd_ema.unet, weights.load_unet(tmp_path / "ema"))
    assert same_module(sd_ema.text_encoder, reference.text_encoder) and same_module(sd_ema.vae, reference.vae)
    no_ema = write(tmp_path, official_tensors(pipe, unet_names), "emaonly.safetensors")
    with pytest.raises(weights.WeightsError, match=r"no EMA copy of the UNet"):
        weights.load(no_ema, tokenizer=folder / "tokenizer", ema=True)


def test_float8_tensors_are_upcast(base, tmp_path):
    pipe, folder, _, unet_names = base
    tensors = official_tensors(pipe, unet_names)
    for dtype, prefix in ((torch.float8_e4m3fn, UNET), (torch.float8_e5m2, TEXT)):
        tensors.update({n: t.to(dtype) for n, t in tensors.items() if n.startswith(prefix) and t.is_floating_point()})
    sd, _ = load_quietly(write(tmp_path, tensors), folder)
    expected = {n[len(UNET):]: t.float() for n, t in tensors.items() if n.startswith(UNET)}  # torch's own conversion
    state = sd.unet.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[n], expected[n]) for n in state)
    assert sd.text_encoder.final_layer_norm.weight.dtype == torch.float32


def test_a_separate_vae_replaces_or_supplies_the_decoder(base, tmp_path):
    from conftest import TINY_VAE, diffusers_vae
    pipe, folder, reference, unet_names = base
    other = diffusers_vae(seed=77, **TINY_VAE)
    other.save_pretrained(tmp_path / "vae_folder")
    from_folder = weights.load(folder, vae=tmp_path / "vae_folder").vae
    assert not same_module(from_folder, reference.vae)
    ldm_file = write(tmp_path, vae_tensors(other, "ldm"), "vae-ft-mse-840000-ema-pruned.safetensors")
    diffusers_file = write(tmp_path, vae_tensors(other, "diffusers"), "diffusion_pytorch_model.safetensors")
    extracted = write(tmp_path, {VAE + n: t for n, t in vae_tensors(other, "ldm").items()}, "extracted.safetensors")
    without_vae = write(tmp_path, official_tensors(pipe, unet_names, vae=None), "no-vae.safetensors")
    with_vae = write(tmp_path, official_tensors(pipe, unet_names), "with-vae.safetensors")
    for model in (without_vae, with_vae):
        for vae in (ldm_file, diffusers_file, extracted, tmp_path / "vae_folder"):
            sd, _ = load_quietly(model, folder, vae=vae)
            assert same_module(sd.vae, from_folder) and same_module(sd.unet, reference.unet)
    with pytest.raises(weights.WeightsError, match=r"no VAE in this file .*pass one with vae=PATH \(--vae\)"):
        weights.load(without_vae, tokenizer=folder / "tokenizer")
    with pytest.raises(weights.WeightsError, match=r"tensor\(s\) outside the VAE"):
        weights.load(with_vae, tokenizer=folder / "tokenizer", vae=with_vae)


def test_command_line_says_what_it_ignored_and_takes_vae_and_ema(base, tmp_path, capsys):
    import copy
    from conftest import randomize_
    from conftest import sample_main as main
    pipe, folder, _, unet_names = base
    tensors = {**official_tensors(pipe, unet_names, vae=None, ema_unet=randomize_(copy.deepcopy(pipe.unet), 3)), **EXTRAS}
    path = write(tmp_path, tensors)
    pipe.vae.save_pretrained(tmp_path / "vae")
    argv = ["--weights", str(path), "--tokenizer", str(folder / "tokenizer"), "--prompt", "a cat", "--steps", "10",
            "--width", "16", "--height", "16", "--seed", "1", "--vae", str(tmp_path / "vae")]
    assert main(argv + ["--out", str(tmp_path / "a.png")]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("minitome.sample: note: ")]
    assert len(notes) == 2 and "ignored 5 tensor(s)" in notes[1] and "loaded the non-EMA weights" in notes[0]
    assert main(argv + ["--ema", "--out", str(tmp_path / "b.png")]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("minitome.sample: note: ")]
    assert len(notes) == 1 and "ignored 5 tensor(s)" in notes[0]
    assert main(argv[:-2] + ["--out", str(tmp_path / "c.png")]) == 2
    assert capsys.readouterr().err.strip().endswith("no VAE in this file (first_stage_model.*); pass one with vae=PATH (--vae)")
