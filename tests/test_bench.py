"""The benchmark's command line on tiny weights (the real figures come from `make bench`, never from tests),
and its PSNR / SSIM against scikit-image."""
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
    (["--reuse", "0"], "--reuse: not used without --methods, --samplers or --hires"),
    (["--check-image", "--steps", "20"], "--check-image, --steps: not used without --methods, --samplers or --hires"),
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
