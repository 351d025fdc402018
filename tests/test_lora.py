"""LoRA files on top of a checkpoint (`--lora PATH[:WEIGHT]`, weights/lora.py), against diffusers' `load_lora_weights`
with `set_adapters` (peft underneath), in float64.

The files are written here, on random tiny weights, in each format, from the reference's own module names:
- kohya/A1111: `lora_unet_<diffusers path with _>` and `lora_te_<transformers path with _>`, down/up/alpha, with
  LoCon's 3×3 downs on the ResBlocks' convolutions;
- diffusers/PEFT: made by peft itself (`add_adapter(LoraConfig)`) and saved by diffusers' `save_lora_weights` with
  its `lora_adapter_metadata` (an alpha_pattern included).
Where the reference is known to be wrong (a kohya text-encoder LoRA without `self_attn_out_proj` layers is taken
for an old format and its attention updates dropped; text-encoder layers whose alpha differs from the file's most
common one get the wrong scale), the expected model is the definition, W + s · (α / r) · up · down, fused into the
reference's own modules by hand, a definition first checked against diffusers on the files diffusers gets right.
"""
import json
import math

import pytest
import torch
from safetensors.torch import save_file

import weights
from conftest import F64_BOUND, relative_error

RANK = 4


def linear_and_conv(module, keep) -> dict:
    """name → the reference's Linear and Conv2d modules whose name `keep` accepts."""
    return {name: m for name, m in module.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and keep(name)}


def unet_targets(unet) -> dict:
    """Attention, feed-forward and projections of every transformer, and (LoCon) the ResBlocks' convolutions."""
    return linear_and_conv(unet, lambda n: "attentions" in n or ".resnets." in n and n.endswith(("conv1", "conv2")))


def text_targets(text_encoder) -> dict:
    return linear_and_conv(text_encoder, lambda n: ".layers." in n)


def random_pair(m, rank: int, g: torch.Generator) -> tuple:
    """(down, up) for module m: down (r, in) or (r, in, kh, kw) (LoCon: the conv's own kernel), up (out, r[, 1, 1])."""
    if isinstance(m, torch.nn.Conv2d):
        down = torch.randn(rank, m.in_channels, *m.kernel_size, generator=g)
        up = torch.randn(m.out_channels, rank, 1, 1, generator=g)
    else:
        down, up = torch.randn(rank, m.in_features, generator=g), torch.randn(m.out_features, rank, generator=g)
    fan = math.prod(down.shape[1:])
    return down / math.sqrt(fan), up * 0.1


def kohya_file(path, pipe, seed: int, alphas=None, text: bool = True, unet: bool = True, drop=()) -> dict:
    """A kohya/A1111 LoRA for the reference's modules; alphas(name) → α (default: 2r/3 everywhere). Returns the
    definition: reference module name (with 'unet.' or 'text_encoder.') → (down, up, α)."""
    g, tensors, layers = torch.Generator().manual_seed(seed), {}, {}
    parts = ([("unet", "lora_unet_", unet_targets(pipe.unet))] if unet else []) + (
        [("text_encoder", "lora_te_", text_targets(pipe.text_encoder))] if text else [])
    for part, prefix, targets in parts:
        for name, m in targets.items():
            if any(d in name for d in drop):
                continue
            down, up = random_pair(m, RANK, g)
            alpha = float(torch.tensor(alphas(name) if alphas else 2 * RANK / 3))  # as the file holds it, float32
            # the text encoder's layers as kohya writes them: transformers' names before 5, under text_model.
            full = "text_model." + name if part == "text_encoder" and not name.startswith("text_model.") else name
            key = prefix + full.replace(".", "_")
            tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                            f"{key}.alpha": torch.tensor(alpha)})
            layers[f"{part}.{name}"] = (down, up, alpha)
    save_file(tensors, str(path))
    return layers


def peft_file(path, pipe, seed: int, alpha_pattern=None) -> dict:
    """A diffusers/PEFT LoRA made by peft on copies of the reference's UNet and text encoder and saved by diffusers
    (with lora_adapter_metadata). Returns the definition as kohya_file does, α = the config's, per pattern."""
    import copy
    import re
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    torch.manual_seed(seed)
    layers, saved, metadata = {}, {}, {}
    for part, model, targets in (("unet", pipe.unet, ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "ff.net.2"]),
                                 ("text_encoder", pipe.text_encoder, ["q_proj", "v_proj", "fc1"])):
        model = copy.deepcopy(model)
        config = LoraConfig(r=RANK, lora_alpha=6, target_modules=targets, alpha_pattern=alpha_pattern or {},
                            init_lora_weights=False)
        model.add_adapter(config)
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.data.normal_(0, 0.2)
        state = get_peft_model_state_dict(model)
        saved[f"{part}_lora_layers"], metadata[f"{part}_lora_adapter_metadata"] = state, config.to_dict()
        for key, down in state.items():
            if key.endswith("lora_A.weight"):
                name = key[:-len(".lora_A.weight")]
                alpha = next((v for k, v in (alpha_pattern or {}).items() if re.match(rf"(.*\.)?({k})$", name)), 6)
                layers[f"{part}.{name}"] = (down, state[key.replace("lora_A", "lora_B")], alpha)
    StableDiffusionPipeline.save_lora_weights(path.parent, weight_name=path.name, **saved, **metadata)
    return layers


def fused_by_definition(pipe, files: list):
    """A float64 copy of the reference with W += s · (α / r) · up · down for each (layers, s), by hand."""
    import copy
    pipe = copy.deepcopy(pipe).to(torch.float64)
    for layers, s in files:
        for name, (down, up, alpha) in layers.items():
            part, path = name.split(".", 1)
            w = getattr(pipe, part).get_submodule(path).weight
            with torch.no_grad():
                w += s * alpha / down.shape[0] * (up.double().flatten(1) @ down.double().flatten(1)).reshape(w.shape)
    return pipe


def with_diffusers_loras(pipe, files: list):
    """A float64 copy of the reference with the LoRA files loaded by diffusers: [(path, weight)]."""
    import copy
    pipe = copy.deepcopy(pipe).to(torch.float64)
    for i, (path, _) in enumerate(files):
        pipe.load_lora_weights(str(path), adapter_name=f"lora{i}")
    pipe.set_adapters([f"lora{i}" for i in range(len(files))], [w for _, w in files])
    return pipe


def outputs(sd_or_pipe, ids, x, t, context) -> tuple:
    """(text encoder's last hidden state, UNet's ε) of minitome's model or the reference."""
    if hasattr(sd_or_pipe, "components"):
        return (sd_or_pipe.text_encoder(ids).last_hidden_state, sd_or_pipe.unet(x, t, context).sample)
    return sd_or_pipe.text_encoder(ids), sd_or_pipe.unet(x, t, context)


def inputs(pipe):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 49408, (2, 77), generator=g)
    x = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    context = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=g, dtype=torch.float64)
    return ids, x, torch.tensor([500, 500]), context


def errors(ours, theirs) -> tuple:
    return tuple(relative_error(a, b) for a, b in zip(ours, theirs))


@torch.no_grad()
def test_kohya_and_peft_match_diffusers_in_float64(tiny_pipeline, tmp_path):
    """Each format alone, and two LoRAs at once with their weights (set_adapters'), and at weight 0: the text
    encoder's output and the UNet's ε within 1e-10 of diffusers + peft; the definition fused by hand agrees too."""
    pipe, folder = tiny_pipeline
    kohya = kohya_file(tmp_path / "style.safetensors", pipe, seed=1)
    peft = peft_file(tmp_path / "pytorch_lora_weights.safetensors", pipe, seed=2, alpha_pattern={"to_k": 2, "fc1": 8})
    ids, x, t, context = inputs(pipe)
    plain = outputs(weights.load(folder, dtype=torch.float64), ids, x, t, context)
    for files in ([(tmp_path / "style.safetensors", 0.7)],
                  [(tmp_path / "style.safetensors", 0.6), (tmp_path / "pytorch_lora_weights.safetensors", -0.4)]):
        ours = outputs(weights.load(folder, dtype=torch.float64, loras=files), ids, x, t, context)
        theirs = outputs(with_diffusers_loras(pipe, files), ids, x, t, context)
        layers = {"style.safetensors": kohya, "pytorch_lora_weights.safetensors": peft}
        definition = outputs(fused_by_definition(pipe, [(layers[p.name], w) for p, w in files]), ids, x, t, context)
        print(f"LoRA {[(p.name, w) for p, w in files]}: text {errors(ours, theirs)[0]:.1e}, UNet {errors(ours, theirs)[1]:.1e}")
        assert max(errors(ours, theirs)) < F64_BOUND and max(errors(definition, theirs)) < F64_BOUND
        assert min(errors(ours, plain)) > 1e-3  # the LoRA changed both parts
    zero = outputs(weights.load(folder, dtype=torch.float64, loras=[(tmp_path / "style.safetensors", 0.0)]), ids, x, t, context)
    assert all(torch.equal(a, b) for a, b in zip(zero, plain))  # weight 0 is off, to the bit


@torch.no_grad()
def test_where_diffusers_is_wrong_the_definition_is_the_reference(tiny_pipeline, tmp_path):
    """Text-encoder LoRAs diffusers 0.42.1 mis-reads: without self_attn_out_proj layers (its attention updates are
    dropped) and with alphas that differ from layer to layer (the file's most common alpha is used). minitome
    follows the definition, and differs from diffusers there (so the gap is real, and the test would notice it close)."""
    pipe, folder = tiny_pipeline
    ids, x, t, context = inputs(pipe)
    cases = {"no_out_proj": dict(drop=("out_proj",), unet=False),
             "alphas": dict(alphas=lambda name: 1.0 if "layers.0." in name else 3.0, unet=False)}
    for stem, settings in cases.items():
        path = tmp_path / f"{stem}.safetensors"
        layers = kohya_file(path, pipe, seed=3, **settings)
        ours = outputs(weights.load(folder, dtype=torch.float64, loras=[(path, 0.8)]), ids, x, t, context)[0]
        definition = outputs(fused_by_definition(pipe, [(layers, 0.8)]), ids, x, t, context)[0]
        theirs = outputs(with_diffusers_loras(pipe, [(path, 0.8)]), ids, x, t, context)[0]
        print(f"kohya text encoder, {stem}: against the definition {relative_error(ours, definition):.1e}, "
              f"against diffusers {relative_error(ours, theirs):.1e}")
        assert relative_error(ours, definition) < F64_BOUND
        assert relative_error(ours, theirs) > 1e-4


def test_png_with_loras_and_embeddings_matches_diffusers(tiny_pipeline, tmp_path):
    """The command line with two LoRAs (each format) and an embedding in the prompt and in the negative prompt, ToMe
    on: the PNG within 2/255 of diffusers' (load_lora_weights + set_adapters + load_textual_inversion, tomesd);
    its text says the weights as <lora:name:weight> and the files' hashes (12 hex digits: A1111's, computed here
    from their definition), and --from remakes it given the files."""
    import copy
    import hashlib
    import numpy as np
    from PIL import Image
    from conftest import sample_main as main
    from test_embedding import embedding_files
    from test_sample_e2e import SETTINGS, max_pixel_difference, reference_image
    pipe, folder = tiny_pipeline
    kohya_file(tmp_path / "style.safetensors", pipe, seed=1)
    peft_file(tmp_path / "pytorch_lora_weights.safetensors", pipe, seed=2)
    files = embedding_files(tmp_path, pipe.text_encoder.config.hidden_size)
    reference = copy.deepcopy(pipe)
    reference.load_lora_weights(str(tmp_path / "style.safetensors"), adapter_name="style")
    reference.load_lora_weights(str(tmp_path / "pytorch_lora_weights.safetensors"), adapter_name="peft")
    reference.set_adapters(["style", "peft"], [0.8, 0.5])
    reference.load_textual_inversion(str(tmp_path / "watercolour.pt"), token="watercolour")
    reference.load_textual_inversion(str(tmp_path / "learned_embeds.safetensors"))
    prompt, negative = "a fox, watercolour", "blurry <cat-toy>"
    import tomesd
    tomesd.apply_patch(reference, ratio=0.5, use_rand=False)
    expected = reference_image(reference, prompt=prompt, negative_prompt=negative)
    out = tmp_path / "out.png"
    argv = ["--weights", str(folder), "--prompt", prompt, "--negative-prompt", negative, "--steps", str(SETTINGS["steps"]),
            "--seed", str(SETTINGS["seed"]), "--width", str(SETTINGS["width"]), "--height", str(SETTINGS["height"]),
            "--lora", f"{tmp_path / 'style.safetensors'}:0.8", "--lora", f"{tmp_path / 'pytorch_lora_weights.safetensors'}:0.5",
            "--embedding", str(tmp_path / "watercolour.pt"), "--embedding", str(tmp_path / "learned_embeds.safetensors"),
            "--out", str(out), "--tome-ratio", "0.5", "--tome-no-rand"]
    assert main(argv) == 0
    image = Image.open(out)
    difference = max_pixel_difference(image, expected)
    print(f"LoRAs + embeddings + ToMe 0.5: largest pixel difference {difference}/255")
    assert difference <= 2
    text = image.text["parameters"]

    def after_header(path):
        data = path.read_bytes()
        return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:12]
    assert text.startswith("a fox, watercolour <lora:style:0.8> <lora:pytorch_lora_weights:0.5>\n")
    assert (f'Lora hashes: "style: {after_header(tmp_path / "style.safetensors")}, pytorch_lora_weights: '
            f'{after_header(tmp_path / "pytorch_lora_weights.safetensors")}"') in text
    whole = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in files}
    assert f'TI hashes: "watercolour: {whole["watercolour.pt"]}, <cat-toy>: {whole["learned_embeds.safetensors"]}"' in text
    # --from takes the weights from the tags, and needs the files
    again = tmp_path / "again.png"
    assert main(["--from", str(out), "--weights", str(folder), "--out", str(again),
                 "--lora", str(tmp_path / "style.safetensors"), "--lora", str(tmp_path / "pytorch_lora_weights.safetensors"),
                 "--embedding", str(tmp_path / "watercolour.pt"), "--embedding", str(tmp_path / "learned_embeds.safetensors")]) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(image))
    assert Image.open(again).text["parameters"] == text
    from test_bad_input import assert_one_line_error, run
    status, lines = run(["--from", str(out), "--weights", str(folder), "--out", str(tmp_path / "no.png")])
    assert_one_line_error(status, lines, r"--from .*out.png: its image was made with the LoRA 'style' at weight 0.8 "
                                         r"\(hash [0-9a-f]{12}\): give it with --lora PATH")


# The LCM-LoRA for SD 1.5 (latent-consistency/lcm-lora-sdv1-5): trained by diffusers' train_lcm_distill_lora_sd_wds.py
# with these PEFT target modules (a module is taken when its name is one of them or ends with "." and one), saved in
# kohya's format with diffusers' layer names (`lora_unet_up_blocks_2_attentions_0_proj_in.lora_up.weight`, `.alpha`).
# On SD 1.5's UNet they name 278 of its 282 Linear and Conv2d layers, none of the text encoder: every attention
# projection, feed-forward, proj_in/proj_out (1×1 convolutions), ResBlock convolution and time_emb_proj, and the
# down/upsamplers' convolutions; not conv_in, conv_out or the time embedding's two Linears (BEYOND_LCM_LORA).
LCM_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                    "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj")
BEYOND_LCM_LORA = ("conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2")


def lcm_lora_file(path, unet, seed: int, targets=LCM_LORA_TARGETS) -> dict:
    """A kohya-format LoRA shaped as the LCM-LoRA, on the reference UNet's layers that `targets` name (PEFT's
    matching); a 3×3 convolution's down has the conv's own kernel, as PEFT's lora_A. Returns target → its layers."""
    g, tensors, kinds = torch.Generator().manual_seed(seed), {}, {}
    for name, m in linear_and_conv(unet, lambda n: True).items():
        target = next((t for t in targets if name == t or name.endswith("." + t)), None)
        if target is None:
            continue
        kinds.setdefault(target, []).append(name)
        down, up = random_pair(m, RANK, g)
        key = "lora_unet_" + name.replace(".", "_")
        tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(8.0)})
    save_file(tensors, str(path))
    return kinds


@torch.no_grad()
@pytest.mark.parametrize("targets", [LCM_LORA_TARGETS, LCM_LORA_TARGETS + BEYOND_LCM_LORA], ids=["lcm-lora", "every-layer"])
def test_an_lcm_lora_fuses_every_layer_it_names_as_diffusers_fuses_it(tiny_pipeline, tmp_path, targets):
    """Every kind of layer the LCM-LoRA names (and the UNet's other layers, which it does not) is found through
    --lora as the file is, and fused: every UNet and text-encoder tensor equals diffusers' after load_lora_weights +
    fuse_lora (peft underneath; read back from the folder it saves), changed in the named layers' weights only."""
    import copy
    pipe, folder = tiny_pipeline
    path = tmp_path / "lcm-lora-sdv1-5.safetensors"
    kinds = lcm_lora_file(path, pipe.unet, seed=4, targets=targets)
    assert set(kinds) == set(targets)  # each kind is in the tiny UNet (the conv_shortcut of a ResBlock that widens)
    reference = copy.deepcopy(pipe).to(torch.float64)
    reference.load_lora_weights(str(path), adapter_name="lcm")
    reference.fuse_lora(lora_scale=0.9)
    reference.unload_lora_weights()  # the plain modules, their weights fused
    reference.save_pretrained(tmp_path / "fused")
    expected = weights.load(tmp_path / "fused", dtype=torch.float64)
    got = weights.load(folder, dtype=torch.float64, loras=[(path, 0.9)])
    plain = weights.load(folder, dtype=torch.float64)
    changed, worst = 0, 0.0
    for part in ("unet", "text_encoder"):
        ours, theirs, before = (getattr(sd, part).state_dict() for sd in (got, expected, plain))
        assert ours.keys() == theirs.keys()
        for name, tensor in ours.items():
            if torch.equal(theirs[name], before[name]):
                assert torch.equal(tensor, before[name]), name  # a layer the file does not name is untouched
            else:
                changed, worst = changed + 1, max(worst, relative_error(tensor, theirs[name]))
                assert relative_error(tensor, theirs[name]) < F64_BOUND, name
    layers = sum(len(names) for names in kinds.values())
    print(f"{len(targets)} kinds of layer, {layers} layers: {changed} weights fused, each within "
          f"{worst:.1e} of diffusers'")
    assert changed == layers


def refused_files(folder, pipe) -> dict:
    """name → (argv given beside --weights, the message's pattern): files minitome refuses, each made here."""
    import shutil
    g = torch.Generator().manual_seed(9)
    tok = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    width = pipe.unet.config.cross_attention_dim
    files = {
        "loha": {f"{tok}.hada_w1_a": torch.randn(4, 4), f"{tok}.hada_w1_b": torch.randn(4, 4)},
        "lokr": {f"{tok}.lokr_w1": torch.randn(4, 4), f"{tok}.lokr_w2": torch.randn(4, 4)},
        "sdxl": {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(4, 1280),
                 "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.randn(5120, 4)},
        "sd2": {f"{tok}.lora_down.weight": torch.randn(4, 1024), f"{tok}.lora_up.weight": torch.randn(32, 4)},
        "stranger": {"lora_unet_single_transformer_blocks_0_attn_to_q.lora_down.weight": torch.randn(4, 8),
                     "lora_unet_single_transformer_blocks_0_attn_to_q.lora_up.weight": torch.randn(8, 4)},
        "unknown": {f"{tok}.lora_down.weight": torch.randn(4, width), f"{tok}.lora_up.weight": torch.randn(32, 4),
                    "optimizer_state": torch.randn(3)},
        "ranks": {f"{tok}.lora_down.weight": torch.randn(4, width), f"{tok}.lora_up.weight": torch.randn(32, 3)},
        "nan": {f"{tok}.lora_down.weight": torch.full((4, width), float("nan")), f"{tok}.lora_up.weight": torch.randn(32, 4)},
    }
    peft = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    files.update({
        "rank0": {f"{tok}.lora_down.weight": torch.randn(0, width), f"{tok}.lora_up.weight": torch.randn(32, 0)},
        "empty": {},
        "int8": {f"{tok}.lora_down.weight": torch.ones(4, width, dtype=torch.int8),
                 f"{tok}.lora_up.weight": torch.ones(32, 4, dtype=torch.int8)},
        "twice": {f"{tok}.lora_down.weight": torch.randn(4, width), f"{tok}.lora_up.weight": torch.randn(32, 4),
                  f"{peft}.lora_A.weight": torch.randn(4, width), f"{peft}.lora_B.weight": torch.randn(32, 4)},
    })
    for name, tensors in files.items():
        save_file(tensors, str(folder / f"{name}.safetensors"))
    peft_pair = {f"{peft}.lora_A.weight": torch.randn(4, width), f"{peft}.lora_B.weight": torch.randn(32, 4)}
    metadata = {"backtracking": {"unet.alpha_pattern": {"(.*.*)*b": 3}}, "pattern": {"unet.alpha_pattern": {"(": 3}},
                "pattern-list": {"unet.alpha_pattern": [1, 2]}, "huge-alpha": {"unet.lora_alpha": 10 ** 400},
                "bool-alpha": {"unet.lora_alpha": True}, "rslora-text": {"unet.use_rslora": "false"}}
    for name, config in metadata.items():
        save_file(peft_pair, str(folder / f"{name}.safetensors"), metadata={"lora_adapter_metadata": json.dumps(config)})
    kohya_file(folder / "good.safetensors", pipe, seed=3)
    (folder / "d").mkdir()
    shutil.copy(folder / "good.safetensors", folder / "d" / "good.safetensors")
    shutil.copy(folder / "good.safetensors", folder / "a:b.safetensors")
    (folder / "loop.safetensors").symlink_to(folder / "loop.safetensors")
    shutil.copy(folder / "good.safetensors", folder / "good.safetensors:0.5")
    save_file({"emb_params": torch.ones(2, pipe.text_encoder.config.hidden_size, dtype=torch.int8)},
              str(folder / "int-embedding.safetensors"))
    torch.save({"string_to_param": {"*": torch.randn(2, pipe.text_encoder.config.hidden_size).to_sparse()}},
               folder / "sparse.pt")
    save_file({"emb_params": torch.randn(2, pipe.text_encoder.config.hidden_size, generator=g)}, str(folder / "style.safetensors"))
    save_file({"clip_g": torch.randn(2, 1280), "clip_l": torch.randn(2, 768)}, str(folder / "xl-embedding.safetensors"))
    save_file({"emb_params": torch.randn(2, 1024)}, str(folder / "sd2-embedding.safetensors"))
    save_file({"emb_params": torch.randn(2, pipe.text_encoder.config.hidden_size, generator=g)}, str(folder / "two.safetensors"))
    torch.save({f"{tok}.lora_down.weight": torch.randn(4, width)}, folder / "pickled.pt")
    shutil.copy(folder / "ranks.safetensors", folder / "pickled.ckpt")
    return {
        "LoHa": (["--lora", str(folder / "loha.safetensors")], r"loha.safetensors: a LyCORIS LoHa file .* minitome takes LoRA and LoCon"),
        "LoKr": (["--lora", str(folder / "lokr.safetensors")], r"a LyCORIS LoKr file"),
        "SDXL LoRA": (["--lora", str(folder / "sdxl.safetensors")], r"sdxl.safetensors: a LoRA for SDXL \('lora_te2_'"),
        "SD 2 LoRA": (["--lora", str(folder / "sd2.safetensors")], r"a LoRA for SD 2.x \(1024-wide text context"),
        "no layer of the model": (["--lora", str(folder / "stranger.safetensors")], r"none of its 1 layer\(s\) is a layer of"),
        "unknown keys": (["--lora", str(folder / "unknown.safetensors")], r"1 tensor\(s\) no LoRA format names, first 'optimizer_state'"),
        "mismatched ranks": (["--lora", str(folder / "ranks.safetensors")], r"down has rank 4, up rank 3; they must match"),
        "non-finite": (["--lora", str(folder / "nan.safetensors")], r"nan.safetensors: tensor '.*lora_down.weight' holds NaN or infinity"),
        "token in the vocabulary": (["--embedding", str(folder / "style.safetensors")],
                                    r"token 'style' is already in the tokenizer's vocabulary .* --embedding .*:TOKEN"),
        "a token given twice": (["--embedding", f"{folder / 'two.safetensors'}:mytok", "--embedding",
                                 f"{folder / 'style.safetensors'}:MyTok"], r"token 'MyTok' is already in .*or given twice"),
        "a token one vector of another takes": (["--embedding", f"{folder / 'two.safetensors'}:mytok", "--embedding",
                                                 f"{folder / 'style.safetensors'}:mytok_1"], r"token 'mytok_1' is already"),
        "SDXL embedding": (["--embedding", str(folder / "xl-embedding.safetensors")], r"an SDXL embedding \(clip_g, clip_l\)"),
        "SD 2 embedding": (["--embedding", str(folder / "sd2-embedding.safetensors")], r"width 1024, an embedding for SD 2.x"),
        "pickle LoRA .pt": (["--lora", str(folder / "pickled.pt")], r"pickled.pt: pickle checkpoints are refused .* convert it"),
        "pickle LoRA .ckpt": (["--lora", str(folder / "pickled.ckpt")], r"pickle checkpoints are refused"),
        "missing LoRA": (["--lora", str(folder / "missing.safetensors")], r"--lora .*missing.safetensors: no such file"),
        "LoRA weight nan": (["--lora", f"{folder / 'ranks.safetensors'}:nan"], r"--lora .*: weight 'nan' is not a finite number"),
        "LoRA weight text": (["--lora", f"{folder / 'ranks.safetensors'}:strong"], r"weight 'strong' is not a finite number"),
        "missing embedding": (["--embedding", str(folder / "nothing.pt:tok")], r"--embedding .*nothing.pt:tok: no such file"),
        "rank 0": (["--lora", str(folder / "rank0.safetensors")], r"rank0.safetensors: layer '.*' has rank 0"),
        "no tensors": (["--lora", str(folder / "empty.safetensors")], r"empty.safetensors: holds no tensors, so no LoRA"),
        "integer LoRA": (["--lora", str(folder / "int8.safetensors")], r"int8.safetensors: tensor '.*' is I8, expected floating"),
        "a layer named twice": (["--lora", str(folder / "twice.safetensors")], r"twice.safetensors: layers .* are one layer"),
        "a pattern that backtracks": (["--lora", str(folder / "backtracking.safetensors")],
                                      r"backtracking.safetensors: lora_adapter_metadata's unet.alpha_pattern is not a map"),
        "a pattern that is no regex": (["--lora", str(folder / "pattern.safetensors")], r"alpha_pattern is not a map"),
        "a pattern list": (["--lora", str(folder / "pattern-list.safetensors")], r"alpha_pattern is not a map"),
        "an alpha too large for a float": (["--lora", str(folder / "huge-alpha.safetensors")], r"the alpha 1000.*not a finite"),
        "a boolean alpha": (["--lora", str(folder / "bool-alpha.safetensors")], r"the alpha True, not a finite number"),
        "use_rslora as text": (["--lora", str(folder / "rslora-text.safetensors")], r"use_rslora is 'false', not true or false"),
        "a weight that overflows": (["--lora", f"{folder / 'good.safetensors'}:1e300"],
                                    r"good.safetensors: at weight 1e\+300, layer '.*' makes the model's .* overflow float32"),
        "two LoRAs of one name": (["--lora", str(folder / "good.safetensors"), "--lora", str(folder / "d" / "good.safetensors")],
                                  r"--lora .*good.safetensors has the same name 'good'"),
        "a LoRA name a tag cannot hold": (["--lora", str(folder / "a:b.safetensors")], r"its name 'a:b' holds ':'"),
        "a weight float() reads but a tag would not": (["--lora", f"{folder / 'good.safetensors'}:1_0"],
                                                        r"weight '1_0' is not a finite number"),
        "a link to nothing": (["--lora", str(folder / "loop.safetensors")], r"loop.safetensors: a link to nothing"),
        "a spec that names two files": (["--lora", f"{folder / 'good.safetensors'}:0.5"], r"names two files, .*rename one"),
        "a tag in the prompt": (["--prompt", "a fox <lora:good:0.8>"], r"--prompt holds '<lora:good:0.8>': minitome takes"),
        "a token a word in another case": (["--embedding", f"{folder / 'style.safetensors'}:Fox"],
                                           r"token 'Fox' is already in the tokenizer's vocabulary"),
        "an integer embedding": (["--embedding", str(folder / "int-embedding.safetensors")], r"tensor 'emb_params' is I8"),
        "a sparse embedding": (["--embedding", str(folder / "sparse.pt")], r"sparse.pt: the embedding must be dense"),
    }


def test_refused_files_say_what_they_are_in_one_line(tiny_pipeline, tmp_path):
    """Each refused file: one line naming the file and what minitome takes, exit 2, no image, no model work."""
    from test_bad_input import assert_one_line_error, no_files, run
    pipe, folder = tiny_pipeline
    (tmp_path / "files").mkdir()
    for what, (extra, pattern) in refused_files(tmp_path / "files", pipe).items():
        out = tmp_path / "out" / "x.png"
        status, lines = run(["--weights", str(folder), "--prompt", "p", "--steps", "10", "--out", str(out), *extra])
        print(f"{what}: {lines[-1]}")
        assert_one_line_error(status, lines, pattern)
        assert no_files(tmp_path / "out"), what


def test_a_lora_or_an_embedding_given_as_the_weights_is_named(single_file, tiny_pipeline, tmp_path):
    from test_bad_input import assert_one_line_error, run
    pipe, _ = tiny_pipeline
    kohya_file(tmp_path / "style.safetensors", pipe, seed=1)
    save_file({"emb_params": torch.randn(2, 768)}, str(tmp_path / "embedding.safetensors"))
    for name, pattern in (("style.safetensors", r"a LoRA, not a checkpoint: give it with --lora .*style.safetensors"),
                          ("embedding.safetensors", r"a textual-inversion embedding, not a checkpoint: give it with --embedding")):
        status, lines = run(["--weights", str(tmp_path / name), "--prompt", "p", "--out", str(tmp_path / "x.png")])
        assert_one_line_error(status, lines, pattern)


def test_from_warns_when_a_lora_file_differs_from_the_pngs(tmp_path, capsys):
    """--from with a LoRA of the PNG's name but other bytes: the image will differ, said in one line; the PNG's
    weight is taken unless the flag gives one."""
    from minitome.cli.add_ons import check_from_png
    save_file({"lora_unet_x.lora_down.weight": torch.ones(2, 3), "lora_unet_x.lora_up.weight": torch.ones(3, 2)},
              str(tmp_path / "style.safetensors"))
    fields = {"lora_hashes": (("style", "0123456789ab"),)}  # the PNG's settings
    loras, _ = check_from_png(fields, [("style", "0.8")], [(tmp_path / "style.safetensors", 1.0, False)], [], "a.png")
    assert loras == [(tmp_path / "style.safetensors", 0.8)]
    assert "was made with the LoRA 'style' of hash 0123456789ab" in capsys.readouterr().err
    loras, _ = check_from_png(fields, [("style", "0.8")], [(tmp_path / "style.safetensors", 0.3, True)], [], "a.png")
    assert loras == [(tmp_path / "style.safetensors", 0.3)]
    for weight in ("nan", "abc", "1e309"):  # a PNG's weight is checked as --lora's is
        with pytest.raises(ValueError, match=rf"--from a.png: its tag <lora:style:{weight}> gives the weight '{weight}', not a"):
            check_from_png(fields, [("style", weight)], [(tmp_path / "style.safetensors", 1.0, False)], [], "a.png")
    save_file({"emb_params": torch.ones(1, 8)}, str(tmp_path / "zzqx.safetensors"))
    from minitome.cli.hashes import embedding_hash  # an embedding given without a token takes the PNG's
    fields = {"embedding_hashes": (("mytok", embedding_hash(tmp_path / "zzqx.safetensors")),)}
    assert check_from_png(fields, [], [], [(tmp_path / "zzqx.safetensors", None)], "a.png")[1] == [
        (tmp_path / "zzqx.safetensors", "mytok")]


def test_lora_memory_tool_loads_with_and_without(tiny_pipeline, tmp_path, capsys):
    """python -m minitome.lab.lora_memory: what each of its processes reports (here in this process), and its errors;
    the LoRA adds no parameter."""
    from minitome.lab.lora_memory import child, main
    pipe, folder = tiny_pipeline
    kohya_file(tmp_path / "style.safetensors", pipe, seed=1)
    without, with_lora = child(str(folder), []), child(str(folder), [(tmp_path / "style.safetensors", 0.5)])
    assert without["parameters"] == with_lora["parameters"] and with_lora["peak_mb"] > 0 and with_lora["resident_mb"] > 0
    assert main(["--weights", str(folder)]) == 2 and "give --weights and at least one --lora" in capsys.readouterr().err
    assert main(["--weights", str(folder), "--lora", str(tmp_path / "none.safetensors")]) == 2
