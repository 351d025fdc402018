"""Bad input and faults: one line, a non-zero exit, no traceback, no image lost, no file left behind.

One test per class of failure (a wrong image with exit 0; a traceback; a finished image lost; large
sizes failing late), the command line's checks fuzzed in process, and a few cases end to end in a
child process (SIGTERM, a FIFO, --device meta).
"""
import contextlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings, strategies as st
from safetensors.torch import load_file, save_file

import weights
from conftest import FLOAT32, ROOT, child_env, finishes_within, sample_main as main
from test_lcm_unet import lcm_pipeline  # noqa: F401 (a fixture: a tiny pipeline with an LCM-distilled UNet)

BASE = ["--prompt", "a cat", "--steps", "10", "--width", "16", "--height", "16", "--seed", "1", *FLOAT32]


def run(argv):
    """main(argv) in process: (exit status, stderr lines)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as exit:  # argparse: its usage block, then one line
            status = exit.code
    return status, err.getvalue().strip().split("\n")


def assert_one_line_error(status, lines, pattern=""):
    import re
    assert status == 2, lines
    assert not any("Traceback" in line for line in lines), lines
    assert lines[-1].startswith(("minitome.sample: error: ", "python -m minitome.sample: error: ")), lines
    assert re.search(pattern, lines[-1]), lines[-1]


def no_files(folder):
    return not folder.exists() or not [p for p in folder.rglob("*") if p.is_file()]


# ---- 1. a wrong image with exit 0: refused instead ----

@pytest.mark.parametrize("extra, pattern", [
    (["--guidance", "inf"], "--guidance must be a finite number, got inf"),
    (["--tome-ratio", "0.5", "--tome-sx", "3"], "--tome-sx 3 and sy 2: no whole cell fits the 2x2 latent grid, so nothing"),
    (["--guidance", "nan"], "--guidance must be a finite number, got nan"),
    (["--steps", "1000"], "--steps: 1000 steps with leading spacing would start at t = 1000, past the schedule.s last "
                          "timestep 999: use --spacing trailing"),
    (["--steps", "5000"], "--steps: 5000 steps do not fit on the 1000 timesteps of the schedule: use at most 1000"),
    (["--steps", "1001", "--spacing", "trailing"], "--steps: 1001 steps do not fit .* at most 1000"),
    (["--steps", "400"], "--steps: 400 steps with leading spacing would start at t = 799"),
    (["--steps", "600"], "--steps: 600 steps with leading spacing would start at t = 600"),
    (["--steps", "4"], "--steps: 4 steps with leading spacing would start at t = 751, .*use --spacing trailing"),
    (["--steps", "4", "--sampler", "dpm++2m"], "--steps: 4 steps with leading spacing would start at t = 801"),
    (["--steps", "1", "--sampler", "euler", "--spacing", "linspace"], "--steps: 1 step with linspace spacing would start at t = 0"),
    (["--sampler", "heun"], "argument --sampler: invalid choice: 'heun'"),
    (["--spacing", "even"], "argument --spacing: invalid choice: 'even'"),
    (["--spacing", "karras"], "--spacing: karras spacing works with euler and dpm\\+\\+2m, not plms: PLMS steps in t"),
    (["--spacing", "karras", "--sampler", "ddim"], "--spacing: karras spacing works with .*, not ddim"),
    (["--spacing", "karras", "--sampler", "euler-a"], "--spacing: karras .* not euler-a: diffusers' EulerAncestral"),
    (["--guidance", "1"], "--width 16 --height 16: too small for this UNet at 1 latent per call .* GroupNorm"),
    (["--sampler", "lcm", "--steps", "4", "--spacing", "trailing"], "^minitome.sample: error: --spacing: lcm takes its "
                                                                     "own timesteps"),
    (["--sampler", "lcm", "--steps", "51"], "^minitome.sample: error: --steps: lcm takes 1 to 50 steps"),
])
def test_settings_that_would_make_a_wrong_image(single_file, tmp_path, extra, pattern):
    status, lines = run(["--weights", str(single_file), *BASE, "--out", str(tmp_path / "o" / "x.png"), *extra])
    assert_one_line_error(status, lines, pattern)
    assert no_files(tmp_path / "o")


def test_a_negative_prompt_with_an_lcm_distilled_unet_is_refused(lcm_pipeline, tmp_path, monkeypatch):
    """An LCM-distilled UNet runs without classifier-free guidance, so a negative prompt would do nothing (diffusers
    drops it silently): refused from the UNet's config, before any tensor is read."""
    monkeypatch.setattr(weights.checkpoint.Checkpoint, "tensor", lambda *a, **k: pytest.fail("a tensor was read"))
    status, lines = run(["--weights", str(lcm_pipeline[1]), *BASE, "--width", "32", "--height", "32", "--sampler", "lcm",
                         "--steps", "4", "--negative-prompt", "blurry", "--out", str(tmp_path / "o" / "x.png")])
    assert_one_line_error(status, lines, r"^minitome.sample: error: --negative-prompt: this UNet is LCM-distilled "
                                         r"\(time_cond_proj_dim \d+\)")
    assert no_files(tmp_path / "o")


def test_a_huge_guidance_that_overflows_is_an_error_not_a_black_image(single_file, tmp_path):
    status, lines = run(["--weights", str(single_file), *BASE, "--guidance", "1e38", "--out", str(tmp_path / "o" / "x.png")])
    assert_one_line_error(status, lines, "the sampled latents are not finite .* guidance 1e\\+38 may be too large")
    assert no_files(tmp_path / "o")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_weight_with_nan_or_infinity_is_refused(single_file, tmp_path, value):
    tensors = load_file(str(single_file))
    name = "model.diffusion_model.middle_block.1.proj_in.weight"
    tensors[name][0, 0] = value
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad))
    with pytest.raises(weights.WeightsError, match=f"tensor '{name}' holds NaN or infinity"):
        weights.load(bad, tokenizer=single_file.parent / "tokenizer")


def test_a_weight_beyond_float16_is_refused_in_float16(single_file, tmp_path):
    tensors = load_file(str(single_file))
    name = "first_stage_model.decoder.conv_out.bias"
    tensors[name][0] = 1e6
    bad = tmp_path / "big.safetensors"
    save_file(tensors, str(bad))
    weights.load(bad, tokenizer=single_file.parent / "tokenizer")  # fine in float32
    with pytest.raises(weights.WeightsError, match=f"tensor '{name}' has values beyond the range of float16"):
        weights.load(bad, tokenizer=single_file.parent / "tokenizer", dtype=torch.float16)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, torch.uint8])
def test_integer_or_bool_tensors_where_floats_belong_are_refused(single_file, tmp_path, dtype):
    tensors = load_file(str(single_file))
    name = "model.diffusion_model.out.0.weight"
    tensors[name] = tensors[name].to(dtype)
    bad = tmp_path / "ints.safetensors"
    save_file(tensors, str(bad))
    with pytest.raises(weights.WeightsError, match=f"tensor '{name}' is (I64|I32|BOOL|U8), expected floating point"):
        weights.load(bad, tokenizer=single_file.parent / "tokenizer")


def tokenizer_copy(clip_tokenizer_folder, tmp_path, edit):
    folder = tmp_path / "tokenizer"
    shutil.copytree(clip_tokenizer_folder, folder)
    edit(folder)
    return folder


def shuffle_merges(folder):
    import random
    lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
    body = lines[1:48895]
    random.Random(0).shuffle(body)
    (folder / "merges.txt").write_text("\n".join(lines[:1] + body + lines[48895:]), encoding="utf-8")


def random_pairs(folder):
    import random
    rng = random.Random(1)
    symbols = list(json.loads((folder / "vocab.json").read_text(encoding="utf-8")))[:512]
    pairs = [f"{rng.choice(symbols)} {rng.choice(symbols)}" for _ in range(48894)]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(pairs) + "\n", encoding="utf-8")


def rewrite_vocab(change):
    def edit(folder):
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        (folder / "vocab.json").write_text(json.dumps(change(vocab)), encoding="utf-8")
    return edit


@pytest.mark.parametrize("edit, pattern", [
    (shuffle_merges, r"merges.txt.*merge 1 \(.*\) does not match the vocabulary"),
    (random_pairs, r"merge 1 \(.*\) does not match the vocabulary"),
    (rewrite_vocab(lambda v: {k: i for k, i in v.items() if k != "<|startoftext|>"}), "'<|startoftext|>' should be id 49406"),
    (rewrite_vocab(lambda v: list(v)), "the vocabulary must map symbols to integer ids"),
    (rewrite_vocab(lambda v: {**v, "a": "one"}), "the vocabulary must map symbols to integer ids"),
    (lambda f: (f / "vocab.json").write_bytes(b"\xff\xfe not utf-8"), r"vocab.json: not UTF-8 text"),
    (lambda f: (f / "vocab.json").write_text("{not json", encoding="utf-8"), r"vocab.json: not valid JSON"),
    (lambda f: (f / "vocab.json").write_text("[" * 100_000, encoding="utf-8"), r"vocab.json: not valid JSON"),
    (lambda f: (f / "merges.txt").write_text("#version\na b\n", encoding="utf-8"), r"merges.txt: expected a version line and 48,894"),
    (lambda f: (f / "merges.txt").unlink(), "tokenizer files missing: merges.txt"),
])
def test_tokenizer_files_that_would_give_wrong_ids_or_a_traceback(tiny_pipeline, clip_tokenizer_folder, tmp_path, edit,
                                                                   pattern):
    folder = tokenizer_copy(clip_tokenizer_folder, tmp_path, edit)
    with pytest.raises(weights.WeightsError, match=pattern):
        weights.load(tiny_pipeline[1], tokenizer=folder)


@pytest.mark.parametrize("content, pattern", [
    (lambda gz: gz[: len(gz) // 2], "cannot be read"),          # truncated
    (lambda gz: b"not gzip at all" * 10, "cannot be read"),
])
def test_a_broken_gz_vocabulary_names_the_file(clip_vocab_gz, tmp_path, tiny_pipeline, content, pattern):
    bad = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    bad.write_bytes(content(clip_vocab_gz.read_bytes()))
    with pytest.raises(weights.WeightsError, match=f"{bad}: {pattern}"):
        weights.load(tiny_pipeline[1], tokenizer=bad)


# ---- 2. tracebacks where one line is promised ----

def edited_config(tiny_pipeline, tmp_path, part, change):
    folder = tmp_path / "pipeline"
    shutil.copytree(tiny_pipeline[1], folder)
    path = folder / part / "config.json"
    config = json.loads(path.read_text())
    result = change(config)
    path.write_text(result if isinstance(result, str) else json.dumps(config))
    return folder


@pytest.mark.parametrize("part, change, pattern", [
    ("unet", lambda c: c.pop("block_out_channels") and None, r"block_out_channels|missing"),
    ("unet", lambda c: c.update(block_out_channels="wide"), r"field 'block_out_channels' must be a list of positive ints"),
    ("unet", lambda c: c.update(block_out_channels=[0, 0, 0, 0]), r"field 'block_out_channels' must be a list of positive ints"),
    ("unet", lambda c: c.update(attention_head_dim=0), r"field 'attention_head_dim' must be a list of positive ints"),
    ("unet", lambda c: c.update(layers_per_block=True), r"field 'layers_per_block' must be a positive int"),
    ("unet", lambda c: c.update(norm_num_groups=7), r"not divisible by .* 7 norm groups"),
    ("unet", lambda c: c.update(down_block_types=["CrossAttnDownBlock2D"]), r"1 down_block_types for 4 block_out_channels"),
    ("unet", lambda c: "[1, 2]", r"unet/config.json: expected a JSON object, found list"),
    ("unet", lambda c: "{", r"unet/config.json: not valid JSON"),
    ("text_encoder", lambda c: c.update(hidden_size=0), r"field 'hidden_size' must be a positive int"),
    ("text_encoder", lambda c: c.update(num_attention_heads=3), r"hidden_size 64 is not divisible by num_attention_heads 3"),
    ("text_encoder", lambda c: c.update(hidden_act="gelu"), r"hidden_act 'gelu'"),
    ("vae", lambda c: c.update(scaling_factor=0.13025), r"scaling_factor 0.13025"),
    ("vae", lambda c: c.update(norm_num_groups="x"), r"field 'norm_num_groups' must be a positive int"),
])
def test_config_files_with_missing_wrong_or_zero_fields(tiny_pipeline, tmp_path, part, change, pattern):
    folder = edited_config(tiny_pipeline, tmp_path, part, change)
    with pytest.raises(weights.WeightsError, match=pattern):
        weights.load(folder)


def test_a_missing_field_takes_sd15s_value(tiny_pipeline, tmp_path):
    """A config.json without block_out_channels describes SD 1.5's widths; the tiny file then disagrees, by name."""
    folder = edited_config(tiny_pipeline, tmp_path, "unet", lambda c: c.pop("block_out_channels") and None)
    with pytest.raises(weights.WeightsError, match=r"diffusion_pytorch_model.safetensors \(unet\): \d+ tensor\(s\) missing"):
        weights.load(folder)


@pytest.mark.parametrize("drop, pattern", [
    ("model.diffusion_model.input_blocks.0.0.weight", "no SD UNet tensors"),
    ("model.diffusion_model.out.2.weight", r"no tensor 'out.2.weight'"),
    ("model.diffusion_model.input_blocks.1.0.out_layers.3.weight", r"no tensor 'input_blocks.1.0.out_layers.3.weight'"),
    ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", r"no tensor 'embeddings.token_embedding.weight'"),
    ("first_stage_model.decoder.conv_out.weight", r"no tensor 'decoder.conv_out.weight'"),
    ("first_stage_model.post_quant_conv.weight", r"no tensor 'post_quant_conv.weight'"),
])
def test_a_tensor_that_the_shapes_are_read_from_is_missing(single_file, tmp_path, drop, pattern):
    tensors = load_file(str(single_file))
    del tensors[drop]
    bad = tmp_path / "missing.safetensors"
    save_file(tensors, str(bad))
    with pytest.raises(weights.WeightsError, match=pattern):
        weights.load(bad, tokenizer=single_file.parent / "tokenizer")


# ---- 3. a finished image lost ----

def test_a_dangling_symlink_or_existing_file_at_out_gets_the_next_name(single_file, tmp_path):
    out = tmp_path / "x.png"
    os.symlink(tmp_path / "nowhere" / "x.png", out)
    status, lines = run(["--weights", str(single_file), *BASE, "--out", str(out)])
    assert status == 0, lines
    assert os.path.islink(out) and not out.exists() and (tmp_path / "x-1.png").is_file()


def test_a_name_too_long_fails_before_loading(single_file, tmp_path, monkeypatch):
    """Refused once the headers are checked, before any tensor is read."""
    monkeypatch.setattr(weights.checkpoint.Checkpoint, "tensor", lambda *a, **k: pytest.fail("a tensor was read"))
    status, lines = run(["--weights", str(single_file), *BASE, "--out", str(tmp_path / ("x" * 300 + ".png"))])
    assert_one_line_error(status, lines, "cannot create it \\(File name too long\\)")
    assert no_files(tmp_path)


def test_png_mode_follows_the_umask(single_file, tmp_path):
    previous = os.umask(0o027)
    try:
        status, _ = run(["--weights", str(single_file), *BASE, "--out", str(tmp_path / "x.png")])
    finally:
        os.umask(previous)
    assert status == 0 and stat.S_IMODE((tmp_path / "x.png").stat().st_mode) == 0o640


@pytest.mark.parametrize("sidecar", ["", "not a hash\n", "0" * 63 + "\n"])
def test_a_bad_sha256_sidecar_is_ignored_with_a_warning_before_sampling(single_file, tmp_path, sidecar):
    import hashlib
    from PIL import Image
    weights_path = tmp_path / "model.safetensors"
    shutil.copy(single_file, weights_path)
    shutil.copytree(single_file.parent / "tokenizer", tmp_path / "tokenizer")
    (tmp_path / "model.safetensors.sha256").write_text(sidecar)
    status, lines = run(["--weights", str(weights_path), *BASE, "--out", str(tmp_path / "x.png")])
    assert status == 0
    warning = [i for i, line in enumerate(lines) if "ignored" in line and ".sha256" in line]
    first_step = next(i for i, line in enumerate(lines) if line.startswith("step 1/"))
    assert len(warning) == 1 and warning[0] < first_step
    digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()[:10]
    assert f"Model hash: {digest}" in Image.open(tmp_path / "x.png").text["parameters"]


SLOW_RUN = ["--prompt", "a cat", "--steps", "999", "--width", "64", "--height", "64", *FLOAT32]  # minutes: never done before the signal


@pytest.mark.parametrize("sig, status, more", [(signal.SIGTERM, 143, []), (signal.SIGINT, 130, []),
                                               (signal.SIGINT, 130, [signal.SIGINT] * 5), (signal.SIGTERM, 143, [signal.SIGTERM] * 5)])
def test_sigterm_and_ctrl_c_leave_no_file(single_file, tmp_path, sig, status, more):
    """One signal, or a burst (Ctrl-C pressed again and again): the reserved files and folders are removed, in one
    line, whatever the later signals interrupt."""
    out = tmp_path / "out" / "x.png"
    # SIGINT back to its default in the child: a process started in the background (as CI runs are) inherits
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler, so Ctrl-C would be lost
    child = subprocess.Popen([sys.executable, "-m", "minitome.sample", "--weights", str(single_file), *SLOW_RUN,
                              "--out", str(out), "--batch", "2"], cwd=ROOT, env=child_env(), stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in child.stderr:  # wait until it samples: the outputs are reserved by then
        if line.startswith("step 3/"):
            break
    assert out.exists() and (tmp_path / "out" / "x-1.png").exists()  # reserved
    child.send_signal(sig)
    for again in more:
        child.send_signal(again)
    rest = child.stderr.read()
    assert child.wait(timeout=60) == status
    assert rest.strip().split("\n")[-1] in ("minitome.sample: terminated", "minitome.sample: interrupted")
    assert "Traceback" not in rest and no_files(tmp_path / "out")


def test_a_reader_that_stops_reading_loses_no_image(single_file, tmp_path):
    """`… | head -1`: stdout closes before the names are printed; every image of the batch is still written, and
    the run ends well. A name that is not UTF-8 is printed as its bytes."""
    out = os.fsdecode(bytes(tmp_path / "o") + b"/caf\xe9.png")  # a Latin-1 name on a UTF-8 system
    child = subprocess.Popen([sys.executable, "-m", "minitome.sample", "--weights", str(single_file), *BASE,
                              "--batch", "3", "--out", out], cwd=ROOT, env={**child_env(), "PYTHONIOENCODING": "utf-8:strict"},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # the reader is gone before the first name
    err = child.stderr.read().decode()
    assert child.wait(timeout=300) == 0 and "Traceback" not in err, err
    assert sorted(os.listdir(bytes(tmp_path / "o"))) == [b"caf\xe9-1.png", b"caf\xe9-2.png", b"caf\xe9.png"]
    done = subprocess.run([sys.executable, "-m", "minitome.sample", "--weights", str(single_file), *BASE, "--out", out],
                          cwd=ROOT, env={**child_env(), "PYTHONIOENCODING": "utf-8:strict"}, capture_output=True, timeout=300)
    assert done.returncode == 0 and done.stdout == bytes(tmp_path / "o") + b"/caf\xe9-3.png\n"


def test_a_fifo_as_weights_or_vae_is_refused_without_waiting(single_file, tmp_path):
    fifo = tmp_path / "weights.safetensors"
    os.mkfifo(fifo)
    for argv in (["--weights", str(fifo)], ["--weights", str(single_file), "--vae", str(fifo)]):
        done = subprocess.run([sys.executable, "-m", "minitome.sample", *argv, *BASE, "--out", str(tmp_path / "o" / "x.png")],
                              cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().endswith(f"{fifo}: not a regular file (a FIFO, device or socket)")
    assert no_files(tmp_path / "o")


@pytest.mark.parametrize("extra, pattern", [
    (["--todo-factor", "2", "--todo-until", "0.01"], r"--todo-until 0.01 turns ToDo on for none of the 11 UNet calls"),
    (["--tome-threshold", "0.5", "--tome-sx", "1", "--tome-sy", "1"], "--tome-threshold needs cells of at least 2 tokens"),
    (["--tome-reuse", "1"], "--tome-reuse needs --tome-ratio or --tome-threshold"),  # given at its default: still given
    (["--todo-until", "1", "--todo-max-downsample", "1"], "--todo-max-downsample, --todo-until need --todo-factor"),
    (["--deepcache-branch=0"], "--deepcache-branch needs --deepcache-interval"),
    (["--deepcache-br", "0"], "--deepcache-branch needs --deepcache-interval"),  # argparse's prefix spelling
    (["--todo-factor", "3"], r"--todo-factor 3 is coarser than the latent grid itself \(2 cells"),
    (["--deepcache-interval", "3", "--deepcache-branch", "99"], r"--deepcache-branch must be at most \d+ for this UNet"),
])
def test_successor_flags_that_would_do_nothing_or_fail_late(single_file, tmp_path, monkeypatch, extra, pattern):
    """Refused in one line before any tensor is read, and the folders made for --out are gone again."""
    def no_reading(*args, **kwargs):
        raise AssertionError("a tensor was read before the flags were checked")
    monkeypatch.setattr(weights.checkpoint.Checkpoint, "tensor", no_reading)
    status, lines = run(["--weights", str(single_file), *BASE, "--out", str(tmp_path / "new" / "deep" / "x.png"), *extra])
    assert_one_line_error(status, lines, pattern)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("argv, flag, limit", [
    (["--tome-sx", "3", "--tome-sy", "3", "--tome-ratio", "0.95", "--width", "24", "--height", "24"], "--tome-ratio",
     r"must be in \[0, ([\d.e-]+)\]"),
    (["--tome-ratio", "0.8"], "--tome-ratio", r"must be in \[0, ([\d.e-]+)\]"),
    (["--todo-factor", "2", "--todo-until", "0.01"], "--todo-until", r"use at least ([\d.e-]+)"),
    (["--todo-factor", "2", "--todo-until", "0.04", "--sampler", "ddim"], "--todo-until", r"use at least ([\d.e-]+)"),
    (["--steps", "400"], "--steps", r"the nearest leading counts that work: (\d+)"),
    (["--steps", "400"], "--steps", r"the nearest leading counts that work: \d+ or (\d+)"),
    (["--steps", "4", "--sampler", "dpm++2m"], "--steps", r"the nearest leading counts that work: (\d+)"),
    (["--tome-ratio", "0.1"], "--tome-ratio", r"use at least ([\d.e-]+), or 0"),  # int(4 · 0.1) = 0 at 16 x 16
    (["--width", "1000", "--hires-scale", "1.001"], "--hires-scale", r"use at least ([\d.e-]+)"),
])
def test_a_limit_a_message_names_can_be_typed_back_in(single_file, tmp_path, argv, flag, limit):
    """The number a refusal names as the limit is one the program takes, not a rounding of it."""
    import re
    status, lines = run(["--weights", str(single_file), *BASE, *argv, "--out", str(tmp_path / "a.png")])
    assert status == 2, lines
    value = re.search(limit, lines[-1]).group(1)
    argv = [value if previous == flag else a for previous, a in zip([None] + argv, argv)]
    status, lines = run(["--weights", str(single_file), *BASE, *argv, "--out", str(tmp_path / "b.png")])
    assert status == 0, lines


@pytest.mark.parametrize("what, pattern", [("missing", "--from .*missing.png: no such file"),
                                           ("fifo", "--from .*fifo.png: not a regular file"),  # no wait for a writer
                                           ("bomb", "--from .*bomb.png: over 1,000 pixels, Pillow's limit against"),
                                           ("warned bomb", "--from .*warned bomb.png: over 1,000 pixels"),
                                           ("text", "--from .*text.png: not an image Pillow reads"),
                                           ("bare", "--from .*bare.png: no 'parameters' text in it"),
                                           ("garbled", "--from .*garbled.png: its parameters text lacks or garbles a field"),
                                           ("unipc", "--from .*unipc.png: .*Sampler 'UniPC' is not one of PLMS, DDIM, Euler"),
                                           ("vae", r"--from .*vae.png: its image was made with the VAE 'ft-mse' \(hash "),
                                           ("escape", r"--from .*escape.png: its parameters text quotes a value that is "
                                                      r"not a JSON string \(Invalid \\escape"),
                                           ("float steps", r"--from .*steps.png: its parameters text has Steps '10.0', "
                                                           r"Seed '1e3', not numbers as they are written$"),
                                           ("a1111 img2img", r"--from .*img2img.png: its image was made from an init "
                                                             r"image \(denoising strength 0.75\): give it with --init-image")])
def test_a_png_from_that_cannot_remake_its_image_is_one_line(single_file, tmp_path, monkeypatch, what, pattern):
    from PIL import Image
    from minitome.cli.output import png_info
    png = tmp_path / f"{what}.png"
    if what == "fifo":
        os.mkfifo(png)
    elif what in ("bomb", "warned bomb"):  # Pillow raises above twice its limit and only warns between once and twice
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
        Image.new("RGB", (50 if what == "bomb" else 30, 50)).save(png, pnginfo=png_info(
            "a cat\nSteps: 10, Sampler: PLMS, CFG scale: 7.5, Seed: 1, Size: 16x16"))
    elif what == "text":
        png.write_text("not a picture")
    elif what == "bare":
        Image.new("RGB", (8, 8)).save(png)
    elif what == "garbled":
        Image.new("RGB", (8, 8)).save(png, pnginfo=png_info("a cat\nSteps: 10, Sampler: PLMS"))
    elif what == "unipc":
        Image.new("RGB", (8, 8)).save(png, pnginfo=png_info(
            "a cat\nSteps: 10, Sampler: UniPC, CFG scale: 7.5, Seed: 1, Size: 16x16"))
    elif what in ("escape", "float steps", "a1111 img2img"):
        settings = {"escape": 'Steps: 10, Sampler: PLMS, CFG scale: 7.5, Seed: 1, Size: 16x16, Model: "C:\\models\\x"',
                    "float steps": "Steps: 10.0, Sampler: PLMS, CFG scale: 7.5, Seed: 1e3, Size: 16x16",
                    "a1111 img2img": "Steps: 10, Sampler: PLMS, CFG scale: 7.5, Seed: 1, Size: 16x16, Denoising strength: 0.75"}
        Image.new("RGB", (8, 8)).save(png, pnginfo=png_info("a cat\n" + settings[what]))
    elif what == "vae":
        Image.new("RGB", (8, 8)).save(png, pnginfo=png_info(
            "a cat\nSteps: 10, Sampler: PLMS, CFG scale: 7.5, Seed: 1, Size: 16x16, VAE: ft-mse, VAE hash: 0123456789"))
    with finishes_within(60, f"--from {what}"):
        status, lines = run(["--weights", str(single_file), "--from", str(png), "--out", str(tmp_path / "o" / "x.png")])
    assert_one_line_error(status, lines, pattern)
    assert no_files(tmp_path / "o")


def test_a1111s_own_tome_ratio_is_said_not_applied(single_file, tmp_path):
    """A1111's "Token merging ratio" is its ToMe, whose other settings its text does not hold: the run goes on
    without it, and says so in one line (not a silent fallback)."""
    from PIL import Image
    from minitome.cli.output import png_info
    png = tmp_path / "a1111.png"
    Image.new("RGB", (8, 8)).save(png, pnginfo=png_info(
        "a cat\nSteps: 10, Sampler: DDIM, CFG scale: 7, Seed: 1, Size: 16x16, Token merging ratio: 0.5"))
    status, lines = run(["--weights", str(single_file), "--from", str(png), "--out", str(tmp_path / "x.png")])
    assert status == 0 and f"minitome.sample: warning: --from {png}: its 'Token merging ratio: 0.5' is A1111's ToMe, " \
        "whose other settings the text does not hold: not applied; add --tome-ratio to merge" in lines
    assert "ToMe" not in Image.open(tmp_path / "x.png").text["parameters"]


# ---- 5. large sizes fail early, in one line ----

@pytest.mark.parametrize("extra", [["--batch", "1000", "--width", "512", "--height", "512"],
                                   ["--batch", "1000000", "--width", "16", "--height", "16"],  # found by the fuzz test
                                   ["--batch", "1" + "0" * 400], ["--width", "8" + "0" * 400],  # past a float's range
                                   ["--width", "65536", "--height", "65536"], ["--width", "4096", "--height", "4096",
                                                                               "--attention", "plain"]])
def test_sizes_that_cannot_fit_are_refused_before_sampling(single_file, tmp_path, monkeypatch, extra):
    """Refused from the headers: no tensor is read and no output file is reserved."""
    def no_reading(*args, **kwargs):
        raise AssertionError("a tensor was read before the memory check")
    monkeypatch.setattr(weights.checkpoint.Checkpoint, "tensor", no_reading)
    status, lines = run(["--weights", str(single_file), "--prompt", "a cat", "--steps", "10", "--seed", "1",
                         "--out", str(tmp_path / "o" / "x.png"), *extra])
    assert_one_line_error(status, lines, r"needs about [\d,.]+ GiB for its activations, [\d,.]+ GiB of cpu memory is free now")
    assert not any(line.startswith("step ") for line in lines) and not (tmp_path / "o").exists()


def test_reserving_a_batch_of_names_takes_one_pass(tmp_path, monkeypatch):
    """Each reservation goes on from the last one's number: N names past M taken ones cost N + M attempts to
    create a file (starting each from out.png again cost about N²/2: 5·10⁹ for a batch of 100,000)."""
    import minitome.cli.output
    from minitome.cli.output import Outputs
    for name in ("x.png", "x-1.png", "x-3.png"):
        (tmp_path / name).write_bytes(b"")
    attempts, real_open = [], os.open
    monkeypatch.setattr(minitome.cli.output.os, "open", lambda path, *rest: attempts.append(path) or real_open(path, *rest))
    outputs = Outputs(tmp_path / "x.png", 2000)
    assert [p.name for p in outputs.paths[:3]] == ["x-2.png", "x-4.png", "x-5.png"]
    assert len(set(outputs.paths)) == 2000 and len(attempts) == 2000 + 3
    outputs.abandon()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-1.png", "x-3.png", "x.png"]


def test_an_allocation_failure_while_sampling_is_one_line(single_file, tmp_path, monkeypatch):
    import minitome.pipeline
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried "
                           "to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr(minitome.pipeline, "sample_latents", out_of_memory)
    status, lines = run(["--weights", str(single_file), *BASE, "--out", str(tmp_path / "o" / "x.png")])
    assert status == 1 and lines[-1].startswith("minitome.sample: error: out of memory at --width 16 --height 16 --batch 1")
    assert no_files(tmp_path / "o")


# ---- 6. smaller ----

@pytest.mark.parametrize("device, pattern", [("meta", "minitome runs on cpu, cuda, mps, not meta"),
                                             ("xla", "runs on cpu, cuda, mps|is not a device"),
                                             ("gpu", "is not a device"), ("cuda:7", "cuda")])
def test_devices_the_model_cannot_run_on(single_file, tmp_path, device, pattern):
    status, lines = run(["--weights", str(single_file), *BASE, "--device", device, "--out", str(tmp_path / "o" / "x.png")])
    assert_one_line_error(status, lines, pattern)


def test_the_unet_names_the_channels_it_takes(tiny_unet_folder):
    unet = weights.load_unet(tiny_unet_folder[1])
    with pytest.raises(ValueError, match=r"the UNet takes latents \(B, 4, H, W\), got \(1, 3, 8, 8\)"):
        unet(torch.randn(1, 3, 8, 8), 10, torch.randn(1, 77, 32))


def test_a_30000_letter_word_is_encoded_in_n_log_n(clip_vocab_gz, monkeypatch):
    """Byte-pair encoding of one long word: the literal rule rescans the word after every merge (n² pair
    look-ups: ~10⁸ for 30,000 letters); a heap of pair ranks over a linked list looks up each pair once when it
    forms, and pushes and pops each at most once: a number of operations linear in n (each heap operation
    log n). Counted, not timed."""
    import heapq
    import minitome.tokenizer
    from weights.tokenizer import read_tokenizer
    counts = {"lookups": 0, "push": 0, "pop": 0}

    class CountingRanks(dict):
        def get(self, key, default=None):
            counts["lookups"] += 1
            return super().get(key, default)

    class CountingHeap:
        @staticmethod
        def heappush(heap, item):
            counts["push"] += 1
            heapq.heappush(heap, item)

        @staticmethod
        def heappop(heap):
            counts["pop"] += 1
            return heapq.heappop(heap)

    tok = read_tokenizer(clip_vocab_gz)
    tok.ranks = CountingRanks(tok.ranks)
    monkeypatch.setattr(minitome.tokenizer, "heapq", CountingHeap)
    n = 30_000
    word = "".join("abcdefghij"[(i * 7919) % 10] for i in range(n))
    with finishes_within(120, "encoding a 30,000-letter word"):
        ids = tok.encode(word)
    assert len(ids) > 1000 and counts["push"] > 0
    assert max(counts.values()) <= 3 * n, counts


# ---- the command line, fuzzed ----

texts = st.one_of(st.sampled_from(["", " ", "a cat", "ü😀", "\udcff", "-x", "x" * 500]), st.text(max_size=12))
numbers = st.one_of(st.sampled_from(["0", "-1", "1e400", "nan", "inf", "-inf", "", "abc", "٣", "18446744073709551616",
                                     "9" * 30, "0x10", "1.5", " 7 "]), st.integers(-5, 40).map(str))
FLAGS = {
    "--steps": st.one_of(st.sampled_from(["10", "11", "0", "-3", "1", "4", "400", "1000", "1001", "nan", "", "x", "1e9"])),
    "--guidance": numbers, "--seed": numbers, "--width": st.sampled_from(["16", "24", "0", "-16", "17", "nan", "", "65536"]),
    "--height": st.sampled_from(["16", "8", "0", "7", "x"]), "--batch": st.sampled_from(["1", "2", "0", "-1", "x", "1000000"]),
    "--sampler": st.sampled_from(["plms", "ddim", "euler", "euler-a", "dpm++2m", "lcm", "heun", ""]), "--tome-ratio": numbers,
    "--spacing": st.sampled_from(["leading", "trailing", "karras", "linspace", "uniform", ""]),
    "--tome-max-downsample": st.sampled_from(["1", "2", "3", "x"]), "--tome-sx": numbers, "--tome-sy": numbers,
    "--tome-merge": st.sampled_from(["attn", "attn,mlp", "", ",", "ffn", "attn,,crossattn"]), "--tome-seed": numbers,
    "--device": st.sampled_from(["cpu", "auto", "meta", "cuda", "mps", "gpu", "", "cpu:0", "cuda:-1"]),
    "--dtype": st.sampled_from(["float32", "auto", "float64", ""]), "--attention": st.sampled_from(["sdpa", "plain", "flash"]),
    "--prompt": texts, "--negative-prompt": texts,
    "--tome-threshold": numbers, "--tome-reuse": numbers, "--todo-factor": st.sampled_from(["1", "2", "3", "0", "-2", "x"]),
    "--todo-until": numbers, "--todo-max-downsample": st.sampled_from(["1", "2", "5"]), "--deepcache-interval": numbers,
    "--deepcache-branch": numbers,
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(flags=st.dictionaries(st.sampled_from(sorted(FLAGS)), st.just(None), max_size=5).flatmap(
    lambda chosen: st.fixed_dictionaries({k: FLAGS[k] for k in chosen})), no_rand=st.booleans())
def test_any_flags_give_an_image_or_one_line(single_file, tmp_path, flags, no_rand):
    out = tmp_path / "fuzz" / "x.png"
    shutil.rmtree(out.parent, ignore_errors=True)
    argv = ["--weights", str(single_file), "--prompt", "a cat", "--steps", "10", "--width", "16", "--height", "16"]
    for flag, value in flags.items():
        argv += [f"{flag}={value}"]
    argv += ["--tome-no-rand"] if no_rand else []
    with finishes_within(120, f"minitome.sample {' '.join(argv[1:])}"):  # a 16×16 run takes about a second
        status, lines = run(argv + ["--out", str(out)])
    event(f"exit {status}")
    assert not any("Traceback" in line for line in lines), lines
    if status == 0:
        assert len([p for p in out.parent.iterdir() if p.suffix == ".png"]) == int(flags.get("--batch", "1"))
    else:
        assert_one_line_error(status, lines)
        assert no_files(out.parent)


@pytest.mark.parametrize("argv, pattern", [
    (["--steps", "abc"], "argument --steps: invalid int value: 'abc'"),
    (["--guidance", "nan"], "--guidance must be a finite number"),
    (["--device", "meta"], "not meta"),
])
def test_a_few_end_to_end_in_a_child_process(single_file, tmp_path, argv, pattern):
    done = subprocess.run([sys.executable, "-m", "minitome.sample", "--weights", str(single_file), "--prompt", "x",
                           "--out", str(tmp_path / "o" / "x.png"), *FLOAT32, *argv], cwd=ROOT, env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr and pattern in done.stderr.strip().split("\n")[-1]
    assert no_files(tmp_path / "o")


# ---- the tools meet the same standard ----

@pytest.mark.parametrize("tool, argv, pattern", [
    ("bench", ["--quality-steps", "-1", "--weights", "."], "--quality-steps: steps must be a whole number >= 1, got -1"),
    ("bench", ["--repeats", "0"], "--batch and --repeats must be >= 1"),
    ("bench", ["--device", "meta"], "not meta"),
    ("ablate", ["--repeats", "0"], "--repeats must be >= 1, got 0"),
    ("ablate", ["--when-steps", "0"], "--when-steps: steps must be a whole number >= 1, got 0"),
    ("ablate", ["--when-steps", "400"], "--when-steps: 400 steps with leading spacing would start at t = 799"),
    ("ablate", ["--tau", "1000"], "--tau must be a timestep in 0 … 999"),
    ("visualize", ["--out", "{file}"], "--out .*: cannot create it"),
    ("visualize", ["--size", "0"], "--size must be a positive multiple of 16"),
])
def test_tools_give_one_line_for_bad_options(tmp_path, capsys, tool, argv, pattern):
    import importlib
    import re
    (tmp_path / "file").write_text("x")
    argv = [a.format(file=tmp_path / "file" / "sub") for a in argv]  # a folder inside a file: cannot be made
    module = importlib.import_module(f"minitome.lab.{tool}")
    assert module.main(argv) == 2
    lines = capsys.readouterr().err.strip().split("\n")
    assert lines[-1].startswith(f"minitome.lab.{tool}: error: ") and re.search(pattern, lines[-1]), lines
