"""Image similarity for the benchmark's quality column: PSNR and SSIM, in numpy.

Where this sits: `bench.py` (the lab's benchmark) compares each ToMe ratio's image with the ratio-0 image of the
same prompt and seed, so a user sees what the speed costs.

PSNR = 10 · log10(255² / MSE), in dB (infinite for identical images).
SSIM (Wang et al. 2004), averaged over the RGB channels: for windows x, y with a Gaussian weighting (11 × 11, σ = 1.5), SSIM = ((2μxμy + C1)(2σxy + C2)) / ((μx² + μy² + C1)(σx² + σy² + C2)),
C1 = (0.01 · 255)², C2 = (0.03 · 255)², averaged over the image (valid windows only).
"""
import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-r ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable weighted window sums over the valid positions of a 2-D array."""
    rows = np.apply_along_axis(lambda v: np.convolve(v, g, mode="valid"), 0, x)
    return np.apply_along_axis(lambda v: np.convolve(v, g, mode="valid"), 1, rows)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two uint8 images (H, W) or (H, W, 3), channel by channel."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    if a.ndim == 3:
        return float(np.mean([ssim(a[..., c], b[..., c]) for c in range(a.shape[-1])]))
    g = gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = filter_valid(a, g), filter_valid(b, g)
    var_a = filter_valid(a * a, g) - mu_a ** 2
    var_b = filter_valid(b * b, g) - mu_b ** 2
    cov = filter_valid(a * b, g) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())
