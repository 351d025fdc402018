"""The lab: tools that measure and draw the model, not the model itself.

`python -m minitome.lab.bench` (what merging buys: speed, memory, image quality, side by side with
diffusers), `minitome.lab.ablate` (the paper's design experiments), `minitome.lab.visualize` (pictures
for tutorial.md). `measure.py` runs in the benchmark's child processes, `quality.py` holds PSNR and
SSIM, `common.py` what the tools share.
"""
