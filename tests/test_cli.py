"""The command line's settings record and its PNG text (minitome/cli/settings.py, png_text.py), and how a run
ends: a refusal is one line and exit 2, anything else a bug said as one line and exit 1."""
from dataclasses import field, make_dataclass
from pathlib import Path

import pytest
from PIL import Image

from minitome.cli import png_text
from minitome.cli.output import png_info
from minitome.cli.settings import Settings, settings_from
from conftest import sample_main as main
from test_bad_input import BASE, assert_one_line_error, no_files, run

EVERYTHING = {"prompt": "a fox, in snow", "negative_prompt": "blurry", "steps": 12, "guidance": 6.25, "seed": 7,
              "width": 64, "height": 48, "batch": 3, "sampler": "dpm++2m", "spacing": "karras", "hires_scale": 1.5,
              "hires_steps": 9, "hires_strength": 0.55, "hires_upscale": "latent-nearest", "hires_tome_ratio": 0.3,
              "tome_threshold": 0.9, "tome_sx": 4, "tome_merge": "mlp, attn", "tome_seed": 5, "tome_reuse": 2,
              "deepcache_interval": 3, "deepcache_branch": 1, "weights": "model.safetensors", "ema": True,
              "dtype": "bfloat16", "attention": "plain", "device": "cpu"}


def saved(tmp_path, text: str) -> Path:
    png = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(png, pnginfo=png_info(text))
    return png


def test_the_png_text_reads_back_to_the_record_it_was_written_from(tmp_path):
    """Every field of the table, written from a record with the methods and the hires pass on, reads back to the
    record's values: --from gives the run's settings, not argv strings."""
    settings = settings_from(EVERYTHING)
    text = png_text.parameters_text(settings, position=2)
    values = png_text.read_png(saved(tmp_path, text)).values
    read = [name for row in png_text.FIELDS if row.parse is not None for name in row.attributes]
    assert {name: values[name] for name in read if name in values} == {
        name: getattr(settings, name) for name in read if name in values} | {"batch_position": 2}
    assert all(getattr(settings, name) in (None, "", (), False) for name in read if name not in values)
    assert "merge attn+mlp" in text and settings.hires.tome.threshold is None and settings.hires.tome.ratio == 0.3
    assert settings_from({"weights": "model.safetensors"}, png_text.read_png(saved(tmp_path, text))) == settings


def test_a_new_png_field_is_one_row(tmp_path, monkeypatch):
    """A setting the record holds is written into the PNG and read back by adding one row to the table."""
    Toy = make_dataclass("Toy", [("eta", float, field(default=None))], bases=(Settings,), frozen=True)
    row = png_text.Field("Eta", "eta", png_text.when(png_text.number), png_text.decimal)
    monkeypatch.setattr(png_text, "FIELDS", png_text.FIELDS + [row])
    text = png_text.parameters_text(Toy(prompt="a cat", seed=1, weights=Path("m.safetensors"), dtype="float32", eta=0.1 + 0.2))
    assert text.endswith(", Eta: 0.30000000000000004")
    assert png_text.read_png(saved(tmp_path, text)).values["eta"] == 0.1 + 0.2
    assert "Eta" not in png_text.parameters_text(Toy(prompt="a cat", seed=1, weights=Path("m.safetensors"), dtype="float32"))


def test_a_refusal_is_exit_2_and_a_bug_is_an_internal_error(single_file, tmp_path, monkeypatch, capsys):
    """Bad input is one line naming the flag (exit 2); a ValueError from inside the model is not bad input: one
    line saying it is a bug and how to see its traceback (exit 1), which MINITOME_TRACEBACK=1 shows."""
    out = tmp_path / "o" / "x.png"
    status, lines = run(["--weights", str(single_file), *BASE, "--guidance", "nan", "--out", str(out)])
    assert_one_line_error(status, lines, "^minitome.sample: error: --guidance must be a finite number, got nan$")

    import minitome.pipeline

    def inside_torch(*args, **kwargs):
        raise ValueError("Expected more than 1 value per channel when training\nsecond line")
    monkeypatch.setattr(minitome.pipeline, "generate", inside_torch)
    status, lines = run(["--weights", str(single_file), *BASE, "--out", str(out)])
    assert status == 1 and not any("Traceback" in line for line in lines) and no_files(tmp_path / "o")
    assert lines[-1] == ("minitome.sample: internal error (a bug): ValueError: Expected more than 1 value per channel "
                         "when training; run with MINITOME_TRACEBACK=1 to see its traceback")
    monkeypatch.setenv("MINITOME_TRACEBACK", "1")
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        main(["--weights", str(single_file), *BASE, "--out", str(out)])
    assert no_files(tmp_path / "o")


def test_lcm_is_written_by_its_a1111_name_and_the_preview_not_at_all(tmp_path):
    """LCM's text: "Sampler: LCM" and no Schedule type (it has its own timesteps), read back to lcm and leading; the
    preview's flags are where the run writes, not what makes its pixels: not in the text."""
    settings = settings_from({"prompt": "a fox", "sampler": "lcm", "steps": 4, "guidance": 1.0, "seed": 1, "width": 64,
                              "height": 64, "weights": "model.safetensors", "device": "cpu", "dtype": "float32",
                              "preview": str(tmp_path / "now.png"), "preview_vae": "taesd_decoder.safetensors",
                              "out": str(tmp_path / "x.png")})
    text = png_text.parameters_text(settings)
    assert text.endswith("Steps: 4, Sampler: LCM, CFG scale: 1, Seed: 1, Size: 64x64, Model: model")
    values = png_text.read_png(saved(tmp_path, text)).values
    assert values["sampler"] == "lcm" and "spacing" not in values and values["dtype"] == "float32"
    again = settings_from({"weights": "model.safetensors", "device": "cpu"}, png_text.read_png(saved(tmp_path, text)))
    assert (again.sampler, again.spacing, again.steps, again.preview) == ("lcm", "leading", 4, None)
