"""`--preview PATH [--preview-vae TAESD]` (minitome/cli/preview.py): one PNG rewritten whole after every step of
both passes, showing the batch's first image's x̂₀; its linear map against ComfyUI's published numbers; its
refusals; and that nothing half-written stays behind."""
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import weights
from conftest import FLOAT32, ROOT, child_env
from minitome.cli import preview as preview_module
from minitome.cli.preview import Preview, latent_rgb
from test_bad_input import BASE, assert_one_line_error, no_files, run

# ComfyUI, comfy/latent_formats.py, class SD15: latent_rgb_factors (rows: the 4 latent channels; columns: R, G, B);
# SD15 sets no latent_rgb_factors_bias. latent_preview.py's Latent2RGBPreviewer applies them to the sampler's x0
# and writes round((clamp(rgb, -1, 1) + 1) · 127.5).
COMFYUI_SD15 = [[0.3512, 0.2297, 0.3227],
                [0.3250, 0.4974, 0.2350],
                [-0.2829, 0.1762, 0.2721],
                [-0.2120, -0.2616, -0.7177]]
# A1111, modules/sd_vae_approx.py, cheap_approximation ("Approx cheap"), SD 1.x: other numbers
A1111_CHEAP = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]


def comfyui_preview(x0: np.ndarray) -> np.ndarray:
    """The first latent (4, h, w) as ComfyUI draws it: (h, w, 3) uint8."""
    rgb = np.einsum("chw,cr->hwr", x0[0].astype(np.float64), np.array(COMFYUI_SD15))
    return np.round((np.clip(rgb, -1, 1) + 1) * 127.5).astype(np.uint8)


def test_the_linear_map_is_comfyuis_for_sd15():
    x0 = torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(0)) * 0.8  # the batch's first is drawn
    drawn = np.asarray(latent_rgb(x0)).astype(int)
    expected = comfyui_preview(x0.numpy()).astype(int)
    assert drawn.shape == (5, 7, 3) and np.abs(drawn - expected).max() <= 1  # float32 against float64 at a .5
    assert (drawn == expected).mean() > 0.99
    a1111 = np.einsum("chw,cr->hwr", x0[0].double().numpy(), np.array(A1111_CHEAP))
    assert np.abs(np.round((np.clip(a1111, -1, 1) + 1) * 127.5) - drawn).max() > 2  # not A1111's numbers
    image = Preview("unused.png").image(x0)
    assert image.size == (56, 40)  # upscaled to the image's size, 8 pixels a latent cell


def is_whole_png(path) -> bool:
    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:
        return False


def test_the_preview_is_rewritten_whole_after_each_step_of_both_passes(single_file, tmp_path, monkeypatch):
    """Each rewrite: the temporary file is a whole PNG when it is renamed over the preview, and the preview is one
    after it; as many rewrites as steps of both passes; the last at the hires pass's size; no temporary file left,
    and the preview's flags are not in the image's text."""
    renames, real_replace = [], preview_module.os.replace

    def replace(source, target):  # os's own: the image files' renames come here too
        if Path(target) != shown:
            return real_replace(source, target)
        assert is_whole_png(source) and source.parent == target.parent and source.name.startswith(".")
        real_replace(source, target)
        assert is_whole_png(target)
        with Image.open(target) as image:
            renames.append(image.size)
    monkeypatch.setattr(preview_module.os, "replace", replace)
    shown = tmp_path / "view" / "now.png"
    shown.parent.mkdir()
    shown.write_bytes(b"an older preview, any file")
    out = tmp_path / "out" / "x.png"
    status, lines = run(["--weights", str(single_file), *BASE, "--batch", "2", "--hires-scale", "1.5", "--hires-steps",
                         "4", "--hires-strength", "0.5", "--preview", str(shown), "--out", str(out)])
    assert status == 0, lines
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == 10 + 2 and len(renames) == 12  # 10 steps, then int(4 · 0.5) = 2 at 24x24
    assert renames[0] == (16, 16) and renames[-1] == (24, 24) == Image.open(shown).size
    assert sorted(p.name for p in shown.parent.iterdir()) == ["now.png"]
    text = Image.open(out).text["parameters"]
    assert "review" not in text and str(shown) not in text


@pytest.mark.parametrize("extra, pattern", [
    (["--preview", "{tmp}/missing/p.png"], r"--preview .*/missing/p.png: the folder .*/missing does not exist$"),
    (["--preview-vae", "{vae}"], r"--preview-vae needs --preview"),
    (["--preview", "{tmp}/p.png", "--preview-vae", "{vae}"], r"/vae is a full VAE; --preview-vae takes a TAESD"),
    (["--preview", "{tmp}/p.jpg"], r"--preview .*/p.jpg: the preview is a PNG, name it .png$"),
    (["--preview", "{tmp}/o/x.png"], r"--preview .*/o/x.png: the same file as --out"),
    (["--preview", "{tmp}"], r"--preview .*: the preview is a PNG|a folder, not a file"),
])
def test_the_refusals_are_one_line_before_any_model_work(single_file, tiny_pipeline, tmp_path, monkeypatch, extra,
                                                          pattern):
    """Exit 2, one line, no tensor read and nothing written: no image, no preview."""
    monkeypatch.setattr(weights.checkpoint.Checkpoint, "tensor", lambda *a, **k: pytest.fail("a tensor was read"))
    extra = [a.format(tmp=tmp_path, vae=tiny_pipeline[1] / "vae") for a in extra]
    (tmp_path / "o").mkdir()  # --out's folder exists: the preview may name the same file
    status, lines = run(["--weights", str(single_file), *BASE, *extra, "--out", str(tmp_path / "o" / "x.png")])
    assert_one_line_error(status, lines, pattern)
    assert no_files(tmp_path)


def test_ctrl_c_while_a_preview_is_written_leaves_no_temporary_file(single_file, tmp_path, monkeypatch):
    """Interrupted in the middle of writing the third preview: the temporary file goes, the second preview stays
    whole, and the run ends as any Ctrl-C (exit 130, its outputs removed)."""
    written, real_image = [], Preview.image

    class HalfWritten:
        def save(self, f, **kwargs):
            f.write(b"\x89PNG\r\n\x1a\n half of it")
            raise KeyboardInterrupt()

    def image(self, x0):
        written.append(1)
        return real_image(self, x0) if len(written) < 3 else HalfWritten()
    monkeypatch.setattr(Preview, "image", image)
    shown = tmp_path / "now.png"
    status, lines = run(["--weights", str(single_file), *BASE, "--preview", str(shown), "--out", str(tmp_path / "o" / "x.png")])
    assert status == 130 and lines[-1] == "minitome.sample: interrupted"
    assert [p.name for p in tmp_path.iterdir()] == ["now.png"] and is_whole_png(shown)


def test_sigint_in_a_child_process_leaves_no_temporary_preview(single_file, tmp_path):
    """Ctrl-C sent while a long run samples (and rewrites its preview at every step)."""
    shown = tmp_path / "view" / "now.png"
    shown.parent.mkdir()
    child = subprocess.Popen([sys.executable, "-m", "minitome.sample", "--weights", str(single_file), "--prompt", "a cat",
                              "--steps", "999", "--width", "64", "--height", "64", *FLOAT32, "--preview", str(shown),
                              "--out", str(tmp_path / "o" / "x.png")], cwd=ROOT, env=child_env(), stderr=subprocess.PIPE,
                             text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in child.stderr:
        if line.startswith("step 5/"):
            break
    child.send_signal(signal.SIGINT)
    rest = child.stderr.read()
    assert child.wait(timeout=60) == 130 and "Traceback" not in rest
    assert [p.name for p in shown.parent.iterdir()] == ["now.png"] and is_whole_png(shown)
    assert no_files(tmp_path / "o")
