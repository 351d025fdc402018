"""The benchmark's command line on tiny weights (the real figures come from `make bench`, never from tests),
and its PSNR / SSIM against scikit-image."""
import datetime
import json

import numpy as np
import pytest
import torch

from minitome.lab.bench import main
from minitome.lab.quality import psnr, ssim


def test_psnr_and_ssim_match_scikit_image():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 31, a.shape), 0, 255).astype(np.uint8)
    assert abs(psnr(a, b) - peak_signal_noise_ratio(a, b, data_range=255)) < 1e-9
    expected = structural_similarity(a, b, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=255)
    assert abs(ssim(a, b) - expected) < 1e-9
    assert psnr(a, a) == float("inf") and abs(ssim(a, a) - 1) < 1e-12


def test_bench_json_with_compare_and_quality(tiny_pipeline, capsys):
    _, folder = tiny_pipeline
    argv = ["--weights", str(folder), "--sizes", "48x32", "--ratios", "0", "0.5", "--attention", "sdpa",
            "--repeats", "3", "--compare", "--quality-steps", "10", "--json", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr()
    results = json.loads(out.out)
    assert len(results["tables"]) == 1 and results["matmul_gflops"] > 0
    for t in results["tables"]:
        base, merged = t["rows"]
        assert base["speedup"] == 1.0 and base["tokens"] == [] and base["merge_share"] == 0.0
        assert base["psnr"] == float("inf") and base["ssim"] == pytest.approx(1.0)
        assert merged["psnr"] < float("inf") and 0 < merged["merge_share"] < 1
        assert merged["diffusers_seconds"] > 0
        assert len(merged["times"]) == len(merged["diffusers_times"]) == 3
        assert merged["seconds"] == sorted(merged["times"])[1]
        # ratios pair the calls of one round: the median of the three per-round ratios
        per_round = sorted(m / d for m, d in zip(merged["times"], merged["diffusers_times"]))
        assert merged["ratio_to_diffusers"] == pytest.approx(per_round[1])
        assert merged["speedup"] == pytest.approx(sorted(b / m for b, m in zip(base["times"], merged["times"]))[1])
    w, h = results["tables"][0]["size"]
    N = (h // 8) * (w // 8)  # 6×4 latent: ratio 0.5 merges 12 of 24 tokens in the 5 full-resolution blocks
    assert results["tables"][0]["rows"][1]["tokens"] == [f"{N}→{N - N // 2}"] * 5
    for line in ("[48x32 sdpa] timing 4 configuration(s), interleaved", "[48x32 sdpa] warm-up 4/4: diffusers ratio 0.5",
                 "[48x32 sdpa] round 3/3: minitome ratio 0", "[48x32 sdpa] memory 4/4: diffusers ratio 0.5"):
        assert line in out.err


def test_bench_table_output(tiny_pipeline, capsys):
    _, folder = tiny_pipeline
    assert main(["--weights", str(folder), "--sizes", "64", "--ratios", "0", "0.3", "--attention", "plain",
                 "--repeats", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| ratio | s/call | speed-up | peak MB | merged tokens | merging | GFLOP/s | % matmul |" in out
    assert "| 0.3 |" in out and "64→45" in out


def test_paired_ratio_cancels_drift():
    """Two configurations timed in the same rounds while the machine slows down 2× and 3×: their per-round
    ratio is 1.25 every time, which the paired median keeps (a ratio of the two medians would be 20 / 24)."""
    from minitome.lab.runner import paired
    base, merged = [10.0, 20.0, 30.0], [8.0, 16.0, 24.0]
    assert paired(base, merged) == 1.25
    base, merged = [10.0, 20.0, 30.0], [8.0, 25.0, 24.0]  # one disturbed round
    assert paired(base, merged) == 1.25


@pytest.mark.parametrize("argv, message", [
    (["--ratios", "0.9"], r"ratio must be in \[0, 0.75\]"),
    (["--quality-steps", "3"], "--quality-steps needs --weights"),
    (["--weights", "no/such/file.safetensors"], "--weights 'no/such/file.safetensors': no such file or folder"),
    (["--weights", ""], "--weights '': no such file or folder"),
    (["--decode", "--methods"], "--methods and --decode are different measurements"),
    (["--samplers", "--methods"], "--methods and --samplers are different measurements"),
    (["--samplers", "--steps", "20", "--reuse", "2"], "--reuse, --steps: not used with --samplers"),
    (["--samplers", "--ratios", "0.3"], "--ratios: not used with --samplers"),
    (["--samplers", "--compare", "--ratios", "0.3"], "--ratios: not used with --samplers"),  # --compare: implied
    (["--hires", "--samplers"], "--samplers and --hires are different measurements"),
    (["--hires", "--steps", "20"], r"--steps: not used with --hires \(it times a hires image's chain\)"),
    (["--samplers", "--todo-factor", "0"], "--todo-factor: ToDo factor must be"),
    # a flag the chosen measurement does not read is named, never silently ignored
    (["--reuse", "0"], "--reuse: not used without --methods, --samplers, --hires or --image"),
    (["--check-image", "--steps", "20"], "--check-image, --steps: not used without --methods, --samplers, --hires or --image"),
    (["--calls", "2", "--tiny"], "--calls, --tiny: not used without --methods, --samplers, --hires or --image"),
    (["--image", "--ratios", "0.3"], r"--ratios: not used with --image \(it times one image's stages\)"),
    (["--image", "--steps", "20"], "--steps: not used with --image"),
    (["--image", "--hires"], "--hires and --image are different measurements"),
    (["--image", "--sizes", "64", "32"], "--sizes: --image times one image, give one size"),
    (["--image", "--calls", "0"], "--calls 0: time at least one UNet call per run"),
    (["--image", "--tiny", "--weights", "."], "--tiny and --weights: give one"),
    (["--image", "--tome-ratio", "0.9"], r"--tome-ratio: ToMe ratio must be in \[0, 0.75\]"),
    (["--image", "--deepcache-interval", "0"], "--deepcache-interval: DeepCache interval must be"),
    (["--methods", "--ratios", "0.3", "--unpacked"], "--ratios, --unpacked: not used with --methods"),
    (["--decode", "--attention", "plain", "--max-downsample", "2"], "--attention, --max-downsample: not used with --decode"),
    (["--decode", "--weights", "."], "--weights: not used with --decode"),
    (["--methods", "--compare"], "--compare: not used with --methods"),
    # values, each error naming its flag
    (["--methods", "--reuse", "0"], "--reuse: ToMe reuse must be a whole number >= 1"),
    (["--methods", "--ca-threshold", "nan"], "--ca-threshold: ToMe threshold must be a cosine similarity"),
    (["--methods", "--todo-factor", "0"], "--todo-factor: ToDo factor must be"),
    (["--methods", "--deepcache-interval", "-1"], "--deepcache-interval: DeepCache interval must be"),
    (["--methods", "--tome-ratio", "nan"], "--tome-ratio: ToMe ratio must be in"),
    (["--ratios", "nan"], "--ratios: ToMe ratio must be in"),
    (["--ratios", "0", "0.3", "0.30000001"], r"--ratios 0.0 0.3 0.30000001: two print as the same row \(0, 0.3, 0.3\)"),
])
def test_bench_bad_input(capsys, argv, message):
    import re
    assert main(argv + ["--device", "cpu"]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_flop_count_sees_packed_convolutions_and_fused_attention():
    """GFLOP/s in the table: a packed UNet (unet/packed_conv.py) with SDPA counts the FLOPs of an unpacked one
    with plain attention (two matmuls per attention either way; torch's counter alone sees neither)."""
    import torch
    from minitome.lab.measure import flop_counter
    from unet import UNetConfig, UNetModel
    from unet.packed_conv import packed as pack
    torch.manual_seed(0)
    plain = UNetModel(UNetConfig.tiny(attention="plain")).eval().requires_grad_(False).channels_last()
    packed = pack(UNetModel(UNetConfig.tiny()).eval().requires_grad_(False).channels_last())
    x, context = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32)
    counts = []
    for unet in (plain, packed):
        with torch.no_grad(), flop_counter() as counter:
            unet(x, 500, context)
        counts.append(counter.get_total_flops())
    assert any(type(m) is torch.nn.Conv2d for m in plain.modules())
    assert counts[0] == counts[1] > 0


def test_peak_memory_measures_what_a_call_holds():
    """The memory column's method (a fresh process, MALLOC_MMAP_THRESHOLD_ as the benchmark sets it, the peak
    resident set above the set before the call, after a warm-up call): a call that holds 200 MB at once reads
    as 190.7 MiB."""
    import subprocess
    import sys
    from conftest import ROOT, child_env
    code = ("import torch; from minitome.lab.memory import peak_above; "
            "call = lambda: torch.ones(50_000_000).add_(1).sum(); call(); print(peak_above(call, torch.device('cpu')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={**child_env(), "MALLOC_MMAP_THRESHOLD_": str(256 * 1024)})
    assert done.returncode == 0, done.stderr
    assert abs(float(done.stdout) - 50_000_000 * 4 / 2**20) < 0.02 * 190.7


def test_methods_compose_each_image_from_the_calls_it_makes(tiny_pipeline, capsys):
    """--methods: every kind of call timed, and each method's image composed from them: the call counts of a
    10-step PLMS run (11 calls), times the calls' measured seconds, plus the text encoder and the decoder."""
    _, folder = tiny_pipeline
    argv = ["--methods", "--weights", str(folder), "--sizes", "32", "--attention", "sdpa", "--repeats", "2",
            "--steps", "10", "--check-image", "--json", "--device", "cpu", "--ca-threshold", "0.3",
            "--quality-steps", "10"]
    assert main(argv) == 0
    table = json.loads(capsys.readouterr().out)["tables"][0]
    seconds = {c["label"]: c["seconds"] for c in table["calls"]}
    assert set(seconds) >= {"none", "ToMe", "ToMe, kept plan", "ToDo", "CA-ToMe", "CA-ToMe, kept plan",
                            "DeepCache shallow branch"}
    expected_counts = {"none": {"none": 11}, "ToMe 0.5, a plan every 5 calls": {"ToMe": 3, "ToMe, kept plan": 8},
                       "DeepCache 3": {"none": 4, "DeepCache shallow branch": 7},
                       # ca-tome's schedule plans at calls 0, 7 and 10
                       "CA-ToMe threshold 0.3, ca-tome's schedule": {"CA-ToMe": 3, "CA-ToMe, kept plan": 8}}
    images = {r["method"]: r for r in table["images"]}
    for method, counts in expected_counts.items():
        assert images[method]["counts"] == counts
    parts = table["parts"]["text_seconds"] + table["parts"]["decode_seconds"]
    for r in table["images"]:
        assert sum(r["counts"].values()) == 11
        assert r["seconds"] == pytest.approx(parts + sum(n * seconds[k] for k, n in r["counts"].items()))
        assert r["speedup"] == pytest.approx(images["none"]["seconds"] / r["seconds"])
    assert table["check"]["method"] == "DeepCache 3" and table["check"]["measured"] > 0
    kept = next(c for c in table["calls"] if c["label"] == "ToMe, kept plan")
    assert kept["merge_seconds"] > 0 and kept["tokens"] == ["16→8"] * 5  # a 4×4 latent: merge and unmerge, no planning
    quality = table["quality"]  # each method's images against the unaccelerated ones: PSNR dB, SSIM
    assert set(quality) == set(images) and quality["none"] == [float("inf"), pytest.approx(1.0)]
    for method, (psnr_db, ssim_value) in quality.items():
        if method != "none":  # every method changes the image, a little
            assert 10 < psnr_db < float("inf") and 0 < ssim_value < 1, (method, psnr_db, ssim_value)


def test_samplers_compose_each_image_from_the_calls_it_makes(tiny_pipeline, capsys):
    """--samplers: each sampler's image composed from the calls it makes (DPM++ 2M Karras 20: 20 calls, PLMS 50: 51),
    minitome's and diffusers' (tomesd for ToMe, DeepCacheSDHelper for DeepCache, no ToDo), plus each sampler's own
    loop; and one whole image measured against its composed figure."""
    _, folder = tiny_pipeline
    argv = ["--samplers", "--weights", str(folder), "--sizes", "32", "--attention", "sdpa", "--repeats", "1",
            "--check-image", "--json", "--device", "cpu"]
    assert main(argv) == 0
    table = json.loads(capsys.readouterr().out)["tables"][0]
    seconds = {(c["impl"], c["label"]): c["seconds"] for c in table["calls"]}
    assert set(seconds) == {("minitome", "none"), ("minitome", "ToMe"), ("minitome", "ToDo"),
                            ("minitome", "DeepCache shallow branch"), ("diffusers", "none"), ("diffusers", "ToMe"),
                            ("diffusers", "DeepCache shallow branch")}
    rows = {(r["sampler"], r["method"]): r for r in table["images"]}
    assert len(rows) == 16 and rows["DPM++ 2M Karras", "alone"]["calls"] == 20 and rows["PLMS", "alone"]["calls"] == 51
    assert rows["Euler a", "DeepCache 3"]["counts"]["minitome"] == {"none": 7, "DeepCache shallow branch": 13}
    # DeepCacheSDHelper counts PLMS's repeated timestep by its first place: whole calls 0, 3, 6, … of the schedule
    assert rows["PLMS", "DeepCache 3"]["counts"]["diffusers"] == {"none": 17, "DeepCache shallow branch": 34}
    for r in table["images"]:
        for impl, counts in r["counts"].items():
            assert sum(counts.values()) == r["calls"]
            if impl in r["seconds"]:
                assert r["seconds"][impl] == pytest.approx(
                    r["loop_seconds"][impl] + sum(n * seconds[impl, k] for k, n in counts.items()))
    assert "diffusers" not in rows["DDIM", "ToDo 2"]["seconds"] and "diffusers" in rows["DDIM", "DeepCache 3"]["seconds"]
    assert table["check"]["run"] == "DPM++ 2M Karras 20" and table["check"]["measured"] > 0


def test_diffusers_deepcache_call_runs_the_shallow_branch_only(tiny_pipeline):
    """The benchmark's diffusers DeepCache call: after the whole call in prepare, the timed call runs the input
    and output blocks of the branch and leaves the middle block to the helper's kept features."""
    import weights
    from minitome.lab.calls import Configuration, as_diffusers
    from minitome.lab.jobs import CallKind, Job
    unet = weights.load(tiny_pipeline[1]).unet
    job = Job(part="time", latent=[4, 4], batch=2, attention="sdpa", repeats=1, device="cpu", dtype="float32")
    reference = as_diffusers(unet, job)
    ran = []
    reference.mid_block.resnets[0].register_forward_pre_hook(lambda module, args: ran.append("mid"))
    x, t, context = torch.randn(2, 4, 4, 4), torch.full((2,), 500), torch.randn(2, 77, unet.config.context_dim)
    c = Configuration(CallKind("DeepCache shallow branch", impl="diffusers", cached=True), reference)
    c.prepare(x, t, context)
    assert ran == ["mid"]  # the whole call, in prepare
    c.call(x, t, context)
    assert ran == ["mid"]  # the timed call: the shallow branch
    Configuration(CallKind("none", impl="diffusers"), reference).prepare(x, t, context)  # the helper comes off
    reference(x, t, context)
    assert ran == ["mid", "mid"]


def test_decode_mode_measures_both_decoders(capsys):
    """--decode --compare: minitome's decoder and encoder and diffusers' AutoencoderKL's, each in a process of its
    own, on one image; the peak is the part's activations, above its weights (for a 32×32 image, well under the
    weights' 190 MiB, and more than one 32×32×128 full-resolution activation)."""
    assert main(["--decode", "--compare", "--sizes", "32", "--json", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    rows = json.loads(out.out)["tables"]
    assert [(r["half"], r["impl"]) for r in rows] == [("decoder", "minitome"), ("decoder", "diffusers"),
                                                      ("encoder", "minitome"), ("encoder", "diffusers")]
    for r in rows:
        assert r["size"] == [32, 32] and r["seconds"] > 0
        assert 32 * 32 * 128 * 4 / 2**20 < r["peak_mb"] < 190


def test_hires_composes_each_image_from_both_passes(tiny_pipeline, capsys):
    """--hires: the chain DPM++ 2M Karras 20 → latent ×2 → 10 calls (20 steps at strength 0.5) → decoder, per method:
    each pass's calls of each kind times their seconds at that pass's size, plus each pass's loop and the decoder;
    ToMe only on the hires pass; DeepCache counting each pass's own calls on both sides; one whole chain measured."""
    _, folder = tiny_pipeline
    argv = ["--hires", "--weights", str(folder), "--sizes", "32", "--attention", "sdpa", "--repeats", "1",
            "--check-image", "--json", "--device", "cpu"]
    assert main(argv) == 0
    table = json.loads(capsys.readouterr().out)["tables"][0]
    seconds = {(c["pass"], c["impl"], c["label"]): c["seconds"] for c in table["calls"]}
    assert ("first", "minitome", "ToMe") not in seconds and ("hires", "diffusers", "DeepCache shallow + ToMe") in seconds
    assert ("hires", "diffusers", "ToDo") not in seconds
    assert table["chain"]["hires_calls"] == 10
    rows = {r["method"]: r for r in table["images"]}
    assert rows["ToMe 0.5 on the hires pass"]["counts"]["minitome"] == {"first": {"none": 20}, "hires": {"ToMe": 10}}
    deep = rows["DeepCache 3 + ToMe 0.5 on the hires pass"]["counts"]
    for impl in ("minitome", "diffusers"):  # whole calls 0, 3, 6, … of each pass, counted from the pass's start
        assert deep[impl] == {"first": {"none": 7, "DeepCache shallow branch": 13},
                              "hires": {"ToMe": 4, "DeepCache shallow + ToMe": 6}}
    assert "diffusers" not in rows["ToDo 2"]["seconds"] and "diffusers" in rows["DeepCache 3"]["seconds"]
    for r in table["images"]:
        for impl, passes in r["counts"].items():
            if impl not in r["seconds"]:
                continue
            unet = sum(n * seconds[p, impl, k] for p, kinds in passes.items() for k, n in kinds.items())
            loops = table["loops"][impl]
            assert r["seconds"][impl] == pytest.approx(unet + loops["first"] + loops["hires"] + table["vae"]["decoder"][impl])
            hires = sum(n * seconds["hires", impl, k] for k, n in passes["hires"].items()) + loops["hires"]
            assert r["hires_unet_seconds"][impl] == pytest.approx(hires)
            assert r["hires_speedup"][impl] == pytest.approx(rows["none"]["hires_unet_seconds"][impl] / hires)
    assert table["check"]["run"] == "DeepCache 3 + ToMe 0.5 on the hires pass" and table["check"]["measured"] > 0


# --image: one image's time, prompt to PNG (one_image.py, stage_clock.py, one_image_table.py, diffusers_pipeline.py)

def image_rows(argv, capsys) -> dict:
    assert main(argv + ["--json", "--device", "cpu"]) == 0
    out = capsys.readouterr()
    return json.loads(out.out)["tables"][0], out.err


def check_stages(figures: dict, calls: int):
    """One side of a row: its stages add up to its total, and its UNet seconds are each kind's mean per call times
    the calls of that kind (the timed calls at their own seconds, whose sum is that mean times their count)."""
    assert figures["calls"] == sum(figures["counts"].values()) == calls
    assert figures["unet"] == pytest.approx(sum(figures["per_call"][k] * n for k, n in figures["counts"].items()))
    assert figures["total"] == pytest.approx(figures["text"] + figures["unet"] + figures["decoder"] + figures["png"]
                                             + figures["rest"])
    assert min(figures["text"], figures["decoder"], figures["png"]) > 0


def test_image_mode_estimates_the_calls_it_does_not_time(capsys):
    """--image --compare --calls 1 on random tiny weights: every run × method, minitome's image and diffusers' on the
    same weights; one UNet call timed per run (two with DeepCache: a whole and a shallow one), the others counted at
    their kind's mean, each library's DeepCache counting its whole calls its own way; the targets' ratios."""
    table, err = image_rows(["--image", "--tiny", "--sizes", "64", "--calls", "1", "--compare", "--dtype", "float32"], capsys)
    rows = {(r["run"], r["method"]): r for r in table["rows"]}
    runs = ["default: PLMS 50, guidance 7.5, VAE", "DPM++ 2M Karras 20, guidance 7.5, VAE", "LCM 4, guidance 1, VAE",
            "LCM 4, guidance 1, TAESD"]
    assert [r["run"] for r in table["rows"]] == [run for run in runs for _ in range(3)]
    assert table["dtypes"] == ["float32"] and len(rows) == 12
    whole = {runs[0]: 17, runs[1]: 7, runs[2]: 2, runs[3]: 2}  # DeepCache 3: calls 0, 3, 6, … (the helper: by timestep)
    for (run, method), row in rows.items():
        for side in ("minitome", "diffusers"):
            f = row[side]
            check_stages(f, row["calls"])
            assert f["estimated"] and f["timed"] == (2 if method == "DeepCache 3" else 1)
            assert f["latents"] == (1 if run.startswith("LCM") else 2)  # guidance 1: one latent, not the guided pair
            if method == "DeepCache 3":
                assert f["counts"] == {"whole": whole[run], "shallow": row["calls"] - whole[run]}
            else:
                assert f["counts"] == {"whole": row["calls"]}
        assert row["ratio"] == pytest.approx(row["minitome"]["total"] / row["diffusers"]["total"])
    assert rows[runs[0], "alone"]["calls"] == 51 and rows[runs[1], "alone"]["calls"] == 20
    speedups = {(s["library"], s["method"]): s for s in table["ratios"]["speedups"]}
    for side in ("minitome", "diffusers"):
        for method in ("alone", "ToMe 0.5"):
            assert speedups[side, method]["ratio"] == pytest.approx(
                rows[runs[0], "alone"][side]["total"] / rows[runs[3], method][side]["total"])
    assert table["ratios"]["bfloat16"] == [] and len(table["ratios"]["versus"]) == 12
    assert err.count("warm-up: minitome") == err.count("warm-up: diffusers") == 2  # each batch and decoder once


def test_image_mode_times_every_call_without_calls(tiny_pipeline, capsys):
    """Without --calls every UNet call of every run is timed: nothing estimated, nothing marked "~" (--weights: the
    weights' own model); the markdown block names the date, the machine and the command."""
    _, folder = tiny_pipeline
    argv = ["--image", "--weights", str(folder), "--sizes", "64", "--dtype", "float32", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"## {datetime.date.today().isoformat()} — one 64×64 image, prompt to PNG, ")
    assert f"Command: `python -m minitome.lab.bench {' '.join(argv)}` ({folder}; " in out
    assert "| default: PLMS 50, guidance 7.5, VAE | alone | float32 | minitome | 51 × 2 |" in out
    assert "| DPM++ 2M Karras 20, guidance 7.5, VAE | DeepCache 3 | float32 | minitome | 20 × 2 | " in out
    assert "| LCM 4, guidance 1, TAESD | ToMe 0.5 | float32 | minitome | 4 × 1 |" in out
    assert "~" not in out and "| diffusers |" not in out and "÷ diffusers" not in out


def test_composed_counts_each_call_stood_in_for_at_its_kinds_mean():
    from minitome.lab.stage_clock import composed
    calls = [("whole", 2.0), ("shallow", 0.5), ("whole", 4.0), ("whole", None), ("shallow", None), ("shallow", None)]
    c = composed(calls)
    assert c["per_call"] == {"whole": 3.0, "shallow": 0.5} and c["counts"] == {"whole": 3, "shallow": 3}
    assert c["estimated_seconds"] == 3.0 + 2 * 0.5 and c["timed"] == 3
    assert c["seconds"] == 3 * 3.0 + 3 * 0.5  # = mean × count, kind by kind


def test_image_ratios_and_targets():
    """The targets' ratios, each of two images of one run: default ÷ LCM 4 + TAESD (alone, with ToMe), float32 ÷
    bfloat16 per row, the fastest row, minitome ÷ diffusers; "~" wherever a figure was estimated."""
    from argparse import Namespace
    from minitome.lab.one_image_table import DEFAULT, LCM_TAESD, markdown, ratios

    def side(total, estimated=False):
        return {"total": total, "estimated": estimated}
    rows = [{"run": DEFAULT, "method": "alone", "dtype": "float32", "minitome": side(300.0), "diffusers": side(330.0)},
            {"run": LCM_TAESD, "method": "alone", "dtype": "float32", "minitome": side(12.0), "diffusers": side(15.0)},
            {"run": LCM_TAESD, "method": "ToMe 0.5", "dtype": "float32", "minitome": side(10.0, True),
             "diffusers": side(14.0)},
            {"run": DEFAULT, "method": "alone", "dtype": "bfloat16", "minitome": side(200.0), "diffusers": side(190.0)},
            {"run": LCM_TAESD, "method": "alone", "dtype": "bfloat16", "minitome": side(8.0), "diffusers": side(9.0)}]
    for row in rows:
        row["ratio"] = row["minitome"]["total"] / row["diffusers"]["total"]
    r = ratios(rows)
    speedups = {(s["dtype"], s["library"], s["method"]): (s["ratio"], s["estimated"]) for s in r["speedups"]}
    assert speedups["float32", "minitome", "alone"] == (25.0, False)
    assert speedups["float32", "minitome", "ToMe 0.5"] == (30.0, True)
    assert speedups["bfloat16", "diffusers", "alone"] == (190.0 / 9.0, False)
    halves = {(b["run"], b["library"]): b["ratio"] for b in r["bfloat16"]}
    assert halves == {(DEFAULT, "minitome"): 1.5, (DEFAULT, "diffusers"): 330.0 / 190.0, (LCM_TAESD, "minitome"): 1.5,
                      (LCM_TAESD, "diffusers"): 15.0 / 9.0}
    fastest = {(f["dtype"], f["library"]): (f["method"], f["seconds"]) for f in r["fastest"]}
    assert fastest["float32", "minitome"] == ("ToMe 0.5", 10.0) and fastest["bfloat16", "minitome"] == ("alone", 8.0)
    assert [v["ratio"] for v in r["versus"]] == [row["ratio"] for row in rows]
    for row in rows:
        for s in ("minitome", "diffusers"):
            row[s].update(text=0.1, unet=1.0, per_call={"whole": 0.5}, counts={"whole": 2}, calls=2, timed=2, latents=2,
                          decoder=1.0, png=0.01, rest=0.0)
    result = {"size": [512, 512], "dtypes": ["float32", "bfloat16"], "bfloat16": "native here", "calls": 2,
              "compare": True, "rows": rows}
    text = markdown(Namespace(argv=["--image", "--compare"], weights=None, tiny=False), result, r)
    assert "| minitome no slower than diffusers on any row (minitome ÷ diffusers ≤ 1) | 4 of 5 rows; the slowest 1.05× " \
           "(default: PLMS 50, guidance 7.5, VAE, alone, bfloat16) | not met |" in text
    assert "| LCM 4 + TAESD ≥ 20× faster than the default, float32 | 25.00× | met |" in text
    assert "| LCM 4 + TAESD + ToMe 0.5 ≥ 25× faster than the default, float32 | ~30.00× | met |" in text
    assert "| bfloat16 ≥ 1.4× faster than float32 per image | default 1.50×; rows from 1.50× " in text
    assert "| the fastest row under 20 s, float32 | ~10.00 s (LCM 4, guidance 1, TAESD, ToMe 0.5) | met |" in text
    assert "| the fastest row under 13 s, bfloat16 | 8.00 s (LCM 4, guidance 1, TAESD, alone) | met |" in text


def test_image_dtypes_follow_the_cpu(monkeypatch):
    """--dtype auto measures float32, and bfloat16 where the CPU computes it natively (said otherwise)."""
    from minitome.lab import one_image
    cpu = torch.device("cpu")
    monkeypatch.setattr(one_image, "native_bf16", lambda: True)
    assert one_image.dtypes("auto", cpu) == ([torch.float32, torch.bfloat16], "native here")
    monkeypatch.setattr(one_image, "native_bf16", lambda: False)
    assert one_image.dtypes("auto", cpu) == ([torch.float32], "not native here")
    assert one_image.dtypes("bfloat16", cpu) == ([torch.bfloat16], None)


def test_image_mode_needs_the_vocabulary_on_random_weights(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("minitome.lab.bench.VOCAB", tmp_path / "bpe_simple_vocab_16e6.txt.gz")
    assert main(["--image", "--device", "cpu"]) == 2
    assert "--image on random weights needs CLIP's vocabulary for its prompt" in capsys.readouterr().err


def test_image_twin_in_diffusers_holds_the_same_weights():
    """diffusers' pipeline beside minitome's is built from its tensors: the UNet, text encoder, VAE decoder, TAESD
    decoder and tokenizer compute what minitome's do (float64, tiny random weights)."""
    from types import SimpleNamespace
    from conftest import F64_BOUND, relative_error
    from minitome.lab.diffusers_pipeline import pipelines_of
    from minitome.lab.one_image import model
    sd, tiny = model(SimpleNamespace(tiny=True, weights=None), torch.device("cpu"), torch.float64)
    pipes = pipelines_of(sd, tiny)
    pipe, g = pipes["vae"], torch.Generator().manual_seed(0)
    prompt = ["a watercolor painting of a fox in the snow"]
    ids = sd.tokenizer(prompt)
    assert torch.equal(pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids, ids)
    assert relative_error(pipe.text_encoder(ids)[0], sd.text_encoder(ids)) < F64_BOUND
    z = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
    assert relative_error(pipe.vae.decode(z).sample, sd.vae(z)) < F64_BOUND
    assert relative_error(pipes["taesd"].vae.decode(z).sample, tiny(z)) < F64_BOUND
    x, context = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(2, 77, 64, generator=g, dtype=torch.float64)
    assert relative_error(pipe.unet(x, 500, context).sample, sd.unet(x, 500, context)) < F64_BOUND


@pytest.mark.parametrize("impl", ["minitome", "diffusers"])
def test_image_clock_kinds_are_the_calls_deepcache_makes_whole(impl):
    """A whole PLMS 50 run with DeepCache 3, every call timed: the calls the clock counts as whole are the calls that
    run the UNet's middle block (minitome: 17 of 51, calls 0, 3, …; DeepCacheSDHelper: 17 as well, by the first place
    of each call's timestep, PLMS's repeated one included)."""
    import tempfile
    from pathlib import Path
    from types import SimpleNamespace
    from minitome.lab import one_image
    from minitome.lab.stage_clock import Clock
    sd, tiny = one_image.model(SimpleNamespace(tiny=True, weights=None), torch.device("cpu"), torch.float32)
    args = SimpleNamespace(tome_ratio=0.5, deepcache_interval=3)
    method, run = one_image.methods(args)[2], one_image.RUNS[0]
    ran = []
    with tempfile.TemporaryDirectory() as folder:
        if impl == "minitome":
            sd.unet.middle_block[0].register_forward_pre_hook(lambda *a: ran.append(1))  # iterated, not called
            clock = Clock("cpu", None, one_image.minitome_kind(method))
            one_image.minitome_image(sd, tiny, run, method, (64, 64), clock, Path(folder))
        else:
            from minitome.lab.diffusers_pipeline import pipelines_of
            pipe = pipelines_of(sd, tiny)["vae"]
            pipe.unet.mid_block.resnets[0].register_forward_pre_hook(lambda *a: ran.append(1))  # the helper wraps the block
            clock = Clock("cpu", None, one_image.diffusers_kind(pipe, method))
            one_image.diffusers_image(pipe, run, method, (64, 64), clock, Path(folder))
    figures = clock.figures(1.0)
    assert figures["counts"] == {"whole": 17, "shallow": 34} == {"whole": len(ran), "shallow": 51 - len(ran)}
